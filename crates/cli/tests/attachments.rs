//! Attachments end to end: a real relay process, three members, a 10 MiB file sent
//! once and fetched by each; a relay operator who alters a stored piece.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;

use rand::RngCore as _;
use serde_json::Value;
use support::{Person, Relay, free_port, set_up_channel};

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// What the relay stores: (messages, bytes of blobs).
fn relay_holds(data: &Path) -> (i64, i64) {
    let db = rusqlite::Connection::open(data.join("relay.db")).unwrap();
    db.query_row(
        "SELECT count(*), coalesce(sum(length(blob)), 0) FROM messages",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[test]
fn a_file_is_stored_once_and_every_member_gets_it_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let relay = Relay::start(&data, free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    let carol = Person::new(tmp.path(), "carol");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address), (&carol, &relay.address)],
    );
    let mut content = vec![0u8; 10 << 20];
    rand::rngs::OsRng.fill_bytes(&mut content);
    let source = tmp.path().join("minutes of the meeting.bin");
    std::fs::write(&source, &content).unwrap();

    let (before, _) = relay_holds(&data);
    let sent = alice
        .run(&["--json", "send", "ops", "--file", source.to_str().unwrap()])
        .ok();
    let sent: Value = serde_json::from_str(sent.stdout.trim()).unwrap();
    assert_eq!(sent["size"], 10 << 20);
    assert_eq!(sent["file"], "minutes of the meeting.bin");
    // Stored once, not once per member: the pieces (padded by at most an eighth)
    // and the two small channel messages that carry the descriptor.
    let (after, bytes) = relay_holds(&data);
    let pieces = backchannel_proto::attachment::blobs_for(10 << 20) as i64;
    assert!(
        after - before >= pieces && after - before <= pieces + 4,
        "{before} -> {after} messages for {pieces} pieces"
    );
    assert!(
        bytes < (10 << 20) * 9 / 8 + 64 * 1024,
        "{bytes} bytes stored"
    );

    // Bob saves where he says; Carol in her profile's downloads/ (mode 0700).
    let bob_dir = tmp.path().join("bob-files");
    let out = bob
        .run(&[
            "--json",
            "read",
            "ops",
            "--save-dir",
            bob_dir.to_str().unwrap(),
        ])
        .ok();
    let lines = json_lines(&out.stdout);
    let message = lines
        .iter()
        .find(|l| l.get("attachment").is_some())
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert_eq!(message["from"], "alice");
    assert_eq!(message["attachment"]["name"], "minutes of the meeting.bin");
    assert_eq!(message["attachment"]["size"], 10 << 20);
    let saved = message["attachment"]["saved_to"].as_str().unwrap();
    assert!(Path::new(saved).starts_with(&bob_dir), "{saved}");
    assert!(
        std::fs::read(saved).unwrap() == content,
        "bob's copy differs"
    );

    let out = carol.run(&["read", "ops"]).ok();
    assert!(
        out.stdout
            .contains("[file] minutes of the meeting.bin (10.0")
            && out.stdout.contains("saved to"),
        "{}",
        out.stdout
    );
    let downloads = carol.home.join("downloads");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&downloads).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let copy = downloads.join("minutes of the meeting.bin");
    assert!(
        std::fs::read(&copy).unwrap() == content,
        "carol's copy differs"
    );
    // Reading it all again shows it as saved, without fetching a second copy.
    let again = carol.run(&["--json", "read", "ops", "--all"]).ok();
    assert!(
        again.stdout.contains(copy.to_str().unwrap()),
        "{}",
        again.stdout
    );
    assert_eq!(std::fs::read_dir(&downloads).unwrap().count(), 1);
    // Reading deleted none of its pieces at the relay: they stay until they expire.
    let db = rusqlite::Connection::open(data.join("relay.db")).unwrap();
    let kept: i64 = db
        .query_row(
            "SELECT count(*) FROM messages WHERE mailbox IN
             (SELECT mailbox FROM messages GROUP BY mailbox HAVING count(*) > 100)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, pieces);
}

#[test]
fn a_piece_altered_at_the_relay_is_an_alert_and_nothing_is_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let relay = Relay::start(&data, free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address)],
    );
    let source = tmp.path().join("plan.txt");
    std::fs::write(&source, "meet at the north gate\n".repeat(5000)).unwrap();
    alice
        .run(&[
            "send",
            "ops",
            "--file",
            source.to_str().unwrap(),
            "--expires-in",
            "2h",
        ])
        .ok();
    // The operator swaps one stored piece of the file for other bytes.
    let db = rusqlite::Connection::open(data.join("relay.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE messages SET blob = randomblob(3840) WHERE id = (SELECT min(id) FROM messages
             WHERE mailbox = (SELECT mailbox FROM messages GROUP BY mailbox
                              ORDER BY count(*) DESC LIMIT 1))",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    let out = bob.run(&["--json", "read", "ops"]);
    assert_eq!(out.code, 3, "{out:?}");
    let lines = json_lines(&out.stdout);
    assert!(
        lines.iter().any(|l| l["alert"] == "attachment_altered"),
        "{}",
        out.stdout
    );
    let shown = lines
        .iter()
        .find(|l| l.get("attachment").is_some())
        .unwrap();
    assert!(shown["attachment"]["saved_to"].is_null());
    assert!(
        shown["attachment"]["error"]
            .as_str()
            .unwrap()
            .contains("altered")
    );
    let downloads = bob.home.join("downloads");
    assert_eq!(
        std::fs::read_dir(&downloads).unwrap().count(),
        0,
        "no file, and no partial file, is left"
    );
}
