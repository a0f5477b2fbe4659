//! The datagram: a fixed envelope in clear, then the kind and the body,
//! sealed (encrypted and authenticated) or, in insecure mode, plain.
//!
//! ```text
//! offset len  field
//!  0      4   magic "SWLK"
//!  4      1   version (2)
//!  5      1   suite: 1 = XChaCha20-Poly1305 sealed, 0 = plain (insecure mode)
//!  6      8   cluster id (u64 LE, FNV-1a of the cluster name)
//! 14      4   key id (u32 LE; 0 when plain)
//! 18      8   sender epoch (u64 LE)
//! 26     19   sender address: family (4 or 6), 16 address bytes (IPv4 in
//!             the first 4, the rest 0), port (u16 LE)
//! 45      8   destination epoch (u64 LE; 0 only for gossip to a seed
//!             placeholder)
//! 53     24   nonce: 16-byte per-process salt || u64 LE per-process
//!             counter (all 0 when plain)
//! 77      1   kind (1 gossip, 2 lock, 3 admin)   \ encrypted when sealed
//! 78      n   body                               /
//! 78+n   16   Poly1305 tag (sealed only)
//! ```
//! A gossip body is the membership layer's own bytes; a lock body is a
//! postcard-encoded [`LockFrame`]; an admin body a postcard [`AdminMsg`].
//! Sealing and opening live in the node (`swimlock::node::seal`); this
//! module only lays out the bytes, and its `encode_*`/[`split_frame`]
//! functions build and read plain frames.
//!
//! [`AdminMsg`]: crate::admin::AdminMsg

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::WireError;
use crate::ids::NodeId;
use crate::lock::LockFrame;

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SWLK";
/// Protocol version this build speaks.
pub const VERSION: u8 = 2;
/// Length of the envelope sent in clear.
pub const ENVELOPE_LEN: usize = 77;
/// Length of the envelope and the kind byte: where a plain frame's body
/// starts.
pub const HEADER_LEN: usize = ENVELOPE_LEN + 1;
/// Length of the authentication tag that ends a sealed datagram.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to its body: envelope, kind and tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Length of the nonce (XChaCha20's 192 bits).
pub const NONCE_LEN: usize = 24;
/// Length of the per-process salt at the start of the nonce.
pub const SALT_LEN: usize = 16;
/// Length of an encoded address.
pub const ADDR_LEN: usize = 19;
/// Largest datagram accepted or produced (fits a UDP payload over IPv4).
pub const MAX_DATAGRAM: usize = 65_000;
/// Datagram size that senders aim for when batching, so frames fit a
/// typical LAN MTU without IP fragmentation.
pub const TARGET_DATAGRAM: usize = 1_400;

/// Offset of the key id in the envelope.
const KEY_ID_AT: usize = 14;

/// How the part after the envelope is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Suite {
    /// In clear, unauthenticated: insecure mode only.
    Plain = 0,
    /// XChaCha20-Poly1305 under the key the key id names.
    Sealed = 1,
}

/// What a frame's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Membership gossip.
    Gossip = 1,
    /// Lock protocol.
    Lock = 2,
    /// Administration between members (keyring changes).
    Admin = 3,
}

