//! What is missing is shown from the first read, before any alert: a relay that
//! loses a message (here its operator deletes the record) leaves the reader with a
//! visible gap, named by sender and number, in human and JSON output.

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
