//! The lock protocol: the messages of CENTRAL_LOCK2 and what retransmission,
//! redirection and reconciliation need besides.
//!
//! Several messages to one peer travel together in one [`LockFrame`].
//!
//! # Leases
//! A held lock is valid on its holder's node until a deadline on that
//! node's own clock: the *stamp* of the node's message that the grant or
//! the latest renewal answers, plus the lease. Requests, renewals and
//! reconciliation answers carry the sender's stamp (microseconds of its
//! monotonic clock); the coordinator echoes it unchanged, so no two clocks
//! are ever compared.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, LockName, NodeId, ReqId, Token};

/// The body of a lock datagram: who sent it, whom it is for, and a batch of
/// messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFrame {
    /// Sender, as its membership identity.
    pub from: NodeId,
    /// Intended receiver. A process whose identity differs (for example a
    /// restarted process on the same address) drops the frame.
    pub to: NodeId,
    /// The messages, applied in order.
    pub msgs: Vec<LockMsg>,
}

/// One lock-protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockMsg {
    /// LOCK(X), client to coordinator.
    Lock(LockReq),
    /// UNLOCK(X), client to coordinator.
    Unlock(UnlockReq),
    /// Withdraw a lock request (the caller timed out), client to coordinator.
    Cancel(CancelReq),
    /// LOCK-RSP(X), coordinator to client.
    LockRsp(LockRsp),
    /// UNLOCK-RSP(X), coordinator to client; also answers a [`CancelReq`].
    UnlockRsp(UnlockRsp),
    /// The receiver is not the coordinator; names the one it knows, if any.
    Redirect(Redirect),
    /// LOCK-INFO-REQ, a coordinator's reconciliation request to a member.
    LockInfoReq(LockInfoReq),
    /// LOCK-INFO-RSP, one part of a member's answer.
    LockInfoRsp(LockInfoRsp),
    /// DUPLICATE-LOCK: the receiver lost a lock held twice after a merge.
    DuplicateLock(DuplicateLock),
    /// The client's acknowledgement of a [`DuplicateLock`].
    DuplicateAck(DuplicateLock),
    /// A member's first word to the coordinator of its new view, repeated
    /// until answered: the coordinator asks for its locks if its copy of
    /// them may be stale, else acknowledges with [`LockMsg::HelloAck`].
    Hello(Hello),
    /// The coordinator's copy of the member's locks is current.
    HelloAck(HelloAck),
    /// A member renews the leases of every lock its clients hold.
    Renew(Renew),
    /// The coordinator renewed them: leases run from the echoed stamp.
    RenewAck(RenewAck),
    /// The coordinator asks the next members of its view (its possible
    /// successors) to witness that its own clients' leases run from
    /// `stamp`; it renews them only as far as a witness acknowledges.
    Vouch(Vouch),
    /// A witness acknowledges a [`LockMsg::Vouch`] (echoed): it has the
    /// same view and recorded when the vouch arrived.
    Vouched(Vouch),
}

impl LockFrame {
    /// Checks what postcard cannot: terms a token can carry, and the size
    /// of reconciliation answers.
    pub fn validate(&self) -> Result<(), crate::WireError> {
        for msg in &self.msgs {
            if msg.term().is_some_and(|t| t > crate::Token::MAX_TERM) {
                return Err(crate::WireError::Malformed);
            }
            if let LockMsg::LockInfoRsp(r) = msg {
                let entries = r.held.len() + r.pending.len();
                if entries > MAX_ENTRIES_PER_PART || r.parts > MAX_PARTS || r.part >= r.parts {
                    return Err(crate::WireError::Malformed);
                }
            }
        }
        Ok(())
    }
}

impl LockMsg {
    /// The highest coordinator term the message carries, if any.
    pub fn term(&self) -> Option<u32> {
        match self {
            LockMsg::LockRsp(m) => Some(m.term),
            LockMsg::UnlockRsp(m) => Some(m.term),
            LockMsg::LockInfoReq(m) => Some(m.term),
            LockMsg::LockInfoRsp(m) => Some(m.term.max(m.max_term)),
            LockMsg::DuplicateLock(m) | LockMsg::DuplicateAck(m) => Some(m.term),
            LockMsg::HelloAck(m) => Some(m.term),
            LockMsg::RenewAck(m) => Some(m.term),
            LockMsg::Renew(_)
            | LockMsg::Vouch(_)
            | LockMsg::Vouched(_)
            | LockMsg::Lock(_)
            | LockMsg::Unlock(_)
            | LockMsg::Cancel(_)
            | LockMsg::Redirect(_)
            | LockMsg::Hello(_) => None,
        }
    }
}

