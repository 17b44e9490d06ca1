//! PostgreSQL storage, for relays of several nodes on one database.
//!
//! Each node runs the same storage threads as on SQLite (one writer doing group
//! commits, one reader), each over its own connection. Durability is PostgreSQL's:
//! `synchronous_commit = on`, so a batch is acknowledged only after its commit is
//! flushed to the write-ahead log. Nodes share nothing but the database; the
//! appends of one node wake the readers of another through `NOTIFY` (the
//! listener is in the relay's cluster module).
//!
//! Concurrency between nodes: every transaction locks the mailbox rows it
//! changes, in key order, before anything else, so two nodes appending to one
//! mailbox queue behind each other and its quota holds; expiry takes messages in
//! batches with `FOR UPDATE SKIP LOCKED`, so sweeps of several nodes never wait on
//! each other. A transaction that still meets a deadlock or a serialisation
//! failure is run again.
//!
//! A connection that breaks (the server restarted, the network failed) fails the
//! call it was in, and the next call connects again: nothing is acknowledged
//! while the database is away, and everything resumes when it is back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use backchannel_proto::addr::MailboxId;
use backchannel_proto::envelope::BLOB_LEN;
use postgres::config::SslMode;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Append, AppendOutcome, Counts, Fetched, Mailbox, MailboxKey, Quota, RelayStorage, StorageError,
    blob_digest, now_ms, to_blob,
};

/// The channel of `NOTIFY` on which nodes tell each other of news.
pub const NOTIFY_CHANNEL: &str = "backchannel";

/// How many expired messages one expiry transaction deletes.
const EXPIRE_BATCH: i64 = 1_000;

/// How many times a transaction that met a deadlock or a serialisation failure
/// is run again.
const RETRIES: usize = 4;

/// Versioned migrations, applied in order, each in its own transaction.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE mailboxes (
         key BIGSERIAL PRIMARY KEY,
         send_id BYTEA NOT NULL UNIQUE,
         read_id BYTEA NOT NULL UNIQUE,
         auth_key BYTEA NOT NULL,
         created_at BIGINT NOT NULL,
         count BIGINT NOT NULL DEFAULT 0,
         last_seq BIGINT NOT NULL DEFAULT 0,
         used_at BIGINT NOT NULL DEFAULT 0
     );
     -- seq is the message's number in its mailbox: what clients see and acknowledge.
     CREATE TABLE messages (
         mailbox BIGINT NOT NULL REFERENCES mailboxes (key) ON DELETE CASCADE,
         seq BIGINT NOT NULL,
         expires_at BIGINT NOT NULL,
         digest BYTEA NOT NULL,
         blob BYTEA NOT NULL,
         PRIMARY KEY (mailbox, seq),
         UNIQUE (mailbox, digest)
     );
     -- Blobs are ciphertext, which does not compress, and fit in a page: kept in
     -- the row, never in a TOAST table.
     ALTER TABLE messages ALTER COLUMN blob SET STORAGE PLAIN;
     CREATE INDEX messages_by_expiry ON messages (expires_at);
     -- Digests of delivered messages, until they would have expired, so that a
     -- sender retrying a blob the relay already took is not stored twice.
     CREATE TABLE delivered (
         mailbox BIGINT NOT NULL,
         digest BYTEA NOT NULL,
         expires_at BIGINT NOT NULL,
         PRIMARY KEY (mailbox, digest)
     );
     CREATE INDEX delivered_by_expiry ON delivered (expires_at);
     -- Rendezvous for codes, shared by the nodes: who opened (node and
     -- connection), who joined, and whether anyone ever joined.
     CREATE TABLE rendezvous (
         nameplate INTEGER PRIMARY KEY,
         opened_at BIGINT NOT NULL,
         opener TEXT NOT NULL,
         joiner TEXT,
         used BOOLEAN NOT NULL DEFAULT false,
         -- Which rendezvous under this number (numbers are used again).
         instance BIGINT NOT NULL
     );",
)];

/// The key of the advisory lock under which migrations run (two nodes starting
/// together migrate one after the other).
const MIGRATION_LOCK: i64 = 0x6263_7265_6c61_7931;

/// The PostgreSQL store of one node's storage thread.
pub struct PostgresStorage {
    database: Database,
    client: Option<Client>,
    /// The database's clock minus this node's (0 when they agree within
    /// [`CLOCK_TOLERANCE_MS`]): every time this node hands the database is moved by
    /// it, so that nodes with different clocks expire and delete alike.
    offset_ms: i64,
}

