//! What the engine keeps between runs, and the storage contract it needs.
//!
//! The engine's storage provider implements two traits: OpenMLS's
//! `StorageProvider` for group state and keys, and [`EngineStore`] for the rest.
//! Both must write into the same transaction: the engine brackets every input with
//! [`EngineStore::begin`] and [`EngineStore::commit`] (or `rollback` on failure), so
//! that an input is applied entirely or not at all.
//!
//! Contract: `Ok(None)` or an empty list means absent; `Err` means the store
//! failed. A delete is irrevocable.

use std::collections::BTreeSet;

use backchannel_proto::addr::MailboxAddr;
use serde::{Deserialize, Serialize};

use crate::derive::MemberId;
use crate::introduction::{IntroId, IntroState, IntroStepRecord};
use crate::mls::Suite;
use crate::{ChannelId, Timestamp};

/// The engine's own tables.
pub trait EngineStore {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Starts a transaction covering everything written until `commit`.
    fn begin(&self) -> Result<(), Self::Error>;
    /// Makes the transaction durable.
    fn commit(&self) -> Result<(), Self::Error>;
    /// Undoes everything written since `begin`.
    fn rollback(&self) -> Result<(), Self::Error>;

    /// Every channel.
    fn channels(&self) -> Result<Vec<ChannelRecord>, Self::Error>;
    /// Inserts or replaces a channel.
    fn save_channel(&self, channel: &ChannelRecord) -> Result<(), Self::Error>;
    /// Erases a channel and everything under it: members, sender states, messages,
    /// pending inputs, alerts. (Blobs still in the outbox stay until sent.)
    fn delete_channel(&self, id: &ChannelId) -> Result<(), Self::Error>;
    /// Erases a channel's messages that arrived before `cutoff`; returns how many.
    fn erase_messages_before(
        &self,
        channel: &ChannelId,
        cutoff: Timestamp,
    ) -> Result<u64, Self::Error>;
    /// When the oldest message of a channel arrived.
    fn oldest_message_at(&self, channel: &ChannelId) -> Result<Option<Timestamp>, Self::Error>;
    /// Erases every OpenMLS storage entry whose key contains `group_key`.
    fn erase_mls_residue(&self, group_key: &[u8]) -> Result<(), Self::Error>;
    /// Makes erasures irrevocable: freed space overwritten, the log emptied.
    fn scrub(&self) -> Result<(), Self::Error>;

    /// The members of a channel as of its current epoch.
    fn members(&self, channel: &ChannelId) -> Result<Vec<MemberRecord>, Self::Error>;
    /// Replaces the member list of a channel.
    fn save_members(
        &self,
        channel: &ChannelId,
        members: &[MemberRecord],
    ) -> Result<(), Self::Error>;

    /// Sequence state of every sender of a channel.
    fn senders(&self, channel: &ChannelId) -> Result<Vec<SenderState>, Self::Error>;
    /// Inserts or replaces one sender's sequence state.
    fn save_sender(&self, channel: &ChannelId, sender: &SenderState) -> Result<(), Self::Error>;

