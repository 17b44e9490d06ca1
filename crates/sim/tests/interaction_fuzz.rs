//! The interaction fuzzer: random sends between three members over a network that
//! drops, duplicates, delays and reorders at random. Whatever happens, every
//! plaintext delivered is exactly what its sender sent under that number, every
//! dropped message is reported as withheld at the member it was kept from, every
//! duplicate as a replay, and nothing else raises an alert.
//!
//! It runs as a property test on the stable toolchain (`PROPTEST_CASES` sets how
//! many scenarios; CI's default run is the smoke run).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use backchannel_core::{Alert, Event};
use backchannel_sim::{Faults, Sim, Verdict};
use proptest::prelude::*;

/// What happens to a send, for each of the two recipients.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![6 => Just(Fate::Deliver), 1 => Just(Fate::Drop), 1 => Just(Fate::Duplicate)]
}

#[derive(Clone, Debug)]
struct Step {
    sender: usize,
    fates: [Fate; 2],
    pause_ms: u64,
}

fn step() -> impl Strategy<Value = Step> {
    (0usize..3, fate(), fate(), 0u64..60).prop_map(|(sender, a, b, pause_ms)| Step {
        sender,
        fates: [a, b],
        pause_ms,
    })
}

fn run_scenario(seed: u64, max_delay_ms: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let names = ["alice", "bob", "carol"];
    let mut sim = Sim::new(seed);
    let nodes: Vec<usize> = names.iter().map(|n| sim.add_node(n)).collect();
    sim.create_channel(nodes[0], "ops");
    sim.add(nodes[0], "ops", nodes[1]);
    sim.add(nodes[0], "ops", nodes[2]);
    sim.run();
    sim.faults = Faults {
        min_delay_ms: 1,
        max_delay_ms,
        ..Faults::default()
    };
    let plan: Arc<Mutex<VecDeque<Verdict>>> = Arc::default();
    let queue = plan.clone();
    sim.filter = Some(Box::new(move |_, _| {
        queue
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Verdict::Deliver)
    }));

    // What was sent (sender, seq) -> text, and the expected anomalies per recipient.
    let mut sent: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut seq = [0u64; 3];
    let mut dropped: BTreeMap<(usize, String), BTreeSet<u64>> = BTreeMap::new();
    let mut duplicated = [0usize; 3];
    let mut expected_texts: Vec<BTreeSet<(String, u64)>> = vec![BTreeSet::new(); 3];
    let mut all_steps: Vec<Step> = steps.to_vec();
    // At the end everyone speaks once more, delivered: that reveals any gap.
    for s in 0..3 {
        all_steps.push(Step {
            sender: s,
            fates: [Fate::Deliver; 2],
            pause_ms: 5,
        });
    }
    for (i, st) in all_steps.iter().enumerate() {
        let s = st.sender;
        seq[s] += 1;
        let text = format!("{} #{} ({i})", names[s], seq[s]);
        let recipients: Vec<usize> = (0..3).filter(|r| *r != s).collect();
        {
            // The sender's engine transmits to the other members in channel order.
            let members = sim.nodes[nodes[s]].engine.channel("ops").unwrap().members;
            let order: Vec<usize> = members
                .iter()
                .filter(|m| !m.is_self)
                .map(|m| names.iter().position(|n| *n == m.name).unwrap())
                .collect();
            let mut q = plan.lock().unwrap();
            for r in &order {
                let k = recipients.iter().position(|x| x == r).unwrap();
                q.push_back(match st.fates[k] {
                    Fate::Deliver => Verdict::Deliver,
                    Fate::Drop => Verdict::Drop,
                    Fate::Duplicate => Verdict::Duplicate,
                });
            }
        }
        for (k, r) in recipients.iter().enumerate() {
            match st.fates[k] {
                Fate::Drop => {
                    dropped
                        .entry((*r, names[s].to_owned()))
                        .or_default()
                        .insert(seq[s]);
                }
                Fate::Duplicate => {
                    duplicated[*r] += 1;
                    expected_texts[*r].insert((names[s].to_owned(), seq[s]));
                }
                Fate::Deliver => {
                    expected_texts[*r].insert((names[s].to_owned(), seq[s]));
                }
            }
        }
        sent.insert((names[s].to_owned(), seq[s]), text.clone());
        sim.send(nodes[s], "ops", &text);
        sim.run_for(st.pause_ms);
    }
    sim.run();

    for r in 0..3 {
        let mut got = BTreeSet::new();
        let mut withheld: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        let mut replays = 0;
        for e in &sim.nodes[nodes[r]].events {
            match e {
                Event::Message(m) => {
                    // Authentic: exactly what the sender sent under that number.
                    let key = (m.from.clone(), m.seq);
                    prop_assert_eq!(
                        sent.get(&key),
                        Some(&m.text),
                        "forged or altered text at {}",
                        names[r]
                    );
                    prop_assert!(got.insert(key), "shown twice at {}", names[r]);
                }
                Event::Alert {
                    alert: Alert::Withheld { from, missing, .. },
                    ..
                } => {
                    withheld
                        .entry(from.clone())
                        .or_default()
                        .extend(missing.iter().copied());
                }
                Event::Alert {
                    alert: Alert::Replayed { .. },
                    ..
                } => replays += 1,
                Event::Alert { alert, .. } => {
                    return Err(TestCaseError::fail(format!(
                        "unexpected alert at {}: {alert}",
                        names[r]
                    )));
                }
                _ => {}
            }
        }
        prop_assert_eq!(&got, &expected_texts[r], "messages at {}", names[r]);
        for s in names {
            let expected = dropped.get(&(r, s.to_owned())).cloned().unwrap_or_default();
            let reported = withheld.get(s).cloned().unwrap_or_default();
            prop_assert_eq!(reported, expected, "withheld from {} by {}", names[r], s);
        }
        prop_assert_eq!(replays, duplicated[r], "replays at {}", names[r]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(6),
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_delivery_is_authentic_and_every_anomaly_is_reported(
        seed in any::<u64>(),
        max_delay_ms in 1u64..400,
        steps in proptest::collection::vec(step(), 1..25),
    ) {
        run_scenario(seed, max_delay_ms, &steps)?;
    }
}
