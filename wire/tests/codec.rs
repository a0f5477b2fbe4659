//! Codec properties of the lock datagram (issue #2): every message round-trips
//! through `encode_lock` → `split_frame` → `decode_lock` exactly, and every
//! hostile datagram is refused with a typed [`WireError`], never a panic or
//! an unbounded allocation (DESIGN "Wire protocol").

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::collection::vec;
use proptest::prelude::*;
use swimlock_wire::frame::{
    ENVELOPE_LEN, HEADER_LEN, MAGIC, VERSION, decode_lock, encode_lock, plain_envelope, split_frame,
};
use swimlock_wire::lock::{
    CancelReq, Denial, DuplicateLock, HeldLock, Hello, HelloAck, LockFrame, LockInfoReq, LockInfoRsp,
    LockMsg, LockOutcome, LockReq, LockRsp, MAX_PARTS, Redirect, Renew, RenewAck, UnlockReq, UnlockRsp,
    Vouch, VouchSeen, Wait,
};
use swimlock_wire::{ClientId, ClusterId, Kind, LockName, MAX_DATAGRAM, NodeId, ReqId, Token, WireError};

fn cluster() -> ClusterId {
    ClusterId::from_name("codec-test")
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        // flowinfo and scope id are 0: serde's `SocketAddrV6` encoding
        // carries only ip and port (see `a_v6_scope_id_does_not_travel`).
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

fn node_id() -> impl Strategy<Value = NodeId> {
    (any::<u64>(), addr()).prop_map(|(epoch, addr)| NodeId { epoch, addr })
}

/// Names of 1..=255 bytes: ASCII, arbitrary unicode, and exactly 255 bytes.
fn lock_name() -> impl Strategy<Value = LockName> {
    let unicode = vec(any::<char>(), 1..64).prop_map(|cs| {
        let mut s = String::new();
        for c in cs {
            if s.len() + c.len_utf8() > LockName::MAX_LEN {
                break;
            }
            s.push(c);
        }
        s
    });
    prop_oneof![
        "[a-z0-9/._-]{1,40}",
        unicode,
        Just("x".repeat(LockName::MAX_LEN)),
        Just("é".repeat(LockName::MAX_LEN / 2)),
    ]
    .prop_map(|s| LockName::new(s).expect("1..=255 bytes"))
}

fn token() -> impl Strategy<Value = Token> {
    any::<u64>().prop_map(Token)
}

fn req_id() -> impl Strategy<Value = ReqId> {
    any::<u64>().prop_map(ReqId)
}

fn client_id() -> impl Strategy<Value = ClientId> {
    any::<u64>().prop_map(ClientId)
}

fn wait() -> impl Strategy<Value = Wait> {
    prop_oneof![Just(Wait::No), Just(Wait::Queue)]
}

fn lock_req() -> impl Strategy<Value = LockReq> {
    (
        (req_id(), any::<u64>(), client_id(), lock_name()),
        (wait(), proptest::option::of(token()), req_id(), any::<u64>()),
    )
        .prop_map(|((id, sync, client, name), (wait, ticket, floor, stamp))| LockReq {
            id,
            sync,
            client,
            name,
            wait,
            ticket,
            floor,
            stamp,
        })
}

fn outcome() -> impl Strategy<Value = LockOutcome> {
    prop_oneof![
        token().prop_map(LockOutcome::Granted),
        token().prop_map(LockOutcome::Queued),
        prop_oneof![Just(Denial::Held), Just(Denial::NoQuorum), Just(Denial::Cancelled)]
            .prop_map(LockOutcome::Denied),
    ]
}

fn held_lock() -> impl Strategy<Value = HeldLock> {
    (client_id(), lock_name(), token(), req_id()).prop_map(|(client, name, token, req)| HeldLock {
        client,
        name,
        token,
        req,
    })
}

fn duplicate() -> impl Strategy<Value = DuplicateLock> {
    (term(), client_id(), lock_name(), token(), req_id())
        .prop_map(|(term, client, name, token, req)| DuplicateLock { term, client, name, token, req })
}

fn vouch_seen() -> impl Strategy<Value = VouchSeen> {
    (node_id(), any::<u64>(), any::<u64>()).prop_map(|(coordinator, view, at)| VouchSeen {
        coordinator,
        view,
        at,
    })
}

fn lock_msg() -> impl Strategy<Value = LockMsg> {
    prop_oneof![
        lock_req().prop_map(LockMsg::Lock),
        (req_id(), any::<u64>(), client_id(), lock_name(), token()).prop_map(
            |(id, sync, client, name, token)| LockMsg::Unlock(UnlockReq { id, sync, client, name, token })
        ),
        (req_id(), any::<u64>(), client_id(), lock_name(), req_id()).prop_map(
            |(id, sync, client, name, target)| LockMsg::Cancel(CancelReq { id, sync, client, name, target })
        ),
        (req_id(), term(), outcome(), any::<u64>())
            .prop_map(|(id, term, outcome, stamp)| LockMsg::LockRsp(LockRsp { id, term, outcome, stamp })),
        (req_id(), term()).prop_map(|(id, term)| LockMsg::UnlockRsp(UnlockRsp { id, term })),
        (req_id(), proptest::option::of(node_id()))
            .prop_map(|(id, coordinator)| LockMsg::Redirect(Redirect { id, coordinator })),
        (term(), vec(any::<u16>(), 0..8), any::<u32>(), proptest::option::of(node_id())).prop_map(
            |(term, have, linger_ms, vouch_of)| LockMsg::LockInfoReq(LockInfoReq {
                term,
                have,
                linger_ms,
                vouch_of
            })
        ),
        (
            (term(), (1..=MAX_PARTS).prop_flat_map(|parts| (0..parts, Just(parts))), req_id(), term()),
            (any::<u64>(), any::<u64>(), proptest::option::of(vouch_seen()), any::<u32>()),
            vec(held_lock(), 0..4),
            vec(lock_req(), 0..4),
        )
            .prop_map(
                |(
                    (term, (part, parts), next_req, max_term),
                    (sync, stamp, vouch, unreported_ms),
                    held,
                    pending,
                )| {
                    LockMsg::LockInfoRsp(LockInfoRsp {
                        term,
                        part,
                        parts,
                        next_req,
                        max_term,
                        sync,
                        stamp,
                        held,
                        pending,
                        vouch,
                        unreported_ms,
                    })
                }
            ),
        duplicate().prop_map(LockMsg::DuplicateLock),
        duplicate().prop_map(LockMsg::DuplicateAck),
        any::<u64>().prop_map(|sync| LockMsg::Hello(Hello { sync })),
        term().prop_map(|term| LockMsg::HelloAck(HelloAck { term })),
        (any::<u64>(), any::<u64>()).prop_map(|(stamp, sync)| LockMsg::Renew(Renew { stamp, sync })),
        (any::<u64>(), term()).prop_map(|(stamp, term)| LockMsg::RenewAck(RenewAck { stamp, term })),
        (any::<u64>(), any::<u64>()).prop_map(|(stamp, view)| LockMsg::Vouch(Vouch { stamp, view })),
        (any::<u64>(), any::<u64>()).prop_map(|(stamp, view)| LockMsg::Vouched(Vouch { stamp, view })),
    ]
}

fn lock_frame() -> impl Strategy<Value = LockFrame> {
    (node_id(), node_id(), vec(lock_msg(), 0..6)).prop_map(|(from, to, msgs)| LockFrame { from, to, msgs })
}

fn decode(datagram: &[u8]) -> Result<LockFrame, WireError> {
    let (header, body) = split_frame(datagram, cluster())?;
    assert_eq!(header.kind, Kind::Lock);
    decode_lock(body)
}

/// The error a datagram is refused with, or `None` if it decodes.
fn refusal(datagram: &[u8]) -> Option<WireError> {
    match split_frame(datagram, cluster()) {
        Err(e) => Some(e),
        Ok((h, body)) if h.kind == Kind::Lock => decode_lock(body).err(),
        Ok(_) => None,
    }
}

/// A coordinator term: what a token can carry (larger ones are malformed).
fn term() -> impl Strategy<Value = u32> {
    0..=Token::MAX_TERM
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_lock_message_round_trips_exactly(frame in lock_frame()) {
        let bytes = encode_lock(&frame, cluster()).expect("bounded frames encode");
        prop_assert!(bytes.len() <= MAX_DATAGRAM);
        prop_assert_eq!(decode(&bytes).expect("own encoding decodes"), frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = refusal(&bytes);
        // Behind a valid header the body is still arbitrary.
        let mut framed = Vec::new();
        plain_envelope(cluster(), sample_node(), 7).write(&mut framed);
        framed.push(Kind::Lock as u8);
        framed.extend_from_slice(&bytes);
        let _ = refusal(&framed);
    }

    #[test]
    fn single_byte_mutations_never_panic(frame in lock_frame(), at in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut bytes = encode_lock(&frame, cluster()).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = b;
        // A mutated frame may still decode (to another valid frame); if it
        // is refused, the error is typed.
        let _ = refusal(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every strict prefix of a valid lock datagram is refused: without its
    /// kind byte → `Truncated`, otherwise the body is cut → `Malformed`.
    #[test]
    fn every_truncation_is_refused(frame in lock_frame()) {
        let bytes = encode_lock(&frame, cluster()).unwrap();
        for len in 0..bytes.len() {
            let got = refusal(&bytes[..len]);
            if len < ENVELOPE_LEN {
                prop_assert_eq!(got, Some(WireError::Truncated { len }));
            } else if len < HEADER_LEN {
                prop_assert_eq!(got, Some(WireError::Truncated { len: ENVELOPE_LEN }));
            } else {
                prop_assert_eq!(got, Some(WireError::Malformed), "prefix of {} bytes", len);
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused(frame in lock_frame(), extra in vec(any::<u8>(), 1..32)) {
        let mut bytes = encode_lock(&frame, cluster()).unwrap();
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(refusal(&bytes), Some(WireError::TrailingBytes(extra.len())));
    }

    #[test]
    fn header_faults_get_their_own_error(frame in lock_frame(), m in 0usize..4, bad in any::<u8>()) {
        let good = encode_lock(&frame, cluster()).unwrap();

        let mut magic = good.clone();
        magic[m] = if bad == MAGIC[m] { bad.wrapping_add(1) } else { bad };
        prop_assert_eq!(refusal(&magic), Some(WireError::BadMagic));

        let mut version = good.clone();
        let v = if bad == VERSION { bad.wrapping_add(1) } else { bad };
        version[4] = v;
        prop_assert_eq!(refusal(&version), Some(WireError::UnsupportedVersion(v)));

        let mut kind = good.clone();
        let k = if (1..=3).contains(&bad) { 0 } else { bad };
        kind[ENVELOPE_LEN] = k;
        prop_assert_eq!(refusal(&kind), Some(WireError::UnknownKind(k)));

        let foreign = encode_lock(&frame, ClusterId::from_name("another")).unwrap();
        prop_assert_eq!(refusal(&foreign), Some(WireError::ForeignCluster));
    }
}

#[test]
fn oversized_datagrams_are_refused_before_anything_else() {
    let frame = LockFrame { from: sample_node(), to: sample_node(), msgs: Vec::new() };
    let mut bytes = encode_lock(&frame, cluster()).unwrap();
    let valid = bytes.len();
    bytes.resize(MAX_DATAGRAM + 1, 0);
    assert_eq!(refusal(&bytes), Some(WireError::TooLarge { len: MAX_DATAGRAM + 1 }));
    assert_eq!(refusal(&vec![0u8; MAX_DATAGRAM + 1]), Some(WireError::TooLarge { len: MAX_DATAGRAM + 1 }));
    // Exactly at the limit the size is accepted and the body judged.
    bytes.truncate(MAX_DATAGRAM);
    assert_eq!(refusal(&bytes), Some(WireError::TrailingBytes(MAX_DATAGRAM - valid)));
}

#[test]
fn an_encoder_refuses_a_frame_above_the_limit() {
    let name = LockName::new("n".repeat(LockName::MAX_LEN)).unwrap();
    let dup = DuplicateLock { term: 1, client: ClientId(1), name, token: Token(1), req: ReqId(1) };
    let msgs = vec![LockMsg::DuplicateLock(dup); MAX_DATAGRAM / 200];
    let frame = LockFrame { from: sample_node(), to: sample_node(), msgs };
    assert!(matches!(encode_lock(&frame, cluster()), Err(WireError::TooLarge { len }) if len > MAX_DATAGRAM));
}

/// A `msgs` length varint of 2^60 must not make the decoder reserve memory
/// for 2^60 messages: postcard checks the remaining input, so it fails fast
/// (the test finishing at all, without an allocation failure, is the check).
#[test]
fn a_length_prefix_bomb_is_malformed_without_allocating() {
    let empty = LockFrame { from: sample_node(), to: sample_node(), msgs: Vec::new() };
    let mut bytes = encode_lock(&empty, cluster()).unwrap();
    assert_eq!(bytes.pop(), Some(0), "the empty Vec's length is the last byte");
    bytes.extend_from_slice(&varint(1 << 60));
    bytes.extend_from_slice(&[0u8; 64]);
    assert_eq!(refusal(&bytes), Some(WireError::Malformed));

    // The same bomb inside a LockInfoRsp's `held` list.
    let rsp = LockInfoRsp {
        term: 1,
        part: 0,
        parts: 1,
        next_req: ReqId(1),
        max_term: 1,
        sync: 1,
        stamp: 1,
        held: Vec::new(),
        pending: Vec::new(),
        vouch: None,
        unreported_ms: 0,
    };
    let one = LockFrame { from: sample_node(), to: sample_node(), msgs: vec![LockMsg::LockInfoRsp(rsp)] };
    let mut bytes = encode_lock(&one, cluster()).unwrap();
    assert_eq!(bytes.split_off(bytes.len() - 4), vec![0, 0, 0, 0], "held, pending, vouch, unreported: empty");
    bytes.extend_from_slice(&varint(1 << 60));
    assert_eq!(refusal(&bytes), Some(WireError::Malformed));
}

#[test]
fn a_lock_name_out_of_bounds_is_malformed() {
    let dup = DuplicateLock {
        term: 1,
        client: ClientId(1),
        name: LockName::new("a").unwrap(),
        token: Token(1),
        req: ReqId(1),
    };
    let frame = LockFrame { from: sample_node(), to: sample_node(), msgs: vec![LockMsg::DuplicateLock(dup)] };
    let good = encode_lock(&frame, cluster()).unwrap();
    // Locate the name: its length byte 1 followed by b'a'.
    let at = good.windows(2).rposition(|w| w == [1, b'a']).unwrap();
    let mut empty = good[..at].to_vec();
    empty.push(0);
    empty.extend_from_slice(&good[at + 2..]);
    assert_eq!(refusal(&empty), Some(WireError::Malformed));
    let mut long = good[..at].to_vec();
    long.extend_from_slice(&varint(256));
    long.extend_from_slice(&[b'z'; 256]);
    long.extend_from_slice(&good[at + 2..]);
    assert_eq!(refusal(&long), Some(WireError::Malformed));
}

/// Known limit, recorded rather than hidden: serde encodes a `SocketAddrV6`
/// as ip and port only, so a link-local member's scope id (and flowinfo) is
/// lost on the wire and the decoded `NodeId` differs from the sender's.
#[test]
fn a_v6_scope_id_does_not_travel() {
    let scoped = NodeId { epoch: 1, addr: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0, 3)) };
    let frame = LockFrame { from: scoped, to: scoped, msgs: Vec::new() };
    let back = decode(&encode_lock(&frame, cluster()).unwrap()).unwrap();
    let SocketAddr::V6(v6) = back.from.addr else { panic!("v6 stays v6") };
    assert_eq!((v6.ip(), v6.port(), v6.scope_id()), (&Ipv6Addr::LOCALHOST, 9, 0));
}

fn sample_node() -> NodeId {
    NodeId { epoch: 7, addr: "10.0.0.1:7946".parse().unwrap() }
}

/// postcard's LEB128 varint.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}
