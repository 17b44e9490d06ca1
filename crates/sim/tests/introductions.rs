//! Introductions through the engine's state machine on real stores: a step kept
//! across a crash is carried out at the next start, and a channel an introduction
//! made keeps who introduced after the channel it came through is burned.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use backchannel_core::introduction::{IntroEvent, IntroStepRecord};
use backchannel_core::store::EngineStore as _;
use backchannel_core::{Deadline, Event, Timer};
use backchannel_proto::control::{Control, Intro, IntroStep};
use backchannel_sim::Sim;

fn member(sim: &Sim, node: usize, channel: &str, name: &str) -> backchannel_core::derive::MemberId {
    sim.nodes[node]
        .engine
        .channel(channel)
        .unwrap()
        .members
        .into_iter()
        .find(|m| m.name == name)
        .unwrap()
        .member
}

/// Carol, in "work" with alice and in "press" with bob, introduces them (alice to
/// host) and bob says yes. Returns the introduction's identifier.
fn introduce_and_let_bob_accept(
    sim: &mut Sim,
    (alice, bob, carol): (usize, usize, usize),
) -> backchannel_core::introduction::IntroId {
    sim.create_channel(carol, "work");
    sim.add(carol, "work", alice);
    sim.create_channel(carol, "press");
    sim.add(carol, "press", bob);
    sim.run();
    let now = sim.now;
    let (alice_id, bob_id) = (
        member(sim, carol, "work", "alice"),
        member(sim, carol, "press", "bob"),
    );
    let id = sim.nodes[carol]
        .engine
        .introduce(now, "work", &alice_id, "press", &bob_id)
        .unwrap();
    sim.collect(carol);
    sim.run();
    assert_eq!(sim.accept_introduction(bob, &id), None);
    sim.run();
    id
}

#[test]
fn a_step_kept_when_the_profile_closed_is_carried_out_at_the_next_start() {
    let mut sim = Sim::new(21);
    let (carol, bob) = (sim.add_node("carol"), sim.add_node("bob"));
    let press = sim.create_channel(carol, "press");
    sim.add(carol, "press", bob);
    sim.run();

    // What the store holds when a crash came after the blob was received and
    // before its step was carried out.
    let to = member(&sim, carol, "press", "bob");
    let from = member(&sim, bob, "press", "carol");
    let step = IntroStepRecord {
        channel: press,
        from,
        from_name: "carol".into(),
        control: Control::Intro(Intro {
            id: [5; 16],
            to: to.0,
            step: IntroStep::Ask {
                peer: "alice".into(),
            },
        })
        .encode(),
    };
    sim.nodes[bob]
        .engine
        .store()
        .push_intro_step(&step)
        .unwrap();
    sim.restart(bob);

    let due = sim.nodes[bob].engine.poll_timeout();
    assert!(
        matches!(due, Some(Deadline { timer: Timer::Introduction, channel, .. }) if channel == press),
        "{due:?}"
    );
    let now = sim.now;
    sim.nodes[bob].engine.handle_timeout(now).unwrap();
    sim.collect(bob);
    assert!(sim.nodes[bob].events.iter().any(|e| matches!(e,
        Event::Introduction(IntroEvent::Asked { by, peer, .. }) if by == "carol" && peer == "alice")));
    assert_eq!(sim.nodes[bob].engine.pending_introductions().len(), 1);
    assert!(
        sim.nodes[bob]
            .engine
            .store()
            .intro_steps()
            .unwrap()
            .is_empty()
    );
    assert!(
        sim.nodes[bob]
            .engine
            .poll_timeout()
            .is_none_or(|d| d.timer != Timer::Introduction)
    );
}

#[test]
fn an_introduced_channel_keeps_who_introduced_when_the_introducers_channel_is_burned() {
    let mut sim = Sim::new(22);
    let (alice, bob, carol) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    );
    let id = introduce_and_let_bob_accept(&mut sim, (alice, bob, carol));
    let work = sim.nodes[carol].engine.channel_id("work").unwrap();
    let made = sim.accept_introduction(alice, &id).unwrap();
    sim.run();
    let at_bob = sim.nodes[bob].engine.channel("alice").unwrap();
    assert_eq!(at_bob.id, made);
    let bob_there = member(&sim, alice, "bob", "bob");
    assert_eq!(
        sim.nodes[alice].engine.introduced_by(&made, &bob_there),
        Some("carol")
    );

    // Carol burns the channel she shares with alice; every member confirms.
    let now = sim.now;
    sim.nodes[carol].engine.burn(now, "work").unwrap();
    sim.collect(carol);
    sim.run();
    assert!(sim.nodes[alice].engine.channel(work).is_err());
    assert_eq!(
        sim.nodes[alice].engine.introduced_by(&made, &bob_there),
        Some("carol"),
        "alice's channel with bob still says who introduced them"
    );
    // And nothing alice keeps names the burned channel.
    let rows = sim.nodes[alice].engine.store().introductions().unwrap();
    assert!(
        rows.iter()
            .all(|(_, state)| !state.channels().contains(&work)),
        "{rows:?}"
    );
    sim.restart(alice);
    assert_eq!(
        sim.nodes[alice].engine.introduced_by(&made, &bob_there),
        Some("carol")
    );
}

#[test]
fn the_joiner_refuses_a_welcome_made_for_another_of_its_key_packages() {
    let mut sim = Sim::new(23);
    let (alice, bob, carol, dave) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
        sim.add_node("dave"),
    );
    sim.create_channel(dave, "other");
    let id = introduce_and_let_bob_accept(&mut sim, (alice, bob, carol));
    let (now, press) = (
        sim.now,
        sim.nodes[carol].engine.channel_id("press").unwrap(),
    );
    let bob_id = member(&sim, carol, "press", "bob");

    // Bob also made a key package for dave's channel; carol, colluding with dave,
    // passes dave's welcome off as the introduction's.
    let mailbox = sim.new_mailbox(bob);
    let kp = sim.nodes[bob]
        .engine
        .key_package(now, "bob", backchannel_core::mls::Suite::XWing, mailbox)
        .unwrap();
    let welcome = sim.nodes[dave]
        .engine
        .add_member(now, "other", &kp)
        .unwrap();
    sim.collect(dave);
    sim.nodes[carol]
        .engine
        .send_introduction(
            now,
            press,
            Intro {
                id,
                to: bob_id.0,
                step: IntroStep::Welcome { welcome },
            },
        )
        .unwrap();
    sim.collect(carol);
    sim.run();
    assert!(sim.nodes[bob].engine.channel("alice").is_err());
    assert!(sim.nodes[bob].engine.channel("other").is_err());
    assert!(sim.nodes[bob].events.iter().any(|e| matches!(e,
        Event::Introduction(IntroEvent::Refused { reason, .. })
            if reason.contains("not for the key package we offered"))));
}
