//! The client role of CENTRAL_LOCK2: pending-reqs and client-locks.
//!
//! Rules that keep retransmission safe:
//! - a client has at most one request in flight per lock name; a second
//!   operation on that name waits here until the first is answered, so
//!   requests of one client on one name can never overtake each other;
//! - re-entry is local: a client that holds a lock gets it again at once,
//!   with the same token and a higher hold count, and only the last
//!   `unlock` goes to the coordinator;
//! - answers are applied only when they come from the coordinator of the
//!   current view, in the round this node last reported to it;
//! - a held lock is valid until its lease ends (`safe_until`, on this
//!   node's clock, from the stamp of the request or renewal the coordinator
//!   answered); a grant that arrives after that is not applied, and a lock
//!   whose lease ran out is dropped and reported lost.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use swimlock_wire::lock::{CancelReq, Denial, Hello, Renew, RenewAck, UnlockReq, Vouch};
use swimlock_wire::lock::{
    DuplicateLock, HeldLock, LockInfoReq, LockInfoRsp, LockMsg, LockOutcome, LockReq, LockRsp, UnlockRsp,
    VouchSeen, Wait,
};
use swimlock_wire::{ClientId, LockName, NodeId, ReqId, Token};

use crate::config::Config;
use crate::node::{Event, Failure, HeldInfo, LossReason, Outbox, UnlockError, View};
use crate::vouch::{OwnLeases, Records, witnesses};

/// Entries (held locks plus pending requests) in one LOCK-INFO-RSP part;
/// with names of at most 255 bytes a part stays far below a datagram.
const ENTRIES_PER_PART: usize = 32;

type Key = (ClientId, LockName);

#[derive(Clone, Debug)]
struct Held {
    token: Token,
    holds: u32,
    req: ReqId,
    /// The end of the lease, on this node's clock.
    safe_until: Duration,
}

/// The locks this node's clients hold, with their lease ends counted by
/// value, so that the earliest and the latest are found without a scan:
/// both are asked after every input, and a node may hold a million locks.
#[derive(Debug, Default)]
struct HeldLocks {
    locks: BTreeMap<Key, Held>,
    /// How many locks have each lease end.
    ends: BTreeMap<Duration, usize>,
}

impl HeldLocks {
    fn insert(&mut self, key: Key, held: Held) {
        *self.ends.entry(held.safe_until).or_default() += 1;
        if let Some(old) = self.locks.insert(key, held) {
            self.forget_end(old.safe_until);
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Held> {
        let held = self.locks.remove(key)?;
        self.forget_end(held.safe_until);
        Some(held)
    }

    fn forget_end(&mut self, end: Duration) {
        if let Some(n) = self.ends.get_mut(&end) {
            *n -= 1;
            if *n == 0 {
                self.ends.remove(&end);
            }
        }
    }

    fn get(&self, key: &Key) -> Option<&Held> {
        self.locks.get(key)
    }

    /// The hold count of a lock (its lease end is not changed here).
    fn holds_mut(&mut self, key: &Key) -> Option<&mut u32> {
        self.locks.get_mut(key).map(|h| &mut h.holds)
    }

    fn contains_key(&self, key: &Key) -> bool {
        self.locks.contains_key(key)
    }

    fn iter(&self) -> impl Iterator<Item = (&Key, &Held)> + '_ {
        self.locks.iter()
    }

    fn len(&self) -> usize {
        self.locks.len()
    }

    fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    fn earliest_end(&self) -> Option<Duration> {
        self.ends.first_key_value().map(|(t, _)| *t)
    }

    fn latest_end(&self) -> Option<Duration> {
        self.ends.last_key_value().map(|(t, _)| *t)
    }

    /// Moves every lease that ends before `until` to `until` (a renewal).
    fn extend_all(&mut self, until: Duration) {
        if self.earliest_end().is_none_or(|t| t >= until) {
            return;
        }
        for held in self.locks.values_mut() {
            held.safe_until = held.safe_until.max(until);
        }
        let later = self.ends.split_off(&until);
        let moved: usize = std::mem::replace(&mut self.ends, later).into_values().sum();
        *self.ends.entry(until).or_default() += moved;
    }

    fn take_all(&mut self) -> BTreeMap<Key, Held> {
        self.ends.clear();
        std::mem::take(&mut self.locks)
    }
}

#[derive(Clone, Debug)]
enum OpKind {
    /// `caller` is the id the caller was given and its events carry; the
    /// request's own id differs when it had to wait for an earlier one.
    Lock {
        caller: ReqId,
        wait: Wait,
        deadline: Duration,
        ticket: Option<Token>,
    },
    Unlock {
        token: Token,
    },
    Cancel {
        target: ReqId,
    },
}

/// A request in flight to the coordinator.
#[derive(Clone, Debug)]
struct Op {
    client: ClientId,
    name: LockName,
    kind: OpKind,
    next_send: Duration,
    backoff: Duration,
    sent: bool,
}

impl Op {
    fn queued(&self) -> bool {
        matches!(self.kind, OpKind::Lock { ticket: Some(_), .. })
    }