/// Clocks of nodes and database within this much are taken to agree.
const CLOCK_TOLERANCE_MS: i64 = 2_000;

/// How this node's clock stands to the database's.
fn clock_offset(client: &mut Client) -> Result<i64, StorageError> {
    let local = now_ms() as i64;
    let db: i64 = client
        .query_one(
            "SELECT (extract(epoch from clock_timestamp()) * 1000)::BIGINT",
            &[],
        )?
        .get(0);
    let offset = db - local;
    if offset.abs() < CLOCK_TOLERANCE_MS {
        return Ok(0);
    }
    tracing::warn!(
        offset_ms = offset,
        "this node's clock differs from the database's; using the database's"
    );
    Ok(offset)
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("connected", &self.client.is_some())
            .field("tls", &self.database.uses_tls())
            .finish()
    }
}

/// Where the database is and how to reach it: the connection settings and,
/// when a certificate authority is given, TLS with the server's certificate
/// checked against it.
#[derive(Clone)]
pub struct Database {
    config: Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Parses a connection string (`postgres://user@host:port/db` or
    /// `host=... dbname=...`), with a 5-second connection timeout unless it sets
    /// one. With `ca` (a PEM file of the certificate authorities to trust),
    /// connections use TLS and check the server's certificate and name; without
    /// it, a string that asks for TLS (`sslmode=require`) is refused, since there
    /// would be nothing to check the server against.
    pub fn new(url: &str, ca: Option<&std::path::Path>) -> Result<Self, StorageError> {
        let mut config: Config = url
            .parse()
            .map_err(|e: postgres::Error| StorageError::Config(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        // A network that silently drops packets fails a connection in 10 s, not
        // after the minutes of TCP's retransmissions.
        config.tcp_user_timeout(Duration::from_secs(10));
        config.application_name("backchannel-relay");
        let tls = match ca {
            None if config.get_ssl_mode() == SslMode::Require => {
                return Err(StorageError::Config(
                    "the connection string asks for TLS: give the certificate authority of the \
                     database's certificate (--postgres-ca FILE)"
                        .into(),
                ));
            }
            None => {
                // Nothing to check a certificate against: no TLS rather than TLS
                // that proves nothing.
                config.ssl_mode(SslMode::Disable);
                None
            }
            Some(ca) => {
                // A certificate authority given means TLS, whatever the string says.
                config.ssl_mode(SslMode::Require);
                Some(rustls_connector(ca)?)
            }
        };
        Ok(Self { config, tls })
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// A TLS connector trusting the certificate authorities of the PEM file `ca`.
fn rustls_connector(ca: &std::path::Path) -> Result<MakeRustlsConnect, StorageError> {
    use rustls_pki_types::pem::PemObject as _;
    let unreadable = |e: &dyn std::fmt::Display| {
        StorageError::Config(format!(
            "cannot read the certificate authorities in {}: {e}",
            ca.display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| unreadable(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Connects with the settings every node connection has.
///
/// Must be called outside an asynchronous context (the driver runs its own).
pub(crate) fn connect(database: &Database) -> Result<Client, StorageError> {
    let mut client = match &database.tls {
        Some(tls) => database.config.connect(tls.clone())?,
        None => database.config.connect(NoTls)?,
    };
    client.batch_execute(SESSION)?;
    Ok(client)
}

/// Settings of every node connection. A node cut off in the middle of a
/// transaction must not hold its locks for hours: statements, lock waits and idle
/// transactions all have a bound.
const SESSION: &str = "SET synchronous_commit = on;
     SET default_transaction_isolation = 'read committed';
     SET lock_timeout = '10s';
     SET statement_timeout = '30s';
     SET idle_in_transaction_session_timeout = '30s';";

impl PostgresStorage {
    /// Connects to the database at `url` and brings its schema up to date.
    ///
    /// Must be called outside an asynchronous context (the driver runs its own).
    pub fn open(url: &str) -> Result<Self, StorageError> {
        Self::open_database(Database::new(url, None)?)
    }

    /// Connects to `database` and brings its schema up to date.
    ///
    /// Must be called outside an asynchronous context (the driver runs its own).
    pub fn open_database(database: Database) -> Result<Self, StorageError> {
        let mut client = connect(&database)?;
        migrate(&mut client)?;
        let offset_ms = clock_offset(&mut client)?;
        Ok(Self {
            database,
            client: Some(client),
            offset_ms,
        })
    }

    /// A time of this node's clock on the database's.
    fn db_time(&self, local_ms: u64) -> i64 {
        i64::try_from(local_ms)
            .unwrap_or(i64::MAX)
            .saturating_add(self.offset_ms)
    }

    /// The database's settings.
    pub(crate) fn database(&self) -> &Database {
        &self.database
    }

    /// The connection, made again if the last one broke.
    fn client(&mut self) -> Result<&mut Client, StorageError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        match &mut self.client {
            Some(client) => Ok(client),
            slot @ None => {
                let mut client = connect(&self.database)?;
                self.offset_ms = clock_offset(&mut client)?;
                Ok(slot.insert(client))
            }
        }
    }

    /// Runs `f` in a transaction and commits; runs it again after a deadlock or a
    /// serialisation failure. A broken connection is dropped, to be made again by
    /// the next call.
    fn with_tx<T>(
        &mut self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = (|| {
                let client = self.client()?;
                let mut tx = client.transaction()?;
                let value = f(&mut tx)?;
                tx.commit()?;
                Ok(value)
            })();
            match result {
                Err(StorageError::Postgres(e)) if attempt < RETRIES && is_transient(&e) => {
                    tracing::debug!(error = %e, "transaction conflicted; running it again");
                }
                Err(e) => {
                    self.drop_if_broken(&e);
                    return Err(e);
                }
                Ok(value) => return Ok(value),
            }
        }
    }
}

fn is_transient(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Applies the migrations the database lacks, under an advisory lock held for
/// the whole migration (nodes starting together migrate one after the other).
fn migrate(client: &mut Client) -> Result<(), StorageError> {
    // A migration of a large table, or waiting for another node's, takes the time
    // it takes.
    client.batch_execute("SET lock_timeout = 0; SET statement_timeout = 0;")?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = migrate_locked(client);
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    client.batch_execute(SESSION)?;
    result
}

fn migrate_locked(client: &mut Client) -> Result<(), StorageError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )",
    )?;
    for (version, sql) in MIGRATIONS {
        let mut tx = client.transaction()?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )?
            .is_some();
        if !done {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &(now_ms() as i64)],
            )?;
            tracing::info!(version, "database schema migrated");
        }
        tx.commit()?;
    }
    let newest: Option<i32> = client
        .query_one("SELECT max(version) FROM schema_migrations", &[])?
        .get(0);
    let known = MIGRATIONS.last().map(|(v, _)| *v);
    if newest > known {
        return Err(StorageError::Config(format!(
            "the database schema is version {}, newer than this relay knows ({}): upgrade the relay",
            newest.unwrap_or_default(),
            known.unwrap_or_default()
        )));
    }
    Ok(())
}

/// The schema version of the database (the highest migration applied).
pub fn schema_version(url: &str) -> Result<Option<i32>, StorageError> {
    let mut client = connect(&Database::new(url, None)?)?;
    Ok(client
        .query_one("SELECT max(version) FROM schema_migrations", &[])?
        .get(0))
}

/// The latest schema version this relay writes.
pub fn latest_schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Creates an empty database beside the one `url` names and returns its URL (a
/// URL of the form `postgres://.../NAME[?...]`). For tests and benchmarks: each
/// gets a database of its own on one server.
pub fn scratch_database(url: &str) -> Result<String, StorageError> {
    let mut client = connect(&Database::new(url, None)?)?;
    let mut suffix = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    let name = format!(
        "backchannel_{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    client.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    })
}

/// The PostgreSQL server tests run against, from `BACKCHANNEL_TEST_POSTGRES`.
/// `None` when it is unset: the caller says it skips (so that `cargo test` passes
/// on a machine without PostgreSQL), unless `BACKCHANNEL_REQUIRE_POSTGRES` is
/// set, as `.ci/run` does: then a missing server fails the test.
pub fn test_server() -> Option<String> {
    test_setting("BACKCHANNEL_TEST_POSTGRES").map(|url| url.to_string_lossy().into_owned())
}

/// The certificate authority of the test server's TLS certificate, from
/// `BACKCHANNEL_TEST_POSTGRES_CA`; `None` (the caller says it skips) when unset,
/// unless `BACKCHANNEL_REQUIRE_POSTGRES` is set.
pub fn test_ca() -> Option<std::path::PathBuf> {
    test_setting("BACKCHANNEL_TEST_POSTGRES_CA").map(Into::into)
}

/// A test setting from the environment: `None` (said, to skip) when unset or
/// empty, and a failure instead when `BACKCHANNEL_REQUIRE_POSTGRES` is set.
fn test_setting(name: &str) -> Option<std::ffi::OsString> {
    match std::env::var_os(name) {
        Some(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var_os("BACKCHANNEL_REQUIRE_POSTGRES").is_none(),
                "BACKCHANNEL_REQUIRE_POSTGRES is set but {name} is not"
            );
            eprintln!("skipped: {name} is not set");
            None
        }
    }
}

/// Notification payloads: `m NODE KEY KEY ...`, split to stay under
/// PostgreSQL's 8000-byte limit.
pub(crate) fn mailbox_news(node: &str, keys: &[MailboxKey]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = format!("m {node}");
    let start_len = current.len();
    for key in keys {
        if current.len() > 7_000 {
            out.push(std::mem::replace(&mut current, format!("m {node}")));
        }
        current.push(' ');
        current.push_str(&key.to_string());
    }
    if current.len() > start_len {
        out.push(current);
    }
    out
}

impl PostgresStorage {
    /// Appends a batch and tells the other nodes which mailboxes have news, in
    /// the same transaction (notifications are sent on commit).
    fn append_in(
        tx: &mut Transaction<'_>,
        batch: &[Append],
        quota: Quota,
        node: Option<&str>,
        offset_ms: i64,
    ) -> Result<Vec<AppendOutcome>, StorageError> {
        let now = (now_ms() as i64).saturating_add(offset_ms);
        let mut send_ids: Vec<&[u8]> = batch.iter().map(|a| &a.send_id.0[..]).collect();
        send_ids.sort_unstable();
        send_ids.dedup();
        // Lock every mailbox of the batch first, in key order.
        struct Locked {
            key: i64,
            count: i64,
            last_seq: i64,
            changed: bool,
        }
        let mut boxes: HashMap<[u8; 16], Locked> = HashMap::new();
        for row in tx.query(
            "SELECT key, send_id, count, last_seq FROM mailboxes
             WHERE send_id = ANY($1) ORDER BY key FOR UPDATE",
            &[&send_ids],
        )? {
            let send: Vec<u8> = row.get(1);
            let send: [u8; 16] = send
                .try_into()
                .map_err(|_| StorageError::Corrupt("a send identifier has the wrong size"))?;
            boxes.insert(
                send,
                Locked {
                    key: row.get(0),
                    count: row.get(2),
                    last_seq: row.get(3),
                    changed: false,
                },
            );
        }
        // Every digest of the batch, looked up at once: a blob stored before (or
        // delivered and remembered) is acknowledged again, not stored twice.
        let digests: Vec<[u8; 16]> = batch
            .iter()
            .map(|append| {
                if append.replay {
                    // A copy a hostile test relay stores again gets a digest of its own.
                    let mut random = [0u8; 16];
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
                    random
                } else {
                    blob_digest(&append.blob)
                }
            })
            .collect();
        let (mut look_keys, mut look_digests): (Vec<i64>, Vec<&[u8]>) = (Vec::new(), Vec::new());
        for (append, digest) in batch.iter().zip(&digests) {
            if let (false, Some(m)) = (append.replay, boxes.get(&append.send_id.0)) {
                look_keys.push(m.key);
                look_digests.push(&digest[..]);
            }
        }
        let mut known: HashMap<(i64, [u8; 16]), i64> = HashMap::new();
        if !look_keys.is_empty() {
            for row in tx.query(
                "WITH wanted (mailbox, digest) AS (SELECT * FROM unnest($1::BIGINT[], $2::BYTEA[]))
                 SELECT m.mailbox, m.digest, m.seq FROM messages m JOIN wanted w
                     ON m.mailbox = w.mailbox AND m.digest = w.digest
                 UNION ALL
                 SELECT d.mailbox, d.digest, 0 FROM delivered d JOIN wanted w
                     ON d.mailbox = w.mailbox AND d.digest = w.digest",
                &[&look_keys, &look_digests],
            )? {
                let digest: Vec<u8> = row.get(1);
                if let Ok(digest) = <[u8; 16]>::try_from(digest) {
                    known.entry((row.get(0), digest)).or_insert(row.get(2));
                }
            }
        }
        let max_messages = quota.messages.min(quota.bytes / BLOB_LEN as u64);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rows = NewRows::default();
        for (append, digest) in batch.iter().zip(&digests) {
            let Some(mailbox) = boxes.get_mut(&append.send_id.0) else {
                outcomes.push(AppendOutcome::UnknownMailbox);
                continue;
            };
            if let Some(id) = known.get(&(mailbox.key, *digest)) {
                outcomes.push(AppendOutcome::Duplicate {
                    mailbox: mailbox.key,
                    message_id: (*id).max(0) as u64,
                });
                continue;
            }
            if mailbox.count.max(0) as u64 >= max_messages {
                outcomes.push(AppendOutcome::QuotaExceeded);
                continue;
            }
            mailbox.last_seq += 1;
            mailbox.count += 1;
            mailbox.changed = true;
            if !append.replay {
                // The same blob again later in this batch is a duplicate of this one.
                known.insert((mailbox.key, *digest), mailbox.last_seq);
            }
            rows.mailbox.push(mailbox.key);
            rows.seq.push(mailbox.last_seq);
            rows.expires_at.push(
                i64::try_from(append.expires_at)
                    .unwrap_or(i64::MAX)
                    .saturating_add(offset_ms),
            );
            rows.digest.push(&digest[..]);
            rows.blob.push(&append.blob[..]);
            outcomes.push(AppendOutcome::Stored {
                mailbox: mailbox.key,
                message_id: mailbox.last_seq as u64,
            });
        }
        if !rows.mailbox.is_empty() {
            tx.execute(
                "INSERT INTO messages (mailbox, seq, expires_at, digest, blob)
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BYTEA[], $5::BYTEA[])",
                &[
                    &rows.mailbox,
                    &rows.seq,
                    &rows.expires_at,
                    &rows.digest,
                    &rows.blob,
                ],
            )?;
        }
        let mut changed: Vec<&Locked> = boxes.values().filter(|m| m.changed).collect();
        changed.sort_unstable_by_key(|m| m.key);
        if !changed.is_empty() {
            let keys: Vec<i64> = changed.iter().map(|m| m.key).collect();
            let counts: Vec<i64> = changed.iter().map(|m| m.count).collect();
            let seqs: Vec<i64> = changed.iter().map(|m| m.last_seq).collect();
            tx.execute(
                "UPDATE mailboxes m SET count = u.count, last_seq = u.seq,
                     used_at = greatest(m.used_at, $4)
                 FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS u (key, count, seq)
                 WHERE m.key = u.key",
                &[&keys, &counts, &seqs, &now],
            )?;
        }
        if let Some(node) = node {
            let keys: Vec<MailboxKey> = changed.iter().map(|m| m.key).collect();
            for payload in mailbox_news(node, &keys) {
                tx.execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])?;
            }
        }
        Ok(outcomes)
    }
}

/// The messages of a batch to insert, column by column (one `unnest` insert).
#[derive(Default)]
struct NewRows<'a> {
    mailbox: Vec<i64>,
    seq: Vec<i64>,
    expires_at: Vec<i64>,
    digest: Vec<&'a [u8]>,
    blob: Vec<&'a [u8]>,
}

