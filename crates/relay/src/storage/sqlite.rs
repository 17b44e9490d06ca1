//! SQLite storage: WAL journal, `synchronous = FULL` (every commit is fsynced),
//! `secure_delete` (deleted blobs are overwritten).

use std::collections::HashMap;
use std::path::Path;

use backchannel_proto::addr::MailboxId;
use backchannel_proto::envelope::BLOB_LEN;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    Append, AppendOutcome, Counts, Fetched, Mailbox, MailboxKey, Quota, RelayStorage, StorageError,
    blob_digest as digest, now_ms, to_blob,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mailboxes (
    key INTEGER PRIMARY KEY,
    send_id BLOB NOT NULL UNIQUE,
    read_id BLOB NOT NULL UNIQUE,
    auth_key BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0,
    -- When someone last sent to it or its reader subscribed (ms): an empty
    -- mailbox unused for the message lifetime is deleted.
    used_at INTEGER NOT NULL DEFAULT 0
);
-- `seq` is the message's number in its mailbox: what clients see and acknowledge.
-- The global `id` never leaves the relay (it would tell a reader how much the
-- whole relay carries between two of its messages).
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    digest BLOB NOT NULL,
    blob BLOB NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (mailbox, digest)
);
-- Digests of delivered (deleted) messages, kept until they would have expired, so
-- that a sender retrying a blob the relay already took is not stored twice.
CREATE TABLE IF NOT EXISTS delivered (
    mailbox INTEGER NOT NULL,
    digest BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (mailbox, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_by_expiry ON delivered (expires_at);

CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at);
";

/// The SQLite store.
pub struct SqliteStorage {
    conn: Connection,
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`. `max_bytes`, if set, caps
    /// the database size: past it, writes fail as on a full disk.
    pub fn open(path: &Path, max_bytes: Option<u64>) -> Result<Self, StorageError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA secure_delete = ON;
             PRAGMA foreign_keys = ON;",
        )?;
        if let Some(max) = max_bytes {
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = (max / page_size.max(512) as u64).max(16);
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        }
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        conn.execute_batch(
            "CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages (mailbox, seq);
             DROP INDEX IF EXISTS messages_by_mailbox;",
        )?;
        Ok(Self { conn })
    }
}

/// Brings a database written before per-mailbox numbers up to date: messages
/// keep their old (global) identifier as their number, and every mailbox numbers
/// its next messages above the highest identifier ever given, so no client sees
/// a number go back.
fn migrate(conn: &Connection) -> Result<(), StorageError> {
    let has = |table: &str, column: &str| -> Result<bool, StorageError> {
        Ok(conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )?)
    };
    if !has("mailboxes", "used_at")? {
        // Mailboxes from before get a full lifetime from the upgrade on.
        conn.execute_batch("ALTER TABLE mailboxes ADD COLUMN used_at INTEGER NOT NULL DEFAULT 0;")?;
        conn.execute("UPDATE mailboxes SET used_at = ?1", [now_ms() as i64])?;
    }
    if has("messages", "seq")? {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
         UPDATE messages SET seq = id;
         ALTER TABLE mailboxes ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
         UPDATE mailboxes SET last_seq =
             coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0);
         COMMIT;",
    )?;
    Ok(())
}

impl SqliteStorage {
    /// Copies the write-ahead log into the database and truncates it, so that no
    /// image of a deleted page survives there. A reader in the middle of a query can
    /// make it give up ("busy"); it is retried briefly, and in any case the log is
    /// overwritten as it is reused.
    fn empty_log(&self) {
        for _ in 0..5 {
            let busy = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                });
            if busy.is_ok_and(|b| b == 0) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::warn!("the log could not be emptied after a deletion; it will be overwritten");
    }
}

impl RelayStorage for SqliteStorage {
    fn create_mailbox(
        &mut self,
        send_id: &MailboxId,
        read_id: &MailboxId,
        auth_key: &[u8; 32],
        now: u64,
    ) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO mailboxes (send_id, read_id, auth_key, created_at, used_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![&send_id.0[..], &read_id.0[..], &auth_key[..], now as i64],
        )?;
        Ok(())
    }

    fn mailbox_by_read(&mut self, read_id: &MailboxId) -> Result<Option<Mailbox>, StorageError> {
        let row: Option<(i64, Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT key, auth_key, count FROM mailboxes WHERE read_id = ?1",
                [&read_id.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(key, auth_key, count)| Mailbox::from_columns(key, auth_key, count))
            .transpose()
    }

    fn append_batch(
        &mut self,
        batch: &[Append],
        quota: Quota,
    ) -> Result<Vec<AppendOutcome>, StorageError> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut find =
                tx.prepare_cached("SELECT key, count FROM mailboxes WHERE send_id = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (mailbox, expires_at, digest, blob, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut seen = tx.prepare_cached(
                "SELECT seq FROM messages WHERE mailbox = ?1 AND digest = ?2
                 UNION ALL SELECT 0 FROM delivered WHERE mailbox = ?1 AND digest = ?2",
            )?;
            let mut bump = tx.prepare_cached(
                "UPDATE mailboxes SET count = count + 1, last_seq = last_seq + 1,
                     used_at = max(used_at, ?2)
                 WHERE key = ?1 RETURNING last_seq",
            )?;
            let max_messages = quota.messages.min(quota.bytes / BLOB_LEN as u64);
            for append in batch {
                let found: Option<(i64, i64)> = find
                    .query_row([&append.send_id.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let Some((mailbox, count)) = found else {
                    outcomes.push(AppendOutcome::UnknownMailbox);
                    continue;
                };
                let digest = if append.replay {
                    // A copy a hostile test relay stores again gets a digest of its own.
                    let mut random = [0u8; 16];
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
                    random
                } else {
                    digest(&append.blob)
                };
                let earlier: Option<i64> = if append.replay {
                    None
                } else {
                    seen.query_row(params![mailbox, &digest[..]], |r| r.get(0))
                        .optional()?
                };
                if let Some(id) = earlier {
                    // A retransmission of a blob already taken (the sender did not
                    // see our acknowledgement): acknowledge again, store nothing.
                    outcomes.push(AppendOutcome::Duplicate {
                        mailbox,
                        message_id: id.max(0) as u64,
                    });
                    continue;
                }
                if count.max(0) as u64 >= max_messages {
                    outcomes.push(AppendOutcome::QuotaExceeded);
                    continue;
                }
                let seq: i64 = bump.query_row(params![mailbox, now as i64], |r| r.get(0))?;
                insert.execute(params![
                    mailbox,
                    append.expires_at as i64,
                    &digest[..],
                    &append.blob[..],
                    seq
                ])?;
                let message_id = seq as u64;
                outcomes.push(AppendOutcome::Stored {
                    mailbox,
                    message_id,
                });
            }
        }
        // With synchronous = FULL this returns after the WAL is fsynced.
        tx.commit()?;
        Ok(outcomes)
    }

    fn fetch(
        &mut self,
        mailbox: MailboxKey,
        after: u64,
        limit: usize,
    ) -> Result<Fetched, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, blob FROM messages WHERE mailbox = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![mailbox, after as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Fetched::default();
        for row in rows {
            let (id, blob) = row?;
            // A record of the wrong size cannot be delivered; it must not block the
            // records after it either.
            match to_blob(blob) {
                Ok(blob) => out.messages.push((id as u64, blob)),
                Err(_) => out.damaged.push(id as u64),
            }
        }
        Ok(out)
    }

    fn delete_messages(&mut self, messages: &[(MailboxKey, u64)]) -> Result<(), StorageError> {
        let tx = self.conn.transaction()?;
        {
            let mut remember = tx.prepare_cached(
                "INSERT OR IGNORE INTO delivered (mailbox, digest, expires_at)
                 SELECT mailbox, digest, expires_at FROM messages WHERE mailbox = ?1 AND seq = ?2",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM messages WHERE mailbox = ?1 AND seq = ?2")?;
            let mut count =
                tx.prepare_cached("UPDATE mailboxes SET count = count - ?1 WHERE key = ?2")?;
            // One counter update per mailbox, not per message.
            let mut deleted_from: HashMap<MailboxKey, i64> = HashMap::new();
            for (mailbox, message_id) in messages {
                remember.execute(params![mailbox, *message_id as i64])?;
                let deleted = delete.execute(params![mailbox, *message_id as i64])?;
                if deleted > 0 {
                    *deleted_from.entry(*mailbox).or_default() += deleted as i64;
                }
            }
            for (mailbox, deleted) in deleted_from {
                count.execute(params![deleted, mailbox])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_mailbox(&mut self, mailbox: MailboxKey) -> Result<(), StorageError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM messages WHERE mailbox = ?1", [mailbox])?;
        tx.execute("DELETE FROM delivered WHERE mailbox = ?1", [mailbox])?;
        tx.execute("DELETE FROM mailboxes WHERE key = ?1", [mailbox])?;
        tx.commit()?;
        // The deleted pages are overwritten in the database; their old images in the
        // log go too.
        self.empty_log();
        Ok(())
    }

    fn expire(&mut self, now: u64) -> Result<u64, StorageError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE mailboxes SET count = count - (
                 SELECT count(*) FROM messages WHERE messages.mailbox = mailboxes.key AND expires_at <= ?1)
             WHERE key IN (SELECT mailbox FROM messages WHERE expires_at <= ?1)",
            [now as i64],
        )?;
        let deleted = tx.execute("DELETE FROM messages WHERE expires_at <= ?1", [now as i64])?;
        tx.execute("DELETE FROM delivered WHERE expires_at <= ?1", [now as i64])?;
        tx.commit()?;
        if deleted > 0 {
            self.empty_log();
        }
        Ok(deleted as u64)
    }

    fn touch(&mut self, mailbox: MailboxKey, now: u64) -> Result<(), StorageError> {
        self.conn
            .prepare_cached("UPDATE mailboxes SET used_at = max(used_at, ?2) WHERE key = ?1")?
            .execute(params![mailbox, now as i64])?;
        Ok(())
    }

    fn delete_unused(&mut self, before: u64) -> Result<u64, StorageError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM delivered WHERE mailbox IN
                 (SELECT key FROM mailboxes WHERE count = 0 AND used_at <= ?1)",
            [before as i64],
        )?;
        let deleted = tx.execute(
            "DELETE FROM mailboxes WHERE count = 0 AND used_at <= ?1",
            [before as i64],
        )?;
        tx.commit()?;
        if deleted > 0 {
            self.empty_log();
        }
        Ok(deleted as u64)
    }

    fn counts(&mut self) -> Result<Counts, StorageError> {
        let mailboxes: i64 = self
            .conn
            .query_row("SELECT count(*) FROM mailboxes", [], |r| r.get(0))?;
        let messages: i64 =
            self.conn
                .query_row("SELECT coalesce(sum(count), 0) FROM mailboxes", [], |r| {
                    r.get(0)
                })?;
        Ok(Counts {
            mailboxes: mailboxes.max(0) as u64,
            messages: messages.max(0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::conformance::{blob, conformance_tests, numbered, stored};

    fn open() -> Option<(tempfile::TempDir, SqliteStorage)> {
        let tmp = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(&tmp.path().join("r.db"), None).unwrap();
        Some((tmp, s))
    }

    conformance_tests!(open());

    #[test]
    fn a_database_from_before_per_mailbox_numbers_is_migrated() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("r.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE mailboxes (key INTEGER PRIMARY KEY, send_id BLOB NOT NULL UNIQUE,
                     read_id BLOB NOT NULL UNIQUE, auth_key BLOB NOT NULL,
                     created_at INTEGER NOT NULL, count INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
                     mailbox INTEGER NOT NULL, expires_at INTEGER NOT NULL,
                     digest BLOB NOT NULL, blob BLOB NOT NULL, UNIQUE (mailbox, digest));
                 CREATE INDEX messages_by_mailbox ON messages (mailbox, id);",
            )
            .unwrap();
            old.execute(
                "INSERT INTO mailboxes (send_id, read_id, auth_key, created_at, count)
                 VALUES (?1, ?2, ?3, 0, 1)",
                params![&[1u8; 16][..], &[2u8; 16][..], &[3u8; 32][..]],
            )
            .unwrap();
            // Message 41 was delivered (deleted) long ago; 42 waits.
            old.execute(
                "INSERT INTO messages (id, mailbox, expires_at, digest, blob)
                 VALUES (41, 1, 1000, x'00', x'00'), (42, 1, 1000, ?1, ?2)",
                params![&digest(&blob(7))[..], &blob(7)[..]],
            )
            .unwrap();
            old.execute("DELETE FROM messages WHERE id = 41", [])
                .unwrap();
        }
        let mut s = SqliteStorage::open(&path, None).unwrap();
        let key = s.mailbox_by_read(&MailboxId([2; 16])).unwrap().unwrap().key;
        let waiting = s.fetch(key, 0, 10).unwrap().messages;
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].0, 42, "a waiting message keeps its number");
        let out = s
            .append_batch(
                &[Append {
                    send_id: MailboxId([1; 16]),
                    blob: blob(8),
                    expires_at: 1000,
                    replay: false,
                }],
                Quota {
                    messages: 3,
                    bytes: u64::MAX,
                },
            )
            .unwrap();
        assert_eq!(stored(&out), [43], "numbers never go back");
    }

    #[test]
    fn a_full_database_fails_the_batch_and_stores_nothing_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SqliteStorage::open(&tmp.path().join("r.db"), Some(128 * 1024)).unwrap();
        let send = MailboxId([1; 16]);
        s.create_mailbox(&send, &MailboxId([2; 16]), &[3; 32], 0)
            .unwrap();
        let quota = Quota {
            messages: u64::MAX,
            bytes: u64::MAX,
        };
        let mut stored = 0;
        let error = loop {
            let batch: Vec<Append> = (0..5u32)
                .map(|i| Append {
                    send_id: send,
                    blob: numbered(stored as u32 * 5 + i),
                    expires_at: u64::MAX / 2,
                    replay: false,
                })
                .collect();
            match s.append_batch(&batch, quota) {
                Ok(out) => stored += out.len(),
                Err(e) => break e,
            }
            assert!(stored < 1000, "the cap never took effect");
        };
        assert!(error.to_string().contains("full"), "{error}");
        let mb = s.mailbox_by_read(&MailboxId([2; 16])).unwrap().unwrap();
        assert_eq!(s.fetch(mb.key, 0, 10_000).unwrap().messages.len(), stored);
    }
}
