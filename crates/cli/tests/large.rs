//! A post-quantum channel of 100 members over two real relay processes: built by
//! its administrator's adds (ten members per commit, the last five one at a time),
//! after which every member reads a message sent after the last add, with no alert
//! anywhere. Driven through
//! `backchannel bench channel`, which runs every member as a real client with its
//! own encrypted profile and its own connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use support::{Relay, free_port};

#[test]
#[ignore = "minutes of work for 100 clients: .ci/run runs it on the release build"]
fn a_post_quantum_channel_of_100_members_across_two_relays_stays_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Relay::start(&tmp.path().join("a"), free_port());
    let b = Relay::start(&tmp.path().join("b"), free_port());
    let members = 100;
    let out = Command::new(support::bin())
        .args([
            "--json",
            "bench",
            "channel",
            "--suite",
            "xwing",
            "--messages",
            "1",
        ])
        .args(["--members", &members.to_string()])
        .args(["--relay", &a.address, "--relay", &b.address])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let added: u64 = lines
        .iter()
        .filter_map(|l| l.get("added").and_then(serde_json::Value::as_u64))
        .sum();
    assert_eq!(added, members as u64 - 1, "every member added");
    // The last five adds are one member each, at full size.
    let singles = lines
        .iter()
        .filter(|l| l.get("added").and_then(serde_json::Value::as_u64) == Some(1))
        .count();
    assert_eq!(singles, 5);
    let summary = lines.last().unwrap();
    assert_eq!(summary["members"], members);
    assert_eq!(summary["received_by"], members - 1, "{summary}");
    assert_eq!(summary["alerts"], 0, "{summary}");
    assert_eq!(summary["failed_members"], 0, "{summary}");
    // An add costs the administrator about one blob per member (no path, one
    // fragment), never one per member per fragment of a tree-sized commit.
    let add_blobs = summary["add_blobs"].as_u64().unwrap();
    assert!(add_blobs <= 2 * (members as u64 - 1), "{summary}");
    drop((a, b));
}

#[test]
#[ignore = "100 MiB through a relay: .ci/run runs it on the release build"]
fn a_file_of_100_mib_reaches_every_member_intact() {
    use rand::RngCore as _;
    use std::time::Instant;
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = support::Person::new(tmp.path(), "alice");
    let bob = support::Person::new(tmp.path(), "bob");
    let carol = support::Person::new(tmp.path(), "carol");
    support::set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address), (&carol, &relay.address)],
    );
    let size = 100usize << 20;
    let mut content = vec![0u8; size];
    rand::rngs::OsRng.fill_bytes(&mut content);
    let source = tmp.path().join("archive.tar");
    std::fs::write(&source, &content).unwrap();
    let started = Instant::now();
    alice
        .run(&["send", "ops", "--file", source.to_str().unwrap()])
        .ok();
    println!("upload of 100 MiB: {:?}", started.elapsed());
    for person in [&bob, &carol] {
        let started = Instant::now();
        let out = person.run(&["--json", "read", "ops"]).ok();
        println!("a download of 100 MiB: {:?}", started.elapsed());
        let line = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l.get("attachment").is_some())
            .unwrap_or_else(|| panic!("{}", out.stdout));
        let saved = line["attachment"]["saved_to"].as_str().unwrap();
        assert!(std::fs::read(saved).unwrap() == content, "a copy differs");
    }
}
