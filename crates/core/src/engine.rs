//! The engine: channels as MLS groups, driven by inputs, producing outputs.
//!
//! # Order of calls
//!
//! Every input — a command ([`Engine::create_channel`], [`Engine::send_text`], ...),
//! bytes that arrived ([`Engine::handle_incoming`]) or the passing of time
//! ([`Engine::handle_timeout`]) — takes the current time and runs in one storage
//! transaction: it is applied entirely or not at all. After each input, drain
//! [`Engine::poll_output`] until it returns `None`, send every
//! [`Transmit`](crate::Transmit), show every [`Event`], and call
//! [`Engine::handle_timeout`] no later than
//! [`Engine::poll_timeout`]. Outputs of an input appear only once its transaction has
//! committed, so nothing is sent that the store does not remember having sent.
//!
//! The engine reads no clock and opens no socket; randomness comes from the OpenMLS
//! provider.

use std::collections::{BTreeMap, VecDeque};

use backchannel_proto::addr::MailboxAddr;
use backchannel_proto::control::Control;
use backchannel_proto::member::{ChannelPolicy, MemberInfo, check_name};
use backchannel_proto::payload::PayloadKind;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;

use crate::channel::{
    Channel, Live, accept_welcome, credential_for, group_extensions, group_id_bytes,
    group_storage_key, leaf_extensions, new_signer, policy_of,
};
use crate::context::{
    ChannelOptions, CommandError, Ctx, EngineConfig, Output, StepIn, Storage, internal, store_err,
};
use crate::derive::MemberId;
use crate::event::Event;
use crate::introduction::{IntroId, IntroState};
use crate::mls::{self, Backend, Suite};
use crate::store::{ChannelRecord, ChannelStatus, EngineStore, MemberRecord, MessageRecord};
use crate::{ChannelId, ChannelRef, Timestamp};

mod introduce;

/// How long introduction steps wait after the store failed to carry one out.
const STEP_RETRY_MS: u64 = 5_000;

/// The Backchannel client engine. See the module documentation for the order of
/// calls.
pub struct Engine<S: Storage> {
    pub(crate) backend: Backend<S>,
    config: EngineConfig,
    channels: BTreeMap<ChannelId, Channel>,
    outputs: VecDeque<Output>,
    staged: Vec<Output>,
    /// Set when an input erased something.
    scrub: std::cell::Cell<bool>,
    /// Every introduction we take part in, by identifier (kept in the store too).
    intros: BTreeMap<IntroId, IntroState>,
    /// Introduction steps that arrived, carried out once their input commits (the
    /// store keeps them until then).
    steps: VecDeque<StepIn>,
    /// Steps are being carried out: the transactions they run do not start again.
    carrying_out: bool,
    /// Steps wait until then after the store failed to carry one out.
    steps_after: Timestamp,
}

/// Which timer falls due (see [`Engine::poll_timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timer {
    /// A sender's missing message: its grace period ends, then an alert.
    Gap,
    /// An input the channel could not read yet has waited its grace period.
    Pending,
    /// A member announced an epoch we have not reached: the update may be withheld.
    Withheld,
    /// The channel's end date.
    ChannelEnd,
    /// The oldest message's disappearing time.
    Disappearing,
    /// Our burn's wait for the members' receipts.
    BurnWait,
    /// An introduction step that arrived waits to be carried out (due at once).
    Introduction,
}

/// The next timer to fall due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// When.
    pub at: Timestamp,
    /// In which channel.
    pub channel: ChannelId,
    /// Which timer.
    pub timer: Timer,
}

/// A summary of a channel for listing.
#[derive(Clone, Debug)]
pub struct ChannelSummary {
    /// The identifier.
    pub id: ChannelId,
    /// The local name.
    pub name: String,
    /// The ciphersuite.
    pub suite: Suite,
    /// Active, leaving or closed.
    pub status: ChannelStatus,
    /// The current MLS epoch (0 when closed).
    pub epoch: u64,
    /// The members as of the current epoch.
    pub members: Vec<MemberRecord>,
    /// Whether we administer it.
    pub admin: bool,
    /// The channel's rules (None when closed).
    pub policy: Option<ChannelPolicy>,
    /// Our member identifier in this channel.
    pub own_member: MemberId,
    /// What other members last reported of their view.
    pub peers: Vec<crate::store::PeerView>,
    /// Our burn of the channel, while it waits for the members' receipts.
    pub burn: Option<crate::store::BurnState>,
    /// The members whose safety number we compared (with their current key).
    pub verified: Vec<MemberId>,
}

