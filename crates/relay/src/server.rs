//! Accepting connections: caps, TLS, the WebSocket upgrade, metrics, shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backchannel_proto::addr::RelayAddr;
use backchannel_proto::frame::FRAME_LEN;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::actor::{self, StorageHandle};
use crate::cluster;
use crate::config::RelayConfig;
use crate::conn::{self, Shared};
use crate::hub::Hub;
use crate::identity::{Identity, IdentityError};
use crate::limits::{self, Admission, Admitted};
use crate::metrics::Metrics;
use crate::rendezvous::{Registry, Rendezvous};
use crate::storage::DATABASE_FILE;
use crate::storage::postgres::{Database, NodeStorage, PostgresStorage};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Quota, StorageError};

/// Why a relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The TLS identity could not be loaded or made.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The database could not be opened.
    #[error("cannot open the relay database: {0}")]
    Storage(#[from] StorageError),
    /// A listening socket could not be opened.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// Something else in the operating system failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The public host does not make a valid relay address.
    #[error("the public host is not valid: {0}")]
    Address(String),
}

/// A relay that is running.
pub struct RunningRelay {
    /// Its address, with the certificate fingerprint.
    pub address: RelayAddr,
    /// The socket address it listens on.
    pub local_addr: SocketAddr,
    /// The metrics socket address, if serving metrics.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    #[cfg(feature = "adversary")]
    storage: StorageHandle,
}

impl RunningRelay {
    /// Stops accepting, lets connections finish what is in flight (up to the grace
    /// period), flushes storage, and returns when all is done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // The storage thread ends when its last handle is gone.
        #[cfg(feature = "adversary")]
        drop(self.storage);
        let _ = self.task.await;
    }

    /// Returns when the relay has stopped (after [`RunningRelay::shutdown`] from
    /// elsewhere, or on a fatal error).
    pub async fn wait(self) {
        #[cfg(feature = "adversary")]
        drop(self.storage);
        let _ = self.task.await;
    }

    /// A handle that triggers the shutdown.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Stores a blob into a mailbox as the relay itself — a replay or an injection,
    /// bypassing the recognition of retransmissions (tests of hostile relays only).
    #[cfg(feature = "adversary")]
    pub async fn inject(
        &self,
        send_id: backchannel_proto::addr::MailboxId,
        blob: backchannel_proto::frame::Blob,
    ) -> bool {
        let append = crate::storage::Append {
            send_id,
            blob,
            expires_at: conn::now_ms().saturating_add(3_600_000),
            replay: true,
        };
        matches!(
            self.storage.append(append).await,
            Ok(Ok(crate::storage::AppendOutcome::Stored { .. }))
        )
    }
}

/// Computes the relay's address from its certificate and configuration, without
/// starting it (`backchannel relay address`).
pub fn address(config: &RelayConfig) -> Result<RelayAddr, RelayError> {
    let identity = Identity::load_or_create(&config.data_dir)?;
    relay_address(config, &identity, config.listen)
}

fn relay_address(
    config: &RelayConfig,
    identity: &Identity,
    local: SocketAddr,
) -> Result<RelayAddr, RelayError> {
    let spec = match &config.public_host {
        Some(spec) => spec.clone(),
        None if local.ip().is_unspecified() => IpAddr::from([127, 0, 0, 1]).to_string(),
        None => local.ip().to_string(),
    };
    let hosts = spec
        .split(',')
        .map(|part| host_and_port(part.trim(), local.port()))
        .collect::<Result<Vec<_>, _>>()?;
    let hosts: Vec<(&str, u16)> = hosts.iter().map(|(h, p)| (h.as_str(), *p)).collect();
    RelayAddr::with_hosts(identity.fingerprint(), &hosts)
        .map_err(|e| RelayError::Address(e.to_string()))
}

/// `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address; the port defaults
/// to `port`.
fn host_and_port(part: &str, port: u16) -> Result<(String, u16), RelayError> {
    let bad = || RelayError::Address(format!("'{part}' is not HOST or HOST:PORT"));
    if let Some(v6) = part.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((host, "")) => Ok((host.to_owned(), port)),
            Some((host, rest)) => {
                let p = rest
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)?;
                Ok((host.to_owned(), p))
            }
            None => Err(bad()),
        };
    }
    match part.split_once(':') {
        Some((host, p)) if !p.contains(':') => Ok((host.to_owned(), p.parse().map_err(|_| bad())?)),
        _ => Ok((part.to_owned(), port)),
    }
}

