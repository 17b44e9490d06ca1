//! One client connection: frames in, frames out, after the WebSocket upgrade.
//!
//! A malformed or oversized frame ends this connection and nothing else. Sends are
//! pipelined: each is answered when its group commit is durable, in whatever order
//! the commits finish. Deliveries are pushed to subscribed mailboxes, at most
//! `window` unacknowledged per mailbox.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, WebSocket};
use backchannel_proto::addr::MailboxId;
use backchannel_proto::frame::{
    Blob, ClientFrame, ErrorCode, FRAME_LEN, KIND_DELETE_MAILBOX, KIND_FETCH, KIND_SUBSCRIBE,
    Request, Response, ServerFrame, auth_message,
};
use ed25519_dalek::{Signature, VerifyingKey};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use rand::RngCore as _;
use tokio::sync::{mpsc, watch};

use crate::actor::StorageHandle;
use crate::hub::{Hub, Waker};
use crate::limits::{Admitted, Bucket, Limits, RendezvousUse};
use crate::metrics::Metrics;
use crate::rendezvous::{ConnId, Rendezvous};
use crate::storage::{Append, AppendOutcome, MailboxKey};

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) storage: StorageHandle,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    pub(crate) window: u16,
    pub(crate) idle_timeout: Duration,
    pub(crate) message_ttl: Duration,
    pub(crate) rendezvous: Rendezvous,
    /// False while this node cannot reach its storage (a node of a cluster that
    /// lost its database): connections close, and their clients go elsewhere.
    pub(crate) reachable: watch::Receiver<bool>,
    /// Keeps `reachable` open on a relay whose storage is never away.
    pub(crate) _reachable_tx: watch::Sender<bool>,
    pub(crate) shutdown: watch::Receiver<bool>,
    #[cfg(feature = "adversary")]
    pub(crate) adversary: Option<crate::adversary::AdversaryHandle>,
}

struct Subscription {
    mailbox: MailboxKey,
    cursor: u64,
    in_flight: BTreeSet<u64>,
}

type Pending = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Why a connection ends; only counted, never logged with details.
enum End {
    Closed,
    Malformed,
    Idle,
    Shutdown,
    StorageGone,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Numbers connections, for the rendezvous registry.
static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) async fn serve(mut ws: WebSocket, shared: Arc<Shared>, admitted: Admitted) {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut conn = Connection {
        shared: shared.clone(),
        admitted,
        nonce,
        subs: HashMap::new(),
        waker: Arc::new(Waker::default()),
        bucket: Bucket::new(
            shared.limits.requests_per_second,
            shared.limits.requests_per_second.saturating_mul(2),
        ),
        id: NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        rendezvous: None,
        rendezvous_bucket: Bucket::per_minute(
            shared.limits.rendezvous_per_minute,
            shared.limits.rendezvous_per_minute,
        ),
    };
    let end = conn.run(&mut ws).await;
    shared.rendezvous.forget(conn.id);
    for sub in conn.subs.values() {
        shared.hub.unsubscribe(sub.mailbox, &conn.waker);
    }
    match end {
        End::Malformed => shared.metrics.malformed.inc(),
        End::Closed | End::Idle | End::Shutdown | End::StorageGone => {}
    }
    let _ = ws.send(Message::Close(None)).await;
    tracing::debug!("connection ended");
}

struct Connection {
    shared: Arc<Shared>,
    admitted: Admitted,
    nonce: [u8; 32],
    subs: HashMap<MailboxId, Subscription>,
    waker: Arc<Waker>,
    bucket: Bucket,
    id: ConnId,
    /// What the other party of a rendezvous passes; made at the first rendezvous
    /// request (an idle connection should cost little memory).
    rendezvous: Option<(mpsc::Sender<ServerFrame>, mpsc::Receiver<ServerFrame>)>,
    rendezvous_bucket: Bucket,
}

