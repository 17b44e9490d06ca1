//! What every part of the engine shares: the storage it runs on, its tunables, its
//! outputs, its errors, and the context a channel operation gets. A leaf module:
//! it imports nothing of the engine's other modules.

use backchannel_proto::addr::MailboxAddr;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

use crate::ChannelId;
use crate::Timestamp;
use crate::event::{Alert, Event};
use crate::mls::{Backend, Suite};
use crate::store::EngineStore;

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
    /// Exactly [`BLOB_LEN`](backchannel_proto::envelope::BLOB_LEN) bytes.
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
    /// An introduction cannot go on as asked.
    #[error("{0}")]
    Introduction(String),
    /// The store failed.
    #[error("the local store failed: {0}")]
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// A bug: OpenMLS or our own code hit an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

pub(crate) fn internal(e: impl std::fmt::Display) -> CommandError {
    CommandError::Internal(e.to_string())
}

pub(crate) fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> CommandError {
    CommandError::Store(Box::new(e))
}

/// What a channel operation needs besides the channel.
pub(crate) struct Ctx<'a, S: Storage> {
    pub(crate) backend: &'a Backend<S>,
    pub(crate) config: &'a EngineConfig,
    pub(crate) staged: &'a mut Vec<Output>,
    pub(crate) now: Timestamp,
    /// Something was erased: overwrite freed space once the input commits.
    pub(crate) scrub: &'a std::cell::Cell<bool>,
    /// Introduction steps addressed to us, carried out once the input commits.
    pub(crate) steps: &'a mut std::collections::VecDeque<StepIn>,
}

/// An introduction step that arrived for us, sealed to us by a member.
pub(crate) struct StepIn {
    /// Where the store keeps it until it is carried out.
    pub(crate) row: u64,
    /// The channel it came through.
    pub(crate) channel: ChannelId,
    /// Who sent it.
    pub(crate) from: crate::derive::MemberId,
    /// Their name there.
    pub(crate) from_name: String,
    /// The step.
    pub(crate) intro: backchannel_proto::control::Intro,
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

/// How a new channel is set up.
#[derive(Clone, Copy, Debug)]
pub struct ChannelOptions {
    /// The MLS ciphersuite.
    pub suite: Suite,
    /// The channel ends then, everywhere.
    pub expires_at: Option<Timestamp>,
    /// Messages disappear this many seconds after they arrive (0: they stay).
    pub disappearing_secs: u64,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            suite: Suite::XWing,
            expires_at: None,
            disappearing_secs: 0,
        }
    }
}

impl From<Suite> for ChannelOptions {
    fn from(suite: Suite) -> Self {
        Self {
            suite,
            ..Self::default()
        }
    }
}