    /// The id the caller knows this operation by.
    fn caller(&self, id: ReqId) -> ReqId {
        match self.kind {
            OpKind::Lock { caller, .. } => caller,
            _ => id,
        }
    }
}

/// A lock operation waiting for the client's previous request on the same
/// name to be answered.
#[derive(Clone, Debug)]
struct Blocked {
    req: ReqId,
    wait: Wait,
    deadline: Duration,
}

/// This node's answer to one reconciliation round, kept so that repeats of
/// the request get the same snapshot.
#[derive(Clone, Debug)]
struct Snapshot {
    coordinator: NodeId,
    term: u32,
    parts: Vec<LockInfoRsp>,
}

/// The client role of one node, for all of its clients.
#[derive(Debug)]
pub(crate) struct ClientRole {
    me: NodeId,
    config: Config,
    next_req: u64,
    /// Highest term seen in tokens, tickets and rounds.
    max_term: u32,
    coordinator: Option<NodeId>,
    quorum: bool,
    /// The round this node last reported to, and its coordinator: the only
    /// source of answers it applies.
    round: Option<(NodeId, u32)>,
    /// Rounds answered so far; sent with every request.
    syncs: u64,
    /// A HELLO to the coordinator of the view, until it answers: when to
    /// send it next, and the backoff.
    hello: Option<(Duration, Duration)>,
    held: HeldLocks,
    ops: BTreeMap<ReqId, Op>,
    busy: BTreeMap<Key, ReqId>,
    blocked: BTreeMap<Key, VecDeque<Blocked>>,
    snapshot: Option<Snapshot>,
    /// When to renew the leases next (while any lock is held).
    renew_at: Duration,
    /// The coordinator of the last round answered, and until when its own
    /// clients may hold locks under a previous coordinator's leases.
    coordinator_linger: Option<(NodeId, Duration)>,
    /// As coordinator: how far witnesses vouched for its own clients'
    /// leases (see [`crate::vouch`]).
    own: OwnLeases,
    /// As witness: the vouches received.
    records: Records,
    /// The digest of the current view, and whether this node witnesses
    /// its coordinator's vouches.
    view_digest: u64,
    witness: bool,
}

impl ClientRole {
    pub fn new(me: NodeId, config: Config) -> ClientRole {
        ClientRole {
            me,
            config,
            next_req: 1,
            max_term: 0,
            coordinator: None,
            quorum: true,
            round: None,
            syncs: 0,
            hello: None,
            held: HeldLocks::default(),
            ops: BTreeMap::new(),
            busy: BTreeMap::new(),
            blocked: BTreeMap::new(),
            snapshot: None,
            renew_at: Duration::ZERO,
            coordinator_linger: None,
            own: OwnLeases::default(),
            records: Records::default(),
            view_digest: 0,
            witness: false,
        }
    }

    /// This node's record of `coordinator`'s last vouch in `view`.
    pub fn vouch_seen(&self, coordinator: NodeId, view: u64) -> Option<Duration> {
        self.records.seen_in(coordinator, view)
    }

    /// Until when the clients of `coordinator` (which this node answered)
    /// may hold locks under leases a previous coordinator renewed.
    pub fn linger_of(&self, coordinator: NodeId) -> Option<Duration> {
        self.coordinator_linger.filter(|(c, _)| *c == coordinator).map(|(_, t)| t)
    }

    /// The end of the longest lease held now (this node's clients).
    pub fn longest_lease(&self) -> Option<Duration> {
        self.held.latest_end()
    }

    /// The lease a grant or renewal from `coordinator` gives: short when
    /// this node coordinates itself (see [`Config::own_lease`]).
    fn lease_from(&self, coordinator: NodeId) -> Duration {
        if coordinator == self.me { self.config.own_lease } else { self.config.lease }
    }

    /// Drops every lock whose lease has ended: its client is told, and the
    /// coordinator is asked to release it (it may still count it).
    pub fn expire(&mut self, now: Duration, out: &mut Outbox) {
        if self.held.earliest_end().is_none_or(|t| t > now) {
            return;
        }
        let expired: Vec<(Key, Token)> = self
            .held
            .iter()
            .filter(|(_, h)| h.safe_until <= now)
            .map(|(k, h)| (k.clone(), h.token))
            .collect();
        for (key, token) in expired {
            self.held.remove(&key);
            out.stats.lost += 1;
            out.emit(Event::Lost {
                client: key.0,
                name: key.1.clone(),
                token,
                reason: LossReason::LeaseExpired,
            });
            if !self.busy.contains_key(&key) {
                self.start_release(now, key, token);
            }
        }
        self.flush(now, out);
    }

