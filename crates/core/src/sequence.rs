//! Per-sender sequence tracking: what arrived, what is missing, since when.

use crate::Timestamp;
use crate::store::{Claim, SenderState};

/// Most missing numbers listed in one alert.
const MAX_REPORTED: usize = 10_000;

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
        self.update_gap(now);
        Arrival::Fresh
    }

    /// `claim` reports that this sender's messages go up to `seq`.
    pub(crate) fn announce(&mut self, seq: u64, now: Timestamp, claim: Claim) {
        if seq > self.announced {
            self.announced = seq;
            self.claimed_by = (seq > self.own_top()).then_some(claim);
            self.update_gap(now);
        }
    }

    /// The sender's own message numbered `seq` came after it had received the
    /// report behind `announced` (`heard_claimer`): if `seq` is lower, the report was
    /// false. Withdraws it and returns the claim and the number it made up.
    pub(crate) fn contradicts(
        &mut self,
        seq: u64,
        heard_claimer: impl Fn(&Claim) -> bool,
        now: Timestamp,
    ) -> Option<(Claim, u64)> {
        let claim = self.claimed_by.as_ref()?;
        if seq >= self.announced || !heard_claimer(claim) {
            return None;
        }
        let claimed = self.announced;
        let claim = self.claimed_by.take()?;
        self.announced = self.own_top();
        self.update_gap(now);
        Some((claim, claimed))
    }

    /// The highest sequence number the sender's own messages show.
    fn own_top(&self) -> u64 {
        self.beyond
            .last()
            .copied()
            .unwrap_or(0)
            .max(self.contiguous)
    }

    /// The highest sequence number known to exist.
    fn top(&self) -> u64 {
        self.own_top().max(self.announced)
    }

    /// The numbers known to exist that have not arrived (at most [`MAX_REPORTED`]).
    pub(crate) fn missing(&self) -> Vec<u64> {
        (self.contiguous + 1..=self.top())
            .filter(|n| !self.beyond.contains(n))
            .take(MAX_REPORTED)
            .collect()
    }

    fn update_gap(&mut self, now: Timestamp) {
        if self.top() <= self.contiguous {
            self.gap_since = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
    }

    /// When the open gap becomes a withheld-message alert.
    pub(crate) fn deadline(&self, grace_ms: u64) -> Option<Timestamp> {
        self.gap_since.map(|t| t.plus_ms(grace_ms))
    }

    /// If the gap has been open for `grace_ms`, gives up on it: returns the missing
    /// numbers, and who claimed they exist when only a report says so, and moves
    /// past them.
    pub(crate) fn expire(
        &mut self,
        now: Timestamp,
        grace_ms: u64,
    ) -> Option<(Vec<u64>, Option<Claim>)> {
        let deadline = self.deadline(grace_ms)?;
        if now < deadline {
            return None;
        }
        let top = self.top();
        if top <= self.contiguous {
            self.gap_since = None;
            return None;
        }
        // Everything up to `top` should have arrived, `top` itself included when
        // only others' reports say it exists. Long gaps are capped in the report.
        let missing = self.missing();
        let claim = if self.announced > self.own_top() {
            self.claimed_by.take()
        } else {
            None
        };
        self.claimed_by = None;
        self.contiguous = top;
        self.beyond.clear();
        self.gap_since = None;
        Some((missing, claim))
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
        assert_eq!(s.expire(Timestamp(3000), 1000), Some((vec![5, 6, 8], None)));
        assert_eq!(s.contiguous, 9);
        assert_eq!(s.record(6, Timestamp(4000)), Arrival::Late);
    }

    fn claim(seq: u64) -> Claim {
        Claim {
            member: crate::derive::MemberId([9; 32]),
            name: "mallory".into(),
            at_seq: seq,
        }
    }

    #[test]
    fn reports_of_others_open_a_gap() {
        let mut s = SenderState::default();
        assert_eq!(s.record(1, Timestamp(0)), Arrival::Fresh);
        s.announce(3, Timestamp(10), claim(1));
        assert_eq!(s.gap_since, Some(Timestamp(10)));
        assert_eq!(s.missing(), vec![2, 3]);
        assert_eq!(s.record(2, Timestamp(20)), Arrival::Fresh);
        assert!(s.gap_since.is_some(), "#3 still missing");
        assert_eq!(
            s.expire(Timestamp(1010), 1000),
            Some((vec![3], Some(claim(1)))),
            "#3 exists only by mallory's word"
        );
        s.announce(3, Timestamp(2000), claim(2));
        assert_eq!(s.gap_since, None, "an old report opens nothing");
        assert_eq!(s.record(4, Timestamp(2000)), Arrival::Fresh);
        assert_eq!(s.gap_since, None);
    }

    #[test]
    fn the_senders_own_number_refutes_a_false_report() {
        let mut s = SenderState::default();
        assert_eq!(s.record(1, Timestamp(0)), Arrival::Fresh);
        s.announce(9, Timestamp(10), claim(4));
        assert!(s.gap_since.is_some());
        // A message sent before the sender heard the claim proves nothing.
        assert_eq!(s.record(2, Timestamp(20)), Arrival::Fresh);
        assert_eq!(s.contradicts(2, |_| false, Timestamp(20)), None);
        // One sent after it, numbered below the claim, does.
        assert_eq!(s.record(3, Timestamp(30)), Arrival::Fresh);
        assert_eq!(
            s.contradicts(3, |c| c.at_seq == 4, Timestamp(30)),
            Some((claim(4), 9))
        );
        assert_eq!(s.gap_since, None, "the made-up gap is closed");
        assert!(s.missing().is_empty());
        assert_eq!(s.contradicts(3, |_| true, Timestamp(40)), None, "once");
    }
}
