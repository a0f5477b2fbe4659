//! [`LockNode`]: the client and coordinator roles of one node behind one
//! calling convention.

use std::collections::VecDeque;
use std::time::Duration;

use swimlock_wire::lock::{CancelReq, LockMsg, LockReq, Redirect, UnlockReq, Wait};
use swimlock_wire::{ClientId, LockName, NodeId, Owner, ReqId, Token};

use crate::client::ClientRole;
use crate::config::{Config, Mode};
use crate::coordinator::Coordinator;
use crate::token::TokenIssuer;

/// A membership view as the lock machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Changes whenever the member list does (local to the node).
    pub id: u64,
    /// Live members, oldest first; the first is the coordinator.
    pub members: Vec<NodeId>,
    /// True when members that were apart came back together (a merge
    /// view): the coordinator runs a new reconciliation round.
    pub merge: bool,
}

impl View {
    /// The coordinator of this view: its oldest member.
    pub fn coordinator(&self) -> Option<NodeId> {
        self.members.first().copied()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains(&node)
    }
}

/// A message for another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The receiving member.
    pub to: NodeId,
    /// The message.
    pub msg: LockMsg,
}

/// What the application learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A `lock` or `try_lock` succeeded.
    Acquired {
        /// The operation, as returned by `lock`/`try_lock`.
        req: ReqId,
        /// The client that asked.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// Its fencing token (unchanged on re-entry).
        token: Token,
        /// How many times the client now holds it.
        holds: u32,
    },
    /// A `lock` or `try_lock` did not succeed.
    Failed {
        /// The operation.
        req: ReqId,
        /// The client that asked.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// Why.
        reason: Failure,
    },
    /// This node, as coordinator, is about to grant under `term`. The
    /// driver must make the term durable (see
    /// [`LockNode::with_term_floor`]) before it sends the transmits or
    /// delivers the events of the same batch, so that after a restart the
    /// node never grants under a term it used before.
    TermStarted {
        /// The highest term this node may now grant under.
        term: u32,
    },
    /// A lock the client held is no longer its own.
    Lost {
        /// The client that held it.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// The token it held.
        token: Token,
        /// Why.
        reason: LossReason,
    },
}

/// Why a lock operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// try_lock: another owner holds the lock.
    Busy,
    /// No grant before the deadline.
    TimedOut,
    /// Mode `majority` and this node's component holds no majority.
    NoQuorum,
}

/// Why a held lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// Held twice after a merge; the other holder had the higher token.
    Duplicate,
    /// Mode `majority`: this node's component lost its majority.
    QuorumLost,
}

/// Why `unlock` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockError {
    /// The client does not hold the lock.
    NotHeld,
}

/// A lock held by a client of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldInfo {
    /// The client.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// Its fencing token.
    pub token: Token,
    /// Hold count (re-entry).
    pub holds: u32,
}

/// Size of the coordinator's lock table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Locks held.
    pub held: usize,
    /// Requests waiting.
    pub waiters: usize,
    /// DUPLICATE-LOCK messages not yet acknowledged.
    pub unacked_duplicates: usize,
}

/// Monotonic counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent again after no answer.
    pub retransmissions: u64,
    /// Reconciliation rounds started as coordinator.
    pub reconciliations: u64,
    /// Merge views received.
    pub merges: u64,
    /// Duplicate locks resolved as coordinator.
    pub duplicates_resolved: u64,
    /// Grants made as coordinator.
    pub grants: u64,
    /// Lock operations of this node's clients that succeeded.
    pub acquired: u64,
    /// Lock operations that failed because the lock was held (try_lock).
    pub busy: u64,
    /// Lock operations that timed out.
    pub timed_out: u64,
    /// Lock operations refused for lack of quorum.
    pub no_quorum: u64,
    /// Held locks lost.
    pub lost: u64,
    /// Lock messages dropped as stale or not applicable.
    pub dropped: u64,
}

