//! The engine: channels as MLS groups, driven by inputs, producing outputs.
//!
//! # Order of calls
//!
//! Every input — a command ([`Engine::create_channel`], [`Engine::send_text`], ...),
//! bytes that arrived ([`Engine::handle_incoming`]) or the passing of time
//! ([`Engine::handle_timeout`]) — takes the current time and runs in one storage
//! transaction: it is applied entirely or not at all. After each input, drain
//! [`Engine::poll_output`] until it returns `None`, send every [`Transmit`], show every
//! [`Event`], and call [`Engine::handle_timeout`] no later than
//! [`Engine::poll_timeout`]. Outputs of an input appear only once its transaction has
//! committed, so nothing is sent that the store does not remember having sent.
//!
//! The engine reads no clock and opens no socket; randomness comes from the OpenMLS
//! provider.

use std::collections::{BTreeMap, VecDeque};

use backchannel_proto::addr::MailboxAddr;
use backchannel_proto::envelope::{BLOB_LEN, ContentKind, Fragment};
use backchannel_proto::member::{
    CHANNEL_POLICY_EXTENSION, ChannelPolicy, MEMBER_INFO_EXTENSION, MemberInfo, check_name,
    names_clash,
};
use backchannel_proto::payload::{Payload, PayloadKind};
use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};
use tls_codec::{Deserialize as _, Serialize as _};

use crate::derive::{self, MemberId, chain_hash, member_id};
use crate::event::{Alert, Event, ReceivedMessage};
use crate::lifecycle::ChannelOptions;
use crate::mls::{self, Backend, Suite};
use crate::seal;
use crate::sequence::Arrival;
use crate::store::{
    ChannelRecord, ChannelStatus, EngineStore, EpochKey, Intent, KeyPackageRecord, MemberRecord,
    MessageKind, MessageRecord, PendingItem, SenderState,
};
use crate::{ChannelId, Timestamp};

/// Content is accepted under the envelope keys of this many recent epochs: the
/// current one and the [`crate::mls::MAX_PAST_EPOCHS`] whose MLS secrets OpenMLS
/// keeps. A message sealed under an older key (a removed member's, a replay) is
/// rejected as soon as it arrives, never parked or processed.
pub const ENVELOPE_KEY_EPOCHS: usize = 1 + crate::mls::MAX_PAST_EPOCHS;

/// Keys of this many epochs are kept, only to read epoch announcements: each is
/// sealed under the key of the epoch before the one it announces, and in a burst of
/// updates (an administrator adding people one after another) it may arrive after
/// several more. Anything else under these older keys is rejected.
pub const ANNOUNCEMENT_KEY_EPOCHS: usize = 16;

/// A storage provider the engine can run on: OpenMLS's storage plus ours.
pub trait Storage: StorageProvider<CURRENT_VERSION> + EngineStore {}
impl<T: StorageProvider<CURRENT_VERSION> + EngineStore> Storage for T {}

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How long a gap in a sender's sequence may stay open before it is reported as
    /// withheld messages.
    pub gap_grace_ms: u64,
    /// How long an input that cannot be processed yet (an unknown epoch, missing
    /// fragments) is kept before it is reported and dropped.
    pub pending_grace_ms: u64,
    /// Most inputs kept waiting per channel.
    pub max_pending: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            gap_grace_ms: 2 * 60 * 1000,
            pending_grace_ms: 10 * 60 * 1000,
            max_pending: 4096,
        }
    }
}

/// What the engine asks its driver to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Send a blob into a mailbox.
    Transmit(Transmit),
    /// Tell the person.
    Event(Event),
}

/// One blob for one mailbox. It is in the store's outbox (under `id`) from the
/// moment the input that produced it commits; remove it once the relay has stored
/// it ([`EngineStore::remove_transmit`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Transmit {
    /// Its place in the outbox.
    pub id: u64,
    /// The channel it belongs to.
    pub channel: ChannelId,
    /// The recipient's mailbox.
    pub to: MailboxAddr,
    /// Ask the relay to delete it if unread after this many seconds (0: its limit).
    pub ttl_secs: u32,
    /// Exactly [`BLOB_LEN`] bytes.
    pub blob: Vec<u8>,
}

