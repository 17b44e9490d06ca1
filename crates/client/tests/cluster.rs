//! A relay of two nodes on one PostgreSQL database, driven by the real client
//! over TLS on loopback sockets: news crosses nodes, codes meet across nodes,
//! and one address with both hosts fails over.
//!
//! The server comes from `BACKCHANNEL_TEST_POSTGRES` (`.ci/run` starts one and
//! sets it); without it these tests say so and skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use backchannel_client::relay::RelayClient;
use backchannel_proto::addr::{MailboxId, RelayAddr};
use backchannel_proto::envelope::BLOB_LEN;
use backchannel_proto::frame::{Blob, ErrorCode, RendezvousEvent};
use backchannel_relay::storage::RelayStorage as _;
use backchannel_relay::storage::postgres::{PostgresStorage, scratch_database, test_server};
use backchannel_relay::{RelayConfig, RunningRelay};
use ed25519_dalek::SigningKey;

const T: Duration = Duration::from_secs(10);

fn blob(n: u32) -> Blob {
    let mut b = Box::new([0u8; BLOB_LEN]);
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[BLOB_LEN - 1] = 0xee;
    b
}

fn number(b: &Blob) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A fresh database on the test server, or `None` to skip.
async fn database() -> Option<String> {
    let server = test_server()?;
    Some(
        tokio::task::spawn_blocking(move || scratch_database(&server))
            .await
            .unwrap()
            .unwrap(),
    )
}

/// A node on `url`, with its TLS identity in `dir` (shared by the nodes).
async fn node(dir: &std::path::Path, url: &str) -> RunningRelay {
    node_with(dir, url, |_| {}).await
}

