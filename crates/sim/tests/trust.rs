//! Safety numbers and verified members in the simulator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use backchannel_core::Alert;
use backchannel_sim::Sim;

#[test]
fn both_sides_see_the_same_safety_number_and_a_man_in_the_middle_changes_it() {
    let mut sim = Sim::new(80);
    let (alice, bob, mallory) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("mallory"),
    );
    sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.run();
    let at_alice = sim.nodes[alice].engine.safety_number("ops", "bob").unwrap();
    let at_bob = sim.nodes[bob].engine.safety_number("ops", "alice").unwrap();
    assert_eq!(at_alice, at_bob);
    assert_eq!(at_alice.len(), 12 * 5 + 11);

    // Mallory sits in the middle: a channel with alice in which she is "bob", and
    // one with bob in which she is "alice". Each side's number is then computed
    // over mallory's key, and the two differ.
    sim.nodes[mallory].label = "bob".into();
    sim.create_channel(alice, "ops2");
    sim.add(alice, "ops2", mallory);
    sim.nodes[mallory].label = "alice".into();
    sim.create_channel(mallory, "ops3");
    sim.add(mallory, "ops3", bob);
    sim.run();
    let seen_by_alice = sim.nodes[alice]
        .engine
        .safety_number("ops2", "bob")
        .unwrap();
    let seen_by_bob = sim.nodes[bob]
        .engine
        .safety_number("ops3", "alice")
        .unwrap();
    assert_ne!(seen_by_alice, seen_by_bob);
    assert!(
        sim.nodes[alice]
            .engine
            .safety_number("ops", "nobody")
            .is_err()
    );
}

#[test]
fn a_verified_member_replaced_by_another_key_raises_an_alert_naming_who_did_it() {
    let mut sim = Sim::new(81);
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
    sim.nodes[carol]
        .engine
        .confirm_verified(now, "ops", "bob")
        .unwrap();
    let summary = sim.nodes[carol].engine.channel("ops").unwrap();
    let bob_id = summary
        .members
        .iter()
        .find(|m| m.name == "bob")
        .unwrap()
        .member;
    assert_eq!(summary.verified, vec![bob_id]);
    // Survives a restart.
    sim.restart(carol);
    assert_eq!(
        sim.nodes[carol].engine.channel("ops").unwrap().verified,
        vec![bob_id]
    );

    // Alice replaces bob by someone else called bob.
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .remove_member(now, "ops", "bob")
        .unwrap();
    sim.collect(alice);
    sim.run();
    let impostor = sim.add_node("bob");
    sim.add(alice, "ops", impostor);
    sim.run();
    assert!(
        sim.nodes[carol].alerts().contains(&Alert::KeyChanged {
            member: "bob".into(),
            by: "alice".into()
        }),
        "{:?}",
        sim.nodes[carol].alerts()
    );
    assert!(
        sim.nodes[carol]
            .engine
            .channel("ops")
            .unwrap()
            .verified
            .is_empty()
    );
    // Bob himself (not verified by alice) coming and going raises nothing at alice.
    assert!(
        !sim.nodes[alice]
            .alerts()
            .iter()
            .any(|a| matches!(a, Alert::KeyChanged { .. }))
    );
}