/// The storage of a node in a cluster: appends tell the other nodes.
pub(crate) struct NodeStorage {
    pub(crate) inner: PostgresStorage,
    pub(crate) node: String,
}

impl RelayStorage for PostgresStorage {
    fn create_mailbox(
        &mut self,
        send_id: &MailboxId,
        read_id: &MailboxId,
        auth_key: &[u8; 32],
        now: u64,
    ) -> Result<(), StorageError> {
        let now = self.db_time(now);
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO mailboxes (send_id, read_id, auth_key, created_at, used_at)
                 VALUES ($1, $2, $3, $4, $4)",
                &[&&send_id.0[..], &&read_id.0[..], &&auth_key[..], &now],
            )?;
            Ok(())
        })
    }

    fn mailbox_by_read(&mut self, read_id: &MailboxId) -> Result<Option<Mailbox>, StorageError> {
        let result = self.client()?.query_opt(
            "SELECT key, auth_key, count FROM mailboxes WHERE read_id = $1",
            &[&&read_id.0[..]],
        );
        let row = self.keep_if_alive(result)?;
        row.map(|row| Mailbox::from_columns(row.get(0), row.get(1), row.get(2)))
            .transpose()
    }

    fn append_batch(
        &mut self,
        batch: &[Append],
        quota: Quota,
    ) -> Result<Vec<AppendOutcome>, StorageError> {
        let offset = self.offset_ms;
        self.with_tx(|tx| Self::append_in(tx, batch, quota, None, offset))
    }

    fn fetch(
        &mut self,
        mailbox: MailboxKey,
        after: u64,
        limit: usize,
    ) -> Result<Fetched, StorageError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = self.client()?.query(
            "SELECT seq, blob FROM messages WHERE mailbox = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&mailbox, &after, &limit],
        );
        let rows = self.keep_if_alive(result)?;
        let mut out = Fetched::default();
        for row in rows {
            let seq: i64 = row.get(0);
            match to_blob(row.get(1)) {
                Ok(blob) => out.messages.push((seq as u64, blob)),
                Err(_) => out.damaged.push(seq as u64),
            }
        }
        Ok(out)
    }

    fn delete_messages(&mut self, messages: &[(MailboxKey, u64)]) -> Result<(), StorageError> {
        // Messages first (as expiry takes them), then the mailboxes' counts in key order.
        let mut sorted: Vec<(MailboxKey, i64)> = messages
            .iter()
            .map(|(m, s)| (*m, i64::try_from(*s).unwrap_or(i64::MAX)))
            .collect();
        sorted.sort_unstable();
        sorted.dedup();
        let (mailboxes, seqs): (Vec<i64>, Vec<i64>) = sorted.into_iter().unzip();
        self.with_tx(|tx| {
            // One statement for the whole batch: the messages go, their digests
            // are remembered, and the counts of their mailboxes come back.
            let gone = tx.query(
                "WITH wanted (mailbox, seq) AS (SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[])),
                      gone AS (DELETE FROM messages m USING wanted w
                               WHERE m.mailbox = w.mailbox AND m.seq = w.seq
                               RETURNING m.mailbox, m.digest, m.expires_at),
                      kept AS (INSERT INTO delivered (mailbox, digest, expires_at)
                               SELECT mailbox, digest, expires_at FROM gone
                               ON CONFLICT DO NOTHING)
                 SELECT mailbox, count(*) FROM gone GROUP BY mailbox ORDER BY mailbox",
                &[&mailboxes, &seqs],
            )?;
            let keys: Vec<i64> = gone.iter().map(|r| r.get(0)).collect();
            let counts: Vec<i64> = gone.iter().map(|r| r.get(1)).collect();
            if !keys.is_empty() {
                tx.execute(
                    "UPDATE mailboxes m SET count = m.count - u.n
                     FROM unnest($1::BIGINT[], $2::BIGINT[]) AS u (key, n) WHERE m.key = u.key",
                    &[&keys, &counts],
                )?;
            }
            Ok(())
        })
    }

    fn delete_mailbox(&mut self, mailbox: MailboxKey) -> Result<(), StorageError> {
        self.with_tx(|tx| {
            tx.execute("DELETE FROM messages WHERE mailbox = $1", &[&mailbox])?;
            tx.execute("DELETE FROM delivered WHERE mailbox = $1", &[&mailbox])?;
            tx.execute("DELETE FROM mailboxes WHERE key = $1", &[&mailbox])?;
            Ok(())
        })
    }

    fn expire(&mut self, now: u64) -> Result<u64, StorageError> {
        let now = self.db_time(now);
        let mut total = 0u64;
        loop {
            let deleted = self.with_tx(|tx| {
                let rows = tx.query(
                    "DELETE FROM messages WHERE (mailbox, seq) IN (
                         SELECT mailbox, seq FROM messages WHERE expires_at <= $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING mailbox",
                    &[&now, &EXPIRE_BATCH],
                )?;
                let mut gone: BTreeMap<MailboxKey, i64> = BTreeMap::new();
                for row in &rows {
                    *gone.entry(row.get(0)).or_default() += 1;
                }
                for (mailbox, n) in gone {
                    tx.execute(
                        "UPDATE mailboxes SET count = count - $2 WHERE key = $1",
                        &[&mailbox, &n],
                    )?;
                }
                Ok(rows.len() as u64)
            })?;
            total += deleted;
            if deleted < EXPIRE_BATCH as u64 {
                break;
            }
        }
        self.with_tx(|tx| {
            tx.execute("DELETE FROM delivered WHERE expires_at <= $1", &[&now])?;
            Ok(())
        })?;
        Ok(total)
    }

    fn touch(&mut self, mailbox: MailboxKey, now: u64) -> Result<(), StorageError> {
        let now = self.db_time(now);
        let result = self.client()?.execute(
            "UPDATE mailboxes SET used_at = greatest(used_at, $2) WHERE key = $1",
            &[&mailbox, &now],
        );
        self.keep_if_alive(result)?;
        Ok(())
    }

    fn delete_unused(&mut self, before: u64) -> Result<u64, StorageError> {
        let before = self.db_time(before);
        self.with_tx(|tx| {
            let rows = tx.query(
                "DELETE FROM mailboxes WHERE count = 0 AND used_at <= $1 RETURNING key",
                &[&before],
            )?;
            let keys: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            tx.execute("DELETE FROM delivered WHERE mailbox = ANY($1)", &[&keys])?;
            Ok(keys.len() as u64)
        })
    }

    fn counts(&mut self) -> Result<Counts, StorageError> {
        let result = self.client()?.query_one(
            "SELECT count(*), coalesce(sum(count), 0)::BIGINT FROM mailboxes",
            &[],
        );
        let row = self.keep_if_alive(result)?;
        Ok(Counts {
            mailboxes: row.get::<_, i64>(0).max(0) as u64,
            messages: row.get::<_, i64>(1).max(0) as u64,
        })
    }
}

