//! The foundation's simulation tests: convergence under a hostile network,
//! removal, post-compromise security, withheld and replayed messages.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use backchannel_core::{Alert, Event, Output};
use backchannel_sim::{Faults, Sim, Verdict};
use rand::{Rng, SeedableRng};

fn texts_seen(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

fn drain_texts(
    engine: &mut backchannel_core::Engine<backchannel_store::Store>,
) -> (Vec<String>, Vec<Alert>) {
    let mut texts = Vec::new();
    let mut alerts = Vec::new();
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Event(Event::Message(m)) => texts.push(m.text),
            Output::Event(Event::Alert { alert, .. }) => alerts.push(alert),
            _ => {}
        }
    }
    (texts, alerts)
}

#[test]
fn three_members_converge_on_one_history_under_reordering_and_delay() {
    let mut sim = Sim::new(7);
    let nodes = [
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    ];
    sim.create_channel(nodes[0], "ops");
    sim.add(nodes[0], "ops", nodes[1]);
    sim.add(nodes[0], "ops", nodes[2]);
    sim.run();
    sim.faults = Faults {
        min_delay_ms: 1,
        max_delay_ms: 800,
        drop: 0.0,
        duplicate: 0.0,
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(99);
    for i in 0..1000 {
        let sender = nodes[rng.gen_range(0..3)];
        sim.send(sender, "ops", &format!("message {i} from node {sender}"));
        // Messages overlap in flight: one is sent every ~20 ms, each takes up to 800 ms.
        sim.run_for(rng.gen_range(0..40));
    }
    sim.run();
    let reference = sim.history(nodes[0], "ops");
    assert_eq!(reference.len(), 1000);
    for &n in &nodes[1..] {
        assert_eq!(sim.history(n, "ops"), reference, "node {n} diverged");
    }
    for &n in &nodes {
        assert!(
            sim.nodes[n].alerts().is_empty(),
            "node {n}: {:?}",
            sim.nodes[n].alerts()
        );
    }
}

#[test]
fn a_removed_member_reads_nothing_sent_after_removal() {
    let mut sim = Sim::new(11);
    let (alice, bob, carol) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    );
    let channel = sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.add(alice, "ops", carol);
    sim.send(alice, "ops", "before");
    sim.run();
    assert!(texts_seen(&sim.nodes[carol].events).contains(&"before".to_owned()));

    // Carol keeps a copy of her state from before the removal, and the relay
    // withholds the removal from her: the strongest position a removed member has.
    let carol_copy = sim.copy_profile(carol);
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .remove_member(now, "ops", "carol")
        .unwrap();
    sim.collect(alice);
    sim.run();
    assert!(
        sim.nodes[carol]
            .events
            .iter()
            .any(|e| matches!(e, Event::Closed { .. }))
    );
    assert!(
        sim.nodes[bob]
            .events
            .iter()
            .any(|e| matches!(e, Event::MemberRemoved { member, .. } if member == "carol"))
    );

    let first_after = sim.delivered.len();
    sim.send(alice, "ops", "after removal");
    sim.send(bob, "ops", "also after");
    sim.run();
    assert_eq!(sim.history(bob, "ops").len(), 3);

    // Everything delivered to anyone after the removal is handed to Carol's old copy.
    let mut old_carol = Sim::load_copy(&carol_copy);
    let blobs: Vec<_> = sim.delivered[first_after..].to_vec();
    assert!(!blobs.is_empty());
    let now = sim.now;
    for (_, _, blob) in &blobs {
        old_carol.handle_incoming(now, &channel, blob).unwrap();
    }
    // And her live profile too.
    for (_, _, blob) in &blobs {
        sim.nodes[carol]
            .engine
            .handle_incoming(now, &channel, blob)
            .unwrap();
    }
    sim.collect(carol);
    let (texts, _) = drain_texts(&mut old_carol);
    assert!(texts.is_empty(), "the removed member read {texts:?}");
    assert!(
        !texts_seen(&sim.nodes[carol].events)
            .iter()
            .any(|t| t.contains("after"))
    );
    old_carol
        .handle_timeout(now.plus_ms(60 * 60 * 1000))
        .unwrap();
    let (_, alerts) = drain_texts(&mut old_carol);
    assert!(
        alerts
            .iter()
            .any(|a| matches!(a, Alert::Undecryptable { .. })),
        "the old copy should report what it could not read: {alerts:?}"
    );
}

#[test]
fn an_old_copy_of_a_member_cannot_read_after_its_self_update() {
    for (updater, label) in [(0usize, "administrator"), (1usize, "member")] {
        let mut sim = Sim::new(23);
        let (alice, bob) = (sim.add_node("alice"), sim.add_node("bob"));
        let channel = sim.create_channel(alice, "ops");
        sim.add(alice, "ops", bob);
        sim.send(alice, "ops", "before the update");
        sim.run();

        let stolen = sim.copy_profile(updater);
        let first_after = sim.delivered.len();
        let other = 1 - updater;
        // Still in the old epoch: the stolen copy can read this one.
        sim.send(other, "ops", "old epoch");
        sim.run();
        let now = sim.now;
        sim.nodes[updater].engine.self_update(now, "ops").unwrap();
        sim.collect(updater);
        sim.run();
        assert!(
            sim.nodes[other]
                .events
                .iter()
                .any(|e| matches!(e, Event::KeysUpdated { .. })),
            "{label}: the update was not committed"
        );
        let epoch_now = sim.nodes[other].engine.channel("ops").unwrap().epoch;
        assert_eq!(
            sim.nodes[updater].engine.channel("ops").unwrap().epoch,
            epoch_now
        );

        sim.send(other, "ops", "secret after the update");
        sim.run();
        assert!(
            texts_seen(&sim.nodes[updater].events).contains(&"secret after the update".to_owned())
        );

        // The thief has the old state and every blob anyone received since, the
        // update's commit and proposal included.
        let mut thief = Sim::load_copy(&stolen);
        let now = sim.now;
        let captured = sim.delivered[first_after..].to_vec();
        assert!(captured.len() >= 3, "{label}: too little traffic captured");
        for (_, _, blob) in captured {
            thief.handle_incoming(now, &channel, &blob).unwrap();
        }
        let (texts, _) = drain_texts(&mut thief);
        assert_eq!(
            texts,
            vec!["old epoch"],
            "{label}: the old copy read after the update"
        );
    }
}

