//! The local client protocol, between an application and its node's
//! client endpoint (TCP or Unix socket).
//!
//! A stream of frames in each direction; a frame is a `u32` little-endian
//! body length, then the postcard-encoded body: a [`ClientRequest`] from the
//! application, a [`ServerMessage`] from the node. Bodies longer than
//! [`MAX_CLIENT_FRAME`] are refused before anything is read or allocated.
//!
//! Every request carries an id chosen by the application; the node answers
//! each with one [`ServerMessage::Reply`] carrying that id. A lock request is
//! answered when it is decided (granted, refused or timed out), so replies
//! may come in another order than the requests. [`ServerMessage::Lost`] is
//! pushed, unasked, when a lock the connection held is lost.
//!
//! Leases: a lock is safe to use only until its lease ends, and a node
//! renews its clients' leases with the coordinator. A node that is paused or
//! cut off can tell its clients nothing, so a client that must stop in time
//! counts down itself: it takes its locks with `LockWithLease` (or
//! `TryLockWithLease`), whose grant carries the lease left, and asks
//! `Lease` again before that runs out. Each answer counts the lease from
//! when the node took the request, so the client's deadline, its own send
//! time plus the lease, is never later than the node's.
//!
//! Variants are only ever added at the end of these enums: postcard encodes
//! a variant by its index, and older clients keep working.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::admin::KeyringOp;
use crate::ids::{ClientId, LockName, NodeId, Token};

/// Largest frame body accepted or produced, in bytes.
pub const MAX_CLIENT_FRAME: usize = 1 << 20;
/// Length of the frame prefix.
pub const PREFIX_LEN: usize = 4;
/// Largest request frame body a node's client endpoint accepts, in bytes:
/// every request fits (a lock name is at most 255 bytes, an `Auth` token at
/// most [`MAX_AUTH_TOKEN`]); a prefix announcing more closes the connection.
pub const MAX_REQUEST_FRAME: usize = 4096;
/// Longest `Auth` token, in bytes.
pub const MAX_AUTH_TOKEN: usize = 1024;

/// A request and the id its reply will carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Chosen by the application; echoed in the reply.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// What an application can ask its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Acquire `name`, waiting up to `timeout_ms` behind earlier waiters.
    Lock {
        /// The lock.
        name: LockName,
        /// How long to wait, in milliseconds.
        timeout_ms: u64,
    },
    /// Acquire `name` only if it is free now.
    TryLock {
        /// The lock.
        name: LockName,
    },
    /// Drop one hold of `name`.
    Unlock {
        /// The lock.
        name: LockName,
    },
    /// The node's view and locks.
    Status,
    /// The password of a client endpoint that requires one (`client_token`):
    /// the first request on such a connection. Answered with
    /// [`Reply::Authenticated`], or with [`Reply::Error`] and the connection
    /// closed. Also accepted where no password is required.
    Auth {
        /// The endpoint's password.
        token: String,
    },
    /// A keyring command for every member of the node's view (answered
    /// with [`Reply::Keyring`]). An install carries the key's bytes; use
    /// and remove name the key by its id.
    Keyring {
        /// What to do.
        op: KeyringOp,
    },
    /// `Lock`, answered on a grant with [`Reply::AcquiredWithLease`], which
    /// carries the lease (failures as for `Lock`).
    LockWithLease {
        /// The lock.
        name: LockName,
        /// How long to wait, in milliseconds.
        timeout_ms: u64,
    },
    /// `TryLock`, answered on a grant with [`Reply::AcquiredWithLease`].
    TryLockWithLease {
        /// The lock.
        name: LockName,
    },
    /// How much of this connection's lease of `name` is left: answered with
    /// [`Reply::Lease`]. The node renews leases on its own; asking again
    /// (every quarter of the lease left, say) tells a client whether its
    /// node still does.
    Lease {
        /// The lock.
        name: LockName,
    },
    /// The operator accepts coordinator terms up to `term`: a coordinator
    /// that stopped granting because a member reported a term far above
    /// the cluster's (an alert, shown in `Status::halted_on_term`) starts a
    /// round above it. Answered with [`Reply::TermAccepted`].
    AcceptTerm {
        /// The highest term accepted.
        term: u32,
    },
}

