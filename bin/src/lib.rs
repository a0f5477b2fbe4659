//! swimlock: a distributed lock node.
//!
//! - [`node`]: the sans-I/O core, membership and lock composed behind one
//!   calling convention;
//! - [`agent`]: the tokio driver (one UDP socket, one task owning the core)
//!   and the local client endpoint;
//! - [`client`]: the Rust client library, over the client socket or
//!   in-process;
//! - [`cli`]: the `swimlock` command line;
//! - [`metrics`]: the Prometheus metrics;
//! - [`http`]: the HTTP endpoint (`/health`, `/ready`, `/metrics`);
//! - [`logging`]: text or JSON logs, with a level a reload can change;
//! - [`sim`]: the deterministic simulator;
//! - [`bench`]: `swimlock bench`, the end-to-end benchmark.
//!
//! Features: `cli` (default; the command line, and with it `sim` and
//! `bench`), `sim`, `bench`. With `default-features = false` an embedding
//! application gets [`agent`], [`client`], [`node`], [`metrics`] and
//! [`http`] only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod node;
#[cfg(feature = "sim")]
pub mod sim;
