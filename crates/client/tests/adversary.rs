//! The real client against the real relay made hostile (feature `adversary`): each
//! test scripts one thing a relay can do, and asserts the exact alert an honest
//! member sees, that nothing forged is shown, and that the queue goes on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backchannel_client::{Client, ClientConfig};
use backchannel_core::mls::Suite;
use backchannel_core::{Alert, EngineConfig, Event};
use backchannel_proto::addr::MailboxId;
use backchannel_proto::envelope::BLOB_LEN;
use backchannel_proto::frame::Blob;
use backchannel_relay::adversary::{Adversary, AdversaryHandle};
use backchannel_relay::{RelayConfig, RunningRelay};
use backchannel_store::Store;

const LIMIT: Duration = Duration::from_secs(60);

type SendRule = Box<dyn FnMut(MailboxId, &Blob) -> Vec<(MailboxId, Blob)> + Send>;

/// A relay whose sends a test scripts; by default it behaves.
#[derive(Default)]
struct Script {
    rule: Mutex<Option<SendRule>>,
}

impl Script {
    fn set(&self, rule: impl FnMut(MailboxId, &Blob) -> Vec<(MailboxId, Blob)> + Send + 'static) {
        *self.rule.lock().unwrap() = Some(Box::new(rule));
    }

    fn clear(&self) {
        *self.rule.lock().unwrap() = None;
    }
}

impl Adversary for Script {
    fn on_send(&self, send_id: MailboxId, blob: &Blob) -> Vec<(MailboxId, Blob)> {
        match self.rule.lock().unwrap().as_mut() {
            Some(rule) => rule(send_id, blob),
            None => vec![(send_id, blob.clone())],
        }
    }
}

struct World {
    relay: RunningRelay,
    script: Arc<Script>,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Script::default());
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.adversary = Some(AdversaryHandle(script.clone()));
    let relay = backchannel_relay::start(config).await.unwrap();
    World { relay, script, dir }
}

fn client(world: &World, name: &str) -> Client {
    client_with(world, name, |_| {})
}

fn client_with(world: &World, name: &str, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
    let dir = world.dir.path().join(name);
    let store = if Store::exists(&dir) {
        Store::open(&dir, b"pw").unwrap()
    } else {
        Store::create(&dir, b"pw").unwrap()
    };
    store.set_setting("name", name).unwrap();
    let config = ClientConfig {
        engine: EngineConfig {
            // Long enough that a loaded machine does not turn reordering into a
            // gap; the tests wait for the alerts, so only the attack cases pay it.
            gap_grace_ms: 1500,
            pending_grace_ms: 2000,
            ..EngineConfig::default()
        },
        quiet: Duration::from_millis(150),
        ..ClientConfig::default()
    };
    let mut config = config;
    tweak(&mut config);
    Client::open(store, config).unwrap()
}

/// `admin` creates `channel` and adds each of `others`.
async fn channel(
    world: &World,
    admin: &mut Client,
    admin_name: &str,
    channel: &str,
    others: &mut [(&mut Client, &str)],
) {
    admin
        .create_channel(
            channel,
            admin_name,
            Suite::XWing.into(),
            &world.relay.address,
        )
        .await
        .unwrap();
    for (c, name) in others.iter_mut() {
        let kp = c
            .key_package(name, Suite::XWing, &world.relay.address)
            .await
            .unwrap();
        let welcome = admin.add_members(channel, &[&kp]).unwrap();
        admin.flush(LIMIT).await.unwrap();
        c.join(Some(channel), &welcome).unwrap();
    }
    admin.sync(LIMIT).await.unwrap();
    for (c, _) in others.iter_mut() {
        c.sync(LIMIT).await.unwrap();
    }
}

fn send_id_of(c: &Client, channel: &str, member: &str) -> MailboxId {
    c.engine()
        .channel(channel)
        .unwrap()
        .members
        .into_iter()
        .find(|m| m.name == member)
        .unwrap()
        .mailbox
        .send_id
}