/// A frame from the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// A lock this connection held is no longer its own.
    Lost {
        /// The lock.
        name: LockName,
        /// The token it held.
        token: Token,
        /// Why it was lost.
        reason: LostReason,
    },
    /// The node is stopping. Sent to every connection that holds a lock
    /// (again for a lock granted afterwards): stop using the locks and
    /// unlock them, or disconnect, within `grace_ms`. Locks let go in time
    /// are released at once; when the grace ends the node leaves the
    /// cluster without releasing the others, which the cluster then treats
    /// as locks of a departed member.
    Stopping {
        /// How long the node waits, in milliseconds.
        grace_ms: u64,
    },
    /// The node is closing this connection for the reason given (it broke a
    /// bound of the client endpoint). Sent when it can be, then the
    /// connection closes and its locks are released.
    Closing {
        /// Why.
        reason: CloseReason,
    },
}

/// Why the node closed a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// The client left too much output unread.
    SlowReader,
    /// A request frame announced more than the endpoint accepts.
    FrameTooLarge,
    /// A request frame did not complete in time.
    FrameTimeout,
    /// The endpoint has as many connections as it accepts.
    TooManyConnections,
    /// A request frame did not decode.
    Malformed,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::SlowReader => "the client left too much output unread",
            CloseReason::FrameTooLarge => "a request frame was larger than the endpoint accepts",
            CloseReason::FrameTimeout => "a request frame did not complete in time",
            CloseReason::TooManyConnections => "the endpoint has as many connections as it accepts",
            CloseReason::Malformed => "a request frame did not decode",
        })
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `Lock`/`TryLock` succeeded.
    Acquired {
        /// The fencing token (the same on re-entry).
        token: Token,
        /// How many times this connection now holds the lock.
        holds: u32,
    },
    /// `Lock`/`TryLock` did not succeed.
    Failed {
        /// Why.
        reason: FailReason,
    },
    /// `Unlock` accepted (the release reaches the coordinator in the
    /// background).
    Unlocked,
    /// `Unlock` of a lock this connection does not hold.
    NotHeld,
    /// The answer to `Status`.
    Status(Box<Status>),
    /// The request could not be served (for example the node is shutting
    /// down).
    Error {
        /// A message for a person.
        message: String,
    },
    /// `Auth` accepted.
    Authenticated,
    /// The answer to `Keyring`.
    Keyring(Box<KeyringReport>),
    /// `LockWithLease`/`TryLockWithLease` succeeded.
    AcquiredWithLease {
        /// The fencing token (the same on re-entry).
        token: Token,
        /// How many times this connection now holds the lock.
        holds: u32,
        /// The lease left, in milliseconds (floored), counted from when the
        /// node took the request: for a request that waited, the wait is
        /// included. A client that adds it to the moment it *sent* the
        /// request gets a deadline no later than the node's own, whatever
        /// the delays on the way; the lock is safe to use until then unless
        /// a later answer moves it.
        lease_ms: u64,
    },
    /// The answer to `Lease`.
    Lease {
        /// The lease left, in milliseconds (floored), counted from when the
        /// node took the request (see [`Reply::AcquiredWithLease`]); `None`
        /// if this connection does not hold the lock.
        lease_ms: Option<u64>,
    },
    /// `AcceptTerm` applied on this node.
    TermAccepted {
        /// The term this node's coordinator still stops on, if it does (the
        /// term accepted was lower); `None` when it grants, or does not
        /// coordinate.
        still_halted_on: Option<u32>,
    },
}

/// The outcome of a keyring command across the view, as `consul keyring`
/// reports it: how many members hold each key, and which members failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringReport {
    /// Members asked, the answering node included.
    pub members: u32,
    /// Every key some member reported, ascending by id.
    pub keys: Vec<KeyHolders>,
    /// Members that refused or did not answer.
    pub failed: Vec<KeyringFailure>,
    /// Set when the command was refused as a whole (nothing was changed).
    pub refused: Option<String>,
}

/// How many members hold one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHolders {
    /// The key's id (never its bytes).
    pub key_id: u32,
    /// Members that accept it.
    pub members: u32,
    /// Members that send with it.
    pub primary: u32,
}

/// A member a keyring command did not succeed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringFailure {
    /// The member's name (empty if it left the view).
    pub name: String,
    /// Its identity.
    pub id: NodeId,
    /// Why: its refusal, or no answer.
    pub reason: String,
}

/// How a node protects its datagrams, as `Status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityInfo {
    /// Insecure mode: datagrams travel unsealed and unauthenticated.
    pub insecure: bool,
    /// The id of the key used to send (sealed mode).
    pub primary_key: Option<u32>,
    /// The ids of every key accepted (sealed mode).
    pub keys: Vec<u32>,
}

