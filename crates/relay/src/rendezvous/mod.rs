//! Rendezvous for one-time codes: two connections meet under a short number and
//! pass each other opaque bytes (a PAKE, then what it protects).
//!
//! Nothing here is stored: a rendezvous lives in memory while its opener is
//! connected, at most `ttl`. Exactly one party may ever join one: a second join is
//! refused even after the first left, so whoever guesses codes gets one guess per
//! code. Joins also draw on a small per-connection allowance, so that one connection
//! cannot sweep through the numbers.

pub(crate) mod shared;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use backchannel_proto::frame::{ErrorCode, RendezvousEvent, ServerFrame};
use rand::Rng as _;
use tokio::sync::mpsc;

/// Where a connection receives rendezvous events.
pub(crate) type Outbox = mpsc::Sender<ServerFrame>;

/// A connection's identity in the registry.
pub(crate) type ConnId = u64;

struct Party {
    conn: ConnId,
    outbox: Outbox,
}

struct Slot {
    opened: Instant,
    opener: Party,
    joiner: Option<Party>,
    /// Someone joined once; nobody joins again.
    used: bool,
}

/// Rendezvous of a relay: in memory on a single node, in the database across
/// the nodes of a cluster.
pub(crate) enum Rendezvous {
    /// One node.
    Local(Registry),
    /// Several nodes on one PostgreSQL database.
    Cluster(std::sync::Arc<shared::ClusterRendezvous>),
}

impl Rendezvous {
    pub(crate) fn ttl(&self) -> Duration {
        match self {
            Self::Local(r) => r.ttl(),
            Self::Cluster(c) => c.ttl(),
        }
    }

    pub(crate) async fn open(&self, conn: ConnId, outbox: Outbox) -> Result<u32, ErrorCode> {
        match self {
            Self::Local(r) => Ok(r.open(conn, outbox)),
            Self::Cluster(c) => c.open(conn, outbox).await,
        }
    }

    pub(crate) async fn join(
        &self,
        nameplate: u32,
        conn: ConnId,
        outbox: Outbox,
    ) -> Result<(), ErrorCode> {
        match self {
            Self::Local(r) => r.join(nameplate, conn, outbox),
            Self::Cluster(c) => c.join(nameplate, conn, outbox).await,
        }
    }

    pub(crate) async fn send(
        &self,
        nameplate: u32,
        conn: ConnId,
        data: Vec<u8>,
    ) -> Result<(), ErrorCode> {
        match self {
            Self::Local(r) => r.send(nameplate, conn, data),
            Self::Cluster(c) => c.send(nameplate, conn, data).await,
        }
    }

    pub(crate) async fn close(&self, nameplate: u32, conn: ConnId) -> Result<(), ErrorCode> {
        match self {
            Self::Local(r) => r.close(nameplate, conn),
            Self::Cluster(c) => c.close(nameplate, conn).await,
        }
    }

    pub(crate) fn forget(&self, conn: ConnId) {
        match self {
            Self::Local(r) => r.forget(conn),
            Self::Cluster(c) => c.forget(conn),
        }
    }
}

/// Every open rendezvous of a single node.
pub(crate) struct Registry {
    slots: Mutex<HashMap<u32, Slot>>,
    ttl: Duration,
}

impl Registry {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a rendezvous for `conn`; returns its number: the shortest free one
    /// (two digits while few are open, then three, ...), chosen at random.
    pub(crate) fn open(&self, conn: ConnId, outbox: Outbox) -> u32 {
        let mut slots = self.slots();
        self.expire(&mut slots);
        let nameplate = pick_nameplate(
            |n| slots.contains_key(&n),
            |low, high| slots.keys().filter(|&&n| (low..=high).contains(&n)).count() as u64,
        );
        slots.insert(
            nameplate,
            Slot {
                opened: Instant::now(),
                opener: Party { conn, outbox },
                joiner: None,
                used: false,
            },
        );
        nameplate
    }