/// Why a command failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No channel by that name or identifier.
    #[error("there is no channel called '{0}'")]
    UnknownChannel(String),
    /// A channel by that name exists already.
    #[error("a channel called '{0}' exists already")]
    NameTaken(String),
    /// The name is not acceptable.
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    /// Only the channel's administrator may do this.
    #[error("only the channel's administrator can do that")]
    NotAdmin,
    /// No member by that name.
    #[error("there is no member called '{0}' in this channel")]
    UnknownMember(String),
    /// Several members go by that name, or by names one could take for it.
    #[error("more than one member of this channel could be '{0}'; nothing was done")]
    AmbiguousMember(String),
    /// A member by that name is in the channel already.
    #[error("someone called '{0}' is in this channel already")]
    MemberNameTaken(String),
    /// The operation cannot target ourselves.
    #[error("you cannot do that to yourself; use leave")]
    IsSelf,
    /// We are no longer a member of the channel, or are leaving it.
    #[error("you are no longer an active member of this channel")]
    NotActive,
    /// The key package is malformed, badly signed, or not a Backchannel one.
    #[error("the key package is not valid: {0}")]
    InvalidKeyPackage(String),
    /// The key package is for another ciphersuite than the channel's.
    #[error("the key package is for ciphersuite {0}, the channel uses {1}")]
    SuiteMismatch(String, &'static str),
    /// The welcome is malformed or breaks our policy.
    #[error("the invitation is not valid: {0}")]
    InvalidWelcome(String),
    /// The welcome is for a key package this profile did not make (or used already).
    #[error("this invitation was not made for this profile, or was used already")]
    NotForUs,
    /// The text is too long.
    #[error("the message is too long ({0} bytes); the limit is about 64 KiB")]
    TooLong(usize),
    /// The channel's end date has passed.
    #[error("the channel has reached its end date")]
    Expired,
    /// The channel is being burned.
    #[error("the channel is being burned")]
    Burning,
    /// The store failed.
    #[error("the local store failed: {0}")]
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// A bug: OpenMLS or our own code hit an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How many messages sealed to us alone are remembered, to recognise copies.
const SEEN_TARGETED: usize = 64;

pub(crate) fn internal(e: impl std::fmt::Display) -> CommandError {
    CommandError::Internal(e.to_string())
}

pub(crate) fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> CommandError {
    CommandError::Store(Box::new(e))
}

/// A channel as held in memory.
pub(crate) struct Channel {
    pub(crate) record: ChannelRecord,
    /// `None` once the channel is closed and its keys erased.
    pub(crate) live: Option<Live>,
    pub(crate) members: Vec<MemberRecord>,
    pub(crate) senders: BTreeMap<MemberId, SenderState>,
    pub(crate) pending: Vec<(u64, PendingItem)>,
    /// Erased during the current input: the engine forgets it when the input ends.
    pub(crate) erased: bool,
    /// When the oldest message in the history arrived.
    pub(crate) oldest: Option<Timestamp>,
    /// The epochs whose envelope keys every parked sealed blob has been tried with:
    /// a blob no key opened is tried again only with a key that came since, so a
    /// mailbox full of junk costs nothing per later input.
    pub(crate) sealed_tried: Vec<u64>,
}

pub(crate) struct Live {
    pub(crate) group: MlsGroup,
    pub(crate) signer: SignatureKeyPair,
}

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
    pub burn: Option<crate::lifecycle::BurnState>,
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

    /// When [`Engine::handle_timeout`] must be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let grace_gap = self.config.gap_grace_ms;
        let grace_pending = self.config.pending_grace_ms;
        self.channels
            .values()
            .flat_map(|ch| {
                let gaps = ch
                    .senders
                    .values()
                    .filter_map(move |s| s.deadline(grace_gap));
                let pending = ch
                    .pending
                    .iter()
                    .map(move |(_, p)| p.received_at().plus_ms(grace_pending));
                let expected = ch
                    .record
                    .expected
                    .as_ref()
                    .map(move |e| e.since.plus_ms(grace_gap));
                gaps.chain(pending)
                    .chain(expected)
                    .chain(ch.lifecycle_deadline())
            })
            .min()
    }

    /// What a channel waits for now: gaps in senders' numbers, inputs it cannot
    /// read yet, an update others reached. Each becomes an alert if its grace period
    /// ends first; until then it is shown as waiting.
    pub fn pending(&self, name: &str) -> Result<crate::Pending, CommandError> {
        let id = self.channel_id(name)?;
        let ch = self
            .channels
            .get(&id)
            .ok_or_else(|| CommandError::UnknownChannel(name.to_owned()))?;
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
            update: ch.record.expected.clone(),
        })
    }

    /// Whether any channel waits for something (see [`Engine::pending`]).
    pub fn is_waiting(&self) -> bool {
        self.channels.values().any(|ch| {
            !ch.pending.is_empty()
                || ch.record.expected.is_some()
                || ch.senders.values().any(|s| s.gap_since.is_some())
        })
    }

    /// Every channel, by name.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        self.channels.values().map(|ch| self.summary(ch)).collect()
    }

    /// One channel by identifier.
    pub fn channel_by_id(&self, id: &ChannelId) -> Result<ChannelSummary, CommandError> {
        self.channels
            .get(id)
            .map(|ch| self.summary(ch))
            .ok_or_else(|| CommandError::UnknownChannel(id.to_string()))
    }

    /// One channel by local name.
    pub fn channel(&self, name: &str) -> Result<ChannelSummary, CommandError> {
        let id = self.channel_id(name)?;
        let ch = self
            .channels
            .get(&id)
            .ok_or_else(|| CommandError::UnknownChannel(name.into()))?;
        Ok(self.summary(ch))
    }

    /// The identifier of the channel with this local name.
    pub fn channel_id(&self, name: &str) -> Result<ChannelId, CommandError> {
        self.channels
            .values()
            .find(|ch| ch.record.name == name)
            .map(|ch| ch.record.id)
            .ok_or_else(|| CommandError::UnknownChannel(name.into()))
    }

    /// A channel's history, in arrival order, after store position `after`.
    pub fn history(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, CommandError> {
        let id = self.channel_id(name)?;
        self.store().messages(&id, after, limit).map_err(store_err)
    }

    /// The epoch authenticator of a channel's current epoch: equal for every member
    /// in the same epoch with the same history of commits.
    pub fn epoch_authenticator(&self, name: &str) -> Result<Vec<u8>, CommandError> {
        let id = self.channel_id(name)?;
        let live = self.live(&id)?;
        Ok(live.group.epoch_authenticator().as_slice().to_vec())
    }

    fn summary(&self, ch: &Channel) -> ChannelSummary {
        let policy = ch.live.as_ref().and_then(|l| policy_of(&l.group));
        ChannelSummary {
            id: ch.record.id,
            own_member: ch.record.own_member,
            peers: ch.record.peers.clone(),
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
        let suite = options.suite;
        self.transact(now, |engine| {
            let provider = &engine.backend;
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
            let config =
                mls::create_config(suite, leaf_extensions(&info)?, group_extensions(&policy)?)
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
            let mut channel = Channel {
                record,
                live: Some(Live { group, signer }),
                members: Vec::new(),
                senders: BTreeMap::new(),
                pending: Vec::new(),
                erased: false,
                oldest: None,
                sealed_tried: Vec::new(),
            };
            let mut ctx = engine.ctx(now);
            channel.enter_epoch(&mut ctx)?;
            engine.channels.insert(id, channel);
            Ok(id)
        })
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
        self.transact(now, |engine| {
            let (group, signer, kp, policy, inviter_name) =
                accept_welcome(&engine.backend, welcome, false)?;
            let name = match name {
                Some(name) => name.to_owned(),
                None => {
                    engine.check_local_name(&policy.title)?;
                    policy.title.clone()
                }
            };
            engine
                .backend
                .store()
                .delete_key_package_record(&kp.signature_key)
                .map_err(store_err)?;
            let id = ChannelId(group_id_bytes(&group)?);
            if engine.channels.contains_key(&id) {
                return Err(CommandError::InvalidWelcome(
                    "you are in this channel already".into(),
                ));
            }
            let record = ChannelRecord::new(id, name, kp.suite, kp.signature_key, kp.mailbox, now);
            let mut channel = Channel {
                record,
                live: Some(Live { group, signer }),
                members: Vec::new(),
                senders: BTreeMap::new(),
                pending: Vec::new(),
                erased: false,
                oldest: None,
                sealed_tried: Vec::new(),
            };
            let mut ctx = engine.ctx(now);
            channel.enter_epoch(&mut ctx)?;
            ctx.event(Event::Joined {
                channel: id,
                title: policy.title.clone(),
                by: inviter_name,
            });
            engine.channels.insert(id, channel);
            Ok(id)
        })
    }

    /// Adds the owner of a key package to a channel we administer. Returns the welcome
    /// to hand to them.
    pub fn add_member(
        &mut self,
        now: Timestamp,
        name: &str,
        key_package: &[u8],
    ) -> Result<Vec<u8>, CommandError> {
        self.add_members(now, name, &[key_package])
    }

    /// Adds several people in one commit. Returns one welcome that serves them all.
    pub fn add_members(
        &mut self,
        now: Timestamp,
        name: &str,
        key_packages: &[&[u8]],
    ) -> Result<Vec<u8>, CommandError> {
        let id = self.channel_id(name)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.add_members(&mut ctx, key_packages)
        })
    }

    /// Removes a member from a channel we administer.
    pub fn remove_member(
        &mut self,
        now: Timestamp,
        name: &str,
        member: &str,
    ) -> Result<(), CommandError> {
        let id = self.channel_id(name)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.remove_member(&mut ctx, member)
        })
    }

    /// Replaces our keys in a channel (post-compromise security). The administrator
    /// commits at once; another member proposes, and the administrator's client
    /// commits the proposal when it arrives.
    pub fn self_update(&mut self, now: Timestamp, name: &str) -> Result<(), CommandError> {
        let id = self.channel_id(name)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.self_update(&mut ctx)
        })
    }

    /// Leaves a channel. An administrator first hands the role to the member who has
    /// been in the channel longest.
    pub fn leave(&mut self, now: Timestamp, name: &str) -> Result<(), CommandError> {
        let id = self.channel_id(name)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            ch.leave(&mut ctx)
        })
    }

    /// Sends a text message to every other member.
    pub fn send_text(
        &mut self,
        now: Timestamp,
        name: &str,
        text: &str,
    ) -> Result<MessageRecord, CommandError> {
        let id = self.channel_id(name)?;
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(&id, now)?;
            let record = ch.send_payload(&mut ctx, PayloadKind::Text, text.as_bytes().to_vec())?;
            // Now and then, our view of the channel goes along.
            let due = ch
                .record
                .last_status_at
                .is_none_or(|t| now.0 >= t.0.saturating_add(crate::integrity::STATUS_INTERVAL_MS));
            if due {
                ch.send_status(&mut ctx, false)?;
            }
            Ok(record)
        })
    }

    /// Sends a step of an introduction in channel `id` (see
    /// [`backchannel_proto::control::Intro`]).
    pub fn send_introduction(
        &mut self,
        now: Timestamp,
        id: &ChannelId,
        intro: backchannel_proto::control::Intro,
    ) -> Result<(), CommandError> {
        let to = MemberId(intro.to);
        let body = backchannel_proto::control::Control::Intro(intro).encode();
        self.transact(now, |engine| {
            let (ch, mut ctx) = engine.channel_ctx(id, now)?;
            ch.send_targeted(&mut ctx, &to, &body)
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
    pub fn request_status(&mut self, now: Timestamp, name: &str) -> Result<(), CommandError> {
        let id = self.channel_id(name)?;
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
                };
                ch.receive_blob(&mut ctx, blob.to_vec(), elsewhere)?;
                ch.drain_pending(&mut ctx)?;
            }
            also(engine.backend.store()).map_err(store_err)
        })
    }

    /// Time has passed: report gaps and inputs that waited too long.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), CommandError> {
        if self.poll_timeout().is_none_or(|t| t > now) {
            return Ok(());
        }
        self.transact(now, |engine| {
            let Engine {
                backend,
                config,
                channels,
                staged,
                scrub,
                ..
            } = engine;
            for ch in channels.values_mut() {
                let mut ctx = Ctx {
                    backend,
                    config,
                    staged,
                    now,
                    scrub,
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
            // after it was erased (its outbox goes once the relays have it).
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
                if self.channels.len() != before || self.scrub.replace(false) {
                    // Overwrite what the erasure freed, in the log too.
                    self.store().scrub().map_err(store_err)?;
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
        Ok(())
    }
}

/// What a channel operation needs besides the channel.
pub(crate) struct Ctx<'a, S: Storage> {
    pub(crate) backend: &'a Backend<S>,
    pub(crate) config: &'a EngineConfig,
    pub(crate) staged: &'a mut Vec<Output>,
    pub(crate) now: Timestamp,
    /// Something was erased: overwrite freed space once the input commits.
    pub(crate) scrub: &'a std::cell::Cell<bool>,
}

impl<S: Storage> Ctx<'_, S> {
    pub(crate) fn store(&self) -> &S {
        self.backend.store()
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.staged.push(Output::Event(event));
    }

    pub(crate) fn alert(&mut self, channel: ChannelId, alert: Alert) {
        self.event(Event::Alert { channel, alert });
    }
}

impl Channel {
    pub(crate) fn live(&self) -> Result<&Live, CommandError> {
        match (&self.live, self.record.status) {
            (Some(live), ChannelStatus::Active) => Ok(live),
            _ => Err(CommandError::NotActive),
        }
    }

    pub(crate) fn live_mut(&mut self) -> Result<&mut Live, CommandError> {
        match (&mut self.live, self.record.status) {
            (Some(live), ChannelStatus::Active) => Ok(live),
            _ => Err(CommandError::NotActive),
        }
    }

    pub(crate) fn is_admin(&self) -> bool {
        self.members.iter().any(|m| m.is_self && m.admin)
    }

    pub(crate) fn name_of(&self, member: &MemberId) -> String {
        self.members
            .iter()
            .find(|m| &m.member == member)
            .map(|m| m.name.clone())
            .or_else(|| self.senders.get(member).map(|s| s.name.clone()))
            .unwrap_or_else(|| "a former member".to_owned())
    }

    /// Mailboxes of every member but us.
    pub(crate) fn others(&self) -> Vec<MailboxAddr> {
        self.members
            .iter()
            .filter(|m| !m.is_self)
            .map(|m| m.mailbox.clone())
            .collect()
    }

    pub(crate) fn current_key(&self) -> Result<[u8; 32], CommandError> {
        self.record
            .epoch_keys
            .last()
            .map(|k| k.key)
            .ok_or_else(|| internal("no envelope key"))
    }

    pub(crate) fn save<S: Storage>(&self, ctx: &Ctx<'_, S>) -> Result<(), CommandError> {
        if self.erased {
            return Ok(());
        }
        ctx.store().save_channel(&self.record).map_err(store_err)
    }

    // ----- Sending ----------------------------------------------------------------

    /// Serializes an MLS message, fragments it, and seals a copy for each target
    /// with a fresh nonce (so that no two mailboxes hold the same bytes).
    pub(crate) fn transmit<S: Storage>(
        &self,
        ctx: &mut Ctx<'_, S>,
        message: &MlsMessageOut,
        targets: &[MailboxAddr],
        key: &[u8; 32],
    ) -> Result<(), CommandError> {
        let bytes = message.tls_serialize_detached().map_err(internal)?;
        self.transmit_content(ctx, ContentKind::Mls, &bytes, targets, key, 0)
    }

    /// Fragments any content, and seals a copy for each target with a fresh nonce.
    /// `ttl_secs` asks relays to delete the blobs if unread by then (0: their limit).
    pub(crate) fn transmit_content<S: Storage>(
        &self,
        ctx: &mut Ctx<'_, S>,
        kind: ContentKind,
        bytes: &[u8],
        targets: &[MailboxAddr],
        key: &[u8; 32],
        ttl_secs: u32,
    ) -> Result<(), CommandError> {
        let rand = ctx.backend.rand();
        let message_id: [u8; 16] = rand.random_array().map_err(internal)?;
        let fragments = Fragment::split(kind, message_id, bytes).map_err(internal)?;
        for to in targets {
            for fragment in &fragments {
                let nonce = rand.random_array().map_err(internal)?;
                let blob = seal::seal(key, nonce, &fragment.encode())
                    .ok_or_else(|| internal("sealing failed"))?;
                ctx.staged.push(Output::Transmit(Transmit {
                    id: 0,
                    channel: self.record.id,
                    to: to.clone(),
                    ttl_secs,
                    blob,
                }));
            }
        }
        Ok(())
    }

    pub(crate) fn send_payload<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        kind: PayloadKind,
        body: Vec<u8>,
    ) -> Result<MessageRecord, CommandError> {
        self.live()?;
        let ttl_secs = if kind == PayloadKind::Text {
            self.check_sendable(ctx)?;
            self.text_ttl_secs()
        } else {
            0
        };
        let payload = Payload {
            kind,
            seq: self.record.own_seq + 1,
            prev_hash: self.record.own_last_hash,
            sent_at: ctx.now.0,
            body,
            heads: self.heads(),
        };
        let unpadded = payload
            .encode_unpadded()
            .map_err(|_| CommandError::TooLong(payload.body.len()))?;
        let padded = payload
            .encode()
            .map_err(|_| CommandError::TooLong(payload.body.len()))?;
        let key = self.current_key()?;
        let targets = self.others();
        let live = self.live_mut()?;
        let message = live
            .group
            .create_message(ctx.backend, &live.signer, &padded)
            .map_err(internal)?;
        let bytes = message.tls_serialize_detached().map_err(internal)?;
        self.transmit_content(ctx, ContentKind::Mls, &bytes, &targets, &key, ttl_secs)?;
        if self.oldest.is_none() {
            self.oldest = Some(ctx.now);
        }
        let hash = chain_hash(&unpadded);
        self.record.own_seq = payload.seq;
        self.record.own_last_hash = hash;
        self.save(ctx)?;
        let mut record = MessageRecord {
            position: 0,
            channel: self.record.id,
            sender: self.record.own_member,
            sender_name: self.name_of(&self.record.own_member),
            seq: payload.seq,
            kind: match kind {
                PayloadKind::Control => MessageKind::Control,
                _ => MessageKind::Text,
            },
            sent_at: ctx.now,
            received_at: ctx.now,
            body: payload.body,
            prev_hash: payload.prev_hash,
            hash,
            late: false,
        };
        ctx.store().append_message(&record).map_err(store_err)?;
        record.position = 0;
        Ok(record)
    }

    /// Sends `body` to one member alone, as an MLS targeted message
    /// (draft-ietf-mls-targeted-messages): sealed with HPKE to that member's leaf
    /// key and signed by us, delivered to its mailbox only. No other member can
    /// read it, even if a relay hands it over. It is outside our sequence: the
    /// receiver recognises a copy by its hash.
    pub(crate) fn send_targeted<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        to: &MemberId,
        body: &[u8],
    ) -> Result<(), CommandError> {
        let key = self.current_key()?;
        let target = self
            .members
            .iter()
            .find(|m| m.member == *to && !m.is_self)
            .ok_or_else(|| CommandError::UnknownMember(hex::encode(&to.0[..4])))?;
        let (leaf, mailbox) = (target.leaf, target.mailbox.clone());
        let live = self.live_mut()?;
        let message = live
            .group
            .create_targeted_message(ctx.backend, &live.signer, LeafNodeIndex::new(leaf), body)
            .map_err(internal)?;
        let bytes = message.tls_serialize_detached().map_err(internal)?;
        self.transmit_content(ctx, ContentKind::Mls, &bytes, &[mailbox], &key, 0)
    }

    /// Sends one of our commits to `targets` under the current epoch's key, merges
    /// it, and enters the new epoch.
    pub(crate) fn commit_and_merge<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        commit: &MlsMessageOut,
        targets: &[MailboxAddr],
    ) -> Result<(), CommandError> {
        let key = self.current_key()?;
        self.transmit(ctx, commit, targets, &key)?;
        let before = self.members.clone();
        let own = self.record.own_member;
        let live = self.live_mut()?;
        live.group
            .merge_pending_commit(ctx.backend)
            .map_err(internal)?;
        self.enter_epoch(ctx)?;
        self.report_membership(ctx, &before, &own)?;
        self.announce(ctx, &before, &key)
    }

    fn add_members<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        key_packages: &[&[u8]],
    ) -> Result<Vec<u8>, CommandError> {
        self.live()?;
        if !self.is_admin() {
            return Err(CommandError::NotAdmin);
        }
        if key_packages.is_empty() {
            return Err(CommandError::InvalidKeyPackage("none given".into()));
        }
        let bad = |e: &dyn std::fmt::Display| CommandError::InvalidKeyPackage(e.to_string());
        let mut names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        let mut valid = Vec::with_capacity(key_packages.len());
        for bytes in key_packages {
            let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| bad(&e))?;
            let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
                return Err(CommandError::InvalidKeyPackage(
                    "it is not an MLS key package".into(),
                ));
            };
            let kp = kp
                .validate(ctx.backend.crypto(), ProtocolVersion::Mls10)
                .map_err(|e| bad(&e))?;
            if kp.ciphersuite() != self.record.suite.ciphersuite() {
                return Err(CommandError::SuiteMismatch(
                    format!("{:?}", kp.ciphersuite()),
                    self.record.suite.name(),
                ));
            }
            let info = check_leaf(kp.leaf_node()).map_err(|e| bad(&e))?;
            if names.iter().any(|n| names_clash(n, &info.name)) {
                return Err(CommandError::MemberNameTaken(info.name));
            }
            names.push(info.name);
            valid.push(kp);
        }
        let targets = self.others();
        let live = self.live_mut()?;
        // Adds carry no path (RFC 9420 §12.4: a commit of only Add proposals needs
        // none): the commit stays the size of the key packages whatever the size of
        // the channel. Our keys are refreshed by self-updates on their own schedule.
        let (commit, welcome, _) = live
            .group
            .add_members_without_update(ctx.backend, &live.signer, &valid)
            .map_err(internal)?;
        self.commit_and_merge(ctx, &commit, &targets)?;
        welcome.tls_serialize_detached().map_err(internal)
    }

    fn remove_member<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        member: &str,
    ) -> Result<(), CommandError> {
        self.live()?;
        if !self.is_admin() {
            return Err(CommandError::NotAdmin);
        }
        if self.members.iter().any(|m| m.is_self && m.name == member) {
            return Err(CommandError::IsSelf);
        }
        let target = crate::trust::find_other(&self.members, member)?;
        let leaf = LeafNodeIndex::new(target.leaf);
        // The removed member gets the commit too, so that it learns of its removal.
        let targets = self.others();
        let live = self.live_mut()?;
        let (commit, _, _) = live
            .group
            .remove_members(ctx.backend, &live.signer, &[leaf])
            .map_err(internal)?;
        self.commit_and_merge(ctx, &commit, &targets)
    }

    fn self_update<S: Storage>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), CommandError> {
        self.live()?;
        let targets = self.others();
        if self.is_admin() {
            let live = self.live_mut()?;
            let bundle = live
                .group
                .self_update(ctx.backend, &live.signer, LeafNodeParameters::default())
                .map_err(internal)?;
            self.commit_and_merge(ctx, bundle.commit(), &targets)
        } else {
            self.record.intent = Some(Intent::Update);
            self.propose_intent(ctx)
        }
    }

    fn leave<S: Storage>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), CommandError> {
        self.live()?;
        let targets = self.others();
        if targets.is_empty() {
            // Alone: nobody to tell.
            return self.close(ctx, None);
        }
        if self.is_admin() {
            // Hand the administrator role to the longest-standing other member.
            let successor = self
                .members
                .iter()
                .filter(|m| !m.is_self)
                .min_by_key(|m| m.leaf)
                .map(|m| m.signature_key.clone())
                .ok_or_else(|| internal("no successor"))?;
            let live = self.live_mut()?;
            let mut policy = policy_of(&live.group).ok_or_else(|| internal("no policy"))?;
            policy.admin = successor;
            let extensions = group_extensions(&policy)?;
            let (commit, _, _) = live
                .group
                .update_group_context_extensions(ctx.backend, extensions, &live.signer)
                .map_err(internal)?;
            self.commit_and_merge(ctx, &commit, &targets)?;
        }
        self.record.intent = Some(Intent::Leave);
        self.propose_intent(ctx)?;
        self.record.status = ChannelStatus::Leaving;
        self.save(ctx)
    }

    /// Sends the proposal for our outstanding intent (in the current epoch).
    fn propose_intent<S: Storage>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), CommandError> {
        let Some(intent) = self.record.intent else {
            return Ok(());
        };
        let key = self.current_key()?;
        let targets = self.others();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let proposal = match intent {
            Intent::Update => {
                live.group
                    .propose_self_update(ctx.backend, &live.signer, LeafNodeParameters::default())
                    .map_err(internal)?
                    .0
            }
            Intent::Leave => live
                .group
                .leave_group(ctx.backend, &live.signer)
                .map_err(internal)?,
        };
        self.transmit(ctx, &proposal, &targets, &key)?;
        self.save(ctx)
    }

    /// After creating, joining or merging: refresh members, derive this epoch's
    /// envelope key, persist.
    pub(crate) fn enter_epoch<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), CommandError> {
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let epoch = live.group.epoch().as_u64();
        let secret = live
            .group
            .export_secret(
                ctx.backend.crypto(),
                derive::CHANNEL_EXPORTER_LABEL,
                &[],
                32,
            )
            .map_err(internal)?;
        let secret = zeroize::Zeroizing::new(secret);
        let secret: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
            secret
                .as_slice()
                .try_into()
                .map_err(|_| internal("exporter length"))?,
        );
        let key = derive::envelope_key(&secret).map_err(internal)?;
        self.record.epoch_keys.retain(|k| k.epoch != epoch);
        self.record.epoch_keys.push(EpochKey { epoch, key: *key });
        self.sealed_tried.retain(|e| *e != epoch);
        let authenticator = live.group.epoch_authenticator().as_slice().to_vec();
        self.record.authenticators.retain(|a| a.epoch != epoch);
        self.record
            .authenticators
            .push(crate::store::EpochAuthenticator {
                epoch,
                authenticator,
            });
        let excess = self.record.authenticators.len().saturating_sub(16);
        self.record.authenticators.drain(..excess);
        if self
            .record
            .expected
            .as_ref()
            .is_some_and(|e| e.epoch <= epoch)
        {
            self.record.expected = None;
        }
        let excess = self
            .record
            .epoch_keys
            .len()
            .saturating_sub(ANNOUNCEMENT_KEY_EPOCHS);
        self.record.epoch_keys.drain(..excess);
        self.members = members_of(&live.group, &self.record.signature_key);
        ctx.store()
            .save_members(&self.record.id, &self.members)
            .map_err(store_err)?;
        self.save(ctx)
    }

    pub(crate) fn report_membership<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        before: &[MemberRecord],
        by: &MemberId,
    ) -> Result<(), CommandError> {
        let by = before
            .iter()
            .find(|m| &m.member == by)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let channel = self.record.id;
        for m in &self.members {
            if !before.iter().any(|b| b.member == m.member) {
                ctx.event(Event::MemberAdded {
                    channel,
                    member: m.name.clone(),
                    by: by.clone(),
                });
                if let Some(alert) = self.check_key_change(m, &by) {
                    ctx.alert(channel, alert);
                }
            }
        }
        for b in before {
            if !self.members.iter().any(|m| m.member == b.member) {
                let state = self.senders.entry(b.member).or_insert_with(|| SenderState {
                    member: b.member,
                    name: b.name.clone(),
                    ..SenderState::default()
                });
                state.removed_at = Some(ctx.now);
                ctx.store()
                    .save_sender(&channel, state)
                    .map_err(store_err)?;
                ctx.event(Event::MemberRemoved {
                    channel,
                    member: b.name.clone(),
                    by: by.clone(),
                });
            }
        }
        Ok(())
    }

    /// We are no longer a member: erase the MLS state and keys, keep the history.
    pub(crate) fn close<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        by: Option<String>,
    ) -> Result<(), CommandError> {
        if let Some(mut live) = self.live.take() {
            live.group.delete(ctx.backend.storage()).map_err(internal)?;
            SignatureKeyPair::delete(
                ctx.backend.storage(),
                live.signer.public(),
                live.signer.signature_scheme(),
            )
            .map_err(internal)?;
        }
        self.record.status = ChannelStatus::Closed;
        self.record.intent = None;
        self.record.epoch_keys.clear();
        for (id, _) in self.pending.drain(..) {
            ctx.store()
                .remove_pending(&self.record.id, id)
                .map_err(store_err)?;
        }
        self.save(ctx)?;
        ctx.event(Event::Closed {
            channel: self.record.id,
            by: by.unwrap_or_else(|| "you".to_owned()),
        });
        Ok(())
    }

    // ----- Receiving --------------------------------------------------------------

    /// The fragment inside a blob, if one of this channel's keys opens it, and
    /// whether that key is within the content window ([`ENVELOPE_KEY_EPOCHS`]).
    pub(crate) fn open(&self, blob: &[u8]) -> Option<(Vec<u8>, bool)> {
        self.open_with(self.record.epoch_keys.iter().rev(), blob)
    }

    fn open_with<'k>(
        &self,
        mut keys: impl Iterator<Item = &'k EpochKey>,
        blob: &[u8],
    ) -> Option<(Vec<u8>, bool)> {
        let newest = self.record.epoch_keys.last().map(|k| k.epoch)?;
        keys.find_map(|k| {
            seal::open(&k.key, blob).map(|f| {
                let recent = k.epoch.saturating_add(ENVELOPE_KEY_EPOCHS as u64) > newest;
                (f, recent)
            })
        })
    }

    /// A fragment opened under a key `recent` or not: only announcements are read
    /// under keys older than the content window.
    fn receive_opened<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        fragment: Vec<u8>,
        recent: bool,
    ) -> Result<(), CommandError> {
        let announcement =
            Fragment::decode(&fragment).is_ok_and(|f| f.kind == ContentKind::Announcement);
        if recent || announcement {
            return self.receive_fragment(ctx, fragment);
        }
        // Too old to read: a replay, or a removed member using keys it kept.
        ctx.alert(
            self.record.id,
            Alert::Replayed {
                from: None,
                seq: None,
            },
        );
        Ok(())
    }

    fn receive_blob<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        blob: Vec<u8>,
        elsewhere: bool,
    ) -> Result<(), CommandError> {
        if self.live.is_none() {
            return Ok(());
        }
        if blob.len() != BLOB_LEN {
            ctx.alert(
                self.record.id,
                Alert::Undecryptable {
                    count: 1,
                    detail: format!("a record of {} bytes instead of {BLOB_LEN}", blob.len()),
                },
            );
            return Ok(());
        }
        match self.open(&blob) {
            Some((fragment, recent)) => self.receive_opened(ctx, fragment, recent),
            // It belongs to another of our channels: the relay moved it here.
            None if elsewhere => {
                ctx.alert(self.record.id, Alert::Moved);
                Ok(())
            }
            None => self.park(
                ctx,
                PendingItem::Sealed {
                    received_at: ctx.now,
                    blob,
                },
            ),
        }
    }

    fn receive_fragment<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: Vec<u8>,
    ) -> Result<(), CommandError> {
        let fragment = match Fragment::decode(&bytes) {
            Ok(f) => f,
            Err(e) => {
                ctx.alert(
                    self.record.id,
                    Alert::Undecryptable {
                        count: 1,
                        detail: format!("malformed envelope: {e}"),
                    },
                );
                return Ok(());
            }
        };
        if fragment.count == 1 {
            return self.receive_content(ctx, fragment.kind, &fragment.chunk);
        }
        if self.record.recent_fragmented.contains(&fragment.message_id) {
            ctx.alert(
                self.record.id,
                Alert::Replayed {
                    from: None,
                    seq: None,
                },
            );
            return Ok(());
        }
        let mut siblings = vec![fragment.clone()];
        let mut ids = Vec::new();
        for (id, item) in &self.pending {
            if let PendingItem::Fragment {
                fragment: other, ..
            } = item
            {
                let Ok(other) = Fragment::decode(other) else {
                    continue;
                };
                if other.message_id == fragment.message_id {
                    if other.index == fragment.index {
                        ctx.alert(
                            self.record.id,
                            Alert::Replayed {
                                from: None,
                                seq: None,
                            },
                        );
                        return Ok(());
                    }
                    siblings.push(other);
                    ids.push(*id);
                }
            }
        }
        if siblings.len() < usize::from(fragment.count) {
            return self.park(
                ctx,
                PendingItem::Fragment {
                    received_at: ctx.now,
                    fragment: bytes,
                },
            );
        }
        for id in ids {
            self.unpark(ctx, id)?;
        }
        self.record.recent_fragmented.push(fragment.message_id);
        let excess = self.record.recent_fragmented.len().saturating_sub(1024);
        self.record.recent_fragmented.drain(..excess);
        match Fragment::join(&siblings) {
            Ok(message) => self.receive_content(ctx, fragment.kind, &message),
            Err(e) => {
                ctx.alert(
                    self.record.id,
                    Alert::Undecryptable {
                        count: siblings.len(),
                        detail: format!("inconsistent fragments: {e}"),
                    },
                );
                Ok(())
            }
        }
    }

    /// A whole envelope content arrived.
    fn receive_content<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        kind: ContentKind,
        bytes: &[u8],
    ) -> Result<(), CommandError> {
        match kind {
            ContentKind::Mls => self.receive_mls(ctx, bytes),
            ContentKind::Announcement => self.receive_announcement(ctx, bytes),
            ContentKind::Rejoin => self.receive_rejoin(ctx, bytes),
            ContentKind::Welcome => self.receive_readd(ctx, bytes),
            _ => {
                ctx.alert(
                    self.record.id,
                    Alert::Undecryptable {
                        count: 1,
                        detail: "an unknown kind of content".into(),
                    },
                );
                Ok(())
            }
        }
    }

    pub(crate) fn park<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        item: PendingItem,
    ) -> Result<(), CommandError> {
        // Full: what no key opens yet (anyone holding the mailbox's address can
        // write such blobs) makes room first, the oldest of it; what a key of ours
        // opened is only ever pushed out by more of its own kind.
        while self.pending.len() >= ctx.config.max_pending {
            let unopened = |p: &PendingItem| matches!(p, PendingItem::Sealed { .. });
            let (victim, detail) = match self.pending.iter().position(|(_, p)| unopened(p)) {
                Some(i) => (i, "the oldest unreadable one was dropped"),
                None if unopened(&item) => {
                    ctx.alert(
                        self.record.id,
                        Alert::Undecryptable {
                            count: 1,
                            detail: "too many messages were waiting; an unreadable one was \
                                     dropped"
                                .into(),
                        },
                    );
                    return Ok(());
                }
                None => (0, "the oldest was dropped"),
            };
            let (id, _) = self.pending.remove(victim);
            ctx.store()
                .remove_pending(&self.record.id, id)
                .map_err(store_err)?;
            ctx.alert(
                self.record.id,
                Alert::Undecryptable {
                    count: 1,
                    detail: format!("too many messages were waiting; {detail}"),
                },
            );
        }
        let id = ctx
            .store()
            .push_pending(&self.record.id, &item)
            .map_err(store_err)?;
        self.pending.push((id, item));
        Ok(())
    }

    pub(crate) fn unpark<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        id: u64,
    ) -> Result<(), CommandError> {
        self.pending.retain(|(i, _)| *i != id);
        ctx.store()
            .remove_pending(&self.record.id, id)
            .map_err(store_err)
    }

    /// Retries waiting inputs until none makes progress. A parked sealed blob is
    /// tried only with envelope keys it has not met yet, and each pass collects every
    /// input that became ready before processing them, so the cost per input stays
    /// linear in what is parked, however much junk a mailbox holds.
    fn drain_pending<S: Storage>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), CommandError> {
        loop {
            let Some(live) = self.live.as_ref() else {
                return Ok(());
            };
            let epoch = live.group.epoch().as_u64();
            let new_keys: Vec<&EpochKey> = self
                .record
                .epoch_keys
                .iter()
                .rev()
                .filter(|k| !self.sealed_tried.contains(&k.epoch))
                .collect();
            let ready: Vec<(u64, Ready)> = self
                .pending
                .iter()
                .filter_map(|(id, item)| match item {
                    PendingItem::Sealed { blob, .. } if !new_keys.is_empty() => self
                        .open_with(new_keys.iter().copied(), blob)
                        .map(|(f, recent)| (*id, Ready::Fragment(f, recent))),
                    PendingItem::Message {
                        epoch: e, message, ..
                    } if *e <= epoch => Some((*id, Ready::Message(message.clone()))),
                    _ => None,
                })
                .collect();
            self.sealed_tried = self.record.epoch_keys.iter().map(|k| k.epoch).collect();
            if ready.is_empty() {
                return Ok(());
            }
            for (id, ready) in ready {
                // An input processed before it may have closed the channel or
                // consumed it.
                if self.live.is_none() || !self.pending.iter().any(|(i, _)| *i == id) {
                    continue;
                }
                self.unpark(ctx, id)?;
                match ready {
                    Ready::Fragment(f, recent) => self.receive_opened(ctx, f, recent)?,
                    Ready::Message(m) => self.receive_mls(ctx, &m)?,
                }
            }
        }
    }

    pub(crate) fn receive_mls<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: &[u8],
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let undecryptable = |detail: String| Alert::Undecryptable { count: 1, detail };
        let message = match MlsMessageIn::tls_deserialize_exact(bytes) {
            Ok(m) => m,
            Err(e) => {
                ctx.alert(
                    channel,
                    undecryptable(format!("malformed MLS message: {e:?}")),
                );
                return Ok(());
            }
        };
        if message.wire_format() == WireFormat::TargetedMessage {
            return match message.extract() {
                MlsMessageBodyIn::TargetedMessage(targeted) => {
                    self.receive_targeted(ctx, bytes, targeted)
                }
                _ => Ok(()),
            };
        }
        let protocol = match message.try_into_protocol_message() {
            Ok(p) if p.wire_format() == WireFormat::PrivateMessage => p,
            _ => {
                ctx.alert(
                    channel,
                    undecryptable("not an encrypted group message".into()),
                );
                return Ok(());
            }
        };
        if protocol.group_id().as_slice() != channel.0 {
            ctx.alert(
                channel,
                undecryptable("a message of another channel".into()),
            );
            return Ok(());
        }
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let epoch = protocol.epoch().as_u64();
        if epoch > live.group.epoch().as_u64() {
            return self.park(
                ctx,
                PendingItem::Message {
                    received_at: ctx.now,
                    epoch,
                    message: bytes.to_vec(),
                },
            );
        }
        let processed = match live.group.process_message(ctx.backend, protocol) {
            Ok(p) => p,
            Err(e) => {
                let alert = classify_failure(&e, epoch < live.group.epoch().as_u64());
                ctx.alert(channel, alert);
                return Ok(());
            }
        };
        let sender_leaf = match processed.sender() {
            Sender::Member(leaf) => *leaf,
            _ => {
                ctx.alert(
                    channel,
                    undecryptable("a message from outside the channel".into()),
                );
                return Ok(());
            }
        };
        if Some(sender_leaf) == self.live.as_ref().map(|l| l.group.own_leaf_index()) {
            // Our own message, sent back to us.
            ctx.alert(channel, Alert::Reflected);
            return Ok(());
        }
        let Some(sender) = credential_member(processed.credential()) else {
            ctx.alert(
                channel,
                undecryptable("a sender without a Backchannel identity".into()),
            );
            return Ok(());
        };
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                // Past epochs' keys are kept for late messages; a member removed since
                // may not use them to speak after the removal.
                let member_now = self.members.iter().any(|m| m.member == sender);
                let removed_recently = self
                    .senders
                    .get(&sender)
                    .and_then(|s| s.removed_at)
                    .is_some_and(|t| ctx.now <= t.plus_ms(ctx.config.gap_grace_ms));
                if !member_now && !removed_recently {
                    let from = self.name_of(&sender);
                    ctx.alert(channel, Alert::FromRemoved { from });
                    return Ok(());
                }
                let current = Some(epoch) == self.live.as_ref().map(|l| l.group.epoch().as_u64());
                self.receive_payload(ctx, sender, &app.into_bytes(), current)
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                self.receive_proposal(ctx, sender, sender_leaf, *proposal)
            }
            ProcessedMessageContent::StagedCommitMessage(commit) => {
                self.receive_commit(ctx, sender, *commit)
            }
            _ => {
                ctx.alert(
                    channel,
                    undecryptable("an unsupported kind of message".into()),
                );
                Ok(())
            }
        }
    }

    /// A message sealed to us alone: only introduction steps travel so.
    fn receive_targeted<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        bytes: &[u8],
        targeted: openmls::targeted_messages::TargetedMessageIn,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let undecryptable = |detail: &str| Alert::Undecryptable {
            count: 1,
            detail: detail.to_owned(),
        };
        if targeted.group_id().as_slice() != channel.0 {
            ctx.alert(channel, undecryptable("a message of another channel"));
            return Ok(());
        }
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let epoch = targeted.epoch().as_u64();
        let current = live.group.epoch().as_u64();
        if epoch > current {
            return self.park(
                ctx,
                PendingItem::Message {
                    received_at: ctx.now,
                    epoch,
                    message: bytes.to_vec(),
                },
            );
        }
        if epoch < current {
            // Its key is the recipient's leaf key of that epoch, gone since.
            ctx.alert(
                channel,
                undecryptable(
                    "a message sealed to us alone in an earlier epoch (an introduction \
                     step); the introduction has to be made again",
                ),
            );
            return Ok(());
        }
        let processed = match live.group.process_targeted_message(ctx.backend, &targeted) {
            Ok(p) => p,
            Err(e) => {
                ctx.alert(
                    channel,
                    Alert::Undecryptable {
                        count: 1,
                        detail: format!("a message sealed to us alone that does not open: {e}"),
                    },
                );
                return Ok(());
            }
        };
        let sender = live
            .group
            .member(processed.sender_leaf_index())
            .and_then(credential_member);
        let Some(sender) = sender else {
            ctx.alert(
                channel,
                undecryptable("a sender without a Backchannel identity"),
            );
            return Ok(());
        };
        let from = self.name_of(&sender);
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(bytes).into();
        if self.record.seen_targeted.contains(&digest) {
            ctx.alert(
                channel,
                Alert::Replayed {
                    from: Some(from),
                    seq: None,
                },
            );
            return Ok(());
        }
        self.record.seen_targeted.push(digest);
        let excess = self
            .record
            .seen_targeted
            .len()
            .saturating_sub(SEEN_TARGETED);
        self.record.seen_targeted.drain(..excess);
        self.save(ctx)?;
        match backchannel_proto::control::Control::decode(processed.application_data()) {
            Ok(backchannel_proto::control::Control::Intro(intro))
                if intro.to == self.record.own_member.0 =>
            {
                ctx.event(Event::Introduction {
                    channel,
                    from: sender,
                    from_name: from,
                    intro,
                });
            }
            _ => ctx.alert(
                channel,
                Alert::Undecryptable {
                    count: 1,
                    detail: format!("a malformed message sealed to us alone by {from}"),
                },
            ),
        }
        Ok(())
    }

    pub(crate) fn receive_payload<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        sender: MemberId,
        bytes: &[u8],
        current_epoch: bool,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let from = self.name_of(&sender);
        let (payload, unpadded) = match Payload::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                ctx.alert(
                    channel,
                    Alert::Undecryptable {
                        count: 1,
                        detail: format!("a malformed message from {from}: {e}"),
                    },
                );
                return Ok(());
            }
        };
        let hash = chain_hash(bytes.get(..unpadded).unwrap_or_default());
        let backend = ctx.backend;
        let store = backend.store();
        if let Some(existing) = store
            .message(&channel, &sender, payload.seq)
            .map_err(store_err)?
        {
            let alert = if existing.hash == hash {
                Alert::Replayed {
                    from: Some(from),
                    seq: Some(payload.seq),
                }
            } else {
                Alert::Conflicting {
                    from,
                    seq: payload.seq,
                }
            };
            ctx.alert(channel, alert);
            return Ok(());
        }
        let state = self.senders.entry(sender).or_insert_with(|| SenderState {
            member: sender,
            ..SenderState::default()
        });
        state.name = from.clone();
        let last = state.contiguous.max(state.announced);
        if payload.seq > last.saturating_add(crate::integrity::MAX_SEQ_JUMP) {
            ctx.alert(
                channel,
                Alert::SequenceJump {
                    from,
                    seq: payload.seq,
                    last,
                },
            );
            return Ok(());
        }
        let arrival = state.record(payload.seq, ctx.now);
        if arrival == Arrival::Duplicate {
            // The state says we have it but the store does not: the store is the truth.
            return Err(internal("sequence state and history disagree"));
        }
        store.save_sender(&channel, state).map_err(store_err)?;

        // The chain: this message must follow the previous one, and the next one (if
        // it came first) must follow this one.
        let chained_back = if payload.seq == 1 {
            Some(payload.prev_hash == [0; 32])
        } else {
            store
                .message(&channel, &sender, payload.seq - 1)
                .map_err(store_err)?
                .map(|prev| prev.hash == payload.prev_hash)
        };
        let chained_forward = store
            .message(&channel, &sender, payload.seq + 1)
            .map_err(store_err)?
            .map(|next| next.prev_hash == hash);
        if chained_back == Some(false) {
            ctx.alert(
                channel,
                Alert::BrokenChain {
                    from: from.clone(),
                    seq: payload.seq,
                },
            );
        }
        if chained_forward == Some(false) {
            ctx.alert(
                channel,
                Alert::BrokenChain {
                    from: from.clone(),
                    seq: payload.seq + 1,
                },
            );
        }
        let kind = match payload.kind {
            PayloadKind::Control => MessageKind::Control,
            _ => MessageKind::Text,
        };
        let record = MessageRecord {
            position: 0,
            channel,
            sender,
            sender_name: from.clone(),
            seq: payload.seq,
            kind,
            sent_at: Timestamp(payload.sent_at),
            received_at: ctx.now,
            body: payload.body,
            prev_hash: payload.prev_hash,
            hash,
            late: arrival == Arrival::Late,
        };
        store.append_message(&record).map_err(store_err)?;
        let heads = payload.heads;
        if kind == MessageKind::Text {
            ctx.event(Event::Message(ReceivedMessage {
                channel,
                member: sender,
                from,
                seq: record.seq,
                text: String::from_utf8_lossy(&record.body).into_owned(),
                sent_at: record.sent_at,
                received_at: record.received_at,
                late: record.late,
            }));
        }
        if self.oldest.is_none() {
            self.oldest = Some(record.received_at);
        }
        self.receive_heads(ctx, sender, record.seq, &heads)?;
        if kind == MessageKind::Control {
            self.receive_control(ctx, sender, record.seq, &record.body, current_epoch)?;
        }
        Ok(())
    }

    fn receive_proposal<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        sender: MemberId,
        sender_leaf: LeafNodeIndex,
        proposal: QueuedProposal,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let by = self.name_of(&sender);
        let refused = match proposal.proposal() {
            Proposal::Update(update) => match check_leaf(update.leaf_node()) {
                Err(e) => Some(format!("update their keys with an invalid leaf ({e})")),
                Ok(info) => {
                    let current = self.members.iter().find(|m| m.leaf == sender_leaf.u32());
                    renaming(current, &info.name)
                }
            },
            Proposal::Remove(remove) if remove.removed() == sender_leaf => None,
            Proposal::Remove(_) => Some("remove another member".to_owned()),
            Proposal::Add(_) => Some("add a member".to_owned()),
            _ => Some("make an unsupported change to the channel".to_owned()),
        };
        if let Some(what) = refused {
            ctx.alert(channel, Alert::RefusedChange { by, what });
            return Ok(());
        }
        // The budget is the administrator's to keep: it alone commits proposals.
        // Members keep every valid one, or a commit the administrator made of a
        // proposal a member counted differently (it read in a burst what arrived
        // over hours) would be missing one and fork that member off.
        let committing = self.is_admin() && self.record.status == ChannelStatus::Active;
        if committing && let Err(first) = self.spend(sender, false, ctx.now) {
            self.save(ctx)?;
            if first {
                ctx.alert(
                    channel,
                    Alert::RefusedChange {
                        by,
                        what: format!(
                            "change their keys or membership more than {} times in an hour",
                            crate::integrity::PROPOSALS_PER_WINDOW
                        ),
                    },
                );
            }
            return Ok(());
        }
        let is_update = matches!(proposal.proposal(), Proposal::Update(_));
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.group
            .store_pending_proposal(ctx.backend.storage(), proposal)
            .map_err(internal)?;
        if !committing {
            return Ok(());
        }
        // The administrator carries out members' proposals at once.
        let targets = self.others();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let (commit, _, _) = live
            .group
            .commit_to_pending_proposals(ctx.backend, &live.signer)
            .map_err(internal)?;
        self.commit_and_merge(ctx, &commit, &targets)?;
        if is_update {
            ctx.event(Event::KeysUpdated {
                channel,
                member: self.name_of(&sender),
            });
        }
        Ok(())
    }

    fn receive_commit<S: Storage>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        committer: MemberId,
        commit: StagedCommit,
    ) -> Result<(), CommandError> {
        let channel = self.record.id;
        let by = self.name_of(&committer);
        let admin = self.members.iter().find(|m| m.admin).map(|m| m.member);
        if admin != Some(committer) {
            ctx.alert(
                channel,
                Alert::RefusedChange {
                    by,
                    what: "change the channel although only its administrator may".into(),
                },
            );
            return Ok(());
        }
        if let Err(what) = check_commit(&commit, &self.members, &committer) {
            ctx.alert(channel, Alert::RefusedChange { by, what });
            return Ok(());
        }
        let mut updated: Vec<MemberId> = commit
            .update_proposals()
            .filter_map(|u| credential_member(u.update_proposal().leaf_node().credential()))
            .collect();
        if commit.queued_proposals().next().is_none() && commit.update_path_leaf_node().is_some() {
            // A commit with nothing but a path: the committer's own key update.
            updated.push(committer);
        }
        let self_removed = commit.self_removed();
        let before = self.members.clone();
        let previous_key = self.current_key()?;
        let old_policy = self.policy();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.group
            .merge_staged_commit(ctx.backend, commit)
            .map_err(internal)?;
        if self_removed {
            self.members.retain(|m| !m.is_self);
            return self.close(ctx, Some(by));
        }
        self.enter_epoch(ctx)?;
        self.report_membership(ctx, &before, &committer)?;
        self.announce(ctx, &before, &previous_key)?;
        if let Some(policy) = self.policy()
            && old_policy.as_ref().is_some_and(|old| {
                old.disappearing_secs != policy.disappearing_secs
                    || old.expires_at != policy.expires_at
            })
        {
            ctx.event(Event::PolicyChanged {
                channel,
                by: by.clone(),
                disappearing_secs: policy.disappearing_secs,
                expires_at: policy.expires_at,
            });
        }
        for member in updated {
            if member == self.record.own_member && self.record.intent == Some(Intent::Update) {
                self.record.intent = None;
                self.save(ctx)?;
            }
            ctx.event(Event::KeysUpdated {
                channel,
                member: self.name_of(&member),
            });
        }
        // Anything we asked for that this commit did not carry out is asked again.
        self.propose_intent(ctx)
    }

    fn expire<S: Storage>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), CommandError> {
        let channel = self.record.id;
        if let Some(expected) = self.record.expected.clone()
            && ctx.now >= expected.since.plus_ms(ctx.config.gap_grace_ms)
        {
            self.record.expected = None;
            self.save(ctx)?;
            ctx.alert(
                channel,
                Alert::UpdateWithheld {
                    by: expected.by,
                    epoch: expected.epoch,
                },
            );
        }
        for state in self.senders.values_mut() {
            if let Some((missing, claim)) = state.expire(ctx.now, ctx.config.gap_grace_ms) {
                ctx.store()
                    .save_sender(&channel, state)
                    .map_err(store_err)?;
                ctx.event(Event::Alert {
                    channel,
                    alert: Alert::Withheld {
                        from: state.name.clone(),
                        missing,
                        reported_by: claim.map(|c| c.name),
                    },
                });
            }
        }
        let deadline = ctx.now.0.saturating_sub(ctx.config.pending_grace_ms);
        let expired: Vec<(u64, PendingItem)> = self
            .pending
            .iter()
            .filter(|(_, item)| item.received_at().0 <= deadline)
            .cloned()
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        let mut sealed = 0;
        let mut fragments = 0;
        let mut future = 0;
        for (id, item) in &expired {
            self.unpark(ctx, *id)?;
            match item {
                PendingItem::Sealed { .. } => sealed += 1,
                PendingItem::Fragment { .. } => fragments += 1,
                PendingItem::Message { .. } => future += 1,
            }
        }
        let mut details = Vec::new();
        if sealed > 0 {
            details.push(format!("{sealed} that no key of this channel opens"));
        }
        if fragments > 0 {
            details.push(format!(
                "{fragments} pieces of messages whose other pieces never came"
            ));
        }
        if future > 0 {
            details.push(format!("{future} from a channel update that never arrived"));
        }
        ctx.alert(
            channel,
            Alert::Undecryptable {
                count: expired.len(),
                detail: details.join(", "),
            },
        );
        Ok(())
    }
}