/// What the roles produce while handling one input; drained by the
/// `poll_*` methods.
#[derive(Debug)]
pub(crate) struct Outbox {
    me: NodeId,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Messages to this node itself, delivered before the input returns.
    local: VecDeque<LockMsg>,
    pub stats: Stats,
}

impl Outbox {
    /// Sends `msg` to `to`; a message to this node stays inside.
    pub fn send(&mut self, to: NodeId, msg: LockMsg) {
        if to == self.me {
            self.local.push_back(msg);
        } else {
            self.transmits.push_back(Transmit { to, msg });
        }
    }

    pub fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }
}

/// The lock protocol of one node: client role for its applications,
/// coordinator role while its view names it coordinator.
///
/// See the [crate documentation](crate) for the calling convention.
#[derive(Debug)]
pub struct LockNode {
    me: NodeId,
    config: Config,
    view: Option<View>,
    client: ClientRole,
    /// Present while this node coordinates (and, in majority mode, its
    /// component holds a majority).
    coord: Option<Coordinator>,
    /// Highest term this node has announced with [`Event::TermStarted`]
    /// (or was started with).
    issued_term: u32,
    out: Outbox,
}

impl LockNode {
    /// A node with identity `me` that has never coordinated. It does
    /// nothing useful until it gets its first view.
    pub fn new(me: NodeId, config: Config) -> LockNode {
        LockNode::with_term_floor(me, config, 0)
    }

