//! The client driver's tables (schema version 2): our inbound mailboxes with their
//! authorisation keys, and alerts not yet shown to the person.

use backchannel_core::{ChannelId, Timestamp};
use backchannel_proto::addr::{MailboxId, RelayAddr};
use rusqlite::{OptionalExtension as _, params};
use zeroize::Zeroizing;

use crate::{Store, StoreError};

/// One of our inbound mailboxes.
#[derive(Clone)]
pub struct MailboxRecord {
    /// The identifier we read with.
    pub read_id: MailboxId,
    /// The identifier others send with.
    pub send_id: MailboxId,
    /// The relay holding it.
    pub relay: RelayAddr,
    /// The Ed25519 seed of the key that authorises reading it.
    pub auth_seed: Zeroizing<[u8; 32]>,
    /// The channel it serves (none while its key package awaits a welcome).
    pub channel: Option<ChannelId>,
    /// The relay's identifier of the last message processed from it.
    pub last_processed: u64,
    /// When it was created.
    pub created_at: Timestamp,
}

impl std::fmt::Debug for MailboxRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxRecord")
            .field("relay", &self.relay)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// An alert kept until the person has seen it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRecord {
    /// Its place.
    pub id: u64,
    /// The channel.
    pub channel: ChannelId,
    /// When it was raised.
    pub created_at: Timestamp,
    /// Its kind (see `Alert::kind`).
    pub kind: String,
    /// What it says.
    pub text: String,
}

fn id16(bytes: Vec<u8>) -> Result<[u8; 16], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Missing("16-byte identifier"))
}

impl Store {
    /// Records one of our mailboxes.
    pub fn save_mailbox(&self, m: &MailboxRecord) -> Result<(), StoreError> {
        self.conn.prepare_cached(
            "INSERT INTO mailboxes (read_id, send_id, relay, auth_seed, channel, last_processed, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (read_id) DO UPDATE SET channel = excluded.channel,
                 last_processed = excluded.last_processed",
        )?.execute(
            params![
                &m.read_id.0[..],
                &m.send_id.0[..],
                m.relay.to_string(),
                &m.auth_seed[..],
                m.channel.map(|c| c.0.to_vec()),
                m.last_processed as i64,
                m.created_at.0 as i64
            ],
        )?;
        Ok(())
    }

    /// Every mailbox of ours.
    pub fn mailboxes(&self) -> Result<Vec<MailboxRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT read_id, send_id, relay, auth_seed, channel, last_processed, created_at
             FROM mailboxes ORDER BY created_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                Zeroizing::new(r.get::<_, Vec<u8>>(3)?),
                r.get::<_, Option<Vec<u8>>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (read, send, relay, seed, channel, last, created) = row?;
            let mut auth_seed = Zeroizing::new([0u8; 32]);
            if seed.len() != 32 {
                return Err(StoreError::Missing("32-byte mailbox key"));
            }
            auth_seed.copy_from_slice(&seed);
            out.push(MailboxRecord {
                read_id: MailboxId(id16(read)?),
                send_id: MailboxId(id16(send)?),
                relay: relay
                    .parse()
                    .map_err(|_| StoreError::Missing("valid relay address"))?,
                auth_seed,
                channel: channel.map(id16).transpose()?.map(ChannelId),
                last_processed: last.max(0) as u64,
                created_at: Timestamp(created.max(0) as u64),
            });
        }
        Ok(out)
    }

    /// Ties the mailbox with this send identifier to a channel.
    pub fn bind_mailbox(&self, send_id: &MailboxId, channel: &ChannelId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE mailboxes SET channel = ?1 WHERE send_id = ?2")?
            .execute(params![&channel.0[..], &send_id.0[..]])?;
        Ok(())
    }

    /// The relay's identifier of the last message processed from a mailbox.
    pub fn last_processed(&self, read_id: &MailboxId) -> Result<u64, StoreError> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT last_processed FROM mailboxes WHERE read_id = ?1")?
            .query_row([&read_id.0[..]], |r| r.get(0))
            .optional()?;
        Ok(last.unwrap_or(0).max(0) as u64)
    }

    /// Records that a mailbox's messages up to `message_id` are processed.
    pub fn set_last_processed(
        &self,
        read_id: &MailboxId,
        message_id: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE mailboxes SET last_processed = max(last_processed, ?1) WHERE read_id = ?2",
            )?
            .execute(params![message_id as i64, &read_id.0[..]])?;
        Ok(())
    }

    /// Forgets a mailbox (after deleting it at its relay).
    pub fn delete_mailbox_record(&self, read_id: &MailboxId) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM mailboxes WHERE read_id = ?1", [&read_id.0[..]])?;
        Ok(())
    }

    /// Alerts of a channel not yet shown, oldest first.
    pub fn unshown_alerts(&self, channel: &ChannelId) -> Result<Vec<AlertRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, created_at, kind, text FROM alerts WHERE channel = ?1 AND shown = 0 ORDER BY id",
        )?;
        let rows = stmt.query_map([&channel.0[..]], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, kind, text) = row?;
            out.push(AlertRecord {
                id: id as u64,
                channel: *channel,
                created_at: Timestamp(at.max(0) as u64),
                kind,
                text,
            });
        }
        Ok(out)
    }

    /// Marks alerts as shown.
    pub fn mark_alerts_shown(&self, ids: &[u64]) -> Result<(), StoreError> {
        for id in ids {
            self.conn
                .execute("UPDATE alerts SET shown = 1 WHERE id = ?1", [*id as i64])?;
        }
        Ok(())
    }
}
