//! The Backchannel client driver.
//!
//! This crate does the I/O the sans-IO engine (`backchannel-core`) does not:
//! connections to relays ([`relay::RelayClient`]: TLS 1.3 pinned to the certificate
//! fingerprint in the relay's address, WebSocket, fixed-size frames), and — built on
//! them — the outbox, reconnection and delivery loop that pump the engine.
//!
//! Certificate verification cannot be turned off: a relay is reached only through an
//! address that names its certificate.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod arrived;
pub mod attachment;
mod driver;
pub mod intro;
pub mod invite;
pub mod invite_link;
pub mod relay;
mod relay_link;

pub use arrived::{LinkAnswer, Notice};
pub use backchannel_core::introduction::{IntroProgress, PendingIntroduction};
pub use driver::{Client, ClientConfig, ClientError, STATUS_INTERVAL, now};
pub use invite::{Arrival, Invitation, InviteError};
pub use invite_link::{JoinRequestView, LinkRequest};
pub use relay_link::LinkTiming;