/// Why a lock request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// `TryLock`: another owner holds the lock.
    Busy,
    /// No grant before the timeout.
    TimedOut,
    /// Mode `majority`: the node's component holds no majority.
    NoQuorum,
}

/// Why a held lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LostReason {
    /// Held twice after a partition healed; the other holder kept it.
    Duplicate,
    /// Mode `majority`: this node's component lost its majority.
    QuorumLost,
    /// The lease ran out before the coordinator renewed it.
    LeaseExpired,
}

/// A member as `Status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member's display name.
    pub name: String,
    /// Its identity (address and start stamp).
    pub id: NodeId,
}

/// A lock held by a client of the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldInfo {
    /// The holding client (connection) of the node.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// Its fencing token.
    pub token: Token,
    /// Hold count.
    pub holds: u32,
}

/// One entry of the coordinator's lock table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    /// The lock.
    pub name: LockName,
    /// The holding node.
    pub node: NodeId,
    /// The holding client of that node.
    pub client: ClientId,
    /// The token of the grant.
    pub token: Token,
}

/// The coordinator's lock table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Locks held.
    pub held: u64,
    /// Requests waiting.
    pub waiters: u64,
    /// Whether the reconciliation round is over.
    pub serving: bool,
    /// The held locks.
    pub entries: Vec<TableEntry>,
}

/// A node's view of the cluster and its locks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's display name.
    pub name: String,
    /// This node's identity.
    pub id: NodeId,
    /// The UDP address it listens on.
    pub bind: SocketAddr,
    /// The lock mode (`available` or `majority/N`).
    pub mode: String,
    /// The node's local view number.
    pub view_id: u64,
    /// A digest of the member list, equal on nodes with the same view.
    pub view_digest: u64,
    /// The members, oldest first.
    pub members: Vec<MemberInfo>,
    /// The coordinator (the oldest member).
    pub coordinator: Option<MemberInfo>,
    /// Locks held by this node's clients.
    pub locks: Vec<HeldInfo>,
    /// The lock table, when this node coordinates.
    pub table: Option<TableInfo>,
    /// Sealed or insecure, and the key ids.
    pub security: SecurityInfo,
    /// Set when this node coordinates and has stopped granting on a term
    /// jump: the term a member reported, which waits for
    /// `swimlock accept-term`.
    pub halted_on_term: Option<u32>,
}

