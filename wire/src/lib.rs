//! The swimlock wire format: every message and frame, their encoding with
//! postcard (between members) and RESP (the client endpoint), size limits
//! and a typed [`WireError`]. No I/O happens here.
//!
//! Decoding never panics and never allocates without bound: a datagram
//! that is malformed, truncated, oversized or from another cluster yields an
//! error, which the caller counts and drops.
//!
//! The wire crate lays out bytes only: sealing and opening datagrams
//! (XChaCha20-Poly1305) happen in the node, `swimlock::node::seal`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod client;
pub mod commands;
pub mod frame;
pub mod ids;
pub mod lock;
pub mod resp;

pub use frame::{ClusterId, Envelope, Header, Kind, MAX_DATAGRAM, Suite};
pub use ids::{ClientId, LockName, NodeId, Owner, ReqId, Token, view_digest};

use std::fmt;

/// Why a datagram or value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the fixed header.
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Longer than [`MAX_DATAGRAM`].
    TooLarge {
        /// Bytes received or produced.
        len: usize,
    },
    /// Does not start with the swimlock magic.
    BadMagic,
    /// A protocol version this build does not speak.
    UnsupportedVersion(u8),
    /// A frame kind this build does not know.
    UnknownKind(u8),
    /// A frame of another cluster.
    ForeignCluster,
    /// The body does not decode as the kind says.
    Malformed,
    /// Bytes left over after the body.
    TrailingBytes(usize),
    /// A lock name that is empty or too long.
    BadLockName {
        /// Its length in bytes.
        len: usize,
    },
    /// A value could not be encoded.
    Encode,
    /// A protection suite this build does not know.
    UnknownSuite(u8),
    /// An envelope address of an unknown family or not in canonical form.
    BadAddress,
    /// A sealed frame where a plain one was expected (it must be opened).
    Sealed,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { len } => write!(f, "truncated frame ({len} bytes)"),
            WireError::TooLarge { len } => write!(f, "frame too large ({len} bytes, limit {MAX_DATAGRAM})"),
            WireError::BadMagic => f.write_str("not a swimlock frame (bad magic)"),
            WireError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            WireError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            WireError::ForeignCluster => f.write_str("frame of another cluster"),
            WireError::Malformed => f.write_str("malformed frame body"),
            WireError::TrailingBytes(n) => write!(f, "{n} trailing bytes after the frame body"),
            WireError::BadLockName { len } => {
                write!(f, "lock name must be 1 to {} bytes, got {len}", LockName::MAX_LEN)
            }
            WireError::Encode => f.write_str("value could not be encoded"),
            WireError::UnknownSuite(s) => write!(f, "unknown protection suite {s}"),
            WireError::BadAddress => f.write_str("bad sender address in the envelope"),
            WireError::Sealed => f.write_str("sealed frame (open it first)"),
        }
    }
}

impl std::error::Error for WireError {}
