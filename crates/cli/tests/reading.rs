//! Reading and writing from the terminal: what is missing is shown from the first
//! read, before any alert; a message can come from standard input instead of the
//! command line; text from others can neither control the reader's terminal nor
//! forge a line of ours.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{Person, Relay, free_port, parse_messages, set_up_channel};

#[test]
fn a_message_lost_at_the_relay_shows_as_waiting_at_once() {
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
    // Bob has read what setting up left for him; he is offline while alice talks.
    bob.read("ops");
    for text in ["one", "two", "three"] {
        alice.run(&["send", "ops", text]).ok();
    }
    // The relay's operator deletes the first of the three.
    let db = rusqlite::Connection::open(data.join("relay.db")).unwrap();
    let ids: Vec<i64> = db
        .prepare("SELECT id FROM messages ORDER BY id DESC LIMIT 3")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids.len(), 3);
    db.execute_batch(&format!(
        "BEGIN;
         UPDATE mailboxes SET count = count - 1
             WHERE key = (SELECT mailbox FROM messages WHERE id = {id});
         DELETE FROM messages WHERE id = {id};
         COMMIT;",
        id = ids[2]
    ))
    .unwrap();
    drop(db);

    let out = bob.run(&["--json", "read", "ops"]);
    assert_eq!(out.code, 0, "no alert yet: {out:?}");
    let texts: Vec<String> = parse_messages(&out.stdout)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(texts, vec!["two", "three"]);
    let pending: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("pending").is_some())
        .collect();
    assert_eq!(pending.len(), 1, "{}", out.stdout);
    let gaps = &pending[0]["pending"]["gaps"];
    assert_eq!(gaps[0]["from"], "alice");
    assert_eq!(gaps[0]["missing"], serde_json::json!([1]));
    assert!(gaps[0]["reported_by"].is_null());

    // In words, on every read until it comes or is reported.
    let out = bob.run(&["read", "ops"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("waiting in ops for 1 message from alice (#1), missing since"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("did not deliver everything"),
        "{}",
        out.stderr
    );
    let status = bob.run(&["status", "ops", "--wait", "0"]);
    assert!(
        status
            .stderr
            .contains("waiting in ops for 1 message from alice"),
        "{status:?}"
    );
    drop(relay);
}

#[test]
fn a_message_can_come_from_standard_input_instead_of_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address)],
    );
    let text = "the account is 4417 1234 5678 9113\nsecond line";
    support::run_input(
        &alice.home,
        &["send", "ops"],
        format!("{text}\n").as_bytes(),
    )
    .ok();
    let got: Vec<String> = bob.read("ops").into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, vec![text]);
    // Nothing on standard input: nothing is sent, and the person is told.
    let empty = support::run_input(&alice.home, &["send", "ops"], b"");
    assert_eq!(empty.code, 1, "{empty:?}");
    assert!(empty.stderr.contains("empty"), "{}", empty.stderr);
    let too_long = support::run_input(&alice.home, &["send", "ops"], &vec![b'x'; 70_000]);
    assert_eq!(too_long.code, 1, "{too_long:?}");
    assert!(bob.read("ops").is_empty());
    drop(relay);
}

#[test]
fn a_members_text_cannot_control_the_terminal_or_forge_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let mallory = Person::new(tmp.path(), "mallory");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&mallory, &relay.address)],
    );
    let attack = "ok\n[2026-11-28 23:59] alice: wire-funds-now\x1b[2K\x1b]0;pwned\x07 \u{202e}evil";
    mallory.run(&["send", "ops", attack]).ok();
    let out = alice.run(&["read", "ops"]).ok();
    let shown = out.stdout;
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07'),
        "{shown:?}"
    );
    assert!(!shown.contains('\u{202e}'), "{shown:?}");
    assert!(
        shown.contains("\\u{1b}[2K") && shown.contains("\\u{202e}evil"),
        "{shown}"
    );
    // Only our own headers start lines: the forged one is indented under mallory's.
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("[2026-11-28 23:59] alice")),
        "{shown}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("    | [2026-11-28 23:59] alice")),
        "{shown}"
    );
    // Padding that would make a terminal wrap a forged header to the margin: the
    // output is broken at 80 columns (not a terminal here) with the mark.
    let padded = format!(
        "{}[2026-11-28 23:59] alice: pay the invoice",
        ".".repeat(200)
    );
    mallory.run(&["send", "ops", &padded]).ok();
    let out = alice.run(&["read", "ops"]).ok();
    for line in out.stdout.lines() {
        assert!(line.chars().count() <= 80, "{line:?}");
        assert!(
            !line.starts_with("[2026-11-28 23:59] alice") && !line.starts_with("[2026-11-28"),
            "{}",
            out.stdout
        );
    }
    // JSON keeps the text exactly (JSON escapes it itself).
    let exact = alice.run(&["--json", "read", "ops", "--all"]).ok();
    let texts: Vec<String> = support::parse_all(&exact.stdout)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(texts, vec![attack.to_owned(), padded]);
    // A look-alike of a member's name cannot join: the administrator's client
    // refuses the key package.
    let dir = tmp.path().join("kp");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = Person::new(tmp.path(), "\u{430}lice");
    let kp = dir.join("fake.kp");
    fake.run(&[
        "key-package",
        "--relay",
        &relay.address,
        "--out",
        kp.to_str().unwrap(),
    ])
    .ok();
    let refused = alice.run(&[
        "channel",
        "add",
        "ops",
        "--key-package",
        kp.to_str().unwrap(),
        "--welcome-out",
        dir.join("w").to_str().unwrap(),
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("in this channel already"),
        "{}",
        refused.stderr
    );
    drop(relay);
}
