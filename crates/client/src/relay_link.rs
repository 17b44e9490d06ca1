//! A relay link: one relay, kept connected (not to be confused with invite links,
//! `invite_link.rs`).
//!
//! A link task owns the connection to one relay. It reconnects with exponential
//! backoff, subscribes again to every mailbox it serves after each reconnection,
//! and keeps every blob it was asked to send until the relay has stored it,
//! sending again after a reconnection. It reports what happens as [`LinkEvent`]s.
//!
//! Sends are paced: at most [`SEND_WINDOW`] wait for the relay's answer at once, in
//! the order they were asked for, and a blob the relay asks to slow down for (rate
//! limited, busy) goes back to the head of the queue after a short pause, so that a
//! large fan-out (an add to a channel of hundreds) drains at the relay's pace
//! instead of failing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use backchannel_proto::addr::{MailboxId, RelayAddr};
use backchannel_proto::frame::{Blob, ErrorCode};
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use crate::relay::{RelayClient, RelayClientError};

/// Orders for a link.
pub(crate) enum LinkCommand {
    /// Send a blob (outbox entry `id`) until the relay stores it.
    Send {
        id: u64,
        send_id: MailboxId,
        ttl_secs: u32,
        blob: Blob,
    },
    /// Receive a mailbox's messages from now on.
    Subscribe { read_id: MailboxId, key: SigningKey },
    /// Stop receiving a mailbox.
    Forget { read_id: MailboxId },
    /// Delete a delivered message.
    Ack { read_id: MailboxId, message_id: u64 },
    /// Create a mailbox.
    Create {
        key: SigningKey,
        reply: oneshot::Sender<Result<(MailboxId, MailboxId), RelayClientError>>,
    },
    /// Delete a mailbox.
    Delete {
        read_id: MailboxId,
        key: SigningKey,
        reply: oneshot::Sender<Result<(), RelayClientError>>,
    },
}

/// What a link reports.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// The relay stored outbox entry `id`.
    Stored { id: u64 },
    /// The relay refused outbox entry `id` for good.
    Refused { id: u64, code: ErrorCode },
    /// A message arrived.
    Delivery {
        read_id: MailboxId,
        message_id: u64,
        blob: Blob,
    },
    /// A subscription is in place; `backlog` messages come first.
    Subscribed { read_id: MailboxId, backlog: u64 },
    /// A subscription was refused.
    SubscribeFailed { read_id: MailboxId, error: String },
    /// The link lost (or could not make) its connection.
    Down { relay: RelayAddr, error: String },
}

/// Timing of a link.
#[derive(Clone, Copy, Debug)]
pub struct LinkTiming {
    /// Connection and request timeout.
    pub timeout: Duration,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// A ping goes to the relay this often, so that a connection that only receives
    /// (`read --follow`) is not closed as idle (relays close connections silent
    /// for 120 seconds by default).
    pub keepalive: Duration,
    /// Connected to another host than the first of a relay of several hosts, the
    /// link looks this often whether the first answers again, and goes back to it.
    pub failback: Duration,
}

impl Default for LinkTiming {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            keepalive: Duration::from_secs(30),
            failback: Duration::from_secs(60),
        }
    }
}

/// What a link reports when it leaves a host that cannot store.
fn unusable_host(relay: &RelayAddr) -> LinkEvent {
    LinkEvent::Down {
        relay: relay.clone(),
        error: "this host of the relay cannot reach its storage; trying the next".into(),
    }
}

/// A host of a relay of several hosts is left once it has refused sends or
/// subscriptions as `Unavailable` this many times in a row ...
const UNAVAILABLE_BEFORE_FAILOVER: u32 = 3;

/// ... over at least this long (a blip shorter than the relay's own 3 s is
/// waited out).
const UNAVAILABLE_FOR: Duration = Duration::from_secs(3);

/// Counts one refusal for want of storage; whether to leave the host now.
fn give_up_on_host(unavailable: &mut Option<(tokio::time::Instant, u32)>) -> bool {
    let (since, count) = unavailable.get_or_insert((tokio::time::Instant::now(), 0));
    *count += 1;
    *count >= UNAVAILABLE_BEFORE_FAILOVER && since.elapsed() >= UNAVAILABLE_FOR
}

/// Waits `pause`, still taking orders; false if the link's owner is gone.
async fn wait_taking_orders(
    pause: Duration,
    commands: &mut mpsc::UnboundedReceiver<LinkCommand>,
    sends: &mut SendQueue,
    subs: &mut HashMap<MailboxId, SigningKey>,
    waiting: &mut Vec<LinkCommand>,
) -> bool {
    let sleep = tokio::time::sleep(pause);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            cmd = commands.recv() => match cmd {
                Some(cmd) => absorb(cmd, sends, subs, waiting),
                None => return false,
            },
        }
    }
}