    /// A node that may have coordinated in an earlier life: `term_floor` is
    /// the last term it announced with [`Event::TermStarted`]. Its tokens
    /// will all be above that term, so a restarted coordinator that finds
    /// itself alone never repeats a token of its earlier life.
    pub fn with_term_floor(me: NodeId, config: Config, term_floor: u32) -> LockNode {
        LockNode {
            me,
            client: ClientRole::new(config.clone()),
            config,
            view: None,
            coord: None,
            issued_term: term_floor,
            out: Outbox {
                me,
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                local: VecDeque::new(),
                stats: Stats::default(),
            },
        }
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// On reception of a view V: follow its coordinator; BecomeCoord if this
    /// node is the new coordinator or V is a merge view; CeaseCoord if it
    /// coordinated and no longer does.
    pub fn handle_view(&mut self, now: Duration, view: View) {
        if view.merge {
            self.out.stats.merges += 1;
        }
        let quorum = self.has_quorum(&view);
        let coordinate = view.coordinator() == Some(self.me) && quorum;
        match (&mut self.coord, coordinate) {
            (Some(coord), true) if !view.merge => coord.on_view(now, &view.members, &mut self.out),
            (_, true) => self.become_coord(now, &view),
            (Some(_), false) => self.cease_coord(),
            (None, false) => {}
        }
        self.client.on_view(now, &view, quorum, &mut self.out);
        self.view = Some(view);
        self.route(now);
    }

    fn has_quorum(&self, view: &View) -> bool {
        match self.config.mode {
            Mode::Available => true,
            Mode::Majority { members } => view.members.len() > members.get() / 2,
        }
    }

    /// BecomeCoord: a fresh coordinator under a term above every term this
    /// node knows; its reconciliation round starts now.
    fn become_coord(&mut self, now: Duration, view: &View) {
        self.cease_coord();
        let term = TokenIssuer::next_term(self.client.max_term().max(self.issued_term));
        let coord = Coordinator::become_coord(now, &view.members, term, &self.config, &mut self.out);
        self.coord = Some(coord);
        self.announce_term();
    }

    /// CeaseCoord: drop the lock table and the request queue. The terms it
    /// granted under stay known to this node's client role, which reports
    /// them in later rounds.
    fn cease_coord(&mut self) {
        if self.coord.take().is_some() {
            self.client.observe_term(self.issued_term);
        }
    }

    /// A lock message from member `from`.
    pub fn handle_message(&mut self, now: Duration, from: NodeId, msg: LockMsg) {
        self.dispatch(now, from, msg);
        self.route(now);
    }

    fn dispatch(&mut self, now: Duration, from: NodeId, msg: LockMsg) {
        let out = &mut self.out;
        match (msg, &mut self.coord) {
            (LockMsg::Lock(req), Some(c)) => c.handle_lock(now, from, req, out),
            (LockMsg::Unlock(req), Some(c)) => c.handle_unlock(now, from, req, out),
            (LockMsg::Cancel(req), Some(c)) => c.handle_cancel(now, from, req, out),
            (LockMsg::LockInfoRsp(rsp), Some(c)) => c.on_lock_info_rsp(now, from, rsp, out),
            (LockMsg::DuplicateAck(dup), Some(c)) => c.on_duplicate_ack(from, dup),
            (LockMsg::Hello(hello), Some(c)) => c.handle_hello(now, from, hello, out),
            (
                LockMsg::Lock(LockReq { id, .. })
                | LockMsg::Unlock(UnlockReq { id, .. })
                | LockMsg::Cancel(CancelReq { id, .. }),
                None,
            ) => self.redirect(from, id),
            (LockMsg::LockInfoRsp(_) | LockMsg::DuplicateAck(_) | LockMsg::Hello(_), None) => {
                out.stats.dropped += 1
            }
            (msg, _) => self.client.on_message(now, from, msg, out),
        }
        self.announce_term();
    }

    /// Emits [`Event::TermStarted`] when the coordinator moved to a higher
    /// term (a new round, or the issuer moving on).
    fn announce_term(&mut self) {
        if let Some(term) = self.coord.as_ref().map(Coordinator::highest_term)
            && term > self.issued_term
        {
            self.issued_term = term;
            self.out.emit(Event::TermStarted { term });
        }
    }

    /// A request reached this node, which does not coordinate: name the
    /// coordinator of its view instead of dropping it silently.
    fn redirect(&mut self, from: NodeId, id: ReqId) {
        let coordinator = self.view.as_ref().and_then(View::coordinator).filter(|c| *c != self.me);
        if coordinator.is_none() && self.view.as_ref().is_some_and(|v| v.coordinator() == Some(self.me)) {
            // This node is the coordinator but has no quorum: the request
            // cannot be served anywhere in this component.
            self.out.stats.dropped += 1;
            return;
        }
        self.out.send(from, LockMsg::Redirect(Redirect { id, coordinator }));
    }

    /// Delivers the messages this node sent itself, until none are left.
    fn route(&mut self, now: Duration) {
        while let Some(msg) = self.out.local.pop_front() {
            self.dispatch(now, self.me, msg);
        }
    }

    /// Timers: retransmissions, deadlines, the end of a reconciliation round.
    pub fn handle_timeout(&mut self, now: Duration) {
        if let Some(c) = &mut self.coord {
            c.handle_timeout(now, &mut self.out);
        }
        self.announce_term();
        self.client.handle_timeout(now, &mut self.out);
        self.route(now);
    }

    /// `lock(name, timeout)`: wait up to `timeout` for the lock, behind
    /// earlier waiters. The outcome arrives as [`Event::Acquired`] or
    /// [`Event::Failed`] with the returned id.
    pub fn lock(&mut self, now: Duration, client: ClientId, name: LockName, timeout: Duration) -> ReqId {
        let req = self.client.lock(now, client, name, Wait::Queue, now + timeout, &mut self.out);
        self.route(now);
        req
    }

    /// `try_lock(name)`: the lock now, or [`Failure::Busy`].
    pub fn try_lock(&mut self, now: Duration, client: ClientId, name: LockName) -> ReqId {
        let deadline = now + self.config.try_lock_timeout;
        let req = self.client.lock(now, client, name, Wait::No, deadline, &mut self.out);
        self.route(now);
        req
    }

    /// `unlock(name)`: drops one hold; the last one releases the lock at the
    /// coordinator, retransmitted until confirmed. Does not wait.
    pub fn unlock(&mut self, now: Duration, client: ClientId, name: &LockName) -> Result<(), UnlockError> {
        let result = self.client.unlock(now, client, name, &mut self.out);
        self.route(now);
        result
    }

    /// The client went away (its connection closed): release its locks and
    /// withdraw its requests.
    pub fn release_client(&mut self, now: Duration, client: ClientId) {
        self.client.release_client(now, client, &mut self.out);
        self.route(now);
    }

    /// The next message to send. Call until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// The next event for the application. Call until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// When [`LockNode::handle_timeout`] should be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        let coord = self.coord.as_ref().and_then(Coordinator::poll_timeout);
        coord.into_iter().chain(self.client.poll_timeout()).min()
    }