enum Ready {
    Fragment(Vec<u8>, bool),
    Message(Vec<u8>),
}

// ----- Helpers over OpenMLS types ----------------------------------------------------

/// Checks a welcome made for one of our key packages and builds the group from it:
/// the channel's policy must be present, the welcome must come from the
/// administrator, and every member must be a valid Backchannel member with a unique
/// name. Stores the group (inside the caller's transaction).
#[allow(clippy::type_complexity)]
pub(crate) fn accept_welcome<S: Storage>(
    provider: &Backend<S>,
    welcome: &[u8],
    replace: bool,
) -> Result<
    (
        MlsGroup,
        SignatureKeyPair,
        KeyPackageRecord,
        ChannelPolicy,
        String,
    ),
    CommandError,
> {
    let invalid = |e: &dyn std::fmt::Display| CommandError::InvalidWelcome(e.to_string());
    let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(|e| invalid(&e))?;
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Err(CommandError::InvalidWelcome(
            "it is not an MLS welcome".into(),
        ));
    };
    let builder = StagedWelcome::build_from_welcome(provider, &mls::join_config(), welcome);
    let staged = builder
        .and_then(|b| if replace { b.replace_old_group() } else { b }.build())
        .map_err(|e| match e {
            WelcomeError::NoMatchingKeyPackage | WelcomeError::NoMatchingEncryptionKey => {
                CommandError::NotForUs
            }
            other => invalid(&other),
        })?;
    if staged.group_context().group_id().as_slice().len() != 16 {
        return Err(CommandError::InvalidWelcome(
            "unexpected channel identifier".into(),
        ));
    }
    let policy = staged
        .group_context()
        .extensions()
        .unknown(CHANNEL_POLICY_EXTENSION)
        .ok_or_else(|| CommandError::InvalidWelcome("it has no Backchannel policy".into()))
        .and_then(|ext| ChannelPolicy::decode(&ext.0).map_err(|e| invalid(&e)))?;
    let inviter = staged.welcome_sender().map_err(internal)?;
    if inviter.signature_key().as_slice() != policy.admin.as_slice() {
        return Err(CommandError::InvalidWelcome(
            "it was made by someone who does not administer the channel".into(),
        ));
    }
    let inviter_name = check_leaf(inviter).map(|i| i.name).unwrap_or_default();
    let own_key = staged
        .own_leaf_node()
        .ok_or_else(|| internal("welcome without own leaf"))?
        .signature_key()
        .as_slice()
        .to_vec();
    let kp = provider
        .store()
        .key_package_records()
        .map_err(store_err)?
        .into_iter()
        .find(|kp| kp.signature_key == own_key)
        .ok_or(CommandError::NotForUs)?;
    let signer = SignatureKeyPair::read(
        provider.storage(),
        &own_key,
        kp.suite.ciphersuite().signature_algorithm(),
    )
    .ok_or(CommandError::NotForUs)?;
    let group = staged.into_group(provider).map_err(|e| invalid(&e))?;
    let mut names = Vec::new();
    for member in group.members() {
        let leaf = group
            .public_group()
            .leaf(member.index)
            .ok_or_else(|| CommandError::InvalidWelcome("a member has no leaf".into()))?;
        let info = check_leaf(leaf).map_err(|e| invalid(&e))?;
        if names.iter().any(|n: &String| names_clash(n, &info.name)) {
            return Err(CommandError::InvalidWelcome(format!(
                "two members are called '{}' or alike",
                info.name
            )));
        }
        names.push(info.name);
    }
    Ok((group, signer, kp, policy, inviter_name))
}

