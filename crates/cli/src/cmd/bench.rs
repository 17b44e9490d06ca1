//! `backchannel bench`: load generators and measurements.
//!
//! - `bench relay` drives a running relay with pipelined senders and subscribed
//!   readers, and reports sustained acknowledged messages per second and latency
//!   percentiles (send → durable acknowledgement, send → delivery to the reader).
//! - `bench disk` measures what the disk itself allows: fsyncs per second, and a
//!   raw rusqlite batched insert of relay-sized records — the ceiling a relay's
//!   group commit is compared with.
//! - `bench idle` measures a relay's resident memory per idle connection.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backchannel_client::relay::RelayClient;
use backchannel_proto::addr::RelayAddr;
use backchannel_proto::envelope::{BLOB_LEN, CHUNK_LEN};
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngCore as _;
use serde_json::json;
use tokio::sync::Mutex;

use crate::cli::{BenchCommand, Global, RelayArgs};
use crate::error::Failure;

pub(crate) async fn run(g: &Global, cmd: BenchCommand) -> Result<(), Failure> {
    match cmd {
        BenchCommand::Relay(args) => relay(g, args).await,
        BenchCommand::Channel(args) => super::bench_channel::run(g, args).await,
        BenchCommand::Disk { dir, seconds } => {
            let report = disk(&dir, Duration::from_secs(seconds))?;
            print_disk(g, &report);
            Ok(())
        }
        BenchCommand::Idle {
            relay,
            pid,
            connections,
        } => idle(g, &relay, pid, connections).await,
        BenchCommand::Daemon { socket, calls } => daemon(g, &socket, calls).await,
    }
}

/// Round trips of `channels` to a daemon, one at a time on one connection.
async fn daemon(g: &Global, socket: &std::path::Path, calls: usize) -> Result<(), Failure> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let failed =
        |e: std::io::Error| Failure::new(format!("the daemon at {}: {e}", socket.display()));
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(failed)?;
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut took = Vec::with_capacity(calls);
    for id in 0..calls {
        let request = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"channels\"}}\n");
        let started = Instant::now();
        write.write_all(request.as_bytes()).await.map_err(failed)?;
        let Some(line) = lines.next_line().await.map_err(failed)? else {
            return Err(Failure::new("the daemon closed the connection"));
        };
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        if !line.contains("\"result\"") {
            return Err(Failure::new(format!("the daemon answered: {line}")));
        }
    }
    took.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&took, 50.0), percentile(&took, 99.0));
    crate::session::print(
        g,
        format!("{calls} calls of `channels`: round trip p50 {p50:.3} ms, p99 {p99:.3} ms"),
        json!({"calls": calls, "p50_ms": p50, "p99_ms": p99}),
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank).or(sorted.last()).copied().unwrap_or(0.0)
}

struct Latencies {
    stored: Vec<f64>,
    delivered: Vec<f64>,
}