/// Whether the first host of `relay` serves again: a whole handshake, with the
/// certificate pinned, not only a TCP connection.
async fn first_host_answers(relay: &RelayAddr, timeout: Duration) -> bool {
    match relay.at_host(0) {
        Some(first) => RelayClient::connect(&first, timeout).await.is_ok(),
        None => false,
    }
}

/// Starts a link task for `relay`.
pub(crate) fn spawn(
    relay: RelayAddr,
    timing: LinkTiming,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> mpsc::UnboundedSender<LinkCommand> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(relay, timing, rx, events));
    tx
}

/// A blob on its way: mailbox, relay lifetime, contents.
type Outgoing = (MailboxId, u32, Blob);

/// Most sends waiting for the relay's answer at once on one link.
pub(crate) const SEND_WINDOW: usize = 64;

/// First pause after the relay asked us to slow down; doubled while it keeps
/// asking, up to [`SLOW_DOWN_MAX`], and reset by the next stored blob.
const SLOW_DOWN_MIN: Duration = Duration::from_millis(50);
const SLOW_DOWN_MAX: Duration = Duration::from_secs(2);

enum Internal {
    SendDone {
        id: u64,
        result: Result<(), RelayClientError>,
    },
    /// A pause after "slow down" is over.
    Resume,
    /// A subscription was refused because the relay's storage is away.
    Unavailable,
    /// A subscription was taken.
    Subscribed,
}

/// The blobs of one link not yet stored, in the order they were asked for.
#[derive(Default)]
struct SendQueue {
    pending: BTreeMap<u64, Outgoing>,
    queued: VecDeque<u64>,
    in_flight: HashSet<u64>,
    /// While set, nothing new goes out.
    paused: bool,
    slow_down: Option<Duration>,
}

impl SendQueue {
    fn push(&mut self, id: u64, outgoing: Outgoing) {
        if self.pending.insert(id, outgoing).is_none() {
            self.queued.push_back(id);
        }
    }

    /// After a reconnection: everything not stored goes again, in order.
    fn restart(&mut self) {
        self.in_flight.clear();
        self.queued = self.pending.keys().copied().collect();
        self.paused = false;
    }

    /// The next blobs to send, within the window.
    fn next(&mut self) -> Vec<(u64, Outgoing)> {
        let mut out = Vec::new();
        while !self.paused && self.in_flight.len() < SEND_WINDOW {
            let Some(id) = self.queued.pop_front() else {
                break;
            };
            if let Some(outgoing) = self.pending.get(&id) {
                self.in_flight.insert(id);
                out.push((id, outgoing.clone()));
            }
        }
        out
    }

    fn stored(&mut self, id: u64) {
        self.pending.remove(&id);
        self.in_flight.remove(&id);
        self.slow_down = None;
    }

    /// The relay asked to slow down: the blob goes back to the head of the queue
    /// and sending pauses for the returned time.
    fn slow_down(&mut self, id: u64) -> Option<Duration> {
        self.in_flight.remove(&id);
        if !self.pending.contains_key(&id) {
            return None;
        }
        self.queued.push_front(id);
        if self.paused {
            return None;
        }
        self.paused = true;
        let pause = self
            .slow_down
            .map_or(SLOW_DOWN_MIN, |d| (d * 2).min(SLOW_DOWN_MAX));
        self.slow_down = Some(pause);
        Some(pause)
    }
}

