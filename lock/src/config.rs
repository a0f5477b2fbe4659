//! Settings of the lock state machine.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

/// What a component cut off from part of the cluster may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every component keeps granting; duplicates are resolved after the
    /// merge (CENTRAL_LOCK2 as designed).
    Available,
    /// Only a component holding a majority of `members` configured members
    /// grants; on a minority side held locks are reported lost.
    Majority {
        /// Number of configured members of the cluster.
        members: NonZeroUsize,
    },
}

/// Settings of a [`LockNode`](crate::LockNode). Start from [`Config::lan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Available or majority mode.
    pub mode: Mode,
    /// This node's part of every token it grants as coordinator. Must be
    /// unique among the members of the cluster.
    pub tag: u16,
    /// First retransmission delay of a request.
    pub retransmit_initial: Duration,
    /// Upper bound of the retransmission backoff.
    pub retransmit_max: Duration,
    /// How often a queued lock request is repeated to the coordinator, which
    /// re-sends the grant if the first one was lost.
    pub queued_keepalive: Duration,
    /// How long a new coordinator waits for LOCK-INFO-RSP answers before it
    /// starts serving without the members that did not answer.
    pub reconcile_timeout: Duration,
    /// How long `try_lock` waits for the coordinator's answer.
    pub try_lock_timeout: Duration,
    /// Delay before a lock whose holder left the view is granted again;
    /// after a coordinator change, fresh grants also wait this long from
    /// the departure of any member (other than the old coordinator) that
    /// may have held locks nobody reported. See [`Config::validate`] for
    /// the inequality it must meet.
    pub lock_delay: Duration,
    /// How long a lock held by a client of another node stays valid after
    /// the holder's node sent the request or renewal the coordinator
    /// answered. Renewed every quarter of it.
    pub lease: Duration,
    /// The lease of a lock held by a client of the coordinator's own node,
    /// renewed locally. A successor grants nothing until this long (times
    /// the clock margin) after its view without the old coordinator, so it
    /// is short: it is part of every failover.
    pub own_lease: Duration,
    /// Largest relative rate difference between two nodes' clocks, in
    /// percent: the coordinator counts a lease as `lease * (100 + margin) /
    /// 100` of its own time.
    pub clock_margin_pct: u32,
    /// Failure detection (suspicion timeout plus view settle time): a
    /// coordinator that did not run this long holds still, since others
    /// may have replaced it. Not a bound the leases rely on: SWIM may
    /// suspect a member before its last message and drop it right after,
    /// so a departed member may have sent its last message just before the
    /// view without it.
    pub detection_min: Duration,
    /// Most entries (held locks and pending requests) of one member's
    /// reconciliation answer; a larger answer is refused.
    pub max_report_entries: usize,
    /// Most bytes one member's reconciliation answer may take in memory
    /// while it is put together; a larger answer is refused.
    pub max_report_bytes: usize,
    /// Largest step a member's report may move the coordinator's term by;
    /// past it the coordinator stops granting and waits for the operator
    /// (a term that big is a bug or a forgery, and would use up the term
    /// space tokens have).
    pub max_term_step: u32,
    /// Most members a reconciliation round asks at once: the next are asked
    /// as answers come in, so that a round with a thousand members does
    /// not draw all their answers into the coordinator's socket buffer at
    /// once (about 5 KB per member holding 100 locks). A member asked
    /// [`RECONCILE_WINDOW_ASKS`] times without a whole answer stops
    /// taking a place in the window (it is still asked).
    pub reconcile_window: usize,
}

/// Asks after which a silent member no longer takes a place in the
/// reconciliation window (see [`Config::reconcile_window`]).
pub const RECONCILE_WINDOW_ASKS: u32 = 4;

/// Most parts of its answer a member sends per LOCK-INFO-REQ (64 parts of
/// at most 32 entries: about 80 KB, within a default socket buffer). The
/// coordinator asks for the next ones as soon as these are in, so a member
/// holding 100,000 locks answers in 49 steps instead of one 4 MB burst.
pub const REPORT_WINDOW_PARTS: usize = 64;

