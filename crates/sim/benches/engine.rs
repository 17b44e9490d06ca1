//! Engine benchmarks against raw OpenMLS, per ciphersuite.
//!
//! For each operation three figures: our engine (payload, padding, fragmentation,
//! sealing, sequence checks, one durable SQLCipher transaction), raw OpenMLS on our
//! SQLCipher storage provider (no transaction of ours: each OpenMLS write commits on
//! its own), and raw OpenMLS on its in-memory storage. The ratios between them are
//! the cost of our layer and of durable encrypted storage.
//!
//! Run: `cargo bench -p backchannel-sim --bench engine`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use backchannel_core::mls::{Backend, Suite};
use backchannel_core::{ChannelId, Engine, EngineConfig, Output, Timestamp};
use backchannel_proto::addr::{Fingerprint, MailboxAddr, MailboxId, RelayAddr};
use backchannel_store::Store;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;

const PASS: &[u8] = b"bench";
const SIZES: [usize; 4] = [2, 10, 100, 250];

fn mailbox(i: u8) -> MailboxAddr {
    MailboxAddr {
        relay: RelayAddr::new(Fingerprint([1; 32]), "relay.bench", 7443).unwrap(),
        send_id: MailboxId([i; 16]),
    }
}

fn engine_at(dir: &std::path::Path) -> Engine<Store> {
    let store = if Store::exists(dir) {
        Store::open(dir, PASS).unwrap()
    } else {
        Store::create(dir, PASS).unwrap()
    };
    Engine::load(store, EngineConfig::default()).unwrap()
}

fn drain(engine: &mut Engine<Store>) -> Vec<Vec<u8>> {
    let mut blobs = Vec::new();
    while let Some(out) = engine.poll_output() {
        if let Output::Transmit(t) = out {
            blobs.push(t.blob);
        }
    }
    blobs
}

/// The blobs of the transmits waiting in `engine` that go to `to`.
fn blobs_to(engine: &mut Engine<Store>, to: &MailboxAddr) -> Vec<Vec<u8>> {
    let mut blobs = Vec::new();
    while let Some(out) = engine.poll_output() {
        if let Output::Transmit(t) = out
            && t.to == *to
        {
            blobs.push(t.blob);
        }
    }
    blobs
}

/// Each iteration: Alice sends one message (not measured), Bob applies it.
fn receive_each(
    b: &mut criterion::Bencher<'_>,
    clock: &std::cell::Cell<u64>,
    (alice, bob): (&mut Engine<Store>, &mut Engine<Store>),
    (channel, bob_box): (&ChannelId, &MailboxAddr),
    text: &str,
) {
    b.iter_batched(
        || {
            clock.set(clock.get() + 1);
            alice.send_text(Timestamp(clock.get()), "c", text).unwrap();
            blobs_to(alice, bob_box)
        },
        |blobs| {
            for blob in &blobs {
                bob.handle_incoming(Timestamp(clock.get()), channel, blob)
                    .unwrap();
            }
            while bob.poll_output().is_some() {}
        },
        BatchSize::SmallInput,
    )
}

