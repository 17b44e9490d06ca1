//! The client: the engine, its store, and links to the relays it uses.
//!
//! Every engine input runs in one store transaction that also records its effects
//! here: blobs to send go into the outbox (and leave it only when their relay has
//! stored them), and a delivered blob is marked processed in the same transaction
//! that applies it, before it is acknowledged to the relay. A crash at any point
//! loses nothing and applies nothing twice: an unacknowledged delivery comes again
//! and is recognised; an unsent blob is sent on the next start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backchannel_core::mls::Suite;
use backchannel_core::store::EngineStore as _;
use backchannel_core::{
    ChannelId, ChannelOptions, CommandError, Engine, EngineConfig, Event, Output, Timestamp,
    Transmit,
};
use backchannel_proto::addr::{MailboxAddr, MailboxId, RelayAddr};
use backchannel_proto::envelope::BLOB_LEN;
use backchannel_proto::frame::{Blob, ErrorCode};
use backchannel_store::{MailboxPurpose, MailboxRecord, Store, StoreError};
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::relay::RelayClientError;
use crate::relay_link::{self, LinkCommand, LinkEvent, LinkTiming};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] CommandError),
    /// The local store failed.
    #[error("the local store failed: {0}")]
    Store(#[from] StoreError),
    /// A relay could not be used.
    #[error("relay {relay}: {error}")]
    Relay {
        /// Which relay (its address is not secret).
        relay: String,
        /// What went wrong.
        error: RelayClientError,
    },
    /// Relays did not answer in time; what was not sent stays in the outbox.
    #[error("{0}")]
    Timeout(String),
    /// An invite link could not be made or used.
    #[error("{0}")]
    Link(String),
    /// An attachment could not be sent.
    #[error(transparent)]
    Attachment(#[from] crate::attachment::AttachmentError),
}

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Relay connection timing.
    pub timing: LinkTiming,
    /// The engine's tunables.
    pub engine: EngineConfig,
    /// After catching up, how long to wait for stragglers before a sync ends.
    pub quiet: Duration,
    /// While connected, our status goes to every channel at least this often (a
    /// relay withholding our last messages is caught within this, plus the gap
    /// grace period, after we were last online).
    pub status_interval: Duration,
}

/// Default of [`ClientConfig::status_interval`].
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10 * 60);

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timing: LinkTiming::default(),
            engine: EngineConfig::default(),
            quiet: Duration::from_millis(250),
            status_interval: STATUS_INTERVAL,
        }
    }
}

/// The current time for the engine.
pub fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// How far one subscription has caught up.
#[derive(Clone, Copy, Debug, Default)]
struct Catchup {
    backlog: Option<u64>,
    received: u64,
}

impl Catchup {
    fn done(&self) -> bool {
        self.backlog.is_some_and(|b| self.received >= b)
    }
}

/// A Backchannel client over one profile.
pub struct Client {
    engine: Engine<Store>,
    pub(crate) config: ClientConfig,
    links: HashMap<RelayAddr, mpsc::UnboundedSender<LinkCommand>>,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events_rx: mpsc::UnboundedReceiver<LinkEvent>,
    mailboxes: HashMap<MailboxId, MailboxRecord>,
    /// Outbox entries handed to links and not yet stored.
    in_flight: HashSet<u64>,
    /// Subscriptions in progress: their backlog, once known, and how many
    /// deliveries came since subscribing (they may come before the backlog is known).
    awaiting: HashMap<MailboxId, Catchup>,
    events: VecDeque<Event>,
    /// Things to tell the person that are not engine events (join requests and
    /// their answers).
    pub(crate) notices: Vec<crate::arrived::Notice>,
    /// Answers to our requests to join through links, by the mailbox they came to.
    pub(crate) link_answers: HashMap<MailboxId, crate::arrived::LinkAnswer>,
    /// Relay problems seen, for the person.
    pub relay_errors: Vec<String>,
    /// Blobs the engine produced and this client handed to relays, since it opened.
    transmitted: u64,
}