impl Config {
    /// Settings for a LAN.
    pub fn lan(tag: u16) -> Config {
        Config {
            mode: Mode::Available,
            tag,
            retransmit_initial: Duration::from_millis(20),
            retransmit_max: Duration::from_millis(500),
            queued_keepalive: Duration::from_millis(250),
            reconcile_timeout: Duration::from_millis(300),
            try_lock_timeout: Duration::from_secs(2),
            lock_delay: Duration::from_millis(2_100),
            lease: Duration::from_secs(2),
            own_lease: Duration::from_millis(400),
            clock_margin_pct: 5,
            detection_min: Duration::from_millis(500),
            max_report_entries: 1 << 20,
            max_report_bytes: 128 << 20,
            max_term_step: 1 << 16,
            reconcile_window: 128,
        }
    }

    /// `span` stretched by the clock-rate margin: how long the coordinator
    /// must wait on its own clock for `span` to have passed on the holder's.
    pub fn stretched(&self, span: Duration) -> Duration {
        span * (100 + self.clock_margin_pct) / 100
    }

    /// How long a member that was last heard of, or left the view, now may
    /// still hold a lock nobody else knows of: a lease (with the clock
    /// margin) or the lock-delay, whichever is longer.
    pub fn longest_unseen_hold(&self) -> Duration {
        self.stretched(self.lease).max(self.lock_delay)
    }

    /// The least `lock_delay` the leases allow: `lease * (1 + margin)`.
    /// A departed holder's last renewal may be as late as the view without
    /// it (see `detection_min`), so no detection time is subtracted.
    pub fn min_lock_delay(&self) -> Duration {
        self.stretched(self.lease)
    }

    /// How often a node renews the leases of its clients' locks.
    pub fn renew_interval(&self, own: bool) -> Duration {
        if own { self.own_lease / 4 } else { self.lease / 4 }
    }

    /// Checks the settings; the error names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("retransmit_initial", self.retransmit_initial),
            ("retransmit_max", self.retransmit_max),
            ("queued_keepalive", self.queued_keepalive),
            ("reconcile_timeout", self.reconcile_timeout),
            ("try_lock_timeout", self.try_lock_timeout),
            ("lease", self.lease),
            ("own_lease", self.own_lease),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        if self.retransmit_max < self.retransmit_initial {
            return Err(ConfigError::new("retransmit_max", "must be at least retransmit_initial"));
        }
        if self.clock_margin_pct > 100 {
            return Err(ConfigError::new("clock_margin_pct", "must be at most 100"));
        }
        if self.lock_delay < self.min_lock_delay() {
            return Err(ConfigError::new(
                "lock_delay",
                format!(
                    "lock_delay {:?} is below lease {:?} x (1 + {}%) = {:?}: \
                     a departed holder could still be inside its lease when its lock is granted again",
                    self.lock_delay,
                    self.lease,
                    self.clock_margin_pct,
                    self.min_lock_delay()
                ),
            ));
        }
        if self.lease <= self.renew_interval(false) * 2 {
            return Err(ConfigError::new("lease", "must be longer than two renewal intervals"));
        }
        if self.reconcile_window == 0 {
            return Err(ConfigError::new("reconcile_window", "must be greater than zero"));
        }
        if self.max_report_entries == 0 || self.max_report_bytes == 0 || self.max_term_step == 0 {
            return Err(ConfigError::new("max_report_entries", "limits must be greater than zero"));
        }
        Ok(())
    }
}

/// A setting that [`Config::validate`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError { field, reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lock setting `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_is_valid_and_meets_the_lease_inequality() {
        let c = Config::lan(1);
        c.validate().unwrap();
        assert_eq!(c.min_lock_delay(), Duration::from_millis(2_100));
    }

    #[test]
    fn a_lock_delay_below_the_lease_bound_is_refused_with_the_values() {
        let mut c = Config::lan(1);
        c.lock_delay = Duration::from_millis(1_000);
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "lock_delay");
        assert!(e.reason.contains("2.1s"), "{e}");
    }
}
