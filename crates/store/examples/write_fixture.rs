//! Writes the storage-format fixture of the current schema version into
//! `tests/fixtures/profile-v{SCHEMA_VERSION}`. Run once when a schema version is
//! introduced; `tests/compat.rs` then checks every later build still reads it.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use backchannel_core::mls::Suite;
use backchannel_core::{Engine, EngineConfig, Timestamp};
use backchannel_proto::addr::{Fingerprint, MailboxAddr, MailboxId, RelayAddr};
use backchannel_store::{SCHEMA_VERSION, Store};

const PASSPHRASE: &[u8] = b"fixture passphrase";

fn mailbox(b: u8) -> MailboxAddr {
    MailboxAddr {
        relay: RelayAddr::new(Fingerprint([b; 32]), "relay.example", 7443).unwrap(),
        send_id: MailboxId([b; 16]),
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/profile-v{SCHEMA_VERSION}"));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::create(&dir, PASSPHRASE).unwrap();
    store.set_setting("name", "fixture-alice").unwrap();
    let mut engine = Engine::load(store, EngineConfig::default()).unwrap();
    let t = Timestamp(1_750_000_000_000);
    engine
        .create_channel(t, "fixture", "alice", Suite::XWing.into(), mailbox(1))
        .unwrap();
    for text in ["first", "second", "third"] {
        engine.send_text(t, "fixture", text).unwrap();
    }
    engine
        .key_package(t, "alice-elsewhere", Suite::Classic, mailbox(2))
        .unwrap();
    while engine.poll_output().is_some() {}
    engine.store().checkpoint().unwrap();
    println!("wrote {}", dir.display());
}
