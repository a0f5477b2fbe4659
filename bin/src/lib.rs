//! swimlock: a distributed lock node.
//!
//! - [`node`]: the sans-I/O core, membership and lock composed behind one
//!   calling convention.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod node;
