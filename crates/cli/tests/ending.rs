//! End to end, the end of a channel: the real binary and real relay processes.
//! Burning with a member offline, the end date, disappearing messages at the relay,
//! `panic` and the duress passphrase; then a search of every member's profile
//! (decrypted pages and raw files) and of the relays' data directories for anything
//! of the channel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::time::Duration;

use backchannel_client::ClientConfig;
use backchannel_sim::forensics;
use backchannel_store::Store;
use support::{
    PASSPHRASE, Person, Relay, eventually, follow, free_port, run_env, set_up_channel, wait_for,
};

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// What a person's profile knows of `channel` that must go with it.
fn profile_needles(person: &Person, channel: &str, texts: &[&str]) -> Vec<(String, Vec<u8>)> {
    let store = Store::open(&person.home, PASSPHRASE.as_bytes()).unwrap();
    let client = backchannel_client::Client::open(store, ClientConfig::default()).unwrap();
    let summary = client.engine().channel(channel).unwrap();
    let mut needles = forensics::channel_needles(&summary, texts);
    for m in client.mailboxes() {
        needles.extend(forensics::needles("own mailbox (read)", &m.read_id.0));
        needles.extend(forensics::needles("own mailbox key", &m.auth_seed[..]));
    }
    needles
}

/// What a relay holds: every mailbox's identifiers and key, and 64-byte pieces of
/// every stored blob.
fn relay_needles(data: &Path) -> Vec<(String, Vec<u8>)> {
    let db = rusqlite::Connection::open(data.join("relay.db")).unwrap();
    let mut needles = Vec::new();
    let mut stmt = db
        .prepare("SELECT send_id, read_id, auth_key FROM mailboxes")
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!rows.is_empty());
    for (send, read, key) in rows {
        needles.push(("relay send id".into(), send));
        needles.push(("relay read id".into(), read));
        needles.push(("relay mailbox key".into(), key));
    }
    let mut stmt = db.prepare("SELECT blob FROM messages").unwrap();
    let blobs: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for blob in blobs {
        for (i, piece) in blob.chunks(64).enumerate().step_by(7) {
            needles.push((format!("blob piece {i}"), piece.to_vec()));
        }
    }
    needles
}

fn relay_mailboxes(data: &Path) -> i64 {
    let db = rusqlite::Connection::open(data.join("relay.db")).unwrap();
    db.query_row("SELECT count(*) FROM mailboxes", [], |r| r.get(0))
        .unwrap()
}

fn assert_profile_clean(person: &Person, needles: &[(String, Vec<u8>)]) {
    let store = Store::open(&person.home, PASSPHRASE.as_bytes()).unwrap();
    store.checkpoint().unwrap();
    for (i, page) in store.decrypted_pages().unwrap().iter().enumerate() {
        let found = forensics::find(page, needles);
        assert!(
            found.is_empty(),
            "page {} of {} holds {found:?}",
            i + 1,
            person.home.display()
        );
    }
    drop(store);
    let hits = forensics::search_dir(&person.home, needles);
    assert!(hits.is_empty(), "{hits:?}");
}

