//! What the client's end-to-end tests share: a real relay on loopback, profiles in
//! a temporary directory, the texts a client received.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use backchannel_client::{Client, ClientConfig};
use backchannel_core::Event;
use backchannel_relay::{RelayConfig, RunningRelay};
use backchannel_store::Store;

/// How long a sync or flush may take.
pub const LIMIT: Duration = Duration::from_secs(15);

/// A relay with its data under `dir`, configured by `configure`.
pub async fn relay_with(dir: &Path, configure: impl FnOnce(&mut RelayConfig)) -> RunningRelay {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("relay"));
    configure(&mut config);
    backchannel_relay::start(config).await.unwrap()
}

/// A relay with its data under `dir`.
pub async fn relay(dir: &Path) -> RunningRelay {
    relay_with(dir, |_| {}).await
}

/// A new profile called `name` under `dir`, and a client over it.
pub fn client(dir: &Path, name: &str) -> Client {
    let store = Store::create(&dir.join(name), b"pw").unwrap();
    store.set_setting("name", name).unwrap();
    Client::open(store, ClientConfig::default()).unwrap()
}

/// The texts of the messages among the client's events.
pub fn texts(client: &mut Client) -> Vec<String> {
    client
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.text),
            _ => None,
        })
        .collect()
}