impl Client {
    /// Opens a client over a profile. Nothing is sent until a method needs a relay.
    pub fn open(store: Store, config: ClientConfig) -> Result<Self, ClientError> {
        let mailboxes = store
            .mailboxes()?
            .into_iter()
            .map(|m| (m.read_id, m))
            .collect();
        let engine = Engine::load(store, config.engine.clone())?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut client = Self {
            engine,
            config,
            links: HashMap::new(),
            events_tx,
            events_rx,
            mailboxes,
            in_flight: HashSet::new(),
            awaiting: HashMap::new(),
            events: VecDeque::new(),
            notices: Vec::new(),
            link_answers: HashMap::new(),
            relay_errors: Vec::new(),
            transmitted: 0,
        };
        client.run_due_timers()?;
        client.bind_joined()?;
        Ok(client)
    }

    /// Binds each channel's own mailbox to it if a crash came between joining (or
    /// making a channel for an introduction) and binding: an unbound mailbox is
    /// never subscribed to.
    fn bind_joined(&mut self) -> Result<(), ClientError> {
        let unbound: Vec<(MailboxAddr, ChannelId)> = self
            .engine
            .channels()
            .into_iter()
            .filter_map(|c| {
                let me = c.members.into_iter().find(|m| m.is_self)?;
                let record = self
                    .mailboxes
                    .values()
                    .find(|m| m.send_id == me.mailbox.send_id)?;
                record.channel.is_none().then_some((me.mailbox, c.id))
            })
            .collect();
        for (mailbox, channel) in unbound {
            self.bind(&mailbox, channel)?;
        }
        Ok(())
    }

    /// Applies what fell due while the profile was closed (a channel's end date,
    /// disappearing messages), before anything is shown. What it sends waits in the
    /// outbox for the first method that talks to a relay.
    fn run_due_timers(&mut self) -> Result<(), ClientError> {
        if self.engine.poll_timeout().is_some_and(|d| d.at <= now()) {
            self.engine.handle_timeout(now())?;
            while let Some(output) = self.engine.poll_output() {
                if let Output::Event(event) = output {
                    self.keep_event(event);
                }
            }
        }
        Ok(())
    }

    /// The engine (for reading state).
    pub fn engine(&self) -> &Engine<Store> {
        &self.engine
    }

    pub(crate) fn engine_mut(&mut self) -> &mut Engine<Store> {
        &mut self.engine
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.engine.store()
    }

    /// The next event for the person, if any is queued.
    pub fn take_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn link(&mut self, relay: &RelayAddr) -> mpsc::UnboundedSender<LinkCommand> {
        if let Some(link) = self.links.get(relay)
            && !link.is_closed()
        {
            return link.clone();
        }
        let link = relay_link::spawn(relay.clone(), self.config.timing, self.events_tx.clone());
        self.links.insert(relay.clone(), link.clone());
        link
    }

    /// Creates a mailbox on `relay` for us; it is not yet tied to a channel.
    pub async fn create_mailbox(&mut self, relay: &RelayAddr) -> Result<MailboxAddr, ClientError> {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let (reply, rx) = oneshot::channel();
        let link = self.link(relay);
        let relay_error = |error| ClientError::Relay {
            relay: relay.to_string(),
            error,
        };
        let _ = link.send(LinkCommand::Create {
            key: key.clone(),
            reply,
        });
        let (send_id, read_id) = tokio::time::timeout(self.config.timing.timeout * 2, rx)
            .await
            .map_err(|_| relay_error(RelayClientError::Timeout))?
            .map_err(|_| relay_error(RelayClientError::Closed))?
            .map_err(relay_error)?;
        let record = MailboxRecord {
            read_id,
            send_id,
            relay: relay.clone(),
            auth_seed: Zeroizing::new(key.to_bytes()),
            channel: None,
            last_processed: 0,
            created_at: now(),
            purpose: MailboxPurpose::Channel,
        };
        self.store().save_mailbox(&record)?;
        self.mailboxes.insert(read_id, record);
        Ok(MailboxAddr {
            relay: relay.clone(),
            send_id,
        })
    }

    pub(crate) fn bind(
        &mut self,
        mailbox: &MailboxAddr,
        channel: ChannelId,
    ) -> Result<(), ClientError> {
        self.store().bind_mailbox(&mailbox.send_id, &channel)?;
        for m in self.mailboxes.values_mut() {
            if m.send_id == mailbox.send_id {
                m.channel = Some(channel);
            }
        }
        Ok(())
    }

