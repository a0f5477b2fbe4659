//! A cluster of real agents on a real network, on one machine: network
//! namespaces on a bridge, faults made with nftables and signals, clients
//! that write to a fenced register, and a checker that judges the history
//! (issue 11).
//!
//! - [`net`]: the namespaces, the bridge, the agents, the faults;
//! - [`history`]: the events the clients saw and the fenced register;
//! - [`workload`]: the clients;
//! - [`check`]: the checker;
//! - [`nemesis`]: seeded fault schedules and the run that applies one;
//! - [`figures`]: failover and heal times repeated for percentiles;
//! - [`relay`]: link latency, since this kernel has no netem.
//!
//! Needs root, iproute2 and nftables (`.ci/run` installs them).

#![allow(dead_code)]

pub mod check;
pub mod figures;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod relay;
pub mod workload;
