//! The engine's own tables: channels, members, sender states, messages, pending
//! inputs and key-package identities. Records are stored as JSON inside the
//! encrypted database, with the columns needed for lookups beside them.

use backchannel_core::derive::MemberId;
use backchannel_core::introduction::{IntroId, IntroState, IntroStepRecord};
use backchannel_core::store::{
    ChannelRecord, EngineStore, KeyPackageRecord, MemberRecord, MessageRecord, PendingItem,
    SenderState,
};
use backchannel_core::{ChannelId, Timestamp, Transmit};
use backchannel_proto::addr::{MailboxAddr, MailboxId};
use rusqlite::{OptionalExtension as _, params};

use crate::{Store, StoreError};

/// Unseen alerts kept per channel, at most (and as many seen ones); beyond, the
/// most repeated kind makes room and one more alert counts what was dropped.
pub const ALERTS_KEPT: i64 = 1000;
/// The kind of the alert that counts those dropped.
pub const OVERFLOW_KIND: &str = "overflow";

impl EngineStore for Store {
    type Error = StoreError;

    fn begin(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&self) -> Result<(), StoreError> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        Ok(())
    }

    fn channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT record FROM channels ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    fn save_channel(&self, channel: &ChannelRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO channels (id, name, record) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, record = excluded.record",
            )?
            .execute(params![
                &channel.id.0[..],
                channel.name,
                serde_json::to_string(channel)?
            ])?;
        Ok(())
    }

    fn delete_channel(&self, id: &ChannelId) -> Result<(), StoreError> {
        let id = &id.0[..];
        // The channel's invite links: their buffered blobs first.
        self.conn.execute(
            "DELETE FROM link_blobs WHERE read_id IN (SELECT read_id FROM invite_links WHERE channel = ?1)",
            [id],
        )?;
        for table in [
            "members",
            "senders",
            "messages",
            "pending",
            "alerts",
            "channel_settings",
            "invite_links",
            "join_requests",
            "intro_steps",
        ] {
            self.conn
                .execute(&format!("DELETE FROM {table} WHERE channel = ?1"), [id])?;
        }
        // What still waits for a relay stays, under no name; settings and
        // introductions that name the channel go.
        for table in ["outbox", "mailboxes"] {
            self.conn.execute(
                &format!("UPDATE {table} SET channel = ?2 WHERE channel = ?1"),
                params![id, &ChannelId::ERASED.0[..]],
            )?;
        }
        self.conn.execute(
            "DELETE FROM settings WHERE instr(key, lower(hex(?1))) > 0 OR instr(value, lower(hex(?1))) > 0",
            [id],
        )?;
        self.conn.execute(
            "DELETE FROM introductions WHERE instr(channels, lower(hex(?1))) > 0",
            [id],
        )?;
        self.conn
            .execute("DELETE FROM channels WHERE id = ?1", [id])?;
        Ok(())
    }

    fn members(&self, channel: &ChannelId) -> Result<Vec<MemberRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT record FROM members WHERE channel = ?1")?;
        let rows = stmt.query_map([&channel.0[..]], |r| r.get::<_, String>(0))?;
        let mut out: Vec<MemberRecord> = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        out.sort_by_key(|m| m.leaf);
        Ok(out)
    }

    fn save_members(
        &self,
        channel: &ChannelId,
        members: &[MemberRecord],
    ) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM members WHERE channel = ?1", [&channel.0[..]])?;
        let mut stmt = self
            .conn
            .prepare("INSERT INTO members (channel, member, record) VALUES (?1, ?2, ?3)")?;
        for m in members {
            stmt.execute(params![
                &channel.0[..],
                &m.member.0[..],
                serde_json::to_string(m)?
            ])?;
        }
        Ok(())
    }

    fn senders(&self, channel: &ChannelId) -> Result<Vec<SenderState>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT state FROM senders WHERE channel = ?1")?;
        let rows = stmt.query_map([&channel.0[..]], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    fn save_sender(&self, channel: &ChannelId, sender: &SenderState) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO senders (channel, member, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (channel, member) DO UPDATE SET state = excluded.state",
            )?
            .execute(params![
                &channel.0[..],
                &sender.member.0[..],
                serde_json::to_string(sender)?
            ])?;
        Ok(())
    }

    fn append_message(&self, message: &MessageRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO messages (channel, sender, seq, record, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                &message.channel.0[..],
                &message.sender.0[..],
                message.seq as i64,
                serde_json::to_string(message)?,
                message.received_at.0.min(i64::MAX as u64) as i64
            ])?;
        Ok(())
    }

    fn message(
        &self,
        channel: &ChannelId,
        sender: &MemberId,
        seq: u64,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let row: Option<(i64, String)> = self.conn.prepare_cached(
                "SELECT position, record FROM messages WHERE channel = ?1 AND sender = ?2 AND seq = ?3",
            )?.query_row(
                params![&channel.0[..], &sender.0[..], seq as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(position, record)| with_position(position, &record))
            .transpose()
    }

    fn messages(
        &self,
        channel: &ChannelId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT position, record FROM messages WHERE channel = ?1 AND position > ?2
             ORDER BY position LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![
                &channel.0[..],
                after as i64,
                limit.min(i64::MAX as usize) as i64
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (position, record) = row?;
            out.push(with_position(position, &record)?);
        }
        Ok(out)
    }

    fn push_pending(&self, channel: &ChannelId, item: &PendingItem) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached("INSERT INTO pending (channel, item) VALUES (?1, ?2)")?
            .execute(params![&channel.0[..], serde_json::to_string(item)?])?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    fn pending(&self, channel: &ChannelId) -> Result<Vec<(u64, PendingItem)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, item FROM pending WHERE channel = ?1 ORDER BY id")?;
        let rows = stmt.query_map([&channel.0[..]], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, item) = row?;
            out.push((id as u64, serde_json::from_str(&item)?));
        }
        Ok(out)
    }

    fn remove_pending(&self, channel: &ChannelId, id: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM pending WHERE channel = ?1 AND id = ?2")?
            .execute(params![&channel.0[..], id as i64])?;
        Ok(())
    }

    fn enqueue_transmit(&self, transmit: &Transmit) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO outbox (channel, relay, send_id, blob, ttl_secs) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                &transmit.channel.0[..],
                transmit.to.relay.to_string(),
                &transmit.to.send_id.0[..],
                &transmit.blob,
                transmit.ttl_secs
            ])?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    fn outbox(&self) -> Result<Vec<Transmit>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, channel, relay, send_id, blob, ttl_secs FROM outbox ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, u32>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, channel, relay, send_id, blob, ttl_secs) = row?;
            let channel: [u8; 16] = channel
                .try_into()
                .map_err(|_| StoreError::Missing("channel identifier"))?;
            let send_id: [u8; 16] = send_id
                .try_into()
                .map_err(|_| StoreError::Missing("send identifier"))?;
            out.push(Transmit {
                id: id as u64,
                channel: ChannelId(channel),
                to: MailboxAddr {
                    relay: relay
                        .parse()
                        .map_err(|_| StoreError::Missing("valid relay address"))?,
                    send_id: MailboxId(send_id),
                },
                ttl_secs,
                blob,
            });
        }
        Ok(out)
    }

    fn remove_transmit(&self, id: u64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id as i64])?;
        Ok(())
    }

    fn erase_messages_before(
        &self,
        channel: &ChannelId,
        cutoff: Timestamp,
    ) -> Result<u64, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM messages WHERE channel = ?1 AND received_at < ?2",
            params![&channel.0[..], cutoff.0.min(i64::MAX as u64) as i64],
        )?;
        Ok(n as u64)
    }

    fn oldest_message_at(&self, channel: &ChannelId) -> Result<Option<Timestamp>, StoreError> {
        let t: Option<i64> = self.conn.query_row(
            "SELECT min(received_at) FROM messages WHERE channel = ?1",
            [&channel.0[..]],
            |r| r.get(0),
        )?;
        Ok(t.map(|t| Timestamp(t.max(0) as u64)))
    }

    fn erase_mls_residue(&self, group_key: &[u8]) -> Result<(), StoreError> {
        if group_key.is_empty() {
            return Ok(());
        }
        // Each row goes with the chunks only it refers to.
        let rows: Vec<(String, Vec<u8>)> = self
            .conn
            .prepare("SELECT label, key FROM mls_kv WHERE instr(key, ?1) > 0")?
            .query_map([group_key], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (label, key) in rows {
            self.delete_value(&label, &key)?;
        }
        Ok(())
    }

    fn scrub(&self) -> Result<(), StoreError> {
        self.repair_chunks()?;
        self.checkpoint()
    }

    fn add_alert(
        &self,
        channel: &ChannelId,
        at: Timestamp,
        kind: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        let id = &channel.0[..];
        // Shown alerts beyond the limit go, oldest first, to make room.
        self.conn
            .prepare_cached(
                "DELETE FROM alerts WHERE channel = ?1 AND shown = 1 AND id NOT IN
                 (SELECT id FROM alerts WHERE channel = ?1 ORDER BY id DESC LIMIT ?2)",
            )?
            .execute(params![id, ALERTS_KEPT - 1])?;
        let unseen: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM alerts WHERE channel = ?1 AND shown = 0")?
            .query_row([id], |r| r.get(0))?;
        if unseen < ALERTS_KEPT {
            self.conn
                .prepare_cached(
                    "INSERT INTO alerts (channel, created_at, kind, text) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id, at.0 as i64, kind, text])?;
            return Ok(());
        }
        // As many unseen as are kept (a hostile relay or member may be flooding):
        // the oldest alert of the most repeated kind makes room, so a rarer one
        // (the fork the flood was meant to hide) is always kept, word for word;
        // one last alert counts those dropped.
        let evicted = self
            .conn
            .prepare_cached(
                "DELETE FROM alerts WHERE id = (SELECT min(id) FROM alerts
                 WHERE channel = ?1 AND shown = 0 AND kind = (SELECT kind FROM alerts
                   WHERE channel = ?1 AND shown = 0 AND kind != ?2
                   GROUP BY kind ORDER BY count(*) DESC, max(id) DESC LIMIT 1))",
            )?
            .execute(params![id, OVERFLOW_KIND])?;
        self.conn
            .prepare_cached(
                "INSERT INTO alerts (channel, created_at, kind, text) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, at.0 as i64, kind, text])?;
        if evicted == 0 {
            return Ok(());
        }
        let overflow: Option<(i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT id, text FROM alerts WHERE channel = ?1 AND shown = 0 AND kind = ?2
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![id, OVERFLOW_KIND], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let dropped = overflow
            .as_ref()
            .and_then(|(_, text)| text.split(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_add(1);
        let text = format!(
            "{dropped} older alerts were dropped to keep the {ALERTS_KEPT} newest unseen; \
             the most repeated kinds went first, so every kind seen is still here"
        );
        match overflow {
            Some((row, _)) => self
                .conn
                .prepare_cached("UPDATE alerts SET text = ?2, created_at = ?3 WHERE id = ?1")?
                .execute(params![row, text, at.0 as i64])?,
            None => self
                .conn
                .prepare_cached(
                    "INSERT INTO alerts (channel, created_at, kind, text) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id, at.0 as i64, OVERFLOW_KIND, text])?,
        };
        Ok(())
    }

    fn save_key_package_record(&self, record: &KeyPackageRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT INTO key_packages (signature_key, record) VALUES (?1, ?2)")?
            .execute(params![
                record.signature_key,
                serde_json::to_string(record)?
            ])?;
        Ok(())
    }

    fn key_package_records(&self) -> Result<Vec<KeyPackageRecord>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT record FROM key_packages")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    fn delete_key_package_record(&self, signature_key: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM key_packages WHERE signature_key = ?1")?
            .execute([signature_key])?;
        Ok(())
    }

    fn push_intro_step(&self, step: &IntroStepRecord) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached("INSERT INTO intro_steps (channel, record) VALUES (?1, ?2)")?
            .execute(params![&step.channel.0[..], serde_json::to_string(step)?])?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    fn intro_steps(&self) -> Result<Vec<(u64, IntroStepRecord)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, record FROM intro_steps ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, record) = row?;
            out.push((id as u64, serde_json::from_str(&record)?));
        }
        Ok(out)
    }

    fn remove_intro_step(&self, id: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM intro_steps WHERE id = ?1")?
            .execute([id as i64])?;
        Ok(())
    }

    fn introductions(&self) -> Result<Vec<(IntroId, IntroState)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, state FROM introductions ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, state) = row?;
            let id = IntroId::try_from(id.as_slice())
                .map_err(|_| StoreError::Missing("16-byte identifier"))?;
            out.push((id, serde_json::from_str(&state)?));
        }
        Ok(out)
    }

    fn save_introduction(&self, id: &IntroId, state: &IntroState) -> Result<(), StoreError> {
        let channels: Vec<String> = state.channels().iter().map(|c| c.to_string()).collect();
        self.conn
            .prepare_cached(
                "INSERT INTO introductions (id, channels, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET channels = excluded.channels, state = excluded.state",
            )?
            .execute(params![&id[..], channels.join(" "), serde_json::to_string(state)?])?;
        Ok(())
    }
}

fn with_position(position: i64, record: &str) -> Result<MessageRecord, StoreError> {
    let mut message: MessageRecord = serde_json::from_str(record)?;
    message.position = position as u64;
    Ok(message)
}