/// See [`LockMsg::Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// How many reconciliation rounds the member has answered.
    pub sync: u64,
}

/// See [`LockMsg::HelloAck`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The coordinator's round.
    pub term: u32,
}

/// See [`LockMsg::Renew`]. One message covers every lock of the node; a
/// node that holds nothing sends none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renew {
    /// The sender's clock when it sent this copy.
    pub stamp: u64,
    /// How many reconciliation rounds the node has answered (see
    /// [`LockReq::sync`]).
    pub sync: u64,
}

/// See [`LockMsg::RenewAck`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewAck {
    /// The stamp of the renewal (or reconciliation answer) acknowledged.
    pub stamp: u64,
    /// The coordinator's round.
    pub term: u32,
}

/// See [`LockMsg::Vouch`]. A successor of the coordinator knows, from the
/// witnesses' records, that no lease of the coordinator's own clients
/// outlasts the last vouch a witness received plus the own lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vouch {
    /// The coordinator's clock when it sent this copy.
    pub stamp: u64,
    /// The digest of the coordinator's view (see [`crate::view_digest`]):
    /// a witness with another view does not acknowledge.
    pub view: u64,
}

/// The last [`Vouch`] a member received from one coordinator, as it
/// reports it in a reconciliation answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VouchSeen {
    /// The coordinator that vouched.
    pub coordinator: NodeId,
    /// The digest of the view it vouched in.
    pub view: u64,
    /// The member's clock when the vouch arrived (same clock as
    /// [`LockInfoRsp::stamp`]).
    pub at: u64,
}

/// How long a lock request may wait at the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// try_lock: grant now or deny.
    No,
    /// lock: queue behind the holder (the client times out on its own).
    Queue,
}

/// A request to acquire a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReq {
    /// Request id, unique for the sending node.
    pub id: ReqId,
    /// How many reconciliation rounds the sending node has answered. A
    /// coordinator whose copy of the node's answer has a lower count asks
    /// the node again before serving it: the node has since answered
    /// another coordinator, which may have changed its locks.
    pub sync: u64,
    /// The client of the sending node that wants the lock.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// Whether the request may wait.
    pub wait: Wait,
    /// The place in the queue a previous coordinator gave this request, so
    /// that waiters keep their order across a coordinator change.
    pub ticket: Option<Token>,
    /// Every request of the sending node with a smaller id than this, other
    /// than queued lock requests, has been answered: the coordinator may
    /// forget its answers to them and treat them as stale.
    pub floor: ReqId,
    /// The sender's clock when it sent this copy; a grant echoes the stamp
    /// of the latest copy the coordinator received.
    pub stamp: u64,
}

/// A request to release a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockReq {
    /// Request id.
    pub id: ReqId,
    /// How many reconciliation rounds the sending node has answered. A
    /// coordinator whose copy of the node's answer has a lower count asks
    /// the node again before serving it: the node has since answered
    /// another coordinator, which may have changed its locks.
    pub sync: u64,
    /// The client that holds the lock.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// The token of the grant to release; a grant with another token is left
    /// alone, which makes the request safe to repeat.
    pub token: Token,
}

/// A request to withdraw lock request `target`: dequeue it, or release the
/// lock if it was granted meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelReq {
    /// Request id of the cancel itself.
    pub id: ReqId,
    /// How many reconciliation rounds the sending node has answered. A
    /// coordinator whose copy of the node's answer has a lower count asks
    /// the node again before serving it: the node has since answered
    /// another coordinator, which may have changed its locks.
    pub sync: u64,
    /// The client that made the lock request.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// The lock request being withdrawn.
    pub target: ReqId,
}

