//! Nodes of one relay on one PostgreSQL database: what one node must hear of
//! the others.
//!
//! - **News in mailboxes.** A node that stores messages says which mailboxes have
//!   news with `NOTIFY` in the same transaction (sent on commit). Every node
//!   `LISTEN`s and wakes its connections subscribed to those mailboxes. A
//!   notification can be lost (the listening connection broke, the server
//!   restarted): every second, a node also compares the message counters of the
//!   mailboxes its connections follow with what it saw last, and wakes those that
//!   moved. A wake-up is only a hint; connections fetch from the database.
//! - **Rendezvous for codes.** The two people saying a code may reach different
//!   nodes. The numbers, who opened and who joined live in the `rendezvous` table;
//!   what the parties pass each other goes by `NOTIFY` to whichever node holds the
//!   other party. A rendezvous is live and short, so nothing of it is stored.
//!
//! Connections to the database are made on threads of their own: the driver
//! runs its own runtime and must not be started from an asynchronous context.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use backchannel_proto::addr::base32_encode;
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator as _;

use crate::hub::Hub;
use crate::rendezvous::shared::ClusterRendezvous;
use crate::storage::postgres::{Database, NOTIFY_CHANNEL, connect};
use crate::storage::{MailboxKey, StorageError};

/// How often a node looks for news it was not told of.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How long a node goes without reaching the database before it closes its
/// connections (their clients go to another node).
const LOST_AFTER: Duration = Duration::from_secs(3);

/// How long a node waits before connecting again after the database failed.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// A node's name among the nodes: random, new at every start.
pub(crate) fn node_name() -> String {
    let mut bytes = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    base32_encode(&bytes)
}

/// Starts what a node of a cluster runs beside its storage threads: the
/// database thread of rendezvous and the listener of news. Both end once the
/// relay is gone (the hub and the rendezvous are dropped).
///
/// `reachable` is set to false when the node has not reached the database for
/// [`LOST_AFTER`], and to true when it reaches it again.
pub(crate) fn start(
    config: Database,
    node: String,
    ttl: Duration,
    hub: &Arc<Hub>,
    reachable: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<Arc<ClusterRendezvous>> {
    let rendezvous = ClusterRendezvous::start(config.clone(), node.clone(), ttl)?;
    let listener = Listener {
        config,
        node,
        hub: Arc::downgrade(hub),
        rendezvous: Arc::downgrade(&rendezvous),
        seen: HashMap::new(),
        reachable,
    };
    std::thread::Builder::new()
        .name("relay-listen".into())
        .spawn(move || listener.run())?;
    Ok(rendezvous)
}

/// The listener of news: `LISTEN`, and every second a look at the counters of
/// followed mailboxes in case a notification was lost.
struct Listener {
    config: Database,
    node: String,
    hub: Weak<Hub>,
    rendezvous: Weak<ClusterRendezvous>,
    /// The last message number seen of each followed mailbox.
    seen: HashMap<MailboxKey, i64>,
    /// Whether this node reaches the database.
    reachable: tokio::sync::watch::Sender<bool>,
}

impl Listener {
    fn run(mut self) {
        // Since when the database has not been reached (reset by `listen` once
        // it is).
        let mut down_since: Option<Instant> = None;
        while self.hub.strong_count() > 0 {
            match self.listen(&mut down_since) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the database's notifications; connecting again");
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= LOST_AFTER && *self.reachable.borrow() {
                        tracing::error!(
                            "this node cannot reach the database; closing its connections"
                        );
                        self.reachable.send_replace(false);
                    }
                    std::thread::sleep(RECONNECT_AFTER);
                }
            }
        }
    }

    /// Listens until the relay is gone (`Ok`) or the connection fails.
    fn listen(&mut self, down_since: &mut Option<Instant>) -> Result<(), StorageError> {
        let mut client = connect(&self.config)?;
        client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))?;
        // Whatever was missed while not listening is found by this first look.
        self.seen.clear();
        self.poll(&mut client)?;
        if !*self.reachable.borrow() {
            tracing::info!("this node reaches the database again");
        }
        self.reachable.send_replace(true);
        *down_since = None;
        let mut last_poll = Instant::now();
        loop {
            let Some(hub) = self.hub.upgrade() else {
                return Ok(());
            };
            {
                let mut notifications = client.notifications();
                let mut batch = notifications.timeout_iter(POLL_EVERY / 4);
                while let Some(note) = batch.next()? {
                    self.on_notification(&hub, note.payload());
                    if last_poll.elapsed() >= POLL_EVERY {
                        break;
                    }
                }
            }
            drop(hub);
            if last_poll.elapsed() >= POLL_EVERY {
                self.poll(&mut client)?;
                last_poll = Instant::now();
            }
        }
    }

    fn on_notification(&self, hub: &Hub, payload: &str) {
        let mut words = payload.split_ascii_whitespace();
        match words.next() {
            Some("m") => {
                if words.next() == Some(self.node.as_str()) {
                    // Our own appends: the storage thread woke our readers already.
                    return;
                }
                for key in words.filter_map(|k| k.parse::<MailboxKey>().ok()) {
                    hub.notify(key);
                }
            }
            Some("r") => {
                if let Some(rendezvous) = self.rendezvous.upgrade() {
                    rendezvous.dispatch(words);
                }
            }
            _ => {}
        }
    }

    /// Wakes the followed mailboxes whose last message number moved since the
    /// last look (all of them at the first look).
    fn poll(&mut self, client: &mut Client) -> Result<(), StorageError> {
        let Some(hub) = self.hub.upgrade() else {
            return Ok(());
        };
        let keys = hub.subscribed();
        if keys.is_empty() {
            self.seen.clear();
            return Ok(());
        }
        let rows = client.query(
            "SELECT key, last_seq FROM mailboxes WHERE key = ANY($1)",
            &[&keys],
        )?;
        let mut now = HashMap::with_capacity(rows.len());
        for row in rows {
            let (key, seq): (MailboxKey, i64) = (row.get(0), row.get(1));
            if self.seen.get(&key) != Some(&seq) {
                hub.notify(key);
            }
            now.insert(key, seq);
        }
        self.seen = now;
        Ok(())
    }
}
