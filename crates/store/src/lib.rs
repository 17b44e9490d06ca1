//! The Backchannel client's state at rest.
//!
//! A profile is a directory with two files: `profile.json`, a small plaintext header
//! (format version, Argon2id parameters and salt, a key-check value), and
//! `profile.db`, a SQLCipher database (AES-256 pages, HMAC-SHA512 per page) keyed by
//! Argon2id over the passphrase. The [`Store`] implements OpenMLS's storage provider
//! and the engine's [`EngineStore`](backchannel_core::store::EngineStore) over one
//! connection, so one transaction covers both.
//!
//! What it guarantees:
//! - a wrong passphrase is recognised from the header's key check and reported as
//!   such; the database is not opened, let alone written;
//! - any altered byte in the database is detected (SQLCipher's page HMACs, checked in
//!   full when the profile is opened) and reported as damage, never read as data;
//! - deleted rows are overwritten (`secure_delete`), and every commit is durable
//!   (`synchronous = FULL`).
//!
//! It does not hide that a profile exists, nor its approximate size.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod chunks;
mod client_tables;
mod engine_store;
pub use engine_store::{ALERTS_KEPT, OVERFLOW_KIND};
mod kdf;
mod mls_storage;
mod schema;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use backchannel_core::ChannelId;
use rand::RngCore as _;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use client_tables::{
    AlertRecord, InviteLinkRecord, JoinRequestRecord, MailboxPurpose, MailboxRecord,
    PendingJoinRecord,
};
pub use kdf::{KEY_CHECK_LABEL, KdfParams};
pub use schema::SCHEMA_VERSION;

/// File name of the plaintext header.
pub const HEADER_FILE: &str = "profile.json";
/// File name of the encrypted database.
pub const DATABASE_FILE: &str = "profile.db";
/// What a header rewrite writes first (see [`Header::replace`]).
const HEADER_JOURNAL: &str = "profile.json.new";

const HEADER_FORMAT: u32 = 1;

