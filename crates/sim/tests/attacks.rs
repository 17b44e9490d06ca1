//! One test per attack a relay, the network or a malicious member can mount,
//! asserting the exact alert (or rejection) an honest member gets. Engines run on
//! real stores in the simulator; the relay here is the simulated network, which can
//! do anything a relay can. (`client/tests/adversary.rs` repeats the relay's attacks
//! against the real relay and client.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use backchannel_core::{Alert, Event};
use backchannel_proto::envelope::ContentKind;
use backchannel_proto::payload::{Payload, PayloadKind};
use backchannel_sim::insider::Insider;
use backchannel_sim::{Sim, Verdict};

fn texts(sim: &Sim, node: usize) -> Vec<String> {
    sim.nodes[node]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

/// Three members: alice (administrator), bob, carol.
fn trio(seed: u64) -> (Sim, usize, usize, usize, backchannel_core::ChannelId) {
    let mut sim = Sim::new(seed);
    let (a, b, c) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    );
    let id = sim.create_channel(a, "ops");
    sim.add(a, "ops", b);
    sim.add(a, "ops", c);
    sim.run();
    (sim, a, b, c, id)
}

fn mailbox(sim: &Sim, of: &str) -> backchannel_proto::addr::MailboxAddr {
    sim.nodes[0]
        .engine
        .channel("ops")
        .unwrap()
        .members
        .into_iter()
        .find(|m| m.name == of)
        .unwrap()
        .mailbox
}

/// Blobs delivered to `node` since `from` in the delivery log.
fn delivered_to(sim: &Sim, node: usize, from: usize) -> Vec<Vec<u8>> {
    sim.delivered[from..]
        .iter()
        .filter(|(to, _, _)| *to == node)
        .map(|(_, _, b)| b.clone())
        .collect()
}