    /// Appends a message to a channel's history.
    fn append_message(&self, message: &MessageRecord) -> Result<(), Self::Error>;
    /// One message by sender and sequence number.
    fn message(
        &self,
        channel: &ChannelId,
        sender: &MemberId,
        seq: u64,
    ) -> Result<Option<MessageRecord>, Self::Error>;
    /// A channel's history in the order it was stored, from position `after`
    /// (exclusive; 0 for the beginning), at most `limit` messages.
    fn messages(
        &self,
        channel: &ChannelId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, Self::Error>;

    /// Stores an input that cannot be processed yet; returns its identifier.
    fn push_pending(&self, channel: &ChannelId, item: &PendingItem) -> Result<u64, Self::Error>;
    /// Every pending input of a channel, oldest first.
    fn pending(&self, channel: &ChannelId) -> Result<Vec<(u64, PendingItem)>, Self::Error>;
    /// Removes a pending input.
    fn remove_pending(&self, channel: &ChannelId, id: u64) -> Result<(), Self::Error>;

    /// Puts a blob to send into the outbox; returns its identifier.
    fn enqueue_transmit(&self, transmit: &crate::Transmit) -> Result<u64, Self::Error>;
    /// Everything in the outbox, oldest first.
    fn outbox(&self) -> Result<Vec<crate::Transmit>, Self::Error>;
    /// Removes a blob from the outbox (the relay has stored it).
    fn remove_transmit(&self, id: u64) -> Result<(), Self::Error>;

    /// Keeps an alert until the person has seen it.
    fn add_alert(
        &self,
        channel: &ChannelId,
        at: Timestamp,
        kind: &str,
        text: &str,
    ) -> Result<(), Self::Error>;

    /// Remembers the identity behind a key package until its welcome arrives.
    fn save_key_package_record(&self, record: &KeyPackageRecord) -> Result<(), Self::Error>;
    /// Every key package not yet used.
    fn key_package_records(&self) -> Result<Vec<KeyPackageRecord>, Self::Error>;
    /// Forgets a key package (used or abandoned).
    fn delete_key_package_record(&self, signature_key: &[u8]) -> Result<(), Self::Error>;

    /// Every introduction this profile takes part in, with its state. The store
    /// erases one with [`EngineStore::delete_channel`] of any channel its state names
    /// ([`IntroState::channels`]).
    fn introductions(&self) -> Result<Vec<(IntroId, IntroState)>, Self::Error>;
    /// Inserts or replaces the state of an introduction.
    fn save_introduction(&self, id: &IntroId, state: &IntroState) -> Result<(), Self::Error>;
    /// Keeps an introduction step that arrived until it is carried out; returns its
    /// identifier. Erased with its channel.
    fn push_intro_step(&self, step: &IntroStepRecord) -> Result<u64, Self::Error>;
    /// Every step not yet carried out, oldest first.
    fn intro_steps(&self) -> Result<Vec<(u64, IntroStepRecord)>, Self::Error>;
    /// Forgets a step (carried out, or refused for good).
    fn remove_intro_step(&self, id: u64) -> Result<(), Self::Error>;
}

/// Where a channel stands for this member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelStatus {
    /// A member, sending and receiving.
    Active,
    /// Asked to leave; waiting for the administrator to commit it.
    Leaving,
    /// No longer a member (removed or left); the history stays readable.
    Closed,
}

/// An intent that must be carried out by the administrator's next commit, and is
/// proposed again in each new epoch until it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intent {
    /// Replace our leaf keys (post-compromise security).
    Update,
    /// Leave the channel.
    Leave,
}

/// One channel as this member sees it: who we are in it and where it stands, then
/// the state of each concern, each in its own part (stored flattened, as one JSON
/// object with the same keys as before the parts existed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The MLS group identifier, shared by all members.
    pub id: ChannelId,
    /// This member's local name for the channel (unique in the profile).
    pub name: String,
    /// The MLS ciphersuite.
    pub suite: Suite,
    /// Our member identifier in this channel.
    pub own_member: MemberId,
    /// Our signature public key in this channel (identities are per channel).
    pub signature_key: Vec<u8>,
    /// Our inbound mailbox for this channel.
    pub mailbox: MailboxAddr,
    /// When we created or joined the channel.
    pub joined_at: Timestamp,
    /// Where the channel stands.
    pub status: ChannelStatus,
    /// Something we asked for that is not committed yet.
    pub intent: Option<Intent>,
    /// Our own messages' chain.
    #[serde(flatten)]
    pub chain: SendChain,
    /// What we need to open what arrives.
    #[serde(flatten)]
    pub inbound: Inbound,
    /// What the members told each other of their views, and what we made of it.
    #[serde(flatten)]
    pub integrity: IntegrityState,
    /// A burn we started, waiting for receipts.
    #[serde(default)]
    pub burn: Option<BurnState>,
    /// Members whose safety number we compared, with the key we verified.
    #[serde(default)]
    pub verified: Vec<Verified>,
}

