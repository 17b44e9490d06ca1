//! Rendezvous shared by the nodes of a cluster.
//!
//! The two people saying a code may reach different nodes. The numbers, who
//! opened and who joined live in the `rendezvous` table; what the parties pass
//! each other goes by `NOTIFY` to whichever node holds the other party (the
//! listener of news of the node hands it to [`ClusterRendezvous::dispatch`]).
//! A rendezvous is live and short, so nothing it carries is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backchannel_proto::addr::{base32_decode, base32_encode};
use backchannel_proto::frame::{ErrorCode, RendezvousEvent, ServerFrame};
use postgres::{Client, Config};
use tokio::sync::{mpsc, oneshot};

use super::{ConnId, Outbox, pick_nameplate};
use crate::storage::postgres::{NOTIFY_CHANNEL, connect};
use crate::storage::{StorageError, now_ms};

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
    opened: Instant,
    /// The other party is there (for the opener: someone joined).
    joined: bool,
}

/// What the database thread does for rendezvous.
enum Command {
    Open {
        opener: String,
        reply: oneshot::Sender<Result<u32, ErrorCode>>,
    },
    Join {
        nameplate: u32,
        joiner: String,
        reply: oneshot::Sender<Result<(), ErrorCode>>,
    },
    Close {
        nameplate: u32,
    },
    Notify {
        payload: String,
        reply: Option<oneshot::Sender<Result<(), ErrorCode>>>,
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
    pub(crate) fn start(config: Config, node: String, ttl: Duration) -> std::io::Result<Arc<Self>> {
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

    /// Ends of this node older than the lifetime are closed.
    fn expire(&self) {
        let mut ends = self.ends();
        let old: Vec<(u32, Role)> = ends
            .iter()
            .filter(|(_, e)| e.opened.elapsed() >= self.ttl)
            .map(|(k, _)| *k)
            .collect();
        for key in old {
            if let Some(end) = ends.remove(&key) {
                let _ = end.outbox.try_send(closed(key.0));
            }
        }
    }

    pub(crate) async fn open(&self, conn: ConnId, outbox: Outbox) -> Result<u32, ErrorCode> {
        self.expire();
        let nameplate = self
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
                opened: Instant::now(),
                joined: false,
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
            // In place before the opener hears of us, so that its answer finds us.
            ends.insert(
                (nameplate, Role::Joiner),
                End {
                    conn,
                    outbox,
                    opened: Instant::now(),
                    joined: true,
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
        if result.is_err() {
            self.ends().remove(&(nameplate, Role::Joiner));
        }
        result
    }

    /// The role `conn` has in `nameplate`, if it is a party there.
    /// The role `conn` has in `nameplate` and whether the other party is there,
    /// if it is a party there.
    fn role_of(&self, nameplate: u32, conn: ConnId) -> Option<(Role, bool)> {
        let ends = self.ends();
        [Role::Opener, Role::Joiner].into_iter().find_map(|role| {
            ends.get(&(nameplate, role))
                .filter(|e| e.conn == conn && e.opened.elapsed() < self.ttl)
                .map(|e| (role, e.joined))
        })
    }

    pub(crate) async fn send(
        &self,
        nameplate: u32,
        conn: ConnId,
        data: Vec<u8>,
    ) -> Result<(), ErrorCode> {
        let (role, joined) = self
            .role_of(nameplate, conn)
            .ok_or(ErrorCode::UnknownRendezvous)?;
        if !joined {
            return Err(ErrorCode::NoPeer);
        }
        let payload = format!(
            "r {nameplate} {} d {}",
            role.other().letter(),
            base32_encode(&data)
        );
        self.call(|reply| Command::Notify {
            payload,
            reply: Some(reply),
        })
        .await
    }

    pub(crate) async fn close(&self, nameplate: u32, conn: ConnId) -> Result<(), ErrorCode> {
        let (role, _) = self
            .role_of(nameplate, conn)
            .ok_or(ErrorCode::UnknownRendezvous)?;
        self.ends().remove(&(nameplate, role));
        self.tell_closed(nameplate, role);
        Ok(())
    }

    /// A connection ended: every rendezvous it is in closes.
    pub(crate) fn forget(&self, conn: ConnId) {
        let mine: Vec<(u32, Role)> = {
            let mut ends = self.ends();
            let keys: Vec<(u32, Role)> = ends
                .iter()
                .filter(|(_, e)| e.conn == conn)
                .map(|(k, _)| *k)
                .collect();
            for key in &keys {
                ends.remove(key);
            }
            keys
        };
        for (nameplate, role) in mine {
            self.tell_closed(nameplate, role);
        }
    }

    fn tell_closed(&self, nameplate: u32, by: Role) {
        let _ = self.db.try_send(Command::Close { nameplate });
        let _ = self.db.try_send(Command::Notify {
            payload: format!("r {nameplate} {} c", by.other().letter()),
            reply: None,
        });
    }

    /// A rendezvous notification: `r NAMEPLATE ROLE KIND [DATA]`, for the party
    /// of that role if it is on this node.
    pub(crate) fn dispatch(&self, mut words: std::str::SplitAsciiWhitespace<'_>) {
        let (Some(nameplate), Some(role), Some(kind)) = (
            words.next().and_then(|n| n.parse::<u32>().ok()),
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
        let mut ends = self.ends();
        let key = (nameplate, role);
        let event = match kind {
            "j" => {
                if let Some(end) = ends.get_mut(&key) {
                    end.joined = true;
                }
                RendezvousEvent::Joined
            }
            "d" => match words.next().and_then(base32_decode) {
                Some(data) => RendezvousEvent::Data(data),
                None => return,
            },
            "c" => {
                if let Some(end) = ends.remove(&key) {
                    let _ = end.outbox.try_send(closed(nameplate));
                }
                return;
            }
            _ => return,
        };
        if let Some(end) = ends.get(&key) {
            let _ = end
                .outbox
                .try_send(ServerFrame::Rendezvous { nameplate, event });
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
fn run_commands(config: Config, ttl: Duration, mut commands: mpsc::Receiver<Command>) {
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
            answer(command, Err(ErrorCode::Unavailable));
            continue;
        };
        let cutoff = (now_ms() as i64).saturating_sub(ttl_ms);
        match command {
            Command::Open { opener, reply } => {
                let _ = reply.send(open_in(db, &opener, cutoff).map_err(unavailable));
            }
            Command::Join {
                nameplate,
                joiner,
                reply,
            } => {
                let _ = reply.send(
                    join_in(db, nameplate, &joiner, cutoff).unwrap_or_else(|e| Err(unavailable(e))),
                );
            }
            Command::Close { nameplate } => {
                let n = i32::try_from(nameplate).unwrap_or(-1);
                if let Err(e) = db.execute("DELETE FROM rendezvous WHERE nameplate = $1", &[&n]) {
                    tracing::warn!(error = %e, "closing a rendezvous failed");
                }
            }
            Command::Notify { payload, reply } => {
                let result = db
                    .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])
                    .map(|_| ())
                    .map_err(|e| unavailable(e.into()));
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
        }
    }
}

fn answer(command: Command, result: Result<(), ErrorCode>) {
    match command {
        Command::Open { reply, .. } => {
            let _ = reply.send(result.map(|()| 0));
        }
        Command::Join { reply, .. } => {
            let _ = reply.send(result);
        }
        Command::Notify {
            reply: Some(reply), ..
        } => {
            let _ = reply.send(result);
        }
        Command::Close { .. } | Command::Notify { reply: None, .. } => {}
    }
}

fn unavailable(e: StorageError) -> ErrorCode {
    tracing::warn!(error = %e, "a rendezvous operation failed in the database");
    ErrorCode::Unavailable
}

/// Takes a free number, in one transaction with the lifetime's expiry.
fn open_in(db: &mut Client, opener: &str, cutoff: i64) -> Result<u32, StorageError> {
    let mut tx = db.transaction()?;
    // One opening at a time across the nodes: numbers are chosen from what is open.
    tx.execute("LOCK TABLE rendezvous IN SHARE ROW EXCLUSIVE MODE", &[])?;
    tx.execute("DELETE FROM rendezvous WHERE opened_at <= $1", &[&cutoff])?;
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
    tx.execute(
        "INSERT INTO rendezvous (nameplate, opened_at, opener) VALUES ($1, $2, $3)",
        &[&n, &(now_ms() as i64), &opener],
    )?;
    tx.commit()?;
    Ok(nameplate)
}

/// Joins an open rendezvous once, and tells its opener.
fn join_in(
    db: &mut Client,
    nameplate: u32,
    joiner: &str,
    cutoff: i64,
) -> Result<Result<(), ErrorCode>, StorageError> {
    let Ok(n) = i32::try_from(nameplate) else {
        return Ok(Err(ErrorCode::UnknownRendezvous));
    };
    let mut tx = db.transaction()?;
    let Some(row) = tx.query_opt(
        "SELECT opener, used FROM rendezvous WHERE nameplate = $1 AND opened_at > $2 FOR UPDATE",
        &[&n, &cutoff],
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
    tx.execute(
        "UPDATE rendezvous SET used = true, joiner = $2 WHERE nameplate = $1",
        &[&n, &joiner],
    )?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&NOTIFY_CHANNEL, &format!("r {nameplate} o j")],
    )?;
    tx.commit()?;
    Ok(Ok(()))
}