impl Connection {
    async fn run(&mut self, ws: &mut WebSocket) -> End {
        #[cfg(feature = "adversary")]
        let window = self
            .shared
            .adversary
            .as_ref()
            .and_then(|a| a.0.announced_window())
            .unwrap_or(self.shared.window);
        #[cfg(not(feature = "adversary"))]
        let window = self.shared.window;
        let hello = ServerFrame::Hello {
            nonce: self.nonce,
            window,
        };
        if self.send(ws, &hello).await.is_err() {
            return End::Closed;
        }
        let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut shutdown = self.shared.shutdown.clone();
        let mut reachable = self.shared.reachable.clone();
        if !*reachable.borrow_and_update() {
            // The storage went away between the upgrade and now.
            return End::StorageGone;
        }
        let mut deadline = tokio::time::Instant::now() + self.shared.idle_timeout;
        let end = loop {
            tokio::select! {
                message = ws.recv() => {
                    let bytes = match message {
                        Some(Ok(Message::Binary(bytes))) => bytes,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Closed,
                        // Text, or anything that is not one binary frame: not ours.
                        Some(Ok(_)) => break End::Malformed,
                    };
                    self.shared.metrics.frames_in.inc();
                    deadline = tokio::time::Instant::now() + self.shared.idle_timeout;
                    let Ok(frame) = ClientFrame::decode(&bytes) else {
                        let _ = self.respond(ws, 0, Response::Error(ErrorCode::Malformed)).await;
                        break End::Malformed;
                    };
                    match self.handle(ws, frame, &mut pending).await {
                        Ok(()) => {}
                        Err(end) => break end,
                    }
                }
                Some(frame) = pending.next(), if !pending.is_empty() => {
                    if self.send(ws, &frame).await.is_err() {
                        break End::Closed;
                    }
                }
                () = self.waker.woken() => {
                    if let Err(end) = self.deliver(ws).await {
                        break end;
                    }
                }
                Some(frame) = async {
                    match self.rendezvous.as_mut() {
                        Some((_, rx)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if self.send(ws, &frame).await.is_err() {
                        break End::Closed;
                    }
                }
                () = tokio::time::sleep_until(deadline) => break End::Idle,
                Ok(()) = reachable.changed() => {
                    if !*reachable.borrow_and_update() {
                        break End::StorageGone;
                    }
                }
                _ = shutdown.changed() => break End::Shutdown,
            }
        };
        // Finish what is in flight: every send gets its answer.
        while let Some(frame) = pending.next().await {
            if self.send(ws, &frame).await.is_err() {
                break;
            }
        }
        end
    }

    async fn send(&self, ws: &mut WebSocket, frame: &ServerFrame) -> Result<(), ()> {
        let bytes = frame.encode();
        debug_assert_eq!(bytes.len(), FRAME_LEN);
        ws.send(Message::Binary(bytes.into()))
            .await
            .map_err(|_| ())?;
        self.shared.metrics.frames_out.inc();
        Ok(())
    }

    async fn respond(
        &self,
        ws: &mut WebSocket,
        request_id: u32,
        response: Response,
    ) -> Result<(), End> {
        let frame = ServerFrame::Response {
            request_id,
            response,
        };
        self.send(ws, &frame).await.map_err(|()| End::Closed)
    }

    /// Stores a blob (in the next group commit) and answers once it is durable;
    /// a hostile test relay may drop, copy or move it first.
    fn store(&self, id: u32, send_id: MailboxId, ttl_secs: u32, blob: Blob) -> Pending {
        let storage = self.shared.storage.clone();
        let metrics = self.shared.metrics.clone();
        let ttl = effective_ttl_ms(self.shared.message_ttl, ttl_secs);
        let started = Instant::now();
        #[cfg(feature = "adversary")]
        let mut copies = match &self.shared.adversary {
            Some(a) => a.0.on_send(send_id, &blob),
            None => vec![(send_id, blob)],
        };
        #[cfg(not(feature = "adversary"))]
        let mut copies = vec![(send_id, blob)];
        Box::pin(async move {
            let Some((send_id, blob)) = copies.pop() else {
                // A hostile relay dropped it and says it stored it.
                return ServerFrame::Response {
                    request_id: id,
                    response: Response::Stored,
                };
            };
            for (other, copy) in copies {
                let extra = Append {
                    send_id: other,
                    blob: copy,
                    expires_at: now_ms().saturating_add(ttl),
                    replay: true,
                };
                let _ = storage.append(extra).await;
            }
            let append = Append {
                send_id,
                blob,
                expires_at: now_ms().saturating_add(ttl),
                replay: false,
            };
            let response = match storage.append(append).await {
                Ok(Ok(AppendOutcome::Stored { .. } | AppendOutcome::Duplicate { .. })) => {
                    metrics
                        .store_seconds
                        .observe(started.elapsed().as_secs_f64());
                    Response::Stored
                }
                Ok(Ok(AppendOutcome::UnknownMailbox)) => Response::Error(ErrorCode::UnknownMailbox),
                Ok(Ok(AppendOutcome::QuotaExceeded)) => {
                    metrics.refused_full.inc();
                    Response::Error(ErrorCode::QuotaExceeded)
                }
                Ok(Err(())) => Response::Error(ErrorCode::Unavailable),
                Err(_) => Response::Error(ErrorCode::ShuttingDown),
            };
            ServerFrame::Response {
                request_id: id,
                response,
            }
        })
    }

    /// A rendezvous request (codes): open, join, pass data, close.
    async fn rendezvous(&mut self, request: Request) -> Response {
        let tx = self
            .rendezvous
            .get_or_insert_with(|| mpsc::channel(64))
            .0
            .clone();
        let registry = &self.shared.rendezvous;
        let result = match request {
            Request::RendezvousOpen => {
                registry
                    .open(self.id, tx)
                    .await
                    .map(|nameplate| Response::RendezvousOpened {
                        nameplate,
                        ttl_secs: u32::try_from(registry.ttl().as_secs()).unwrap_or(u32::MAX),
                    })
            }
            Request::RendezvousJoin { nameplate } => registry
                .join(nameplate, self.id, tx)
                .await
                .map(|()| Response::RendezvousJoined),
            Request::RendezvousSend { nameplate, data } => registry
                .send(nameplate, self.id, data)
                .await
                .map(|()| Response::Forwarded),
            Request::RendezvousClose { nameplate } => registry
                .close(nameplate, self.id)
                .await
                .map(|()| Response::RendezvousClosed),
            _ => Err(ErrorCode::Malformed),
        };
        result.unwrap_or_else(Response::Error)
    }

    /// Within this connection's and this address's rendezvous allowance?
    fn rendezvous_allowed(&mut self, what: RendezvousUse) -> bool {
        let allowed =
            self.rendezvous_bucket.take(Instant::now()) && self.admitted.allow_rendezvous(what);
        if !allowed {
            self.shared.metrics.rate_limited.inc();
        }
        allowed
    }

    async fn handle(
        &mut self,
        ws: &mut WebSocket,
        frame: ClientFrame,
        pending: &mut FuturesUnordered<Pending>,
    ) -> Result<(), End> {
        let id = frame.request_id;
        // Acknowledging a message we delivered is free: deliveries are already paced
        // by the window, and a reader draining a backlog must not be throttled.
        let delivered = match &frame.request {
            Request::Ack {
                read_id,
                message_id,
            } => self
                .subs
                .get(read_id)
                .is_some_and(|s| s.in_flight.contains(message_id)),
            _ => false,
        };
        if !delivered && (!self.bucket.take(Instant::now()) || !self.admitted.allow_request()) {
            self.shared.metrics.rate_limited.inc();
            return self
                .respond(ws, id, Response::Error(ErrorCode::RateLimited))
                .await;
        }
        let response = match frame.request {
            Request::Ping => Response::Pong,
            Request::CreateMailbox { auth_key } => self.create(auth_key).await?,
            Request::Send {
                send_id,
                ttl_secs,
                blob,
            } => {
                pending.push(self.store(id, send_id, ttl_secs, blob));
                return Ok(());
            }
            Request::Subscribe { read_id, signature } => {
                self.subscribe(id, read_id, signature).await?
            }
            Request::Fetch {
                read_id,
                signature,
                after,
                limit,
            } => {
                self.fetch(ws, id, read_id, signature, (after, limit))
                    .await?
            }
            Request::Ack {
                read_id,
                message_id,
            } => match self.ack(id, read_id, message_id) {
                Some(delete) => {
                    pending.push(delete);
                    return Ok(());
                }
                None => Response::Error(ErrorCode::Unauthorized),
            },
            Request::DeleteMailbox { read_id, signature } => {
                self.delete_mailbox(id, read_id, signature).await?
            }
            Request::RendezvousOpen if !self.rendezvous_allowed(RendezvousUse::Open) => {
                Response::Error(ErrorCode::RateLimited)
            }
            Request::RendezvousJoin { .. } if !self.rendezvous_allowed(RendezvousUse::Join) => {
                Response::Error(ErrorCode::RateLimited)
            }
            other => self.rendezvous(other).await,
        };
        self.respond(ws, id, response).await
    }

    async fn create(&mut self, auth_key: [u8; 32]) -> Result<Response, End> {
        if !self.admitted.allow_creation() {
            self.shared.metrics.rate_limited.inc();
            return Ok(Response::Error(ErrorCode::RateLimited));
        }
        if VerifyingKey::from_bytes(&auth_key).is_err() {
            return Ok(Response::Error(ErrorCode::Malformed));
        }
        let mut send_id = [0u8; 16];
        let mut read_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut send_id);
        rand::rngs::OsRng.fill_bytes(&mut read_id);
        let (send_id, read_id) = (MailboxId(send_id), MailboxId(read_id));
        match self
            .shared
            .storage
            .create(send_id, read_id, auth_key, now_ms())
            .await
        {
            Ok(Ok(())) => {
                self.shared.metrics.mailboxes_created.inc();
                Ok(Response::MailboxCreated { send_id, read_id })
            }
            Ok(Err(_)) => Ok(Response::Error(ErrorCode::Unavailable)),
            Err(_) => Err(End::StorageGone),
        }
    }

    /// Checks the owner's signature over this connection's nonce.
    async fn authorise(
        &self,
        kind: u8,
        request_id: u32,
        read_id: MailboxId,
        signature: [u8; 64],
    ) -> Result<Result<crate::storage::Mailbox, ErrorCode>, End> {
        let mailbox = match self.shared.storage.lookup(read_id).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(Err(ErrorCode::UnknownMailbox)),
            Ok(Err(_)) => return Ok(Err(ErrorCode::Unavailable)),
            Err(_) => return Err(End::StorageGone),
        };
        let message = auth_message(&self.nonce, kind, request_id, &read_id);
        let valid = VerifyingKey::from_bytes(&mailbox.auth_key)
            .map(|key| {
                key.verify_strict(&message, &Signature::from_bytes(&signature))
                    .is_ok()
            })
            .unwrap_or(false);
        if valid {
            Ok(Ok(mailbox))
        } else {
            self.shared.metrics.unauthorized.inc();
            Ok(Err(ErrorCode::Unauthorized))
        }
    }

