//! Rendezvous shared by the nodes of a cluster.
//!
//! The two people saying a code may reach different nodes. The numbers, who
//! opened and who joined live in the `rendezvous` table; what the parties pass
//! each other goes by `NOTIFY` to whichever node holds the other party (the
//! listener of news of the node hands it to [`ClusterRendezvous::dispatch`]).
//! A rendezvous is live and short, so nothing it carries is stored.
//!
//! A number is used again once its rendezvous is over, so every rendezvous also
//! has a random instance, in its row and in every notification about it: a party
//! left over from an earlier rendezvous under the same number neither receives
//! nor sends anything in the new one. Lifetimes are counted from the opening by
//! the database's clock, so nodes whose clocks differ agree on them.
//!
//! What differs from a single node: a notification lost while a node's listener
//! reconnects is not sent again (the parties time out), and a node killed with
//! its parties leaves the other party waiting until the lifetime ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backchannel_proto::addr::{base32_decode, base32_encode};
use backchannel_proto::frame::{ErrorCode, RendezvousEvent, ServerFrame};
use postgres::Client;
use tokio::sync::{mpsc, oneshot};

use super::{ConnId, Outbox, pick_nameplate};
use crate::storage::StorageError;
use crate::storage::postgres::{Database, NOTIFY_CHANNEL, connect};

/// The database's clock, in milliseconds since the Unix epoch.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::BIGINT";

/// Which party of a rendezvous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Opener,
    Joiner,
}

impl Role {
    fn letter(self) -> char {
        match self {
            Role::Opener => 'o',
            Role::Joiner => 'j',
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Opener => Role::Joiner,
            Role::Joiner => Role::Opener,
        }
    }
}

/// One party of a rendezvous, connected to this node.
struct End {
    conn: ConnId,
    outbox: Outbox,
    /// Which rendezvous under this number (`None` while a join is decided).
    instance: Option<i64>,
    /// When the rendezvous is over.
    ends_at: Instant,
    /// The other party is there (for the opener: someone joined).
    joined: bool,
    /// What came for this number while the join was decided.
    early: Vec<(i64, RendezvousEvent)>,
}

/// A rendezvous as the database knows it: which one, and how long it has left.
#[derive(Clone, Copy, Debug)]
struct Instance {
    id: i64,
    left: Duration,
}

/// What the database thread does for rendezvous.
enum Command {
    Open {
        opener: String,
        reply: oneshot::Sender<Result<(u32, Instance), ErrorCode>>,
    },
    Join {
        nameplate: u32,
        joiner: String,
        reply: oneshot::Sender<Result<Instance, ErrorCode>>,
    },
    /// Deletes the row and tells the other party, in one transaction.
    Close {
        nameplate: u32,
        instance: i64,
        tell: Role,
    },
    Notify {
        payload: String,
        reply: oneshot::Sender<Result<(), ErrorCode>>,
    },
}

/// Rendezvous shared by the nodes of a cluster.
pub(crate) struct ClusterRendezvous {
    node: String,
    ttl: Duration,
    ends: Mutex<HashMap<(u32, Role), End>>,
    db: mpsc::Sender<Command>,
}

