//! Connection caps and rate limits.
//!
//! A connection is admitted only under the global cap and its address's cap. Each
//! connection has a token bucket for requests, and each address one for requests
//! over all its connections and one for creating mailboxes. Addresses are held only
//! in memory, only while they have connections or recent requests, and never logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::metrics::Metrics;

/// Raises this process's soft limit on open files to its hard limit (at most 2^20):
/// each connection holds a descriptor, and most systems start processes at 1,024.
/// Returns the limit in force afterwards.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.unwrap_or(1 << 20).min(1 << 20);
    if limit.current.is_some_and(|current| current < wanted) {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Some(wanted);
        }
    }
    limit.current
}

/// Descriptors a process needs beyond one per connection (files, listeners, logs).
const SPARE_FILES: u64 = 64;

/// Raises the open-files limit ([`raise_open_files_limit`]) and says whether it
/// allows `connections` connections: `Err` carries the limit in force when not.
pub fn open_files_for(connections: usize) -> Result<(), u64> {
    match raise_open_files_limit() {
        Some(limit) if limit < connections as u64 + SPARE_FILES => Err(limit),
        _ => Ok(()),
    }
}

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// A bucket refilled with `per_minute` tokens a minute, holding at most `burst`.
    pub(crate) fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(per_minute) / 60.0,
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// A bucket refilled with `per_hour` tokens an hour, holding at most `burst`.
    pub(crate) fn per_hour(per_hour: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(per_hour) / 3600.0,
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Whether it is full again (nothing to remember).
    fn full(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The limits a relay enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections in all.
    pub max_connections: usize,
    /// Most connections from one address.
    pub max_connections_per_ip: usize,
    /// Requests per second per connection (burst twice that).
    pub requests_per_second: u32,
    /// Requests per second per address, over all its connections (burst twice that).
    pub ip_requests_per_second: u32,
    /// Mailboxes created per minute per address.
    pub mailboxes_per_minute: u32,
    /// Most subscriptions on one connection.
    pub max_subscriptions: usize,
    /// Rendezvous opened or joined per minute per connection (burst: the same).
    pub rendezvous_per_minute: u32,
    /// Rendezvous joined per hour per address, over all its connections and
    /// across reconnections (burst: a sixth of it). Each join is one guess at a
    /// code: this is what one address can burn of other people's codes.
    pub rendezvous_joins_per_hour: u32,
    /// Rendezvous opened per hour per address (burst: a sixth of it), so that one
    /// address cannot crowd the short numbers.
    pub rendezvous_opens_per_hour: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_connections_per_ip: 512,
            requests_per_second: 500,
            ip_requests_per_second: 5_000,
            mailboxes_per_minute: 600,
            max_subscriptions: 1024,
            rendezvous_per_minute: 6,
            rendezvous_joins_per_hour: 18,
            rendezvous_opens_per_hour: 180,
        }
    }
}

struct PerIp {
    connections: usize,
    requests: Bucket,
    creations: Bucket,
}

/// What an address may still do with rendezvous. Kept apart from its
/// connections, so that reconnecting resets nothing; forgotten once full again.
struct RendezvousAllowance {
    joins: Bucket,
    opens: Bucket,
}

/// Shared admission state.
pub(crate) struct Admission {
    limits: Limits,
    total: usize,
    per_ip: HashMap<IpAddr, PerIp>,
    rendezvous: HashMap<IpAddr, RendezvousAllowance>,
}

/// A rendezvous request, as counted per address.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RendezvousUse {
    /// Opening one (making a code).
    Open,
    /// Joining one (using a code, or guessing one).
    Join,
}

/// Holds one admitted connection's place; releases it when dropped.
pub(crate) struct Admitted {
    admission: Arc<Mutex<Admission>>,
    ip: IpAddr,
    metrics: Arc<Metrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut a = self
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        a.total = a.total.saturating_sub(1);
        if let Some(entry) = a.per_ip.get_mut(&self.ip) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.connections == 0 {
                a.per_ip.remove(&self.ip);
            }
        }
        self.metrics.connections_open.dec();
    }
}

