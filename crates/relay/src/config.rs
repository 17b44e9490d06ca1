//! Relay configuration: defaults, then a TOML file, then environment and flags (the
//! command line applies those last two).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits::Limits;

/// Everything a relay needs to run.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Where to accept clients.
    pub listen: SocketAddr,
    /// Where the certificate and database live.
    pub data_dir: PathBuf,
    /// The host name or address to put in the relay address (default: the listen
    /// address, or 127.0.0.1 if that is unspecified).
    pub public_host: Option<String>,
    /// Where to serve `/metrics` and `/health` (plain HTTP); off if `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Connection caps and rate limits.
    pub limits: Limits,
    /// Time allowed for the TLS handshake and the WebSocket upgrade.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Messages not acknowledged by then are deleted.
    pub message_ttl: Duration,
    /// How often expired messages are swept.
    pub sweep_interval: Duration,
    /// How long a one-time code's rendezvous stays open.
    pub rendezvous_ttl: Duration,
    /// Most messages per mailbox.
    pub quota_messages: u64,
    /// Most bytes per mailbox.
    pub quota_bytes: u64,
    /// Unacknowledged deliveries per subscription.
    pub window: u16,
    /// Most messages per group commit.
    pub batch_max: usize,
    /// Cap on the database size; past it, the relay refuses new messages (as on a
    /// full disk: the sender is told the relay is full and retries later). `None`:
    /// [`DEFAULT_DB_SHARE`]% of the file system (see
    /// [`default_db_cap`]); `Some(0)`: no cap.
    pub max_db_bytes: Option<u64>,
    /// How long a graceful shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
    /// Store in this PostgreSQL database (a connection string) instead of SQLite in
    /// the data directory; several nodes may share it.
    pub postgres: Option<String>,
    /// The certificate authorities (PEM) of the PostgreSQL server's certificate:
    /// given, connections to the database use TLS and check it.
    pub postgres_ca: Option<PathBuf>,
    /// A scripted hostile behaviour (tests only).
    #[cfg(feature = "adversary")]
    pub adversary: Option<crate::adversary::AdversaryHandle>,
}

impl RelayConfig {
    /// The defaults, for a relay on `listen` keeping its data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            public_host: None,
            metrics_listen: None,
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            message_ttl: Duration::from_secs(14 * 24 * 3600),
            sweep_interval: Duration::from_secs(60),
            rendezvous_ttl: Duration::from_secs(600),
            quota_messages: 10_000,
            quota_bytes: 64 * 1024 * 1024,
            window: 64,
            batch_max: 1024,
            max_db_bytes: None,
            shutdown_grace: Duration::from_secs(10),
            postgres: None,
            postgres_ca: None,
            #[cfg(feature = "adversary")]
            adversary: None,
        }
    }

    /// Applies a TOML configuration file over the current values.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        file.apply(self);
        Ok(())
    }
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The configuration file: every key optional.
///
/// ```toml
/// public_host = "relay.example.org"
/// metrics_listen = "127.0.0.1:9090"
/// message_ttl_days = 14
/// sweep_interval_secs = 60
/// rendezvous_ttl_secs = 600
/// rendezvous_per_minute = 6
/// rendezvous_joins_per_hour = 18
/// rendezvous_opens_per_hour = 180
/// quota_messages = 10000
/// max_connections = 20000
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    listen: Option<SocketAddr>,
    public_host: Option<String>,
    metrics_listen: Option<SocketAddr>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    requests_per_second: Option<u32>,
    ip_requests_per_second: Option<u32>,
    mailboxes_per_minute: Option<u32>,
    max_subscriptions: Option<usize>,
    handshake_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    message_ttl_days: Option<u64>,
    sweep_interval_secs: Option<u64>,
    rendezvous_ttl_secs: Option<u64>,
    rendezvous_per_minute: Option<u32>,
    rendezvous_joins_per_hour: Option<u32>,
    rendezvous_opens_per_hour: Option<u32>,
    quota_messages: Option<u64>,
    quota_bytes: Option<u64>,
    window: Option<u16>,
    max_db_bytes: Option<u64>,
    postgres: Option<String>,
    postgres_ca: Option<PathBuf>,
}