async fn node_with(
    dir: &std::path::Path,
    url: &str,
    tweak: impl FnOnce(&mut RelayConfig),
) -> RunningRelay {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_owned());
    config.postgres = Some(url.to_owned());
    tweak(&mut config);
    backchannel_relay::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_on_one_node_receives_what_another_node_stored() {
    let Some(url) = database().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (node(tmp.path(), &url).await, node(tmp.path(), &url).await);
    assert_eq!(
        one.address.fingerprint, two.address.fingerprint,
        "nodes on one data directory share the certificate"
    );
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut reader = RelayClient::connect(&one.address, T).await.unwrap();
    let (send_id, read_id) = reader.create_mailbox(&owner).await.unwrap();
    let mut deliveries = reader.deliveries().unwrap();
    reader.subscribe(read_id, &owner).await.unwrap();
    let sender = RelayClient::connect(&two.address, T).await.unwrap();
    let mut latencies = Vec::new();
    for n in 0..20 {
        let sent = std::time::Instant::now();
        sender.send(send_id, 0, blob(n)).await.unwrap();
        let d = tokio::time::timeout(T, deliveries.recv())
            .await
            .expect("the other node's message never came")
            .unwrap();
        latencies.push(sent.elapsed());
        assert_eq!(number(&d.blob), n, "in order, once");
        reader.ack(read_id, d.message_id).await.unwrap();
    }
    latencies.sort();
    eprintln!(
        "send on node 2 -> delivery on node 1: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.recv())
            .await
            .is_err(),
        "nothing more, nothing twice"
    );
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news_that_no_notification_announced_still_reaches_the_reader() {
    let Some(url) = database().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let one = node(tmp.path(), &url).await;
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut reader = RelayClient::connect(&one.address, T).await.unwrap();
    let (send_id, read_id) = reader.create_mailbox(&owner).await.unwrap();
    let mut deliveries = reader.deliveries().unwrap();
    reader.subscribe(read_id, &owner).await.unwrap();
    // A store that tells nobody (as when a notification is lost).
    let stored = tokio::task::spawn_blocking(move || {
        let mut silent = PostgresStorage::open(&url).unwrap();
        silent
            .append_batch(
                &[backchannel_relay::storage::Append {
                    send_id,
                    blob: blob(7),
                    expires_at: u64::MAX / 2,
                    replay: false,
                }],
                backchannel_relay::storage::Quota {
                    messages: 10,
                    bytes: u64::MAX,
                },
            )
            .unwrap()
    })
    .await
    .unwrap();
    assert!(matches!(
        stored[0],
        backchannel_relay::storage::AppendOutcome::Stored { .. }
    ));
    let d = tokio::time::timeout(T, deliveries.recv())
        .await
        .expect("the node never looked")
        .unwrap();
    assert_eq!(number(&d.blob), 7);
    one.shutdown().await;
}

async fn next(
    rx: &mut tokio::sync::mpsc::Receiver<(u32, RendezvousEvent)>,
) -> (u32, RendezvousEvent) {
    tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_opened_on_one_node_is_joined_on_the_other() {
    let Some(url) = database().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (node(tmp.path(), &url).await, node(tmp.path(), &url).await);
    let mut opener = RelayClient::connect(&one.address, T).await.unwrap();
    let mut joiner = RelayClient::connect(&two.address, T).await.unwrap();
    let mut opener_events = opener.rendezvous_events().unwrap();
    let mut joiner_events = joiner.rendezvous_events().unwrap();
    let (nameplate, _ttl) = opener.open_rendezvous().await.unwrap();
    assert!((1..=99).contains(&nameplate));
    assert!(matches!(
        opener.rendezvous_send(nameplate, vec![1]).await,
        Err(backchannel_client::relay::RelayClientError::Refused(
            ErrorCode::NoPeer
        ))
    ));
    joiner.join_rendezvous(nameplate).await.unwrap();
    assert_eq!(
        next(&mut opener_events).await,
        (nameplate, RendezvousEvent::Joined)
    );
    opener
        .rendezvous_send(nameplate, vec![0xab; 2000])
        .await
        .unwrap();
    assert_eq!(
        next(&mut joiner_events).await,
        (nameplate, RendezvousEvent::Data(vec![0xab; 2000]))
    );
    joiner.rendezvous_send(nameplate, vec![2, 3]).await.unwrap();
    assert_eq!(
        next(&mut opener_events).await,
        (nameplate, RendezvousEvent::Data(vec![2, 3]))
    );
    // One join per code, whichever node a second guesser reaches.
    for other in [&one, &two] {
        let third = RelayClient::connect(&other.address, T).await.unwrap();
        assert!(matches!(
            third.join_rendezvous(nameplate).await,
            Err(backchannel_client::relay::RelayClientError::Refused(
                ErrorCode::RendezvousUsed
            ))
        ));
    }
    // The joiner leaves: the opener is told, and the number is free again.
    drop(joiner);
    assert_eq!(
        next(&mut opener_events).await,
        (nameplate, RendezvousEvent::Closed)
    );
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_ends_for_both_parties_when_its_lifetime_from_opening_ends() {
    let Some(url) = database().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ttl = |c: &mut RelayConfig| c.rendezvous_ttl = Duration::from_millis(3000);
    let one = node_with(tmp.path(), &url, ttl).await;
    let two = node_with(tmp.path(), &url, ttl).await;
    let opener = RelayClient::connect(&one.address, T).await.unwrap();
    let mut joiner = RelayClient::connect(&two.address, T).await.unwrap();
    let mut joiner_events = joiner.rendezvous_events().unwrap();
    let opened = std::time::Instant::now();
    let (nameplate, _) = opener.open_rendezvous().await.unwrap();
    // Joined late in the code's life: the joiner's end is over when the code's
    // is, not a lifetime after joining (else it could outlive the code and talk
    // into the next rendezvous given the same number).
    tokio::time::sleep(Duration::from_millis(1800)).await;
    joiner.join_rendezvous(nameplate).await.unwrap();
    joiner.rendezvous_send(nameplate, vec![1]).await.unwrap();
    let left = Duration::from_millis(3300).saturating_sub(opened.elapsed());
    tokio::time::sleep(left).await;
    for (who, result) in [
        ("joiner", joiner.rendezvous_send(nameplate, vec![2]).await),
        ("opener", opener.rendezvous_send(nameplate, vec![3]).await),
    ] {
        assert!(
            matches!(
                result,
                Err(backchannel_client::relay::RelayClientError::Refused(
                    ErrorCode::UnknownRendezvous
                ))
            ),
            "the {who} still sends: {result:?}"
        );
    }
    // Whatever the joiner received, nothing came after the code was over.
    while let Ok(Some((_, event))) =
        tokio::time::timeout(Duration::from_millis(200), joiner_events.recv()).await
    {
        assert_ne!(event, RendezvousEvent::Data(vec![3]));
    }
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_with_both_hosts_fails_over_to_the_second() {
    let Some(url) = database().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (node(tmp.path(), &url).await, node(tmp.path(), &url).await);
    let both = RelayAddr::with_hosts(
        one.address.fingerprint,
        &[
            ("127.0.0.1", one.local_addr.port()),
            ("127.0.0.1", two.local_addr.port()),
        ],
    )
    .unwrap();
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let first = RelayClient::connect(&both, T).await.unwrap();
    assert_eq!(first.host_index(), 0);
    let (send_id, read_id) = first.create_mailbox(&owner).await.unwrap();
    first.send(send_id, 0, blob(1)).await.unwrap();
    drop(first);
    one.shutdown().await;
    // The first host is down: the second answers, with the same mailbox.
    let mut second = RelayClient::connect(&both, T).await.unwrap();
    assert_eq!(second.host_index(), 1);
    second.send(send_id, 0, blob(2)).await.unwrap();
    let mut deliveries = second.deliveries().unwrap();
    second.subscribe(read_id, &owner).await.unwrap();
    for n in 1..=2 {
        let d = tokio::time::timeout(T, deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(number(&d.blob), n);
    }
    two.shutdown().await;
    let none = RelayClient::connect(&both, Duration::from_secs(2)).await;
    assert!(none.is_err(), "both hosts down");
    let _ = MailboxId([0; 16]);
}

/// The relay's gauge of open connections, read from its metrics page.
async fn open_connections(metrics: std::net::SocketAddr) -> Option<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(metrics).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut page = String::new();
    tcp.read_to_string(&mut page).await.ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix("backchannel_relay_connections_open "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_on_the_second_host_goes_back_to_the_first_once_it_answers() {
    use backchannel_client::{Client, ClientConfig, LinkTiming};
    use backchannel_core::mls::Suite;
    let Some(url) = database().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("relay");
    // Node 1's port, chosen now; node 1 starts later.
    let port_one = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let two = node(&dir, &url).await;
    let both = RelayAddr::with_hosts(
        two.address.fingerprint,
        &[
            ("127.0.0.1", port_one),
            ("127.0.0.1", two.local_addr.port()),
        ],
    )
    .unwrap();
    let store = backchannel_store::Store::create(&tmp.path().join("alice"), b"pw").unwrap();
    let config = ClientConfig {
        timing: LinkTiming {
            failback: Duration::from_millis(300),
            ..LinkTiming::default()
        },
        ..ClientConfig::default()
    };
    let mut alice = Client::open(store, config).unwrap();
    // Node 1 is down: everything goes through node 2.
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &both)
        .await
        .unwrap();
    alice.sync(T).await.unwrap();
    let mut config = RelayConfig::new(([127, 0, 0, 1], port_one).into(), dir.clone());
    config.postgres = Some(url.clone());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let one = backchannel_relay::start(config).await.unwrap();
    let metrics = one.metrics_addr.unwrap();
    let mut back = false;
    for _ in 0..100 {
        if open_connections(metrics).await.unwrap_or(0) >= 1 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the link never went back to the first host");
    // And it works there.
    alice.send_text("ops", "on the first host again").unwrap();
    alice.sync(T).await.unwrap();
    drop(alice);
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_leaves_a_node_that_cannot_reach_the_database_for_one_that_can() {
    use backchannel_core::mls::Suite;
    let Some(url) = database().await else { return };
    // Node 1 reaches the database under a role of its own, which we can lock out.
    let mut suffix = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    let role = format!(
        "node_{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let admin_url = url.clone();
    let mut admin = tokio::task::spawn_blocking(move || {
        postgres::Client::connect(&admin_url, postgres::NoTls).unwrap()
    })
    .await
    .unwrap();
    admin = tokio::task::spawn_blocking({
        let role = role.clone();
        move || {
            admin
                .batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
                .unwrap();
            admin
        }
    })
    .await
    .unwrap();
    let node_one_url = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(node_one_url, url);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("relay");
    let one = node(&dir, &node_one_url).await;
    let two = node(&dir, &url).await;
    let both = RelayAddr::with_hosts(
        one.address.fingerprint,
        &[
            ("127.0.0.1", one.local_addr.port()),
            ("127.0.0.1", two.local_addr.port()),
        ],
    )
    .unwrap();
    let (mut alice, mut bob) = (
        support::client(tmp.path(), "alice"),
        support::client(tmp.path(), "bob"),
    );
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &both)
        .await
        .unwrap();
    let kp = bob.key_package("bob", Suite::Classic, &both).await.unwrap();
    let welcome = alice.add_members("ops", &[&kp]).unwrap();
    bob.join(None, &welcome).unwrap();
    alice.flush(T).await.unwrap();
    bob.sync(T).await.unwrap();
    // Node 1 loses the database (it still accepts clients).
    let admin = tokio::task::spawn_blocking(move || {
        admin
            .batch_execute(&format!(
                "ALTER ROLE {role} NOLOGIN;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';"
            ))
            .unwrap();
        admin
    })
    .await
    .unwrap();
    alice
        .send_text("ops", "through the node that can store")
        .unwrap();
    alice
        .flush(Duration::from_secs(60))
        .await
        .expect("the sender's link never left the node without its database");
    // Bob's link, refused its subscriptions on node 1, reads through node 2.
    let mut read = Vec::new();
    for _ in 0..30 {
        let _ = bob.sync(Duration::from_secs(2)).await;
        read.extend(support::texts(&mut bob));
        if !read.is_empty() {
            break;
        }
    }
    assert_eq!(read, ["through the node that can store"]);
    // (The driver's runtime must not be dropped inside ours.)
    tokio::task::spawn_blocking(move || drop(admin))
        .await
        .unwrap();
    one.shutdown().await;
    two.shutdown().await;
}
