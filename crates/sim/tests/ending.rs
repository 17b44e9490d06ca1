//! The end of a channel in the simulator: disappearing messages, the end date,
//! burning with receipts, and burns that must not work (from a removed member, from
//! the network). Each erasure is checked on the decrypted pages of the real store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::rc::Rc;

use backchannel_core::mls::Suite;
use backchannel_core::{
    Actor, Alert, ChannelId, ChannelOptions, CommandError, Erasure, Event, Timestamp,
};
use backchannel_proto::envelope::ContentKind;
use backchannel_sim::forensics;
use backchannel_sim::insider::Insider;
use backchannel_sim::{Sim, Verdict};

const MINUTE: u64 = 60_000;

fn erasures(sim: &Sim, node: usize) -> Vec<Erasure> {
    sim.nodes[node]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Erased { why, .. } => Some(why.clone()),
            _ => None,
        })
        .collect()
}

fn texts(sim: &Sim, node: usize, channel: &str) -> Vec<String> {
    sim.history(node, channel)
        .into_iter()
        .map(|(_, _, t)| t)
        .collect()
}

fn traces(sim: &Sim, node: usize, channel: &str, texts: &[&str]) -> Vec<(String, Vec<u8>)> {
    forensics::channel_needles(&sim.nodes[node].engine.channel(channel).unwrap(), texts)
}

/// Asserts that no decrypted page of `node`'s store, and no byte of its files,
/// holds any of `needles`.
fn assert_erased(sim: &Sim, node: usize, needles: &[(String, Vec<u8>)]) {
    let store = sim.nodes[node].engine.store();
    store.checkpoint().unwrap();
    for (i, page) in store.decrypted_pages().unwrap().iter().enumerate() {
        let found = forensics::find(page, needles);
        assert!(
            found.is_empty(),
            "page {} of node {node} holds {found:?}",
            i + 1
        );
    }
    let hits = forensics::search_dir(sim.nodes[node].dir(), needles);
    assert!(hits.is_empty(), "files of node {node} hold {hits:?}");
}

fn three(sim: &mut Sim, options: ChannelOptions) -> (usize, usize, usize, ChannelId) {
    let (alice, bob, carol) = (
        sim.add_node("alice"),
        sim.add_node("bob"),
        sim.add_node("carol"),
    );
    let id = sim.create_channel_with(alice, "ops", options);
    sim.add(alice, "ops", bob);
    sim.add(alice, "ops", carol);
    sim.run_for(1_000);
    (alice, bob, carol, id)
}

#[test]
fn disappearing_messages_go_from_every_member_and_ask_relays_to_drop_them() {
    let mut sim = Sim::new(70);
    let ttls: Rc<RefCell<Vec<u32>>> = Rc::default();
    let seen = ttls.clone();
    sim.filter = Some(Box::new(move |_, t| {
        seen.borrow_mut().push(t.ttl_secs);
        Verdict::Deliver
    }));
    let options = ChannelOptions {
        disappearing_secs: 60,
        ..ChannelOptions::default()
    };
    let (alice, bob, _carol, _) = three(&mut sim, options);
    let needles = traces(&sim, bob, "ops", &["first words"]);
    // Membership changes are not text: they live as long as the relay keeps anything.
    assert!(ttls.borrow().iter().all(|&t| t == 0));
    ttls.borrow_mut().clear();

    sim.send(alice, "ops", "first words");
    sim.run_for(1_000);
    assert!(!ttls.borrow().is_empty());
    assert!(
        ttls.borrow().iter().all(|&t| t == 60),
        "{:?}",
        ttls.borrow()
    );
    assert_eq!(texts(&sim, bob, "ops"), vec!["first words"]);

    sim.run_for(30 * 1_000);
    sim.send(bob, "ops", "second words");
    sim.run_for(1_000);
    for n in [alice, bob] {
        assert_eq!(texts(&sim, n, "ops"), vec!["first words", "second words"]);
    }
    // A minute after it arrived, the first is gone everywhere; the second stays.
    sim.run_for(30 * 1_000);
    for n in [alice, bob] {
        assert_eq!(texts(&sim, n, "ops"), vec!["second words"], "node {n}");
    }
    sim.run_for(MINUTE);
    for n in [alice, bob] {
        assert!(texts(&sim, n, "ops").is_empty(), "node {n}");
    }
    // Irrevocably: not after a restart, not in any page of the store. (The channel
    // itself lives on, so only the text is a trace here.)
    sim.restart(bob);
    assert!(texts(&sim, bob, "ops").is_empty());
    let text_needles: Vec<_> = needles
        .into_iter()
        .filter(|(name, _)| name.starts_with("text"))
        .collect();
    assert_erased(&sim, bob, &text_needles);
}

