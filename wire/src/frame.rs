//! The datagram frame: a fixed header, then a body that depends on the kind.
//!
//! ```text
//! 0      4         5      6            14
//! +------+---------+------+------------+---------------
//! | SWLK | version | kind | cluster id | body ...
//! +------+---------+------+------------+---------------
//! ```
//! The cluster id is little-endian. A gossip body is the membership layer's
//! own bytes; a lock body is a postcard-encoded [`LockFrame`].

use crate::WireError;
use crate::lock::LockFrame;

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SWLK";
/// Protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 14;
/// Largest datagram accepted or produced (fits a UDP payload over IPv4).
pub const MAX_DATAGRAM: usize = 65_000;
/// Datagram size that senders aim for when batching, so frames fit a
/// typical LAN MTU without IP fragmentation.
pub const TARGET_DATAGRAM: usize = 1_400;

/// What a frame's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Membership gossip.
    Gossip = 1,
    /// Lock protocol.
    Lock = 2,
}

impl Kind {
    fn from_byte(b: u8) -> Result<Kind, WireError> {
        match b {
            1 => Ok(Kind::Gossip),
            2 => Ok(Kind::Lock),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// Identifies a cluster on the wire: a 64-bit FNV-1a hash of its name.
/// Frames of another cluster are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// The id of the cluster with this name (stable across builds and hosts).
    pub fn from_name(name: &str) -> ClusterId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        ClusterId(h)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the body holds.
    pub kind: Kind,
    /// The sender's cluster.
    pub cluster: ClusterId,
}

/// Writes a header for `kind` into `out` (which is cleared first).
pub fn write_header(out: &mut Vec<u8>, kind: Kind, cluster: ClusterId) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&cluster.0.to_le_bytes());
}

/// Checks the header of `datagram` against this node's cluster and returns
/// it with the body.
pub fn split_frame(datagram: &[u8], cluster: ClusterId) -> Result<(Header, &[u8]), WireError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge { len: datagram.len() });
    }
    if datagram.len() < HEADER_LEN {
        return Err(WireError::Truncated { len: datagram.len() });
    }
    if datagram[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if datagram[4] != VERSION {
        return Err(WireError::UnsupportedVersion(datagram[4]));
    }
    let kind = Kind::from_byte(datagram[5])?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&datagram[6..14]);
    let got = ClusterId(u64::from_le_bytes(id));
    if got != cluster {
        return Err(WireError::ForeignCluster);
    }
    Ok((Header { kind, cluster: got }, &datagram[HEADER_LEN..]))
}

/// Encodes a whole lock datagram.
pub fn encode_lock(frame: &LockFrame, cluster: ClusterId) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(TARGET_DATAGRAM);
    write_header(&mut out, Kind::Lock, cluster);
    let out = postcard::to_extend(frame, out).map_err(|_| WireError::Encode)?;
    if out.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge { len: out.len() });
    }
    Ok(out)
}

/// Decodes the body of a lock frame (after [`split_frame`]).
///
/// The body is bounded by [`MAX_DATAGRAM`], and every element of every
/// sequence in it takes at least one byte, so decoding allocates at most a
/// small multiple of the input size.
pub fn decode_lock(body: &[u8]) -> Result<LockFrame, WireError> {
    let (frame, rest) = postcard::take_from_bytes::<LockFrame>(body).map_err(|_| WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    // A term no token can carry would wrap a coordinator's tokens around;
    // a reconciliation answer larger than stated would make it hold more.
    frame.validate()?;
    Ok(frame)
}

/// Encodes a gossip datagram around the membership layer's bytes.
pub fn encode_gossip(payload: &[u8], cluster: ClusterId) -> Result<Vec<u8>, WireError> {
    let len = HEADER_LEN + payload.len();
    if len > MAX_DATAGRAM {
        return Err(WireError::TooLarge { len });
    }
    let mut out = Vec::with_capacity(len);
    write_header(&mut out, Kind::Gossip, cluster);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Size of `frame` once encoded, header included.
pub fn lock_frame_len(frame: &LockFrame) -> usize {
    HEADER_LEN + postcard::experimental::serialized_size(frame).unwrap_or(usize::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockInfoReq, LockMsg};
    use crate::{NodeId, Token};

    fn frame_with_term(term: u32) -> Vec<u8> {
        let node = NodeId { epoch: 1, addr: "127.0.0.1:1".parse().unwrap() };
        let msgs = vec![LockMsg::LockInfoReq(LockInfoReq { term, have: Vec::new(), linger_ms: 0 })];
        let frame = LockFrame { from: node, to: node, msgs };
        encode_lock(&frame, ClusterId(7)).unwrap()
    }

    #[test]
    fn a_term_no_token_can_carry_is_malformed() {
        let ok = frame_with_term(Token::MAX_TERM);
        let (_, body) = split_frame(&ok, ClusterId(7)).unwrap();
        assert!(decode_lock(body).is_ok());
        let bad = frame_with_term(Token::MAX_TERM + 1);
        let (_, body) = split_frame(&bad, ClusterId(7)).unwrap();
        assert_eq!(decode_lock(body), Err(WireError::Malformed));
    }
}