    /// The current view.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// The coordinator of the current view.
    pub fn coordinator(&self) -> Option<NodeId> {
        self.view.as_ref().and_then(View::coordinator)
    }

    /// Whether this node coordinates and has finished reconciliation.
    pub fn is_serving(&self) -> bool {
        self.coord.as_ref().is_some_and(Coordinator::is_serving)
    }

    /// Whether this node coordinates (reconciling or serving).
    pub fn is_coordinator(&self) -> bool {
        self.coord.is_some()
    }

    /// The coordinator's current round term, if this node coordinates.
    pub fn round_term(&self) -> Option<u32> {
        self.coord.as_ref().map(Coordinator::term)
    }

    /// Members whose reconciliation answer this coordinator still lacks.
    pub fn awaiting(&self) -> Vec<NodeId> {
        self.coord.as_ref().map(|c| c.awaiting().collect()).unwrap_or_default()
    }

    /// Locks held by this node's clients.
    pub fn held(&self) -> Vec<HeldInfo> {
        self.client.held().collect()
    }

    /// Lock requests of this node's clients in flight to the coordinator:
    /// the request id it knows them by, the client, the name.
    pub fn pending_locks(&self) -> Vec<(ReqId, ClientId, LockName)> {
        self.client.pending_locks().map(|(id, client, name)| (id, client, name.clone())).collect()
    }

    /// Unlocks and cancels of this node's clients in flight to the
    /// coordinator.
    pub fn pending_releases(&self) -> usize {
        self.client.pending_releases()
    }

    /// Whether this node, as a serving coordinator, has lock request `req`
    /// of `owner` for `name` as the holder or in the queue.
    pub fn knows_request(&self, owner: Owner, name: &LockName, req: ReqId) -> bool {
        self.coord.as_ref().is_some_and(|c| c.knows_request(owner, name, req))
    }

    /// How many locks this node's clients hold (without listing them).
    pub fn held_count(&self) -> usize {
        self.client.held_count()
    }

    /// Whether the coordinator of this node's view has confirmed that it
    /// knows this node's locks.
    pub fn synced(&self) -> bool {
        self.client.synced()
    }

    /// Operations of this node's clients not yet finished.
    pub fn pending_ops(&self) -> usize {
        self.client.pending()
    }

    /// The coordinator's table: every held lock with holder and token.
    pub fn table(&self) -> Vec<(LockName, Owner, Token)> {
        self.coord.as_ref().map(Coordinator::holders).unwrap_or_default()
    }

    /// Size of the lock table, if this node coordinates.
    pub fn table_stats(&self) -> Option<TableStats> {
        self.coord.as_ref().map(Coordinator::table_stats)
    }

    /// Counters since the node started.
    pub fn stats(&self) -> Stats {
        self.out.stats
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets this node's tag: the terms it starts coordinating from now on
    /// carry it (a round already running keeps the tag it started with).
    pub fn set_tag(&mut self, tag: u16) {
        self.config.tag = tag;
    }
}
