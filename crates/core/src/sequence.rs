//! Per-sender sequence tracking: what arrived, what is missing, since when.

use crate::Timestamp;
use crate::store::SenderState;

/// How a sequence number relates to what we had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// New, and not reported missing before.
    Fresh,
    /// Arrived after it had been reported missing.
    Late,
    /// Already received.
    Duplicate,
}

impl SenderState {
    /// Records a sequence number. The caller has checked the message store for a
    /// duplicate below `contiguous` (the state alone cannot tell late from repeated
    /// there).
    pub(crate) fn record(&mut self, seq: u64, now: Timestamp) -> Arrival {
        if seq <= self.contiguous {
            return Arrival::Late;
        }
        if !self.beyond.insert(seq) {
            return Arrival::Duplicate;
        }
        while self.beyond.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        if self.beyond.is_empty() {
            self.gap_since = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
        Arrival::Fresh
    }

    /// When the open gap becomes a withheld-message alert.
    pub(crate) fn deadline(&self, grace_ms: u64) -> Option<Timestamp> {
        self.gap_since.map(|t| t.plus_ms(grace_ms))
    }

    /// If the gap has been open for `grace_ms`, gives up on it: returns the missing
    /// numbers and moves past them.
    pub(crate) fn expire(&mut self, now: Timestamp, grace_ms: u64) -> Option<Vec<u64>> {
        let deadline = self.deadline(grace_ms)?;
        if now < deadline {
            return None;
        }
        let top = self.beyond.last().copied()?;
        let missing: Vec<u64> = (self.contiguous + 1..top)
            .filter(|n| !self.beyond.contains(n))
            .collect();
        self.contiguous = top;
        self.beyond.clear();
        self.gap_since = None;
        Some(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_and_gaps() {
        let mut s = SenderState::default();
        let t = Timestamp(1000);
        assert_eq!(s.record(1, t), Arrival::Fresh);
        assert_eq!(s.record(2, t), Arrival::Fresh);
        assert_eq!(s.contiguous, 2);
        assert_eq!(s.gap_since, None);

        assert_eq!(s.record(4, t), Arrival::Fresh);
        assert_eq!(s.gap_since, Some(t));
        assert_eq!(s.record(4, t), Arrival::Duplicate);
        assert_eq!(s.record(3, t), Arrival::Fresh);
        assert_eq!(s.contiguous, 4);
        assert_eq!(s.gap_since, None);

        assert_eq!(s.record(7, Timestamp(2000)), Arrival::Fresh);
        assert_eq!(s.record(9, Timestamp(2500)), Arrival::Fresh);
        assert_eq!(s.expire(Timestamp(2999), 1000), None, "not yet");
        assert_eq!(s.expire(Timestamp(3000), 1000), Some(vec![5, 6, 8]));
        assert_eq!(s.contiguous, 9);
        assert_eq!(s.record(6, Timestamp(4000)), Arrival::Late);
    }
}
