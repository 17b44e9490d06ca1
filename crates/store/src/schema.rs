//! The database schema and its migrations.
//!
//! `PRAGMA user_version` holds the schema version. Each migration takes the schema
//! from version `n` to `n + 1` and runs in the transaction that records the new
//! version. A database newer than this build is refused, never downgraded.

/// Migrations, in order; `MIGRATIONS[n]` takes version `n` to `n + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7];

/// The version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const V1: &str = "
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE mls_kv (
    label TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (label, key)
) WITHOUT ROWID;
CREATE TABLE channels (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE members (
    channel BLOB NOT NULL,
    member BLOB NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (channel, member)
);
CREATE TABLE senders (
    channel BLOB NOT NULL,
    member BLOB NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (channel, member)
);
CREATE TABLE messages (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    channel BLOB NOT NULL,
    sender BLOB NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (channel, sender, seq)
);
CREATE TABLE pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel BLOB NOT NULL,
    item TEXT NOT NULL
);
CREATE INDEX pending_by_channel ON pending (channel, id);
CREATE TABLE key_packages (
    signature_key BLOB PRIMARY KEY,
    record TEXT NOT NULL
);
";

/// Version 2: the client driver's tables — the outbox of blobs to send, our inbound
/// mailboxes with their keys, and alerts not yet shown.
const V2: &str = "
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel BLOB NOT NULL,
    relay TEXT NOT NULL,
    send_id BLOB NOT NULL,
    blob BLOB NOT NULL
);
CREATE TABLE mailboxes (
    read_id BLOB PRIMARY KEY,
    send_id BLOB NOT NULL UNIQUE,
    relay TEXT NOT NULL,
    auth_seed BLOB NOT NULL,
    channel BLOB,
    last_processed INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0
);
";

/// Version 3: blob lifetimes in the outbox (disappearing messages); each message's
/// arrival time as a column, so that expired messages are found and erased without
/// reading every record; and settings that belong to one channel (the read cursor)
/// in their own table, so that erasing the channel erases them.
const V3: &str = "
ALTER TABLE outbox ADD COLUMN ttl_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN received_at INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET received_at = coalesce(json_extract(record, '$.received_at'), 0);
CREATE INDEX messages_by_arrival ON messages (channel, received_at);
CREATE TABLE channel_settings (
    channel BLOB NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (channel, key)
);
INSERT INTO channel_settings (channel, key, value)
    SELECT unhex(substr(key, 13)), 'read-cursor', value FROM settings
    WHERE key LIKE 'read-cursor:%' AND unhex(substr(key, 13)) IS NOT NULL;
DELETE FROM settings WHERE key LIKE 'read-cursor:%';
";

/// Version 4: invite links. On the inviter's side, each link (its mailbox, the
/// seed of its key pair, whether requests are admitted without asking, whether it
/// was used, when it expires), the blobs its mailbox delivered that are not yet part of a complete
/// request, and the requests awaiting a decision; on the joiner's side, requests awaiting an answer
/// (the mailbox it will come to, the key that opens it, and the inviter's
/// signature key that the link named).
const V4: &str = "
CREATE TABLE invite_links (
    read_id BLOB PRIMARY KEY,
    channel BLOB NOT NULL,
    seed BLOB NOT NULL,
    auto_admit INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE link_blobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    read_id BLOB NOT NULL,
    blob BLOB NOT NULL
);
CREATE INDEX link_blobs_by_mailbox ON link_blobs (read_id, id);
CREATE TABLE join_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    link BLOB NOT NULL,
    channel BLOB NOT NULL,
    key_package BLOB NOT NULL,
    reply_key BLOB NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE TABLE pending_joins (
    read_id BLOB PRIMARY KEY,
    reply_key BLOB NOT NULL,
    inviter_key BLOB NOT NULL,
    name TEXT,
    created_at INTEGER NOT NULL
);
";

/// Introductions get their own table (the engine's state machine keeps them); the
/// settings that held them before go (an introduction under way when the profile
/// was upgraded has to be made again).
const V5: &str = "
CREATE TABLE introductions (
    id BLOB PRIMARY KEY,
    channels TEXT NOT NULL,
    state TEXT NOT NULL
);
DELETE FROM settings WHERE key LIKE 'intro:%' OR key LIKE 'intro-join:%'
    OR key LIKE 'intro-host:%' OR key LIKE 'intro-pending:%';
";

/// Each mailbox says what it is for (0 a channel, 1 an invite link, 2 the answer to
/// our request to join); introduction steps that arrived wait in their own table
/// until carried out, so a crash between the two loses none.
const V6: &str = "
ALTER TABLE mailboxes ADD COLUMN purpose INTEGER NOT NULL DEFAULT 0;
UPDATE mailboxes SET purpose = 1 WHERE read_id IN (SELECT read_id FROM invite_links);
UPDATE mailboxes SET purpose = 2 WHERE read_id IN (SELECT read_id FROM pending_joins);
CREATE TABLE intro_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel BLOB NOT NULL,
    record TEXT NOT NULL
);
";

/// Large OpenMLS values in content-addressed chunks (see `chunks`).
const V7: &str = "
CREATE TABLE mls_chunk (
    id BLOB PRIMARY KEY,
    refs INTEGER NOT NULL,
    data BLOB NOT NULL
);
";