async fn run(
    relay: RelayAddr,
    timing: LinkTiming,
    mut commands: mpsc::UnboundedReceiver<LinkCommand>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut sends = SendQueue::default();
    let mut subs: HashMap<MailboxId, SigningKey> = HashMap::new();
    let mut waiting: Vec<LinkCommand> = Vec::new();
    let mut backoff = timing.backoff_min;
    let hosts = relay.hosts().count();
    // The host to try first: the first of the address, unless the one we were on
    // kept refusing for want of storage, in which case the next.
    let mut start_at = 0;
    // After leaving a host for want of storage, a pause before the next: doubled
    // while every host refuses, so that a relay whose storage is away everywhere
    // is not hammered by its clients going round its hosts.
    let mut failover_pause: Option<Duration> = None;
    let mut next_failover_pause = timing.backoff_min;
    'reconnect: loop {
        // Take every order that came in while disconnected.
        while let Ok(cmd) = commands.try_recv() {
            absorb(cmd, &mut sends, &mut subs, &mut waiting);
        }
        if let Some(pause) = failover_pause.take()
            && !wait_taking_orders(pause, &mut commands, &mut sends, &mut subs, &mut waiting).await
        {
            return;
        }
        let connected = RelayClient::connect_starting_at(&relay, start_at, timing.timeout).await;
        start_at = 0;
        let mut client = match connected {
            Ok(c) => c,
            Err(e) => {
                let _ = events.send(LinkEvent::Down {
                    relay: relay.clone(),
                    error: e.to_string(),
                });
                for cmd in waiting.drain(..) {
                    fail(cmd, &e);
                }
                // Wait out the backoff, still taking orders.
                if !wait_taking_orders(backoff, &mut commands, &mut sends, &mut subs, &mut waiting)
                    .await
                {
                    return;
                }
                backoff = (backoff * 2).min(timing.backoff_max);
                continue 'reconnect;
            }
        };
        backoff = timing.backoff_min;
        let Some(mut deliveries) = client.deliveries() else {
            continue 'reconnect;
        };
        let host_index = client.host_index();
        let on_first_host = host_index == 0;
        // Refusals in a row because the relay's storage is away.
        // Since when, and how often, this host has refused for want of storage
        // (reset by anything it stores or subscribes).
        let mut unavailable: Option<(tokio::time::Instant, u32)> = None;
        let mut failback = tokio::time::interval_at(
            tokio::time::Instant::now() + timing.failback,
            timing.failback,
        );
        let client = Arc::new(client);
        let (internal_tx, mut internal) = mpsc::unbounded_channel::<Internal>();
        let send_next = |sends: &mut SendQueue| {
            for (id, (send_id, ttl_secs, blob)) in sends.next() {
                let client = client.clone();
                let internal_tx = internal_tx.clone();
                tokio::spawn(async move {
                    let result = client.send(send_id, ttl_secs, blob).await;
                    let _ = internal_tx.send(Internal::SendDone { id, result });
                });
            }
        };
        for (read_id, key) in &subs {
            subscribe(&client, *read_id, key.clone(), &events, &internal_tx);
        }
        sends.restart();
        send_next(&mut sends);
        for cmd in waiting.drain(..) {
            perform(&client, cmd);
        }
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + timing.keepalive,
            timing.keepalive,
        );
        loop {
            tokio::select! {
                _ = failback.tick(), if !on_first_host => {
                    if first_host_answers(&relay, timing.timeout).await {
                        // Back to the first host: what is in flight goes again
                        // there (the relay recognises what it stored already).
                        let _ = events.send(LinkEvent::Down {
                            relay: relay.clone(),
                            error: "going back to the relay's first host".into(),
                        });
                        continue 'reconnect;
                    }
                }
                _ = keepalive.tick() => {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let _ = client.ping().await;
                    });
                }
                delivery = deliveries.recv() => match delivery {
                    Some(d) => {
                        let _ = events.send(LinkEvent::Delivery {
                            read_id: d.read_id,
                            message_id: d.message_id,
                            blob: d.blob,
                        });
                    }
                    None => {
                        let _ = events.send(LinkEvent::Down {
                            relay: relay.clone(),
                            error: "connection closed".into(),
                        });
                        continue 'reconnect;
                    }
                },
                done = internal.recv() => {
                    match done {
                        Some(Internal::SendDone { id, result: Ok(()) }) => {
                            unavailable = None;
                            next_failover_pause = timing.backoff_min;
                            sends.stored(id);
                            let _ = events.send(LinkEvent::Stored { id });
                        }
                        Some(Internal::SendDone {
                            id,
                            result: Err(RelayClientError::Refused(
                                code @ (ErrorCode::UnknownMailbox | ErrorCode::Malformed),
                            )),
                        }) => {
                            sends.stored(id);
                            let _ = events.send(LinkEvent::Refused { id, code });
                        }
                        Some(Internal::SendDone { id, result: Err(RelayClientError::Refused(code)) }) => {
                            if code == ErrorCode::Unavailable
                                && hosts > 1
                                && give_up_on_host(&mut unavailable)
                            {
                                start_at = host_index + 1;
                                failover_pause = Some(next_failover_pause);
                                next_failover_pause = (next_failover_pause * 2).min(timing.backoff_max);
                                let _ = events.send(unusable_host(&relay));
                                continue 'reconnect;
                            }
                            // Full, busy or rate-limited: slow down, then go on.
                            if let Some(pause) = sends.slow_down(id) {
                                let internal_tx = internal_tx.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(pause).await;
                                    let _ = internal_tx.send(Internal::Resume);
                                });
                            }
                        }
                        Some(Internal::SendDone { result: Err(_), .. }) => {
                            // The connection is gone; everything pending goes again
                            // after reconnecting.
                            continue 'reconnect;
                        }
                        Some(Internal::Resume) => sends.paused = false,
                        Some(Internal::Unavailable) => {
                            if hosts > 1 && give_up_on_host(&mut unavailable) {
                                start_at = host_index + 1;
                                failover_pause = Some(next_failover_pause);
                                next_failover_pause = (next_failover_pause * 2).min(timing.backoff_max);
                                let _ = events.send(unusable_host(&relay));
                                continue 'reconnect;
                            }
                        }
                        Some(Internal::Subscribed) => {
                            unavailable = None;
                            next_failover_pause = timing.backoff_min;
                        }
                        None => continue,
                    }
                    send_next(&mut sends);
                }
                cmd = commands.recv() => match cmd {
                    Some(LinkCommand::Send { id, send_id, ttl_secs, blob }) => {
                        sends.push(id, (send_id, ttl_secs, blob));
                        send_next(&mut sends);
                    }
                    Some(LinkCommand::Subscribe { read_id, key }) => {
                        subs.insert(read_id, key.clone());
                        subscribe(&client, read_id, key, &events, &internal_tx);
                    }
                    Some(LinkCommand::Forget { read_id }) => {
                        subs.remove(&read_id);
                    }
                    Some(cmd) => perform(&client, cmd),
                    None => return,
                },
            }
        }
    }
}