    /// Joins `nameplate` for `conn`; the opener is told.
    pub(crate) fn join(
        &self,
        nameplate: u32,
        conn: ConnId,
        outbox: Outbox,
    ) -> Result<(), ErrorCode> {
        let mut slots = self.slots();
        self.expire(&mut slots);
        let slot = slots
            .get_mut(&nameplate)
            .ok_or(ErrorCode::UnknownRendezvous)?;
        if slot.opener.conn == conn {
            return Err(ErrorCode::Malformed);
        }
        if slot.used {
            return Err(ErrorCode::RendezvousUsed);
        }
        slot.used = true;
        let _ = slot.opener.outbox.try_send(ServerFrame::Rendezvous {
            nameplate,
            event: RendezvousEvent::Joined,
        });
        slot.joiner = Some(Party { conn, outbox });
        Ok(())
    }

    /// Passes `data` from `conn` to the other party.
    pub(crate) fn send(
        &self,
        nameplate: u32,
        conn: ConnId,
        data: Vec<u8>,
    ) -> Result<(), ErrorCode> {
        let slots = self.slots();
        let slot = slots
            .get(&nameplate)
            .filter(|s| s.opened.elapsed() < self.ttl)
            .ok_or(ErrorCode::UnknownRendezvous)?;
        let peer = if slot.opener.conn == conn {
            slot.joiner.as_ref().ok_or(ErrorCode::NoPeer)?
        } else if slot.joiner.as_ref().is_some_and(|j| j.conn == conn) {
            &slot.opener
        } else {
            return Err(ErrorCode::UnknownRendezvous);
        };
        peer.outbox
            .try_send(ServerFrame::Rendezvous {
                nameplate,
                event: RendezvousEvent::Data(data),
            })
            .map_err(|_| ErrorCode::RateLimited)
    }

    /// Closes `nameplate` if `conn` is in it; the other party is told.
    pub(crate) fn close(&self, nameplate: u32, conn: ConnId) -> Result<(), ErrorCode> {
        let mut slots = self.slots();
        let is_party = slots.get(&nameplate).is_some_and(|s| {
            s.opener.conn == conn || s.joiner.as_ref().is_some_and(|j| j.conn == conn)
        });
        if !is_party {
            return Err(ErrorCode::UnknownRendezvous);
        }
        if let Some(slot) = slots.remove(&nameplate) {
            tell_closed(nameplate, &slot, conn);
        }
        Ok(())
    }

