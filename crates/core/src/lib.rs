//! The Backchannel client engine: channels as MLS groups, sans-IO.
//!
//! The engine takes inputs — commands from the person, blobs that arrived from a
//! relay, the current time — and returns outputs: blobs to send into mailboxes,
//! events for the person, and when it next needs to be woken. It opens no socket,
//! reads no clock and starts no thread, so every protocol path can be driven
//! deterministically in tests (see the `backchannel-sim` crate). The async
//! `backchannel-client` crate pumps it against real relays.
//!
//! A channel is an MLS group (RFC 9420, OpenMLS with the libcrux provider; X-Wing
//! post-quantum by default). Every membership has its own signature key. Messages
//! carry a per-sender sequence number and a hash of the sender's previous message, so
//! that a withheld, replayed or altered message raises an [`Alert`]. Everything on the
//! wire is sealed into fixed-size blobs under a key only members hold.
//!
//! The engine does not store anything itself: its storage provider (the
//! `backchannel-store` crate in production) implements OpenMLS's `StorageProvider`
//! and our [`store::EngineStore`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod attachment;
mod bytes_serde;
mod channel;
mod context;
pub mod derive;
mod engine;
mod event;
mod integrity;
pub mod introduction;
pub mod invite;
mod lifecycle;
pub mod link;
pub mod mls;
mod rules;
pub mod seal;
mod sequence;
pub mod store;
mod trust;

pub use context::{ChannelOptions, CommandError, EngineConfig, Output, Storage, Transmit};
pub use engine::{ChannelSummary, Deadline, Engine, Timer};
pub use event::{Actor, Alert, Erasure, Event, Gap, Pending, ReceivedMessage};
pub use store::{BurnState, Verified};
pub use trust::KeyPackageSummary;

use std::fmt;

/// A channel's identifier: its 16-byte MLS group identifier.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ChannelId(pub [u8; 16]);

impl ChannelId {
    /// What rows of an erased channel carry instead of its identifier while they
    /// wait for a relay (a confirmation in the outbox, a mailbox to delete): no
    /// row names a channel once it is erased. Real identifiers are random, never
    /// all zeros.
    pub const ERASED: ChannelId = ChannelId([0; 16]);
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({})", hex::encode(&self.0[..4]))
    }
}

/// A channel as a command names it: by its local name (what people type) or by
/// its identifier (what arrives from relays and what events carry). Every engine
/// command takes either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelRef<'a> {
    /// By local name.
    Name(&'a str),
    /// By identifier.
    Id(ChannelId),
}

impl<'a> From<&'a str> for ChannelRef<'a> {
    fn from(name: &'a str) -> Self {
        ChannelRef::Name(name)
    }
}

impl<'a> From<&'a String> for ChannelRef<'a> {
    fn from(name: &'a String) -> Self {
        ChannelRef::Name(name)
    }
}

impl From<ChannelId> for ChannelRef<'_> {
    fn from(id: ChannelId) -> Self {
        ChannelRef::Id(id)
    }
}

impl From<&ChannelId> for ChannelRef<'_> {
    fn from(id: &ChannelId) -> Self {
        ChannelRef::Id(*id)
    }
}

/// A point in time: milliseconds since the Unix epoch. The engine never reads a
/// clock; its driver passes the time in.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Debug,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This time plus `ms` milliseconds (saturating).
    pub fn plus_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}
