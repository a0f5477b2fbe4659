//! [`LockNode`]: the client and coordinator roles of one node behind one
//! calling convention.

use std::collections::VecDeque;
use std::time::Duration;

use swimlock_wire::lock::LockMsg;
use swimlock_wire::{ClientId, LockName, NodeId, ReqId, Token};

use crate::client::ClientRole;
use crate::config::{Config, Mode};
use crate::coordinator::Coordinator;

/// A membership view as the lock machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Changes whenever the member list does (local to the node).
    pub id: u64,
    /// Live members, oldest first; the first is the coordinator.
    pub members: Vec<NodeId>,
    /// True when members that were apart came back together (a merge
    /// view): the coordinator runs a new reconciliation round.
    pub merge: bool,
}

impl View {
    /// The coordinator of this view: its oldest member.
    pub fn coordinator(&self) -> Option<NodeId> {
        self.members.first().copied()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains(&node)
    }
}

/// A message for another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The receiving member.
    pub to: NodeId,
    /// The message.
    pub msg: LockMsg,
}

/// What the application learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A `lock` or `try_lock` succeeded.
    Acquired {
        /// The operation, as returned by `lock`/`try_lock`.
        req: ReqId,
        /// The client that asked.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// Its fencing token (unchanged on re-entry).
        token: Token,
        /// How many times the client now holds it.
        holds: u32,
    },
    /// A `lock` or `try_lock` did not succeed.
    Failed {
        /// The operation.
        req: ReqId,
        /// The client that asked.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// Why.
        reason: Failure,
    },
    /// A lock the client held is no longer its own.
    Lost {
        /// The client that held it.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// The token it held.
        token: Token,
        /// Why.
        reason: LossReason,
    },
}

/// Why a lock operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// try_lock: another owner holds the lock.
    Busy,
    /// No grant before the deadline.
    TimedOut,
    /// Mode `majority` and this node's component holds no majority.
    NoQuorum,
}

/// Why a held lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// Held twice after a merge; the other holder had the higher token.
    Duplicate,
    /// Mode `majority`: this node's component lost its majority.
    QuorumLost,
}

/// Why `unlock` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockError {
    /// The client does not hold the lock.
    NotHeld,
}

/// A lock held by a client of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldInfo {
    /// The client.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// Its fencing token.
    pub token: Token,
    /// Hold count (re-entry).
    pub holds: u32,
}

/// Size of the coordinator's lock table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Locks held.
    pub held: usize,
    /// Requests waiting.
    pub waiters: usize,
}

/// Monotonic counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent again after no answer.
    pub retransmissions: u64,
    /// Reconciliation rounds started as coordinator.
    pub reconciliations: u64,
    /// Merge views received.
    pub merges: u64,
    /// Duplicate locks resolved as coordinator.
    pub duplicates_resolved: u64,
    /// Grants made as coordinator.
    pub grants: u64,
    /// Lock operations of this node's clients that succeeded.
    pub acquired: u64,
    /// Lock operations that failed because the lock was held (try_lock).
    pub busy: u64,
    /// Lock operations that timed out.
    pub timed_out: u64,
    /// Lock operations refused for lack of quorum.
    pub no_quorum: u64,
    /// Held locks lost.
    pub lost: u64,
    /// Lock messages dropped as stale or not applicable.
    pub dropped: u64,
}
