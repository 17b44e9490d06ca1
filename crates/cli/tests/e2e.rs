//! End to end: the real `backchannel` binary against real relay processes on
//! loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Person, Relay, free_port, parse_messages, run, run_env, set_up_channel};

fn texts(messages: &[(String, String)]) -> Vec<String> {
    messages.iter().map(|(_, t)| t.clone()).collect()
}

#[test]
fn two_members_on_two_relays_talk_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let relay_a = Relay::start(&tmp.path().join("relay-a"), free_port());
    let relay_b = Relay::start(&tmp.path().join("relay-b"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay_a.address,
        &[(&bob, &relay_b.address)],
    );

    let show = alice.run(&["--json", "channel", "show", "ops"]).ok();
    let show: serde_json::Value = serde_json::from_str(show.stdout.trim()).unwrap();
    assert_eq!(show["members"].as_array().unwrap().len(), 2);
    assert_eq!(show["suite"], "xwing");

    alice.run(&["send", "ops", "hello bob"]).ok();
    alice.run(&["send", "ops", "are you there?"]).ok();
    assert_eq!(
        bob.read("ops"),
        vec![
            ("alice".to_owned(), "hello bob".to_owned()),
            ("alice".to_owned(), "are you there?".to_owned())
        ]
    );
    bob.run(&["send", "ops", "here, via relay B"]).ok();
    let at_alice = alice.read("ops");
    assert_eq!(texts(&at_alice), vec!["here, via relay B"]);
    // Nothing is shown twice.
    assert!(bob.read("ops").is_empty());
    assert!(alice.read("ops").is_empty());
    // --all shows the history, own messages included.
    let all = support::parse_all(&alice.run(&["--json", "read", "ops", "--all"]).ok().stdout);
    assert_eq!(all.len(), 3);
}

#[test]
fn a_removed_member_cannot_read_later_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
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
    alice.run(&["send", "ops", "before"]).ok();
    assert_eq!(texts(&carol.read("ops")), vec!["before"]);

    let removed = alice.run(&["remove", "ops", "carol"]).ok();
    assert!(removed.stdout.contains("Removed carol"));
    bob.run(&["send", "ops", "after carol left"]).ok();
    alice.run(&["send", "ops", "also after"]).ok();
    assert_eq!(texts(&bob.read("ops")), vec!["before", "also after"]);
    let carol_sees = carol.run(&["read", "ops"]).ok();
    assert!(
        !carol_sees.stdout.contains("after"),
        "{}",
        carol_sees.stdout
    );
    assert!(carol_sees.stdout.contains("no longer a member"));
    // Carol can no longer send either.
    let refused = carol.run(&["send", "ops", "let me back"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("no longer an active member"),
        "{}",
        refused.stderr
    );
}

#[test]
fn a_relay_killed_mid_conversation_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = tmp.path().join("relay");
    let mut relay = Relay::start(&data, port);
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address)],
    );
    for i in 0..5 {
        alice.run(&["send", "ops", &format!("m{i}")]).ok();
    }
    relay.kill();
    // While the relay is down, a send fails clearly and stays queued.
    let down = alice.run(&["send", "ops", "m5"]);
    assert_eq!(down.code, 1, "{down:?}");
    assert!(down.stderr.contains("stay queued"), "{}", down.stderr);
    relay = Relay::start(&data, port);
    for i in 6..10 {
        alice.run(&["send", "ops", &format!("m{i}")]).ok();
    }
    let got = texts(&bob.read("ops"));
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    drop(relay);
}