#[test]
fn the_administrator_changes_the_timer_and_no_one_else_can() {
    let mut sim = Sim::new(71);
    let (alice, bob, carol, _) = three(&mut sim, ChannelOptions::default());
    let now = sim.now;
    let err = sim.nodes[bob]
        .engine
        .set_disappearing(now, "ops", 10)
        .unwrap_err();
    assert!(matches!(err, CommandError::NotAdmin), "{err}");

    sim.nodes[alice]
        .engine
        .set_disappearing(now, "ops", 10)
        .unwrap();
    sim.collect(alice);
    sim.run_for(1_000);
    for n in [bob, carol] {
        assert!(
            sim.nodes[n].events.iter().any(|e| matches!(
                e,
                Event::PolicyChanged { by: Actor::Member(by), disappearing_secs: 10, .. } if by == "alice"
            )),
            "node {n} was not told"
        );
        let policy = sim.nodes[n].engine.channel("ops").unwrap().policy.unwrap();
        assert_eq!(policy.disappearing_secs, 10);
    }
    sim.send(carol, "ops", "brief");
    sim.run_for(1_000);
    assert_eq!(texts(&sim, alice, "ops"), vec!["brief"]);
    sim.run_for(10 * 1_000);
    for n in [alice, bob, carol] {
        assert!(texts(&sim, n, "ops").is_empty(), "node {n}");
    }
    // Turned off again: messages stay.
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .set_disappearing(now, "ops", 0)
        .unwrap();
    sim.collect(alice);
    sim.run_for(1_000);
    sim.send(bob, "ops", "lasting");
    sim.run_for(60 * MINUTE);
    assert_eq!(texts(&sim, carol, "ops"), vec!["lasting"]);
}

#[test]
fn a_channel_ends_on_its_date_everywhere_and_leaves_nothing() {
    let mut sim = Sim::new(72);
    let end = sim.now.plus_ms(10 * MINUTE);
    let options = ChannelOptions {
        expires_at: Some(end),
        ..ChannelOptions::default()
    };
    let (alice, bob, carol, id) = three(&mut sim, options);
    sim.send(bob, "ops", "before the end");
    sim.run_for(1_000);
    let needles: Vec<_> = [alice, bob, carol]
        .iter()
        .map(|&n| traces(&sim, n, "ops", &["before the end"]))
        .collect();
    assert_eq!(texts(&sim, carol, "ops"), vec!["before the end"]);

    sim.run_for(10 * MINUTE);
    for n in [alice, bob, carol] {
        assert_eq!(erasures(&sim, n), vec![Erasure::Expired], "node {n}");
        assert!(sim.nodes[n].engine.channel("ops").is_err());
        assert!(!sim.nodes[n].engine.channels().iter().any(|c| c.id == id));
        let now = sim.now;
        assert!(sim.nodes[n].engine.send_text(now, "ops", "after").is_err());
        assert_erased(&sim, n, &needles[n]);
    }
    // A channel cannot be made already over.
    let now = sim.now;
    let mailbox = sim.new_mailbox(alice);
    let err = sim.nodes[alice]
        .engine
        .create_channel(
            now,
            "late",
            "alice",
            ChannelOptions {
                expires_at: Some(Timestamp(now.0 - 1)),
                ..ChannelOptions::default()
            },
            mailbox,
        )
        .unwrap_err();
    assert!(matches!(err, CommandError::Expired), "{err}");
}

#[test]
fn a_burn_erases_the_channel_everywhere_and_every_member_confirms() {
    let mut sim = Sim::new(73);
    let (alice, bob, carol, id) = three(&mut sim, Suite::XWing.into());
    sim.send(alice, "ops", "the plan");
    sim.send(carol, "ops", "agreed");
    sim.run_for(1_000);
    let needles: Vec<_> = [alice, bob, carol]
        .iter()
        .map(|&n| traces(&sim, n, "ops", &["the plan", "agreed"]))
        .collect();

    let now = sim.now;
    sim.nodes[bob].engine.burn(now, "ops").unwrap();
    sim.collect(bob);
    // Bob's history goes at once; his keys stay until the receipts are in.
    assert!(texts(&sim, bob, "ops").is_empty());
    let burning = sim.nodes[bob].engine.channel("ops").unwrap();
    assert_eq!(burning.burn.as_ref().unwrap().waiting.len(), 2);
    let now = sim.now;
    assert!(matches!(
        sim.nodes[bob].engine.send_text(now, "ops", "one more"),
        Err(CommandError::Burning)
    ));

    sim.run_for(1_000);
    for n in [alice, carol] {
        assert_eq!(
            erasures(&sim, n),
            vec![Erasure::Burned {
                by: Actor::Member("bob".into())
            }],
            "node {n}"
        );
    }
    assert_eq!(erasures(&sim, bob), vec![Erasure::Burned { by: Actor::Us }]);
    let last_progress = sim.nodes[bob]
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::BurnProgress {
                confirmed, waiting, ..
            } => Some((confirmed.clone(), waiting.clone())),
            _ => None,
        })
        .unwrap();
    let mut confirmed = last_progress.0;
    confirmed.sort();
    assert_eq!(confirmed, vec!["alice", "carol"]);
    assert!(last_progress.1.is_empty());
    for n in [alice, bob, carol] {
        assert!(!sim.nodes[n].engine.channels().iter().any(|c| c.id == id));
        assert_erased(&sim, n, &needles[n]);
        sim.restart(n);
        assert!(sim.nodes[n].engine.channels().is_empty());
    }
}