/// Makes the data directory readable by the relay's user only (0700), and its
/// database private (0600) before SQLite opens it: SQLite gives its WAL and shared
/// memory files the database's mode. Tightens what an older version left open.
fn keep_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    keep_private_dir(dir)?;
    let db = dir.join(DATABASE_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&db)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.join(format!("{DATABASE_FILE}{suffix}"));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Makes the data directory readable by the relay's user only (0700).
fn keep_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Starts a relay and returns once it listens.
pub async fn start(config: RelayConfig) -> Result<RunningRelay, RelayError> {
    if config.postgres.is_none() {
        keep_private(&config.data_dir)?;
    } else {
        // A node of a cluster keeps only its TLS identity in the data directory.
        keep_private_dir(&config.data_dir)?;
    }
    let identity = Identity::load_or_create(&config.data_dir)?;
    let tls = TlsAcceptor::from(identity.server_config()?);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| RelayError::Listen(config.listen, e))?;
    let local_addr = listener.local_addr()?;
    let address = relay_address(&config, &identity, local_addr)?;

    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::default());
    let quota = Quota {
        messages: config.quota_messages,
        bytes: config.quota_bytes,
    };
    // Whether the storage is reachable (a node of a cluster may lose its database).
    let (reachable_tx, reachable) = watch::channel(true);
    let (storage, storage_thread, rendezvous) = match &config.postgres {
        None => {
            let db = config.data_dir.join(DATABASE_FILE);
            let max_db_bytes = match config.max_db_bytes {
                Some(0) => None,
                Some(max) => Some(max),
                None => crate::config::default_db_cap(&config.data_dir),
            };
            if let Some(max) = max_db_bytes {
                tracing::info!(max_db_bytes = max, "database size capped");
            }
            let storage = SqliteStorage::open(&db, max_db_bytes)?;
            let reader = SqliteStorage::open(&db, max_db_bytes)?;
            let (handle, thread) = actor::spawn(
                storage,
                reader,
                quota,
                config.batch_max,
                hub.clone(),
                metrics.clone(),
            )?;
            let rendezvous = Rendezvous::Local(Registry::new(config.rendezvous_ttl));
            (handle, thread, rendezvous)
        }
        Some(url) => {
            let node = cluster::node_name();
            let database = Database::new(url, config.postgres_ca.as_deref())?;
            // The driver runs its own runtime: connect on a blocking thread.
            let (writer, reader) = tokio::task::spawn_blocking(move || {
                Ok::<_, StorageError>((
                    PostgresStorage::open_database(database.clone())?,
                    PostgresStorage::open_database(database)?,
                ))
            })
            .await
            .map_err(|e| RelayError::Io(std::io::Error::other(e)))??;
            let pg_config = writer.database().clone();
            let (handle, thread) = actor::spawn(
                NodeStorage {
                    inner: writer,
                    node: node.clone(),
                },
                NodeStorage {
                    inner: reader,
                    node: node.clone(),
                },
                quota,
                config.batch_max,
                hub.clone(),
                metrics.clone(),
            )?;
            let cluster = cluster::start(
                pg_config,
                node,
                config.rendezvous_ttl,
                &hub,
                reachable_tx.clone(),
            )?;
            tracing::info!("storing in PostgreSQL as a node of a cluster");
            (handle, thread, Rendezvous::Cluster(cluster))
        }
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| RelayError::Listen(addr, e))?;
            let local = listener.local_addr()?;
            let app = Router::new()
                .route("/metrics", get(metrics_page))
                .route("/health", get(health_page))
                .with_state((metrics.clone(), reachable.clone()));
            let mut stop = shutdown_rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
            });
            Some(local)
        }
        None => None,
    };

    let shared = Arc::new(Shared {
        storage: storage.clone(),
        hub,
        metrics: metrics.clone(),
        limits: config.limits,
        window: config.window,
        idle_timeout: config.idle_timeout,
        message_ttl: config.message_ttl,
        rendezvous,
        reachable,
        _reachable_tx: reachable_tx,
        shutdown: shutdown_rx.clone(),
        #[cfg(feature = "adversary")]
        adversary: config.adversary.clone(),
    });
    let sweeper = spawn_sweeper(
        storage.clone(),
        config.sweep_interval,
        config.message_ttl,
        shutdown_rx.clone(),
    );
    #[cfg(feature = "adversary")]
    let injector = storage.clone();
    let task = tokio::spawn(accept_loop(
        listener,
        tls,
        shared,
        config.clone(),
        shutdown_rx,
        storage,
        storage_thread,
        sweeper,
    ));
    tracing::info!("relay listening");
    Ok(RunningRelay {
        address,
        local_addr,
        metrics_addr,
        shutdown: shutdown_tx,
        task,
        #[cfg(feature = "adversary")]
        storage: injector,
    })
}