fn copy_dir(from: &std::path::Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

/// Raw OpenMLS: one member's provider and signer.
struct Raw<P> {
    provider: P,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl<P: OpenMlsProvider> Raw<P> {
    fn new(provider: P, name: &str) -> Self {
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        signer.store(provider.storage()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            provider,
            signer,
            credential,
        }
    }

    fn group(&self, suite: Suite) -> MlsGroup {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite.ciphersuite())
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build();
        MlsGroup::new(
            &self.provider,
            &self.signer,
            &config,
            self.credential.clone(),
        )
        .unwrap()
    }

    fn key_package(&self, suite: Suite) -> KeyPackage {
        KeyPackage::builder()
            .build(
                suite.ciphersuite(),
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .unwrap()
            .key_package()
            .clone()
    }
}

fn memory() -> openmls_libcrux_crypto::Provider {
    openmls_libcrux_crypto::Provider::new().unwrap()
}

fn sqlcipher() -> (Backend<Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (
        Backend::new(Store::create(dir.path(), PASS).unwrap()).unwrap(),
        dir,
    )
}

fn bench_create(c: &mut Criterion, suite: Suite) {
    let mut group = c.benchmark_group(format!("create/{}", suite.name()));
    group.bench_function("engine", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = engine_at(dir.path());
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            engine
                .create_channel(
                    Timestamp(i),
                    &format!("c{i}"),
                    "me",
                    suite.into(),
                    mailbox(0),
                )
                .unwrap();
        });
    });
    group.bench_function("openmls-sqlcipher", |b| {
        let (provider, _dir) = sqlcipher();
        let raw = Raw::new(provider, "me");
        b.iter(|| raw.group(suite));
    });
    group.bench_function("openmls-memory", |b| {
        let raw = Raw::new(memory(), "me");
        b.iter(|| raw.group(suite));
    });
    group.finish();
}

