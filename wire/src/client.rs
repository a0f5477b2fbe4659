//! What a client asks its node and what the node answers, as values: the
//! in-process API between a client (a connection of the client endpoint,
//! or an in-process [`Client`]) and the node task. On a socket they travel
//! as RESP commands and replies ([`crate::commands`], [`crate::resp`]).
//!
//! Every request carries an id chosen by the client; the node answers each
//! with one [`ServerMessage::Reply`] carrying that id. A lock request is
//! answered when it is decided (granted, refused or timed out).
//! [`ServerMessage::Lost`] is sent, unasked, when a lock the client held is
//! lost.
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
//! [`Client`]: https://docs.rs/swimlock (the `swimlock::client` module)

use std::net::SocketAddr;

use crate::admin::KeyringOp;
use crate::ids::{ClientId, LockName, NodeId, Token};

/// Longest `Auth` token, in bytes.
pub const MAX_AUTH_TOKEN: usize = 1024;

/// A request and the id its reply will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    /// Chosen by the application; echoed in the reply.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// What an application can ask its node.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// How many times this connection holds `name` (0 when it does not):
    /// answered with [`Reply::Holds`].
    Holds {
        /// The lock.
        name: LockName,
    },
    /// Subscribe to views: answered with [`Reply::Watching`], then
    /// [`ServerMessage::View`] with the current view, then one per view
    /// the node installs, in order, until the client disconnects.
    WatchView,
}

/// A frame from the node.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// A view, to a client that asked for `WatchView`: first the current
    /// one, then each one installed.
    View(Box<ViewInfo>),
    /// The node is closing this connection for the reason given (it broke a
    /// bound of the client endpoint). Sent when it can be, then the
    /// connection closes and its locks are released.
    Closing {
        /// Why.
        reason: CloseReason,
    },
}

/// Why the node closed a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl CloseReason {
    /// The short code the client protocol uses.
    pub fn code(self) -> &'static str {
        match self {
            CloseReason::SlowReader => "slow-reader",
            CloseReason::FrameTooLarge => "too-large",
            CloseReason::FrameTimeout => "timeout",
            CloseReason::TooManyConnections => "too-many-connections",
            CloseReason::Malformed => "protocol-error",
        }
    }

    /// The reason of `code` (see [`CloseReason::code`]).
    pub fn from_code(code: &str) -> Option<CloseReason> {
        [
            CloseReason::SlowReader,
            CloseReason::FrameTooLarge,
            CloseReason::FrameTimeout,
            CloseReason::TooManyConnections,
            CloseReason::Malformed,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::SlowReader => "the client left too much output unread",
            CloseReason::FrameTooLarge => "a request was larger than the endpoint accepts",
            CloseReason::FrameTimeout => "a request did not complete in time",
            CloseReason::TooManyConnections => "the endpoint has as many connections as it accepts",
            CloseReason::Malformed => "a request was not valid RESP",
        })
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The answer to `Holds`.
    Holds {
        /// The hold count (0: not held).
        holds: u32,
    },
    /// `WatchView` accepted.
    Watching,
}

/// The outcome of a keyring command across the view, as `consul keyring`
/// reports it: how many members hold each key, and which members failed.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyHolders {
    /// The key's id (never its bytes).
    pub key_id: u32,
    /// Members that accept it.
    pub members: u32,
    /// Members that send with it.
    pub primary: u32,
}

/// A member a keyring command did not succeed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringFailure {
    /// The member's name (empty if it left the view).
    pub name: String,
    /// Its identity.
    pub id: NodeId,
    /// Why: its refusal, or no answer.
    pub reason: String,
}

/// How a node protects its datagrams, as `Status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityInfo {
    /// Insecure mode: datagrams travel unsealed and unauthenticated.
    pub insecure: bool,
    /// The id of the key used to send (sealed mode).
    pub primary_key: Option<u32>,
    /// The ids of every key accepted (sealed mode).
    pub keys: Vec<u32>,
}

/// Why a lock request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// `TryLock`: another owner holds the lock.
    Busy,
    /// No grant before the timeout.
    TimedOut,
    /// Mode `majority`: the node's component holds no majority.
    NoQuorum,
}

/// Why a held lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// Held twice after a partition healed; the other holder kept it.
    Duplicate,
    /// Mode `majority`: this node's component lost its majority.
    QuorumLost,
    /// The lease ran out before the coordinator renewed it.
    LeaseExpired,
}

/// A member as `Status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's display name.
    pub name: String,
    /// Its identity (address and start stamp).
    pub id: NodeId,
    /// Its state as this node's gossip sees it.
    pub state: MemberState,
}

/// A member's state as a node's gossip sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// In the view, answering.
    Alive,
    /// In the view, but suspected of having failed.
    Suspect,
    /// Left the view (declared down, or left).
    Down,
}

impl MemberState {
    /// The name the client protocol uses.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }

    /// The state named `s` (see [`MemberState::as_str`]).
    pub fn parse(s: &str) -> Option<MemberState> {
        match s {
            "alive" => Some(MemberState::Alive),
            "suspect" => Some(MemberState::Suspect),
            "down" => Some(MemberState::Down),
            _ => None,
        }
    }
}

/// A view as `WatchView` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewInfo {
    /// The node's local view number.
    pub id: u64,
    /// A digest of the member list, equal on nodes with the same view.
    pub digest: u64,
    /// The members, oldest first.
    pub members: Vec<MemberInfo>,
    /// The coordinator (the oldest member).
    pub coordinator: Option<MemberInfo>,
    /// Whether members that were apart came back (a merge view).
    pub merge: bool,
    /// For a merge, the groups that were apart as this node best knows
    /// them (each oldest first); empty otherwise.
    pub subgroups: Vec<Vec<NodeId>>,
}

/// Most departed members a `Status` lists.
pub const MAX_DEPARTED: usize = 16;

/// A lock held by a client of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The members of the view, oldest first.
    pub members: Vec<MemberInfo>,
    /// Members that left the view since this node started (the latest
    /// [`MAX_DEPARTED`] of them, state [`MemberState::Down`]), oldest first.
    pub departed: Vec<MemberInfo>,
    /// In mode `majority/N`, the members a component needs to grant
    /// (`N / 2 + 1`); `None` in mode `available`.
    pub quorum: Option<u32>,
    /// The node's software version.
    pub version: String,
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
