//! CENTRAL_LOCK2 as a sans-I/O state machine.
//!
//! Every node runs one [`LockNode`]. It plays the *client* role for the
//! node's own applications, and the *coordinator* role while its view names
//! it coordinator (the oldest member). The coordinator keeps the lock
//! table; on taking over it first runs the reconciliation round of
//! CENTRAL_LOCK2 (LOCK-INFO-REQ to every member, rebuild the table from the
//! answers, resolve duplicates), then serves.
//!
//! # Calling convention
//! The machine never reads a clock, a socket or a random source. Time is
//! the `now` argument: a [`Duration`](std::time::Duration) since an origin
//! fixed by the driver, never decreasing. After every call to a `handle_*`
//! method or an application operation, drain [`LockNode::poll_transmit`] and
//! [`LockNode::poll_event`], then arm a timer for
//! [`LockNode::poll_timeout`] and call [`LockNode::handle_timeout`] when it
//! fires (calling it early or twice is harmless). Messages a node sends to
//! itself are delivered inside the machine and never appear as transmits.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod config;
mod coordinator;
mod node;
mod serving;
mod table;
mod token;
mod vouch;

pub use config::{Config, ConfigError, Mode, REPORT_WINDOW_PARTS};
pub use node::{
    Alert, Event, Failure, HeldInfo, LockNode, LossReason, MAX_NOTICES, Notice, Stats, TableStats, Transmit,
    UnlockError, View, Waiting,
};
pub use token::TokenIssuer;
pub use vouch::WITNESSES;

pub use swimlock_wire::lock::LockMsg;
pub use swimlock_wire::{ClientId, LockName, NodeId, Owner, ReqId, Token};
