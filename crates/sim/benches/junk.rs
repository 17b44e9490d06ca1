//! What junk in a mailbox costs the next real message. Anyone who holds a mailbox's
//! send identifier (every member, and the relay) can fill it with blobs no key opens;
//! the engine parks them (they may belong to an epoch whose key comes later) and
//! reports them when their grace period ends. This measures the time the receiver
//! spends on one real message with 0, 200 and 4,096 junk blobs parked.
//!
//! Run: `cargo bench -p backchannel-sim --bench junk`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use backchannel_proto::envelope::BLOB_LEN;
use backchannel_sim::Sim;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::RngCore;

fn next_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive-after-junk");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    for junk in [0usize, 200, 4096] {
        let mut sim = Sim::new(1);
        let (alice, bob) = (sim.add_node("alice"), sim.add_node("bob"));
        sim.create_channel(alice, "ops");
        let channel = sim.add(alice, "ops", bob);
        sim.run();
        let mut rng = rand::thread_rng();
        for _ in 0..junk {
            let mut blob = vec![0u8; BLOB_LEN];
            rng.fill_bytes(&mut blob);
            sim.inject(bob, channel, blob);
        }
        group.bench_function(BenchmarkId::from_parameter(format!("{junk} junk")), |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    sim.send(alice, "ops", "a real message");
                    let blobs: Vec<Vec<u8>> =
                        sim.in_flight().drain(..).map(|f| f.transmit.blob).collect();
                    let now = sim.now;
                    let started = Instant::now();
                    for blob in &blobs {
                        sim.nodes[bob]
                            .engine
                            .handle_incoming(now, &channel, blob)
                            .unwrap();
                    }
                    spent += started.elapsed();
                    while sim.nodes[bob].engine.poll_output().is_some() {}
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, next_message);
criterion_main!(benches);
