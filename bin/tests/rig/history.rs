//! The history of a run and the fenced register, as the clients saw them.
//!
//! Every event is stamped under one mutex with CLOCK_MONOTONIC time since
//! the rig's epoch (one clock for every namespace of the machine), so the
//! order of the log is the order of the stamps. The register's decision and
//! its log entry are made under the same mutex: the register is
//! linearizable by construction, and its log is the truth about what it
//! accepted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A lock operation a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `lock(name, timeout)`.
    Lock {
        /// The timeout given.
        timeout: Duration,
    },
    /// `try_lock(name)`.
    TryLock,
    /// `lock` of a name the client holds (re-entry).
    Reenter,
}

impl OpKind {
    /// How long the operation may wait by its own terms.
    pub fn wait(self) -> Duration {
        match self {
            OpKind::Lock { timeout } => timeout,
            OpKind::TryLock | OpKind::Reenter => Duration::ZERO,
        }
    }
}

/// How an operation was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Granted with this token and hold count.
    Granted {
        /// The fencing token.
        token: u64,
        /// Holds of this client after the grant.
        holds: u32,
    },
    /// Refused: held by another owner.
    Busy,
    /// No grant within the timeout.
    TimedOut,
    /// Mode majority, and the node's side holds no majority.
    NoQuorum,
    /// Any other error (connection closed, agent stopping, ...).
    Error(String),
}

/// What happened, as one client saw it.
#[derive(Clone, Debug)]
pub enum What {
    /// A request sent.
    Invoke {
        /// The operation's id.
        op: u64,
        /// The lock.
        name: String,
        /// Which operation.
        kind: OpKind,
    },
    /// Its answer.
    Answer {
        /// The operation's id.
        op: u64,
        /// The answer.
        outcome: Outcome,
    },
    /// A write to the fenced register: the value the writer last knew,
    /// plus one.
    Write {
        /// The lock (the register keeps one value per name).
        name: String,
        /// The token the write carried.
        token: u64,
        /// The value the writer built on: read at the start of its hold,
        /// then its own last write.
        based_on: u64,
        /// Whether the register accepted it.
        accepted: bool,
    },
    /// The client was told the lock is lost.
    Lost {
        /// The lock.
        name: String,
        /// The token it held.
        token: u64,
        /// The reason the node gave.
        cause: String,
    },
    /// The client let go of its last hold (unlock sent).
    Release {
        /// The lock.
        name: String,
        /// The token it held.
        token: u64,
    },
}

/// One event: who, when, what.
#[derive(Clone, Debug)]
pub struct Event {
    /// Time on the rig's clock.
    pub t: Duration,
    /// The client (worker) id.
    pub worker: usize,
    /// The node the client talks to.
    pub node: usize,
    /// What happened.
    pub what: What,
}

#[derive(Default)]
struct Inner {
    events: Vec<Event>,
    /// The register: per name, the highest token accepted and the value.
    highest: BTreeMap<String, u64>,
    values: BTreeMap<String, u64>,
}

/// The shared log and the fenced register.
pub struct History {
    epoch: Instant,
    inner: Mutex<Inner>,
}

impl History {
    /// An empty history whose clock counts from `epoch`.
    pub fn new(epoch: Instant) -> History {
        History { epoch, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `what`, stamped now.
    pub fn record(&self, worker: usize, node: usize, what: What) {
        let mut inner = self.lock();
        let t = self.epoch.elapsed();
        inner.events.push(Event { t, worker, node, what });
    }

    /// The register's value for `name` (a holder reads it once, when its
    /// hold begins).
    pub fn read(&self, name: &str) -> u64 {
        self.lock().values.get(name).copied().unwrap_or(0)
    }

    /// The fenced register: a write of `based_on + 1` to `name` with
    /// `token` is accepted only if no higher token was accepted for `name`
    /// before. Logged either way.
    pub fn write(&self, worker: usize, node: usize, name: &str, token: u64, based_on: u64) -> bool {
        let mut inner = self.lock();
        let highest = inner.highest.get(name).copied().unwrap_or(0);
        let accepted = token >= highest;
        if accepted {
            inner.highest.insert(name.to_string(), token);
            inner.values.insert(name.to_string(), based_on + 1);
        }
        let t = self.epoch.elapsed();
        inner.events.push(Event {
            t,
            worker,
            node,
            what: What::Write { name: name.to_string(), token, based_on, accepted },
        });
        accepted
    }

    /// A copy of the events so far.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// Time on the rig's clock.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}