impl ClusterRendezvous {
    /// Starts the database thread of rendezvous; it ends when the returned
    /// rendezvous is dropped.
    pub(crate) fn start(
        config: Database,
        node: String,
        ttl: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let (db, commands) = mpsc::channel(1024);
        std::thread::Builder::new()
            .name("relay-rendezvous".into())
            .spawn(move || run_commands(config, ttl, commands))?;
        Ok(Arc::new(Self {
            node,
            ttl,
            ends: Mutex::new(HashMap::new()),
            db,
        }))
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ends(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, Role), End>> {
        self.ends.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn party(&self, conn: ConnId) -> String {
        format!("{}/{conn}", self.node)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ErrorCode>>) -> Command,
    ) -> Result<T, ErrorCode> {
        let (reply, rx) = oneshot::channel();
        self.db
            .send(make(reply))
            .await
            .map_err(|_| ErrorCode::Unavailable)?;
        rx.await.map_err(|_| ErrorCode::Unavailable)?
    }

    /// Parties of this node whose rendezvous is over are told it closed.
    fn expire(&self) {
        let now = Instant::now();
        let mut ends = self.ends();
        let over: Vec<(u32, Role)> = ends
            .iter()
            .filter(|(_, e)| e.ends_at <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in over {
            if let Some(end) = ends.remove(&key) {
                let _ = end.outbox.try_send(closed(key.0));
            }
        }
    }

    pub(crate) async fn open(&self, conn: ConnId, outbox: Outbox) -> Result<u32, ErrorCode> {
        self.expire();
        let (nameplate, instance) = self
            .call(|reply| Command::Open {
                opener: self.party(conn),
                reply,
            })
            .await?;
        self.ends().insert(
            (nameplate, Role::Opener),
            End {
                conn,
                outbox,
                instance: Some(instance.id),
                ends_at: Instant::now() + instance.left,
                joined: false,
                early: Vec::new(),
            },
        );
        Ok(nameplate)
    }

    pub(crate) async fn join(
        &self,
        nameplate: u32,
        conn: ConnId,
        outbox: Outbox,
    ) -> Result<(), ErrorCode> {
        self.expire();
        {
            let mut ends = self.ends();
            if ends.contains_key(&(nameplate, Role::Joiner)) {
                // This node holds its joiner already: nobody joins twice.
                return Err(ErrorCode::RendezvousUsed);
            }
            // In place before the opener hears of us, so that what it sends at
            // once is kept (until we know which rendezvous we joined).
            ends.insert(
                (nameplate, Role::Joiner),
                End {
                    conn,
                    outbox,
                    instance: None,
                    ends_at: Instant::now() + self.ttl,
                    joined: true,
                    early: Vec::new(),
                },
            );
        }
        let result = self
            .call(|reply| Command::Join {
                nameplate,
                joiner: self.party(conn),
                reply,
            })
            .await;
        let mut ends = self.ends();
        let key = (nameplate, Role::Joiner);
        match result {
            Ok(instance) => {
                if let Some(end) = ends.get_mut(&key) {
                    end.instance = Some(instance.id);
                    end.ends_at = Instant::now() + instance.left;
                    for (id, event) in std::mem::take(&mut end.early) {
                        if id == instance.id {
                            let _ = end
                                .outbox
                                .try_send(ServerFrame::Rendezvous { nameplate, event });
                        }
                    }
                }
                Ok(())
            }
            Err(code) => {
                ends.remove(&key);
                Err(code)
            }
        }
    }

    /// The role `conn` has in `nameplate`, the rendezvous and whether the other
    /// party is there, if it is a party there and the rendezvous is not over.
    fn role_of(&self, nameplate: u32, conn: ConnId) -> Option<(Role, i64, bool)> {
        let ends = self.ends();
        let now = Instant::now();
        [Role::Opener, Role::Joiner].into_iter().find_map(|role| {
            let end = ends.get(&(nameplate, role))?;
            let instance = end.instance?;
            (end.conn == conn && end.ends_at > now).then_some((role, instance, end.joined))
        })
    }

    pub(crate) async fn send(
        &self,
        nameplate: u32,
        conn: ConnId,
        data: Vec<u8>,
    ) -> Result<(), ErrorCode> {
        let (role, instance, joined) = self
            .role_of(nameplate, conn)
            .ok_or(ErrorCode::UnknownRendezvous)?;
        if !joined {
            return Err(ErrorCode::NoPeer);
        }
        let payload = format!(
            "r {nameplate} {instance} {} d {}",
            role.other().letter(),
            base32_encode(&data)
        );
        self.call(|reply| Command::Notify { payload, reply }).await
    }

    pub(crate) async fn close(&self, nameplate: u32, conn: ConnId) -> Result<(), ErrorCode> {
        let (role, instance, _) = self
            .role_of(nameplate, conn)
            .ok_or(ErrorCode::UnknownRendezvous)?;
        self.ends().remove(&(nameplate, role));
        self.tell_closed(nameplate, instance, role);
        Ok(())
    }

    /// A connection ended: every rendezvous it is in closes.
    pub(crate) fn forget(&self, conn: ConnId) {
        let mine: Vec<(u32, Role, Option<i64>)> = {
            let mut ends = self.ends();
            let keys: Vec<(u32, Role)> = ends
                .iter()
                .filter(|(_, e)| e.conn == conn)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|key| ends.remove(&key).map(|e| (key.0, key.1, e.instance)))
                .collect()
        };
        for (nameplate, role, instance) in mine {
            if let Some(instance) = instance {
                self.tell_closed(nameplate, instance, role);
            }
        }
    }

    fn tell_closed(&self, nameplate: u32, instance: i64, by: Role) {
        let close = Command::Close {
            nameplate,
            instance,
            tell: by.other(),
        };
        if self.db.try_send(close).is_err() {
            // The queue is full: the other party learns it when the lifetime ends.
            tracing::warn!("a rendezvous close was dropped (the database queue is full)");
        }
    }

    /// A rendezvous notification, `r NAMEPLATE INSTANCE ROLE KIND [DATA]`, for the
    /// party of that role and rendezvous if it is on this node.
    pub(crate) fn dispatch(&self, mut words: std::str::SplitAsciiWhitespace<'_>) {
        let (Some(nameplate), Some(instance), Some(role), Some(kind)) = (
            words.next().and_then(|n| n.parse::<u32>().ok()),
            words.next().and_then(|n| n.parse::<i64>().ok()),
            words.next(),
            words.next(),
        ) else {
            return;
        };
        let role = match role {
            "o" => Role::Opener,
            "j" => Role::Joiner,
            _ => return,
        };
        let event = match kind {
            "j" => RendezvousEvent::Joined,
            // Empty data has no word after the kind.
            "d" => match words.next().map_or(Some(Vec::new()), base32_decode) {
                Some(data) => RendezvousEvent::Data(data),
                None => return,
            },
            "c" => RendezvousEvent::Closed,
            _ => return,
        };
        let mut ends = self.ends();
        let key = (nameplate, role);
        let Some(end) = ends.get_mut(&key) else {
            return;
        };
        match end.instance {
            None => end.early.push((instance, event)),
            Some(id) if id != instance || end.ends_at <= Instant::now() => {}
            Some(_) => {
                match event {
                    RendezvousEvent::Joined => end.joined = true,
                    RendezvousEvent::Closed => {
                        if let Some(end) = ends.remove(&key) {
                            let _ = end.outbox.try_send(closed(nameplate));
                        }
                        return;
                    }
                    _ => {}
                }
                let _ = end
                    .outbox
                    .try_send(ServerFrame::Rendezvous { nameplate, event });
            }
        }
    }
}

fn closed(nameplate: u32) -> ServerFrame {
    ServerFrame::Rendezvous {
        nameplate,
        event: RendezvousEvent::Closed,
    }
}

/// The rendezvous database thread: one connection, made again when it breaks.
fn run_commands(config: Database, ttl: Duration, mut commands: mpsc::Receiver<Command>) {
    let mut client: Option<Client> = None;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    while let Some(command) = commands.blocking_recv() {
        if client.as_ref().is_some_and(Client::is_closed) {
            client = None;
        }
        if client.is_none() {
            client = connect(&config)
                .map_err(|e| tracing::warn!(error = %e, "cannot reach the database"))
                .ok();
        }
        let Some(db) = client.as_mut() else {
            refuse(command);
            continue;
        };
        let failed = match command {
            Command::Open { opener, reply } => {
                let result = open_in(db, &opener, ttl_ms);
                let failed = result.is_err();
                let _ = reply.send(result.map_err(unavailable));
                failed
            }
            Command::Join {
                nameplate,
                joiner,
                reply,
            } => {
                let result = join_in(db, nameplate, &joiner, ttl_ms);
                let failed = result.is_err();
                let _ = reply.send(result.unwrap_or_else(|e| Err(unavailable(e))));
                failed
            }
            Command::Close {
                nameplate,
                instance,
                tell,
            } => match close_in(db, nameplate, instance, tell) {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "closing a rendezvous failed");
                    true
                }
            },
            Command::Notify { payload, reply } => {
                let result = db
                    .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])
                    .map(|_| ())
                    .map_err(StorageError::from);
                let failed = result.is_err();
                let _ = reply.send(result.map_err(unavailable));
                failed
            }
        };
        if failed {
            // Whatever failed, the next command starts on a fresh connection.
            client = None;
        }
    }
}