impl PostgresStorage {
    /// Passes a result on, dropping the connection if it broke.
    fn keep_if_alive<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, StorageError> {
        result.map_err(|e| {
            let e = StorageError::from(e);
            self.drop_if_broken(&e);
            e
        })
    }

    /// After a failure that is not the server refusing a statement (the
    /// connection reset, the server went away), the connection is not trusted
    /// again: the next call makes a new one.
    fn drop_if_broken(&mut self, e: &StorageError) {
        let refused = matches!(e, StorageError::Postgres(pg) if pg.as_db_error().is_some());
        if !refused || self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
    }
}

impl RelayStorage for NodeStorage {
    fn create_mailbox(
        &mut self,
        send_id: &MailboxId,
        read_id: &MailboxId,
        auth_key: &[u8; 32],
        now: u64,
    ) -> Result<(), StorageError> {
        self.inner.create_mailbox(send_id, read_id, auth_key, now)
    }
    fn mailbox_by_read(&mut self, read_id: &MailboxId) -> Result<Option<Mailbox>, StorageError> {
        self.inner.mailbox_by_read(read_id)
    }
    fn append_batch(
        &mut self,
        batch: &[Append],
        quota: Quota,
    ) -> Result<Vec<AppendOutcome>, StorageError> {
        let node = self.node.as_str();
        let offset = self.inner.offset_ms;
        self.inner
            .with_tx(|tx| PostgresStorage::append_in(tx, batch, quota, Some(node), offset))
    }
    fn fetch(
        &mut self,
        mailbox: MailboxKey,
        after: u64,
        limit: usize,
    ) -> Result<Fetched, StorageError> {
        self.inner.fetch(mailbox, after, limit)
    }
    fn delete_messages(&mut self, messages: &[(MailboxKey, u64)]) -> Result<(), StorageError> {
        self.inner.delete_messages(messages)
    }
    fn delete_mailbox(&mut self, mailbox: MailboxKey) -> Result<(), StorageError> {
        self.inner.delete_mailbox(mailbox)
    }
    fn expire(&mut self, now: u64) -> Result<u64, StorageError> {
        self.inner.expire(now)
    }
    fn touch(&mut self, mailbox: MailboxKey, now: u64) -> Result<(), StorageError> {
        self.inner.touch(mailbox, now)
    }
    fn delete_unused(&mut self, before: u64) -> Result<u64, StorageError> {
        self.inner.delete_unused(before)
    }
    fn counts(&mut self) -> Result<Counts, StorageError> {
        self.inner.counts()
    }
}

#[cfg(test)]
mod tests;