    pub fn max_term(&self) -> u32 {
        self.max_term
    }

    pub fn observe_term(&mut self, term: u32) {
        self.max_term = self.max_term.max(term);
    }

    fn alloc(&mut self) -> ReqId {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        id
    }

    /// LOCK(X): starts a lock operation and returns its id.
    pub fn lock(
        &mut self,
        now: Duration,
        client: ClientId,
        name: LockName,
        wait: Wait,
        deadline: Duration,
        out: &mut Outbox,
    ) -> ReqId {
        let req = self.alloc();
        if !self.quorum && wait == Wait::No && !self.held.contains_key(&(client, name.clone())) {
            self.fail(req, client, name, Failure::NoQuorum, out);
            return req;
        }
        self.start_lock(now, req, req, client, name, wait, deadline, out);
        self.flush(now, out);
        req
    }

    /// Starts lock request `id` for the caller's `req`, unless an earlier
    /// request of the client on that name is still in flight.
    #[allow(clippy::too_many_arguments)]
    fn start_lock(
        &mut self,
        now: Duration,
        id: ReqId,
        req: ReqId,
        client: ClientId,
        name: LockName,
        wait: Wait,
        deadline: Duration,
        out: &mut Outbox,
    ) {
        let key = (client, name);
        if self.busy.contains_key(&key) {
            self.blocked.entry(key).or_default().push_back(Blocked { req, wait, deadline });
            return;
        }
        if let Some(holds) = self.held.holds_mut(&key) {
            *holds += 1;
            out.stats.acquired += 1;
            let held = self.held.get(&key).expect("held above");
            let (token, holds, safe_until) = (held.token, held.holds, held.safe_until);
            let (client, name) = key;
            out.emit(Event::Acquired { req, client, name, token, holds, safe_until });
            return;
        }
        let kind = OpKind::Lock { caller: req, wait, deadline, ticket: None };
        self.insert_op(now, id, key, kind);
    }

    fn insert_op(&mut self, now: Duration, id: ReqId, key: Key, kind: OpKind) {
        self.busy.insert(key.clone(), id);
        let (client, name) = key;
        let backoff = self.config.retransmit_initial;
        self.ops.insert(id, Op { client, name, kind, next_send: now, backoff, sent: false });
    }

    /// UNLOCK(X): drops one hold; the last one is released at the
    /// coordinator without making the caller wait.
    pub fn unlock(
        &mut self,
        now: Duration,
        client: ClientId,
        name: &LockName,
        out: &mut Outbox,
    ) -> Result<(), UnlockError> {
        let key = (client, name.clone());
        let holds = self.held.holds_mut(&key).ok_or(UnlockError::NotHeld)?;
        if *holds > 1 {
            *holds -= 1;
            return Ok(());
        }
        let token = self.held.remove(&key).expect("held above").token;
        self.start_release(now, key, token);
        self.flush(now, out);
        Ok(())
    }

    fn start_release(&mut self, now: Duration, key: Key, token: Token) {
        let id = self.alloc();
        self.insert_op(now, id, key, OpKind::Unlock { token });
    }