#[test]
fn a_reader_killed_between_fetch_and_acknowledgement_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let relay = Relay::start_with(
        &tmp.path().join("relay"),
        free_port(),
        &["--metrics", &format!("127.0.0.1:{metrics_port}")],
        &[],
    );
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address)],
    );
    let total = 60;
    for i in 0..total {
        alice.run(&["send", "ops", &format!("n{i}")]).ok();
    }
    // Bob's reader is killed again and again while it works through the backlog:
    // each time as soon as the relay's metrics show a delivery not yet
    // acknowledged (watched, not guessed from a fixed delay), so that kills land
    // after it stored a message and before the relay heard the acknowledgement.
    let mut shown: Vec<(String, String)> = Vec::new();
    let counts = || {
        let m = http_get(metrics_port, "/metrics");
        (
            metric(&m, "backchannel_relay_messages_delivered_total"),
            metric(&m, "backchannel_relay_messages_acked_total"),
        )
    };
    for round in 0..12u64 {
        let (delivered, _) = counts();
        let mut child = Command::new(support::bin())
            .arg("--home")
            .arg(&bob.home)
            .args(["--json", "read", "ops", "--follow"])
            .env("BACKCHANNEL_PASSPHRASE", support::PASSPHRASE)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The first reader has the whole backlog waiting; a later one may find
        // nothing left for it.
        let limit = Duration::from_secs(if round == 0 { 60 } else { 10 });
        let end = std::time::Instant::now() + limit;
        let mut caught = false;
        while std::time::Instant::now() < end {
            let (d, a) = counts();
            if d > delivered && d > a {
                caught = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        shown.extend(parse_messages(&String::from_utf8_lossy(&out.stdout)));
        assert!(
            caught || round > 0,
            "the first reader was delivered nothing"
        );
        if !caught {
            break;
        }
    }
    shown.extend(bob.read("ops"));
    let got = texts(&shown);
    let want: Vec<String> = (0..total).map(|i| format!("n{i}")).collect();
    // Everything arrives; a message shown by a reader that died before saving its
    // read position may be shown again, but it is stored once.
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, want, "lost or reordered");
    let history = support::parse_all(&bob.run(&["--json", "read", "ops", "--all"]).ok().stdout);
    assert_eq!(texts(&history), want, "stored twice or lost");
    // The relay delivered some messages more than once: killed readers had not
    // acknowledged them.
    let metrics = http_get(metrics_port, "/metrics");
    let delivered = metric(&metrics, "backchannel_relay_messages_delivered_total");
    let acked = metric(&metrics, "backchannel_relay_messages_acked_total");
    assert!(
        delivered > acked,
        "no redelivery happened: delivered {delivered}, acked {acked}"
    );
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn a_wrong_passphrase_gets_one_clear_line_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("alice");
    run(&home, &["init", "--name", "alice"]).ok();
    let before = std::fs::read(home.join("profile.db")).unwrap();
    let out = run_env(
        &home,
        &["channel", "list"],
        &[("BACKCHANNEL_PASSPHRASE", "wrong")],
    );
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "error: wrong passphrase\nhint: nothing was changed; try again (the passphrase cannot be recovered)\n"
    );
    assert_eq!(std::fs::read(home.join("profile.db")).unwrap(), before);
    run(&home, &["channel", "list"]).ok();
}

#[test]
fn a_damaged_profile_is_a_security_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("alice");
    run(&home, &["init", "--name", "alice"]).ok();
    let path = home.join("profile.db");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let out = run(&home, &["channel", "list"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: the profile has been altered or damaged on disk"),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2_and_user_errors_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("nobody");
    let bad = run(&home, &["sned", "ops", "x"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("unrecognized subcommand 'sned'"),
        "{}",
        bad.stderr
    );
    let missing = run(&home, &["remove", "ops"]);
    assert_eq!(missing.code, 2);
    // Without text, send reads standard input: nothing there is a user error.
    let empty = run(&home, &["send", "ops"]);
    assert_eq!(empty.code, 1, "{empty:?}");
    assert!(empty.stderr.contains("empty"), "{}", empty.stderr);
    let no_profile = run(&home, &["channel", "list"]);
    assert_eq!(no_profile.code, 1);
    assert_eq!(
        no_profile.stderr.lines().next().unwrap(),
        format!("error: there is no profile at {}", home.display())
    );
    run(&home, &["init", "--name", "x"]).ok();
    let bad_relay = run(
        &home,
        &["channel", "create", "ops", "--relay", "not-a-relay"],
    );
    assert_eq!(bad_relay.code, 1);
    assert!(
        bad_relay
            .stderr
            .starts_with("error: 'not-a-relay' is not a relay address")
    );
    let unknown = run(&home, &["send", "nope", "hi"]);
    assert_eq!(unknown.code, 1);
    assert_eq!(unknown.stderr, "error: there is no channel called 'nope'\n");
}

#[test]
fn a_replay_by_the_relay_shows_as_an_alert_and_read_exits_3() {
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
    alice.run(&["send", "ops", "transfer 100"]).ok();
    // The relay's operator stores the message a second time.
    support::replay_newest(&data);
    let out = bob.run(&["--json", "read", "ops"]);
    assert_eq!(out.code, 3, "{out:?}");
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0]["text"], "transfer 100");
    assert_eq!(lines[0]["from"], "alice");
    assert!(lines[0]["sent_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["alert"], "replayed");
    assert!(lines[1]["message"].as_str().unwrap().contains("replaying"));
    assert!(out.stderr.contains("security alert"), "{}", out.stderr);
    // Shown once; the next read is quiet.
    let again = bob.run(&["--json", "read", "ops"]).ok();
    assert_eq!(again.stdout, "");
}

#[test]
fn status_compares_views_with_the_other_members() {
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
    alice.run(&["send", "ops", "hello"]).ok();
    // Bob answers status requests while he reads with --follow.
    let mut follower = Command::new(support::bin())
        .arg("--home")
        .arg(&bob.home)
        .args(["read", "ops", "--follow"])
        .env("BACKCHANNEL_PASSPHRASE", support::PASSPHRASE)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = alice.run(&["--json", "status", "ops", "--wait", "3"]).ok();
    follower.kill().unwrap();
    let _ = follower.wait();
    let view: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let bob_view = &view["members"][0];
    assert_eq!(bob_view["member"], "bob");
    assert_eq!(bob_view["answered"], true, "{}", out.stdout);
    assert_eq!(bob_view["agrees"], true);
    assert_eq!(bob_view["epoch"], view["epoch"]);
}
