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
    /// What arrives in it, which says where a delivery goes.
    pub purpose: MailboxPurpose,
    /// The relay's identifier of the last message processed from it.
    pub last_processed: u64,
    /// When it was created.
    pub created_at: Timestamp,
}

/// What one of our mailboxes is for: the client routes each delivery by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxPurpose {
    /// A channel's messages (or, before its key package is used, its welcome's
    /// followers).
    Channel,
    /// Requests to join through one of our invite links.
    InviteLink,
    /// The answer to our request to join through a link, then the channel's
    /// messages that came before we could read them.
    JoinAnswer,
}

impl MailboxPurpose {
    fn code(self) -> i64 {
        match self {
            MailboxPurpose::Channel => 0,
            MailboxPurpose::InviteLink => 1,
            MailboxPurpose::JoinAnswer => 2,
        }
    }

    fn from_code(code: i64) -> Result<Self, StoreError> {
        match code {
            0 => Ok(MailboxPurpose::Channel),
            1 => Ok(MailboxPurpose::InviteLink),
            2 => Ok(MailboxPurpose::JoinAnswer),
            _ => Err(StoreError::Missing("known mailbox purpose")),
        }
    }
}

impl std::fmt::Debug for MailboxRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxRecord")
            .field("relay", &self.relay)
            .field("channel", &self.channel)
            .field("purpose", &self.purpose)
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
            "INSERT INTO mailboxes (read_id, send_id, relay, auth_seed, channel, last_processed, created_at, purpose)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (read_id) DO UPDATE SET channel = excluded.channel,
                 last_processed = excluded.last_processed, purpose = excluded.purpose",
        )?.execute(
            params![
                &m.read_id.0[..],
                &m.send_id.0[..],
                m.relay.to_string(),
                &m.auth_seed[..],
                m.channel.map(|c| c.0.to_vec()),
                m.last_processed as i64,
                m.created_at.0 as i64,
                m.purpose.code()
            ],
        )?;
        Ok(())
    }

    /// Every mailbox of ours.
    pub fn mailboxes(&self) -> Result<Vec<MailboxRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT read_id, send_id, relay, auth_seed, channel, last_processed, created_at, purpose
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
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (read, send, relay, seed, channel, last, created, purpose) = row?;
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
                purpose: MailboxPurpose::from_code(purpose)?,
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

/// An invite link we made.
pub struct InviteLinkRecord {
    /// Its mailbox.
    pub read_id: MailboxId,
    /// The channel it invites to.
    pub channel: ChannelId,
    /// The seed of its key pair.
    pub seed: Zeroizing<[u8; 32]>,
    /// Admit requests without asking.
    pub auto_admit: bool,
    /// Someone was admitted through it: it takes no more requests.
    pub used: bool,
    /// It takes no requests after this.
    pub expires_at: Timestamp,
}

impl InviteLinkRecord {
    /// Whether it no longer takes requests (used, or expired at `now`).
    pub fn closed(&self, now: Timestamp) -> bool {
        self.used || now >= self.expires_at
    }
}

/// A request to join one of our channels, awaiting a decision.
pub struct JoinRequestRecord {
    /// Its number.
    pub id: u64,
    /// The mailbox of the link it came through.
    pub link: MailboxId,
    /// The channel.
    pub channel: ChannelId,
    /// The joiner's key package.
    pub key_package: Vec<u8>,
    /// Seals our answer.
    pub reply_key: Zeroizing<[u8; 32]>,
    /// When it arrived.
    pub received_at: Timestamp,
}

/// A request of ours to join, awaiting an answer in `read_id`.
pub struct PendingJoinRecord {
    /// The mailbox the answer comes to.
    pub read_id: MailboxId,
    /// Opens the answer.
    pub reply_key: Zeroizing<[u8; 32]>,
    /// The inviter's signature key, as the link named it.
    pub inviter_key: [u8; 32],
    /// Our local name for the channel, if we chose one.
    pub name: Option<String>,
}

fn key32(bytes: Vec<u8>) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Missing("32-byte key"))?;
    Ok(Zeroizing::new(array))
}