/// Why a client frame was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_CLIENT_FRAME`] bytes.
    TooLarge {
        /// The announced or produced length.
        len: usize,
    },
    /// The body does not decode.
    Malformed,
    /// Bytes left over after the body.
    TrailingBytes(usize),
    /// A value could not be encoded.
    Encode,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len } => {
                write!(f, "client frame of {len} bytes exceeds the limit of {MAX_CLIENT_FRAME}")
            }
            FrameError::Malformed => f.write_str("malformed client frame"),
            FrameError::TrailingBytes(n) => write!(f, "{n} trailing bytes after the client frame body"),
            FrameError::Encode => f.write_str("value could not be encoded"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes `msg` as one frame, prefix included.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let out = postcard::to_extend(msg, vec![0u8; PREFIX_LEN]).map_err(|_| FrameError::Encode)?;
    let len = out.len() - PREFIX_LEN;
    if len > MAX_CLIENT_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    let mut out = out;
    out[..PREFIX_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// The body length a prefix announces, checked against the limit.
pub fn body_len(prefix: [u8; PREFIX_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_CLIENT_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Decodes one frame body (after its prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(|_| FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Decodes the first frame of `buf`, if it is complete: the message and the
/// number of bytes it took.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = body_len(*prefix)?;
    let Some(body) = buf.get(PREFIX_LEN..PREFIX_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode(body)?, PREFIX_LEN + len)))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;

    fn name() -> impl Strategy<Value = LockName> {
        "[a-z/._-]{1,40}".prop_map(|s| LockName::new(s).unwrap())
    }

    fn node() -> impl Strategy<Value = NodeId> {
        (1u64.., any::<u32>(), any::<u16>()).prop_map(|(epoch, ip, port)| NodeId {
            epoch,
            addr: SocketAddr::new(Ipv4Addr::from(ip).into(), port),
        })
    }

    fn member() -> impl Strategy<Value = MemberInfo> {
        (".{0,20}", node()).prop_map(|(name, id)| MemberInfo { name, id })
    }

    fn request() -> impl Strategy<Value = ClientRequest> {
        let request = prop_oneof![
            (name(), any::<u64>()).prop_map(|(name, timeout_ms)| Request::Lock { name, timeout_ms }),
            name().prop_map(|name| Request::TryLock { name }),
            name().prop_map(|name| Request::Unlock { name }),
            Just(Request::Status),
            ".{0,40}".prop_map(|token| Request::Auth { token }),
            (name(), any::<u64>()).prop_map(|(name, timeout_ms)| Request::LockWithLease { name, timeout_ms }),
            name().prop_map(|name| Request::TryLockWithLease { name }),
            name().prop_map(|name| Request::Lease { name }),
            any::<u32>().prop_map(|term| Request::AcceptTerm { term }),
        ];
        (any::<u64>(), request).prop_map(|(id, request)| ClientRequest { id, request })
    }

    fn status() -> impl Strategy<Value = Status> {
        let held = (any::<u64>(), name(), any::<u64>(), any::<u32>())
            .prop_map(|(c, name, t, holds)| HeldInfo { client: ClientId(c), name, token: Token(t), holds });
        let entry = (name(), node(), any::<u64>(), any::<u64>()).prop_map(|(name, node, c, t)| TableEntry {
            name,
            node,
            client: ClientId(c),
            token: Token(t),
        });
        let table = (any::<u64>(), any::<u64>(), any::<bool>(), prop::collection::vec(entry, 0..4))
            .prop_map(|(held, waiters, serving, entries)| TableInfo { held, waiters, serving, entries });
        (
            (".{0,20}", node(), "[a-z/0-9]{0,12}", any::<u64>(), any::<u64>()),
            prop::collection::vec(member(), 0..5),
            prop::option::of(member()),
            prop::collection::vec(held, 0..4),
            prop::option::of(table),
        )
            .prop_map(
                |((name, id, mode, view_id, view_digest), members, coordinator, locks, table)| Status {
                    name,
                    id,
                    bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7946),
                    mode,
                    view_id,
                    view_digest,
                    members,
                    coordinator,
                    locks,
                    table,
                    security: SecurityInfo {
                        insecure: view_id % 2 == 0,
                        primary_key: Some(7),
                        keys: vec![7, 9],
                    },
                    halted_on_term: (view_id % 3 == 0).then_some(view_digest as u32),
                },
            )
    }

    fn server_message() -> impl Strategy<Value = ServerMessage> {
        let fail =
            prop_oneof![Just(FailReason::Busy), Just(FailReason::TimedOut), Just(FailReason::NoQuorum)];
        let reply = prop_oneof![
            (any::<u64>(), any::<u32>()).prop_map(|(t, holds)| Reply::Acquired { token: Token(t), holds }),
            fail.prop_map(|reason| Reply::Failed { reason }),
            Just(Reply::Unlocked),
            Just(Reply::NotHeld),
            status().prop_map(|s| Reply::Status(Box::new(s))),
            ".{0,30}".prop_map(|message| Reply::Error { message }),
            Just(Reply::Authenticated),
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(t, holds, lease_ms)| {
                Reply::AcquiredWithLease { token: Token(t), holds, lease_ms }
            }),
            prop::option::of(any::<u64>()).prop_map(|lease_ms| Reply::Lease { lease_ms }),
            prop::option::of(any::<u32>())
                .prop_map(|still_halted_on| Reply::TermAccepted { still_halted_on }),
        ];
        let lost = prop_oneof![
            Just(LostReason::Duplicate),
            Just(LostReason::QuorumLost),
            Just(LostReason::LeaseExpired)
        ];
        prop_oneof![
            (any::<u64>(), reply).prop_map(|(id, reply)| ServerMessage::Reply { id, reply }),
            (name(), any::<u64>(), lost).prop_map(|(name, t, reason)| ServerMessage::Lost {
                name,
                token: Token(t),
                reason
            }),
            any::<u64>().prop_map(|grace_ms| ServerMessage::Stopping { grace_ms }),
            close().prop_map(|reason| ServerMessage::Closing { reason }),
        ]
    }

    fn close() -> impl Strategy<Value = CloseReason> {
        prop_oneof![
            Just(CloseReason::SlowReader),
            Just(CloseReason::FrameTooLarge),
            Just(CloseReason::FrameTimeout),
            Just(CloseReason::TooManyConnections),
            Just(CloseReason::Malformed),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in request()) {
            let bytes = encode(&req).unwrap();
            let (back, used) = decode_frame::<ClientRequest>(&bytes).unwrap().unwrap();
            prop_assert_eq!(back, req);
            prop_assert_eq!(used, bytes.len());
        }

        #[test]
        fn server_messages_round_trip(msg in server_message()) {
            let bytes = encode(&msg).unwrap();
            let (back, used) = decode_frame::<ServerMessage>(&bytes).unwrap().unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, bytes.len());
        }

        #[test]
        fn a_partial_frame_waits_for_more(req in request(), cut in 0usize..1000) {
            let bytes = encode(&req).unwrap();
            let cut = cut % bytes.len();
            prop_assert_eq!(decode_frame::<ClientRequest>(&bytes[..cut]).unwrap(), None);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_frame::<ClientRequest>(&bytes);
            let _ = decode_frame::<ServerMessage>(&bytes);
        }
    }

    /// Bytes of the frames every client so far sends and reads: variants
    /// added since must leave them as they were.
    #[test]
    fn earlier_encodings_stay_as_they_were() {
        let lock = ClientRequest {
            id: 300,
            request: Request::Lock { name: LockName::new("ab").unwrap(), timeout_ms: 1_000 },
        };
        // id 300 (varint ac 02), variant 0, name "ab", timeout 1000 (e8 07).
        assert_eq!(encode(&lock).unwrap(), [8, 0, 0, 0, 0xac, 0x02, 0, 2, b'a', b'b', 0xe8, 0x07]);
        let try_lock =
            ClientRequest { id: 1, request: Request::TryLock { name: LockName::new("a").unwrap() } };
        assert_eq!(encode(&try_lock).unwrap(), [4, 0, 0, 0, 1, 1, 1, b'a']);
        let unlock = ClientRequest { id: 1, request: Request::Unlock { name: LockName::new("a").unwrap() } };
        assert_eq!(encode(&unlock).unwrap(), [4, 0, 0, 0, 1, 2, 1, b'a']);
        let acquired = ServerMessage::Reply { id: 300, reply: Reply::Acquired { token: Token(5), holds: 1 } };
        // Reply (0), id, Acquired (0), token 5, holds 1.
        assert_eq!(encode(&acquired).unwrap(), [6, 0, 0, 0, 0, 0xac, 0x02, 0, 5, 1]);
        let lost = ServerMessage::Lost {
            name: LockName::new("a").unwrap(),
            token: Token(5),
            reason: LostReason::LeaseExpired,
        };
        assert_eq!(encode(&lost).unwrap(), [5, 0, 0, 0, 1, 1, b'a', 5, 2]);
        // The lease variants come after every earlier one.
        let with_lease = ClientRequest {
            id: 1,
            request: Request::LockWithLease { name: LockName::new("a").unwrap(), timeout_ms: 1 },
        };
        assert_eq!(encode(&with_lease).unwrap(), [5, 0, 0, 0, 1, 6, 1, b'a', 1]);
        let lease = ClientRequest { id: 1, request: Request::Lease { name: LockName::new("a").unwrap() } };
        assert_eq!(encode(&lease).unwrap(), [4, 0, 0, 0, 1, 8, 1, b'a']);
        let granted = ServerMessage::Reply {
            id: 1,
            reply: Reply::AcquiredWithLease { token: Token(5), holds: 1, lease_ms: 2_000 },
        };
        assert_eq!(encode(&granted).unwrap(), [7, 0, 0, 0, 0, 1, 8, 5, 1, 0xd0, 0x0f]);
        let none = ServerMessage::Reply { id: 1, reply: Reply::Lease { lease_ms: None } };
        assert_eq!(encode(&none).unwrap(), [4, 0, 0, 0, 0, 1, 9, 0]);
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused() {
        let huge = ((MAX_CLIENT_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(
            decode_frame::<ClientRequest>(&huge),
            Err(FrameError::TooLarge { len: MAX_CLIENT_FRAME + 1 })
        );
        let mut bad = 3u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(decode_frame::<ClientRequest>(&bad), Err(FrameError::Malformed));
        let mut extra = encode(&ClientRequest { id: 1, request: Request::Status }).unwrap();
        let len = u32::from_le_bytes(extra[..4].try_into().unwrap()) + 1;
        extra[..4].copy_from_slice(&len.to_le_bytes());
        extra.push(0);
        assert_eq!(decode_frame::<ClientRequest>(&extra), Err(FrameError::TrailingBytes(1)));
        // An empty name is refused by decoding, like on the lock protocol.
        let mut empty_name = 0u32.to_le_bytes().to_vec();
        empty_name.extend_from_slice(&[1, 2, 0]);
        empty_name[..4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode_frame::<ClientRequest>(&empty_name), Err(FrameError::Malformed));
    }
}