#[test]
fn a_message_withheld_from_one_member_alerts_that_member_only() {
    let mut sim = Sim::new(5);
    let (alice, bob, carol) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    );
    sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.add(alice, "ops", carol);
    sim.run();
    sim.send(bob, "ops", "one");
    sim.run();

    // The relay withholds Bob's next message from Carol only.
    let carol_mailbox = sim.nodes[alice]
        .engine
        .channel("ops")
        .unwrap()
        .members
        .iter()
        .find(|m| m.name == "carol")
        .unwrap()
        .mailbox
        .clone();
    let mut armed = true;
    sim.filter = Some(Box::new(move |from, t| {
        if armed && from == bob && t.to == carol_mailbox {
            armed = false;
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    sim.send(bob, "ops", "two");
    sim.send(bob, "ops", "three");
    sim.run();

    let carol_alerts = sim.nodes[carol].alerts();
    assert_eq!(
        carol_alerts,
        vec![Alert::Withheld {
            from: "bob".into(),
            missing: vec![2],
            reported_by: None,
        }]
    );
    assert!(
        carol_alerts[0]
            .to_string()
            .contains("1 message from bob never arrived (#2)")
    );
    assert!(sim.nodes[alice].alerts().is_empty());
    assert!(sim.nodes[bob].alerts().is_empty());
    assert_eq!(texts_seen(&sim.nodes[carol].events), vec!["one", "three"]);
    assert_eq!(
        texts_seen(&sim.nodes[alice].events),
        vec!["one", "two", "three"]
    );
}

#[test]
fn a_replayed_message_alerts_and_is_not_shown_twice() {
    let mut sim = Sim::new(3);
    let (alice, bob) = (sim.add_node("alice"), sim.add_node("bob"));
    let channel = sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.run();
    let before = sim.delivered.len();
    sim.send(alice, "ops", "pay 100");
    sim.run();
    let (_, _, blob) = sim.delivered[before].clone();
    sim.inject(bob, channel, blob);
    assert_eq!(texts_seen(&sim.nodes[bob].events), vec!["pay 100"]);
    assert_eq!(sim.history(bob, "ops").len(), 1);
    let alerts = sim.nodes[bob].alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(matches!(alerts[0], Alert::Replayed { .. }));
    assert!(
        alerts[0]
            .to_string()
            .contains("someone is replaying old messages")
    );
}

#[test]
fn the_next_timeout_says_which_timer_of_which_channel_falls_due() {
    use backchannel_core::{Deadline, Timer};
    let mut sim = Sim::new(11);
    let (alice, bob) = (sim.add_node("alice"), sim.add_node("bob"));
    let ops = sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.run();
    sim.send(bob, "ops", "one");
    sim.run();

    // A message withheld from alice: the gap's grace period is the next timer.
    let mut armed = true;
    sim.filter = Some(Box::new(move |from, _| {
        if armed && from == bob {
            armed = false;
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    sim.send(bob, "ops", "two");
    sim.send(bob, "ops", "three");
    let before = sim.now;
    sim.run_for(1_000);
    let gap = sim.nodes[alice].engine.poll_timeout();
    assert!(
        matches!(gap, Some(Deadline { channel, timer: Timer::Gap, at }) if channel == ops && at > before),
        "{gap:?}"
    );

    // With disappearing messages on, bob's oldest message sets the next timer.
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .set_disappearing(now, "ops", 60)
        .unwrap();
    sim.collect(alice);
    sim.run_for(1_000);
    let next = sim.nodes[bob].engine.poll_timeout();
    assert!(
        matches!(next, Some(Deadline { channel, timer: Timer::Disappearing, .. }) if channel == ops),
        "{next:?}"
    );
}

#[test]
fn a_channel_is_found_by_its_local_name_or_its_identifier_alike() {
    use backchannel_core::{ChannelId, CommandError};
    let mut sim = Sim::new(12);
    let alice = sim.add_node("alice");
    let ops = sim.create_channel(alice, "ops");
    let engine = &sim.nodes[alice].engine;
    assert_eq!(engine.channel("ops").unwrap().id, ops);
    assert_eq!(engine.channel(ops).unwrap().name, "ops");
    assert_eq!(engine.channel_id(ops).unwrap(), ops);
    let stranger = ChannelId([0x77; 16]);
    assert!(matches!(
        engine.channel(stranger),
        Err(CommandError::UnknownChannel(_))
    ));
    assert!(matches!(
        engine.channel("nope"),
        Err(CommandError::UnknownChannel(_))
    ));
    // Commands take either: a message sent by identifier lands in the same history.
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .send_text(now, ops, "by id")
        .unwrap();
    sim.nodes[alice]
        .engine
        .send_text(now, "ops", "by name")
        .unwrap();
    let texts: Vec<String> = sim.nodes[alice]
        .engine
        .history("ops", 0, 10)
        .unwrap()
        .into_iter()
        .filter_map(|m| String::from_utf8(m.body).ok())
        .collect();
    assert_eq!(texts, vec!["by id", "by name"]);
}