    /// Creates a channel whose members will reach us through a new mailbox on
    /// `relay`.
    pub async fn create_channel(
        &mut self,
        name: &str,
        own_name: &str,
        options: ChannelOptions,
        relay: &RelayAddr,
    ) -> Result<ChannelId, ClientError> {
        // Check the names before making a mailbox for nothing.
        if self.engine.channel_id(name).is_ok() {
            return Err(CommandError::NameTaken(name.into()).into());
        }
        backchannel_proto::member::check_name(own_name).map_err(CommandError::InvalidName)?;
        let mailbox = self.create_mailbox(relay).await?;
        let id = self
            .engine
            .create_channel(now(), name, own_name, options, mailbox.clone())?;
        self.bind(&mailbox, id)?;
        self.pump();
        Ok(id)
    }

    /// Makes a key package (for `own_name` in a channel of `suite`) with a new
    /// mailbox on `relay`.
    pub async fn key_package(
        &mut self,
        own_name: &str,
        suite: Suite,
        relay: &RelayAddr,
    ) -> Result<Vec<u8>, ClientError> {
        backchannel_proto::member::check_name(own_name).map_err(CommandError::InvalidName)?;
        let mailbox = self.create_mailbox(relay).await?;
        let kp = self.engine.key_package(now(), own_name, suite, mailbox)?;
        Ok(kp)
    }

    /// Joins a channel with a welcome made for one of our key packages.
    pub fn join(&mut self, name: Option<&str>, welcome: &[u8]) -> Result<ChannelId, ClientError> {
        let id = self.engine.join(now(), name, welcome)?;
        // `pump` binds our mailbox to it, on the `Joined` event.
        self.pump();
        Ok(id)
    }

    /// Adds the owners of key packages to a channel we administer; returns the welcome.
    pub fn add_members(
        &mut self,
        channel: &str,
        key_packages: &[&[u8]],
    ) -> Result<Vec<u8>, ClientError> {
        let welcome = self.engine.add_members(now(), channel, key_packages)?;
        self.pump();
        Ok(welcome)
    }

    /// Removes a member from a channel we administer.
    pub fn remove_member(&mut self, channel: &str, member: &str) -> Result<(), ClientError> {
        self.engine.remove_member(now(), channel, member)?;
        self.pump();
        Ok(())
    }

    /// Replaces our keys in a channel.
    pub fn self_update(&mut self, channel: &str) -> Result<(), ClientError> {
        self.engine.self_update(now(), channel)?;
        self.pump();
        Ok(())
    }

    /// Leaves a channel.
    pub fn leave(&mut self, channel: &str) -> Result<(), ClientError> {
        self.engine.leave(now(), channel)?;
        self.pump();
        Ok(())
    }

    /// Sends our view of a channel to its members and asks for theirs.
    pub fn request_status(&mut self, channel: &str) -> Result<(), ClientError> {
        self.engine.request_status(now(), channel)?;
        self.pump();
        Ok(())
    }

    /// Sets how long messages live in a channel we administer (0: forever).
    pub fn set_disappearing(&mut self, channel: &str, secs: u64) -> Result<(), ClientError> {
        self.engine.set_disappearing(now(), channel, secs)?;
        self.pump();
        Ok(())
    }

    /// Burns a channel: every member erases it and confirms (see
    /// [`Engine::burn`]).
    pub fn burn(&mut self, channel: &str) -> Result<(), ClientError> {
        self.engine.burn(now(), channel)?;
        self.pump();
        Ok(())
    }

    /// Records that we compared safety numbers with `member` and they matched.
    pub fn confirm_verified(&mut self, channel: &str, member: &str) -> Result<(), ClientError> {
        self.engine.confirm_verified(now(), channel, member)?;
        self.pump();
        Ok(())
    }

    /// Things to tell the person that are not channel events: join requests that
    /// arrived, answers to ours.
    pub fn take_notices(&mut self) -> Vec<crate::arrived::Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Every event not yet taken, in order.
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Sends a text message.
    pub fn send_text(&mut self, channel: &str, text: &str) -> Result<(), ClientError> {
        self.engine.send_text(now(), channel, text)?;
        self.pump();
        Ok(())
    }

