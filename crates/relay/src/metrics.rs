//! Operational metrics in the Prometheus text format. Counts, latencies and queue
//! depths only: no identifier, no address, nothing about any one mailbox.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed buckets.
pub(crate) struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new((Vec::new(), 0.0, 0)),
        }
    }

    pub(crate) fn observe(&self, v: f64) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.0.len() != self.bounds.len() {
            inner.0 = vec![0; self.bounds.len()];
        }
        for (slot, bound) in inner.0.iter_mut().zip(self.bounds) {
            if v <= *bound {
                *slot += 1;
            }
        }
        inner.1 += v;
        inner.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in self.bounds.iter().enumerate() {
            let count = inner.0.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", inner.2);
        let _ = writeln!(out, "{name}_sum {}", inner.1);
        let _ = writeln!(out, "{name}_count {}", inner.2);
    }
}

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Every metric of the relay.
pub(crate) struct Metrics {
    pub(crate) connections_open: Gauge,
    pub(crate) connections_accepted: Counter,
    pub(crate) connections_refused: Counter,
    pub(crate) handshake_failures: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) frames_out: Counter,
    pub(crate) malformed: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) unauthorized: Counter,
    pub(crate) mailboxes_created: Counter,
    pub(crate) stored: Counter,
    pub(crate) refused_full: Counter,
    pub(crate) delivered: Counter,
    pub(crate) acked: Counter,
    pub(crate) expired: Counter,
    pub(crate) storage_failures: Counter,
    pub(crate) damaged: Counter,
    pub(crate) queue_depth: Gauge,
    pub(crate) healthy: Gauge,
    pub(crate) commit_seconds: Histogram,
    pub(crate) batch_size: Histogram,
    pub(crate) store_seconds: Histogram,
    pub(crate) mailboxes: Gauge,
    pub(crate) messages: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            handshake_failures: Counter::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            malformed: Counter::default(),
            rate_limited: Counter::default(),
            unauthorized: Counter::default(),
            mailboxes_created: Counter::default(),
            stored: Counter::default(),
            refused_full: Counter::default(),
            delivered: Counter::default(),
            acked: Counter::default(),
            expired: Counter::default(),
            storage_failures: Counter::default(),
            damaged: Counter::default(),
            queue_depth: Gauge::default(),
            healthy: Gauge(AtomicU64::new(1)),
            commit_seconds: Histogram::new(SECONDS),
            batch_size: Histogram::new(SIZES),
            store_seconds: Histogram::new(SECONDS),
            mailboxes: Gauge::default(),
            messages: Gauge::default(),
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &Counter); 16] = [
            (
                "connections_accepted_total",
                "Connections accepted.",
                &self.connections_accepted,
            ),
            (
                "connections_refused_total",
                "Connections refused by the connection caps.",
                &self.connections_refused,
            ),
            (
                "handshake_failures_total",
                "TLS or WebSocket handshakes that failed or timed out.",
                &self.handshake_failures,
            ),
            ("frames_received_total", "Frames received.", &self.frames_in),
            ("frames_sent_total", "Frames sent.", &self.frames_out),
            (
                "malformed_frames_total",
                "Malformed frames (each closed its connection).",
                &self.malformed,
            ),
            (
                "rate_limited_total",
                "Requests refused by rate limits.",
                &self.rate_limited,
            ),
            (
                "unauthorized_total",
                "Requests refused for a bad signature or missing subscription.",
                &self.unauthorized,
            ),
            (
                "mailboxes_created_total",
                "Mailboxes created.",
                &self.mailboxes_created,
            ),
            (
                "messages_stored_total",
                "Messages stored durably and acknowledged to their sender.",
                &self.stored,
            ),
            (
                "messages_refused_full_total",
                "Messages refused because a mailbox was full.",
                &self.refused_full,
            ),
            (
                "messages_delivered_total",
                "Deliveries to subscribed readers.",
                &self.delivered,
            ),
            (
                "messages_acked_total",
                "Messages deleted on their reader's acknowledgement.",
                &self.acked,
            ),
            (
                "messages_expired_total",
                "Messages deleted on expiry.",
                &self.expired,
            ),
            (
                "storage_failures_total",
                "Storage operations that failed.",
                &self.storage_failures,
            ),
            (
                "damaged_records_total",
                "Stored records found damaged and deleted.",
                &self.damaged,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP backchannel_relay_{name} {help}\n# TYPE backchannel_relay_{name} counter\nbackchannel_relay_{name} {}",
                c.get()
            );
        }
        let gauges: [(&str, &str, &Gauge); 5] = [
            (
                "connections_open",
                "Connections open now.",
                &self.connections_open,
            ),
            (
                "storage_queue_depth",
                "Requests waiting for the storage thread.",
                &self.queue_depth,
            ),
            (
                "healthy",
                "1 if the last storage commit succeeded.",
                &self.healthy,
            ),
            ("mailboxes", "Mailboxes held.", &self.mailboxes),
            ("messages", "Messages held.", &self.messages),
        ];
        for (name, help, g) in gauges {
            let _ = writeln!(
                out,
                "# HELP backchannel_relay_{name} {help}\n# TYPE backchannel_relay_{name} gauge\nbackchannel_relay_{name} {}",
                g.get()
            );
        }
        self.commit_seconds.render(
            &mut out,
            "backchannel_relay_commit_seconds",
            "Time to make one batch durable.",
        );
        self.batch_size.render(
            &mut out,
            "backchannel_relay_batch_size",
            "Messages per group commit.",
        );
        self.store_seconds.render(
            &mut out,
            "backchannel_relay_store_seconds",
            "Time from receiving a message to acknowledging it as durable.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.stored.add(3);
        m.commit_seconds.observe(0.003);
        let text = m.render();
        assert!(text.contains("backchannel_relay_messages_stored_total 3\n"));
        assert!(text.contains("backchannel_relay_commit_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("backchannel_relay_commit_seconds_bucket{le=\"0.002\"} 0\n"));
        assert!(text.contains("backchannel_relay_commit_seconds_count 1\n"));
    }
}