/// How OpenMLS's storage keys entries of a group (serde JSON of the group id), to
/// find anything filed under a channel.
pub(crate) fn group_storage_key(channel: &ChannelId) -> Vec<u8> {
    serde_json::to_vec(&GroupId::from_slice(&channel.0)).unwrap_or_default()
}

pub(crate) fn new_signer<S: Storage>(
    provider: &Backend<S>,
) -> Result<SignatureKeyPair, CommandError> {
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(internal)?;
    signer.store(provider.storage()).map_err(internal)?;
    Ok(signer)
}

/// The credential binds the member identifier to the signature key.
pub(crate) fn credential_for(signer: &SignatureKeyPair) -> CredentialWithKey {
    let id = member_id(signer.public());
    CredentialWithKey {
        credential: BasicCredential::new(id.0.to_vec()).into(),
        signature_key: signer.public().into(),
    }
}

pub(crate) fn credential_member(credential: &Credential) -> Option<MemberId> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let bytes: [u8; 32] = basic.identity().try_into().ok()?;
    Some(MemberId(bytes))
}

pub(crate) fn leaf_extensions(info: &MemberInfo) -> Result<Extensions<LeafNode>, CommandError> {
    Extensions::single(Extension::Unknown(
        MEMBER_INFO_EXTENSION,
        UnknownExtension(info.encode()),
    ))
    .map_err(internal)
}

