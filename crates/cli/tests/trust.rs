//! End to end, knowing who is who: safety numbers on both sides, a substituted key
//! caught by them, and `read` marking unverified members.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::{Person, Relay, free_port, set_up_channel};

fn json(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn number(p: &Person, channel: &str, member: &str) -> String {
    let out = p.run(&["--json", "verify", channel, member]).ok();
    let lines = json(&out.stdout);
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    lines[0]["safety_number"].as_str().unwrap().to_owned()
}

#[test]
fn safety_numbers_match_and_verified_members_are_marked() {
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
    let a = number(&alice, "ops", "bob");
    assert_eq!(a, number(&bob, "ops", "alice"));
    assert_eq!(a.split(' ').count(), 12);
    let human = alice.run(&["verify", "ops", "bob"]).ok();
    assert!(human.stdout.contains(&a[..23]), "{}", human.stdout);
    assert!(
        human.stdout.contains('█') || human.stdout.contains('▀'),
        "no QR code"
    );

    alice.run(&["send", "ops", "hello"]).ok();
    let read = json(&bob.run(&["--json", "read", "ops"]).ok().stdout);
    assert_eq!(read[0]["verified"], false);
    let human = bob.run(&["read", "ops", "--all"]).ok();
    assert!(
        human.stdout.contains("alice (unverified): hello"),
        "{}",
        human.stdout
    );

    bob.run(&["verify", "ops", "alice", "--confirm"]).ok();
    alice.run(&["send", "ops", "again"]).ok();
    let read = json(&bob.run(&["--json", "read", "ops"]).ok().stdout);
    assert_eq!(read[0]["verified"], true);
    let listed = json(&bob.run(&["--json", "verify", "ops"]).ok().stdout);
    assert_eq!(listed[0]["verified"], true);
    let nobody = bob.run(&["verify", "ops", "nobody", "--confirm"]);
    assert_eq!(nobody.code, 1);
}

#[test]
fn a_key_package_substituted_in_transit_is_caught_by_the_safety_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    // Mallory has two faces: "bob" towards alice, "alice" towards bob.
    let as_bob = Person::new(&tmp.path().join("m1"), "bob");
    let as_alice = Person::new(&tmp.path().join("m2"), "alice");
    let path = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();

    alice
        .run(&["channel", "create", "talks", "--relay", &relay.address])
        .ok();
    // Bob's key package goes to mallory, who hands alice her own instead.
    bob.run(&[
        "key-package",
        "--relay",
        &relay.address,
        "--out",
        &path("bob.kp"),
    ])
    .ok();
    as_bob
        .run(&[
            "key-package",
            "--relay",
            &relay.address,
            "--out",
            &path("fake.kp"),
        ])
        .ok();
    alice
        .run(&[
            "channel",
            "add",
            "talks",
            "--key-package",
            &path("fake.kp"),
            "--welcome-out",
            &path("fake.welcome"),
        ])
        .ok();
    as_bob
        .run(&["join", "--welcome", &path("fake.welcome")])
        .ok();
    // And she invites bob into a channel of her own, as "alice".
    as_alice
        .run(&["channel", "create", "talks", "--relay", &relay.address])
        .ok();
    as_alice
        .run(&[
            "channel",
            "add",
            "talks",
            "--key-package",
            &path("bob.kp"),
            "--welcome-out",
            &path("bob.welcome"),
        ])
        .ok();
    bob.run(&["join", "--welcome", &path("bob.welcome")]).ok();

    // Each side sees the name it expects...
    let at_alice = number(&alice, "talks", "bob");
    let at_bob = number(&bob, "talks", "alice");
    // ...but the numbers they read to each other differ.
    assert_ne!(at_alice, at_bob);
}

#[test]
fn an_introduction_gives_two_strangers_a_channel_and_read_says_who_introduced_them() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let carol = Person::new(tmp.path(), "carol");
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "work",
        &carol,
        &relay.address,
        &[(&alice, &relay.address)],
    );
    let press_files = tmp.path().join("press-files");
    std::fs::create_dir(&press_files).unwrap();
    set_up_channel(
        &press_files,
        "press",
        &carol,
        &relay.address,
        &[(&bob, &relay.address)],
    );
    let started = carol
        .run(&["introduce", "work", "alice", "press", "bob", "--wait", "1"])
        .ok();
    assert!(started.stdout.contains("under way"), "{}", started.stdout);

    // Each is asked first; carol's client passes the answers on when it runs.
    let asked = bob.run(&["read", "press"]).ok();
    assert!(
        asked
            .stderr
            .contains("carol wants to introduce you to alice"),
        "{asked:?}"
    );
    let accept = |p: &Person| {
        let waiting = json(&p.run(&["--json", "introductions"]).ok().stdout);
        assert_eq!(waiting.len(), 1, "{waiting:?}");
        let id = waiting[0]["id"].as_str().unwrap().to_owned();
        p.run(&["accept", &id]).ok()
    };
    accept(&bob);
    carol.run(&["read", "work"]).ok();
    let hosted = accept(&alice);
    assert!(
        hosted.stderr.contains("your channel with them is 'bob'"),
        "{hosted:?}"
    );
    carol.run(&["read", "press"]).ok();
    let joined = bob.run(&["read", "press"]).ok();
    assert!(
        joined.stderr.contains("your channel with them is 'alice'"),
        "{joined:?}"
    );

    alice
        .run(&["send", "bob", "hello, carol told me about you"])
        .ok();
    let human = bob.run(&["read", "alice"]).ok();
    assert!(
        human
            .stdout
            .contains("alice (introduced by carol): hello, carol told me about you"),
        "{}",
        human.stdout
    );
    bob.run(&["send", "alice", "likewise"]).ok();
    let read: Vec<_> = json(&alice.run(&["--json", "read", "bob"]).ok().stdout)
        .into_iter()
        .filter(|m| m["you"] == false)
        .collect();
    assert_eq!(read[0]["text"], "likewise");
    assert_eq!(read[0]["introduced_by"], "carol");
    assert_eq!(read[0]["verified"], false);
    // Carol is not in their channel.
    let listed = carol.run(&["channel", "list"]).ok();
    assert!(!listed.stdout.contains("alice") && !listed.stdout.contains("'bob'"));
    assert_eq!(number(&alice, "bob", "bob"), number(&bob, "alice", "alice"));
}