#[test]
fn a_burn_reaches_every_member_even_one_offline_and_leaves_nothing_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("relay-a"), tmp.path().join("relay-b"));
    let relay_a = Relay::start(&data_a, free_port());
    let relay_b = Relay::start(&data_b, free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    let carol = Person::new(tmp.path(), "carol");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay_a.address,
        &[(&bob, &relay_a.address), (&carol, &relay_b.address)],
    );
    let texts = ["the meeting is at noon", "see you there", "last words"];
    alice.run(&["send", "ops", texts[0]]).ok();
    assert_eq!(carol.read("ops").len(), 1);
    carol.run(&["send", "ops", texts[1]]).ok();

    // Bob is online (following); carol is not.
    let (mut bob_follow, bob_lines) = follow(&bob, "ops");
    alice.run(&["send", "ops", texts[2]]).ok();
    wait_for(&bob_lines, texts[2]);

    let mut needles: Vec<_> = [&alice, &bob, &carol]
        .iter()
        .flat_map(|p| profile_needles(p, "ops", &texts))
        .collect();
    needles.extend(relay_needles(&data_a));
    needles.extend(relay_needles(&data_b));

    let burned = alice.run(&["--json", "burn", "ops", "--wait", "20"]).ok();
    let report = &json_lines(&burned.stdout)[0];
    assert_eq!(report["members"], 3, "{report}");
    assert_eq!(report["burned_on"], 2, "{report}");
    assert_eq!(report["confirmed"], serde_json::json!(["bob"]));
    assert_eq!(report["waiting"], serde_json::json!(["carol"]));
    assert_eq!(report["erased_here"], false);

    // Bob's client erased it, said so, and stopped following.
    let seen = wait_for(&bob_lines, "\"erased\"");
    let notice: serde_json::Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    assert_eq!(notice["erased"], "burned");
    assert_eq!(notice["by"], "alice");
    assert!(eventually(Duration::from_secs(20), || {
        bob_follow.try_wait().unwrap().is_some()
    }));
    assert!(bob_follow.wait().unwrap().success());

    // Alice waits for carol: nothing can be sent meanwhile, and she is told.
    let human = alice.run(&["channel", "list"]).ok();
    assert!(
        human.stdout.contains("burning: confirmed by 1 of 2 others"),
        "{}",
        human.stdout
    );
    let refused = alice.run(&["send", "ops", "one more"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("being burned"),
        "{}",
        refused.stderr
    );

    // Carol comes back: her client burns it and confirms.
    let back = carol.run(&["--json", "read", "ops"]).ok();
    let lines = json_lines(&back.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l["erased"] == "burned" && l["by"] == "alice"),
        "{}",
        back.stdout
    );
    let human = alice.run(&["burn", "ops"]).ok();
    assert!(
        human.stdout.contains("every member confirmed"),
        "{}",
        human.stdout
    );

    for p in [&alice, &bob, &carol] {
        let list = p.run(&["--json", "channel", "list"]).ok();
        assert_eq!(list.stdout, "", "{}", p.home.display());
        assert_profile_clean(p, &needles);
    }
    // The relays hold nothing of it: no mailbox, no blob, no identifier, in the
    // database, its log or anywhere else in their directories.
    assert_eq!(relay_mailboxes(&data_a), 0);
    assert_eq!(relay_mailboxes(&data_b), 0);
    for data in [&data_a, &data_b] {
        let hits = forensics::search_dir(data, &needles);
        assert!(hits.is_empty(), "{hits:?}");
    }
    drop((relay_a, relay_b));
}

#[test]
fn a_member_who_erases_a_burned_channel_while_a_relay_is_down_leaves_no_row_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("relay-a"), tmp.path().join("relay-b"));
    let port_a = free_port();
    let mut relay_a = Relay::start(&data_a, port_a);
    let relay_b = Relay::start(&data_b, free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay_a.address,
        &[(&bob, &relay_b.address)],
    );
    let texts = ["the drop is behind the station"];
    alice.run(&["send", "ops", texts[0]]).ok();
    assert_eq!(bob.read("ops").len(), 1);
    let needles = profile_needles(&bob, "ops", &texts);

    // Alice burns; the notice reaches Bob's mailbox; then Alice's relay goes down,
    // so Bob's confirmation cannot leave.
    alice.run(&["burn", "ops", "--wait", "0"]).ok();
    relay_a.kill();
    let back = bob.run(&["--json", "read", "ops"]);
    assert!(back.stdout.contains("\"erased\""), "{back:?}");

    // The confirmation waits in Bob's outbox, addressed to Alice's mailbox: that
    // address and the sealed blob are all it keeps. Nothing else of the channel
    // is left: no identifier, key, text or mailbox of his.
    let waiting: Vec<_> = needles
        .iter()
        .filter(|(name, _)| !name.starts_with("alice's mailbox"))
        .cloned()
        .collect();
    assert_profile_clean(&bob, &waiting);

    // Alice's relay comes back: the confirmation leaves, and with it the last
    // trace; Alice's burn completes.
    let _relay_a = Relay::start(&data_a, port_a);
    assert!(eventually(Duration::from_secs(30), || {
        bob.run(&["channel", "list"]).code == 0
            && alice
                .run(&["burn", "ops"])
                .stdout
                .contains("every member confirmed")
    }));
    assert_profile_clean(&bob, &needles);
}