/// Why a profile could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// There is no profile in the directory.
    #[error("there is no profile at {0}")]
    NotFound(PathBuf),
    /// A profile exists already where one was to be created.
    #[error("a profile exists already at {0}")]
    AlreadyExists(PathBuf),
    /// The passphrase does not open this profile. Nothing was changed.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The header is unreadable or has values no Backchannel writes.
    #[error("the profile header is damaged: {0}")]
    HeaderDamaged(String),
    /// The passphrase is right but the database fails its integrity check: it was
    /// altered or damaged on disk.
    #[error("the profile database has been altered or damaged: {0}")]
    Damaged(String),
    /// An empty passphrase protects nothing.
    #[error("the passphrase cannot be empty")]
    EmptyPassphrase,
    /// A duress passphrase must differ from the profile's passphrase.
    #[error("the duress passphrase must differ from the profile's passphrase")]
    DuressIsPassphrase,
    /// The profile was written by a newer Backchannel.
    #[error("the profile was written by a newer version of Backchannel (schema {0})")]
    TooNew(u32),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// SQLite failed.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed (including an integrity failure of a page).
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("a stored value is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A stored value in the binary encoding could not be decoded.
    #[error("a stored value is malformed: {0}")]
    MalformedBinary(#[from] postcard::Error),
    /// A value that another refers to is missing.
    #[error("a stored {0} is missing")]
    Missing(&'static str),
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    kdf: KdfHeader,
    #[serde(with = "hex::serde")]
    key_check: Vec<u8>,
    /// Present in every header Backchannel writes, random when no duress passphrase
    /// is set, so that the header does not tell whether one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duress: Option<DuressHeader>,
}

#[derive(Serialize, Deserialize)]
struct DuressHeader {
    #[serde(with = "hex::serde")]
    salt: Vec<u8>,
    #[serde(with = "hex::serde")]
    check: Vec<u8>,
}

impl DuressHeader {
    /// Values no passphrase matches (as far as anyone can tell, like a set one).
    fn random() -> Self {
        let mut salt = vec![0u8; 16];
        let mut check = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut check);
        Self { salt, check }
    }

    fn well_formed(&self) -> bool {
        (16..=64).contains(&self.salt.len()) && self.check.len() == 32
    }
}

impl Header {
    /// A header for a profile that no passphrase opens: what is left after a duress
    /// wipe, in place of the real one.
    fn decoy() -> Self {
        let mut salt = vec![0u8; 16];
        let mut key_check = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut key_check);
        Self {
            format: HEADER_FORMAT,
            kdf: KdfHeader {
                algorithm: "argon2id".into(),
                params: KdfParams::DEFAULT,
                salt,
            },
            key_check,
            duress: Some(DuressHeader::random()),
        }
    }

    fn read(dir: &Path) -> Result<Self, OpenError> {
        // A rewrite cut short: the journal holds what was being written.
        let journal = dir.join(HEADER_JOURNAL);
        if let Ok(bytes) = fs::read(&journal)
            && let Ok(header) = Self::parse(&bytes)
        {
            overwrite_with(&dir.join(HEADER_FILE), &bytes)?;
            overwrite(&journal)?;
            remove_synced(&journal)?;
            return Ok(header);
        }
        let bytes = match fs::read(dir.join(HEADER_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OpenError::NotFound(dir.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        Self::parse(&bytes)
    }

    fn parse(bytes: &[u8]) -> Result<Self, OpenError> {
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| OpenError::HeaderDamaged(e.to_string()))?;
        if header.format != HEADER_FORMAT {
            return Err(OpenError::HeaderDamaged(format!(
                "unknown format {}",
                header.format
            )));
        }
        if header.kdf.algorithm != "argon2id" {
            return Err(OpenError::HeaderDamaged("unknown key derivation".into()));
        }
        header.kdf.params.check().map_err(|what| {
            OpenError::HeaderDamaged(format!("key derivation {what} out of range"))
        })?;
        if !(16..=64).contains(&header.kdf.salt.len()) || header.key_check.len() != 32 {
            return Err(OpenError::HeaderDamaged("bad salt or key check".into()));
        }
        if header.duress.as_ref().is_some_and(|d| !d.well_formed()) {
            return Err(OpenError::HeaderDamaged("bad duress values".into()));
        }
        Ok(header)
    }

    fn bytes(&self) -> Result<Vec<u8>, OpenError> {
        serde_json::to_vec_pretty(self).map_err(|e| OpenError::HeaderDamaged(e.to_string()))
    }

    /// Writes the header of a new profile.
    fn create(&self, dir: &Path) -> Result<(), OpenError> {
        write_atomically(&dir.join(HEADER_FILE), &self.bytes()?)?;
        Ok(())
    }

    /// Replaces the header by writing over it in place, so that the old salt and
    /// checks are not left behind in blocks the file system has freed (a rename
    /// would leave them). A journal written first makes it safe against a crash
    /// half-way: [`Header::read`] finishes the job from it.
    fn replace(&self, dir: &Path) -> Result<(), OpenError> {
        let bytes = self.bytes()?;
        let journal = dir.join(HEADER_JOURNAL);
        write_atomically(&journal, &bytes)?;
        overwrite_with(&dir.join(HEADER_FILE), &bytes)?;
        // The journal holds the header in force: random bytes over it before it
        // goes, or a later duress wipe would leave its salt in a freed block.
        overwrite(&journal)?;
        remove_synced(&journal)?;
        Ok(())
    }

    /// Writes over the header in place in one write and one sync, with no journal:
    /// what a duress passphrase does. A wrong passphrase does the same with the
    /// bytes already there, so the two take the same time.
    fn overwrite(dir: &Path, bytes: &[u8]) -> Result<(), OpenError> {
        overwrite_with(&dir.join(HEADER_FILE), bytes)?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct KdfHeader {
    algorithm: String,
    #[serde(flatten)]
    params: KdfParams,
    #[serde(with = "hex::serde")]
    salt: Vec<u8>,
}

/// An open profile.
pub struct Store {
    conn: Connection,
    dir: PathBuf,
}

impl Store {
    /// Whether `dir` holds a profile.
    pub fn exists(dir: &Path) -> bool {
        dir.join(HEADER_FILE).exists()
    }

    /// Creates a new profile in `dir` (created if missing), protected by `passphrase`.
    pub fn create(dir: &Path, passphrase: &[u8]) -> Result<Self, OpenError> {
        if passphrase.is_empty() {
            return Err(OpenError::EmptyPassphrase);
        }
        if Self::exists(dir) || dir.join(DATABASE_FILE).exists() {
            return Err(OpenError::AlreadyExists(dir.to_owned()));
        }
        fs::create_dir_all(dir)?;
        restrict_permissions(dir);
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let params = KdfParams::DEFAULT;
        let key = kdf::derive_key(passphrase, &salt, params)
            .map_err(|e| OpenError::HeaderDamaged(e.to_string()))?;
        let conn = open_database(&dir.join(DATABASE_FILE), &key, true)?;
        let store = Self {
            conn,
            dir: dir.to_owned(),
        };
        store.migrate()?;
        let header = Header {
            format: HEADER_FORMAT,
            kdf: KdfHeader {
                algorithm: "argon2id".into(),
                params,
                salt: salt.to_vec(),
            },
            key_check: kdf::key_check(&key)
                .map_err(|e| OpenError::HeaderDamaged(e.to_string()))?
                .to_vec(),
            duress: Some(DuressHeader::random()),
        };
        // The header is written last: a profile without a header does not exist.
        header.create(dir)?;
        Ok(store)
    }

    /// Opens the profile in `dir`. A wrong passphrase is reported before the database
    /// is opened; the whole database is integrity-checked before it is used.
    pub fn open(dir: &Path, passphrase: &[u8]) -> Result<Self, OpenError> {
        if passphrase.is_empty() {
            return Err(OpenError::EmptyPassphrase);
        }
        let header = Header::read(dir)?;
        let key = kdf::derive_key(passphrase, &header.kdf.salt, header.kdf.params)
            .map_err(|e| OpenError::HeaderDamaged(e.to_string()))?;
        if !kdf::key_check_matches(&key, &header.key_check) {
            Self::refuse(dir, passphrase, &header)?;
            return Err(OpenError::WrongPassphrase);
        }
        let path = dir.join(DATABASE_FILE);
        if !path.exists() {
            return Err(OpenError::Damaged("the database file is missing".into()));
        }
        let conn = open_database(&path, &key, false).map_err(|e| match e {
            OpenError::Sql(e) => damaged(e),
            other => other,
        })?;
        let store = Self {
            conn,
            dir: dir.to_owned(),
        };
        store.integrity_check()?;
        store.migrate()?;
        // Reference counts of MLS chunks checked at every opening (see
        // `repair_chunks`): cheap, and a leak must not outlive a session.
        store.repair_chunks().map_err(|e| match e {
            StoreError::Sql(e) => OpenError::Sql(e),
            other => OpenError::Damaged(other.to_string()),
        })?;
        Ok(store)
    }

    /// What a passphrase that does not open the profile costs, a duress passphrase
    /// or not: a second derivation (the duress salt's, random when none is set),
    /// then one write over the header in place and a sync. For a wrong passphrase
    /// the bytes written are those already there; for the duress passphrase they
    /// are a decoy header of the same length, whose random salt and checks match
    /// no passphrase. The salt was the only way from a passphrase to the database
    /// key, so the database is left as ciphertext nobody can decrypt (erasing its
    /// blocks would take time that tells the two apart).
    fn refuse(dir: &Path, passphrase: &[u8], header: &Header) -> Result<(), OpenError> {
        let current = fs::read(dir.join(HEADER_FILE))?;
        let mut written = current.clone();
        if let Some(duress) = &header.duress {
            let duress_key = kdf::derive_key(passphrase, &duress.salt, header.kdf.params)
                .map_err(|e| OpenError::HeaderDamaged(e.to_string()))?;
            if kdf::duress_check_matches(&duress_key, &duress.check) {
                written = Header::decoy().bytes()?;
            }
        }
        // Errors are not reported: they would tell a duress passphrase apart.
        let _ = Header::overwrite(dir, &written);
        Ok(())
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets a duress passphrase: entered instead of the real one, it erases the
    /// profile irrevocably and reports a wrong passphrase. Refused if it is the
    /// profile's passphrase.
    pub fn set_duress(&self, duress: &[u8]) -> Result<(), OpenError> {
        if duress.is_empty() {
            return Err(OpenError::EmptyPassphrase);
        }
        let mut header = Header::read(&self.dir)?;
        let as_main = kdf::derive_key(duress, &header.kdf.salt, header.kdf.params)
            .map_err(|e| OpenError::HeaderDamaged(e.to_string()))?;
        if kdf::key_check_matches(&as_main, &header.key_check) {
            return Err(OpenError::DuressIsPassphrase);
        }
        let mut salt = vec![0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let key = kdf::derive_key(duress, &salt, header.kdf.params)
            .map_err(|e| OpenError::HeaderDamaged(e.to_string()))?;
        header.duress = Some(DuressHeader {
            salt,
            check: kdf::duress_check(&key)
                .map_err(|e| OpenError::HeaderDamaged(e.to_string()))?
                .to_vec(),
        });
        header.replace(&self.dir)
    }

    /// Removes the duress passphrase (the header keeps random values in its place).
    pub fn clear_duress(&self) -> Result<(), OpenError> {
        let mut header = Header::read(&self.dir)?;
        header.duress = Some(DuressHeader::random());
        header.replace(&self.dir)
    }

    /// Erases the profile in `dir` irrevocably, without its passphrase: every file is
    /// overwritten with random bytes, synced, and deleted, the header (whose salt
    /// turns a passphrase into the database key) first. On storage that writes
    /// elsewhere than in place (flash, copy-on-write file systems) old blocks may
    /// survive, but without the salt they are ciphertext no passphrase opens.
    pub fn erase(dir: &Path) -> std::io::Result<()> {
        wipe(dir)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// A profile setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Every non-empty profile setting whose key starts with `prefix`, by key.
    pub fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT key, value FROM settings
             WHERE substr(key, 1, length(?1)) = ?1 AND value != '' ORDER BY key",
        )?;
        let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets a profile setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// A setting that belongs to one channel (erased with it).
    pub fn channel_setting(
        &self,
        channel: &ChannelId,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM channel_settings WHERE channel = ?1 AND key = ?2",
                params![&channel.0[..], key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets a setting that belongs to one channel.
    pub fn set_channel_setting(
        &self,
        channel: &ChannelId,
        key: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO channel_settings (channel, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (channel, key) DO UPDATE SET value = excluded.value",
            params![&channel.0[..], key, value],
        )?;
        Ok(())
    }

    /// Runs `f` entirely or not at all: in a savepoint, which nests inside a
    /// transaction already open and is a transaction of its own otherwise. An error,
    /// of `f` or of the release itself, undoes what `f` did.
    pub(crate) fn atomically(
        &self,
        f: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.conn.execute_batch("SAVEPOINT atomically")?;
        let result = f().and_then(|()| Ok(self.conn.execute_batch("RELEASE atomically")?));
        if result.is_err() {
            // Left open, the savepoint would swallow every later write.
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO atomically; RELEASE atomically");
        }
        result
    }

    /// Moves everything from the write-ahead log into the database and truncates the
    /// log, so that no old page image lingers in it.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Checks every page's HMAC.
    fn integrity_check(&self) -> Result<(), OpenError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA cipher_integrity_check")
            .map_err(damaged)?;
        let problems: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(damaged)?
            .collect::<Result<_, _>>()
            .map_err(damaged)?;
        if let Some(first) = problems.first() {
            return Err(OpenError::Damaged(format!(
                "{} page(s) fail their integrity check ({first})",
                problems.len()
            )));
        }
        let ok: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(damaged)?;
        if ok != "ok" {
            return Err(OpenError::Damaged(ok));
        }
        Ok(())
    }

    fn migrate(&self) -> Result<(), OpenError> {
        let version: u32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(OpenError::TooNew(version));
        }
        for (from, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", from as u32 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Every page of the database file as SQLite sees it (decrypted), freed pages
    /// included: what someone holding the passphrase could recover. For erasure
    /// audits; run [`Store::checkpoint`] first so that the log is folded in.
    pub fn decrypted_pages(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT data FROM sqlite_dbpage")?;
        let pages = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<Vec<u8>>, _>>()?;
        Ok(pages)
    }

    #[cfg(test)]
    fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.checkpoint();
    }
}

fn damaged(e: rusqlite::Error) -> OpenError {
    OpenError::Damaged(e.to_string())
}

fn open_database(path: &Path, key: &[u8; 32], create: bool) -> Result<Connection, OpenError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    // Failures are reported through our errors; SQLCipher's own log would print
    // to stderr.
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
    let pragma = Zeroizing::new(format!("PRAGMA key = \"x'{}'\";", hex::encode(key)));
    conn.execute_batch(&pragma)?;
    // The first read decrypts page 1: with a key that passed the key check, a
    // failure here means the file itself is damaged.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
    conn.execute_batch(
        "PRAGMA cipher_memory_security = OFF;
         PRAGMA secure_delete = ON;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// The files a profile may leave, the header first (then those of the programs
/// that open it: the lock naming the process that has it, and where a daemon
/// listens).
const PROFILE_FILES: [&str; 9] = [
    HEADER_FILE,
    HEADER_JOURNAL,
    "profile.tmp",
    "profile.db-wal",
    "profile.db-shm",
    "profile.db-journal",
    DATABASE_FILE,
    "profile.lock",
    "daemon.json",
];

/// Overwrites every file of the profile in `dir` with random bytes, syncs and
/// deletes them (the header first), then the directory if it is then empty.
fn wipe(dir: &Path) -> std::io::Result<()> {
    let mut first_error = None;
    for name in PROFILE_FILES {
        let path = dir.join(name);
        if let Err(e) = overwrite(&path) {
            first_error.get_or_insert(e);
        }
        if path.exists()
            && let Err(e) = fs::remove_file(&path)
        {
            first_error.get_or_insert(e);
        }
    }
    // A daemon's socket (and a temporary one a crash left) holds no data and
    // cannot be overwritten: removed, so that no trace of a profile is left.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "daemon.sock" || (name.starts_with("daemon.sock.") && name.ends_with(".tmp"))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
    if let Some(parent) = dir.parent().filter(|p| p.exists()) {
        let _ = fs::File::open(parent).and_then(|f| f.sync_all());
    }
    first_error.map_or(Ok(()), Err)
}

/// Writes random bytes over the whole of a file, in place, and syncs it.
fn overwrite(path: &Path) -> std::io::Result<()> {
    let mut file = match fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut left = file.metadata()?.len();
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        let part = chunk.get_mut(..n).unwrap_or_default();
        rand::rngs::OsRng.fill_bytes(part);
        file.write_all(part)?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Writes `bytes` over the start of an existing file, in place, followed by
/// spaces up to the file's old length (JSON ignores trailing white space), and
/// syncs it.
fn overwrite_with(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    let old_len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    let mut padded = bytes.to_vec();
    if padded.len() < old_len {
        padded.resize(old_len, b' ');
    }
    file.write_all(&padded)?;
    file.sync_all()
}

/// Deletes a file and syncs its directory.
fn remove_synced(path: &Path) -> std::io::Result<()> {
    fs::remove_file(path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(unix)]
fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
}

#[cfg(not(unix))]
fn restrict_permissions(_dir: &Path) {}

#[cfg(test)]
mod tests;