pub(crate) fn group_extensions(
    policy: &ChannelPolicy,
) -> Result<Extensions<GroupContext>, CommandError> {
    let required =
        RequiredCapabilitiesExtension::new(&mls::extension_types(), &[], &[CredentialType::Basic]);
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required),
        Extension::Unknown(CHANNEL_POLICY_EXTENSION, UnknownExtension(policy.encode())),
    ])
    .map_err(internal)
}

pub(crate) fn policy_of(group: &MlsGroup) -> Option<ChannelPolicy> {
    let ext = group.extensions().unknown(CHANNEL_POLICY_EXTENSION)?;
    ChannelPolicy::decode(&ext.0).ok()
}

pub(crate) fn group_id_bytes(group: &MlsGroup) -> Result<[u8; 16], CommandError> {
    group
        .group_id()
        .as_slice()
        .try_into()
        .map_err(|_| internal("group identifier length"))
}

/// A leaf is acceptable if its credential names the member identifier of its
/// signature key and it carries a valid [`MemberInfo`].
pub(crate) fn check_leaf(leaf: &LeafNode) -> Result<MemberInfo, String> {
    let expected = member_id(leaf.signature_key().as_slice());
    if credential_member(leaf.credential()) != Some(expected) {
        return Err("its credential does not match its signature key".into());
    }
    let ext = leaf
        .extensions()
        .unknown(MEMBER_INFO_EXTENSION)
        .ok_or("it carries no Backchannel member information")?;
    MemberInfo::decode(&ext.0).map_err(|e| format!("its member information is malformed: {e}"))
}