/// Our own messages' chain in a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendChain {
    /// Sequence number of our last payload (0 before the first).
    pub own_seq: u64,
    /// Chain hash of our last payload.
    #[serde(with = "crate::bytes_serde")]
    pub own_last_hash: [u8; 32],
}

/// What a channel needs to open what arrives and to recognise it again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Inbound {
    /// Envelope keys of the current and recent epochs, newest last.
    pub epoch_keys: Vec<EpochKey>,
    /// Identifiers of recently completed multi-fragment messages, to recognise a
    /// fragment that arrives again.
    pub recent_fragmented: Vec<[u8; 16]>,
    /// Hashes of the last messages sealed to us alone (introduction steps), to
    /// recognise one the relay delivers again.
    #[serde(default)]
    pub seen_targeted: Vec<[u8; 32]>,
}

/// The channel's integrity as members report it (see `core::integrity`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IntegrityState {
    /// Epoch authenticators of recent epochs, to compare with other members'.
    #[serde(default)]
    pub authenticators: Vec<EpochAuthenticator>,
    /// A member announced an epoch we have not reached: the update may be withheld.
    #[serde(default)]
    pub expected: Option<ExpectedEpoch>,
    /// We asked the administrator to re-add us after a fork, with this new
    /// signature key.
    #[serde(default)]
    pub rejoining: Option<Vec<u8>>,
    /// When we last sent our status.
    #[serde(default)]
    pub last_status_at: Option<Timestamp>,
    /// When we last answered a request for our status.
    #[serde(default)]
    pub last_reply_at: Option<Timestamp>,
    /// The highest sequence number of ours that others reported and we already
    /// alerted about (a restored or cloned profile).
    #[serde(default)]
    pub rollback_alerted: u64,
    /// The highest sequence number of ours each member reported and we alerted
    /// about (per claimer: one member's false claim silences only itself).
    #[serde(default)]
    pub rollback_claims: Vec<(MemberId, u64)>,
    /// What each member has spent of its budget of proposals and re-add requests
    /// (the administrator commits each at once, so each is bounded).
    #[serde(default)]
    pub spent: Vec<Spent>,
    /// What other members last told us of their view.
    #[serde(default)]
    pub peers: Vec<PeerView>,
}

/// Proposals and re-add requests one member sent in the current window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// The member.
    pub member: MemberId,
    /// When the window began.
    pub since: Timestamp,
    /// Proposals taken.
    pub proposals: u32,
    /// Re-add requests taken.
    pub rejoins: u32,
}

/// The epoch authenticator of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochAuthenticator {
    /// The epoch.
    pub epoch: u64,
    /// Its MLS epoch authenticator.
    #[serde(with = "crate::bytes_serde")]
    pub authenticator: Vec<u8>,
}

/// An epoch a member announced before we reached it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedEpoch {
    /// The epoch.
    pub epoch: u64,
    /// Who announced it.
    pub by: String,
    /// When we learned of it.
    pub since: Timestamp,
}

/// What a member last reported of its view of the channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The member.
    pub member: MemberId,
    /// Its name.
    pub name: String,
    /// Its epoch.
    pub epoch: u64,
    /// Whether its view agreed with ours (same state at that epoch, no differing
    /// message).
    pub agrees: bool,
    /// When we learned it.
    pub at: Timestamp,
}

