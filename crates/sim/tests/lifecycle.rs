//! Channel life cycle in the simulator: both suites, leaving, handing over the
//! administrator role, restarts, long messages, poison input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use backchannel_core::mls::Suite;
use backchannel_core::store::ChannelStatus;
use backchannel_core::{Alert, Event};
use backchannel_sim::{Faults, Sim};

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

#[test]
fn both_suites_carry_messages() {
    for suite in Suite::ALL {
        let mut sim = Sim::new(2);
        let (alice, bob) = (sim.add_node("alice"), sim.add_node("bob"));
        sim.create_channel_with(alice, "ops", suite);
        sim.add(alice, "ops", bob);
        sim.send(bob, "ops", "hi");
        sim.run();
        assert_eq!(texts(&sim, alice), vec!["hi"], "{suite:?}");
        assert_eq!(sim.nodes[alice].engine.channel("ops").unwrap().suite, suite);
        assert_eq!(
            sim.nodes[alice].engine.epoch_authenticator("ops").unwrap(),
            sim.nodes[bob].engine.epoch_authenticator("ops").unwrap()
        );
    }
}

#[test]
fn a_member_leaves_and_the_administrator_commits_it() {
    let mut sim = Sim::new(4);
    let (alice, bob, carol) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    );
    sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.add(alice, "ops", carol);
    sim.run();
    let now = sim.now;
    sim.nodes[carol].engine.leave(now, "ops").unwrap();
    sim.collect(carol);
    assert_eq!(
        sim.nodes[carol].engine.channel("ops").unwrap().status,
        ChannelStatus::Leaving
    );
    sim.run();
    assert_eq!(
        sim.nodes[carol].engine.channel("ops").unwrap().status,
        ChannelStatus::Closed
    );
    for n in [alice, bob] {
        let members: Vec<String> = sim.nodes[n]
            .engine
            .channel("ops")
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(members, vec!["alice", "bob"]);
    }
    sim.send(bob, "ops", "without carol");
    sim.run();
    assert_eq!(texts(&sim, alice), vec!["without carol"]);
    assert!(!texts(&sim, carol).contains(&"without carol".to_owned()));
}

#[test]
fn the_administrator_hands_over_before_leaving() {
    let mut sim = Sim::new(8);
    let (alice, bob, carol) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    );
    sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.add(alice, "ops", carol);
    sim.run();
    let now = sim.now;
    sim.nodes[alice].engine.leave(now, "ops").unwrap();
    sim.collect(alice);
    sim.run();
    assert_eq!(
        sim.nodes[alice].engine.channel("ops").unwrap().status,
        ChannelStatus::Closed
    );
    let bob_view = sim.nodes[bob].engine.channel("ops").unwrap();
    assert!(
        bob_view.admin,
        "bob, the longest-standing member, is the new administrator"
    );
    assert_eq!(bob_view.members.len(), 2);
    // The new administrator can change membership.
    let dave = sim.add_node("dave");
    sim.add(bob, "ops", dave);
    sim.send(dave, "ops", "hello");
    sim.run();
    assert_eq!(texts(&sim, carol), vec!["hello"]);
    // A former administrator cannot.
    assert!(
        sim.nodes[alice]
            .engine
            .remove_member(sim.now, "ops", "bob")
            .is_err()
    );
}

#[test]
fn only_the_administrator_changes_membership() {
    let mut sim = Sim::new(9);
    let (alice, bob) = (sim.add_node("alice"), sim.add_node("bob"));
    sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    let now = sim.now;
    let err = sim.nodes[bob]
        .engine
        .remove_member(now, "ops", "alice")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "only the channel's administrator can do that"
    );
    let err = sim.nodes[alice]
        .engine
        .remove_member(now, "ops", "alice")
        .unwrap_err();
    assert!(err.to_string().contains("yourself"));
    let err = sim.nodes[alice]
        .engine
        .remove_member(now, "ops", "zed")
        .unwrap_err();
    assert!(err.to_string().contains("no member called 'zed'"));
}

#[test]
fn restarts_lose_nothing() {
    let mut sim = Sim::new(12);
    let (alice, bob) = (sim.add_node("alice"), sim.add_node("bob"));
    sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.faults = Faults {
        min_delay_ms: 1,
        max_delay_ms: 300,
        ..Faults::default()
    };
    for i in 0..30 {
        sim.send(alice, "ops", &format!("a{i}"));
        sim.send(bob, "ops", &format!("b{i}"));
        sim.run_for(5);
        if i % 7 == 0 {
            sim.restart(bob);
        }
        if i == 15 {
            let now = sim.now;
            sim.nodes[alice].engine.self_update(now, "ops").unwrap();
            sim.collect(alice);
            sim.restart(alice);
        }
    }
    sim.run();
    assert_eq!(sim.history(alice, "ops").len(), 60);
    assert_eq!(sim.history(alice, "ops"), sim.history(bob, "ops"));
    assert!(
        sim.nodes[bob].alerts().is_empty(),
        "{:?}",
        sim.nodes[bob].alerts()
    );
}

#[test]
fn long_messages_and_large_commits_are_fragmented_and_reassembled() {
    let mut sim = Sim::new(13);
    let admin = sim.add_node("admin");
    sim.create_channel(admin, "big");
    let others: Vec<usize> = (0..12).map(|i| sim.add_node(&format!("m{i}"))).collect();
    for &m in &others {
        sim.add(admin, "big", m);
    }
    sim.run();
    sim.faults = Faults {
        min_delay_ms: 1,
        max_delay_ms: 500,
        ..Faults::default()
    };
    let long: String = "Ω".repeat(15_000);
    sim.send(others[3], "big", &long);
    let now = sim.now;
    sim.nodes[admin]
        .engine
        .remove_member(now, "big", "m0")
        .unwrap();
    sim.collect(admin);
    sim.send(others[5], "big", "after removal");
    sim.run();
    for &m in &others[1..] {
        assert!(
            texts(&sim, m).contains(&long) || m == others[3],
            "node {m} missed the long message: {:?} {:?}",
            sim.nodes[m].alerts(),
            texts(&sim, m)
        );
        assert!(texts(&sim, m).contains(&"after removal".to_owned()) || m == others[5]);
        assert!(
            sim.nodes[m].alerts().is_empty(),
            "{:?}",
            sim.nodes[m].alerts()
        );
    }
}

#[test]
fn garbage_is_reported_after_the_grace_period_and_blocks_nothing() {
    let mut sim = Sim::new(14);
    let (alice, bob) = (sim.add_node("alice"), sim.add_node("bob"));
    let channel = sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.run();
    sim.inject(
        bob,
        channel,
        vec![0x42; backchannel_proto::envelope::BLOB_LEN],
    );
    sim.inject(bob, channel, vec![1, 2, 3]);
    sim.send(alice, "ops", "still flowing");
    sim.run();
    assert_eq!(texts(&sim, bob), vec!["still flowing"]);
    let alerts = sim.nodes[bob].alerts();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|a| matches!(a, Alert::Undecryptable { count: 1, .. }))
    );
    assert!(
        alerts[1]
            .to_string()
            .contains("no key of this channel opens")
    );
}