/// The coordinator's answer to a [`LockReq`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRsp {
    /// The request answered.
    pub id: ReqId,
    /// The coordinator's reconciliation round; a client drops answers from a
    /// round it has not reported to.
    pub term: u32,
    /// What happened.
    pub outcome: LockOutcome,
    /// The stamp of the request copy this answers; a grant's lease runs
    /// from it.
    pub stamp: u64,
}

/// What the coordinator did with a lock request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOutcome {
    /// Granted, with this fencing token.
    Granted(Token),
    /// Queued behind the holder, with this ticket; the grant follows later.
    Queued(Token),
    /// Not granted.
    Denied(Denial),
}

/// Why a lock request was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Denial {
    /// try_lock on a lock held by another owner.
    Held,
    /// The coordinator's component holds no majority of the configured
    /// members (mode `majority`).
    NoQuorum,
    /// The request was withdrawn by its client (the answer a repeat of a
    /// cancelled request gets).
    Cancelled,
}

/// The coordinator's answer to an [`UnlockReq`] or a [`CancelReq`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockRsp {
    /// The request answered.
    pub id: ReqId,
    /// The coordinator's reconciliation round.
    pub term: u32,
}

/// Answer of a member that is not the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// The request that reached the wrong member.
    pub id: ReqId,
    /// The coordinator in the receiver's view.
    pub coordinator: Option<NodeId>,
}

/// A new coordinator asks a member for its locks and pending requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfoReq {
    /// The term the coordinator will grant under once reconciled.
    pub term: u32,
    /// Parts of the answer the coordinator already has; the member resends
    /// the others.
    pub have: Vec<u16>,
    /// How much longer, at most, locks held by the coordinator's own
    /// clients stay valid under leases a previous coordinator renewed (its
    /// own renewals are short): if the coordinator goes, its successor waits
    /// that long before granting what they may hold.
    pub linger_ms: u32,
    /// The coordinator this one took over from, if it wants the member's
    /// record of that coordinator's last [`Vouch`] (see
    /// [`LockInfoRsp::vouch`]).
    pub vouch_of: Option<NodeId>,
}

/// Most entries (held locks plus pending requests) one [`LockInfoRsp`]
/// part may carry; members send at most 32.
pub const MAX_ENTRIES_PER_PART: usize = 64;
/// Most parts one answer may have: enough for 1,048,576 entries at 32 per
/// part, the table size swimlock is built for.
pub const MAX_PARTS: u16 = 32_768;

/// One part of a member's answer to a [`LockInfoReq`].
///
/// A member with many locks answers in several parts, each small enough
/// for one datagram; all parts of one answer describe one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfoRsp {
    /// The term of the request answered.
    pub term: u32,
    /// Index of this part.
    pub part: u16,
    /// Number of parts of the whole answer.
    pub parts: u16,
    /// The member's next request id: every request below it is either listed
    /// in `pending` or finished.
    pub next_req: ReqId,
    /// The highest term the member has seen (tokens, tickets, rounds).
    pub max_term: u32,
    /// How many rounds the member has answered, this one included.
    pub sync: u64,
    /// The member's clock when it made this answer: once the coordinator
    /// has installed it, the leases of the locks listed run from it.
    pub stamp: u64,
    /// Locks the member's clients hold.
    pub held: Vec<HeldLock>,
    /// Lock requests of the member's clients still waiting for an answer.
    pub pending: Vec<LockReq>,
    /// The last vouch the member received from the coordinator named in
    /// [`LockInfoReq::vouch_of`], if any.
    pub vouch: Option<VouchSeen>,
    /// How much longer, at most, members that this member served as
    /// coordinator, and that are no longer in its view, may hold locks
    /// nobody reports (0: none). The new coordinator grants nothing new
    /// before.
    pub unreported_ms: u32,
}

/// A lock held by a client of the reporting member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    /// The holding client.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// Its fencing token.
    pub token: Token,
    /// The request that was granted.
    pub req: ReqId,
}

/// Tells a holder that it lost a duplicate lock (and is acknowledged with
/// the same content).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateLock {
    /// The reconciliation round that resolved the duplicate.
    pub term: u32,
    /// The client that lost the lock.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// The token that lost.
    pub token: Token,
    /// The lock request that was granted with it: a client whose answer to
    /// that request is still on its way waits for it before acknowledging.
    pub req: ReqId,
}