impl ChannelRecord {
    /// A channel we have just created or joined.
    pub fn new(
        id: ChannelId,
        name: String,
        suite: Suite,
        signature_key: Vec<u8>,
        mailbox: MailboxAddr,
        joined_at: Timestamp,
    ) -> Self {
        Self {
            id,
            name,
            suite,
            own_member: crate::derive::member_id(&signature_key),
            signature_key,
            mailbox,
            joined_at,
            status: ChannelStatus::Active,
            intent: None,
            chain: SendChain::default(),
            inbound: Inbound::default(),
            integrity: IntegrityState {
                // The first periodic status goes out an hour after joining.
                last_status_at: Some(joined_at),
                ..IntegrityState::default()
            },
            burn: None,
            verified: Vec::new(),
        }
    }
}

/// The envelope key of one epoch.
#[derive(Clone, Serialize, Deserialize)]
pub struct EpochKey {
    /// The MLS epoch.
    pub epoch: u64,
    /// The key ([`crate::derive::envelope_key`]).
    #[serde(with = "crate::bytes_serde")]
    pub key: [u8; 32],
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochKey({})", self.epoch)
    }
}

impl Drop for EpochKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// One member of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's identifier.
    pub member: MemberId,
    /// The member's signature public key.
    pub signature_key: Vec<u8>,
    /// The name the member goes by.
    pub name: String,
    /// Where to send to the member.
    pub mailbox: MailboxAddr,
    /// The member's position in the MLS tree.
    pub leaf: u32,
    /// Whether the member administers the channel.
    pub admin: bool,
    /// Whether this is us.
    pub is_self: bool,
}

/// What we know of one sender's sequence numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderState {
    /// The sender.
    pub member: MemberId,
    /// The sender's name when last seen.
    pub name: String,
    /// Every sequence number up to this one was received or reported missing.
    pub contiguous: u64,
    /// Sequence numbers received above `contiguous + 1`.
    pub beyond: BTreeSet<u64>,
    /// When the oldest gap still open was first seen.
    pub gap_since: Option<Timestamp>,
    /// The highest sequence number other members report having received from this
    /// sender (messages up to it exist, whether or not they reached us).
    #[serde(default)]
    pub announced: u64,
    /// When we processed this sender's removal from the channel.
    #[serde(default)]
    pub removed_at: Option<Timestamp>,
    /// Who reported `announced`, when that report goes beyond what the sender's own
    /// messages show: an alert built on it names them, and the sender's own signed
    /// sequence can prove it false.
    #[serde(default)]
    pub claimed_by: Option<Claim>,
}

/// A member's report that another member's messages go up to some number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Who reported it.
    pub member: MemberId,
    /// Their name.
    pub name: String,
    /// The reporter's own sequence number of the message that carried the report.
    pub at_seq: u64,
}

/// Whether a stored message is for people or for the clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// Text for people.
    Text,
    /// A control message.
    Control,
    /// A file for people: the body is its descriptor
    /// (`backchannel_proto::attachment::Descriptor`).
    Attachment,
}

/// One message in a channel's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Position in the store (assigned by the store; 0 before it is stored).
    pub position: u64,
    /// The channel.
    pub channel: ChannelId,
    /// Who sent it.
    pub sender: MemberId,
    /// The sender's name when it was received.
    pub sender_name: String,
    /// The sender's sequence number.
    pub seq: u64,
    /// Text or control.
    pub kind: MessageKind,
    /// Sender's clock.
    pub sent_at: Timestamp,
    /// Our clock when it arrived (when we sent it, for our own).
    pub received_at: Timestamp,
    /// The body (UTF-8 text for text messages).
    #[serde(with = "crate::bytes_serde")]
    pub body: Vec<u8>,
    /// The chain hash the payload carried (of the sender's previous payload).
    #[serde(with = "crate::bytes_serde")]
    pub prev_hash: [u8; 32],
    /// Chain hash of the payload (what the sender's next message must carry).
    #[serde(with = "crate::bytes_serde")]
    pub hash: [u8; 32],
    /// The message arrived after it had been reported missing.
    pub late: bool,
}

