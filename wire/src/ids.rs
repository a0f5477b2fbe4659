//! Identities and values that travel in lock messages.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::WireError;

/// A member of the cluster: its address plus the start stamp of its process.
///
/// The derived order compares `epoch` first, then `addr`, so sorting members
/// puts the oldest first: a restarted process has a larger epoch and is a
/// new, younger member, and cannot take over coordinatorship by restarting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Start stamp of the process (microseconds since the Unix epoch in the
    /// real node, simulated time in the simulator). Never 0 for a real member.
    pub epoch: u64,
    /// The address the member advertises for its UDP port.
    pub addr: SocketAddr,
}

/// FNV-1a (64 bit) over member ids in view order: equal on every node that
/// has the same members, whatever its local view numbers.
///
/// Per member it hashes the epoch (8 bytes little endian), an address
/// family byte (4 or 6), the IP octets and the port (2 bytes little
/// endian).
pub fn view_digest<'a>(members: impl IntoIterator<Item = &'a NodeId>) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut write = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for id in members {
        write(&id.epoch.to_le_bytes());
        match id.addr {
            SocketAddr::V4(a) => {
                write(&[4]);
                write(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                write(&[6]);
                write(&a.ip().octets());
            }
        }
        write(&id.addr.port().to_le_bytes());
    }
    h
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.epoch)
    }
}

/// One client of a node: a connection, session or thread of the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

/// Who holds or waits for a lock: a client of a node. Two clients of one
/// node exclude each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The node the client is attached to.
    pub node: NodeId,
    /// The client on that node.
    pub client: ClientId,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.client.0)
    }
}

/// Identifies one request of a node. Ids grow by one per request for the
/// life of the node's process and are never reused by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReqId(pub u64);

/// A fencing token, or a waiting ticket in the same format.
///
/// One totally ordered `u64`, laid out as `0:1 | term:23 | tag:16 | seq:24`.
/// The top bit is always 0, so a token also fits a signed 64-bit integer
/// (RESP integers, Java's `long`) with the same order:
/// - `term` is the coordinator term; every new coordinator takes a term
///   above every term it learned in reconciliation, so tokens keep growing
///   across failovers and merges;
/// - `tag` is the granting coordinator's node tag (unique per member), so
///   two coordinators of a split brain that happen to pick the same term
///   still issue different tokens;
/// - `seq` counts grants within the term.
///
/// A fenced resource needs only to compare tokens as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Token(pub u64);

impl Token {
    /// Bits of the sequence part.
    pub const SEQ_BITS: u32 = 24;
    /// Bits of the tag part.
    pub const TAG_BITS: u32 = 16;
    /// Bits of the term part.
    pub const TERM_BITS: u32 = 23;
    /// Largest term a token can carry.
    pub const MAX_TERM: u32 = (1 << Self::TERM_BITS) - 1;
    /// Largest sequence number within one term.
    pub const MAX_SEQ: u32 = (1 << Self::SEQ_BITS) - 1;

    /// Builds a token from its parts; `term` and `seq` are masked to their widths.
    pub fn new(term: u32, tag: u16, seq: u32) -> Token {
        let term = u64::from(term & Self::MAX_TERM);
        let seq = u64::from(seq & Self::MAX_SEQ);
        Token(term << (Self::SEQ_BITS + Self::TAG_BITS) | u64::from(tag) << Self::SEQ_BITS | seq)
    }

    /// The coordinator term that issued this token.
    pub fn term(self) -> u32 {
        (self.0 >> (Self::SEQ_BITS + Self::TAG_BITS)) as u32
    }

    /// The tag of the coordinator that issued this token.
    pub fn tag(self) -> u16 {
        (self.0 >> Self::SEQ_BITS) as u16
    }

    /// The sequence number within the term.
    pub fn seq(self) -> u32 {
        (self.0 as u32) & Self::MAX_SEQ
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The name of a lock: 1 to [`LockName::MAX_LEN`] bytes of UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LockName(String);

impl LockName {
    /// Longest accepted name, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Checks the length and wraps the name.
    pub fn new(name: impl Into<String>) -> Result<LockName, WireError> {
        let name = name.into();
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(WireError::BadLockName { len: name.len() });
        }
        Ok(LockName(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LockName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LockName::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parts_round_trip_and_order_by_term_first() {
        let t = Token::new(7, 0xBEEF, 12345);
        assert_eq!((t.term(), t.tag(), t.seq()), (7, 0xBEEF, 12345));
        assert!(Token::new(8, 0, 0) > Token::new(7, u16::MAX, Token::MAX_SEQ));
        assert!(Token::new(7, 2, 0) > Token::new(7, 1, Token::MAX_SEQ));
    }

    #[test]
    fn the_largest_token_fits_an_i64() {
        let max = Token::new(Token::MAX_TERM, u16::MAX, Token::MAX_SEQ);
        assert!(i64::try_from(max.0).is_ok());
        assert_eq!(max.term(), Token::MAX_TERM);
    }

    #[test]
    fn node_ids_sort_oldest_first_then_by_address() {
        let a: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let old = NodeId { epoch: 5, addr: a };
        let young = NodeId { epoch: 9, addr: b };
        let tie = NodeId { epoch: 5, addr: b };
        let mut v = vec![young, old, tie];
        v.sort();
        assert_eq!(v, vec![tie, old, young]);
    }

    #[test]
    fn lock_names_are_bounded() {
        assert!(LockName::new("").is_err());
        assert!(LockName::new("x".repeat(256)).is_err());
        assert_eq!(LockName::new("db/orders").unwrap().as_str(), "db/orders");
    }
}