async fn relay(g: &Global, args: RelayArgs) -> Result<(), Failure> {
    let address: RelayAddr = args
        .relay
        .parse()
        .map_err(|e| Failure::new(format!("bad relay address: {e}")))?;
    let blobs_per_message = args.payload_size.div_ceil(CHUNK_LEN).max(1);
    let connections = args.connections.max(1);
    let per_connection = args.messages.div_ceil(connections);
    let total_blobs = (per_connection * connections * blobs_per_message) as u64;
    let timeout = Duration::from_secs(30);

    let bar = if g.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_blobs)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} blobs delivered  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let latencies = Arc::new(Mutex::new(Latencies {
        stored: Vec::with_capacity(total_blobs as usize),
        delivered: Vec::with_capacity(total_blobs as usize),
    }));
    let stored_count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let hosts = address.hosts().count();
    for i in 0..connections {
        let owner = SigningKey::generate(&mut rand::rngs::OsRng);
        // A relay of several nodes: senders take turns over the nodes, and each
        // reader follows on the node after its sender's, so every message
        // crosses nodes.
        let (send_at, read_at) = if hosts > 1 {
            (address.at_host(i % hosts), address.at_host((i + 1) % hosts))
        } else {
            (None, None)
        };
        let mut reader =
            RelayClient::connect(read_at.as_ref().unwrap_or(&address), timeout).await?;
        let sender =
            Arc::new(RelayClient::connect(send_at.as_ref().unwrap_or(&address), timeout).await?);
        let (send_id, read_id) = reader.create_mailbox(&owner).await?;
        let mut deliveries = reader
            .deliveries()
            .ok_or_else(|| Failure::new("no delivery channel"))?;
        reader.subscribe(read_id, &owner).await?;
        let expected = (per_connection * blobs_per_message) as u64;
        // Reader: measure delivery latency, acknowledge.
        let (lat, bar2) = (latencies.clone(), bar.clone());
        let reader = Arc::new(reader);
        let reader_task = tokio::spawn(async move {
            let mut got = 0u64;
            while got < expected {
                let Ok(Some(d)) = tokio::time::timeout(timeout, deliveries.recv()).await else {
                    break;
                };
                let stamp = d.blob.first_chunk::<8>().copied().unwrap_or([0; 8]);
                let sent_ns = u64::from_be_bytes(stamp);
                let now_ns = start.elapsed().as_nanos() as u64;
                lat.lock()
                    .await
                    .delivered
                    .push(now_ns.saturating_sub(sent_ns) as f64 / 1e6);
                // Acknowledge without waiting: the relay's window paces deliveries.
                let r = reader.clone();
                tokio::spawn(async move { r.ack(read_id, d.message_id).await });
                got += 1;
                bar2.inc(1);
            }
            got
        });
        // Sender: keep `in_flight` sends outstanding.
        let (lat, stored) = (latencies.clone(), stored_count.clone());
        let in_flight = args.in_flight.max(1);
        // Each connection offers its share of the rate, in blobs per second.
        let interval = (args.rate > 0).then(|| {
            Duration::from_secs_f64(
                connections as f64 / (args.rate as f64 * blobs_per_message as f64),
            )
        });
        let sender_task = tokio::spawn(async move {
            let semaphore = Arc::new(tokio::sync::Semaphore::new(in_flight));
            let mut handles = Vec::new();
            let mut ticker = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            for _ in 0..expected {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let Ok(permit) = semaphore.clone().acquire_owned().await else {
                    break;
                };
                let (sender, lat, stored) = (sender.clone(), lat.clone(), stored.clone());
                handles.push(tokio::spawn(async move {
                    let mut blob = Box::new([0u8; BLOB_LEN]);
                    rand::rngs::OsRng.fill_bytes(&mut blob[..]);
                    let sent = start.elapsed();
                    if let Some(stamp) = blob.first_chunk_mut::<8>() {
                        *stamp = (sent.as_nanos() as u64).to_be_bytes();
                    }
                    let ok = sender.send(send_id, 0, blob).await.is_ok();
                    if ok {
                        stored.fetch_add(1, Ordering::Relaxed);
                        lat.lock()
                            .await
                            .stored
                            .push((start.elapsed() - sent).as_secs_f64() * 1e3);
                    }
                    drop(permit);
                    ok
                }));
            }
            let mut ok = 0u64;
            for h in handles {
                if h.await.unwrap_or(false) {
                    ok += 1;
                }
            }
            (ok, start.elapsed())
        });
        tasks.push((sender_task, reader_task));
    }
    let mut stored_total = 0;
    let mut delivered_total = 0;
    let mut send_span = Duration::ZERO;
    for (s, r) in tasks {
        let (ok, span) = s.await.map_err(|e| Failure::new(e.to_string()))?;
        stored_total += ok;
        send_span = send_span.max(span);
        delivered_total += r.await.map_err(|e| Failure::new(e.to_string()))?;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let mut lat = latencies.lock().await;
    lat.stored.sort_by(f64::total_cmp);
    lat.delivered.sort_by(f64::total_cmp);
    let stored_rate = stored_total as f64 / send_span.as_secs_f64().max(1e-9);
    let messages_rate = stored_rate / blobs_per_message as f64;
    let baseline = match &args.baseline_dir {
        Some(dir) => Some(disk(dir, Duration::from_secs(3))?),
        None => None,
    };
    let report = json!({
        "relay": address.authority(),
        "connections": connections,
        "payload_size": args.payload_size,
        "blobs_per_message": blobs_per_message,
        "in_flight_per_connection": args.in_flight,
        "offered_rate": args.rate,
        "blobs_stored": stored_total,
        "blobs_delivered": delivered_total,
        "seconds": elapsed.as_secs_f64(),
        "stored_blobs_per_second": stored_rate,
        "stored_messages_per_second": messages_rate,
        "store_latency_ms": {
            "p50": percentile(&lat.stored, 50.0),
            "p90": percentile(&lat.stored, 90.0),
            "p99": percentile(&lat.stored, 99.0),
            "max": lat.stored.last().copied().unwrap_or(0.0),
        },
        "delivery_latency_ms": {
            "p50": percentile(&lat.delivered, 50.0),
            "p90": percentile(&lat.delivered, 90.0),
            "p99": percentile(&lat.delivered, 99.0),
            "max": lat.delivered.last().copied().unwrap_or(0.0),
        },
        "baseline": baseline.as_ref().map(|b| json!({
            "fsyncs_per_second": b.fsyncs_per_second,
            "sqlite_batched_inserts_per_second": b.batched_per_second,
            "sqlite_single_inserts_per_second": b.single_per_second,
            "relay_to_batched_insert_ratio": stored_rate / b.batched_per_second.max(1e-9),
        })),
    });
    if g.json {
        println!("{report}");
    } else {
        println!(
            "relay {}: {connections} connections, {} blobs ({} per message of {} bytes) in {:.1} s",
            address.authority(),
            stored_total,
            blobs_per_message,
            args.payload_size,
            elapsed.as_secs_f64()
        );
        println!(
            "  sustained: {stored_rate:.0} acknowledged (durable) blobs/s = {messages_rate:.0} messages/s"
        );
        println!(
            "  send -> durable ack:  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms",
            percentile(&lat.stored, 50.0),
            percentile(&lat.stored, 90.0),
            percentile(&lat.stored, 99.0)
        );
        println!(
            "  send -> delivered:    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms",
            percentile(&lat.delivered, 50.0),
            percentile(&lat.delivered, 90.0),
            percentile(&lat.delivered, 99.0)
        );
        if let Some(b) = &baseline {
            println!(
                "  raw SQLite batched inserts on {}: {:.0}/s; relay / raw = {:.2}",
                b.dir.display(),
                b.batched_per_second,
                stored_rate / b.batched_per_second.max(1e-9)
            );
        }
    }
    if delivered_total < stored_total {
        return Err(Failure::new(format!(
            "{} stored blobs were not delivered within the timeout",
            stored_total - delivered_total
        )));
    }
    Ok(())
}