    /// Sends a file: stored once on the relay of our mailbox in the channel
    /// (expiring after `expires_in`), then its descriptor to every member.
    pub async fn send_attachment(
        &mut self,
        channel: &str,
        path: &std::path::Path,
        expires_in: Duration,
        progress: crate::attachment::Progress,
    ) -> Result<backchannel_proto::attachment::Descriptor, ClientError> {
        let summary = self.engine.channel(channel)?;
        // Refused before anything is uploaded (a removed member, a closed channel).
        if summary.status != backchannel_core::store::ChannelStatus::Active {
            return Err(CommandError::NotActive.into());
        }
        let Some(relay) = summary
            .members
            .iter()
            .find(|m| m.is_self)
            .map(|m| m.mailbox.relay.clone())
        else {
            return Err(CommandError::NotActive.into());
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let descriptor =
            crate::attachment::upload(&relay, path, &name, expires_in, now().0, progress).await?;
        self.engine.send_attachment(now(), channel, &descriptor)?;
        self.pump();
        Ok(descriptor)
    }

    /// Moves the engine's outputs: blobs to their relays, events to the queue.
    pub(crate) fn pump(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Transmit(t) => self.dispatch(t),
                Output::Event(event) => self.keep_event(event),
                _ => {}
            }
        }
    }

    /// Keeps an engine event for the person, after what it means for our
    /// mailboxes: a channel joined gets ours, an erased one loses its name.
    fn keep_event(&mut self, event: Event) {
        if let Event::Joined { channel, .. } = &event {
            // Our mailbox in it is the one our key package named.
            let own = self
                .engine
                .channel(channel)
                .ok()
                .and_then(|c| c.members.into_iter().find(|m| m.is_self));
            if let Some(me) = own
                && let Err(e) = self.bind(&me.mailbox, *channel)
            {
                // `deliver` keeps what comes to it unacknowledged, and the next
                // start binds it.
                self.relay_errors
                    .push(format!("could not record a mailbox: {e}"));
            }
        }
        if let Event::Erased { channel, .. } = &event {
            // As the store now has them: under no name, until retired.
            for m in self.mailboxes.values_mut() {
                if m.channel == Some(*channel) {
                    m.channel = Some(ChannelId::ERASED);
                }
            }
        }
        self.events.push_back(event)
    }

    pub(crate) fn dispatch(&mut self, t: Transmit) {
        let Ok(blob) = <[u8; BLOB_LEN]>::try_from(t.blob) else {
            return;
        };
        if self.in_flight.insert(t.id) {
            self.transmitted += 1;
        }
        let link = self.link(&t.to.relay);
        let _ = link.send(LinkCommand::Send {
            id: t.id,
            send_id: t.to.send_id,
            ttl_secs: t.ttl_secs,
            blob: Box::new(blob),
        });
    }

    /// Hands everything in the outbox (from earlier runs too) to the links.
    pub fn resend_outbox(&mut self) -> Result<(), ClientError> {
        for t in self.store().outbox()? {
            if !self.in_flight.contains(&t.id) {
                self.dispatch(t);
            }
        }
        Ok(())
    }

    /// Subscribes to every mailbox of every channel we are active in.
    pub fn subscribe_all(&mut self) {
        let active: HashSet<ChannelId> = self
            .engine
            .channels()
            .into_iter()
            .filter(|c| c.status != backchannel_core::store::ChannelStatus::Closed)
            .map(|c| c.id)
            .collect();
        let pending: HashSet<MailboxId> = self
            .store()
            .pending_join_mailboxes()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let wanted: Vec<MailboxRecord> = self
            .mailboxes
            .values()
            .filter(|m| {
                m.channel.is_some_and(|c| active.contains(&c)) || pending.contains(&m.read_id)
            })
            .cloned()
            .collect();
        for m in wanted {
            if self.awaiting.contains_key(&m.read_id) {
                continue;
            }
            self.awaiting.insert(m.read_id, Catchup::default());
            let key = SigningKey::from_bytes(&m.auth_seed);
            let link = self.link(&m.relay);
            let _ = link.send(LinkCommand::Subscribe {
                read_id: m.read_id,
                key,
            });
        }
    }

    /// Blobs the engine produced for relays since this client opened (each counted
    /// once, however often it is sent again).
    pub fn transmitted(&self) -> u64 {
        self.transmitted
    }

    /// Outbox entries handed to relays and not yet stored by them.
    pub fn unsent(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether every subscription has delivered its backlog and the outbox is empty.
    fn settled(&self) -> bool {
        self.in_flight.is_empty() && self.awaiting.values().all(Catchup::done)
    }

    /// Catches up: sends the outbox, receives every mailbox's backlog, and returns
    /// once everything is settled and quiet for a moment, or when `limit` passes
    /// (what is unsent stays in the outbox for next time).
    pub async fn sync(&mut self, limit: Duration) -> Result<(), ClientError> {
        self.send_due_status()?;
        self.resend_outbox()?;
        self.subscribe_all();
        self.run_until(limit, true).await?;
        self.retire_closed().await
    }

    /// Deletes, at their relays, the mailboxes of channels we are no longer in
    /// (closed, erased or expired) and of invite links that were used or expired.
    pub async fn retire_closed(&mut self) -> Result<(), ClientError> {
        for read_id in self.store().closed_invite_links(now())? {
            // Requests and answers already in the outbox go first.
            if self.mailboxes.contains_key(&read_id) {
                self.delete_mailbox(read_id).await?;
            }
            self.store().forget_invite_link(&read_id)?;
        }
        let active: HashSet<ChannelId> = self
            .engine
            .channels()
            .into_iter()
            .filter(|c| c.status != backchannel_core::store::ChannelStatus::Closed)
            .map(|c| c.id)
            .collect();
        let retire: Vec<MailboxId> = self
            .mailboxes
            .values()
            .filter(|m| m.channel.is_some_and(|c| !active.contains(&c)))
            .map(|m| m.read_id)
            .collect();
        if retire.is_empty() {
            return Ok(());
        }
        for read_id in retire {
            self.delete_mailbox(read_id).await?;
        }
        // The mailbox keys (and sent blobs) were deleted; leave no image in the log.
        self.store().checkpoint()?;
        Ok(())
    }

    /// Waits until everything handed to the relays is stored (or `limit` passes).
    pub async fn flush(&mut self, limit: Duration) -> Result<(), ClientError> {
        self.resend_outbox()?;
        self.run_until(limit, false).await
    }

    async fn run_until(&mut self, limit: Duration, quiet: bool) -> Result<(), ClientError> {
        let deadline = Instant::now() + limit;
        let mut quiet_since: Option<Instant> = None;
        loop {
            if !quiet && self.in_flight.is_empty() {
                // A flush waits for the relays to store what we sent, not for them
                // to deliver what they hold for us.
                return Ok(());
            }
            if self.settled() {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.config.quiet {
                    return Ok(());
                }
            } else {
                quiet_since = None;
            }
            let now_instant = Instant::now();
            if now_instant >= deadline {
                let unsent = self.in_flight.len();
                let detail = match self.relay_errors.last() {
                    Some(e) => format!(": {e}"),
                    None => String::new(),
                };
                return Err(ClientError::Timeout(if unsent > 0 {
                    format!(
                        "{unsent} message(s) not yet accepted by a relay; they stay queued and \
                         go out the next time{detail}"
                    )
                } else {
                    format!("the relays did not deliver everything in time{detail}")
                }));
            }
            let wait = (deadline - now_instant).min(self.config.quiet);
            self.step(wait).await?;
        }
    }

    /// Keeps processing relay events and timers for `duration`.
    pub async fn idle(&mut self, duration: Duration) -> Result<(), ClientError> {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let left = end - Instant::now();
            self.step(left.min(Duration::from_millis(50))).await?;
        }
        Ok(())
    }

    /// Sends our status where the last is older than the status interval.
    fn send_due_status(&mut self) -> Result<(), ClientError> {
        let interval = self.config.status_interval.as_millis() as u64;
        if self.engine.send_due_status(now(), interval)? > 0 {
            self.pump();
        }
        Ok(())
    }

    /// Waits up to `wait` for one relay event or engine timer, and handles it.
    /// Returns whether anything happened. Our status goes out when due.
    pub async fn step(&mut self, wait: Duration) -> Result<bool, ClientError> {
        self.send_due_status()?;
        let timer = self.engine.poll_timeout().map(|d| d.at);
        let wait = match timer {
            Some(t) => Duration::from_millis(t.0.saturating_sub(now().0)).min(wait),
            None => wait,
        };
        let event = tokio::time::timeout(wait, self.events_rx.recv()).await;
        if timer.is_some_and(|t| t <= now()) {
            self.engine.handle_timeout(now())?;
            self.pump();
        }
        let handled = match event {
            Ok(Some(event)) => {
                self.handle(event)?;
                true
            }
            _ => false,
        };
        Ok(handled)
    }

    fn handle(&mut self, event: LinkEvent) -> Result<(), ClientError> {
        match event {
            LinkEvent::Stored { id } => {
                self.in_flight.remove(&id);
                self.store().remove_transmit(id)?;
            }
            LinkEvent::Refused { id, code } => {
                // The recipient's mailbox is gone (or the relay will never take the
                // blob): nothing more to do for it.
                self.in_flight.remove(&id);
                self.store().remove_transmit(id)?;
                self.relay_errors
                    .push(format!("a message was refused: {code}"));
            }
            LinkEvent::Subscribed { read_id, backlog } => {
                if let Some(c) = self.awaiting.get_mut(&read_id) {
                    c.backlog = Some(backlog);
                }
            }
            LinkEvent::SubscribeFailed { read_id, error } => {
                self.awaiting.remove(&read_id);
                self.relay_errors.push(error);
            }
            LinkEvent::Down { relay, error } => {
                self.relay_errors.push(format!("{relay}: {error}"));
                // Subscriptions come back with the connection.
                for m in self.mailboxes.values().filter(|m| m.relay == relay) {
                    if let Some(c) = self.awaiting.get_mut(&m.read_id) {
                        *c = Catchup::default();
                    }
                }
            }
            LinkEvent::Delivery {
                read_id,
                message_id,
                blob,
            } => self.deliver(read_id, message_id, blob)?,
        }
        Ok(())
    }

    fn deliver(
        &mut self,
        read_id: MailboxId,
        message_id: u64,
        blob: Blob,
    ) -> Result<(), ClientError> {
        if let Some(c) = self.awaiting.get_mut(&read_id) {
            c.received += 1;
        }
        let Some(mailbox) = self.mailboxes.get(&read_id).cloned() else {
            return Ok(());
        };
        let link = self.link(&mailbox.relay);
        if message_id > mailbox.last_processed {
            if self.take_invite_blob(&mailbox, message_id, &blob[..])? {
                // An invite link's mailbox, or the answer to our request to join.
            } else if let Some(channel) = mailbox.channel {
                let result =
                    self.engine
                        .handle_incoming_then(now(), &channel, &blob[..], |store| {
                            store.set_last_processed(&read_id, message_id)
                        });
                match result {
                    Ok(()) => {}
                    // The channel is gone (erased): the message has nowhere to go.
                    Err(CommandError::UnknownChannel(_)) => {}
                    // The store failed: do not acknowledge; it will come again.
                    Err(e) => return Err(e.into()),
                }
                self.pump();
            } else {
                // A channel's mailbox we could not bind yet: not acknowledged, so
                // the relay keeps it for when we can.
                return Ok(());
            }
            if let Some(m) = self.mailboxes.get_mut(&read_id) {
                m.last_processed = message_id;
            }
        }
        let _ = link.send(LinkCommand::Ack {
            read_id,
            message_id,
        });
        Ok(())
    }

    /// Deletes a mailbox at its relay and forgets it.
    pub async fn delete_mailbox(&mut self, read_id: MailboxId) -> Result<(), ClientError> {
        let Some(m) = self.mailboxes.get(&read_id).cloned() else {
            return Ok(());
        };
        let link = self.link(&m.relay);
        let (reply, rx) = oneshot::channel();
        let _ = link.send(LinkCommand::Forget { read_id });
        let _ = link.send(LinkCommand::Delete {
            read_id,
            key: SigningKey::from_bytes(&m.auth_seed),
            reply,
        });
        let relay_error = |error| ClientError::Relay {
            relay: m.relay.to_string(),
            error,
        };
        match tokio::time::timeout(self.config.timing.timeout * 2, rx).await {
            Ok(Ok(Ok(()))) | Ok(Ok(Err(RelayClientError::Refused(ErrorCode::UnknownMailbox)))) => {}
            Ok(Ok(Err(e))) => return Err(relay_error(e)),
            Ok(Err(_)) => return Err(relay_error(RelayClientError::Closed)),
            Err(_) => return Err(relay_error(RelayClientError::Timeout)),
        }
        self.store().delete_mailbox_record(&read_id)?;
        self.mailboxes.remove(&read_id);
        self.awaiting.remove(&read_id);
        Ok(())
    }

    /// Our mailboxes.
    pub fn mailboxes(&self) -> impl Iterator<Item = &MailboxRecord> {
        self.mailboxes.values()
    }

    /// Records, in memory, what a mailbox is now for (the store changes it with
    /// the row that decides it: an invite link, our pending request).
    pub(crate) fn set_purpose(&mut self, read_id: &MailboxId, purpose: MailboxPurpose) {
        if let Some(m) = self.mailboxes.get_mut(read_id) {
            m.purpose = purpose;
        }
    }
}
