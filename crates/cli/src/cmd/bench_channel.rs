//! `backchannel bench channel`: builds a channel of N members on real relays, in
//! one process, and measures each add and each message.
//!
//! Every member is a real client over its own encrypted profile (in a temporary
//! directory), with its own connection to its relay, driven by its own task. The
//! administrator adds the members one at a time; for each add and each message the
//! bench reports the administrator's engine time, the blobs it handed to the relays,
//! the blobs the other members sent in answer (epoch announcements), and the wall
//! time until every member has applied it. Without `--relay` it starts one embedded
//! relay on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backchannel_client::{Client, ClientConfig};
use backchannel_core::Event;
use backchannel_core::mls::Suite;
use backchannel_proto::addr::RelayAddr;
use backchannel_relay::{RelayConfig, RunningRelay};
use backchannel_store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::watch;

use crate::cli::{ChannelArgs, Global};
use crate::error::Failure;

const CHANNEL: &str = "bench";

const PASSPHRASE: &[u8] = b"bench passphrase";

/// How long every member may take to apply one add or message.
const APPLY_LIMIT: Duration = Duration::from_secs(300);

const RELAY_LIMIT: Duration = Duration::from_secs(120);

/// What a member's task tells the bench.
#[derive(Default)]
struct Probe {
    epoch: AtomicU64,
    texts: AtomicU64,
    alerts: AtomicU64,
    transmitted: AtomicU64,
    failed: AtomicBool,
}

/// One measured operation.
#[derive(Clone, Copy, Debug)]
struct Sample {
    engine_ms: f64,
    blobs: u64,
    member_blobs: u64,
    wall_ms: f64,
}

pub(crate) async fn run(g: &Global, args: ChannelArgs) -> Result<(), Failure> {
    if args.members < 2 {
        return Err(Failure::new("a channel needs at least 2 members"));
    }
    let dir = tempfile::tempdir()?;
    let mut embedded: Option<RunningRelay> = None;
    let relays: Vec<RelayAddr> = if args.relays.is_empty() {
        let config = RelayConfig::new(([127, 0, 0, 1], 0).into(), dir.path().join("relay"));
        let relay = backchannel_relay::start(config)
            .await
            .map_err(|e| Failure::new(format!("cannot start an embedded relay: {e}")))?;
        let address = relay.address.clone();
        embedded = Some(relay);
        vec![address]
    } else {
        args.relays
            .iter()
            .map(|r| crate::session::relay_addr(r))
            .collect::<Result<_, _>>()?
    };
    let relay_of = |i: usize| relays.get(i % relays.len()).cloned();
    let suite: Suite = args.suite.into();
    let result = build_and_measure(g, &args, suite, dir.path(), relay_of).await;
    if let Some(relay) = embedded {
        relay.shutdown().await;
    }
    result
}

fn member(dir: &std::path::Path, i: usize) -> Result<Client, Failure> {
    let store = Store::create(&dir.join(format!("m{i}")), PASSPHRASE)?;
    let config = ClientConfig {
        // The bench measures adds and messages; a heartbeat from every member
        // every 10 minutes (N × (N-1) blobs, all applied by everyone) would land
        // in the middle of the measurements of a run that lasts longer than that.
        status_interval: HEARTBEATS_OFF,
        ..ClientConfig::default()
    };
    Ok(Client::open(store, config)?)
}

/// A status interval longer than any run.
const HEARTBEATS_OFF: Duration = Duration::from_secs(7 * 24 * 3600);