struct DiskReport {
    dir: PathBuf,
    fsyncs_per_second: f64,
    batched_per_second: f64,
    single_per_second: f64,
}

fn disk(dir: &Path, each: Duration) -> Result<DiskReport, Failure> {
    std::fs::create_dir_all(dir)?;
    let scratch = tempfile::tempdir_in(dir)?;
    // fsync: 4 KiB written and made durable, again and again.
    let mut file = std::fs::File::create(scratch.path().join("fsync"))?;
    let page = [0x5au8; 4096];
    let start = Instant::now();
    let mut fsyncs = 0u64;
    while start.elapsed() < each {
        file.write_all(&page)?;
        file.sync_data()?;
        fsyncs += 1;
    }
    let fsyncs_per_second = fsyncs as f64 / start.elapsed().as_secs_f64();
    // SQLite as the relay configures it, inserting relay-sized blobs.
    let insert_rate = |batch: usize, name: &str| -> Result<f64, Failure> {
        let db = rusqlite::Connection::open(scratch.path().join(name))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE m (id INTEGER PRIMARY KEY, mailbox INTEGER, blob BLOB);",
        )?;
        let mut blob = vec![0u8; BLOB_LEN];
        let start = Instant::now();
        let mut rows = 0u64;
        while start.elapsed() < each {
            let tx = db.unchecked_transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("INSERT INTO m (mailbox, blob) VALUES (?1, ?2)")?;
                for _ in 0..batch {
                    if let Some(head) = blob.first_chunk_mut::<32>() {
                        rand::rngs::OsRng.fill_bytes(head);
                    }
                    stmt.execute(rusqlite::params![rows as i64 % 64, &blob])?;
                    rows += 1;
                }
            }
            tx.commit()?;
        }
        Ok(rows as f64 / start.elapsed().as_secs_f64())
    };
    let batched_per_second = insert_rate(256, "batched.db")?;
    let single_per_second = insert_rate(1, "single.db")?;
    Ok(DiskReport {
        dir: dir.to_owned(),
        fsyncs_per_second,
        batched_per_second,
        single_per_second,
    })
}

fn print_disk(g: &Global, r: &DiskReport) {
    if g.json {
        println!(
            "{}",
            json!({
                "dir": r.dir,
                "fsyncs_per_second": r.fsyncs_per_second,
                "sqlite_batched_inserts_per_second": r.batched_per_second,
                "sqlite_single_inserts_per_second": r.single_per_second,
            })
        );
    } else {
        println!("disk under {}:", r.dir.display());
        println!(
            "  fsync (4 KiB write + fdatasync): {:.0}/s",
            r.fsyncs_per_second
        );
        println!(
            "  SQLite WAL synchronous=FULL, {}-byte rows: {:.0}/s in batches of 256, {:.0}/s one per commit",
            BLOB_LEN, r.batched_per_second, r.single_per_second
        );
    }
}

fn rss_kib(pid: u32) -> Result<u64, Failure> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Failure::new(format!("cannot read the relay's memory (pid {pid}): {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Failure::new("no VmRSS in /proc status"))
}

async fn idle(g: &Global, relay: &str, pid: u32, connections: usize) -> Result<(), Failure> {
    let address: RelayAddr = relay
        .parse()
        .map_err(|e| Failure::new(format!("bad relay address: {e}")))?;
    // This process holds every connection open too.
    if let Err(limit) = backchannel_relay::limits::open_files_for(connections) {
        return Err(Failure::new(format!(
            "{connections} connections need as many open files; the limit is {limit} \
             (raise it with ulimit -n)"
        )));
    }
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        held.push(RelayClient::connect(&address, Duration::from_secs(30)).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    let per_connection = after.saturating_sub(before) as f64 / connections.max(1) as f64;
    if g.json {
        println!(
            "{}",
            json!({"connections": connections, "rss_before_kib": before, "rss_after_kib": after,
                   "kib_per_connection": per_connection, "mib_per_1000": per_connection * 1000.0 / 1024.0})
        );
    } else {
        println!(
            "{connections} idle connections: relay RSS {before} KiB -> {after} KiB, \
             {per_connection:.1} KiB each, {:.1} MiB per 1,000",
            per_connection * 1000.0 / 1024.0
        );
    }
    drop(held);
    Ok(())
}
