//! End to end, joining with a code said aloud: `invite` in one process, `join` in
//! another, a real relay between them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use support::{PASSPHRASE, Person, Relay, free_port};

/// Starts `invite` and returns the process and the code it printed first.
fn invite(person: &Person, channel: &str) -> (Child, String) {
    let mut child = Command::new(support::bin())
        .arg("--home")
        .arg(&person.home)
        .args(["invite", channel, "--wait", "30"])
        .env("BACKCHANNEL_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let code = lines.next().unwrap().unwrap();
    // Keep the rest for the end.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    drop(rest);
    (child, code)
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_code_brings_the_joiner_in_and_they_talk() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    alice
        .run(&["channel", "create", "ops", "--relay", &relay.address])
        .ok();
    let (inviter, code) = invite(&alice, "ops");
    assert!(
        code.parse::<backchannel_proto::code::InviteCode>().is_ok(),
        "{code}"
    );
    let joined = bob.run(&["join", &code, "--relay", &relay.address]).ok();
    assert!(joined.stdout.contains("Joined 'ops'"), "{}", joined.stdout);
    assert!(
        joined.stdout.contains("invited by alice"),
        "{}",
        joined.stdout
    );
    let (status, stderr) = finish(inviter);
    assert_eq!(status, 0, "{stderr}");

    bob.run(&["send", "ops", "hello from bob"]).ok();
    assert_eq!(
        alice.read("ops"),
        vec![("bob".to_owned(), "hello from bob".to_owned())]
    );
    alice.run(&["send", "ops", "welcome"]).ok();
    assert_eq!(
        bob.read("ops"),
        vec![("alice".to_owned(), "welcome".to_owned())]
    );

    // With a usual relay set at init, nobody needs to type the address.
    let carol = Person {
        home: tmp.path().join("carol"),
    };
    support::run(
        &carol.home,
        &["init", "--name", "carol", "--relay", &relay.address],
    )
    .ok();
    let (inviter, code) = invite(&alice, "ops");
    let joined = carol.run(&["join", &code]).ok();
    assert!(joined.stdout.contains("3 members"), "{}", joined.stdout);
    assert_eq!(finish(inviter).0, 0);
    carol.run(&["channel", "create", "own"]).ok();
}

#[test]
fn a_wrong_code_fails_on_both_sides_and_a_typo_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let mallory = Person::new(tmp.path(), "mallory");
    let bob = Person::new(tmp.path(), "bob");
    alice
        .run(&["channel", "create", "ops", "--relay", &relay.address])
        .ok();
    let (inviter, code) = invite(&alice, "ops");
    let number = code.split('-').next().unwrap();
    let words = if code.ends_with("-zoo-zoo") {
        "abandon-abandon"
    } else {
        "zoo-zoo"
    };
    let guess = mallory.run(&[
        "join",
        &format!("{number}-{words}"),
        "--relay",
        &relay.address,
    ]);
    assert_eq!(guess.code, 1, "{guess:?}");
    assert!(guess.stderr.contains("did not match"), "{}", guess.stderr);
    let (status, stderr) = finish(inviter);
    assert_eq!(
        status, 3,
        "a possible guesser is a security alert: {stderr}"
    );
    assert!(stderr.contains("guessing codes"), "{stderr}");
    // The real code is burnt now.
    let late = bob.run(&["join", &code, "--relay", &relay.address]);
    assert_eq!(late.code, 1);
    assert!(
        late.stderr.contains("no open invitation"),
        "{}",
        late.stderr
    );
    assert_eq!(
        alice
            .run(&["--json", "channel", "show", "ops"])
            .ok()
            .stdout
            .matches("\"you\"")
            .count(),
        1
    );
    // Typos are explained before anything is spent.
    let typo = bob.run(&["join", "17-ocaen-violin", "--relay", &relay.address]);
    assert_eq!(typo.code, 1);
    assert!(
        typo.stderr.contains("did you mean 'ocean'?"),
        "{}",
        typo.stderr
    );
}