impl<S: Storage> Engine<S> {
    /// Loads every channel from the store.
    pub fn load(storage: S, config: EngineConfig) -> Result<Self, CommandError> {
        let backend = Backend::new(storage).map_err(internal)?;
        let mut engine = Self {
            backend,
            config,
            channels: BTreeMap::new(),
            outputs: VecDeque::new(),
            staged: Vec::new(),
            scrub: std::cell::Cell::new(false),
            intros: BTreeMap::new(),
            steps: VecDeque::new(),
            carrying_out: false,
            steps_after: Timestamp(0),
        };
        engine.reload()?;
        Ok(engine)
    }

    /// The storage provider.
    pub fn store(&self) -> &S {
        self.backend.store()
    }

    /// The next output, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next, if at all, and which
    /// timer of which channel falls due then (the earliest).
    pub fn poll_timeout(&self) -> Option<Deadline> {
        let grace_gap = self.config.gap_grace_ms;
        let grace_pending = self.config.pending_grace_ms;
        self.channels
            .values()
            .flat_map(|ch| {
                let gaps = ch
                    .senders
                    .values()
                    .filter_map(move |s| s.deadline(grace_gap))
                    .map(|at| (at, Timer::Gap));
                let pending = ch
                    .pending
                    .iter()
                    .map(move |(_, p)| (p.received_at().plus_ms(grace_pending), Timer::Pending));
                let expected = ch
                    .record
                    .integrity
                    .expected
                    .as_ref()
                    .map(move |e| (e.since.plus_ms(grace_gap), Timer::Withheld));
                let steps = self
                    .steps
                    .iter()
                    .filter(move |s| s.channel == ch.record.id)
                    .map(|_| (self.steps_after, Timer::Introduction));
                gaps.chain(pending)
                    .chain(expected)
                    .chain(steps)
                    .chain(ch.lifecycle_deadline())
                    .map(|(at, timer)| Deadline {
                        at,
                        channel: ch.record.id,
                        timer,
                    })
            })
            .min_by_key(|d| d.at)
    }