/// Records an order while disconnected.
fn absorb(
    cmd: LinkCommand,
    sends: &mut SendQueue,
    subs: &mut HashMap<MailboxId, SigningKey>,
    waiting: &mut Vec<LinkCommand>,
) {
    match cmd {
        LinkCommand::Send {
            id,
            send_id,
            ttl_secs,
            blob,
        } => sends.push(id, (send_id, ttl_secs, blob)),
        LinkCommand::Subscribe { read_id, key } => {
            subs.insert(read_id, key);
        }
        LinkCommand::Forget { read_id } => {
            subs.remove(&read_id);
        }
        // An acknowledgement lost with a connection is harmless: the message is
        // delivered again and recognised as processed.
        LinkCommand::Ack { .. } => {}
        other => waiting.push(other),
    }
}

fn fail(cmd: LinkCommand, error: &RelayClientError) {
    let message = error.to_string();
    match cmd {
        LinkCommand::Create { reply, .. } => {
            let _ = reply.send(Err(RelayClientError::Handshake(message)));
        }
        LinkCommand::Delete { reply, .. } => {
            let _ = reply.send(Err(RelayClientError::Handshake(message)));
        }
        _ => {}
    }
}

fn subscribe(
    client: &Arc<RelayClient>,
    read_id: MailboxId,
    key: SigningKey,
    events: &mpsc::UnboundedSender<LinkEvent>,
    internal: &mpsc::UnboundedSender<Internal>,
) {
    let client = Arc::downgrade(client);
    let events = events.clone();
    let internal = internal.clone();
    tokio::spawn(async move {
        // A relay whose storage is away for a moment (a database restarting) or
        // that is busy is asked again, as long as the link keeps this connection
        // (after a reconnection, the link subscribes anew on the new one).
        let mut pause = Duration::from_millis(250);
        let event = loop {
            let Some(client) = client.upgrade() else {
                return;
            };
            match client.subscribe(read_id, &key).await {
                Ok(backlog) => {
                    let _ = internal.send(Internal::Subscribed);
                    break LinkEvent::Subscribed { read_id, backlog };
                }
                Err(RelayClientError::Refused(
                    code @ (ErrorCode::Unavailable | ErrorCode::RateLimited),
                )) => {
                    drop(client);
                    if code == ErrorCode::Unavailable {
                        // Counted with refused sends: a node that cannot reach its
                        // storage is left for another host of the relay.
                        let _ = internal.send(Internal::Unavailable);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    break LinkEvent::SubscribeFailed {
                        read_id,
                        error: e.to_string(),
                    };
                }
            }
        };
        let _ = events.send(event);
    });
}

/// Carries out a one-off order on a live connection.
fn perform(client: &Arc<RelayClient>, cmd: LinkCommand) {
    let client = client.clone();
    tokio::spawn(async move {
        match cmd {
            LinkCommand::Ack {
                read_id,
                message_id,
            } => {
                let _ = client.ack(read_id, message_id).await;
            }
            LinkCommand::Create { key, reply } => {
                let _ = reply.send(client.create_mailbox(&key).await);
            }
            LinkCommand::Delete {
                read_id,
                key,
                reply,
            } => {
                let _ = reply.send(client.delete_mailbox(read_id, &key).await);
            }
            LinkCommand::Send { .. }
            | LinkCommand::Subscribe { .. }
            | LinkCommand::Forget { .. } => {}
        }
    });
}