    async fn subscribe(
        &mut self,
        request_id: u32,
        read_id: MailboxId,
        signature: [u8; 64],
    ) -> Result<Response, End> {
        if self.subs.len() >= self.shared.limits.max_subscriptions
            && !self.subs.contains_key(&read_id)
        {
            return Ok(Response::Error(ErrorCode::TooManySubscriptions));
        }
        let (mailbox, backlog) = match self
            .authorise(KIND_SUBSCRIBE, request_id, read_id, signature)
            .await?
        {
            Ok(m) => (m.key, m.count),
            Err(code) => return Ok(Response::Error(code)),
        };
        // Subscribing again starts over: everything unacknowledged is delivered anew.
        self.subs.insert(
            read_id,
            Subscription {
                mailbox,
                cursor: 0,
                in_flight: BTreeSet::new(),
            },
        );
        self.shared.hub.subscribe(mailbox, &self.waker);
        self.waker.wake(mailbox);
        self.shared.storage.touch(mailbox, now_ms());
        Ok(Response::Subscribed { backlog })
    }

    /// Delivers up to `limit` messages after `after` without deleting them, then
    /// answers how many came. Nothing is kept for the connection.
    async fn fetch(
        &mut self,
        ws: &mut WebSocket,
        request_id: u32,
        read_id: MailboxId,
        signature: [u8; 64],
        (after, limit): (u64, u16),
    ) -> Result<Response, End> {
        let mailbox = match self
            .authorise(KIND_FETCH, request_id, read_id, signature)
            .await?
        {
            Ok(m) => m.key,
            Err(code) => return Ok(Response::Error(code)),
        };
        let limit = usize::from(limit.min(self.shared.window));
        // Message ids are SQL integers: nothing is above i64::MAX.
        let after = after.min(i64::MAX as u64);
        let fetched = match self.shared.storage.fetch(mailbox, after, limit).await {
            Ok(Ok(f)) => f,
            Ok(Err(_)) => return Ok(Response::Error(ErrorCode::Unavailable)),
            Err(_) => return Err(End::StorageGone),
        };
        for id in fetched.damaged {
            self.shared.metrics.damaged.inc();
            let _ = self.shared.storage.delete(mailbox, id).await;
        }
        let (mut count, mut last) = (0u16, after);
        for (message_id, blob) in fetched.messages {
            last = last.max(message_id);
            #[cfg(feature = "adversary")]
            if let Some(a) = &self.shared.adversary
                && !a.0.on_deliver(read_id, &blob)
            {
                continue;
            }
            let frame = ServerFrame::Deliver {
                read_id,
                message_id,
                blob,
            };
            self.send(ws, &frame).await.map_err(|()| End::Closed)?;
            self.shared.metrics.delivered.inc();
            count = count.saturating_add(1);
        }
        self.shared.storage.touch(mailbox, now_ms());
        Ok(Response::Fetched { count, last })
    }