    /// What a channel waits for now: gaps in senders' numbers, inputs it cannot
    /// read yet, an update others reached. Each becomes an alert if its grace period
    /// ends first; until then it is shown as waiting.
    pub fn pending<'a>(
        &self,
        channel: impl Into<ChannelRef<'a>>,
    ) -> Result<crate::Pending, CommandError> {
        let id = self.channel_id(channel)?;
        let ch = self
            .channels
            .get(&id)
            .ok_or_else(|| CommandError::UnknownChannel(id.to_string()))?;
        let gaps = ch
            .senders
            .values()
            .filter_map(|s| {
                let since = s.gap_since?;
                let missing = s.missing();
                (!missing.is_empty()).then(|| crate::Gap {
                    from: s.name.clone(),
                    missing,
                    since,
                    reported_by: s.claimed_by.as_ref().map(|c| c.name.clone()),
                })
            })
            .collect();
        Ok(crate::Pending {
            gaps,
            parked: ch.pending.len(),
            update: ch.record.integrity.expected.clone(),
        })
    }

    /// Whether any channel waits for something (see [`Engine::pending`]).
    pub fn is_waiting(&self) -> bool {
        self.channels.values().any(|ch| {
            !ch.pending.is_empty()
                || ch.record.integrity.expected.is_some()
                || ch.senders.values().any(|s| s.gap_since.is_some())
        })
    }

    /// Every channel, by name.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        self.channels.values().map(|ch| self.summary(ch)).collect()
    }

    /// One channel, by local name or identifier.
    pub fn channel<'a>(
        &self,
        channel: impl Into<ChannelRef<'a>>,
    ) -> Result<ChannelSummary, CommandError> {
        let id = self.channel_id(channel)?;
        let ch = self
            .channels
            .get(&id)
            .ok_or_else(|| CommandError::UnknownChannel(id.to_string()))?;
        Ok(self.summary(ch))
    }

    /// The identifier of a channel named by local name or identifier (an
    /// identifier is checked to be one of ours).
    pub fn channel_id<'a>(
        &self,
        channel: impl Into<ChannelRef<'a>>,
    ) -> Result<ChannelId, CommandError> {
        match channel.into() {
            ChannelRef::Name(name) => self
                .channels
                .values()
                .find(|ch| ch.record.name == name)
                .map(|ch| ch.record.id)
                .ok_or_else(|| CommandError::UnknownChannel(name.into())),
            ChannelRef::Id(id) => self
                .channels
                .contains_key(&id)
                .then_some(id)
                .ok_or_else(|| CommandError::UnknownChannel(id.to_string())),
        }
    }

    /// A channel's history, in arrival order, after store position `after`.
    pub fn history<'a>(
        &self,
        channel: impl Into<ChannelRef<'a>>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, CommandError> {
        let id = self.channel_id(channel)?;
        self.store().messages(&id, after, limit).map_err(store_err)
    }

    /// The epoch authenticator of a channel's current epoch: equal for every member
    /// in the same epoch with the same history of commits.
    pub fn epoch_authenticator<'a>(
        &self,
        channel: impl Into<ChannelRef<'a>>,
    ) -> Result<Vec<u8>, CommandError> {
        let id = self.channel_id(channel)?;
        let live = self.live(&id)?;
        Ok(live.group.epoch_authenticator().as_slice().to_vec())
    }

    fn summary(&self, ch: &Channel) -> ChannelSummary {
        let policy = ch.live.as_ref().and_then(|l| policy_of(&l.group));
        ChannelSummary {
            id: ch.record.id,
            own_member: ch.record.own_member,
            peers: ch.record.integrity.peers.clone(),
            burn: ch.record.burn.clone(),
            verified: ch
                .members
                .iter()
                .filter(|m| ch.is_verified(m))
                .map(|m| m.member)
                .collect(),
            name: ch.record.name.clone(),
            suite: ch.record.suite,
            status: ch.record.status,
            epoch: ch
                .live
                .as_ref()
                .map(|l| l.group.epoch().as_u64())
                .unwrap_or(0),
            members: ch.members.clone(),
            admin: policy
                .as_ref()
                .is_some_and(|p| p.admin == ch.record.signature_key),
            policy,
        }
    }

    pub(crate) fn live(&self, id: &ChannelId) -> Result<&Live, CommandError> {
        self.channels
            .get(id)
            .and_then(|ch| ch.live.as_ref())
            .ok_or(CommandError::NotActive)
    }

    // ----- Commands ---------------------------------------------------------------

    /// Creates a channel with us as its only member and administrator.
    pub fn create_channel(
        &mut self,
        now: Timestamp,
        name: &str,
        own_name: &str,
        options: ChannelOptions,
        mailbox: MailboxAddr,
    ) -> Result<ChannelId, CommandError> {
        self.check_local_name(name)?;
        check_name(own_name).map_err(CommandError::InvalidName)?;
        if options.expires_at.is_some_and(|t| t <= now) {
            return Err(CommandError::Expired);
        }
        self.transact(now, |engine| {
            engine.create_channel_in(now, name, own_name, options, mailbox)
        })
    }

    /// [`Engine::create_channel`] inside a transaction.
    pub(crate) fn create_channel_in(
        &mut self,
        now: Timestamp,
        name: &str,
        own_name: &str,
        options: ChannelOptions,
        mailbox: MailboxAddr,
    ) -> Result<ChannelId, CommandError> {
        let suite = options.suite;
        let provider = &self.backend;
        let signer = new_signer(provider)?;
        let credential = credential_for(&signer);
        let info = MemberInfo {
            name: own_name.to_owned(),
            mailbox: mailbox.clone(),
        };
        let policy = ChannelPolicy {
            admin: signer.public().to_vec(),
            title: name.to_owned(),
            disappearing_secs: options.disappearing_secs,
            expires_at: options.expires_at.map(|t| t.0).unwrap_or(0),
        };
        let config = mls::create_config(suite, leaf_extensions(&info)?, group_extensions(&policy)?)
            .map_err(internal)?;
        let group_id: [u8; 16] = provider.rand().random_array().map_err(internal)?;
        let group = MlsGroup::new_with_group_id(
            provider,
            &signer,
            &config,
            GroupId::from_slice(&group_id),
            credential,
        )
        .map_err(internal)?;
        let id = ChannelId(group_id);
        let record = ChannelRecord::new(
            id,
            name.to_owned(),
            suite,
            signer.public().to_vec(),
            mailbox,
            now,
        );
        let mut channel = Channel::fresh(record, Live { group, signer });
        let mut ctx = self.ctx(now);
        channel.enter_epoch(&mut ctx)?;
        self.channels.insert(id, channel);
        Ok(id)
    }

    /// Makes a single-use key package with a fresh identity: hand it to a channel's
    /// administrator to be added. `name` is how we will appear in that channel and
    /// `mailbox` where its members will send to us.
    pub fn key_package(
        &mut self,
        now: Timestamp,
        name: &str,
        suite: Suite,
        mailbox: MailboxAddr,
    ) -> Result<Vec<u8>, CommandError> {
        check_name(name).map_err(CommandError::InvalidName)?;
        self.transact(now, |engine| {
            let mut ctx = engine.ctx(now);
            crate::integrity::build_key_package(&mut ctx, name, suite, mailbox).map(|(_, kp)| kp)
        })
    }

    /// Joins a channel from a welcome made for one of our key packages, under the
    /// local name `name` (by default the title its creator gave it).
    pub fn join(
        &mut self,
        now: Timestamp,
        name: Option<&str>,
        welcome: &[u8],
    ) -> Result<ChannelId, CommandError> {
        if let Some(name) = name {
            self.check_local_name(name)?;
        }
        self.transact(now, |engine| engine.join_in(now, name, welcome))
    }

    /// [`Engine::join`] inside a transaction.
    pub(crate) fn join_in(
        &mut self,
        now: Timestamp,
        name: Option<&str>,
        welcome: &[u8],
    ) -> Result<ChannelId, CommandError> {
        let (group, signer, kp, policy, inviter_name) =
            accept_welcome(&self.backend, welcome, false)?;
        let name = match name {
            Some(name) => name.to_owned(),
            None => {
                self.check_local_name(&policy.title)?;
                policy.title.clone()
            }
        };
        self.backend
            .store()
            .delete_key_package_record(&kp.signature_key)
            .map_err(store_err)?;
        let id = ChannelId(group_id_bytes(&group)?);
        if self.channels.contains_key(&id) {
            return Err(CommandError::InvalidWelcome(
                "you are in this channel already".into(),
            ));
        }
        let record = ChannelRecord::new(id, name, kp.suite, kp.signature_key, kp.mailbox, now);
        let mut channel = Channel::fresh(record, Live { group, signer });
        let mut ctx = self.ctx(now);
        channel.enter_epoch(&mut ctx)?;
        ctx.event(Event::Joined {
            channel: id,
            title: policy.title.clone(),
            by: inviter_name,
        });
        self.channels.insert(id, channel);
        Ok(id)
    }

    /// Adds the owner of a key package to a channel we administer. Returns the welcome
    /// to hand to them.
    pub fn add_member<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        key_package: &[u8],
    ) -> Result<Vec<u8>, CommandError> {
        self.add_members(now, channel, &[key_package])
    }

    /// Adds several people in one commit. Returns one welcome that serves them all.
    pub fn add_members<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        key_packages: &[&[u8]],
    ) -> Result<Vec<u8>, CommandError> {
        let id = self.channel_id(channel)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.add_members(&mut ctx, key_packages)
        })
    }

    /// Removes a member from a channel we administer.
    pub fn remove_member<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        member: &str,
    ) -> Result<(), CommandError> {
        let id = self.channel_id(channel)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.remove_member(&mut ctx, member)
        })
    }

    /// Replaces our keys in a channel (post-compromise security). The administrator
    /// commits at once; another member proposes, and the administrator's client
    /// commits the proposal when it arrives.
    pub fn self_update<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
    ) -> Result<(), CommandError> {
        let id = self.channel_id(channel)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.self_update(&mut ctx)
        })
    }

    /// Leaves a channel. An administrator first hands the role to the member who has
    /// been in the channel longest.
    pub fn leave<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
    ) -> Result<(), CommandError> {
        let id = self.channel_id(channel)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.leave(&mut ctx)
        })
    }

    /// Sends a text message to every other member.
    pub fn send_text<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        text: &str,
    ) -> Result<MessageRecord, CommandError> {
        self.send_for_people(now, channel, PayloadKind::Text, text.as_bytes().to_vec())
    }

    /// Sends a file's descriptor (the file itself is on a relay already) to every
    /// other member.
    pub fn send_attachment<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        descriptor: &backchannel_proto::attachment::Descriptor,
    ) -> Result<MessageRecord, CommandError> {
        self.send_for_people(now, channel, PayloadKind::Attachment, descriptor.encode())
    }

    fn send_for_people<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
        kind: PayloadKind,
        body: Vec<u8>,
    ) -> Result<MessageRecord, CommandError> {
        let id = self.channel_id(channel)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            let record = ch.send_payload(&mut ctx, kind, body)?;
            // Now and then, our view of the channel goes along.
            let due =
                ch.record.integrity.last_status_at.is_none_or(|t| {
                    now.0 >= t.0.saturating_add(crate::integrity::STATUS_INTERVAL_MS)
                });
            if due {
                ch.send_status(&mut ctx, false)?;
            }
            Ok(record)
        })
    }

    /// Sends our status in every active channel whose last status is older than
    /// `interval_ms`: a sender's own word on how far its messages go, so that a relay
    /// withholding our last messages is caught while we are online (a withheld
    /// message is reported at most `interval_ms` plus the gap grace period after its
    /// sender was last online). Returns how many went out.
    pub fn send_due_status(
        &mut self,
        now: Timestamp,
        interval_ms: u64,
    ) -> Result<usize, CommandError> {
        let due: Vec<ChannelId> = self
            .channels
            .values()
            .filter(|ch| {
                ch.live.is_some()
                    && ch.record.status == ChannelStatus::Active
                    && ch
                        .record
                        .integrity
                        .last_status_at
                        .is_none_or(|t| now.0 >= t.0.saturating_add(interval_ms))
            })
            .map(|ch| ch.record.id)
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        self.transact(now, |engine| {
            for id in &due {
                let (ch, mut ctx) = engine.channel_ctx(id, now)?;
                ch.send_status(&mut ctx, false)?;
            }
            Ok(due.len())
        })
    }

    /// Sends our view of the channel to every member and asks for theirs. Their
    /// answers update [`ChannelSummary::peers`]; any disagreement raises an alert.
    pub fn request_status<'a>(
        &mut self,
        now: Timestamp,
        channel: impl Into<ChannelRef<'a>>,
    ) -> Result<(), CommandError> {
        let id = self.channel_id(channel)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.live()?;
            ch.send_status(&mut ctx, true)
        })
    }

    // ----- Inputs -----------------------------------------------------------------

    /// A blob arrived in the inbound mailbox of a channel. Problems with the blob
    /// become alerts; `Err` means only that the store failed (nothing was changed and
    /// the blob must not be acknowledged).
    pub fn handle_incoming(
        &mut self,
        now: Timestamp,
        channel: &ChannelId,
        blob: &[u8],
    ) -> Result<(), CommandError> {
        self.handle_incoming_then(now, channel, blob, |_| Ok(()))
    }

    /// Like [`Engine::handle_incoming`], and runs `also` in the same transaction: the
    /// driver records there that it has processed this delivery, so that a crash
    /// cannot leave the blob applied but unrecorded, or recorded but unapplied.
    pub fn handle_incoming_then(
        &mut self,
        now: Timestamp,
        channel: &ChannelId,
        blob: &[u8],
        also: impl FnOnce(&S) -> Result<(), <S as EngineStore>::Error>,
    ) -> Result<(), CommandError> {
        if !self.channels.contains_key(channel) {
            return Err(CommandError::UnknownChannel(channel.to_string()));
        }
        self.transact(now, |engine| {
            // A blob one of our other channels opens was moved here by the relay.
            let opens_here = engine
                .channels
                .get(channel)
                .is_some_and(|c| c.open(blob).is_some());
            let elsewhere = !opens_here
                && engine
                    .channels
                    .values()
                    .filter(|other| other.record.id != *channel)
                    .any(|other| other.open(blob).is_some());
            if let Some(ch) = engine.channels.get_mut(channel) {
                let mut ctx = Ctx {
                    backend: &engine.backend,
                    config: &engine.config,
                    staged: &mut engine.staged,
                    now,
                    scrub: &engine.scrub,
                    steps: &mut engine.steps,
                };
                ch.receive_blob(&mut ctx, blob.to_vec(), elsewhere)?;
                ch.drain_pending(&mut ctx)?;
            }
            also(engine.backend.store()).map_err(store_err)
        })
    }

    /// Time has passed: report gaps and inputs that waited too long.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), CommandError> {
        if self.poll_timeout().is_none_or(|d| d.at > now) {
            return Ok(());
        }
        self.transact(now, |engine| {
            let Engine {
                backend,
                config,
                channels,
                staged,
                scrub,
                steps,
                ..
            } = engine;
            for ch in channels.values_mut() {
                let mut ctx = Ctx {
                    backend,
                    config,
                    staged,
                    now,
                    scrub,
                    steps,
                };
                ch.expire(&mut ctx)?;
                ch.lifecycle_timeout(&mut ctx)?;
            }
            Ok(())
        })
    }

    // ----- Plumbing ---------------------------------------------------------------

    fn ctx(&mut self, now: Timestamp) -> Ctx<'_, S> {
        Ctx {
            backend: &self.backend,
            config: &self.config,
            staged: &mut self.staged,
            now,
            scrub: &self.scrub,
            steps: &mut self.steps,
        }
    }

    fn channel_ctx(
        &mut self,
        id: &ChannelId,
        now: Timestamp,
    ) -> Result<(&mut Channel, Ctx<'_, S>), CommandError> {
        let ch = self
            .channels
            .get_mut(id)
            .ok_or_else(|| CommandError::UnknownChannel(id.to_string()))?;
        Ok((
            ch,
            Ctx {
                backend: &self.backend,
                config: &self.config,
                staged: &mut self.staged,
                now,
                scrub: &self.scrub,
                steps: &mut self.steps,
            },
        ))
    }

    fn check_local_name(&self, name: &str) -> Result<(), CommandError> {
        check_name(name).map_err(CommandError::InvalidName)?;
        if self.channels.values().any(|ch| ch.record.name == name) {
            return Err(CommandError::NameTaken(name.to_owned()));
        }
        Ok(())
    }

    /// Runs `f` in one store transaction. On success the staged outputs are released;
    /// on failure the store is rolled back and the in-memory state reloaded from it.
    fn transact<T>(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut Self) -> Result<T, CommandError>,
    ) -> Result<T, CommandError> {
        self.store().begin().map_err(store_err)?;
        let result = f(self).and_then(|value| {
            // Whatever is to be sent goes into the outbox, and every alert into the
            // alert log, in the same transaction.
            let store = self.backend.store();
            for output in &mut self.staged {
                match output {
                    Output::Transmit(t) => t.id = store.enqueue_transmit(t).map_err(store_err)?,
                    Output::Event(Event::Alert { channel, alert }) => store
                        .add_alert(channel, now, alert.kind(), &alert.to_string())
                        .map_err(store_err)?,
                    Output::Event(_) => {}
                }
            }
            // An erased channel leaves no row behind, not even an alert written
            // after it was erased (its outbox goes once the relays have it). A
            // channel an introduction made outlives the one it came through: it
            // keeps who introduced, under no channel.
            let erased: Vec<ChannelId> = self
                .channels
                .values()
                .filter(|ch| ch.erased)
                .map(|ch| ch.record.id)
                .collect();
            for (id, state) in &mut self.intros {
                if let IntroState::Connected {
                    introducer,
                    channel,
                    ..
                } = state
                    && erased.contains(&introducer.channel)
                    && !erased.contains(channel)
                {
                    introducer.channel = ChannelId::ERASED;
                    introducer.member = MemberId::default();
                    store.save_introduction(id, state).map_err(store_err)?;
                }
            }
            for ch in self.channels.values().filter(|ch| ch.erased) {
                store.delete_channel(&ch.record.id).map_err(store_err)?;
                store
                    .erase_mls_residue(&group_storage_key(&ch.record.id))
                    .map_err(store_err)?;
            }
            self.store().commit().map_err(store_err)?;
            Ok(value)
        });
        match result {
            Ok(value) => {
                self.outputs.extend(self.staged.drain(..));
                let before = self.channels.len();
                self.channels.retain(|_, ch| !ch.erased);
                if self.channels.len() != before {
                    // The store erased the introductions and steps that named them.
                    let channels = &self.channels;
                    let known = |c: &ChannelId| *c == ChannelId::ERASED || channels.contains_key(c);
                    self.intros
                        .retain(|_, state| state.channels().iter().all(known));
                    self.steps.retain(|s| channels.contains_key(&s.channel));
                }
                if !self.carrying_out && now >= self.steps_after {
                    self.carrying_out = true;
                    while let Some(step) = self.steps.pop_front() {
                        if !self.carry_out(now, step) {
                            // The store failed: the steps wait a little.
                            self.steps_after = now.plus_ms(STEP_RETRY_MS);
                            break;
                        }
                    }
                    self.carrying_out = false;
                }
                // Overwrite what the erasure freed, in the log too. The input has
                // taken effect: a scrub that fails is tried again after the next one.
                if (self.channels.len() != before || self.scrub.replace(false))
                    && self.store().scrub().is_err()
                {
                    self.scrub.set(true);
                }
                Ok(value)
            }
            Err(error) => {
                self.staged.clear();
                let _ = self.store().rollback();
                self.reload()?;
                Err(error)
            }
        }
    }

    /// Runs `f` on one channel in one transaction.
    pub(crate) fn transact_on<T>(
        &mut self,
        now: Timestamp,
        id: &ChannelId,
        f: impl FnOnce(&mut Channel, &mut Ctx<'_, S>) -> Result<T, CommandError>,
    ) -> Result<T, CommandError> {
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(id, now)?;
            f(ch, &mut ctx)
        })
    }

    /// Rebuilds the in-memory state from the store.
    fn reload(&mut self) -> Result<(), CommandError> {
        let store = self.backend.store();
        let mut channels = BTreeMap::new();
        for record in store.channels().map_err(store_err)? {
            let id = record.id;
            let live = if record.status == ChannelStatus::Closed {
                None
            } else {
                let group = MlsGroup::load(self.backend.storage(), &GroupId::from_slice(&id.0))
                    .map_err(|e| internal(format!("{e:?}")))?
                    .ok_or_else(|| internal("a channel's MLS state is missing"))?;
                let signer = SignatureKeyPair::read(
                    self.backend.storage(),
                    &record.signature_key,
                    record.suite.ciphersuite().signature_algorithm(),
                )
                .ok_or_else(|| internal("a channel's signature key is missing"))?;
                Some(Live { group, signer })
            };
            let members = store.members(&id).map_err(store_err)?;
            let senders = store
                .senders(&id)
                .map_err(store_err)?
                .into_iter()
                .map(|s| (s.member, s))
                .collect();
            let pending = store.pending(&id).map_err(store_err)?;
            let oldest = store.oldest_message_at(&id).map_err(store_err)?;
            channels.insert(
                id,
                Channel {
                    record,
                    live,
                    members,
                    senders,
                    pending,
                    erased: false,
                    oldest,
                    sealed_tried: Vec::new(),
                },
            );
        }
        self.channels = channels;
        self.intros = store
            .introductions()
            .map_err(store_err)?
            .into_iter()
            .collect();
        // Steps not yet carried out (a crash, or a store that failed): from the
        // store, which keeps them until they are.
        self.steps = store
            .intro_steps()
            .map_err(store_err)?
            .into_iter()
            .filter_map(|(row, r)| match Control::decode(&r.control) {
                Ok(Control::Intro(intro)) => Some(StepIn {
                    row,
                    channel: r.channel,
                    from: r.from,
                    from_name: r.from_name,
                    intro,
                }),
                _ => None,
            })
            .collect();
        Ok(())
    }
}