fn bench_add(c: &mut Criterion, suite: Suite) {
    let mut group = c.benchmark_group(format!("add/{}", suite.name()));
    for &n in &SIZES {
        // The engine: a prepared profile with n - 1 members is copied for every run.
        let donor_dir = tempfile::tempdir().unwrap();
        let mut donor = engine_at(donor_dir.path());
        let kps: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                donor
                    .key_package(Timestamp(0), &format!("m{i}"), suite, mailbox(i as u8))
                    .unwrap()
            })
            .collect();
        let prepared = tempfile::tempdir().unwrap();
        {
            let mut admin = engine_at(prepared.path());
            admin
                .create_channel(Timestamp(0), "c", "admin", suite.into(), mailbox(255))
                .unwrap();
            let existing: Vec<&[u8]> = kps[..n - 2].iter().map(Vec::as_slice).collect();
            if !existing.is_empty() {
                admin.add_members(Timestamp(0), "c", &existing).unwrap();
            }
            drain(&mut admin);
        }
        let newcomer = kps[n - 2].clone();
        {
            // What one add sends: the commit, sealed once per existing member.
            let dir = copy_dir(prepared.path());
            let mut engine = engine_at(dir.path());
            engine.add_member(Timestamp(1), "c", &newcomer).unwrap();
            let blobs = drain(&mut engine);
            eprintln!(
                "add/{}/engine/{n}: {} blobs ({} KiB) to {} recipients",
                suite.name(),
                blobs.len(),
                blobs.iter().map(Vec::len).sum::<usize>() / 1024,
                n - 2
            );
        }
        group.bench_with_input(BenchmarkId::new("engine", n), &n, |b, _| {
            b.iter_batched(
                || {
                    let dir = copy_dir(prepared.path());
                    (engine_at(dir.path()), dir)
                },
                |(mut engine, _dir)| {
                    engine.add_member(Timestamp(1), "c", &newcomer).unwrap();
                    drain(&mut engine)
                },
                BatchSize::PerIteration,
            );
        });

        // Raw OpenMLS: key packages of distinct members, a group of n - 1 per run.
        let raw_kps: Vec<KeyPackage> = (0..n - 1)
            .map(|i| Raw::new(memory(), &format!("m{i}")).key_package(suite))
            .collect();
        fn setup<P: OpenMlsProvider>(
            raw: &Raw<P>,
            suite: Suite,
            existing: &[KeyPackage],
        ) -> MlsGroup {
            let mut group = raw.group(suite);
            if !existing.is_empty() {
                group
                    .add_members(&raw.provider, &raw.signer, existing)
                    .unwrap();
                group.merge_pending_commit(&raw.provider).unwrap();
            }
            group
        }
        group.bench_with_input(BenchmarkId::new("openmls-sqlcipher", n), &n, |b, _| {
            b.iter_batched(
                || {
                    let (provider, dir) = sqlcipher();
                    let raw = Raw::new(provider, "admin");
                    let group = setup(&raw, suite, &raw_kps[..n - 2]);
                    (raw, group, dir)
                },
                |(raw, mut group, _dir)| {
                    group
                        .add_members(&raw.provider, &raw.signer, &raw_kps[n - 2..])
                        .unwrap();
                    group.merge_pending_commit(&raw.provider).unwrap();
                },
                BatchSize::PerIteration,
            );
        });
        group.bench_with_input(BenchmarkId::new("openmls-memory", n), &n, |b, _| {
            b.iter_batched(
                || {
                    let raw = Raw::new(memory(), "admin");
                    let group = setup(&raw, suite, &raw_kps[..n - 2]);
                    (raw, group)
                },
                |(raw, mut group)| {
                    group
                        .add_members(&raw.provider, &raw.signer, &raw_kps[n - 2..])
                        .unwrap();
                    group.merge_pending_commit(&raw.provider).unwrap();
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// Two members, in the engine and in raw OpenMLS.
fn bench_messages(c: &mut Criterion, suite: Suite) {
    let text = "a message of ordinary length, about a hundred bytes long, as people write them.";

    // Engine pair.
    let a_dir = tempfile::tempdir().unwrap();
    let mut alice = engine_at(a_dir.path());
    alice
        .create_channel(Timestamp(0), "c", "alice", suite.into(), mailbox(1))
        .unwrap();
    let bob_kp = engine_at(tempfile::tempdir().unwrap().path())
        .key_package(Timestamp(0), "bob", suite, mailbox(2))
        .unwrap();
    alice.add_member(Timestamp(0), "c", &bob_kp).unwrap();
    drain(&mut alice);

    // Raw pairs.
    fn raw_pair<P: OpenMlsProvider>(
        suite: Suite,
        pa: P,
        pb: P,
    ) -> (Raw<P>, MlsGroup, Raw<P>, MlsGroup) {
        let a = Raw::new(pa, "alice");
        let b = Raw::new(pb, "bob");
        let mut ga = a.group(suite);
        let kp = b.key_package(suite);
        let (_, welcome, _) = ga.add_members(&a.provider, &a.signer, &[kp]).unwrap();
        ga.merge_pending_commit(&a.provider).unwrap();
        let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::from(welcome).extract() else {
            panic!("welcome")
        };
        let gb = StagedWelcome::new_from_welcome(
            &b.provider,
            &MlsGroupJoinConfig::builder()
                .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
                .use_ratchet_tree_extension(true)
                .build(),
            welcome,
            None,
        )
        .unwrap()
        .into_group(&b.provider)
        .unwrap();
        (a, ga, b, gb)
    }
    let (sa, sb) = (sqlcipher(), sqlcipher());
    let (ra_s, mut ga_s, _, _) = raw_pair(suite, sa.0, sb.0);
    let (ra_m, mut ga_m, _, _) = raw_pair(suite, memory(), memory());

    let mut group = c.benchmark_group(format!("encrypt/{}", suite.name()));
    let mut t = 1u64;
    group.bench_function("engine", |b| {
        b.iter(|| {
            t += 1;
            alice.send_text(Timestamp(t), "c", text).unwrap();
            drain(&mut alice)
        })
    });
    group.bench_function("openmls-sqlcipher", |b| {
        b.iter(|| {
            ga_s.create_message(&ra_s.provider, &ra_s.signer, text.as_bytes())
                .unwrap()
        })
    });
    group.bench_function("openmls-memory", |b| {
        b.iter(|| {
            ga_m.create_message(&ra_m.provider, &ra_m.signer, text.as_bytes())
                .unwrap()
        })
    });
    group.finish();

    // Fresh pairs: the encryption runs above left the receivers far behind.
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = engine_at(a_dir.path());
    let mut bob = engine_at(b_dir.path());
    alice
        .create_channel(Timestamp(0), "c", "alice", suite.into(), mailbox(1))
        .unwrap();
    let kp = bob
        .key_package(Timestamp(0), "bob", suite, mailbox(2))
        .unwrap();
    let welcome = alice.add_member(Timestamp(0), "c", &kp).unwrap();
    let channel = bob.join(Timestamp(0), Some("c"), &welcome).unwrap();
    drain(&mut alice);
    drain(&mut bob);
    let (sa, sb) = (sqlcipher(), sqlcipher());
    let (ra_s, mut ga_s, rb_s, mut gb_s) = raw_pair(suite, sa.0, sb.0);
    let (ra_m, mut ga_m, rb_m, mut gb_m) = raw_pair(suite, memory(), memory());

    let mut group = c.benchmark_group(format!("decrypt/{}", suite.name()));
    group.bench_function("engine", |b| {
        let clock = std::cell::Cell::new(t);
        receive_each(
            b,
            &clock,
            (&mut alice, &mut bob),
            (&channel, &mailbox(2)),
            text,
        )
    });
    fn raw_decrypt<P: OpenMlsProvider>(
        b: &mut criterion::Bencher<'_>,
        text: &str,
        sender: &Raw<P>,
        gs: &mut MlsGroup,
        receiver: &Raw<P>,
        gr: &mut MlsGroup,
    ) {
        b.iter_batched(
            || {
                let out = gs
                    .create_message(&sender.provider, &sender.signer, text.as_bytes())
                    .unwrap();
                MlsMessageIn::from(out).try_into_protocol_message().unwrap()
            },
            |message| gr.process_message(&receiver.provider, message).unwrap(),
            BatchSize::SmallInput,
        )
    }
    group.bench_function("openmls-sqlcipher", |b| {
        raw_decrypt(b, text, &ra_s, &mut ga_s, &rb_s, &mut gb_s)
    });
    group.bench_function("openmls-memory", |b| {
        raw_decrypt(b, text, &ra_m, &mut ga_m, &rb_m, &mut gb_m)
    });
    group.finish();
}

/// One message in a channel of `n`: the sender's cost (sealed once per member) and
/// one member's cost to apply it.
fn bench_large_messages(c: &mut Criterion, suite: Suite, n: usize) {
    let text = "a message of ordinary length, about a hundred bytes long, as people write them.";
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = engine_at(a_dir.path());
    let mut bob = engine_at(b_dir.path());
    alice
        .create_channel(Timestamp(0), "c", "alice", suite.into(), mailbox(255))
        .unwrap();
    let bob_kp = bob
        .key_package(Timestamp(0), "bob", suite, mailbox(0))
        .unwrap();
    let donor_dir = tempfile::tempdir().unwrap();
    let mut donor = engine_at(donor_dir.path());
    let mut kps = vec![bob_kp];
    for i in 1..n - 1 {
        kps.push(
            donor
                .key_package(Timestamp(0), &format!("m{i}"), suite, mailbox(i as u8))
                .unwrap(),
        );
    }
    let all: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
    let welcome = alice.add_members(Timestamp(0), "c", &all).unwrap();
    let channel = bob.join(Timestamp(0), Some("c"), &welcome).unwrap();
    drain(&mut alice);
    drain(&mut bob);
    let mut group = c.benchmark_group(format!("channel-{n}/{}", suite.name()));
    let clock = std::cell::Cell::new(1u64);
    // First, while Bob has seen every message before the one he gets.
    group.bench_function("receive", |b| {
        receive_each(
            b,
            &clock,
            (&mut alice, &mut bob),
            (&channel, &mailbox(0)),
            text,
        )
    });
    group.bench_function("send", |b| {
        b.iter(|| {
            clock.set(clock.get() + 1);
            alice.send_text(Timestamp(clock.get()), "c", text).unwrap();
            blobs_to(&mut alice, &mailbox(0))
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    for suite in Suite::ALL {
        bench_large_messages(c, suite, 250);
        bench_create(c, suite);
        bench_messages(c, suite);
        bench_add(c, suite);
    }
}

criterion_group! {
    name = engine;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(engine);