async fn build_and_measure(
    g: &Global,
    args: &ChannelArgs,
    suite: Suite,
    dir: &std::path::Path,
    relay_of: impl Fn(usize) -> Option<RelayAddr>,
) -> Result<(), Failure> {
    let no_relay = || Failure::new("no relay to use");
    let mut admin = member(dir, 0)?;
    admin
        .create_channel(
            CHANNEL,
            "m0",
            suite.into(),
            &relay_of(0).ok_or_else(no_relay)?,
        )
        .await?;
    // The members' clients do their engines' work inside their tasks; on a runtime
    // of their own they cannot starve the administrator's links (or an embedded
    // relay), which share the process.
    let members_rt = MembersRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    ));
    let (stop_tx, stop) = watch::channel(false);
    let mut probes: Vec<Arc<Probe>> = Vec::new();
    let mut tasks = Vec::new();
    let bar = if g.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.members as u64 - 1)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} members added  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut adds = Vec::new();
    let singles_from = args.members.saturating_sub(args.last.max(1)).max(1);
    let mut next = 1;
    while next < args.members {
        let count = if next >= singles_from {
            1
        } else {
            args.batch.max(1).min(singles_from - next)
        };
        let mut joiners = Vec::new();
        let mut kps = Vec::new();
        for i in next..next + count {
            let mut joiner = member(dir, i)?;
            let relay = relay_of(i).ok_or_else(no_relay)?;
            kps.push(joiner.key_package(&format!("m{i}"), suite, &relay).await?);
            joiners.push(joiner);
        }
        let kp_refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
        let before = member_blobs(&probes);
        let sent_before = admin.transmitted();
        let started = Instant::now();
        let welcome = admin.add_members(CHANNEL, &kp_refs)?;
        let engine_ms = ms(started.elapsed());
        let blobs = admin.transmitted() - sent_before;
        admin.flush(RELAY_LIMIT).await?;
        let epoch = admin.engine().channel(CHANNEL)?.epoch;
        for joiner in &mut joiners {
            joiner.join(Some(CHANNEL), &welcome)?;
        }
        wait_for(&probes, APPLY_LIMIT, |p| {
            p.epoch.load(Ordering::Relaxed) >= epoch
        })
        .await
        .map_err(|lagging| {
            Failure::new(format!(
                "{lagging} member(s) did not apply the add of m{next} within {APPLY_LIMIT:?}"
            ))
        })?;
        let wall_ms = ms(started.elapsed());
        let sample = Sample {
            engine_ms,
            blobs,
            member_blobs: member_blobs(&probes) - before,
            wall_ms,
        };
        if g.json {
            println!(
                "{}",
                json!({"add": next, "added": count, "members": next + count,
                       "engine_ms": round(sample.engine_ms), "blobs": sample.blobs,
                       "member_blobs": sample.member_blobs, "wall_ms": round(sample.wall_ms)})
            );
        }
        if count == 1 {
            adds.push(sample);
        }
        for joiner in joiners {
            let probe = Arc::new(Probe::default());
            probe.epoch.store(epoch, Ordering::Relaxed);
            probes.push(probe.clone());
            tasks.push(members_rt.spawn(drive(joiner, probe, stop.clone())));
        }
        bar.set_message(format!(
            "add: {engine_ms:.1} ms engine, {blobs} blobs, {wall_ms:.0} ms until all applied"
        ));
        bar.inc(count as u64);
        next += count;
    }
    bar.finish_and_clear();
    // Messages reach every member only once each member has caught up.
    let mut messages = Vec::new();
    for j in 0..args.messages {
        let before = member_blobs(&probes);
        let sent_before = admin.transmitted();
        let started = Instant::now();
        admin.send_text(CHANNEL, &format!("message {j}"))?;
        let engine_ms = ms(started.elapsed());
        let blobs = admin.transmitted() - sent_before;
        admin.flush(RELAY_LIMIT).await?;
        let want = j as u64 + 1;
        wait_for(&probes, APPLY_LIMIT, |p| {
            p.texts.load(Ordering::Relaxed) >= want
        })
        .await
        .map_err(|lagging| {
            Failure::new(format!(
                "{lagging} member(s) did not receive message #{j} within {APPLY_LIMIT:?}"
            ))
        })?;
        let sample = Sample {
            engine_ms,
            blobs,
            member_blobs: member_blobs(&probes) - before,
            wall_ms: ms(started.elapsed()),
        };
        if g.json {
            println!(
                "{}",
                json!({"message": j, "engine_ms": round(sample.engine_ms),
                       "blobs": sample.blobs, "member_blobs": sample.member_blobs,
                       "wall_ms": round(sample.wall_ms)})
            );
        }
        messages.push(sample);
    }
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    drop(members_rt);
    let alerts: u64 = probes
        .iter()
        .map(|p| p.alerts.load(Ordering::Relaxed))
        .sum();
    let failed = probes
        .iter()
        .filter(|p| p.failed.load(Ordering::Relaxed))
        .count();
    let received = probes
        .iter()
        .filter(|p| p.texts.load(Ordering::Relaxed) >= args.messages as u64)
        .count();
    let last = args.last.max(1);
    let add = medians(&adds, last);
    let msg = medians(&messages, last);
    let summary = json!({
        "members": args.members,
        "suite": suite.name(),
        "add_engine_ms": round(add.engine_ms),
        "add_blobs": add.blobs,
        "add_member_blobs": add.member_blobs,
        "add_wall_ms": round(add.wall_ms),
        "message_engine_ms": round(msg.engine_ms),
        "message_blobs": msg.blobs,
        "message_wall_ms": round(msg.wall_ms),
        "received_by": received,
        "alerts": alerts,
        "failed_members": failed,
        "medians_over": last,
    });
    if g.json {
        println!("{summary}");
    } else {
        println!(
            "Channel of {} members ({}), medians of the last {last}:",
            args.members,
            suite.name()
        );
        println!(
            "  add one member:  {:.1} ms engine, {} blobs from the administrator, {} from \
             the others, {:.0} ms until every member applied it",
            add.engine_ms, add.blobs, add.member_blobs, add.wall_ms
        );
        println!(
            "  one message:     {:.1} ms engine, {} blobs, {:.0} ms until every member had it",
            msg.engine_ms, msg.blobs, msg.wall_ms
        );
        println!(
            "  {received} of {} members received every message; {alerts} alert(s)",
            args.members - 1
        );
    }
    if alerts > 0 || failed > 0 {
        return Err(Failure::new(format!(
            "{alerts} alert(s) and {failed} failed member(s) during the bench"
        )));
    }
    Ok(())
}