impl Kind {
    /// The kind a byte stands for.
    pub fn from_byte(b: u8) -> Result<Kind, WireError> {
        match b {
            1 => Ok(Kind::Gossip),
            2 => Ok(Kind::Lock),
            3 => Ok(Kind::Admin),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// Identifies a cluster on the wire: a 64-bit FNV-1a hash of its name.
/// Frames of another cluster are dropped. (Sealed frames also bind the full
/// name, so two names with one hash still do not mix.)
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

/// The clear part of a datagram. Every byte of it is authenticated (as
/// associated data) when the datagram is sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Plain or sealed.
    pub suite: Suite,
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The key the datagram is sealed with (0 when plain).
    pub key_id: u32,
    /// The sender's identity.
    pub from: NodeId,
    /// The epoch of the receiver's identity (0 for gossip to a seed
    /// placeholder, whose epoch the sender does not know yet).
    pub to_epoch: u64,
    /// Salt and counter (all 0 when plain).
    pub nonce: [u8; NONCE_LEN],
}

impl Envelope {
    /// Appends the [`ENVELOPE_LEN`] bytes of the envelope to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.suite as u8);
        out.extend_from_slice(&self.cluster.0.to_le_bytes());
        out.extend_from_slice(&self.key_id.to_le_bytes());
        out.extend_from_slice(&self.from.epoch.to_le_bytes());
        out.extend_from_slice(&encode_addr(self.from.addr));
        out.extend_from_slice(&self.to_epoch.to_le_bytes());
        out.extend_from_slice(&self.nonce);
    }

    /// Reads the envelope at the start of `datagram`, checked against this
    /// node's cluster, and returns it with the rest of the datagram.
    pub fn read(datagram: &[u8], cluster: ClusterId) -> Result<(Envelope, &[u8]), WireError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(WireError::TooLarge { len: datagram.len() });
        }
        let Some((head, rest)) = datagram.split_first_chunk::<ENVELOPE_LEN>() else {
            return Err(WireError::Truncated { len: datagram.len() });
        };
        if head[..4] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if head[4] != VERSION {
            return Err(WireError::UnsupportedVersion(head[4]));
        }
        let suite = match head[5] {
            0 => Suite::Plain,
            1 => Suite::Sealed,
            other => return Err(WireError::UnknownSuite(other)),
        };
        let got = ClusterId(u64_at(head, 6));
        if got != cluster {
            return Err(WireError::ForeignCluster);
        }
        let key_id = u32::from_le_bytes([head[14], head[15], head[16], head[17]]);
        let mut addr = [0u8; ADDR_LEN];
        addr.copy_from_slice(&head[26..45]);
        let from = NodeId { epoch: u64_at(head, 18), addr: decode_addr(&addr)? };
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&head[53..77]);
        let envelope = Envelope { suite, cluster: got, key_id, from, to_epoch: u64_at(head, 45), nonce };
        Ok((envelope, rest))
    }

    /// The key id of a datagram, read without checking anything else (for
    /// counting datagrams sealed under an unknown key).
    pub fn peek_key_id(datagram: &[u8]) -> Option<u32> {
        let b = datagram.get(KEY_ID_AT..KEY_ID_AT + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// An address in its fixed [`ADDR_LEN`]-byte form. An IPv6 scope id and
/// flow label do not travel (as in the postcard encoding of a `NodeId`).
pub fn encode_addr(addr: SocketAddr) -> [u8; ADDR_LEN] {
    let mut out = [0u8; ADDR_LEN];
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&ip.octets());
        }
    }
    out[17..19].copy_from_slice(&addr.port().to_le_bytes());
    out
}

/// Reads the form [`encode_addr`] writes; only its canonical form (IPv4
/// padding all 0) is accepted.
pub fn decode_addr(bytes: &[u8; ADDR_LEN]) -> Result<SocketAddr, WireError> {
    let port = u16::from_le_bytes([bytes[17], bytes[18]]);
    let ip = match bytes[0] {
        4 if bytes[5..17].iter().all(|&b| b == 0) => {
            IpAddr::V4(Ipv4Addr::new(bytes[1], bytes[2], bytes[3], bytes[4]))
        }
        6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[1..17]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Err(WireError::BadAddress),
    };
    Ok(SocketAddr::new(ip, port))
}

/// A decoded plain frame: its envelope and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the body holds.
    pub kind: Kind,
    /// The envelope.
    pub envelope: Envelope,
}

/// Checks the envelope and kind of a plain (insecure-mode) `datagram`
/// against this node's cluster and returns them with the body. A sealed
/// datagram is refused with [`WireError::Sealed`]: it must be opened first.
pub fn split_frame(datagram: &[u8], cluster: ClusterId) -> Result<(Header, &[u8]), WireError> {
    let (envelope, rest) = Envelope::read(datagram, cluster)?;
    if envelope.suite != Suite::Plain {
        return Err(WireError::Sealed);
    }
    let (kind, body) = split_payload(rest)?;
    Ok((Header { kind, envelope }, body))
}

/// Splits the part after the envelope (opened, or plain) into kind and body.
pub fn split_payload(payload: &[u8]) -> Result<(Kind, &[u8]), WireError> {
    match payload.split_first() {
        Some((&kind, body)) => Ok((Kind::from_byte(kind)?, body)),
        None => Err(WireError::Truncated { len: ENVELOPE_LEN }),
    }
}

/// The envelope of a plain frame from `from` to `to`.
pub fn plain_envelope(cluster: ClusterId, from: NodeId, to_epoch: u64) -> Envelope {
    Envelope { suite: Suite::Plain, cluster, key_id: 0, from, to_epoch, nonce: [0; NONCE_LEN] }
}