/// Our policy for a commit by the administrator: every new or changed leaf must be
/// valid, names stay unique, and only the proposal types we use appear.
pub(crate) fn check_commit(
    commit: &StagedCommit,
    members: &[MemberRecord],
    committer: &MemberId,
) -> Result<(), String> {
    // Names stay unique among those who remain and those who arrive (a re-added
    // member keeps its name).
    let removed: Vec<u32> = commit
        .remove_proposals()
        .map(|r| r.remove_proposal().removed().u32())
        .collect();
    let mut names: Vec<String> = members
        .iter()
        .filter(|m| !removed.contains(&m.leaf))
        .map(|m| m.name.clone())
        .collect();
    for queued in commit.queued_proposals() {
        match queued.proposal() {
            Proposal::Add(add) => {
                let info = check_leaf(add.key_package().leaf_node())
                    .map_err(|e| format!("add a member whose key package is invalid ({e})"))?;
                if names.iter().any(|n: &String| names_clash(n, &info.name)) {
                    return Err(format!(
                        "add a member called '{}', a name too like another's",
                        info.name
                    ));
                }
                names.push(info.name);
            }
            Proposal::Update(update) => {
                let info = check_leaf(update.leaf_node())
                    .map_err(|e| format!("accept an invalid key update ({e})"))?;
                let leaf = match queued.sender() {
                    Sender::Member(leaf) => Some(leaf.u32()),
                    _ => None,
                };
                let current = members.iter().find(|m| Some(m.leaf) == leaf);
                if let Some(what) = renaming(current, &info.name) {
                    return Err(format!("accept a key update that would {what}"));
                }
            }
            Proposal::Remove(_) => {}
            Proposal::GroupContextExtensions(gce) => {
                let ext = gce
                    .extensions()
                    .unknown(CHANNEL_POLICY_EXTENSION)
                    .ok_or("remove the channel's rules")?;
                ChannelPolicy::decode(&ext.0).map_err(|_| "set malformed channel rules")?;
            }
            _ => return Err("make a kind of change Backchannel does not use".into()),
        }
    }
    if let Some(leaf) = commit.update_path_leaf_node() {
        let info = check_leaf(leaf)
            .map_err(|e| format!("update their keys with an invalid leaf ({e})"))?;
        let current = members.iter().find(|m| m.member == *committer);
        if let Some(what) = renaming(current, &info.name) {
            return Err(what);
        }
    }
    Ok(())
}