/// Every `every`: deletes expired messages, and empty mailboxes nobody sent to or
/// read for `unused_for` (the message lifetime).
fn spawn_sweeper(
    storage: StorageHandle,
    every: Duration,
    unused_for: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = conn::now_ms();
                    let lifetime = u64::try_from(unused_for.as_millis()).unwrap_or(u64::MAX);
                    storage.expire(now, now.saturating_sub(lifetime)).await;
                }
                _ = shutdown.changed() => break,
            }
        }
    })
}

/// Slot for the connection's admission, taken by the WebSocket handler.
type Slot = Arc<Mutex<Option<Admitted>>>;

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    tls: TlsAcceptor,
    shared: Arc<Shared>,
    config: RelayConfig,
    mut shutdown: watch::Receiver<bool>,
    storage: StorageHandle,
    storage_thread: std::thread::JoinHandle<()>,
    sweeper: JoinHandle<()>,
) {
    let admission = Admission::new(config.limits);
    let app = Router::new()
        .route("/v1", get(upgrade))
        .with_state(shared.clone());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(admitted) = limits::admit(&admission, peer.ip(), &shared.metrics) else {
            shared.metrics.connections_refused.inc();
            drop(tcp);
            continue;
        };
        shared.metrics.connections_accepted.inc();
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let slot: Slot = Arc::new(Mutex::new(Some(admitted)));
        let service = app.clone().layer(Extension(slot));
        let metrics = shared.metrics.clone();
        let handshake_timeout = config.handshake_timeout;
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await
            else {
                metrics.handshake_failures.inc();
                return;
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .max_buf_size(16 * 1024);
            let served = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    TowerToHyperService::new(service),
                )
                .await;
            if served.is_err() {
                metrics.handshake_failures.inc();
            }
        });
    }
    tracing::info!("relay stopping: no longer accepting connections");
    drop(listener);
    // Connections see the shutdown signal, answer what is in flight and close.
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    while shared.metrics.connections_open.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = sweeper.await;
    // The storage thread ends once every handle is gone, after its queue is done.
    drop(storage);
    drop(shared);
    drop(app);
    let _ = tokio::task::spawn_blocking(move || storage_thread.join()).await;
    tracing::info!("relay stopped");
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(shared): State<Arc<Shared>>,
    Extension(slot): Extension<Slot>,
) -> Response {
    let admitted = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some(admitted) = admitted else {
        return StatusCode::TOO_MANY_REQUESTS.into_response();
    };
    // Stopping, or a node of a cluster that cannot reach its database: the
    // client goes to another host of the relay, or tries again later.
    if *shared.shutdown.borrow() || !*shared.reachable.borrow() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    // Small buffers: an idle connection should cost little memory. Reads need one
    // frame plus the WebSocket header (at most 14 bytes): one read takes a whole
    // frame; writes go out frame by frame.
    ws.max_message_size(FRAME_LEN)
        .max_frame_size(FRAME_LEN)
        .read_buffer_size(FRAME_LEN + 14)
        .write_buffer_size(0)
        .on_upgrade(move |socket| conn::serve(socket, shared, admitted))
}

/// What the metrics pages read: the counters, and whether the storage is reachable.
type HealthState = (Arc<Metrics>, watch::Receiver<bool>);

async fn metrics_page(State((metrics, _)): State<HealthState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn health_page(State((metrics, reachable)): State<HealthState>) -> impl IntoResponse {
    if !*reachable.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
    } else if metrics.healthy.get() == 1 {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "storage failing\n")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::host_and_port;

    #[test]
    fn public_hosts_with_and_without_ports() {
        assert_eq!(
            host_and_port("relay.example", 7443).unwrap(),
            ("relay.example".into(), 7443)
        );
        assert_eq!(
            host_and_port("relay.example:8443", 7443).unwrap(),
            ("relay.example".into(), 8443)
        );
        assert_eq!(host_and_port("::1", 7443).unwrap(), ("::1".into(), 7443));
        assert_eq!(host_and_port("[::1]", 7443).unwrap(), ("::1".into(), 7443));
        assert_eq!(host_and_port("[::1]:9", 7443).unwrap(), ("::1".into(), 9));
        assert!(host_and_port("relay.example:x", 7443).is_err());
        assert!(host_and_port("[::1]x", 7443).is_err());
    }
}
