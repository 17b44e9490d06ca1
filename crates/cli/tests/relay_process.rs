//! The relay as a separate process: durability under SIGKILL, graceful shutdown on
//! SIGTERM, and logs that carry no identifier and no address.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backchannel_client::relay::{RelayClient, RelayClientError};
use backchannel_proto::addr::{MailboxId, RelayAddr, base32_encode};
use backchannel_proto::envelope::BLOB_LEN;
use backchannel_proto::frame::Blob;
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use support::{Relay, free_port};

const T: Duration = Duration::from_secs(5);

fn blob(sender: u8, seq: u32) -> Blob {
    let mut b = Box::new([0u8; BLOB_LEN]);
    b[0] = sender;
    b[1..5].copy_from_slice(&seq.to_be_bytes());
    // The rest is noise, as real blobs are.
    rand::rngs::StdRng::seed_from_u64(u64::from(sender) << 32 | u64::from(seq)).fill(&mut b[5..]);
    b
}

fn parse(b: &Blob) -> (u8, u32) {
    (b[0], u32::from_be_bytes([b[1], b[2], b[3], b[4]]))
}

async fn connect_retrying(address: &RelayAddr) -> RelayClient {
    loop {
        if let Ok(c) = RelayClient::connect(address, T).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_repeated_sigkill_exactly_once_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let port = free_port();
    let start = |data: &std::path::Path| {
        Relay::start_with(
            data,
            port,
            &["--quota-messages", "1000000", "--quota-bytes", "4000000000"],
            &[],
        )
    };
    let relay = Arc::new(Mutex::new(start(&data)));
    let address: RelayAddr = relay.lock().unwrap().address.parse().unwrap();
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let (send_id, read_id) = connect_retrying(&address)
        .await
        .create_mailbox(&owner)
        .await
        .unwrap();

    let acked: Arc<Mutex<BTreeMap<u8, Vec<u32>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 0..4u8 {
        let (address, acked, stop) = (address.clone(), acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut client = connect_retrying(&address).await;
            let mut seq = 0u32;
            // Throttled a little, so that the run spans all the kills.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                match client.send(send_id, 0, blob(sender, seq)).await {
                    Ok(()) => {
                        acked.lock().unwrap().entry(sender).or_default().push(seq);
                        seq += 1;
                    }
                    // The relay died: reconnect and send the same message again.
                    Err(RelayClientError::Closed | RelayClientError::Timeout) => {
                        client = connect_retrying(&address).await;
                    }
                    Err(RelayClientError::Refused(code)) => panic!("refused: {code}"),
                    Err(_) => client = connect_retrying(&address).await,
                }
            }
            seq
        }));
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..600))).await;
        let mut r = relay.lock().unwrap();
        r.kill();
        *r = start(&data);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut attempted = BTreeMap::new();
    for (sender, handle) in senders.into_iter().enumerate() {
        attempted.insert(sender as u8, handle.await.unwrap());
    }
    // One more kill, with nothing in flight, then read everything.
    {
        let mut r = relay.lock().unwrap();
        r.kill();
        *r = start(&data);
    }
    let mut reader = connect_retrying(&address).await;
    let mut deliveries = reader.deliveries().unwrap();
    let backlog = reader.subscribe(read_id, &owner).await.unwrap();
    let mut got: Vec<(u8, u32)> = Vec::new();
    while (got.len() as u64) < backlog {
        let d = tokio::time::timeout(T, deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(parse(&d.blob));
        reader.ack(read_id, d.message_id).await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.recv())
            .await
            .is_err()
    );

    let acked = acked.lock().unwrap().clone();
    let total_acked: usize = acked.values().map(Vec::len).sum();
    assert!(
        total_acked > 100,
        "too little traffic to mean anything: {total_acked}"
    );
    let unique: BTreeSet<(u8, u32)> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a message was delivered twice");
    for (sender, seqs) in &acked {
        for seq in seqs {
            assert!(
                unique.contains(&(*sender, *seq)),
                "acknowledged ({sender}, {seq}) was lost"
            );
        }
        // In order: each sender's messages come in the order they were sent.
        let order: Vec<u32> = got
            .iter()
            .filter(|(s, _)| s == sender)
            .map(|(_, q)| *q)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "sender {sender} out of order"
        );
        // Nothing appears that was never sent (at most the one in flight at the end).
        assert!(order.iter().all(|q| *q <= attempted[sender]));
    }
}

#[test]
fn sigterm_shuts_down_gracefully_and_logs_carry_no_identifiers_or_addresses() {
    for filter in [None, Some("backchannel_relay=trace,backchannel_cli=trace")] {
        let tmp = tempfile::tempdir().unwrap();
        let env: Vec<(&str, &str)> = filter.map(|f| vec![("RUST_LOG", f)]).unwrap_or_default();
        let relay = Relay::start_with(&tmp.path().join("relay"), free_port(), &[], &env);
        let address: RelayAddr = relay.address.parse().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (send_id, read_id, nonce) = runtime.block_on(async {
            let owner = SigningKey::generate(&mut rand::rngs::OsRng);
            let mut client = RelayClient::connect(&address, T).await.unwrap();
            let (send_id, read_id) = client.create_mailbox(&owner).await.unwrap();
            client.send(send_id, 0, blob(1, 1)).await.unwrap();
            let mut deliveries = client.deliveries().unwrap();
            client.subscribe(read_id, &owner).await.unwrap();
            let d = deliveries.recv().await.unwrap();
            client.ack(read_id, d.message_id).await.unwrap();
            // Failures, which are the likeliest to be logged with details.
            let _ = client
                .subscribe(read_id, &SigningKey::generate(&mut rand::rngs::OsRng))
                .await;
            let _ = client.send(MailboxId([9; 16]), 0, blob(2, 2)).await;
            let _ = client.send_raw(vec![1, 2, 3]).await;
            let other = RelayClient::connect(&address, T).await.unwrap();
            other.ping().await.unwrap();
            (send_id, read_id, *other.nonce())
        });
        let (status, log) = relay.terminate();
        assert!(status.success(), "SIGTERM: {status:?}");
        assert!(
            log.contains("relay stopped"),
            "no clean stop in the log:\n{log}"
        );
        let secrets: Vec<(&str, Vec<u8>)> = vec![
            ("send id", send_id.0.to_vec()),
            ("read id", read_id.0.to_vec()),
            ("nonce", nonce.to_vec()),
        ];
        for (what, bytes) in secrets {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            for form in [
                hex.clone(),
                hex.to_uppercase(),
                base32_encode(&bytes),
                format!("{bytes:?}"),
            ] {
                assert!(
                    !log.contains(&form),
                    "the {what} appears in the log ({filter:?}):\n{log}"
                );
            }
        }
        assert!(
            !log.contains("127.0.0.1"),
            "an address appears in the log ({filter:?}):\n{log}"
        );
    }
}