fn refuse(command: Command) {
    match command {
        Command::Open { reply, .. } => {
            let _ = reply.send(Err(ErrorCode::Unavailable));
        }
        Command::Join { reply, .. } => {
            let _ = reply.send(Err(ErrorCode::Unavailable));
        }
        Command::Notify { reply, .. } => {
            let _ = reply.send(Err(ErrorCode::Unavailable));
        }
        Command::Close { .. } => {}
    }
}

fn unavailable(e: StorageError) -> ErrorCode {
    tracing::warn!(error = %e, "a rendezvous operation failed in the database");
    ErrorCode::Unavailable
}

fn remaining(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Takes a free number, in one transaction with the expiry of those over.
fn open_in(db: &mut Client, opener: &str, ttl_ms: i64) -> Result<(u32, Instance), StorageError> {
    let mut tx = db.transaction()?;
    // One opening at a time across the nodes: numbers are chosen from what is open.
    tx.execute("LOCK TABLE rendezvous IN SHARE ROW EXCLUSIVE MODE", &[])?;
    tx.execute(
        &format!("DELETE FROM rendezvous WHERE opened_at <= {DB_NOW} - $1::BIGINT"),
        &[&ttl_ms],
    )?;
    let open: std::collections::HashSet<u32> = tx
        .query("SELECT nameplate FROM rendezvous", &[])?
        .iter()
        .filter_map(|r| u32::try_from(r.get::<_, i32>(0)).ok())
        .collect();
    let nameplate = pick_nameplate(
        |n| open.contains(&n),
        |low, high| open.iter().filter(|&&n| (low..=high).contains(&n)).count() as u64,
    );
    let n = i32::try_from(nameplate).map_err(|_| StorageError::Corrupt("nameplate range"))?;
    let id = rand::Rng::r#gen::<i64>(&mut rand::rngs::OsRng);
    tx.execute(
        &format!(
            "INSERT INTO rendezvous (nameplate, opened_at, opener, instance)
             VALUES ($1, {DB_NOW}, $2, $3)"
        ),
        &[&n, &opener, &id],
    )?;
    tx.commit()?;
    Ok((
        nameplate,
        Instance {
            id,
            left: remaining(ttl_ms),
        },
    ))
}

/// Joins an open rendezvous once, and tells its opener.
fn join_in(
    db: &mut Client,
    nameplate: u32,
    joiner: &str,
    ttl_ms: i64,
) -> Result<Result<Instance, ErrorCode>, StorageError> {
    let Ok(n) = i32::try_from(nameplate) else {
        return Ok(Err(ErrorCode::UnknownRendezvous));
    };
    let mut tx = db.transaction()?;
    let Some(row) = tx.query_opt(
        &format!(
            "SELECT opener, used, instance, opened_at + $2::BIGINT - {DB_NOW} FROM rendezvous
             WHERE nameplate = $1 AND opened_at > {DB_NOW} - $2::BIGINT FOR UPDATE"
        ),
        &[&n, &ttl_ms],
    )?
    else {
        return Ok(Err(ErrorCode::UnknownRendezvous));
    };
    let opener: String = row.get(0);
    if opener == joiner {
        return Ok(Err(ErrorCode::Malformed));
    }
    if row.get::<_, bool>(1) {
        return Ok(Err(ErrorCode::RendezvousUsed));
    }
    let instance = Instance {
        id: row.get(2),
        left: remaining(row.get(3)),
    };
    tx.execute(
        "UPDATE rendezvous SET used = true, joiner = $2 WHERE nameplate = $1",
        &[&n, &joiner],
    )?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[
            &NOTIFY_CHANNEL,
            &format!("r {nameplate} {} o j", instance.id),
        ],
    )?;
    tx.commit()?;
    Ok(Ok(instance))
}

/// Deletes a rendezvous (if it is still that one) and tells the other party.
fn close_in(
    db: &mut Client,
    nameplate: u32,
    instance: i64,
    tell: Role,
) -> Result<(), StorageError> {
    let n = i32::try_from(nameplate).unwrap_or(-1);
    let mut tx = db.transaction()?;
    tx.execute(
        "DELETE FROM rendezvous WHERE nameplate = $1 AND instance = $2",
        &[&n, &instance],
    )?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[
            &NOTIFY_CHANNEL,
            &format!("r {nameplate} {instance} {} c", tell.letter()),
        ],
    )?;
    tx.commit()?;
    Ok(())
}