    /// A connection ended: every rendezvous it is in closes.
    pub(crate) fn forget(&self, conn: ConnId) {
        let mut slots = self.slots();
        let mine: Vec<u32> = slots
            .iter()
            .filter(|(_, s)| {
                s.opener.conn == conn || s.joiner.as_ref().is_some_and(|j| j.conn == conn)
            })
            .map(|(n, _)| *n)
            .collect();
        for n in mine {
            if let Some(slot) = slots.remove(&n) {
                tell_closed(n, &slot, conn);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots().len()
    }

    fn expire(&self, slots: &mut HashMap<u32, Slot>) {
        let ttl = self.ttl;
        let expired: Vec<u32> = slots
            .iter()
            .filter(|(_, s)| s.opened.elapsed() >= ttl)
            .map(|(n, _)| *n)
            .collect();
        for n in expired {
            if let Some(slot) = slots.remove(&n) {
                tell_closed(n, &slot, 0);
            }
        }
    }
}

/// Chooses a free number for a new rendezvous: the shortest free one (two digits
/// while few are open, then three, ...), at random. `taken` says whether a number
/// is open; `open_in` how many are open in a range.
pub(crate) fn pick_nameplate(
    taken: impl Fn(u32) -> bool,
    open_in: impl Fn(u32, u32) -> u64,
) -> u32 {
    let mut rng = rand::thread_rng();
    // Keep numbers short, but never so crowded that a guesser hits an open one
    // by chance more than about one time in four: 1-99, then 100-999, ...
    let (mut low, mut high) = (1u32, 99u32);
    loop {
        if open_in(low, high) * 4 < u64::from(high - low + 1) {
            let n = rng.gen_range(low..=high);
            if !taken(n) {
                return n;
            }
            continue;
        }
        low = high.saturating_add(1);
        high = high.saturating_mul(10).saturating_add(9);
    }
}

/// Tells the parties other than `by` that the rendezvous closed.
fn tell_closed(nameplate: u32, slot: &Slot, by: ConnId) {
    let closed = ServerFrame::Rendezvous {
        nameplate,
        event: RendezvousEvent::Closed,
    };
    for party in std::iter::once(&slot.opener).chain(slot.joiner.as_ref()) {
        if party.conn != by {
            let _ = party.outbox.try_send(closed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn outbox() -> (Outbox, mpsc::Receiver<ServerFrame>) {
        mpsc::channel(16)
    }

    #[test]
    fn one_join_per_rendezvous_and_data_flows_both_ways() {
        let registry = Registry::new(Duration::from_secs(600));
        let (a_tx, mut a_rx) = outbox();
        let (b_tx, mut b_rx) = outbox();
        let (c_tx, _c_rx) = outbox();
        let n = registry.open(1, a_tx);
        assert!((1..=99).contains(&n));
        assert_eq!(registry.send(n, 1, vec![1]), Err(ErrorCode::NoPeer));
        registry.join(n, 2, b_tx).unwrap();
        assert!(matches!(
            a_rx.try_recv().unwrap(),
            ServerFrame::Rendezvous {
                event: RendezvousEvent::Joined,
                ..
            }
        ));
        assert_eq!(
            registry.join(n, 3, c_tx.clone()),
            Err(ErrorCode::RendezvousUsed)
        );
        registry.send(n, 2, vec![7]).unwrap();
        registry.send(n, 1, vec![8]).unwrap();
        assert!(matches!(
            a_rx.try_recv().unwrap(),
            ServerFrame::Rendezvous { event: RendezvousEvent::Data(d), .. } if d == vec![7]
        ));
        assert!(matches!(
            b_rx.try_recv().unwrap(),
            ServerFrame::Rendezvous { event: RendezvousEvent::Data(d), .. } if d == vec![8]
        ));
        // An outsider can neither send nor close.
        assert_eq!(
            registry.send(n, 3, vec![9]),
            Err(ErrorCode::UnknownRendezvous)
        );
        assert_eq!(registry.close(n, 3), Err(ErrorCode::UnknownRendezvous));
        // The joiner leaves: the opener is told, and the number is gone.
        registry.forget(2);
        assert!(matches!(
            a_rx.try_recv().unwrap(),
            ServerFrame::Rendezvous {
                event: RendezvousEvent::Closed,
                ..
            }
        ));
        assert_eq!(registry.join(n, 3, c_tx), Err(ErrorCode::UnknownRendezvous));
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn rendezvous_expire_and_numbers_grow_when_crowded() {
        let registry = Registry::new(Duration::from_millis(0));
        let (tx, _rx) = outbox();
        let n = registry.open(1, tx.clone());
        assert_eq!(
            registry.join(n, 2, tx.clone()),
            Err(ErrorCode::UnknownRendezvous)
        );

        let registry = Registry::new(Duration::from_secs(600));
        let numbers: Vec<u32> = (0..200).map(|i| registry.open(i, tx.clone())).collect();
        let mut unique = numbers.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 200);
        assert!(numbers.iter().take(20).all(|&n| n <= 99));
        assert!(numbers.iter().any(|&n| n > 99));
        // Never more than a quarter of the numbers of a length are open.
        assert!(numbers.iter().filter(|&&n| n <= 99).count() <= 25);
    }
}