impl Admitted {
    /// A request from this connection's address: within the address's budget?
    pub(crate) fn allow_request(&self) -> bool {
        let mut a = self
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        a.per_ip
            .get_mut(&self.ip)
            .is_some_and(|e| e.requests.take(Instant::now()))
    }

    /// A mailbox creation from this connection's address: within budget?
    pub(crate) fn allow_creation(&self) -> bool {
        let mut a = self
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        a.per_ip
            .get_mut(&self.ip)
            .is_some_and(|e| e.creations.take(Instant::now()))
    }
}

impl Admitted {
    /// A rendezvous open or join from this connection's address: within the
    /// address's allowance?
    pub(crate) fn allow_rendezvous(&self, what: RendezvousUse) -> bool {
        let mut a = self
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let limits = a.limits;
        if a.rendezvous.len() > 4096 {
            a.rendezvous
                .retain(|_, r| !(r.joins.full(now) && r.opens.full(now)));
        }
        let entry = a
            .rendezvous
            .entry(self.ip)
            .or_insert_with(|| RendezvousAllowance {
                joins: Bucket::per_hour(
                    limits.rendezvous_joins_per_hour,
                    (limits.rendezvous_joins_per_hour / 6).max(1),
                ),
                opens: Bucket::per_hour(
                    limits.rendezvous_opens_per_hour,
                    (limits.rendezvous_opens_per_hour / 6).max(1),
                ),
            });
        match what {
            RendezvousUse::Open => entry.opens.take(now),
            RendezvousUse::Join => entry.joins.take(now),
        }
    }
}

/// Admits a connection from `ip`, or refuses it (`None`) if a cap is reached.
pub(crate) fn admit(
    admission: &Arc<Mutex<Admission>>,
    ip: IpAddr,
    metrics: &Arc<Metrics>,
) -> Option<Admitted> {
    let mut a = admission.lock().unwrap_or_else(PoisonError::into_inner);
    let limits = a.limits;
    if a.total >= limits.max_connections {
        return None;
    }
    let entry = a.per_ip.entry(ip).or_insert_with(|| PerIp {
        connections: 0,
        requests: Bucket::new(
            limits.ip_requests_per_second,
            limits.ip_requests_per_second * 2,
        ),
        creations: Bucket::new(
            limits.mailboxes_per_minute.div_ceil(60).max(1),
            limits.mailboxes_per_minute,
        ),
    });
    if entry.connections >= limits.max_connections_per_ip {
        return None;
    }
    entry.connections += 1;
    a.total += 1;
    metrics.connections_open.inc();
    Some(Admitted {
        admission: admission.clone(),
        ip,
        metrics: metrics.clone(),
    })
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            limits,
            total: 0,
            per_ip: HashMap::new(),
            rendezvous: HashMap::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        let before = getrlimit(Resource::Nofile);
        let now = raise_open_files_limit();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(now, after.current);
        assert!(after.current >= before.current);
        let hard = before.maximum.unwrap_or(1 << 20).min(1 << 20);
        assert_eq!(after.current, Some(hard.max(before.current.unwrap_or(0))));
    }

    #[test]
    fn bucket_refills_at_its_rate() {
        let mut b = Bucket::new(10, 2);
        let t = Instant::now();
        assert!(b.take(t));
        assert!(b.take(t));
        assert!(!b.take(t));
        assert!(b.take(t + Duration::from_millis(110)));
        assert!(!b.take(t + Duration::from_millis(110)));
    }

    #[test]
    fn caps_per_address_and_in_all() {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        };
        let adm = Admission::new(limits);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let c = IpAddr::from([10, 0, 0, 3]);
        let a1 = admit(&adm, a, &metrics);
        let a2 = admit(&adm, a, &metrics);
        assert!(a1.is_some() && a2.is_some());
        assert!(admit(&adm, a, &metrics).is_none(), "per-address cap");
        let b1 = admit(&adm, b, &metrics);
        assert!(b1.is_some());
        assert!(admit(&adm, c, &metrics).is_none(), "global cap");
        drop(a1);
        let c1 = admit(&adm, c, &metrics);
        assert!(c1.is_some());
        assert_eq!(metrics.connections_open.get(), 3);
        drop((a2, b1, c1));
        assert_eq!(metrics.connections_open.get(), 0);
    }
}
