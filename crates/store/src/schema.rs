//! The database schema and its migrations.
//!
//! `PRAGMA user_version` holds the schema version. Each migration takes the schema
//! from version `n` to `n + 1` and runs in the transaction that records the new
//! version. A database newer than this build is refused, never downgraded.

/// Migrations, in order; `MIGRATIONS[n]` takes version `n` to `n + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1];

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