#[test]
fn a_channel_ends_on_its_date_and_disappearing_messages_leave_the_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let config = tmp.path().join("relay.toml");
    std::fs::write(&config, "sweep_interval_secs = 1\n").unwrap();
    let relay = Relay::start_with(
        &data,
        free_port(),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    let created = alice
        .run(&[
            "--json",
            "channel",
            "create",
            "brief",
            "--relay",
            &relay.address,
            "--expires-in",
            "40s",
            "--disappear",
            "4s",
        ])
        .ok();
    let created = &json_lines(&created.stdout)[0];
    assert_eq!(created["disappearing_secs"], 4);
    assert!(created["expires_at"].as_str().unwrap().ends_with('Z'));
    // (set_up_channel would create it again: add bob by hand.)
    let kp = tmp.path().join("kp");
    let welcome = tmp.path().join("welcome");
    bob.run(&[
        "key-package",
        "--relay",
        &relay.address,
        "--out",
        kp.to_str().unwrap(),
    ])
    .ok();
    alice
        .run(&[
            "channel",
            "add",
            "brief",
            "--key-package",
            kp.to_str().unwrap(),
            "--welcome-out",
            welcome.to_str().unwrap(),
        ])
        .ok();
    bob.run(&["join", "--welcome", welcome.to_str().unwrap()])
        .ok();
    let shown = bob.run(&["channel", "show", "brief"]).ok();
    assert!(
        shown.stdout.contains("messages disappear after 4s"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("ends "), "{}", shown.stdout);

    // Bob does not read it: after 4 seconds the relay drops it unread.
    alice.run(&["send", "brief", "gone in four seconds"]).ok();
    let held = || {
        let db = rusqlite::Connection::open(data.join("relay.db")).unwrap();
        db.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    assert!(held() > 0);
    assert!(eventually(Duration::from_secs(15), || held() == 0));
    // Alice's own copy went too (her client applies the same timer).
    let all = alice.run(&["--json", "read", "brief", "--all"]).ok();
    assert!(support::parse_all(&all.stdout).is_empty(), "{}", all.stdout);
    assert!(bob.read("brief").is_empty());

    // A message bob reads in time is shown, then disappears from his device.
    alice.run(&["send", "brief", "read me quickly"]).ok();
    assert_eq!(
        support::parse_messages(&bob.run(&["--json", "read", "brief"]).ok().stdout).len(),
        1
    );
    std::thread::sleep(Duration::from_secs(5));
    let again = bob.run(&["--json", "read", "brief", "--all"]).ok();
    assert!(
        support::parse_all(&again.stdout).is_empty(),
        "{}",
        again.stdout
    );

    // After the end date, every command says it ended; the channel is gone.
    let needles = profile_needles(&bob, "brief", &["read me quickly"]);
    let end = chrono_free_wait(created["expires_at"].as_str().unwrap());
    std::thread::sleep(end);
    let out = bob.run(&["--json", "channel", "list"]).ok();
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert_eq!(lines[0]["erased"], "expired");
    let refused = alice.run(&["send", "brief", "too late"]);
    assert_eq!(refused.code, 1);
    // Their clients deleted the mailboxes at the relay as they erased the channel.
    alice.run(&["channel", "list"]).ok();
    assert_eq!(relay_mailboxes(&data), 0);
    assert_profile_clean(&bob, &needles);
    drop(relay);
}

/// How long until an RFC 3339 UTC time (`2026-11-28T23:59:01Z`) has passed, plus a
/// second.
fn chrono_free_wait(rfc3339: &str) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (date, time) = rfc3339.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<u64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    let at = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    Duration::from_secs(at.saturating_sub(now) + 1)
}

#[test]
fn panic_erases_the_profile_without_its_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = Person::new(tmp.path(), "alice");
    // Without --yes and without typing ERASE, nothing happens.
    let refused = run_env(&alice.home, &["panic"], &[]);
    assert_eq!(refused.code, 1);
    assert!(Store::exists(&alice.home));
    let out = run_env(&alice.home, &["panic", "--yes"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("erased"));
    assert!(!alice.home.exists());
    let after = alice.run(&["channel", "list"]);
    assert_eq!(after.code, 1);
    assert!(after.stderr.contains("no profile"), "{}", after.stderr);
}

#[test]
fn the_duress_passphrase_erases_the_profile_and_answers_wrong_passphrase() {
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
    bob.run(&["send", "ops", "the source is in the ministry"])
        .ok();
    assert_eq!(alice.read("ops").len(), 1);
    let needles = profile_needles(&alice, "ops", &["the source is in the ministry"]);

    let same = run_env(
        &alice.home,
        &["duress"],
        &[
            ("BACKCHANNEL_PASSPHRASE", PASSPHRASE),
            ("BACKCHANNEL_DURESS_PASSPHRASE", PASSPHRASE),
        ],
    );
    assert_eq!(same.code, 1);
    assert!(same.stderr.contains("must differ"), "{}", same.stderr);
    // Empty passphrases are refused from the environment as from a prompt.
    let empty = run_env(
        &alice.home,
        &["duress"],
        &[
            ("BACKCHANNEL_PASSPHRASE", PASSPHRASE),
            ("BACKCHANNEL_DURESS_PASSPHRASE", ""),
        ],
    );
    assert_eq!(empty.code, 1);
    assert!(empty.stderr.contains("cannot be empty"), "{}", empty.stderr);
    let fresh = tmp.path().join("fresh");
    let init = run_env(&fresh, &["init"], &[("BACKCHANNEL_PASSPHRASE", "")]);
    assert_eq!(init.code, 1);
    assert!(init.stderr.contains("cannot be empty"), "{}", init.stderr);
    assert!(!Store::exists(&fresh));
    run_env(
        &alice.home,
        &["duress"],
        &[
            ("BACKCHANNEL_PASSPHRASE", PASSPHRASE),
            ("BACKCHANNEL_DURESS_PASSPHRASE", "open sesame"),
        ],
    );
    let wrong = run_env(
        &alice.home,
        &["read", "ops"],
        &[("BACKCHANNEL_PASSPHRASE", "not it")],
    );
    let coerced = run_env(
        &alice.home,
        &["read", "ops"],
        &[("BACKCHANNEL_PASSPHRASE", "open sesame")],
    );
    // Word for word what a wrong passphrase gets.
    assert_eq!(coerced.code, wrong.code);
    assert_eq!(coerced.stdout, wrong.stdout);
    assert_eq!(coerced.stderr, wrong.stderr);
    assert!(coerced.stderr.contains("wrong passphrase"));
    // And the real one no longer opens anything: the profile is gone.
    let real = alice.run(&["read", "ops"]);
    assert_eq!(real.stderr, wrong.stderr);
    assert!(Store::open(&alice.home, PASSPHRASE.as_bytes()).is_err());
    let hits = forensics::search_dir(&alice.home, &needles);
    assert!(hits.is_empty(), "{hits:?}");
}

#[test]
fn a_removed_member_cannot_burn_the_channel_from_an_old_copy() {
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
    // Carol keeps a copy of her profile; then she is removed, and her own client
    // learns it (and deletes its mailbox).
    let stale = Person {
        home: tmp.path().join("carol-copy"),
    };
    std::fs::create_dir_all(&stale.home).unwrap();
    for entry in std::fs::read_dir(&carol.home).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), stale.home.join(entry.file_name())).unwrap();
    }
    alice.run(&["remove", "ops", "carol"]).ok();
    carol.run(&["read", "ops"]).ok();

    // From the copy, which still holds the old epoch's keys, she burns the channel.
    let out = stale.run(&["--json", "burn", "ops", "--wait", "2"]);
    assert_eq!(out.code, 0, "{out:?}");
    for p in [&alice, &bob] {
        let read = p.run(&["--json", "read", "ops"]);
        assert_eq!(read.code, 3, "{read:?}");
        assert!(!read.stdout.contains("\"erased\""), "{}", read.stdout);
        let alerts: Vec<_> = json_lines(&read.stdout)
            .into_iter()
            .filter_map(|l| l["alert"].as_str().map(str::to_owned))
            .collect();
        assert!(
            alerts
                .iter()
                .any(|a| a == "from-removed-member" || a == "refused-change"),
            "{alerts:?}"
        );
    }
    bob.run(&["send", "ops", "still here"]).ok();
    assert_eq!(
        alice.read("ops"),
        vec![("bob".to_owned(), "still here".to_owned())]
    );

    // Only the administrator sets the timer, and the others are told.
    let refused = bob.run(&["channel", "disappear", "ops", "off"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    alice.run(&["channel", "disappear", "ops", "1h"]).ok();
    let told = bob.run(&["read", "ops"]).ok();
    assert!(
        told.stdout
            .contains("alice changed the rules of 'ops': messages disappear after 1h."),
        "{}",
        told.stdout
    );
}