#[test]
fn a_member_offline_during_the_burn_burns_when_it_returns() {
    let mut sim = Sim::new(74);
    let (alice, bob, carol, _) = three(&mut sim, ChannelOptions::default());
    let carol_mailbox = sim.nodes[alice].engine.channel("ops").unwrap().members[2]
        .mailbox
        .send_id;
    // Carol is offline: what is sent to her waits (here, outside the network).
    let held: Rc<RefCell<Vec<backchannel_core::Transmit>>> = Rc::default();
    let hold = held.clone();
    sim.filter = Some(Box::new(move |_, t| {
        if t.to.send_id == carol_mailbox {
            hold.borrow_mut().push(t.clone());
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    let now = sim.now;
    sim.nodes[alice].engine.burn(now, "ops").unwrap();
    sim.collect(alice);
    sim.run_for(1_000);
    assert_eq!(erasures(&sim, bob).len(), 1);
    let burn = sim.nodes[alice]
        .engine
        .channel("ops")
        .unwrap()
        .burn
        .unwrap();
    assert_eq!(burn.confirmed, vec!["bob"]);
    assert_eq!(burn.waiting.len(), 1);
    assert_eq!(burn.waiting[0].1, "carol");

    // An hour later carol connects and gets what waited for her.
    sim.run_for(60 * MINUTE);
    sim.filter = None;
    let channel = sim.nodes[carol].engine.channel("ops").unwrap().id;
    for t in held.borrow_mut().drain(..) {
        sim.inject(carol, channel, t.blob);
    }
    sim.run_for(1_000);
    assert_eq!(
        erasures(&sim, carol),
        vec![Erasure::Burned {
            by: Actor::Member("alice".into())
        }]
    );
    assert_eq!(
        erasures(&sim, alice),
        vec![Erasure::Burned { by: Actor::Us }]
    );
    assert!(sim.nodes[alice].engine.channels().is_empty());
}

#[test]
fn a_burner_without_receipts_erases_its_keys_after_a_week() {
    let mut sim = Sim::new(75);
    let (alice, bob, _carol, _) = three(&mut sim, ChannelOptions::default());
    sim.filter = Some(Box::new(move |from, _| {
        if from == alice {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    let now = sim.now;
    sim.nodes[alice].engine.burn(now, "ops").unwrap();
    sim.collect(alice);
    sim.run_for(6 * 24 * 60 * MINUTE);
    assert!(sim.nodes[alice].engine.channel("ops").is_ok());
    sim.run_for(2 * 24 * 60 * MINUTE);
    assert!(sim.nodes[alice].engine.channel("ops").is_err());
    assert_eq!(
        erasures(&sim, alice),
        vec![Erasure::Burned { by: Actor::Us }]
    );
    // Bob never heard: his copy lives (the burner is told who did not confirm).
    assert!(sim.nodes[bob].engine.channel("ops").is_ok());
}

#[test]
fn a_removed_member_cannot_burn_the_channel() {
    let mut sim = Sim::new(76);
    let (alice, bob, carol, id) = three(&mut sim, ChannelOptions::default());
    // Carol keeps a copy of her state, then is removed.
    let stale = sim.copy_profile(carol);
    let now = sim.now;
    sim.nodes[alice]
        .engine
        .remove_member(now, "ops", "carol")
        .unwrap();
    sim.collect(alice);
    sim.run_for(1_000);
    assert!(
        sim.nodes[carol].engine.channel("ops").unwrap().status
            == backchannel_core::store::ChannelStatus::Closed
    );

    // From her old state, she burns: a valid message of the previous epoch.
    let mut old = Sim::load_copy(&stale);
    let now = sim.now;
    old.burn(now, "ops").unwrap();
    let mut blobs = Vec::new();
    while let Some(output) = old.poll_output() {
        if let backchannel_core::Output::Transmit(t) = output {
            blobs.push(t);
        }
    }
    assert!(!blobs.is_empty());
    let mailbox_of = |n: usize| {
        sim.nodes[n]
            .engine
            .channel("ops")
            .unwrap()
            .members
            .iter()
            .find(|m| m.is_self)
            .unwrap()
            .mailbox
            .send_id
    };
    let (to_alice, to_bob) = (mailbox_of(alice), mailbox_of(bob));
    for t in blobs {
        let to = if t.to.send_id == to_alice {
            alice
        } else if t.to.send_id == to_bob {
            bob
        } else {
            continue;
        };
        sim.inject(to, id, t.blob);
    }
    sim.run_for(1_000);
    for n in [alice, bob] {
        assert!(erasures(&sim, n).is_empty(), "node {n} erased the channel");
        assert!(sim.nodes[n].engine.channel("ops").is_ok());
        assert!(
            sim.nodes[n]
                .alerts()
                .iter()
                .any(|a| matches!(a, Alert::FromRemoved { .. } | Alert::RefusedChange { .. })),
            "node {n} saw no alert: {:?}",
            sim.nodes[n].alerts()
        );
    }
    sim.send(bob, "ops", "still here");
    sim.run_for(1_000);
    assert_eq!(texts(&sim, alice, "ops"), vec!["still here"]);
}

#[test]
fn the_network_cannot_burn_a_channel() {
    let mut sim = Sim::new(77);
    let (alice, bob, _carol, id) = three(&mut sim, ChannelOptions::default());
    // A relay holds no key: a burn control message sealed under any key it can
    // make, or a member's burn of another channel, does not open.
    let forged = Insider::seal(ContentKind::Mls, &[0x42; 200], &[7; 32]);
    for blob in forged {
        sim.inject(bob, id, blob);
    }
    let other = sim.create_channel(alice, "other");
    sim.add(alice, "other", bob);
    sim.run_for(1_000);
    let captured: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let keep = captured.clone();
    sim.filter = Some(Box::new(move |_, t| {
        keep.borrow_mut().push(t.blob.clone());
        Verdict::Deliver
    }));
    let now = sim.now;
    sim.nodes[alice].engine.burn(now, "other").unwrap();
    sim.collect(alice);
    // The burn of "other", redirected into "ops".
    for blob in captured.borrow().iter() {
        sim.inject(bob, id, blob.clone());
    }
    // (What cannot be opened waits a while, in case its epoch's key is on the way.)
    sim.run_for(10 * MINUTE);
    assert!(
        sim.nodes[bob]
            .engine
            .channels()
            .iter()
            .all(|c| c.id != other)
    );
    assert!(sim.nodes[bob].engine.channel("ops").is_ok());
    let alerts = sim.nodes[bob].alerts();
    // Sealed under a made-up key: cannot be opened.
    assert!(
        alerts
            .iter()
            .any(|a| matches!(a, Alert::Undecryptable { .. })),
        "{alerts:?}"
    );
    // Another channel's message in this channel's mailbox: named for what it is.
    assert!(alerts.contains(&Alert::Moved), "{alerts:?}");
}

#[test]
fn a_burn_erases_the_key_package_a_pending_re_add_left() {
    use backchannel_core::store::{EngineStore as _, KeyPackageRecord};
    let mut sim = Sim::new(79);
    let (alice, _bob, carol, _id) = three(&mut sim, Suite::XWing.into());
    // Carol asked to be re-added (after a fork): her client keeps the new key
    // package's record, with the channel's mailbox, until the welcome comes.
    let summary = sim.nodes[carol].engine.channel("ops").unwrap();
    let mailbox = summary
        .members
        .iter()
        .find(|m| m.is_self)
        .unwrap()
        .mailbox
        .clone();
    let now = sim.now;
    sim.nodes[carol]
        .engine
        .store()
        .save_key_package_record(&KeyPackageRecord {
            signature_key: vec![0x77; 32],
            name: "carol".into(),
            mailbox,
            suite: Suite::XWing,
            created_at: now,
        })
        .unwrap();
    let needles = traces(&sim, carol, "ops", &[]);
    let now = sim.now;
    sim.nodes[alice].engine.burn(now, "ops").unwrap();
    sim.collect(alice);
    sim.run_for(1_000);
    assert_eq!(
        erasures(&sim, carol),
        vec![Erasure::Burned {
            by: Actor::Member("alice".into())
        }]
    );
    assert!(
        sim.nodes[carol]
            .engine
            .store()
            .key_package_records()
            .unwrap()
            .is_empty()
    );
    assert_erased(&sim, carol, &needles);
}