/// Appends a postcard-encoded lock frame to `out`.
pub fn write_lock_body(frame: &LockFrame, out: &mut Vec<u8>) -> Result<(), WireError> {
    let taken = std::mem::take(out);
    *out = postcard::to_extend(frame, taken).map_err(|_| WireError::Encode)?;
    Ok(())
}

/// Encodes a whole plain lock datagram (insecure mode), sender and
/// destination taken from the frame.
pub fn encode_lock(frame: &LockFrame, cluster: ClusterId) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(TARGET_DATAGRAM);
    plain_envelope(cluster, frame.from, frame.to.epoch).write(&mut out);
    out.push(Kind::Lock as u8);
    write_lock_body(frame, &mut out)?;
    if out.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge { len: out.len() });
    }
    Ok(out)
}

/// Decodes the body of a lock frame (after [`split_frame`] or opening).
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

/// Encodes a plain gossip datagram (insecure mode) around the membership
/// layer's bytes.
pub fn encode_gossip(
    from: NodeId,
    to_epoch: u64,
    payload: &[u8],
    cluster: ClusterId,
) -> Result<Vec<u8>, WireError> {
    let len = HEADER_LEN + payload.len();
    if len > MAX_DATAGRAM {
        return Err(WireError::TooLarge { len });
    }
    let mut out = Vec::with_capacity(len);
    plain_envelope(cluster, from, to_epoch).write(&mut out);
    out.push(Kind::Gossip as u8);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Size of `frame` once sealed: envelope, kind, body and tag.
pub fn lock_frame_len(frame: &LockFrame) -> usize {
    OVERHEAD + postcard::experimental::serialized_size(frame).unwrap_or(usize::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockInfoReq, LockMsg};
    use crate::{NodeId, Token};

    fn node() -> NodeId {
        NodeId { epoch: 1, addr: "127.0.0.1:1".parse().unwrap() }
    }

    fn frame_with_term(term: u32) -> Vec<u8> {
        let msgs =
            vec![LockMsg::LockInfoReq(LockInfoReq { term, have: Vec::new(), linger_ms: 0, vouch_of: None })];
        let frame = LockFrame { from: node(), to: node(), msgs };
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

    #[test]
    fn the_envelope_round_trips_with_both_address_families() {
        for addr in ["10.1.2.3:7946", "[2001:db8::7]:65535"] {
            let from = NodeId { epoch: u64::MAX - 3, addr: addr.parse().unwrap() };
            let env = Envelope {
                suite: Suite::Sealed,
                cluster: ClusterId(9),
                key_id: 0xDEAD_BEEF,
                from,
                to_epoch: 42,
                nonce: std::array::from_fn(|i| i as u8),
            };
            let mut out = Vec::new();
            env.write(&mut out);
            assert_eq!(out.len(), ENVELOPE_LEN);
            assert_eq!(Envelope::peek_key_id(&out), Some(0xDEAD_BEEF));
            out.push(9);
            let (back, rest) = Envelope::read(&out, ClusterId(9)).unwrap();
            assert_eq!((back, rest), (env, &[9u8][..]));
            assert_eq!(Envelope::read(&out, ClusterId(8)), Err(WireError::ForeignCluster));
        }
    }

    #[test]
    fn bad_envelopes_get_their_own_error() {
        let mut out = Vec::new();
        plain_envelope(ClusterId(1), node(), 2).write(&mut out);
        let mut suite = out.clone();
        suite[5] = 7;
        assert_eq!(Envelope::read(&suite, ClusterId(1)), Err(WireError::UnknownSuite(7)));
        let mut family = out.clone();
        family[26] = 5;
        assert_eq!(Envelope::read(&family, ClusterId(1)), Err(WireError::BadAddress));
        let mut padding = out.clone();
        padding[26 + 10] = 1;
        assert_eq!(Envelope::read(&padding, ClusterId(1)), Err(WireError::BadAddress));
        assert_eq!(
            Envelope::read(&out[..ENVELOPE_LEN - 1], ClusterId(1)),
            Err(WireError::Truncated { len: ENVELOPE_LEN - 1 })
        );
        assert_eq!(split_frame(&out, ClusterId(1)), Err(WireError::Truncated { len: ENVELOPE_LEN }));
        let mut sealed = out.clone();
        sealed[5] = Suite::Sealed as u8;
        sealed.push(Kind::Lock as u8);
        assert_eq!(split_frame(&sealed, ClusterId(1)), Err(WireError::Sealed));
    }
}