#[test]
fn a_message_withheld_from_one_member_shows_through_another_members_heads() {
    let (mut sim, alice, bob, carol, _) = trio(1);
    let carol_box = mailbox(&sim, "carol");
    let mut armed = true;
    sim.filter = Some(Box::new(move |from, t| {
        if armed && from == alice && t.to == carol_box {
            armed = false;
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    // Alice says one thing and nothing more; only Bob's reply reveals it to Carol.
    sim.send(alice, "ops", "the real offer is 40");
    sim.run_for(10);
    sim.send(bob, "ops", "noted");
    sim.run();
    assert_eq!(
        sim.nodes[carol].alerts(),
        vec![Alert::Withheld {
            from: "alice".into(),
            missing: vec![1],
            reported_by: Some("bob".into()),
        }]
    );
    assert!(sim.nodes[bob].alerts().is_empty());
}

#[test]
fn replays_within_and_across_epochs_are_caught() {
    let (mut sim, alice, bob, _carol, id) = trio(2);
    let mark = sim.delivered.len();
    sim.send(alice, "ops", "transfer approved");
    sim.run();
    let captured = delivered_to(&sim, bob, mark);
    assert_eq!(captured.len(), 1);
    // Same epoch.
    sim.inject(bob, id, captured[0].clone());
    // Two updates later: the epoch's secrets are still kept for late messages.
    for _ in 0..2 {
        let now = sim.now;
        sim.nodes[alice].engine.self_update(now, "ops").unwrap();
        sim.collect(alice);
        sim.run();
    }
    sim.inject(bob, id, captured[0].clone());
    // Seven more: the epoch's message secrets are gone.
    for _ in 0..7 {
        let now = sim.now;
        sim.nodes[alice].engine.self_update(now, "ops").unwrap();
        sim.collect(alice);
        sim.run();
    }
    sim.inject(bob, id, captured[0].clone());
    let alerts = sim.nodes[bob].alerts();
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    assert!(
        alerts.iter().all(|a| matches!(a, Alert::Replayed { .. })),
        "{alerts:?}"
    );
    assert_eq!(texts(&sim, bob), vec!["transfer approved"]);
}

#[test]
fn a_profile_restored_from_an_old_copy_learns_it_was_rolled_back() {
    let (mut sim, alice, bob, _carol, id) = trio(3);
    let backup = sim.copy_profile(bob);
    for i in 0..3 {
        sim.send(bob, "ops", &format!("b{i}"));
    }
    sim.run();
    let mark = sim.delivered.len();
    sim.send(alice, "ops", "seen your three");
    sim.run();
    let replay = delivered_to(&sim, bob, mark);
    // Bob's device is restored from the backup; the relay replays what it kept.
    let mut restored = Sim::load_copy(&backup);
    for blob in &replay {
        restored.handle_incoming(sim.now, &id, blob).unwrap();
    }
    let mut alerts = Vec::new();
    while let Some(out) = restored.poll_output() {
        if let backchannel_core::Output::Event(Event::Alert { alert, .. }) = out {
            alerts.push(alert);
        }
    }
    assert_eq!(
        alerts,
        vec![Alert::Rollback {
            reported: 3,
            own: 0,
            by: "alice".into(),
        }]
    );
    assert!(
        alerts[0]
            .to_string()
            .contains("restored from an old copy or cloned")
    );
}

#[test]
fn a_members_own_message_reflected_back_is_caught() {
    let (mut sim, alice, bob, _carol, id) = trio(4);
    let mark = sim.delivered.len();
    sim.send(alice, "ops", "hello");
    sim.run();
    let to_bob = delivered_to(&sim, bob, mark);
    sim.inject(alice, id, to_bob[0].clone());
    assert_eq!(sim.nodes[alice].alerts(), vec![Alert::Reflected]);
    assert!(texts(&sim, alice).is_empty());
}

#[test]
fn a_message_moved_from_another_channel_is_caught() {
    let mut sim = Sim::new(5);
    let (alice, bob, carol) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    );
    sim.create_channel(alice, "x");
    sim.add(alice, "x", bob);
    let y = sim.create_channel(carol, "y");
    sim.add(carol, "y", bob);
    sim.run();
    let mark = sim.delivered.len();
    sim.send(alice, "x", "for channel x only");
    sim.run();
    let blob = delivered_to(&sim, bob, mark)[0].clone();
    sim.inject(bob, y, blob);
    assert_eq!(sim.nodes[bob].alerts(), vec![Alert::Moved]);
    assert_eq!(texts(&sim, bob), vec!["for channel x only"]);
}

#[test]
fn a_removed_member_cannot_inject_messages_after_removal() {
    let (mut sim, alice, bob, carol, id) = trio(6);
    let carol_before = sim.copy_profile(carol);
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .remove_member(now, "ops", "carol")
        .unwrap();
    sim.collect(alice);
    sim.run();
    sim.run_for(10 * 60 * 1000);
    // Carol's old state still holds the previous epoch's keys, which members keep
    // for late messages.
    let mut old_carol = Sim::load_copy(&carol_before);
    old_carol
        .send_text(sim.now, "ops", "alice lied to you")
        .unwrap();
    let bob_box = mailbox(&sim, "bob");
    let mut forged = Vec::new();
    while let Some(out) = old_carol.poll_output() {
        if let backchannel_core::Output::Transmit(t) = out
            && t.to == bob_box
        {
            forged.push(t.blob);
        }
    }
    for blob in forged {
        sim.inject(bob, id, blob);
    }
    assert_eq!(
        sim.nodes[bob].alerts(),
        vec![Alert::FromRemoved {
            from: "carol".into()
        }]
    );
    assert!(!texts(&sim, bob).contains(&"alice lied to you".to_owned()));
}

#[test]
fn membership_changes_by_the_relay_or_a_non_administrator_are_refused() {
    let (mut sim, alice, bob, carol, id) = trio(7);
    // The relay replays the commit that added Carol.
    let add_commit = sim
        .delivered
        .iter()
        .find(|(to, _, _)| *to == bob)
        .map(|(_, _, b)| b.clone())
        .unwrap();
    sim.inject(bob, id, add_commit);
    // Bob, not the administrator, commits the addition of Dave himself.
    let dave = sim.add_node("dave");
    let mailbox = sim.new_mailbox(dave);
    let now = sim.now;
    let kp = sim.nodes[dave]
        .engine
        .key_package(now, "dave", backchannel_core::mls::Suite::XWing, mailbox)
        .unwrap();
    let mut insider = Insider::open(&sim, bob, id);
    let key = insider.envelope_key();
    let kp = {
        use tls_codec::Deserialize as _;
        match openmls::prelude::MlsMessageIn::tls_deserialize_exact(kp.as_slice())
            .unwrap()
            .extract()
        {
            openmls::prelude::MlsMessageBodyIn::KeyPackage(kp) => kp
                .validate(
                    openmls_traits::OpenMlsProvider::crypto(&insider.backend),
                    openmls::prelude::ProtocolVersion::Mls10,
                )
                .unwrap(),
            _ => panic!(),
        }
    };
    let (commit, _, _) = insider
        .group
        .add_members(&insider.backend, &insider.signer, &[kp])
        .unwrap();
    let commit = {
        use tls_codec::Serialize as _;
        commit.tls_serialize_detached().unwrap()
    };
    for blob in Insider::seal(ContentKind::Mls, &commit, &key) {
        sim.inject(alice, id, blob.clone());
        sim.inject(carol, id, blob);
    }
    let refused = Alert::RefusedChange {
        by: "bob".into(),
        what: "change the channel although only its administrator may".into(),
    };
    assert_eq!(sim.nodes[alice].alerts(), vec![refused.clone()]);
    assert_eq!(sim.nodes[carol].alerts(), vec![refused]);
    assert!(
        matches!(sim.nodes[bob].alerts()[..], [Alert::Replayed { .. }]),
        "{:?}",
        sim.nodes[bob].alerts()
    );
    for n in [alice, carol] {
        assert_eq!(sim.nodes[n].engine.channel("ops").unwrap().members.len(), 3);
    }
}

#[test]
fn forked_commits_are_detected_and_the_forked_member_is_re_added() {
    let (mut sim, alice, bob, carol, id) = trio(8);
    sim.send(bob, "ops", "before the fork");
    sim.run();
    // A second copy of the administrator (a clone, or a malicious administrator)
    // commits a different update for the same epoch, and the relay shows it to
    // Carol instead of the real one.
    let clone = sim.copy_profile(alice);
    let carol_box = mailbox(&sim, "carol");
    // What the real administrator sends Carol (the commit, then its announcement)
    // is kept back.
    let kept: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
    let keep = kept.clone();
    sim.filter = Some(Box::new(move |from, t| {
        if from == alice && t.to == carol_box {
            keep.lock().unwrap().push(t.blob.clone());
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    let now = sim.now;
    sim.nodes[alice].engine.self_update(now, "ops").unwrap();
    sim.collect(alice);
    sim.filter = None;
    let mut twin = Insider::open_path(clone.path(), id);
    let key = twin.envelope_key();
    let bundle = twin
        .group
        .self_update(
            &twin.backend,
            &twin.signer,
            openmls::prelude::LeafNodeParameters::default(),
        )
        .unwrap();
    let other_commit = {
        use tls_codec::Serialize as _;
        bundle.commit().tls_serialize_detached().unwrap()
    };
    for blob in Insider::seal(ContentKind::Mls, &other_commit, &key) {
        sim.inject(carol, id, blob);
    }
    // Now the administrator's announcement (the last blob kept) reaches Carol.
    let announcement = kept.lock().unwrap().last().cloned().unwrap();
    sim.inject(carol, id, announcement);
    sim.run();
    let epoch = sim.nodes[alice].engine.channel("ops").unwrap().epoch;
    let carol_alerts = sim.nodes[carol].alerts();
    assert!(
        carol_alerts.contains(&Alert::Fork {
            by: "alice".into(),
            epoch: epoch - 1,
        }),
        "{carol_alerts:?}"
    );
    assert!(
        matches!(carol_alerts.last(), Some(Alert::ForkRecovered { .. })),
        "{carol_alerts:?}"
    );
    assert!(
        sim.nodes[bob].alerts().contains(&Alert::Fork {
            by: "carol".into(),
            epoch: epoch - 1,
        }),
        "{:?}",
        sim.nodes[bob].alerts()
    );
    // Carol now follows the administrator's history and reads what follows.
    sim.send(alice, "ops", "after the fork");
    sim.send(bob, "ops", "me too");
    sim.run();
    assert!(texts(&sim, carol).ends_with(&["after the fork".to_owned(), "me too".to_owned()]));
    assert_eq!(
        sim.nodes[carol].engine.epoch_authenticator("ops").unwrap(),
        sim.nodes[alice].engine.epoch_authenticator("ops").unwrap()
    );
    sim.send(carol, "ops", "back");
    sim.run();
    assert!(texts(&sim, alice).contains(&"back".to_owned()));
}

#[test]
fn a_withheld_update_is_noticed_from_other_members_announcements() {
    let (mut sim, alice, _bob, carol, _) = trio(9);
    let carol_box = mailbox(&sim, "carol");
    // Everything Alice sends to Carol now (the commit) is withheld.
    sim.filter = Some(Box::new(move |from, t| {
        if from == alice && t.to == carol_box {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    let now = sim.now;
    sim.nodes[alice].engine.self_update(now, "ops").unwrap();
    sim.collect(alice);
    sim.filter = None;
    sim.run();
    let epoch = sim.nodes[alice].engine.channel("ops").unwrap().epoch;
    let alerts = sim.nodes[carol].alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        matches!(&alerts[0], Alert::UpdateWithheld { epoch: e, .. } if *e == epoch),
        "{alerts:?}"
    );
    assert!(alerts[0].to_string().contains("never reached you"));
}

#[test]
fn tampered_ciphertext_is_reported() {
    let (mut sim, alice, bob, _carol, id) = trio(10);
    let bob_box = mailbox(&sim, "bob");
    sim.filter = Some(Box::new(move |_, t| {
        if t.to == bob_box {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    sim.send(alice, "ops", "pay 100");
    // Alice's sealed blob for Carol, with one byte flipped, is given to Bob.
    let mut blob = sim.in_flight().last().unwrap().transmit.blob.clone();
    blob[100] ^= 1;
    sim.inject(bob, id, blob);
    sim.run();
    let alerts = sim.nodes[bob].alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(matches!(&alerts[0], Alert::Undecryptable { count: 1, .. }));
    assert!(texts(&sim, bob).is_empty());
}

fn forged_payload(seq: u64, prev_hash: [u8; 32], body: &str) -> Vec<u8> {
    Payload {
        kind: PayloadKind::Text,
        seq,
        prev_hash,
        sent_at: 1,
        body: body.as_bytes().to_vec(),
        heads: Vec::new(),
    }
    .encode()
    .unwrap()
}

#[test]
fn a_sequence_number_far_in_the_future_is_rejected() {
    let (mut sim, alice, bob, _carol, id) = trio(11);
    let mut insider = Insider::open(&sim, alice, id);
    let key = insider.envelope_key();
    let message = insider.message(&forged_payload(1_000_000, [0; 32], "from the future"));
    for blob in Insider::seal(ContentKind::Mls, &message, &key) {
        sim.inject(bob, id, blob);
    }
    sim.run();
    assert_eq!(
        sim.nodes[bob].alerts(),
        vec![Alert::SequenceJump {
            from: "alice".into(),
            seq: 1_000_000,
            last: 0
        }]
    );
    assert!(texts(&sim, bob).is_empty());
}

#[test]
fn malformed_mls_inside_a_valid_envelope_is_rejected_and_the_queue_goes_on() {
    let (mut sim, alice, bob, _carol, id) = trio(12);
    let mut insider = Insider::open(&sim, alice, id);
    let key = insider.envelope_key();
    // Deep nesting: thousands of nested length prefixes, then trailing bytes after a
    // valid message.
    let mut nested = Vec::new();
    for _ in 0..5000 {
        nested.extend([0x00, 0x01, 0x00, 0x02, 0x80]);
    }
    let mut trailing = insider.message(&forged_payload(1, [0; 32], "valid but followed by junk"));
    trailing.extend([0, 0, 0, 1]);
    for content in [nested, trailing] {
        for blob in Insider::seal(ContentKind::Mls, &content, &key) {
            sim.inject(bob, id, blob);
        }
    }
    sim.send(alice, "ops", "still working");
    sim.run();
    let alerts = sim.nodes[bob].alerts();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    for a in &alerts {
        match a {
            Alert::Undecryptable { detail, .. } => {
                assert!(detail.contains("malformed MLS message"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(texts(&sim, bob), vec!["still working"]);
}

#[test]
fn a_member_sending_different_messages_to_different_members_is_exposed_by_status() {
    let (mut sim, alice, bob, carol, id) = trio(13);
    let mut insider = Insider::open(&sim, alice, id);
    let key = insider.envelope_key();
    let to_bob = insider.message(&forged_payload(1, [0; 32], "price is 50"));
    let to_carol = insider.message(&forged_payload(1, [0; 32], "price is 70"));
    for blob in Insider::seal(ContentKind::Mls, &to_bob, &key) {
        sim.inject(bob, id, blob);
    }
    for blob in Insider::seal(ContentKind::Mls, &to_carol, &key) {
        sim.inject(carol, id, blob);
    }
    assert_eq!(texts(&sim, bob), vec!["price is 50"]);
    assert_eq!(texts(&sim, carol), vec!["price is 70"]);
    let now = sim.now;
    sim.nodes[bob].engine.request_status(now, "ops").unwrap();
    sim.collect(bob);
    sim.run();
    let expected = Alert::Equivocation {
        from: "alice".into(),
        seq: 1,
        witness: "carol".into(),
    };
    assert!(
        sim.nodes[bob].alerts().contains(&expected),
        "{:?}",
        sim.nodes[bob].alerts()
    );
    let carol_view = sim.nodes[bob]
        .engine
        .channel("ops")
        .unwrap()
        .peers
        .into_iter()
        .find(|p| p.name == "carol")
        .unwrap();
    assert!(!carol_view.agrees);
}

#[test]
fn content_sealed_under_keys_older_than_the_content_window_is_rejected_at_once() {
    let (mut sim, alice, bob, carol, id) = trio(16);
    let carol_before = sim.copy_profile(carol);
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .remove_member(now, "ops", "carol")
        .unwrap();
    sim.collect(alice);
    sim.run();
    // Five more epochs: the removal's epoch and the one before it leave the window
    // of keys content is accepted under (the current and four past).
    for _ in 0..5 {
        let now = sim.now;
        sim.nodes[alice].engine.self_update(now, "ops").unwrap();
        sim.collect(alice);
        sim.run();
    }
    sim.run_for(20 * 60 * 1000);
    assert!(sim.nodes[bob].alerts().is_empty());
    let mut old_carol = Sim::load_copy(&carol_before);
    old_carol
        .send_text(sim.now, "ops", "sealed under a key long gone")
        .unwrap();
    let bob_box = mailbox(&sim, "bob");
    let mut forged = Vec::new();
    while let Some(out) = old_carol.poll_output() {
        if let backchannel_core::Output::Transmit(t) = out
            && t.to == bob_box
        {
            forged.push(t.blob);
        }
    }
    assert!(!forged.is_empty());
    let count = forged.len();
    for blob in forged {
        sim.inject(bob, id, blob);
    }
    // Rejected as it arrives: nothing waits, nothing is shown.
    assert!(sim.nodes[bob].engine.pending("ops").unwrap().is_empty());
    let alerts = sim.nodes[bob].alerts();
    assert_eq!(
        alerts,
        vec![
            Alert::Replayed {
                from: None,
                seq: None
            };
            count
        ]
    );
    assert!(!texts(&sim, bob).contains(&"sealed under a key long gone".to_owned()));
}

#[test]
fn a_member_cannot_take_another_members_name_by_updating_its_keys() {
    use backchannel_proto::member::{MEMBER_INFO_EXTENSION, MemberInfo};
    use openmls::prelude::{Extension, Extensions, LeafNodeParameters, UnknownExtension};
    let (mut sim, alice, bob, carol, id) = trio(17);
    // Bob proposes a key update whose new leaf calls him "Alice" (and then a
    // look-alike with a Cyrillic A), keeping his own mailbox.
    for stolen in ["Alice", "\u{410}lice"] {
        let mut insider = Insider::open(&sim, bob, id);
        let key = insider.envelope_key();
        let info = MemberInfo {
            name: stolen.into(),
            mailbox: mailbox(&sim, "bob"),
        };
        let extensions = Extensions::single(Extension::Unknown(
            MEMBER_INFO_EXTENSION,
            UnknownExtension(info.encode()),
        ))
        .unwrap();
        let params = LeafNodeParameters::builder()
            .with_extensions(extensions)
            .build();
        let (proposal, _) = insider
            .group
            .propose_self_update(&insider.backend, &insider.signer, params)
            .unwrap();
        let proposal = {
            use tls_codec::Serialize as _;
            proposal.tls_serialize_detached().unwrap()
        };
        for blob in Insider::seal(ContentKind::Mls, &proposal, &key) {
            sim.inject(alice, id, blob);
        }
        sim.run();
    }
    let alerts = sim.nodes[alice].alerts();
    assert_eq!(
        alerts,
        vec![
            Alert::RefusedChange {
                by: "bob".into(),
                what: "change the name 'bob' to 'Alice'".into(),
            },
            Alert::RefusedChange {
                by: "bob".into(),
                what: "change the name 'bob' to '\u{410}lice'".into(),
            },
        ]
    );
    for n in [alice, bob, carol] {
        let names: Vec<String> = sim.nodes[n]
            .engine
            .channel("ops")
            .unwrap()
            .members
            .iter()
            .map(|m| m.name.clone())
            .collect();
        assert_eq!(names, vec!["alice", "bob", "carol"], "at node {n}");
    }
    // Commands that name a member act on the one that name means.
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .remove_member(now, "ops", "CAROL")
        .unwrap();
    sim.collect(alice);
    sim.run();
    let left: Vec<String> = sim.nodes[alice]
        .engine
        .channel("ops")
        .unwrap()
        .members
        .iter()
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(left, vec!["alice", "bob"]);
}

#[test]
fn a_false_report_of_anothers_messages_is_named_and_refuted_by_their_own_number() {
    use backchannel_proto::payload::Head;
    let (mut sim, alice, bob, carol, id) = trio(18);
    let alice_id = sim.nodes[alice].engine.channel("ops").unwrap().own_member;
    // Bob's message #1 claims he has received alice's messages up to #9; she has
    // sent none.
    let mut insider = Insider::open(&sim, bob, id);
    let key = insider.envelope_key();
    let payload = Payload {
        kind: PayloadKind::Text,
        seq: 1,
        prev_hash: [0; 32],
        sent_at: 1,
        body: b"as alice said".to_vec(),
        heads: vec![Head {
            member: alice_id.short(),
            seq: 9,
        }],
    };
    let message = insider.message(&payload.encode().unwrap());
    for blob in Insider::seal(ContentKind::Mls, &message, &key) {
        sim.inject(alice, id, blob.clone());
        sim.inject(carol, id, blob);
    }
    // Carol waits for alice's #1-9 on bob's word.
    let waiting = sim.nodes[carol].engine.pending("ops").unwrap();
    assert_eq!(waiting.gaps.len(), 1, "{waiting:?}");
    assert_eq!(waiting.gaps[0].from, "alice");
    assert_eq!(waiting.gaps[0].missing, (1..=9).collect::<Vec<u64>>());
    assert_eq!(waiting.gaps[0].reported_by.as_deref(), Some("bob"));
    // Alice, having read bob's message, sends her first: #1.
    sim.send(alice, "ops", "I have said nothing yet");
    sim.run_for(20 * 60 * 1000);
    assert_eq!(
        sim.nodes[carol].alerts(),
        vec![Alert::FalseReport {
            by: "bob".into(),
            about: "alice".into(),
            claimed: 9,
            own: 1,
        }]
    );
    assert!(sim.nodes[carol].engine.pending("ops").unwrap().is_empty());
    assert_eq!(
        sim.nodes[alice].alerts(),
        vec![Alert::Rollback {
            reported: 9,
            own: 0,
            by: "bob".into(),
        }]
    );
}

#[test]
fn a_member_cannot_make_the_administrator_commit_without_end() {
    let (mut sim, alice, bob, _carol, _id) = trio(19);
    let epoch = sim.nodes[alice].engine.channel("ops").unwrap().epoch;
    for _ in 0..14 {
        let now = sim.now;
        sim.nodes[bob].engine.self_update(now, "ops").unwrap();
        sim.collect(bob);
        sim.run_for(1000);
    }
    // Twelve updates an hour are carried out; the rest are refused, with one alert.
    let after = sim.nodes[alice].engine.channel("ops").unwrap().epoch;
    assert_eq!(after - epoch, 12);
    assert_eq!(
        sim.nodes[alice].alerts(),
        vec![Alert::RefusedChange {
            by: "bob".into(),
            what: "change their keys or membership more than 12 times in an hour".into(),
        }]
    );
    // An hour later bob may update again.
    sim.run_for(60 * 60 * 1000);
    let now = sim.now;
    sim.nodes[bob].engine.self_update(now, "ops").unwrap();
    sim.collect(bob);
    sim.run_for(1000);
    assert_eq!(
        sim.nodes[alice].engine.channel("ops").unwrap().epoch,
        after + 1
    );
}

#[test]
fn junk_filling_the_waiting_room_never_pushes_out_pieces_of_a_real_message() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut sim = Sim::new(20);
    let alice = sim.add_node("alice");
    let bob = sim.add_node_with(
        "bob",
        backchannel_core::EngineConfig {
            max_pending: 12,
            ..backchannel_core::EngineConfig::default()
        },
    );
    sim.create_channel(alice, "ops");
    let id = sim.add(alice, "ops", bob);
    sim.run();
    // Alice's long message takes several blobs; the relay holds back the first.
    let held: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let hold = held.clone();
    sim.filter = Some(Box::new(move |_, t| {
        let mut held = hold.borrow_mut();
        if held.is_empty() {
            held.push(t.blob.clone());
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    let long = "x".repeat(12_000);
    sim.send(alice, "ops", &long);
    sim.run_for(1000);
    sim.filter = None;
    let waiting = sim.nodes[bob].engine.pending("ops").unwrap().parked;
    assert!(waiting >= 3, "the other pieces wait: {waiting}");
    // Then a flood of junk, far more than the room holds.
    for i in 0..40u8 {
        let mut junk = vec![i; backchannel_proto::envelope::BLOB_LEN];
        junk[1] = 0xa5;
        sim.inject(bob, id, junk);
    }
    // The held piece comes at last: the message is whole.
    let piece = held.borrow()[0].clone();
    sim.inject(bob, id, piece);
    assert!(
        texts(&sim, bob).contains(&long),
        "{:?}",
        sim.nodes[bob].alerts()
    );
    assert!(
        sim.nodes[bob].alerts().iter().all(
            |a| matches!(a, Alert::Undecryptable { detail, .. } if detail.contains("unreadable"))
        ),
        "{:?}",
        sim.nodes[bob].alerts()
    );
}

#[test]
fn proposals_spread_over_hours_do_not_fork_a_member_who_reads_them_at_once() {
    use std::sync::{Arc, Mutex};
    let (mut sim, alice, bob, carol, id) = trio(23);
    let carol_box = mailbox(&sim, "carol");
    // Carol is offline: everything for her waits at the relay.
    let held: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let keep = held.clone();
    sim.filter = Some(Box::new(move |_, t| {
        if t.to == carol_box {
            keep.lock().unwrap().push(t.blob.clone());
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    // Bob updates his keys 13 times, one every 6 minutes: never more than 12 in
    // an hour, so the administrator carries out every one.
    let epoch = sim.nodes[alice].engine.channel("ops").unwrap().epoch;
    for _ in 0..13 {
        let now = sim.now;
        sim.nodes[bob].engine.self_update(now, "ops").unwrap();
        sim.collect(bob);
        sim.run_for(6 * 60 * 1000);
    }
    let after = sim.nodes[alice].engine.channel("ops").unwrap().epoch;
    assert_eq!(after - epoch, 13);
    // Carol comes back and reads it all in one go: 13 proposals within her
    // minute. She must follow the administrator, not count for herself.
    sim.filter = None;
    for blob in held.lock().unwrap().drain(..) {
        sim.inject(carol, id, blob);
    }
    sim.run();
    assert_eq!(sim.nodes[carol].engine.channel("ops").unwrap().epoch, after);
    assert_eq!(sim.nodes[carol].alerts(), vec![]);
    assert_eq!(sim.nodes[alice].alerts(), vec![]);
}
