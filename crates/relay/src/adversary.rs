//! A relay that misbehaves on purpose, for tests (feature `adversary`).
//!
//! The hooks sit in the real relay's send and delivery paths, so a test can make
//! the relay do what a hostile relay would — drop, withhold, duplicate, move between
//! mailboxes, hold back and release out of order, inject and replay — while
//! everything else (TLS, frames, storage, acknowledgements) is the production code.

use std::sync::Arc;

use backchannel_proto::addr::MailboxId;
use backchannel_proto::frame::Blob;

/// What a hostile relay does with traffic.
pub trait Adversary: Send + Sync + 'static {
    /// A sender put `blob` into the mailbox `send_id`. Returns what to store, where.
    /// Empty: the blob is dropped, while the sender is told it was stored.
    fn on_send(&self, send_id: MailboxId, blob: &Blob) -> Vec<(MailboxId, Blob)> {
        vec![(send_id, blob.clone())]
    }

    /// The relay is about to deliver a stored message to its reader. `false` holds it
    /// back: it is not delivered on this subscription.
    fn on_deliver(&self, read_id: MailboxId, blob: &Blob) -> bool {
        let _ = (read_id, blob);
        true
    }

    /// The delivery window to announce in the hello, if not the one the relay
    /// keeps to (a relay that promises less than it sends).
    fn announced_window(&self) -> Option<u16> {
        None
    }
}

/// The adversary a relay runs with.
#[derive(Clone)]
pub struct AdversaryHandle(pub Arc<dyn Adversary>);

impl std::fmt::Debug for AdversaryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdversaryHandle")
    }
}