    /// Frees the window slot at once and deletes in the background (acknowledgements
    /// join the next group commit; the connection does not wait for it). `None` if
    /// the connection is not subscribed to the mailbox.
    fn ack(&mut self, request_id: u32, read_id: MailboxId, message_id: u64) -> Option<Pending> {
        let Some(sub) = self.subs.get_mut(&read_id) else {
            self.shared.metrics.unauthorized.inc();
            return None;
        };
        let mailbox = sub.mailbox;
        sub.in_flight.remove(&message_id);
        self.waker.wake(mailbox);
        let storage = self.shared.storage.clone();
        let metrics = self.shared.metrics.clone();
        Some(Box::pin(async move {
            let response = match storage.delete(mailbox, message_id).await {
                Ok(Ok(())) => {
                    metrics.acked.inc();
                    Response::Acked
                }
                Ok(Err(_)) => Response::Error(ErrorCode::Unavailable),
                Err(_) => Response::Error(ErrorCode::ShuttingDown),
            };
            ServerFrame::Response {
                request_id,
                response,
            }
        }))
    }

    async fn delete_mailbox(
        &mut self,
        request_id: u32,
        read_id: MailboxId,
        signature: [u8; 64],
    ) -> Result<Response, End> {
        let mailbox = match self
            .authorise(KIND_DELETE_MAILBOX, request_id, read_id, signature)
            .await?
        {
            Ok(m) => m.key,
            Err(code) => return Ok(Response::Error(code)),
        };
        match self.shared.storage.delete_mailbox(mailbox).await {
            Ok(Ok(())) => {
                if let Some(sub) = self.subs.remove(&read_id) {
                    self.shared.hub.unsubscribe(sub.mailbox, &self.waker);
                }
                Ok(Response::Deleted)
            }
            Ok(Err(_)) => Ok(Response::Error(ErrorCode::Unavailable)),
            Err(_) => Err(End::StorageGone),
        }
    }

