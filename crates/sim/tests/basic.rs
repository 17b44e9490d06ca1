//! Basic engine behaviour in the simulator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use backchannel_sim::Sim;

#[test]
fn two_members_talk() {
    let mut sim = Sim::new(1);
    let alice = sim.add_node("alice");
    let bob = sim.add_node("bob");
    sim.create_channel(alice, "ops");
    sim.add(alice, "ops", bob);
    sim.send(alice, "ops", "hello bob");
    sim.send(bob, "ops", "hello alice");
    sim.run();
    assert_eq!(sim.history(alice, "ops"), sim.history(bob, "ops"));
    assert_eq!(sim.history(bob, "ops").len(), 2);
    assert!(
        sim.nodes[alice].alerts().is_empty(),
        "{:?}",
        sim.nodes[alice].alerts()
    );
    assert!(
        sim.nodes[bob].alerts().is_empty(),
        "{:?}",
        sim.nodes[bob].alerts()
    );
}
