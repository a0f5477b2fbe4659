//! foca's timers, kept in deadline order inside the crate so drivers only
//! have to honour one deadline ([`Membership::poll_timeout`](crate::Membership::poll_timeout)).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::time::Duration;

use foca::Timer;

use crate::identity::Ident;

/// One pending timer. Ordered by deadline, then by foca's own `Timer` order
/// (foca relies on it: e.g. an indirect probe before the next probe round),
/// then by submission order, so equal deadlines replay identically.
#[derive(Debug)]
struct Entry {
    deadline: Duration,
    timer: Timer<Ident>,
    seq: u64,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.deadline
            .cmp(&other.deadline)
            .then_with(|| self.timer.cmp(&other.timer))
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

/// Deadline-ordered queue of foca timers.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    entries: BTreeSet<Entry>,
    next_seq: u64,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, deadline: Duration, timer: Timer<Ident>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(Entry { deadline, timer, seq });
    }

    /// Earliest deadline, if any timer is pending.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.entries.first().map(|e| e.deadline)
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Duration) -> Option<Timer<Ident>> {
        if self.next_deadline()? <= now { self.entries.pop_first().map(|e| e.timer) } else { None }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_then_foca_order_then_submission() {
        let mut q = TimerQueue::default();
        let ms = Duration::from_millis;
        q.push(ms(20), Timer::PeriodicGossip(1));
        q.push(ms(10), Timer::ProbeRandomMember(1));
        q.push(ms(10), Timer::PeriodicAnnounce(1));
        q.push(ms(10), Timer::PeriodicAnnounce(2));
        q.push(
            ms(10),
            Timer::SendIndirectProbe {
                probed_id: Ident::placeholder("10.0.0.1:1".parse().unwrap()),
                token: 1,
            },
        );
        assert_eq!(q.len(), 5);
        assert_eq!(q.pop_due(ms(5)), None);
        assert!(matches!(q.pop_due(ms(10)), Some(Timer::SendIndirectProbe { .. })));
        assert_eq!(q.pop_due(ms(10)), Some(Timer::ProbeRandomMember(1)));
        assert_eq!(q.pop_due(ms(10)), Some(Timer::PeriodicAnnounce(1)));
        assert_eq!(q.pop_due(ms(10)), Some(Timer::PeriodicAnnounce(2)));
        assert_eq!(q.pop_due(ms(10)), None);
        assert_eq!(q.next_deadline(), Some(ms(20)));
    }
}