    /// Pushes new messages of every mailbox with news, within the window.
    async fn deliver(&mut self, ws: &mut WebSocket) -> Result<(), End> {
        let dirty = self.waker.take();
        let window = usize::from(self.shared.window);
        let read_ids: Vec<MailboxId> = self
            .subs
            .iter()
            .filter(|(_, s)| dirty.contains(&s.mailbox))
            .map(|(id, _)| *id)
            .collect();
        for read_id in read_ids {
            let Some(sub) = self.subs.get(&read_id) else {
                continue;
            };
            let room = window.saturating_sub(sub.in_flight.len());
            if room == 0 {
                continue;
            }
            let (mailbox, cursor) = (sub.mailbox, sub.cursor);
            let fetched = match self.shared.storage.fetch(mailbox, cursor, room).await {
                Ok(Ok(f)) => f,
                Ok(Err(_)) => continue,
                Err(_) => return Err(End::StorageGone),
            };
            // Damaged records are deleted: they can never be delivered, and must not
            // hold up the mailbox.
            for id in fetched.damaged {
                self.shared.metrics.damaged.inc();
                let _ = self.shared.storage.delete(mailbox, id).await;
                self.waker.wake(mailbox);
            }
            let messages = fetched.messages;
            for (message_id, blob) in messages {
                #[cfg(feature = "adversary")]
                if let Some(a) = &self.shared.adversary
                    && !a.0.on_deliver(read_id, &blob)
                {
                    if let Some(sub) = self.subs.get_mut(&read_id) {
                        sub.cursor = message_id;
                    }
                    continue;
                }
                if let Some(sub) = self.subs.get_mut(&read_id) {
                    sub.cursor = message_id;
                    sub.in_flight.insert(message_id);
                }
                let frame = ServerFrame::Deliver {
                    read_id,
                    message_id,
                    blob,
                };
                self.send(ws, &frame).await.map_err(|()| End::Closed)?;
                self.shared.metrics.delivered.inc();
            }
        }
        Ok(())
    }
}

/// How long the relay keeps a blob: the sender's limit (disappearing messages
/// ask for less) capped by the relay's own; 0 asks for the relay's limit.
fn effective_ttl_ms(relay_limit: Duration, requested_secs: u32) -> u64 {
    let limit = u64::try_from(relay_limit.as_millis()).unwrap_or(u64::MAX);
    if requested_secs == 0 {
        return limit;
    }
    limit.min(u64::from(requested_secs).saturating_mul(1000))
}

#[cfg(test)]
mod ttl_tests {
    use super::*;

    #[test]
    fn sender_ttl_is_capped_by_the_relay() {
        let day = Duration::from_secs(86_400);
        assert_eq!(effective_ttl_ms(day, 0), 86_400_000);
        assert_eq!(effective_ttl_ms(day, 60), 60_000);
        assert_eq!(effective_ttl_ms(day, u32::MAX), 86_400_000);
    }
}
