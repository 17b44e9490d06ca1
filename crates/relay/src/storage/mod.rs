//! The relay's storage contract, and its SQLite implementation.
//!
//! The contract is written for one writer thread that batches appends (group
//! commit): [`RelayStorage::append_batch`] stores a whole batch in one durable
//! transaction, and returns only once it is on disk. A PostgreSQL implementation
//! fits the same contract (one transaction per batch, `synchronous_commit = on`).
//!
//! Contract: `Ok(None)` means absent; `Err` means the store failed and nothing of the
//! failed call was stored; a delete is irrevocable.

#[cfg(test)]
mod conformance;
pub mod postgres;
pub mod sqlite;

use backchannel_proto::addr::MailboxId;
use backchannel_proto::envelope::BLOB_LEN;
use backchannel_proto::frame::Blob;
use sha2::{Digest as _, Sha256};

/// File name of the relay database in the data directory.
pub const DATABASE_FILE: &str = "relay.db";

/// The relay's internal key of a mailbox.
pub type MailboxKey = i64;

/// A mailbox as stored.
#[derive(Clone, Debug)]
pub struct Mailbox {
    /// Internal key.
    pub key: MailboxKey,
    /// The recipient's Ed25519 public key.
    pub auth_key: [u8; 32],
    /// Messages held now.
    pub count: u64,
}

impl Mailbox {
    /// A mailbox from its stored columns.
    pub(crate) fn from_columns(
        key: MailboxKey,
        auth_key: Vec<u8>,
        count: i64,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            key,
            auth_key: auth_key
                .try_into()
                .map_err(|_| StorageError::Corrupt("an authorisation key has the wrong size"))?,
            count: count.max(0) as u64,
        })
    }
}

/// A message to store.
pub struct Append {
    /// The mailbox's send identifier.
    pub send_id: MailboxId,
    /// The blob.
    pub blob: Blob,
    /// When the message expires (milliseconds since the Unix epoch).
    pub expires_at: u64,
    /// Store it even if the same bytes were stored before (only a hostile relay in
    /// tests does this: honest retransmissions are recognised and stored once).
    pub replay: bool,
}

/// What happened to one append of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under this message number, in this mailbox. Numbers count up per
    /// mailbox: they say nothing of the traffic of other mailboxes.
    Stored {
        /// The mailbox.
        mailbox: MailboxKey,
        /// The message.
        message_id: u64,
    },
    /// This very blob was stored before (a retransmission); nothing new stored.
    Duplicate {
        /// The mailbox.
        mailbox: MailboxKey,
        /// The earlier message (0 if already delivered and deleted).
        message_id: u64,
    },
    /// No mailbox has this send identifier.
    UnknownMailbox,
    /// The mailbox is at its quota.
    QuotaExceeded,
}

/// Limits per mailbox.
#[derive(Clone, Copy, Debug)]
pub struct Quota {
    /// Most messages held.
    pub messages: u64,
    /// Most bytes held (messages are all one size; this caps them too).
    pub bytes: u64,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// SQLite failed (disk full, read-only, I/O error, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed or could not be reached.
    #[error("postgresql: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The database settings are not usable.
    #[error("{0}")]
    Config(String),
    /// Stored data is not what it should be.
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    /// The batch this operation was part of failed.
    #[error("the batch failed")]
    BatchFailed,
}

/// What a fetch found.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Deliverable messages, oldest first.
    pub messages: Vec<(u64, Blob)>,
    /// Identifiers of damaged records.
    pub damaged: Vec<u64>,
}

/// Counts for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Mailboxes.
    pub mailboxes: u64,
    /// Messages held.
    pub messages: u64,
}

/// The relay's storage.
pub trait RelayStorage: Send + 'static {
    /// Registers a mailbox.
    fn create_mailbox(
        &mut self,
        send_id: &MailboxId,
        read_id: &MailboxId,
        auth_key: &[u8; 32],
        now: u64,
    ) -> Result<(), StorageError>;
    /// A mailbox by its read identifier.
    fn mailbox_by_read(&mut self, read_id: &MailboxId) -> Result<Option<Mailbox>, StorageError>;
    /// Stores a batch in one durable transaction; one outcome per append, in order.
    fn append_batch(
        &mut self,
        batch: &[Append],
        quota: Quota,
    ) -> Result<Vec<AppendOutcome>, StorageError>;
    /// Messages of a mailbox with numbers above `after`, oldest first. Records
    /// that cannot be delivered (damaged on disk) are listed apart, to be deleted.
    fn fetch(
        &mut self,
        mailbox: MailboxKey,
        after: u64,
        limit: usize,
    ) -> Result<Fetched, StorageError>;
    /// Deletes messages, in one transaction (no error for one already gone).
    fn delete_messages(&mut self, messages: &[(MailboxKey, u64)]) -> Result<(), StorageError>;
    /// Deletes a mailbox and its messages.
    fn delete_mailbox(&mut self, mailbox: MailboxKey) -> Result<(), StorageError>;
    /// Deletes every message that expired at or before `now`; returns how many.
    fn expire(&mut self, now: u64) -> Result<u64, StorageError>;
    /// Notes that the mailbox's reader used it (subscribed) at `now`.
    fn touch(&mut self, mailbox: MailboxKey, now: u64) -> Result<(), StorageError>;
    /// Deletes every empty mailbox nobody sent to or read since `before`, with
    /// what is remembered of it; returns how many.
    fn delete_unused(&mut self, before: u64) -> Result<u64, StorageError>;
    /// Counts for metrics.
    fn counts(&mut self) -> Result<Counts, StorageError>;
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What recognises a retransmitted blob: blobs carry a random nonce, so two
/// equal blobs are one blob sent twice.
pub(crate) fn blob_digest(blob: &Blob) -> [u8; 16] {
    let full = Sha256::digest(&blob[..]);
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(full) {
        *o = b;
    }
    out
}

pub(crate) fn to_blob(bytes: Vec<u8>) -> Result<Blob, StorageError> {
    let array: [u8; BLOB_LEN] = bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("a stored blob has the wrong size"))?;
    Ok(Box::new(array))
}
