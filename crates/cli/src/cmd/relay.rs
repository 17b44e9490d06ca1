//! `backchannel relay serve` and `backchannel relay address`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use backchannel_relay::RelayConfig;
use serde_json::json;

use crate::cli::{Global, RelayCommand, ServeArgs};
use crate::error::Failure;

/// File in the data directory holding the address of the last start.
const ADDRESS_FILE: &str = "relay-address";

fn init_logging() {
    // By default only our own crates log, at info: they never log identifiers or
    // addresses. RUST_LOG overrides (an operator who turns on a dependency's trace
    // logs may see more).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,backchannel_relay=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub(crate) async fn run(g: &Global, cmd: RelayCommand) -> Result<(), Failure> {
    match cmd {
        RelayCommand::Serve(args) => serve(args).await,
        RelayCommand::Address { data, public_host } => address(g, &data, public_host),
    }
}

fn config(args: &ServeArgs) -> Result<RelayConfig, Failure> {
    let mut config = RelayConfig::new(args.listen, args.data.clone());
    let file = args
        .config
        .clone()
        .or_else(|| Some(args.data.join("relay.toml")).filter(|p| p.exists()));
    if let Some(file) = file {
        config.apply_file(&file)?;
        // The command line wins over the file.
        config.listen = args.listen;
    }
    if !args.public_host.is_empty() {
        config.public_host = Some(args.public_host.join(","));
    }
    if args.postgres.is_some() {
        config.postgres = args.postgres.clone();
    }
    if args.postgres_ca.is_some() {
        config.postgres_ca = args.postgres_ca.clone();
    }
    if let Some(m) = args.metrics {
        config.metrics_listen = Some(m);
    }
    if let Some(d) = args.ttl_days {
        config.message_ttl = Duration::from_secs(d.saturating_mul(86_400));
    }
    if let Some(q) = args.quota_messages {
        config.quota_messages = q;
    }
    if let Some(q) = args.quota_bytes {
        config.quota_bytes = q;
    }
    if let Some(n) = args.max_connections {
        config.limits.max_connections = n;
    }
    if let Some(n) = args.max_connections_per_ip {
        config.limits.max_connections_per_ip = n;
    }
    if args.max_db_bytes.is_some() {
        config.max_db_bytes = args.max_db_bytes;
    }
    Ok(config)
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    init_logging();
    let config = config(&args)?;
    // Each connection is a descriptor; a relay below its connection cap for want
    // of descriptors would refuse people for no reason it could say.
    if let Err(limit) = backchannel_relay::limits::open_files_for(config.limits.max_connections) {
        tracing::warn!(
            limit,
            max_connections = config.limits.max_connections,
            "the open-files limit is below the connection cap; raise it (ulimit -n, LimitNOFILE)"
        );
    }
    let relay = backchannel_relay::start(config)
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    let address = relay.address.to_string();
    // The address is the first line on stdout, for people and scripts alike.
    println!("{address}");
    let _ = std::fs::write(args.data.join(ADDRESS_FILE), format!("{address}\n"));
    if let Some(m) = relay.metrics_addr {
        eprintln!("metrics on http://{m}/metrics");
    }
    let stop = relay.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop.send(true);
    });
    relay.wait().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

fn address(g: &Global, data: &Path, public_host: Vec<String>) -> Result<(), Failure> {
    let stored = std::fs::read_to_string(data.join(ADDRESS_FILE)).ok();
    let host = (!public_host.is_empty()).then(|| public_host.join(","));
    let address = match (stored, host) {
        (Some(stored), None) => stored.trim().to_owned(),
        (_, host) => {
            if !data.join(backchannel_relay::identity::CERT_FILE).exists() {
                return Err(Failure::new(format!(
                    "no relay has run with data in {}",
                    data.display()
                ))
                .hint("start one with `backchannel relay serve --data DIR`"));
            }
            let mut config =
                RelayConfig::new(SocketAddr::from(([0, 0, 0, 0], 7443)), data.to_owned());
            config.public_host = host;
            backchannel_relay::address(&config)?.to_string()
        }
    };
    if g.json {
        println!("{}", json!({"address": address}));
    } else {
        println!("{address}");
    }
    Ok(())
}