/// The members' runtime; shut down without blocking (it is dropped inside the
/// bench's own runtime, also when the bench fails half-way).
struct MembersRuntime(Option<tokio::runtime::Runtime>);

impl MembersRuntime {
    fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match &self.0 {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        }
    }
}

impl Drop for MembersRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A member's task: keeps its client connected and reports what it applied.
async fn drive(mut client: Client, probe: Arc<Probe>, mut stop: watch::Receiver<bool>) {
    client.subscribe_all();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            stepped = client.step(Duration::from_millis(200)) => {
                if stepped.is_err() {
                    probe.failed.store(true, Ordering::Relaxed);
                }
                for event in client.drain_events() {
                    match event {
                        Event::Message(_) => {
                            probe.texts.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::Alert { .. } => {
                            probe.alerts.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                if let Ok(c) = client.engine().channel(CHANNEL) {
                    probe.epoch.store(c.epoch, Ordering::Relaxed);
                }
                probe.transmitted.store(client.transmitted(), Ordering::Relaxed);
            }
        }
    }
}

fn member_blobs(probes: &[Arc<Probe>]) -> u64 {
    probes
        .iter()
        .map(|p| p.transmitted.load(Ordering::Relaxed))
        .sum()
}

/// Waits until `done` holds for every probe; `Err` gives how many it does not hold
/// for when `limit` passes.
async fn wait_for(
    probes: &[Arc<Probe>],
    limit: Duration,
    done: impl Fn(&Probe) -> bool,
) -> Result<(), usize> {
    let end = Instant::now() + limit;
    loop {
        let lagging = probes.iter().filter(|p| !done(p)).count();
        if lagging == 0 {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(lagging);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn medians(samples: &[Sample], last: usize) -> Sample {
    let tail = samples
        .get(samples.len().saturating_sub(last)..)
        .unwrap_or_default();
    let median = |f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = tail.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Sample {
        engine_ms: median(&|s| s.engine_ms),
        blobs: median(&|s| s.blobs as f64) as u64,
        member_blobs: median(&|s| s.member_blobs as f64) as u64,
        wall_ms: median(&|s| s.wall_ms),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
