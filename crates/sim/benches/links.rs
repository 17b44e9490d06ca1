//! The inviter's cost of reading an invite link's mailbox: every blob that arrives
//! makes the client scan what the mailbox holds (anyone may write to it, so every
//! unassembled blob is a possible request header). The worst case is a mailbox full
//! of noise (64 blobs kept; 256 measured for comparison) with one real request in it.
//!
//! Run: `cargo bench -p backchannel-sim --bench links`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use backchannel_core::link::{find_requests, link_keypair, seal_request};
use backchannel_proto::envelope::BLOB_LEN;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use openmls_libcrux_crypto::Provider;
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;

fn scan(c: &mut Criterion) {
    let provider = Provider::default();
    let (crypto, rand) = (provider.crypto(), provider.rand());
    let keys = link_keypair(crypto, &[7; 32]).unwrap();
    // An X-Wing key package is about 2.7 KB: one header and one fragment.
    let request = seal_request(crypto, rand, &keys.public, &vec![0x5a; 2748]).unwrap();
    let mut group = c.benchmark_group("link-scan");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(10);
    for noise in [0usize, 16, 62, 254] {
        let mut blobs: Vec<Vec<u8>> = (0..noise)
            .map(|_| rand.random_vec(BLOB_LEN).unwrap())
            .collect();
        blobs.extend(request.blobs.iter().cloned());
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{} blobs", blobs.len())),
            &blobs,
            |b, blobs| {
                b.iter(|| {
                    let found = find_requests(crypto, &keys.private, blobs);
                    assert_eq!(found.len(), 1);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