/// How many unassembled blobs a link keeps (the oldest go first): anyone can write
/// to a link's mailbox, and each arrival rescans what is kept (15 ms for 64 blobs,
/// 173 ms for 256: `cargo bench -p backchannel-sim --bench links`). A request is two
/// or three blobs.
pub(crate) const LINK_BLOBS_KEPT: i64 = 64;

/// How many blobs the mailbox an answer to our join request comes to keeps: a
/// welcome to a channel of hundreds is hundreds of blobs (at most
/// [`backchannel_proto::envelope::MAX_FRAGMENTS`]), and the channel's first
/// messages may come before it is whole. Only the inviter (and the relay) can write
/// there, and each arrival is one symmetric open per kept blob.
pub(crate) const ANSWER_BLOBS_KEPT: i64 = backchannel_proto::envelope::MAX_FRAGMENTS as i64 + 64;

impl Store {
    /// Records an invite link.
    pub fn save_invite_link(
        &self,
        link: &InviteLinkRecord,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.atomically(|| {
            self.conn.execute(
                "INSERT INTO invite_links (read_id, channel, seed, auto_admit, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    &link.read_id.0[..],
                    &link.channel.0[..],
                    &link.seed[..],
                    link.auto_admit,
                    now.0 as i64,
                    link.expires_at.0.min(i64::MAX as u64) as i64
                ],
            )?;
            self.set_purpose(&link.read_id, MailboxPurpose::InviteLink)
        })
    }

    /// The invite link whose mailbox this is.
    pub fn invite_link(&self, read_id: &MailboxId) -> Result<Option<InviteLinkRecord>, StoreError> {
        /// channel, seed, auto_admit, used, expires_at
        type Row = (Vec<u8>, Vec<u8>, bool, bool, i64);
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT channel, seed, auto_admit, used, expires_at FROM invite_links
                 WHERE read_id = ?1",
                [&read_id.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        row.map(|(channel, seed, auto_admit, used, expires_at)| {
            Ok(InviteLinkRecord {
                read_id: *read_id,
                channel: ChannelId(id16(channel)?),
                seed: key32(seed)?,
                auto_admit,
                used,
                expires_at: Timestamp(expires_at.max(0) as u64),
            })
        })
        .transpose()
    }

    /// The mailboxes of links that were used or have expired at `now` (to be
    /// deleted at their relays).
    pub fn closed_invite_links(&self, now: Timestamp) -> Result<Vec<MailboxId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT read_id FROM invite_links WHERE used = 1 OR expires_at <= ?1")?;
        let rows = stmt.query_map([now.0.min(i64::MAX as u64) as i64], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(MailboxId(id16(row?)?));
        }
        Ok(out)
    }

    /// Forgets a used link whose mailbox is gone.
    pub fn forget_invite_link(&self, read_id: &MailboxId) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM invite_links WHERE read_id = ?1",
            [&read_id.0[..]],
        )?;
        Ok(())
    }

    /// Marks a link used (someone was admitted through it) and forgets its blobs.
    pub fn use_invite_link(&self, read_id: &MailboxId) -> Result<(), StoreError> {
        let id = &read_id.0[..];
        self.conn
            .execute("UPDATE invite_links SET used = 1 WHERE read_id = ?1", [id])?;
        self.conn
            .execute("DELETE FROM link_blobs WHERE read_id = ?1", [id])?;
        Ok(())
    }

    /// Keeps a blob a link's mailbox delivered (once: a blob delivered again is not
    /// kept twice); returns every blob kept for it, in order, with their numbers.
    pub fn add_link_blob(
        &self,
        read_id: &MailboxId,
        blob: &[u8],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.keep_blob(read_id, blob, LINK_BLOBS_KEPT)
    }

    /// Keeps a blob of the mailbox the answer to our join request comes to, as
    /// [`Store::add_link_blob`] does, with room for a whole welcome.
    pub fn add_answer_blob(
        &self,
        read_id: &MailboxId,
        blob: &[u8],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.keep_blob(read_id, blob, ANSWER_BLOBS_KEPT)
    }

    fn keep_blob(
        &self,
        read_id: &MailboxId,
        blob: &[u8],
        keep: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let id = &read_id.0[..];
        self.conn.execute(
            "INSERT INTO link_blobs (read_id, blob) SELECT ?1, ?2
             WHERE NOT EXISTS (SELECT 1 FROM link_blobs WHERE read_id = ?1 AND blob = ?2)",
            params![id, blob],
        )?;
        self.conn.execute(
            "DELETE FROM link_blobs WHERE read_id = ?1 AND id NOT IN
                 (SELECT id FROM link_blobs WHERE read_id = ?1 ORDER BY id DESC LIMIT ?2)",
            params![id, keep],
        )?;
        let mut stmt = self
            .conn
            .prepare("SELECT id, blob FROM link_blobs WHERE read_id = ?1 ORDER BY id")?;
        let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets blobs of a link (they made a request).
    pub fn remove_link_blobs(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM link_blobs WHERE id = ?1")?;
        for id in ids {
            stmt.execute([id])?;
        }
        Ok(())
    }

    /// Records a request to join; returns its number.
    pub fn add_join_request(
        &self,
        link: &MailboxId,
        channel: &ChannelId,
        key_package: &[u8],
        reply_key: &[u8; 32],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.conn.execute(
            "INSERT INTO join_requests (link, channel, key_package, reply_key, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                &link.0[..],
                &channel.0[..],
                key_package,
                &reply_key[..],
                now.0 as i64
            ],
        )?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Requests to join awaiting a decision (of one channel, or all).
    pub fn join_requests(
        &self,
        channel: Option<&ChannelId>,
    ) -> Result<Vec<JoinRequestRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, channel, key_package, reply_key, received_at, link FROM join_requests
             ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Vec<u8>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, ch, key_package, reply_key, at, link) = row?;
            let ch = ChannelId(id16(ch)?);
            if channel.is_some_and(|c| *c != ch) {
                continue;
            }
            out.push(JoinRequestRecord {
                id: id.max(0) as u64,
                link: MailboxId(id16(link)?),
                channel: ch,
                key_package,
                reply_key: key32(reply_key)?,
                received_at: Timestamp(at.max(0) as u64),
            });
        }
        Ok(out)
    }

    /// Forgets a request (decided).
    pub fn remove_join_request(&self, id: u64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM join_requests WHERE id = ?1", [id as i64])?;
        Ok(())
    }

    /// Records our request to join, awaiting its answer.
    pub fn save_pending_join(
        &self,
        p: &PendingJoinRecord,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.atomically(|| {
            self.conn.execute(
                "INSERT INTO pending_joins (read_id, reply_key, inviter_key, name, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    &p.read_id.0[..],
                    &p.reply_key[..],
                    &p.inviter_key[..],
                    p.name,
                    now.0 as i64
                ],
            )?;
            self.set_purpose(&p.read_id, MailboxPurpose::JoinAnswer)
        })
    }

    /// Our request waiting in this mailbox, if any.
    pub fn pending_join(
        &self,
        read_id: &MailboxId,
    ) -> Result<Option<PendingJoinRecord>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT reply_key, inviter_key, name FROM pending_joins WHERE read_id = ?1",
                [&read_id.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(key, inviter_key, name)| {
            Ok(PendingJoinRecord {
                read_id: *read_id,
                reply_key: key32(key)?,
                inviter_key: *key32(inviter_key)?,
                name,
            })
        })
        .transpose()
    }

    /// Every mailbox with a request of ours waiting in it.
    pub fn pending_join_mailboxes(&self) -> Result<Vec<MailboxId>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT read_id FROM pending_joins")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(MailboxId(id16(row?)?));
        }
        Ok(out)
    }

    /// Forgets our request (answered) and the blobs its answer came in.
    pub fn remove_pending_join(&self, read_id: &MailboxId) -> Result<(), StoreError> {
        let id = &read_id.0[..];
        self.atomically(|| {
            self.conn
                .execute("DELETE FROM pending_joins WHERE read_id = ?1", [id])?;
            self.conn
                .execute("DELETE FROM link_blobs WHERE read_id = ?1", [id])?;
            self.set_purpose(read_id, MailboxPurpose::Channel)
        })
    }

    fn set_purpose(&self, read_id: &MailboxId, purpose: MailboxPurpose) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE mailboxes SET purpose = ?1 WHERE read_id = ?2")?
            .execute(params![purpose.code(), &read_id.0[..]])?;
        Ok(())
    }
}
