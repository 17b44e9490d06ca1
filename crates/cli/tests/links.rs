//! End to end, joining through an invite link: `invite --link` prints it, the
//! joiner asks with `join LINK`, the inviter compares safety numbers with
//! `requests` and decides with `admit` or `refuse`; real relays, real processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::{Person, Relay, free_port};

fn make_link(alice: &Person, channel: &str) -> String {
    let out = alice.run(&["invite", channel, "--link"]).ok();
    let link = out.stdout.lines().next().unwrap().to_owned();
    assert!(link.starts_with("BCJ1"), "{}", out.stdout);
    // A QR code follows the link.
    assert!(out.stdout.contains('█'), "{}", out.stdout);
    link
}

/// The 60-digit number in a command's output.
fn safety_number(text: &str) -> String {
    let digits: String = text
        .lines()
        .filter(|l| l.starts_with("    "))
        .flat_map(|l| l.split_whitespace())
        .filter(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(digits.len(), 71, "{text}");
    digits
}

#[test]
fn a_link_join_is_admitted_after_comparing_safety_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let relay_a = Relay::start(&tmp.path().join("a"), free_port());
    let relay_b = Relay::start(&tmp.path().join("b"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person {
        home: tmp.path().join("bob"),
    };
    // Bob keeps his mailboxes on his own relay.
    support::run(
        &bob.home,
        &["init", "--name", "bob", "--relay", &relay_b.address],
    )
    .ok();
    alice
        .run(&["channel", "create", "ops", "--relay", &relay_a.address])
        .ok();
    let link = make_link(&alice, "ops");

    // Bob asks; alice is not there to answer, so he is told to wait.
    let asked = bob.run(&["join", &link.to_lowercase(), "--wait", "1"]).ok();
    assert!(asked.stdout.contains("No answer yet"), "{}", asked.stdout);
    let bobs_number = safety_number(&asked.stdout);

    let requests = alice.run(&["requests", "ops"]).ok();
    assert!(
        requests
            .stdout
            .contains("Request 1: bob asks to join 'ops'"),
        "{}",
        requests.stdout
    );
    assert_eq!(safety_number(&requests.stdout), bobs_number);
    let admitted = alice.run(&["admit", "ops", "1"]).ok();
    assert!(
        admitted.stdout.contains("bob is admitted"),
        "{}",
        admitted.stdout
    );
    alice.run(&["send", "ops", "welcome bob"]).ok();

    // Bob's next command brings him in.
    let listed = bob.run(&["channel", "list"]).ok();
    assert!(
        listed.stderr.contains("you were admitted to ops"),
        "{listed:?}"
    );
    assert_eq!(
        bob.read("ops"),
        vec![("alice".to_owned(), "welcome bob".to_owned())]
    );
    bob.run(&["send", "ops", "thanks"]).ok();
    assert_eq!(
        alice.read("ops"),
        vec![("bob".to_owned(), "thanks".to_owned())]
    );
    let verified = bob.run(&["verify", "ops", "alice"]).ok();
    assert_eq!(safety_number(&verified.stdout), bobs_number);

    // The link admitted one person: it is used up.
    let carol = Person::new(tmp.path(), "carol");
    let late = carol.run(&["join", &link, "--wait", "1"]);
    assert_eq!(late.code, 1, "{late:?}");
    assert!(
        late.stderr
            .contains("no longer takes requests for this link"),
        "{}",
        late.stderr
    );
    let none = alice.run(&["requests"]).ok();
    assert!(none.stdout.contains("No one is waiting"), "{}", none.stdout);
}

#[test]
fn a_refused_joiner_is_told_and_bad_links_and_numbers_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    alice
        .run(&["channel", "create", "ops", "--relay", &relay.address])
        .ok();
    let link = make_link(&alice, "ops");
    bob.run(&["join", &link, "--wait", "1"]).ok();
    alice.run(&["requests"]).ok();
    let wrong = alice.run(&["admit", "ops", "7"]);
    assert_eq!(wrong.code, 1);
    assert!(wrong.stderr.contains("no request 7"), "{}", wrong.stderr);
    alice.run(&["refuse", "ops", "1"]).ok();
    let listed = bob.run(&["channel", "list"]).ok();
    assert!(
        listed.stderr.contains("declined your request"),
        "{listed:?}"
    );
    assert!(!listed.stdout.contains("ops"), "{}", listed.stdout);

    // A damaged link is caught before anything is sent.
    let mut damaged = link.clone();
    damaged.truncate(link.len() - 7);
    let bad = bob.run(&["join", &damaged]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("invite link"), "{}", bad.stderr);
}