/// An input that cannot be processed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingItem {
    /// A blob no current key opens: it may belong to an epoch we have not reached.
    Sealed {
        /// When it arrived.
        received_at: Timestamp,
        /// The blob.
        #[serde(with = "crate::bytes_serde")]
        blob: Vec<u8>,
    },
    /// One fragment of a message whose other fragments have not all arrived.
    Fragment {
        /// When it arrived.
        received_at: Timestamp,
        /// The encoded fragment plaintext.
        #[serde(with = "crate::bytes_serde")]
        fragment: Vec<u8>,
    },
    /// A whole MLS message for an epoch we have not reached.
    Message {
        /// When it arrived.
        received_at: Timestamp,
        /// The epoch it belongs to.
        epoch: u64,
        /// The serialized MLS message.
        #[serde(with = "crate::bytes_serde")]
        message: Vec<u8>,
    },
}

impl PendingItem {
    /// When the input arrived.
    pub fn received_at(&self) -> Timestamp {
        match self {
            PendingItem::Sealed { received_at, .. }
            | PendingItem::Fragment { received_at, .. }
            | PendingItem::Message { received_at, .. } => *received_at,
        }
    }
}

/// The identity behind a key package we handed out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackageRecord {
    /// The new signature public key (identities are per channel).
    #[serde(with = "crate::bytes_serde")]
    pub signature_key: Vec<u8>,
    /// The name we gave.
    pub name: String,
    /// The mailbox we gave.
    pub mailbox: MailboxAddr,
    /// The suite of the key package.
    pub suite: Suite,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A burn in progress, started by us.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurnState {
    /// Identifies the burn in receipts.
    pub id: [u8; 16],
    /// When we burned.
    pub started_at: Timestamp,
    /// Members who have not confirmed yet.
    pub waiting: Vec<(MemberId, String)>,
    /// Members who have confirmed.
    pub confirmed: Vec<String>,
}

/// A member we verified: their name and the key we verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The name they went by.
    pub name: String,
    /// The signature key whose safety number we compared.
    #[serde(with = "crate::bytes_serde")]
    pub signature_key: Vec<u8>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use backchannel_proto::addr::{Fingerprint, MailboxId, RelayAddr};

    fn record() -> ChannelRecord {
        let mailbox = MailboxAddr {
            relay: RelayAddr {
                fingerprint: Fingerprint([1; 32]),
                host: "relay.example".into(),
                port: 443,
                alternates: Vec::new(),
            },
            send_id: MailboxId([2; 16]),
        };
        ChannelRecord::new(
            ChannelId([3; 16]),
            "ops".into(),
            Suite::XWing,
            vec![4; 32],
            mailbox,
            Timestamp(5),
        )
    }

    #[test]
    fn the_parts_of_a_channel_record_are_stored_as_the_flat_object_profiles_hold() {
        let mut r = record();
        r.chain.own_seq = 7;
        r.integrity.rollback_alerted = 9;
        let value = serde_json::to_value(&r).unwrap();
        // The keys a profile written before the parts existed has, at the top.
        for key in [
            "own_seq",
            "own_last_hash",
            "epoch_keys",
            "recent_fragmented",
            "seen_targeted",
            "authenticators",
            "last_status_at",
            "rollback_alerted",
            "peers",
            "burn",
            "verified",
        ] {
            assert!(value.get(key).is_some(), "{key} is not at the top");
        }
        assert_eq!(value["own_seq"], 7);
        // Such a profile, without the keys added later, still loads.
        let mut old = value.as_object().unwrap().clone();
        for later in ["seen_targeted", "rollback_claims", "spent", "peers", "burn"] {
            old.remove(later);
        }
        let back: ChannelRecord = serde_json::from_value(old.into()).unwrap();
        assert_eq!(back.chain, r.chain);
        assert_eq!(back.integrity.rollback_alerted, 9);
        assert_eq!(back.integrity.last_status_at, Some(Timestamp(5)));
    }
}
