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
    /// Delay before a lock whose holder left the view is granted again.
    pub lock_delay: Duration,
}

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
            lock_delay: Duration::ZERO,
        }
    }

    /// Checks the settings; the error names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("retransmit_initial", self.retransmit_initial),
            ("retransmit_max", self.retransmit_max),
            ("queued_keepalive", self.queued_keepalive),
            ("reconcile_timeout", self.reconcile_timeout),
            ("try_lock_timeout", self.try_lock_timeout),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError { field, reason: "must be greater than zero" });
            }
        }
        if self.retransmit_max < self.retransmit_initial {
            return Err(ConfigError {
                field: "retransmit_max",
                reason: "must be at least retransmit_initial",
            });
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
    pub reason: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lock setting `{}` {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}