/// Syncs, then handles relay events and timers until nothing is left waiting in the
/// engine (no open gap, no parked blob, no update expected): every alert the inputs
/// can raise has been raised. Returns (texts, alerts) seen. Waits for that condition,
/// not for a fixed time, so a slow machine only makes it take longer.
async fn settle(c: &mut Client) -> (Vec<String>, Vec<Alert>) {
    if let Err(e) = c.sync(LIMIT).await {
        panic!("{e}: {:?}", c.relay_errors);
    }
    let deadline = std::time::Instant::now() + LIMIT;
    while c.engine().is_waiting() {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine still waits for something after {LIMIT:?}"
        );
        c.step(Duration::from_millis(50)).await.unwrap();
    }
    c.sync(LIMIT).await.unwrap();
    let mut texts = Vec::new();
    let mut alerts = Vec::new();
    while let Some(e) = c.take_event() {
        match e {
            Event::Message(m) => texts.push(m.text),
            Event::Alert { alert, .. } => alerts.push(alert),
            _ => {}
        }
    }
    (texts, alerts)
}

async fn say(c: &mut Client, channel: &str, text: &str) {
    c.send_text(channel, text).unwrap();
    c.flush(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_message_is_reported_as_withheld() {
    let w = world().await;
    let (mut alice, mut bob) = (client(&w, "alice"), client(&w, "bob"));
    channel(&w, &mut alice, "alice", "ops", &mut [(&mut bob, "bob")]).await;
    let bob_box = send_id_of(&alice, "ops", "bob");
    let mut dropped = false;
    w.script.set(move |to, blob| {
        if to == bob_box && !dropped {
            dropped = true;
            vec![]
        } else {
            vec![(to, blob.clone())]
        }
    });
    say(&mut alice, "ops", "one").await;
    say(&mut alice, "ops", "two").await;
    let (texts, alerts) = settle(&mut bob).await;
    assert_eq!(texts, vec!["two"]);
    assert_eq!(
        alerts,
        vec![Alert::Withheld {
            from: "alice".into(),
            missing: vec![1],
            reported_by: None,
        }]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_withheld_from_one_member_is_revealed_by_the_others() {
    let w = world().await;
    let (mut alice, mut bob, mut carol) =
        (client(&w, "alice"), client(&w, "bob"), client(&w, "carol"));
    channel(
        &w,
        &mut alice,
        "alice",
        "ops",
        &mut [(&mut bob, "bob"), (&mut carol, "carol")],
    )
    .await;
    let carol_box = send_id_of(&alice, "ops", "carol");
    w.script.set(move |to, blob| {
        if to == carol_box {
            vec![]
        } else {
            vec![(to, blob.clone())]
        }
    });
    say(&mut alice, "ops", "only bob sees this").await;
    w.script.clear();
    bob.sync(LIMIT).await.unwrap();
    say(&mut bob, "ops", "ack").await;
    let (texts, alerts) = settle(&mut carol).await;
    assert_eq!(texts, vec!["ack"]);
    assert_eq!(
        alerts,
        vec![Alert::Withheld {
            from: "alice".into(),
            missing: vec![1],
            reported_by: Some("bob".into()),
        }]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reordering_is_healed_without_alerts() {
    let w = world().await;
    let (mut alice, mut bob) = (client(&w, "alice"), client(&w, "bob"));
    channel(&w, &mut alice, "alice", "ops", &mut [(&mut bob, "bob")]).await;
    let bob_box = send_id_of(&alice, "ops", "bob");
    let held: Arc<Mutex<Vec<Blob>>> = Arc::default();
    let hold = held.clone();
    w.script.set(move |to, blob| {
        if to == bob_box {
            hold.lock().unwrap().push(blob.clone());
            vec![]
        } else {
            vec![(to, blob.clone())]
        }
    });
    for t in ["first", "second", "third"] {
        say(&mut alice, "ops", t).await;
    }
    w.script.clear();
    let held: Vec<Blob> = held.lock().unwrap().drain(..).rev().collect();
    for blob in held {
        assert!(w.relay.inject(bob_box, blob).await);
    }
    let (mut texts, alerts) = settle(&mut bob).await;
    assert!(alerts.is_empty(), "{alerts:?}");
    assert_eq!(
        texts,
        vec!["third", "second", "first"],
        "delivered as the relay chose"
    );
    texts.sort();
    let history: Vec<u64> = bob
        .engine()
        .history("ops", 0, 10)
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    let mut sorted = history.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3], "every message, once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicated_message_is_a_replay_and_shown_once() {
    let w = world().await;
    let (mut alice, mut bob) = (client(&w, "alice"), client(&w, "bob"));
    channel(&w, &mut alice, "alice", "ops", &mut [(&mut bob, "bob")]).await;
    w.script
        .set(|to, blob| vec![(to, blob.clone()), (to, blob.clone())]);
    say(&mut alice, "ops", "wire the money").await;
    let (texts, alerts) = settle(&mut bob).await;
    assert_eq!(texts, vec!["wire the money"]);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(matches!(alerts[0], Alert::Replayed { .. }));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_moved_to_another_channels_mailbox_is_caught() {
    let w = world().await;
    let (mut alice, mut bob, mut carol) =
        (client(&w, "alice"), client(&w, "bob"), client(&w, "carol"));
    channel(&w, &mut alice, "alice", "x", &mut [(&mut bob, "bob")]).await;
    channel(&w, &mut carol, "carol", "y", &mut [(&mut bob, "bob")]).await;
    let bob_x = send_id_of(&alice, "x", "bob");
    let bob_y = send_id_of(&carol, "y", "bob");
    w.script.set(move |to, blob| {
        if to == bob_x {
            vec![(bob_y, blob.clone())]
        } else {
            vec![(to, blob.clone())]
        }
    });
    say(&mut alice, "x", "for x only").await;
    let (texts, alerts) = settle(&mut bob).await;
    assert!(texts.is_empty(), "{texts:?}");
    assert_eq!(alerts, vec![Alert::Moved]);
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_and_a_flood_of_garbage_are_reported_acknowledged_and_the_queue_goes_on() {
    let w = world().await;
    let (mut alice, mut bob) = (client(&w, "alice"), client(&w, "bob"));
    channel(&w, &mut alice, "alice", "ops", &mut [(&mut bob, "bob")]).await;
    let bob_box = send_id_of(&alice, "ops", "bob");
    for i in 0..200u32 {
        let mut garbage = Box::new([0u8; BLOB_LEN]);
        garbage[..4].copy_from_slice(&i.to_be_bytes());
        garbage[100] = 0x5a;
        assert!(w.relay.inject(bob_box, garbage).await);
    }
    say(&mut alice, "ops", "after the flood").await;
    let (texts, alerts) = settle(&mut bob).await;
    assert_eq!(texts, vec!["after the flood"]);
    let unreadable: usize = alerts
        .iter()
        .map(|a| match a {
            Alert::Undecryptable { count, .. } => *count,
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(unreadable, 200);
    // All of it was acknowledged: nothing is delivered again.
    let (texts, alerts) = settle(&mut bob).await;
    assert!(texts.is_empty() && alerts.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_record_altered_on_the_relays_disk_is_caught() {
    let w = world().await;
    let (mut alice, mut bob) = (client(&w, "alice"), client(&w, "bob"));
    channel(&w, &mut alice, "alice", "ops", &mut [(&mut bob, "bob")]).await;
    // Bob is offline while the message waits at the relay.
    drop(bob);
    say(&mut alice, "ops", "the original").await;
    // The relay's operator edits the record in the database.
    let db = rusqlite::Connection::open(
        w.dir
            .path()
            .join("relay")
            .join(backchannel_relay::DATABASE_FILE),
    )
    .unwrap();
    let (id, mut blob): (i64, Vec<u8>) = db
        .query_row(
            "SELECT id, blob FROM messages ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    blob[200] ^= 0xff;
    let changed = db
        .execute(
            "UPDATE messages SET blob = ?1 WHERE id = ?2",
            rusqlite::params![blob, id],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    let mut bob = client(&w, "bob");
    let (texts, alerts) = settle(&mut bob).await;
    assert!(texts.is_empty(), "{texts:?}");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        matches!(&alerts[0], Alert::Undecryptable { count: 1, detail } if detail.contains("no key"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withheld_update_is_revealed() {
    let w = world().await;
    let (mut alice, mut bob, mut carol) =
        (client(&w, "alice"), client(&w, "bob"), client(&w, "carol"));
    channel(
        &w,
        &mut alice,
        "alice",
        "ops",
        &mut [(&mut bob, "bob"), (&mut carol, "carol")],
    )
    .await;
    let carol_box = send_id_of(&alice, "ops", "carol");
    // Everything Alice sends Carol during the update is dropped.
    w.script.set(move |to, blob| {
        if to == carol_box {
            vec![]
        } else {
            vec![(to, blob.clone())]
        }
    });
    alice.self_update("ops").unwrap();
    alice.flush(LIMIT).await.unwrap();
    w.script.clear();
    bob.sync(LIMIT).await.unwrap();
    bob.flush(LIMIT).await.unwrap();
    let (_, alerts) = settle(&mut carol).await;
    let epoch = alice.engine().channel("ops").unwrap().epoch;
    assert_eq!(
        alerts,
        vec![Alert::UpdateWithheld {
            by: "bob".into(),
            epoch
        }]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_cannot_burn_a_channel() {
    let w = world().await;
    let (mut alice, mut bob) = (client(&w, "alice"), client(&w, "bob"));
    channel(&w, &mut alice, "alice", "ops", &mut [(&mut bob, "bob")]).await;
    channel(&w, &mut alice, "alice", "other", &mut [(&mut bob, "bob")]).await;
    let bob_ops = send_id_of(&alice, "ops", "bob");
    let bob_other = send_id_of(&alice, "other", "bob");
    // Alice burns "other"; the relay copies the burn into bob's mailbox of "ops",
    // and adds a blob of its own making there too.
    w.script.set(move |to, blob| {
        if to == bob_other {
            let mut forged = blob.clone();
            forged[BLOB_LEN / 2] ^= 1;
            vec![
                (to, blob.clone()),
                (bob_ops, blob.clone()),
                (bob_ops, forged),
            ]
        } else {
            vec![(to, blob.clone())]
        }
    });
    alice.burn("other").unwrap();
    alice.flush(LIMIT).await.unwrap();
    w.script.clear();
    let (_, alerts) = settle(&mut bob).await;
    // "other" is burned, as its member asked; "ops" lives, and bob is told of the
    // blobs that do not belong there (as moved from "other" if he still had it when
    // they came, as unopenable once "other" was erased).
    assert!(bob.engine().channel("other").is_err());
    assert!(bob.engine().channel("ops").is_ok());
    assert!(!alerts.is_empty());
    assert!(
        alerts
            .iter()
            .all(|a| matches!(a, Alert::Moved | Alert::Undecryptable { .. })),
        "{alerts:?}"
    );
    say(&mut alice, "ops", "still here").await;
    let (texts, _) = settle(&mut bob).await;
    assert_eq!(texts, vec!["still here"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn withholding_the_last_message_is_caught_while_its_sender_is_online() {
    let w = world().await;
    let mut alice = client_with(&w, "alice", |c| {
        c.status_interval = Duration::from_millis(500);
    });
    let mut bob = client(&w, "bob");
    channel(&w, &mut alice, "alice", "ops", &mut [(&mut bob, "bob")]).await;
    let bob_box = send_id_of(&alice, "ops", "bob");
    let mut dropped = false;
    w.script.set(move |to, blob| {
        if to == bob_box && !dropped {
            dropped = true;
            vec![]
        } else {
            vec![(to, blob.clone())]
        }
    });
    // Alice's last word is dropped; she says nothing more but stays online.
    say(&mut alice, "ops", "the last word").await;
    bob.sync(LIMIT).await.unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    let mut alerts = Vec::new();
    while alerts.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "bob never learned of the withheld message"
        );
        alice.step(Duration::from_millis(20)).await.unwrap();
        bob.step(Duration::from_millis(20)).await.unwrap();
        while let Some(e) = bob.take_event() {
            if let Event::Alert { alert, .. } = e {
                alerts.push(alert);
            }
        }
    }
    assert_eq!(
        alerts,
        vec![Alert::Withheld {
            from: "alice".into(),
            missing: vec![1],
            reported_by: None,
        }]
    );
}
