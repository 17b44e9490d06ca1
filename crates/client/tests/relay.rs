//! The relay, running for real on a loopback socket over TLS, driven by the real
//! client connection: protocol behaviour, defences, limits, storage failure.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::time::Duration;

use backchannel_client::relay::{RelayClient, RelayClientError};
use backchannel_proto::addr::{MailboxId, RelayAddr};
use backchannel_proto::envelope::BLOB_LEN;
use backchannel_proto::frame::{
    Blob, ClientFrame, ErrorCode, FRAME_LEN, KIND_SUBSCRIBE, Request, auth_message,
};
use backchannel_relay::{RelayConfig, RunningRelay};
use ed25519_dalek::{Signer as _, SigningKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const T: Duration = Duration::from_secs(10);

fn key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

fn blob(n: u32) -> Blob {
    let mut b = Box::new([0u8; BLOB_LEN]);
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[BLOB_LEN - 1] = 0xee;
    b
}

fn number(b: &Blob) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

async fn relay_with(dir: &std::path::Path, tweak: impl FnOnce(&mut RelayConfig)) -> RunningRelay {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_owned());
    tweak(&mut config);
    backchannel_relay::start(config).await.unwrap()
}

async fn connect(relay: &RunningRelay) -> RelayClient {
    RelayClient::connect(&relay.address, T).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn store_subscribe_deliver_in_order_and_delete_on_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let sender = connect(&relay).await;
    let mut reader = connect(&relay).await;
    let owner = key();
    let (send_id, read_id) = reader.create_mailbox(&owner).await.unwrap();
    assert_ne!(send_id, read_id);
    for n in 0..5 {
        sender.send(send_id, 0, blob(n)).await.unwrap();
    }
    let mut deliveries = reader.deliveries().unwrap();
    reader.subscribe(read_id, &owner).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let d = tokio::time::timeout(T, deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.read_id, read_id);
        seen.push((number(&d.blob), d.message_id));
    }
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    // Pushed as they arrive, after the subscription.
    sender.send(send_id, 0, blob(5)).await.unwrap();
    let d = tokio::time::timeout(T, deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(number(&d.blob), 5);
    // Acknowledge the first three; a new subscription gets only the rest.
    for (_, id) in &seen[..3] {
        reader.ack(read_id, *id).await.unwrap();
    }
    drop(deliveries);
    drop(reader);
    let mut again = connect(&relay).await;
    let mut deliveries = again.deliveries().unwrap();
    again.subscribe(read_id, &owner).await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(T, deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        rest.push(number(&d.blob));
    }
    assert_eq!(rest, vec![3, 4, 5]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.recv())
            .await
            .is_err()
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn authorisation_is_bound_to_the_key_and_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let a = connect(&relay).await;
    let owner = key();
    let (send_id, read_id) = a.create_mailbox(&owner).await.unwrap();

    // A wrong key.
    let err = a.subscribe(read_id, &key()).await.unwrap_err();
    assert!(
        matches!(err, RelayClientError::Refused(ErrorCode::Unauthorized)),
        "{err}"
    );
    // The send identifier does not read.
    let err = a.subscribe(send_id, &owner).await.unwrap_err();
    assert!(
        matches!(err, RelayClientError::Refused(ErrorCode::UnknownMailbox)),
        "{err}"
    );
    // An unknown mailbox.
    let err = a.send(MailboxId([7; 16]), 0, blob(0)).await.unwrap_err();
    assert!(
        matches!(err, RelayClientError::Refused(ErrorCode::UnknownMailbox)),
        "{err}"
    );
    // Acknowledging without a subscription.
    let err = a.ack(read_id, 1).await.unwrap_err();
    assert!(
        matches!(err, RelayClientError::Refused(ErrorCode::Unauthorized)),
        "{err}"
    );

    // A signature captured from connection A, replayed on connection B.
    let request_id = 77;
    let signature = owner
        .sign(&auth_message(
            a.nonce(),
            KIND_SUBSCRIBE,
            request_id,
            &read_id,
        ))
        .to_bytes();
    let b = connect(&relay).await;
    let replayed = b
        .request(Request::Subscribe { read_id, signature })
        .await
        .unwrap_err();
    assert!(
        matches!(replayed, RelayClientError::Refused(ErrorCode::Unauthorized)),
        "{replayed}"
    );
    // The owner, signing for B's nonce, is fine; nothing above changed anything.
    b.subscribe(read_id, &owner).await.unwrap();
    a.ping().await.unwrap();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_frame_closes_only_its_own_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let healthy = connect(&relay).await;
    let owner = key();
    let (send_id, _) = healthy.create_mailbox(&owner).await.unwrap();

    let good = ClientFrame {
        request_id: 1,
        request: Request::Ping,
    }
    .encode();
    let mut bad_version = good.clone();
    bad_version[0] = 9;
    let mut bad_padding = good.clone();
    bad_padding[FRAME_LEN - 1] = 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..100].to_vec()),
        ("oversized", vec![1u8; FRAME_LEN + 1]),
        ("far too large", vec![1u8; 1 << 20]),
        ("unknown version", bad_version),
        ("non-zero padding", bad_padding),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        let victim = connect(&relay).await;
        victim.send_raw(bytes).await.unwrap();
        // The connection is closed: further requests fail.
        let after = victim.ping().await;
        assert!(after.is_err(), "{what}: the connection survived");
        // Everyone else is unaffected.
        healthy
            .ping()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        healthy.send(send_id, 0, blob(1)).await.unwrap();
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_and_rate_limits_refuse_politely() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.quota_messages = 3;
        c.limits.requests_per_second = 20;
    })
    .await;
    let client = connect(&relay).await;
    let (send_id, _) = client.create_mailbox(&key()).await.unwrap();
    for n in 0..3 {
        client.send(send_id, 0, blob(n)).await.unwrap();
    }
    let err = client.send(send_id, 0, blob(3)).await.unwrap_err();
    assert!(
        matches!(err, RelayClientError::Refused(ErrorCode::QuotaExceeded)),
        "{err}"
    );

    let mut limited = 0;
    for _ in 0..100 {
        match client.ping().await {
            Ok(()) => {}
            Err(RelayClientError::Refused(ErrorCode::RateLimited)) => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        limited > 0,
        "a burst of 100 requests at 20/s was never limited"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.ping().await.unwrap();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_acknowledgements_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.max_db_bytes = Some(256 * 1024);
        c.quota_messages = u64::MAX;
        c.quota_bytes = u64::MAX;
    })
    .await;
    let client = connect(&relay).await;
    let owner = key();
    let (send_id, read_id) = client.create_mailbox(&owner).await.unwrap();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for n in 0..200 {
        match client.send(send_id, 0, blob(n)).await {
            Ok(()) => acknowledged.push(n),
            Err(RelayClientError::Refused(ErrorCode::Unavailable)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "the disk never filled");
    assert!(!acknowledged.is_empty());
    let addr = relay.address.clone();
    relay.shutdown().await;

    // After a restart, everything acknowledged is there, and nothing else.
    let relay = relay_with(tmp.path(), |c| {
        c.listen = SocketAddr::from(([127, 0, 0, 1], addr.port))
    })
    .await;
    let mut reader = connect(&relay).await;
    let mut deliveries = reader.deliveries().unwrap();
    let backlog = reader.subscribe(read_id, &owner).await.unwrap();
    assert_eq!(backlog, acknowledged.len() as u64);
    let mut got = Vec::new();
    while (got.len() as u64) < backlog {
        let d = tokio::time::timeout(T, deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(number(&d.blob));
        reader.ack(read_id, d.message_id).await.unwrap();
    }
    assert_eq!(got, acknowledged);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.message_ttl = Duration::from_millis(300);
        c.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let mut client = connect(&relay).await;
    let owner = key();
    let (send_id, read_id) = client.create_mailbox(&owner).await.unwrap();
    client.send(send_id, 0, blob(1)).await.unwrap();
    let held = || {
        rusqlite::Connection::open(tmp.path().join(backchannel_relay::DATABASE_FILE))
            .unwrap()
            .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    // The sweeper deletes it once its time has passed: wait for that, however
    // slowly this machine runs.
    let deadline = std::time::Instant::now() + T;
    while held() > 0 {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut deliveries = client.deliveries().unwrap();
    // Nobody read or wrote the mailbox for a whole lifetime either: it goes with
    // its message (or just after), and nothing is delivered.
    // (A subscription would be a use: the table is watched instead.)
    let mailboxes = || {
        rusqlite::Connection::open(tmp.path().join(backchannel_relay::DATABASE_FILE))
            .unwrap()
            .query_row("SELECT count(*) FROM mailboxes", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let deadline = std::time::Instant::now() + T;
    while mailboxes() > 0 {
        assert!(std::time::Instant::now() < deadline, "the mailbox stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        client.subscribe(read_id, &owner).await,
        Err(RelayClientError::Refused(_))
    ));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.recv())
            .await
            .is_err()
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_mailbox_needs_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let client = connect(&relay).await;
    let owner = key();
    let (send_id, read_id) = client.create_mailbox(&owner).await.unwrap();
    assert!(client.delete_mailbox(read_id, &key()).await.is_err());
    client.send(send_id, 0, blob(1)).await.unwrap();
    client.delete_mailbox(read_id, &owner).await.unwrap();
    let err = client.send(send_id, 0, blob(2)).await.unwrap_err();
    assert!(matches!(
        err,
        RelayClientError::Refused(ErrorCode::UnknownMailbox)
    ));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let mut wrong: RelayAddr = relay.address.clone();
    wrong.fingerprint.0[0] ^= 1;
    let err = RelayClient::connect(&wrong, T)
        .await
        .err()
        .expect("connected to the wrong relay");
    assert!(matches!(err, RelayClientError::Tls(_)), "{err}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_answers_what_is_in_flight_then_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let client = std::sync::Arc::new(connect(&relay).await);
    let (send_id, _) = client.create_mailbox(&key()).await.unwrap();
    let sends: Vec<_> = (0..50)
        .map(|n| {
            let c = client.clone();
            tokio::spawn(async move { c.send(send_id, 0, blob(n)).await })
        })
        .collect();
    let address = relay.address.clone();
    relay.shutdown().await;
    for s in sends {
        match s.await.unwrap() {
            Ok(()) | Err(RelayClientError::Refused(ErrorCode::ShuttingDown)) => {}
            Err(RelayClientError::Closed) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        RelayClient::connect(&address, Duration::from_secs(2))
            .await
            .is_err()
    );
}

/// Reads TLS records from a stream and returns the lengths of application-data
/// records.
async fn record_lengths(
    mut stream: tokio::net::tcp::OwnedReadHalf,
    mut forward: tokio::net::tcp::OwnedWriteHalf,
) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut header = [0u8; 5];
    loop {
        if stream.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).await.is_err() {
            break;
        }
        if header[0] == 0x17 {
            lengths.push(len);
        }
        if forward.write_all(&header).await.is_err() || forward.write_all(&body).await.is_err() {
            break;
        }
    }
    lengths
}

#[tokio::test(flavor = "multi_thread")]
async fn every_frame_on_the_wire_has_one_size() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    // A proxy that measures every TLS record in both directions.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let upstream = relay.local_addr;
    let measure = tokio::spawn(async move {
        let (client, _) = proxy.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let up = tokio::spawn(record_lengths(cr, sw));
        let down = tokio::spawn(record_lengths(sr, cw));
        (up.await.unwrap(), down.await.unwrap())
    });
    let mut via_proxy = relay.address.clone();
    via_proxy.port = proxy_addr.port();
    let mut client = RelayClient::connect(&via_proxy, T).await.unwrap();
    let owner = key();
    let (send_id, read_id) = client.create_mailbox(&owner).await.unwrap();
    client.ping().await.unwrap();
    client.send(send_id, 0, blob(1)).await.unwrap();
    let _ = client.send(MailboxId([1; 16]), 0, blob(2)).await; // an error answer
    let mut deliveries = client.deliveries().unwrap();
    client.subscribe(read_id, &owner).await.unwrap();
    let d = tokio::time::timeout(T, deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    client.ack(read_id, d.message_id).await.unwrap();
    drop(deliveries);
    drop(client);
    let (up, down) = tokio::time::timeout(T, measure).await.unwrap().unwrap();
    // Each direction: the end of the TLS handshake (encrypted, so also
    // application-data records), the WebSocket upgrade (one HTTP request, one
    // response), then frames, then the WebSocket close. Records carrying frames are all one size per
    // direction (client frames carry the 4-byte WebSocket mask on top), and there
    // is exactly one per frame: none smaller slipped through.
    let (frames_up, other_up): (Vec<usize>, Vec<usize>) =
        up.into_iter().partition(|&l| l > FRAME_LEN);
    let (frames_down, other_down): (Vec<usize>, Vec<usize>) =
        down.into_iter().partition(|&l| l > FRAME_LEN);
    // Up: create, ping, send, failed send, subscribe, ack.
    assert_eq!(frames_up.len(), 6, "{frames_up:?} / {other_up:?}");
    // Down: hello, six answers, one delivery.
    assert_eq!(frames_down.len(), 8, "{frames_down:?} / {other_down:?}");
    assert!(
        other_up.len() <= 3 && other_down.len() <= 3,
        "{other_up:?} {other_down:?}"
    );
    assert!(
        frames_up.iter().all(|&l| l == frames_up[0]),
        "client records vary: {frames_up:?}"
    );
    assert!(
        frames_down.iter().all(|&l| l == frames_down[0]),
        "relay records vary: {frames_down:?}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_does_not_starve_a_real_client() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.limits.max_connections_per_ip = 40;
        c.limits.max_connections = 400;
        c.handshake_timeout = Duration::from_secs(2);
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let target = relay.local_addr;
    // The attacker, from another loopback address: hundreds of connections that
    // never start TLS, and some that complete it and then sit idle.
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(attacker, 0)).unwrap();
        if let Ok(stream) = socket.connect(target).await {
            held.push(stream);
        }
    }
    // The real client, from its own address, is served promptly.
    let started = std::time::Instant::now();
    let client = RelayClient::connect(&relay.address, Duration::from_secs(5))
        .await
        .unwrap();
    let owner = key();
    let (send_id, read_id) = client.create_mailbox(&owner).await.unwrap();
    client.send(send_id, 0, blob(1)).await.unwrap();
    let mut client = client;
    let mut deliveries = client.deliveries().unwrap();
    client.subscribe(read_id, &owner).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(number(&d.blob), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The flood was held to its address's share.
    let metrics = http_get(relay.metrics_addr.unwrap(), "/metrics").await;
    let refused: u64 = metric(&metrics, "backchannel_relay_connections_refused_total");
    assert!(refused >= 250, "only {refused} refused");
    drop(held);
    relay.shutdown().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_carry_no_identifiers() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let client = connect(&relay).await;
    let (send_id, read_id) = client.create_mailbox(&key()).await.unwrap();
    client.send(send_id, 0, blob(1)).await.unwrap();
    let health = http_get(relay.metrics_addr.unwrap(), "/health").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let metrics = http_get(relay.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        metric(&metrics, "backchannel_relay_messages_stored_total"),
        1
    );
    assert_eq!(
        metric(&metrics, "backchannel_relay_mailboxes_created_total"),
        1
    );
    assert!(metrics.contains("backchannel_relay_commit_seconds_bucket"));
    for id in [send_id, read_id] {
        for form in forms_of(&id.0) {
            assert!(!metrics.contains(&form), "an identifier in the metrics");
        }
    }
    assert!(!metrics.contains("127.0.0.1"));
    relay.shutdown().await;
}

/// Ways an identifier could be written out.
fn forms_of(bytes: &[u8]) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.clone(),
        hex.to_uppercase(),
        backchannel_proto::addr::base32_encode(bytes),
        format!("{bytes:?}"),
    ]
}

/// Sets or clears the immutable attribute (refused writes even for root and for
/// files already open).
fn immutable(path: &std::path::Path, on: bool) {
    let status = std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .status()
        .expect("chattr (e2fsprogs) is needed for this test");
    assert!(status.success(), "chattr failed on {}", path.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_database_stops_acknowledgements_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let client = connect(&relay).await;
    let owner = key();
    let (send_id, read_id) = client.create_mailbox(&owner).await.unwrap();
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        client.send(send_id, 0, blob(n)).await.unwrap();
        acknowledged.push(n);
    }
    let db = tmp.path().join(backchannel_relay::DATABASE_FILE);
    let wal = tmp
        .path()
        .join(format!("{}-wal", backchannel_relay::DATABASE_FILE));
    immutable(&db, true);
    immutable(&wal, true);
    let mut refused = 0;
    for n in 20..40 {
        match client.send(send_id, 0, blob(n)).await {
            Ok(()) => acknowledged.push(n),
            Err(RelayClientError::Refused(ErrorCode::Unavailable)) => refused += 1,
            Err(e) => {
                immutable(&db, false);
                immutable(&wal, false);
                panic!("{e}");
            }
        }
    }
    immutable(&db, false);
    immutable(&wal, false);
    assert_eq!(
        refused, 20,
        "a message was acknowledged although the disk refused it"
    );
    let addr = relay.address.clone();
    relay.shutdown().await;

    let relay = relay_with(tmp.path(), |c| {
        c.listen = SocketAddr::from(([127, 0, 0, 1], addr.port))
    })
    .await;
    let mut reader = connect(&relay).await;
    let mut deliveries = reader.deliveries().unwrap();
    let backlog = reader.subscribe(read_id, &owner).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..backlog {
        let d = tokio::time::timeout(T, deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(number(&d.blob));
    }
    assert_eq!(got, acknowledged);
    relay.shutdown().await;
}

/// A client that only receives keeps its connection: its link pings before the
/// relay's idle timeout, so a long `read --follow` is never dropped and reconnected.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_reader_keeps_its_connection_with_keepalive_pings() {
    use backchannel_client::{Client, ClientConfig, LinkTiming};
    use backchannel_core::mls::Suite;
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| c.idle_timeout = Duration::from_millis(1500)).await;
    let store = backchannel_store::Store::create(&tmp.path().join("alice"), b"pw").unwrap();
    let config = ClientConfig {
        timing: LinkTiming {
            keepalive: Duration::from_millis(200),
            ..LinkTiming::default()
        },
        ..ClientConfig::default()
    };
    let mut alice = Client::open(store, config).unwrap();
    alice
        .create_channel("ops", "alice", Suite::Classic.into(), &relay.address)
        .await
        .unwrap();
    alice.sync(T).await.unwrap();
    // Three idle timeouts pass with nothing to send or receive.
    let end = std::time::Instant::now() + Duration::from_millis(4500);
    while std::time::Instant::now() < end {
        alice.step(Duration::from_millis(100)).await.unwrap();
    }
    assert!(
        alice.relay_errors.is_empty(),
        "the connection was dropped: {:?}",
        alice.relay_errors
    );
    relay.shutdown().await;
}

/// The relay's data is its user's alone: the directory 0700, the database and its
/// log files 0600 (another local user cannot copy the stored ciphertext).
#[tokio::test(flavor = "multi_thread")]
async fn the_relays_data_is_readable_by_its_user_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let relay = relay_with(&data, |_| {}).await;
    let client = connect(&relay).await;
    let owner = key();
    let (send_id, _) = client.create_mailbox(&owner).await.unwrap();
    client.send(send_id, 0, blob(1)).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 3, "database, log and key files");
    relay.shutdown().await;
}