/// What a key update that brings `new_name` would do to `current`'s name, if it is
/// not the same: names are chosen when a member joins and never change, so no one
/// can take another's name (or a look-alike) by updating their keys.
pub(crate) fn renaming(current: Option<&MemberRecord>, new_name: &str) -> Option<String> {
    match current {
        Some(m) if m.name == new_name => None,
        Some(m) => Some(format!("change the name '{}' to '{new_name}'", m.name)),
        None => Some(format!("take the name '{new_name}' for an unknown member")),
    }
}

pub(crate) fn members_of(group: &MlsGroup, own_key: &[u8]) -> Vec<MemberRecord> {
    let admin = policy_of(group).map(|p| p.admin).unwrap_or_default();
    group
        .members()
        .filter_map(|m| {
            let leaf = group.public_group().leaf(m.index)?;
            let info = check_leaf(leaf).ok()?;
            Some(MemberRecord {
                member: member_id(&m.signature_key),
                signature_key: m.signature_key.clone(),
                name: info.name,
                mailbox: info.mailbox,
                leaf: m.index.u32(),
                admin: m.signature_key == admin,
                is_self: m.signature_key == own_key,
            })
        })
        .collect()
}

/// Turns an OpenMLS processing failure into what it means for the person.
fn classify_failure<E: std::fmt::Debug>(error: &ProcessMessageError<E>, old_epoch: bool) -> Alert {
    use ProcessMessageError as P;
    use ValidationError as V;
    match error {
        P::ValidationError(V::UnableToDecrypt(MessageDecryptionError::SecretTreeError(
            SecretTreeError::SecretReuseError | SecretTreeError::TooDistantInThePast,
        ))) => Alert::Replayed {
            from: None,
            seq: None,
        },
        P::ValidationError(V::UnableToDecrypt(MessageDecryptionError::SecretTreeError(
            SecretTreeError::RatchetTypeError,
        ))) => Alert::Reflected,
        P::ValidationError(V::WrongEpoch) | P::ValidationError(V::NoPastEpochData) if old_epoch => {
            Alert::Replayed {
                from: None,
                seq: None,
            }
        }
        other => Alert::Undecryptable {
            count: 1,
            detail: format!("{other:?}"),
        },
    }
}
