//! The Backchannel relay: untrusted store-and-forward mailboxes.
//!
//! A relay holds mailboxes, not accounts. A recipient creates a mailbox by
//! registering an authorisation key and gets two unrelated random identifiers: one to
//! give to senders, one to read with. Senders put fixed-size opaque blobs into
//! mailboxes; the relay acknowledges a blob only once it is durable (group commit,
//! fsync), pushes it to the recipient's subscribed connections, and deletes it when
//! the recipient acknowledges it or when it expires.
//!
//! The relay never holds a key that reads a message, and learns as little as it
//! can: every frame is [`FRAME_LEN`](backchannel_proto::frame::FRAME_LEN) bytes in
//! both directions, blobs are all one size, and its logs carry no identifier and no
//! address.
//!
//! Transport: WebSocket over TLS 1.3 with a self-signed certificate whose
//! fingerprint is part of the relay's address (`bcr://FINGERPRINT@host:port`).
//! Storage: SQLite in the data directory, or PostgreSQL shared by several nodes
//! (see [`storage::postgres`]), behind the [`storage::RelayStorage`] trait.
//!
//! It does not authenticate senders (anyone with a send identifier may send), nor
//! hide from the network that someone talks to it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod actor;
#[cfg(feature = "adversary")]
pub mod adversary;
mod cluster;
pub mod config;
mod conn;
mod hub;
pub mod identity;
pub mod limits;
mod metrics;
mod rendezvous;
mod server;
pub mod storage;

pub use config::RelayConfig;
pub use config::default_db_cap;
pub use server::{RelayError, RunningRelay, address, start};
pub use storage::DATABASE_FILE;