/// A relay that announces a window of 4 and then keeps to its real one (64).
struct Overpromising;

impl backchannel_relay::adversary::Adversary for Overpromising {
    fn announced_window(&self) -> Option<u16> {
        Some(4)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_delivers_past_its_announced_window_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.adversary = Some(backchannel_relay::adversary::AdversaryHandle(
            std::sync::Arc::new(Overpromising),
        ));
    })
    .await;
    let sender = connect(&relay).await;
    let mut reader = connect(&relay).await;
    assert_eq!(reader.window(), 4);
    let owner = key();
    let (send_id, read_id) = reader.create_mailbox(&owner).await.unwrap();
    for n in 0..20 {
        sender.send(send_id, 0, blob(n)).await.unwrap();
    }
    let mut deliveries = reader.deliveries().unwrap();
    reader.subscribe(read_id, &owner).await.unwrap();
    // Four arrive; the fifth, past the window with none acknowledged, ends the
    // connection instead of piling up in the client.
    let mut got = 0;
    while let Ok(Some(_)) = tokio::time::timeout(T, deliveries.recv()).await {
        got += 1;
    }
    assert_eq!(got, 4);
    assert!(matches!(
        reader.ping().await,
        Err(RelayClientError::Closed | RelayClientError::Timeout)
    ));

    relay.shutdown().await;

    // An honest relay with the same small window keeps to it: a reader that
    // acknowledges as it goes is never dropped.
    let honest_dir = tmp.path().join("honest");
    let honest = relay_with(&honest_dir, |c| c.window = 4).await;
    let sender = connect(&honest).await;
    let mut reader = connect(&honest).await;
    assert_eq!(reader.window(), 4);
    let (send_id, read_id) = reader.create_mailbox(&owner).await.unwrap();
    for n in 0..20 {
        sender.send(send_id, 0, blob(n)).await.unwrap();
    }
    let mut deliveries = reader.deliveries().unwrap();
    reader.subscribe(read_id, &owner).await.unwrap();
    for _ in 0..20 {
        let d = tokio::time::timeout(T, deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        reader.ack(read_id, d.message_id).await.unwrap();
    }
    reader.ping().await.unwrap();
    drop((sender, reader));
    honest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_mailboxes_nobody_uses_for_the_message_lifetime_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |c| {
        c.message_ttl = Duration::from_secs(3);
        c.sweep_interval = Duration::from_millis(200);
    })
    .await;
    let client = connect(&relay).await;
    let (used_key, idle_key) = (key(), key());
    let (used_send, used_read) = client.create_mailbox(&used_key).await.unwrap();
    let (idle_send, _) = client.create_mailbox(&idle_key).await.unwrap();
    // The reader of one subscribes now and then; nobody touches the other. (The
    // relay's table is looked at directly: a send would use the mailbox.)
    let db = rusqlite::Connection::open(tmp.path().join(backchannel_relay::DATABASE_FILE)).unwrap();
    let exists = |send: MailboxId| -> bool {
        db.query_row(
            "SELECT count(*) FROM mailboxes WHERE send_id = ?1",
            [&send.0[..]],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    };
    let started = std::time::Instant::now();
    let gone = loop {
        let reader = connect(&relay).await;
        reader.subscribe(used_read, &used_key).await.unwrap();
        drop(reader);
        if !exists(idle_send) {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(gone, "the idle mailbox was never deleted");
    // The one in use is still there; the other refuses what is sent to it.
    assert!(exists(used_send));
    client.send(used_send, 0, blob(2)).await.unwrap();
    assert!(matches!(
        client.send(idle_send, 0, blob(1)).await,
        Err(RelayClientError::Refused(ErrorCode::UnknownMailbox))
    ));
    drop(client);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_reads_in_pages_for_every_reader_and_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), |_| {}).await;
    let sender = connect(&relay).await;
    let owner = key();
    let (send_id, read_id) = sender.create_mailbox(&owner).await.unwrap();
    for n in 0..150 {
        sender.send(send_id, 0, blob(n)).await.unwrap();
    }
    // Two readers, each all of it, in pages no larger than the relay's window.
    for _ in 0..2 {
        let mut reader = connect(&relay).await;
        let window = u64::from(reader.window());
        let (mut after, mut got) = (0, Vec::new());
        loop {
            let (page, last) = reader.fetch(read_id, &owner, after, 1000).await.unwrap();
            assert!(page.len() as u64 <= window);
            if last == after {
                assert!(page.is_empty());
                break;
            }
            got.extend(page.iter().map(|(_, b)| number(b)));
            after = last;
        }
        assert_eq!(got, (0..150).collect::<Vec<_>>());
    }
    // Without the owner's key, nothing.
    let mut stranger = connect(&relay).await;
    match stranger.fetch(read_id, &key(), 0, 10).await {
        Err(RelayClientError::Refused(ErrorCode::Unauthorized)) => {}
        other => panic!("{other:?}"),
    }
    // An unknown mailbox says so (an attachment that expired).
    match stranger.fetch(MailboxId([9; 16]), &owner, 0, 10).await {
        Err(RelayClientError::Refused(ErrorCode::UnknownMailbox)) => {}
        other => panic!("{other:?}"),
    }
}