impl ConfigFile {
    fn apply(self, c: &mut RelayConfig) {
        macro_rules! set {
            ($field:ident => $target:expr) => {
                if let Some(v) = self.$field {
                    $target = v;
                }
            };
        }
        set!(listen => c.listen);
        set!(max_connections => c.limits.max_connections);
        set!(max_connections_per_ip => c.limits.max_connections_per_ip);
        set!(requests_per_second => c.limits.requests_per_second);
        set!(ip_requests_per_second => c.limits.ip_requests_per_second);
        set!(mailboxes_per_minute => c.limits.mailboxes_per_minute);
        set!(max_subscriptions => c.limits.max_subscriptions);
        set!(quota_messages => c.quota_messages);
        set!(quota_bytes => c.quota_bytes);
        set!(window => c.window);
        if self.public_host.is_some() {
            c.public_host = self.public_host;
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        if self.max_db_bytes.is_some() {
            c.max_db_bytes = self.max_db_bytes;
        }
        if self.postgres.is_some() {
            c.postgres = self.postgres;
        }
        if self.postgres_ca.is_some() {
            c.postgres_ca = self.postgres_ca;
        }
        if let Some(s) = self.handshake_timeout_secs {
            c.handshake_timeout = Duration::from_secs(s);
        }
        if let Some(s) = self.idle_timeout_secs {
            c.idle_timeout = Duration::from_secs(s);
        }
        if let Some(d) = self.message_ttl_days {
            c.message_ttl = Duration::from_secs(d.saturating_mul(24 * 3600));
        }
        if let Some(s) = self.rendezvous_ttl_secs {
            c.rendezvous_ttl = Duration::from_secs(s.max(1));
        }
        set!(rendezvous_per_minute => c.limits.rendezvous_per_minute);
        set!(rendezvous_joins_per_hour => c.limits.rendezvous_joins_per_hour);
        set!(rendezvous_opens_per_hour => c.limits.rendezvous_opens_per_hour);
        if let Some(s) = self.sweep_interval_secs {
            c.sweep_interval = Duration::from_secs(s.max(1));
        }
    }
}

/// Share of the file system the database may fill by default, in percent.
pub const DEFAULT_DB_SHARE: u64 = 50;

/// The default cap on the database: [`DEFAULT_DB_SHARE`] of the file system that
/// holds `dir`, and never more than the database already holds plus 90% of what
/// is free (the rest of the machine needs room too). `None` if the file system
/// cannot be asked.
pub fn default_db_cap(dir: &std::path::Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    let total = fs.f_blocks.saturating_mul(fs.f_frsize);
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    let held: u64 = [crate::storage::DATABASE_FILE, "relay.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let share = total / 100 * DEFAULT_DB_SHARE;
    Some(share.min(held.saturating_add(free / 10 * 9)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("relay.toml");
        std::fs::write(
            &path,
            "quota_messages = 5\nmessage_ttl_days = 2\npublic_host = \"r.example\"\n",
        )
        .unwrap();
        let mut c = RelayConfig::new("127.0.0.1:0".parse().unwrap(), tmp.path().into());
        c.apply_file(&path).unwrap();
        assert_eq!(c.quota_messages, 5);
        assert_eq!(c.message_ttl, Duration::from_secs(2 * 24 * 3600));
        assert_eq!(c.public_host.as_deref(), Some("r.example"));
        std::fs::write(&path, "quota_mesages = 5\n").unwrap();
        assert!(
            c.apply_file(&path)
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
    }

    #[test]
    fn the_default_database_cap_is_a_share_of_the_disk_within_what_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let fs = rustix::fs::statvfs(dir.path()).unwrap();
        let (total, free) = (fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize);
        let cap = default_db_cap(dir.path()).unwrap();
        assert!(cap > 0);
        assert!(cap <= total / 100 * DEFAULT_DB_SHARE, "{cap} of {total}");
        assert!(cap <= free, "{cap} with {free} free");
        // What the database already holds counts as room it may keep.
        std::fs::write(
            dir.path().join(crate::storage::DATABASE_FILE),
            vec![0u8; 1 << 20],
        )
        .unwrap();
        let with_db = default_db_cap(dir.path()).unwrap();
        assert!(with_db + (64 << 20) >= cap, "{with_db} against {cap}");
    }
}