    /// Releases everything of a client that went away: its locks, its
    /// pending lock requests and the operations queued behind them.
    pub fn release_client(&mut self, now: Duration, client: ClientId, out: &mut Outbox) {
        let held: Vec<(Key, Token)> =
            self.held.iter().filter(|((c, _), _)| *c == client).map(|(k, h)| (k.clone(), h.token)).collect();
        for (key, token) in held {
            self.held.remove(&key);
            self.start_release(now, key, token);
        }
        self.blocked.retain(|(c, _), _| *c != client);
        let locks: Vec<ReqId> = self
            .ops
            .iter()
            .filter(|(_, op)| op.client == client && matches!(op.kind, OpKind::Lock { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in locks {
            self.cancel(now, id);
        }
        self.flush(now, out);
    }

    /// Withdraws lock request `id` at the coordinator.
    fn cancel(&mut self, now: Duration, id: ReqId) {
        let Some(op) = self.ops.remove(&id) else { return };
        let cancel = self.alloc();
        self.insert_op(now, cancel, (op.client, op.name), OpKind::Cancel { target: id });
    }

    fn fail(&mut self, req: ReqId, client: ClientId, name: LockName, reason: Failure, out: &mut Outbox) {
        match reason {
            Failure::Busy => out.stats.busy += 1,
            Failure::TimedOut => out.stats.timed_out += 1,
            Failure::NoQuorum => out.stats.no_quorum += 1,
        }
        out.emit(Event::Failed { req, client, name, reason });
    }

    /// A new view: follow its coordinator and, in majority mode, give up
    /// the locks of a component that lost its majority.
    pub fn on_view(&mut self, now: Duration, view: &View, quorum: bool, out: &mut Outbox) {
        let coordinator = view.coordinator();
        if coordinator != self.coordinator {
            for op in self.ops.values_mut() {
                op.next_send = now;
                op.backoff = self.config.retransmit_initial;
            }
            // The new coordinator may hold a stale copy of this node's locks
            // (it never saw this node leave); it must hear from us.
            self.hello = coordinator.map(|_| (now, self.config.retransmit_initial));
            // Leases are renewed by the new coordinator from now on, at its
            // pace (a coordinator renews its own clients' more often).
            self.renew_at = now;
        }
        self.coordinator = coordinator;
        self.view_digest = view.digest();
        let witnesses = witnesses(&view.members);
        self.witness = witnesses.contains(&self.me);
        if coordinator == Some(self.me) {
            self.own.on_view(now, self.view_digest, witnesses);
            if self.own.owed() {
                self.renew_at = now;
            }
        } else {
            self.own.on_view(now, self.view_digest, &[]);
            self.own.cease();
        }
        if self.quorum && !quorum {
            self.lose_all(now, LossReason::QuorumLost, out);
            let tries: Vec<ReqId> = self
                .ops
                .iter()
                .filter(|(_, op)| matches!(op.kind, OpKind::Lock { wait: Wait::No, .. }))
                .map(|(id, _)| *id)
                .collect();
            for id in tries {
                let op = self.ops[&id].clone();
                self.fail(op.caller(id), op.client, op.name, Failure::NoQuorum, out);
                self.cancel(now, id);
            }
        }
        self.quorum = quorum;
        self.flush(now, out);
    }

    /// Every held lock is lost; each is still released at the coordinator,
    /// so that a table that kept it does not keep it forever.
    fn lose_all(&mut self, now: Duration, reason: LossReason, out: &mut Outbox) {
        for ((client, name), held) in self.held.take_all() {
            out.stats.lost += 1;
            out.emit(Event::Lost { client, name: name.clone(), token: held.token, reason });
            self.start_release(now, (client, name), held.token);
        }
    }

    /// Expires deadlines and (re)sends what is due.
    pub fn handle_timeout(&mut self, now: Duration, out: &mut Outbox) {
        let expired: Vec<ReqId> = self
            .ops
            .iter()
            .filter(|(_, op)| matches!(op.kind, OpKind::Lock { deadline, .. } if deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        // A wait that ends while this node's side holds no majority ended
        // for that reason: the client is told so, not just "timed out".
        let why = if self.quorum { Failure::TimedOut } else { Failure::NoQuorum };
        for id in expired {
            let op = self.ops[&id].clone();
            self.fail(op.caller(id), op.client, op.name, why, out);
            self.cancel(now, id);
        }
        let mut timed_out = Vec::new();
        for ((client, name), queue) in self.blocked.iter_mut() {
            queue.retain(|b| {
                let keep = b.deadline > now;
                if !keep {
                    timed_out.push((b.req, *client, name.clone()));
                }
                keep
            });
        }
        self.blocked.retain(|_, q| !q.is_empty());
        for (req, client, name) in timed_out {
            self.fail(req, client, name, why, out);
        }
        self.flush(now, out);
    }

    /// Sends every request that is due to the coordinator of the view.
    fn flush(&mut self, now: Duration, out: &mut Outbox) {
        let Some(coordinator) = self.coordinator else { return };
        if !self.quorum {
            return;
        }
        if let Some((next, backoff)) = self.hello.as_mut()
            && *next <= now
        {
            *next = now + *backoff;
            *backoff = (*backoff * 2).min(self.config.retransmit_max);
            out.send(coordinator, LockMsg::Hello(Hello { sync: self.syncs }));
        }
        if self.renewal_wanted() && self.renew_at <= now {
            self.renew_at = now + self.config.renew_interval(coordinator == self.me);
            if coordinator == self.me {
                let (vouch, to) = self.own.vouch(now, stamp(now), &self.config);
                for node in to {
                    out.send(node, LockMsg::Vouch(vouch));
                }
            }
            if !self.own.witnessed() && !self.held.is_empty() {
                out.send(coordinator, LockMsg::Renew(Renew { stamp: stamp(now), sync: self.syncs }));
            }
        }
        let floor = self.floor();
        let sync = self.syncs;
        for (id, op) in self.ops.iter_mut() {
            if op.next_send > now {
                continue;
            }
            if op.sent {
                out.stats.retransmissions += 1;
            }
            op.sent = true;
            let msg = request(*id, op, floor, sync, stamp(now));
            if op.queued() {
                op.next_send = now + self.config.queued_keepalive;
            } else {
                op.next_send = now + op.backoff;
                op.backoff = (op.backoff * 2).min(self.config.retransmit_max);
            }
            out.send(coordinator, msg);
        }
    }

    /// Every request below this id, other than queued lock requests, is
    /// finished here.
    fn floor(&self) -> ReqId {
        self.ops.iter().find(|(_, op)| !op.queued()).map(|(id, _)| *id).unwrap_or(ReqId(self.next_req))
    }

    /// Whether leases need renewing: locks are held or, as a coordinator
    /// whose own leases are witnessed, may be granted soon (any request in
    /// flight: cheaper to ask than which kind), or a witness has no record
    /// of this view yet.
    fn renewal_wanted(&self) -> bool {
        !self.held.is_empty() || self.own.owed() || (self.own.witnessed() && !self.ops.is_empty())
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        let sends = if self.coordinator.is_some() && self.quorum {
            let renew = self.renewal_wanted().then_some(self.renew_at);
            self.ops
                .values()
                .map(|op| op.next_send)
                .chain(self.hello.map(|(next, _)| next))
                .chain(renew)
                .min()
        } else {
            None
        };
        let leases = self.held.earliest_end();
        let deadlines = self.ops.values().filter_map(|op| match op.kind {
            OpKind::Lock { deadline, .. } => Some(deadline),
            _ => None,
        });
        let blocked = self.blocked.values().flat_map(|q| q.iter().map(|b| b.deadline));
        sends.into_iter().chain(leases).chain(deadlines).chain(blocked).min()
    }

    /// A message from another node's coordinator role (or from this node's).
    pub fn on_message(&mut self, now: Duration, from: NodeId, msg: LockMsg, out: &mut Outbox) {
        // A coordinator's term is worth knowing whether or not its message
        // applies: a later coordinator of ours then takes a higher one.
        // (A round's own LOCK-INFO-REQ is learned after the answer to it is
        // built: the answer must say whether the member saw that term
        // elsewhere.)
        if let Some(term) = msg.term().filter(|_| !matches!(msg, LockMsg::LockInfoReq(_))) {
            self.observe_term(term);
        }
        match msg {
            LockMsg::LockRsp(rsp) => self.on_lock_rsp(now, from, rsp, out),
            LockMsg::UnlockRsp(rsp) => self.on_unlock_rsp(now, from, rsp, out),
            LockMsg::Redirect(_) => out.stats.dropped += 1,
            LockMsg::LockInfoReq(req) => self.on_lock_info_req(now, from, req, None, out),
            LockMsg::DuplicateLock(dup) => self.on_duplicate_lock(from, dup, out),
            LockMsg::HelloAck(ack) => {
                if self.accepts(from, ack.term) {
                    self.hello = None;
                }
            }
            LockMsg::RenewAck(ack) => self.on_renew_ack(now, from, ack, out),
            LockMsg::Vouch(vouch) => self.on_vouch(now, from, vouch, out),
            LockMsg::Vouched(vouch) => self.on_vouched(now, from, vouch, out),
            _ => out.stats.dropped += 1,
        }
    }

    /// The coordinator renewed every lock this node held when it sent the
    /// renewal (or reconciliation answer) stamped `ack.stamp`.
    fn on_renew_ack(&mut self, now: Duration, from: NodeId, ack: RenewAck, out: &mut Outbox) {
        if !self.accepts(from, ack.term) {
            out.stats.dropped += 1;
            return;
        }
        let until = Duration::from_micros(ack.stamp) + self.lease_from(from);
        if until <= now {
            return;
        }
        self.held.extend_all(until);
    }

    /// A vouch of a coordinator: recorded, and acknowledged if it is this
    /// node's coordinator, in the same view, and this node witnesses it.
    fn on_vouch(&mut self, now: Duration, from: NodeId, vouch: Vouch, out: &mut Outbox) {
        self.records.record(now, from, vouch, &self.config);
        if self.witness && self.coordinator == Some(from) && vouch.view == self.view_digest {
            out.send(from, LockMsg::Vouched(vouch));
        }
    }

    /// A witness acknowledged this node's vouch (the node coordinates and
    /// is not holding still: see `LockNode::dispatch`): own leases run on
    /// from its stamp, and own lock requests answered while no
    /// acknowledged vouch covered them are asked again.
    fn on_vouched(&mut self, now: Duration, from: NodeId, vouch: Vouch, out: &mut Outbox) {
        let lapsed = self.own.cap().is_some_and(|t| t <= now);
        match self.own.on_vouched(from, vouch, &self.config) {
            Some(until) if until > now => self.held.extend_all(until),
            Some(_) => return,
            None => {
                out.stats.dropped += 1;
                return;
            }
        }
        if lapsed {
            for op in self.ops.values_mut().filter(|op| matches!(op.kind, OpKind::Lock { .. })) {
                op.next_send = op.next_send.min(now);
            }
            self.flush(now, out);
        }
    }

    /// Whether an answer of `from` in round `term` may be applied.
    fn accepts(&self, from: NodeId, term: u32) -> bool {
        self.coordinator == Some(from) && self.round == Some((from, term))
    }

    /// On reception of a LOCK-RSP(X).
    fn on_lock_rsp(&mut self, now: Duration, from: NodeId, rsp: LockRsp, out: &mut Outbox) {
        let applies = self.accepts(from, rsp.term)
            && self.ops.get(&rsp.id).is_some_and(|op| matches!(op.kind, OpKind::Lock { .. }));
        if !applies {
            out.stats.dropped += 1;
            return;
        }
        match rsp.outcome {
            LockOutcome::Granted(token) => {
                self.observe_term(token.term());
                let mut safe_until = Duration::from_micros(rsp.stamp) + self.lease_from(from);
                if from == self.me
                    && let Some(cap) = self.own.cap()
                {
                    safe_until = safe_until.min(cap);
                    if safe_until <= now {
                        // No witness vouched lately: asked again once one
                        // does (a vouch is due, since a lock is wanted).
                        if let Some(op) = self.ops.get_mut(&rsp.id) {
                            op.next_send = now + self.config.retransmit_max;
                        }
                        self.flush(now, out);
                        return;
                    }
                }
                if safe_until <= now {
                    // The lease of this answer ran out before it arrived (a
                    // paused node, a very late copy): not applied. The repeat
                    // is answered with the same grant and a fresh stamp.
                    out.stats.stale_grants += 1;
                    if let Some(op) = self.ops.get_mut(&rsp.id) {
                        op.next_send = now;
                    }
                    self.flush(now, out);
                    return;
                }
                let op = self.ops.remove(&rsp.id).expect("checked above");
                let caller = op.caller(rsp.id);
                let key = (op.client, op.name);
                self.busy.remove(&key);
                self.held.insert(key.clone(), Held { token, holds: 1, req: rsp.id, safe_until });
                if self.held.len() == 1 && !self.own.witnessed() {
                    self.renew_at = now + self.config.renew_interval(from == self.me);
                }
                out.stats.acquired += 1;
                let (client, name) = key.clone();
                out.emit(Event::Acquired { req: caller, client, name, token, holds: 1, safe_until });
                self.unblock(now, key, out);
            }
            LockOutcome::Queued(ticket) => {
                self.observe_term(ticket.term());
                let op = self.ops.get_mut(&rsp.id).expect("checked above");
                if let OpKind::Lock { ticket: t, .. } = &mut op.kind {
                    *t = Some(ticket);
                }
                op.next_send = now + self.config.queued_keepalive;
            }
            LockOutcome::Denied(denial) => {
                let reason = match denial {
                    Denial::Held => Failure::Busy,
                    Denial::NoQuorum => Failure::NoQuorum,
                    Denial::Cancelled => {
                        // Only a withdrawn request gets this; a live one never does.
                        out.stats.dropped += 1;
                        return;
                    }
                };
                let op = self.ops.remove(&rsp.id).expect("checked above");
                let caller = op.caller(rsp.id);
                let key = (op.client, op.name);
                self.busy.remove(&key);
                self.fail(caller, key.0, key.1.clone(), reason, out);
                self.unblock(now, key, out);
            }
        }
    }

    /// On reception of an UNLOCK-RSP(X) (which also answers a cancel).
    fn on_unlock_rsp(&mut self, now: Duration, from: NodeId, rsp: UnlockRsp, out: &mut Outbox) {
        let applies = self.accepts(from, rsp.term)
            && self.ops.get(&rsp.id).is_some_and(|op| !matches!(op.kind, OpKind::Lock { .. }));
        if !applies {
            out.stats.dropped += 1;
            return;
        }
        let op = self.ops.remove(&rsp.id).expect("checked above");
        let key = (op.client, op.name);
        self.busy.remove(&key);
        self.unblock(now, key, out);
    }

    /// Starts the operations that waited for the name to be free of
    /// requests in flight.
    fn unblock(&mut self, now: Duration, key: Key, out: &mut Outbox) {
        while !self.busy.contains_key(&key) {
            let Some(queue) = self.blocked.get_mut(&key) else { break };
            let Some(next) = queue.pop_front() else {
                self.blocked.remove(&key);
                break;
            };
            if queue.is_empty() {
                self.blocked.remove(&key);
            }
            // A new id: a coordinator that reconciled with this node since
            // the caller asked takes ids below its report as finished.
            let id = self.alloc();
            self.start_lock(now, id, next.req, key.0, key.1.clone(), next.wait, next.deadline, out);
        }
        self.flush(now, out);
    }

    /// On reception of LOCK-INFO-REQ: answer with the locks held and the
    /// lock requests pending, as one snapshot per round. Only the
    /// coordinator of this node's view is answered: once a pending request
    /// is reported to a coordinator, only that coordinator may grant it.
    ///
    /// `unreported` bounds the leases of members this node served as
    /// coordinator that left its view (see [`LockInfoRsp::unreported_ms`]).
    pub fn on_lock_info_req(
        &mut self,
        now: Duration,
        from: NodeId,
        req: LockInfoReq,
        unreported: Option<Duration>,
        out: &mut Outbox,
    ) {
        let stale = self.round.is_some_and(|(c, t)| c == from && req.term < t);
        if self.coordinator != Some(from) || stale {
            // A coordinator's rounds only move forward: an older request is
            // a late copy. Its term is still worth knowing.
            self.observe_term(req.term);
            out.stats.dropped += 1;
            return;
        }
        let fresh = !matches!(&self.snapshot, Some(s) if s.coordinator == from && s.term == req.term);
        self.hello = None;
        let linger = now + Duration::from_millis(u64::from(req.linger_ms));
        let known = self.coordinator_linger.filter(|(c, _)| *c == from).map(|(_, t)| t);
        self.coordinator_linger = Some((from, known.map_or(linger, |t| t.min(linger))));
        if fresh {
            self.syncs += 1;
            let vouch = req.vouch_of.and_then(|c| self.records.seen(c));
            let left = unreported.map_or(0, |t| t.saturating_sub(now).as_micros().div_ceil(1_000));
            let unreported_ms = u32::try_from(left).unwrap_or(u32::MAX);
            let parts = self.build_report(req.term, stamp(now), vouch, unreported_ms);
            self.snapshot = Some(Snapshot { coordinator: from, term: req.term, parts });
            self.observe_term(req.term);
            self.round = Some((from, req.term));
        }
        let snapshot = self.snapshot.as_ref().expect("set above");
        let have: std::collections::BTreeSet<u16> = req.have.iter().copied().collect();
        let missing = snapshot.parts.iter().filter(|p| !have.contains(&p.part));
        for part in missing.take(crate::config::REPORT_WINDOW_PARTS) {
            out.send(from, LockMsg::LockInfoRsp(part.clone()));
        }
    }

    fn build_report(
        &self,
        term: u32,
        stamp: u64,
        vouch: Option<VouchSeen>,
        unreported_ms: u32,
    ) -> Vec<LockInfoRsp> {
        enum Entry {
            Held(HeldLock),
            Pending(LockReq),
        }
        let held = self.held.iter().map(|((client, name), h)| {
            Entry::Held(HeldLock { client: *client, name: name.clone(), token: h.token, req: h.req })
        });
        let pending = self.ops.iter().filter_map(|(id, op)| match op.kind {
            OpKind::Lock { wait, ticket, .. } => Some(Entry::Pending(LockReq {
                id: *id,
                client: op.client,
                name: op.name.clone(),
                wait,
                ticket,
                floor: ReqId(0),
                sync: 0,
                stamp,
            })),
            _ => None,
        });
        let entries: Vec<Entry> = held.chain(pending).collect();
        let chunks: Vec<&[Entry]> =
            if entries.is_empty() { vec![&[]] } else { entries.chunks(ENTRIES_PER_PART).collect() };
        let parts = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
        chunks
            .into_iter()
            .take(usize::from(parts))
            .enumerate()
            .map(|(i, chunk)| {
                let mut rsp = LockInfoRsp {
                    term,
                    part: i as u16,
                    parts,
                    next_req: ReqId(self.next_req),
                    max_term: self.max_term,
                    sync: self.syncs,
                    stamp,
                    held: Vec::new(),
                    pending: Vec::new(),
                    vouch,
                    unreported_ms,
                };
                for e in chunk {
                    match e {
                        Entry::Held(h) => rsp.held.push(h.clone()),
                        Entry::Pending(p) => rsp.pending.push(p.clone()),
                    }
                }
                rsp
            })
            .collect()
    }

    /// On reception of DUPLICATE-LOCK(X): the lock is lost; tell the
    /// application. Acknowledged so the coordinator stops repeating it,
    /// unless the answer granting the lost lock is still on its way: then a
    /// repeat after that answer will take the lock away.
    fn on_duplicate_lock(&mut self, from: NodeId, dup: DuplicateLock, out: &mut Outbox) {
        if self.coordinator != Some(from) {
            // Not acknowledged: the sender repeats it once views agree.
            out.stats.dropped += 1;
            return;
        }
        if self.round == Some((from, dup.term)) {
            let key = (dup.client, dup.name.clone());
            if self.held.get(&key).is_some_and(|h| h.token == dup.token) {
                self.held.remove(&key);
                out.stats.lost += 1;
                out.emit(Event::Lost {
                    client: dup.client,
                    name: dup.name.clone(),
                    token: dup.token,
                    reason: LossReason::Duplicate,
                });
            } else if self.ops.get(&dup.req).is_some_and(|op| matches!(op.kind, OpKind::Lock { .. })) {
                return;
            }
        }
        out.send(from, LockMsg::DuplicateAck(dup));
    }

    /// Locks held by this node's clients.
    pub fn held(&self) -> impl Iterator<Item = HeldInfo> + '_ {
        self.held.iter().map(|((client, name), h)| HeldInfo {
            client: *client,
            name: name.clone(),
            token: h.token,
            holds: h.holds,
            safe_until: h.safe_until,
        })
    }

    /// When `client`'s hold of `name` stops being safe to use, if it holds it.
    pub fn safe_until(&self, client: ClientId, name: &LockName) -> Option<Duration> {
        self.held.get(&(client, name.clone())).map(|h| h.safe_until)
    }

    /// How many times `client` holds `name` (0: not at all).
    pub fn holds(&self, client: ClientId, name: &LockName) -> u32 {
        self.held.get(&(client, name.clone())).map_or(0, |h| h.holds)
    }

    /// Lock requests in flight to the coordinator: id, client, name.
    pub fn pending_locks(&self) -> impl Iterator<Item = (ReqId, ClientId, &LockName)> + '_ {
        self.ops.iter().filter_map(|(id, op)| match op.kind {
            OpKind::Lock { .. } => Some((*id, op.client, &op.name)),
            _ => None,
        })
    }

    /// Ids of the try_lock requests in flight to the coordinator.
    pub fn pending_try_locks(&self) -> impl Iterator<Item = ReqId> + '_ {
        let try_lock = |op: &Op| matches!(op.kind, OpKind::Lock { wait: Wait::No, .. });
        self.ops.iter().filter(move |(_, op)| try_lock(op)).map(|(id, _)| *id)
    }

    /// Releases and cancels in flight to the coordinator.
    pub fn pending_releases(&self) -> usize {
        self.ops.values().filter(|op| !matches!(op.kind, OpKind::Lock { .. })).count()
    }

    /// Number of locks held by this node's clients.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Whether the coordinator of the view has confirmed it knows this
    /// node's locks (this node answered its round, or it acknowledged).
    pub fn synced(&self) -> bool {
        self.hello.is_none()
    }

    /// Number of operations not yet finished (in flight or queued locally).
    pub fn pending(&self) -> usize {
        self.ops.len() + self.blocked.values().map(VecDeque::len).sum::<usize>()
    }
}

/// `now` as a stamp: microseconds of this node's clock.
fn stamp(now: Duration) -> u64 {
    u64::try_from(now.as_micros()).unwrap_or(u64::MAX)
}

fn request(id: ReqId, op: &Op, floor: ReqId, sync: u64, stamp: u64) -> LockMsg {
    let (client, name) = (op.client, op.name.clone());
    match op.kind {
        OpKind::Lock { wait, ticket, .. } => {
            LockMsg::Lock(LockReq { id, sync, client, name, wait, ticket, floor, stamp })
        }
        OpKind::Unlock { token } => LockMsg::Unlock(UnlockReq { id, sync, client, name, token }),
        OpKind::Cancel { target } => LockMsg::Cancel(CancelReq { id, sync, client, name, target }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(end_ms: u64) -> Held {
        Held { token: Token(1), holds: 1, req: ReqId(1), safe_until: Duration::from_millis(end_ms) }
    }

    fn key(i: u64) -> Key {
        (ClientId(i % 3), LockName::new(format!("l{i}")).unwrap())
    }

    /// The counted lease ends always agree with a scan of the locks, through
    /// inserts, replacements, removals and renewals.
    #[test]
    fn lease_ends_follow_the_locks() {
        let mut locks = HeldLocks::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..5_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = key(x % 40);
            match x % 7 {
                0..=2 => locks.insert(k, held(step + x % 500)),
                3 | 4 => {
                    locks.remove(&k);
                }
                5 => locks.extend_all(Duration::from_millis(step + x % 300)),
                _ => {
                    if let Some(h) = locks.holds_mut(&k) {
                        *h += 1;
                    }
                }
            }
            let ends: Vec<Duration> = locks.iter().map(|(_, h)| h.safe_until).collect();
            assert_eq!(locks.earliest_end(), ends.iter().min().copied(), "step {step}");
            assert_eq!(locks.latest_end(), ends.iter().max().copied(), "step {step}");
            assert_eq!(locks.ends.values().sum::<usize>(), locks.len(), "step {step}");
        }
    }

    #[test]
    fn a_renewal_moves_only_the_leases_that_end_sooner() {
        let mut locks = HeldLocks::default();
        locks.insert(key(1), held(100));
        locks.insert(key(2), held(300));
        locks.extend_all(Duration::from_millis(200));
        assert_eq!(locks.get(&key(1)).unwrap().safe_until, Duration::from_millis(200));
        assert_eq!(locks.get(&key(2)).unwrap().safe_until, Duration::from_millis(300));
        assert_eq!(locks.earliest_end(), Some(Duration::from_millis(200)));
        assert_eq!(locks.take_all().len(), 2);
        assert_eq!(locks.earliest_end(), None);
    }
}
