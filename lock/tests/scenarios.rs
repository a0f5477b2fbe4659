//! Scenario tests of CENTRAL_LOCK2 (issue #2) on a small deterministic
//! network, in the style of raft-rs's harness: the fault verbs read like the
//! scenario, and each test cites the CENTRAL_LOCK2 step or the DESIGN
//! invariant it checks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroUsize;
use std::time::Duration;

use swimlock_lock::{ClientId, LockName, NodeId, Owner, ReqId, Token};
use swimlock_lock::{Config, Event, Failure, LockMsg, LockNode, LossReason, Mode, Notice, View};
use swimlock_wire::lock::{LockOutcome, LockRsp};

/// Upper bound on the steps of any loop of the harness, so a livelock fails
/// the test instead of hanging it.
const MAX_STEPS: usize = 100_000;

/// A predicate on a message in flight: `(from, to, msg)`.
type Pred = Box<dyn Fn(NodeId, NodeId, &LockMsg) -> bool>;

/// A drop rule: messages matching `pred` are dropped, `remaining` times
/// (`None`: until [`Net::heal`]).
struct Filter {
    pred: Pred,
    remaining: Option<usize>,
    /// Keep the dropped message in [`Net::delayed`] to deliver it later.
    delay: bool,
}

/// A deterministic network of [`LockNode`]s.
///
/// Messages are delivered in send order with no latency; time only moves in
/// [`Net::advance`], which fires timers in deadline order and delivers what
/// they send in between. Every transmit and event a node produces is drained
/// right after each input, as the calling convention asks.
struct Net {
    /// The nodes, crashed ones included (they get no input any more).
    nodes: BTreeMap<NodeId, LockNode>,
    /// Simulated time.
    now: Duration,
    /// Messages sent and not yet delivered or dropped, oldest first.
    inflight: VecDeque<(NodeId, NodeId, LockMsg)>,
    /// Drop rules, checked in order on every delivery.
    filters: Vec<Filter>,
    /// Directed links that drop everything.
    cuts: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that no longer run.
    crashed: BTreeSet<NodeId>,
    /// Application events per node, not yet taken by [`Net::events`]
    /// (`TermStarted` goes to `terms` instead).
    events: BTreeMap<NodeId, Vec<Event>>,
    /// Highest term each node announced with `Event::TermStarted`.
    terms: BTreeMap<NodeId, u32>,
    /// Messages held back by [`Net::delay_next`], for [`Net::release_delayed`].
    delayed: Vec<(NodeId, NodeId, LockMsg)>,
    /// The last [`LOG_LEN`] messages delivered, for replays.
    log: VecDeque<(NodeId, NodeId, LockMsg)>,
    /// Source of view ids.
    next_view: u64,
}

/// How many delivered messages [`Net`] keeps for replays.
const LOG_LEN: usize = 256;

/// The identity of the `i`-th node; a lower `i` is an older member.
fn id(i: u16) -> NodeId {
    NodeId { epoch: u64::from(i), addr: format!("10.0.0.{i}:7946").parse().unwrap() }
}

fn name(s: &str) -> LockName {
    LockName::new(s).unwrap()
}

const C1: ClientId = ClientId(1);
const C2: ClientId = ClientId(2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Net {
    /// `n` nodes `id(1)..=id(n)` with `Config::lan(i)` changed by `tune`, all
    /// in one view, reconciled and serving (`id(1)` coordinates).
    fn new(n: u16, tune: impl Fn(&mut Config)) -> Net {
        let mut net = Net::without_view(n, tune);
        let all: Vec<NodeId> = net.nodes.keys().copied().collect();
        net.install_view(&all, false);
        // Long enough for the lock-delay grace of majority mode.
        net.advance(Duration::from_millis(2_500));
        assert!(net.node(id(1)).is_serving(), "setup: the oldest member serves");
        net
    }

    /// `n` nodes as in [`Net::new`] that have not seen any view yet.
    fn without_view(n: u16, tune: impl Fn(&mut Config)) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            now: Duration::ZERO,
            inflight: VecDeque::new(),
            filters: Vec::new(),
            cuts: BTreeSet::new(),
            crashed: BTreeSet::new(),
            events: BTreeMap::new(),
            terms: BTreeMap::new(),
            delayed: Vec::new(),
            log: VecDeque::new(),
            next_view: 1,
        };
        for i in 1..=n {
            let mut config = Config::lan(i);
            tune(&mut config);
            net.add(LockNode::new(id(i), config));
        }
        net
    }

    /// Adds a node (for example a restarted process).
    fn add(&mut self, node: LockNode) {
        self.crashed.remove(&node.id());
        self.nodes.insert(node.id(), node);
    }

    fn node(&self, id: NodeId) -> &LockNode {
        &self.nodes[&id]
    }

    /// Drains what `id` produced into the network and the event log.
    fn collect(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        while let Some(t) = node.poll_transmit() {
            self.inflight.push_back((id, t.to, t.msg));
        }
        while let Some(e) = node.poll_event() {
            match e {
                Event::TermStarted { term } => {
                    let t = self.terms.entry(id).or_default();
                    *t = (*t).max(term);
                }
                e => self.events.entry(id).or_default().push(e),
            }
        }
    }

    /// Runs `f` on node `id` at the current time, then drains its output.
    fn with<R>(&mut self, id: NodeId, f: impl FnOnce(&mut LockNode, Duration) -> R) -> R {
        assert!(!self.crashed.contains(&id), "{id} has crashed");
        let now = self.now;
        let r = f(self.nodes.get_mut(&id).unwrap(), now);
        self.collect(id);
        r
    }

    /// `lock(name, timeout)` by `client` of `id`, then delivers everything.
    fn lock(&mut self, id: NodeId, client: ClientId, lock: &str, timeout: Duration) -> ReqId {
        let r = self.with(id, |n, now| n.lock(now, client, name(lock), timeout));
        self.deliver_all();
        r
    }

    /// `try_lock(name)` by `client` of `id`, then delivers everything.
    fn try_lock(&mut self, id: NodeId, client: ClientId, lock: &str) -> ReqId {
        let r = self.with(id, |n, now| n.try_lock(now, client, name(lock)));
        self.deliver_all();
        r
    }

    /// `unlock(name)` by `client` of `id`, then delivers everything.
    fn unlock(&mut self, id: NodeId, client: ClientId, lock: &str) {
        self.with(id, |n, now| n.unlock(now, client, &name(lock))).expect("held");
        self.deliver_all();
    }

    /// Installs a view with `members` (sorted oldest first) on each live
    /// member, then delivers everything.
    fn install_view(&mut self, members: &[NodeId], merge: bool) {
        let mut sorted = members.to_vec();
        sorted.sort();
        for &m in &sorted {
            if self.crashed.contains(&m) {
                continue;
            }
            let view = View { id: self.next_view, members: sorted.clone(), merge, gossiped_term: 0 };
            self.next_view += 1;
            self.with(m, |n, now| n.handle_view(now, view));
        }
        self.deliver_all();
    }

    /// The node stops: it gets no input and its messages in flight are lost.
    fn crash(&mut self, id: NodeId) {
        self.crashed.insert(id);
        self.inflight.retain(|(f, t, _)| *f != id && *t != id);
    }

    /// Drops every message between `a` and `b`, both ways.
    fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cuts.insert((a, b));
        self.cuts.insert((b, a));
    }

    /// Cuts `a` off from every other node.
    fn isolate(&mut self, a: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|n| *n != a).collect();
        for b in others {
            self.cut(a, b);
        }
    }

    /// Cuts every link between `left` and `right` (a partition).
    fn partition(&mut self, left: &[NodeId], right: &[NodeId]) {
        for &a in left {
            for &b in right {
                self.cut(a, b);
            }
        }
    }

    /// Removes every cut and drop rule.
    fn heal(&mut self) {
        self.cuts.clear();
        self.filters.clear();
    }

    /// Drops the next message that matches `pred`.
    fn drop_next(&mut self, pred: impl Fn(NodeId, NodeId, &LockMsg) -> bool + 'static) {
        self.filters.push(Filter { pred: Box::new(pred), remaining: Some(1), delay: false });
    }

    /// Drops every message that matches `pred` until [`Net::heal`].
    fn drop_where(&mut self, pred: impl Fn(NodeId, NodeId, &LockMsg) -> bool + 'static) {
        self.filters.push(Filter { pred: Box::new(pred), remaining: None, delay: false });
    }

    /// Holds back the next message that matches `pred` (a reordering): it
    /// is delivered by [`Net::release_delayed`].
    fn delay_next(&mut self, pred: impl Fn(NodeId, NodeId, &LockMsg) -> bool + 'static) {
        self.filters.push(Filter { pred: Box::new(pred), remaining: Some(1), delay: true });
    }

    /// Delivers the messages held back by [`Net::delay_next`].
    fn release_delayed(&mut self) {
        let msgs = std::mem::take(&mut self.delayed);
        self.inject(msgs);
    }

    /// Copies of the messages in flight that match `pred` (to replay later
    /// with [`Net::inject`]).
    fn copy_where(&self, pred: impl Fn(NodeId, NodeId, &LockMsg) -> bool) -> Vec<(NodeId, NodeId, LockMsg)> {
        self.inflight.iter().filter(|(f, t, m)| pred(*f, *t, m)).cloned().collect()
    }

    /// Puts a message on the wire (a duplicate or a late copy).
    fn inject(&mut self, msgs: Vec<(NodeId, NodeId, LockMsg)>) {
        self.inflight.extend(msgs);
        self.deliver_all();
    }

    fn dropped(&mut self, from: NodeId, to: NodeId, msg: &LockMsg) -> bool {
        if self.cuts.contains(&(from, to)) || self.crashed.contains(&to) {
            return true;
        }
        for f in &mut self.filters {
            if f.remaining != Some(0) && (f.pred)(from, to, msg) {
                if let Some(r) = &mut f.remaining {
                    *r -= 1;
                }
                if f.delay {
                    self.delayed.push((from, to, msg.clone()));
                }
                return true;
            }
        }
        false
    }

    /// Delivers again a message delivered `back` deliveries ago (modulo
    /// the log), unless its receiver has crashed.
    fn replay(&mut self, back: usize) {
        if self.log.is_empty() {
            return;
        }
        let m = self.log[self.log.len() - 1 - back % self.log.len()].clone();
        self.inject(vec![m]);
    }

    /// Delivers messages in send order until none are in flight.
    fn deliver_all(&mut self) {
        for _ in 0..MAX_STEPS {
            let Some((from, to, msg)) = self.inflight.pop_front() else { return };
            if self.dropped(from, to, &msg) {
                continue;
            }
            let now = self.now;
            if self.log.len() == LOG_LEN {
                self.log.pop_front();
            }
            self.log.push_back((from, to, msg.clone()));
            self.nodes.get_mut(&to).unwrap().handle_message(now, from, msg);
            self.collect(to);
        }
        panic!("messages kept flowing for {MAX_STEPS} deliveries");
    }

    /// Moves time forward by `dur`, firing every timer that falls due in
    /// deadline order and delivering messages between timers.
    fn advance(&mut self, dur: Duration) {
        let end = self.now + dur;
        for _ in 0..MAX_STEPS {
            self.deliver_all();
            let live = self.nodes.iter().filter(|(id, _)| !self.crashed.contains(id));
            let next = live.filter_map(|(_, n)| n.poll_timeout()).min();
            let Some(next) = next.filter(|t| *t <= end) else {
                self.now = end;
                return;
            };
            self.now = self.now.max(next);
            let due: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(id, n)| !self.crashed.contains(id) && n.poll_timeout().is_some_and(|t| t <= next))
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                self.with(id, |n, now| n.handle_timeout(now));
            }
        }
        panic!("timers kept firing for {MAX_STEPS} steps");
    }

    /// When `id` first has an application event (checked now, then every
    /// 5 ms for at most a second); the events are taken.
    fn first_event_at(&mut self, id: NodeId) -> Option<Duration> {
        self.first_event_within(id, ms(5), Duration::from_secs(1))
    }

    /// As [`Net::first_event_at`], checking every `step` for at most `limit`.
    fn first_event_within(&mut self, id: NodeId, step: Duration, limit: Duration) -> Option<Duration> {
        let end = self.now + limit;
        while self.now <= end {
            if !self.events(id).is_empty() {
                return Some(self.now);
            }
            self.advance(step);
        }
        None
    }

    /// Takes the application events of `id` since the last call.
    fn events(&mut self, id: NodeId) -> Vec<Event> {
        self.events.remove(&id).unwrap_or_default()
    }

    /// The token of `id`'s grant to `req`, asserting the events of `id` are
    /// exactly that one grant.
    fn granted(&mut self, id: NodeId, req: ReqId, client: ClientId, lock: &str, holds: u32) -> Token {
        let events = self.events(id);
        match events.as_slice() {
            [Event::Acquired { req: r, client: c, name: n, token, holds: h, .. }]
                if *r == req && *c == client && *n == name(lock) && *h == holds =>
            {
                *token
            }
            other => panic!("{id}: expected one grant of {lock} to {req:?}, got {other:?}"),
        }
    }

    /// The coordinator table of `coord` as (lock, owner, token).
    fn table(&self, coord: NodeId) -> Vec<(LockName, Owner, Token)> {
        self.node(coord).table()
    }
}

fn owner(node: NodeId, client: ClientId) -> Owner {
    Owner { node, client }
}

fn is_lock_rsp(_: NodeId, _: NodeId, m: &LockMsg) -> bool {
    matches!(m, LockMsg::LockRsp(_))
}

// ---------------------------------------------------------------------------

/// CENTRAL_LOCK2 handleLock / LOCK(X) / handleUnlock: a free lock is granted,
/// try_lock on a held lock is denied, waiters are granted in FIFO order after
/// the holder unlocks, and tokens grow from grant to grant (invariants 1, 2).
#[test]
fn grant_busy_unlock_and_fifo_waiters() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |_| {});
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    let t1 = net.granted(b, rb, C1, "x", 1);
    assert_eq!(t1, Token::new(1, 1, 1), "first grant of term 1 by tag 1");

    let rc = net.try_lock(c, C1, "x");
    assert_eq!(
        net.events(c),
        vec![Event::Failed { req: rc, client: C1, name: name("x"), reason: Failure::Busy }]
    );

    let rc = net.lock(c, C1, "x", Duration::from_secs(5));
    let rd = net.lock(d, C1, "x", Duration::from_secs(5));
    assert!(net.events(c).is_empty() && net.events(d).is_empty(), "both wait");

    net.unlock(b, C1, "x");
    let t2 = net.granted(c, rc, C1, "x", 1);
    assert!(net.events(d).is_empty(), "the later waiter still waits");
    assert_eq!(net.table(a), vec![(name("x"), owner(c, C1), t2)]);

    net.unlock(c, C1, "x");
    let t3 = net.granted(d, rd, C1, "x", 1);
    assert!(t1 < t2 && t2 < t3, "tokens strictly increase: {t1} {t2} {t3}");
    net.unlock(d, C1, "x");
    assert!(net.table(a).is_empty());
}

/// DESIGN Lock semantics (re-entry): the same owner gets the same token and a
/// hold count; only the last unlock releases the lock at the coordinator. Two
/// clients of one node exclude each other.
#[test]
fn reentry_counts_holds_and_only_the_last_unlock_releases() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(3, |_| {});
    let r1 = net.lock(b, C1, "x", Duration::from_secs(5));
    let t = net.granted(b, r1, C1, "x", 1);
    let r2 = net.lock(b, C1, "x", Duration::from_secs(5));
    assert_eq!(net.granted(b, r2, C1, "x", 2), t, "re-entry keeps the token");

    let other = net.lock(b, C2, "x", Duration::from_secs(5));
    assert!(net.events(b).is_empty(), "another client of the same node waits");

    net.unlock(b, C1, "x");
    net.advance(ms(100));
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), t)], "one hold left: still held");
    assert!(net.events(b).is_empty());

    net.unlock(b, C1, "x");
    let t2 = net.granted(b, other, C2, "x", 1);
    assert!(t2 > t);
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C2), t2)]);
}

/// BecomeCoord / ReconciliationProtocol after a coordinator crash: the next
/// oldest member reconciles; held locks keep their tokens (invariant 4);
/// queued waiters keep their ticket order, not report order (invariant 8);
/// new tokens exceed every old one (invariant 2).
#[test]
fn coordinator_crash_keeps_held_locks_and_waiter_order() {
    let (a, b, c, d, e) = (id(1), id(2), id(3), id(4), id(5));
    let mut net = Net::new(5, |_| {});
    let rx = net.lock(c, C1, "x", Duration::from_secs(30));
    let tx = net.granted(c, rx, C1, "x", 1);
    let ry = net.lock(d, C1, "y", Duration::from_secs(30));
    let ty = net.granted(d, ry, C1, "y", 1);
    // e queues before b: after the failover e must still come first, though
    // b is older and its report is read first.
    let re = net.lock(e, C1, "x", Duration::from_secs(30));
    let rb = net.lock(b, C1, "x", Duration::from_secs(30));
    assert!(net.events(e).is_empty() && net.events(b).is_empty());

    net.crash(a);
    net.install_view(&[b, c, d, e], false);
    net.advance(ms(500));
    assert!(net.node(b).is_serving(), "the next oldest member took over");
    assert_eq!(net.table(b), vec![(name("x"), owner(c, C1), tx), (name("y"), owner(d, C1), ty)]);
    assert!(net.events(c).is_empty() && net.events(d).is_empty(), "nobody lost a lock");

    net.unlock(c, C1, "x");
    let t_e = net.granted(e, re, C1, "x", 1);
    assert!(net.events(b).is_empty(), "b queued later and waits");
    net.unlock(e, C1, "x");
    let t_b = net.granted(b, rb, C1, "x", 1);
    assert!(t_e > tx.max(ty) && t_b > t_e, "new tokens exceed the old: {tx} {ty} {t_e} {t_b}");
    assert!(t_e.term() > tx.term());
}

/// Split brain then MergeView: both sides granted `x`; the merge round finds
/// the duplicate and keeps the higher token; the other holder gets
/// DUPLICATE-LOCK → `Lost { Duplicate }` (invariants 3 and 6).
#[test]
fn merge_resolves_a_duplicate_in_favour_of_the_higher_token() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |_| {});
    net.partition(&[a, b], &[c, d]);
    net.install_view(&[a, b], false);
    net.install_view(&[c, d], false);
    // The new side grants once the leases the other side's members may
    // still hold have run out (the lock-delay after their departure).
    net.advance(ms(2_500));
    assert!(net.node(c).is_serving(), "the other side elected its own coordinator");

    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    let tb = net.granted(b, rb, C1, "x", 1);
    let rd = net.lock(d, C1, "x", Duration::from_secs(5));
    let td = net.granted(d, rd, C1, "x", 1);
    assert_ne!(tb, td, "two sides never issue one token (invariant 3)");
    assert!(td > tb, "c's term is above a's: it learned a's term in its round");

    net.heal();
    net.install_view(&[a, b, c, d], true);
    net.advance(ms(500));
    assert!(net.node(a).is_serving());
    assert_eq!(net.table(a), vec![(name("x"), owner(d, C1), td)], "the higher token stays");
    assert_eq!(
        net.events(b),
        vec![Event::Lost { client: C1, name: name("x"), token: tb, reason: LossReason::Duplicate }]
    );
    assert!(net.events(d).is_empty());
    let holders: Vec<NodeId> = [a, b, c, d]
        .into_iter()
        .filter(|n| net.node(*n).held().iter().any(|h| h.name == name("x")))
        .collect();
    assert_eq!(holders, vec![d], "exactly one client holds x");
    assert_eq!(net.table_stats_unacked(a), 0, "the loser acknowledged");
    let notices = net.notices(a);
    assert!(
        notices.contains(&Notice::DuplicateResolved { name: name("x"), kept: td, lost: tb, loser: b }),
        "the log names both tokens: {notices:?}"
    );
    assert!(
        notices.iter().any(|n| matches!(n, Notice::ReconciliationFinished { locks: 1, duplicates: 1, .. })),
        "{notices:?}"
    );

    // Every grant after the merge exceeds every token of either side.
    net.unlock(d, C1, "x");
    let r = net.lock(b, C1, "x", Duration::from_secs(5));
    assert!(net.granted(b, r, C1, "x", 1) > td);
}

impl Net {
    /// What `id` noticed for the log since last asked.
    fn notices(&mut self, id: NodeId) -> Vec<Notice> {
        let node = self.nodes.get_mut(&id).expect("a node of the net");
        std::iter::from_fn(|| node.poll_notice()).collect()
    }

    fn table_stats_unacked(&self, coord: NodeId) -> usize {
        self.node(coord).table_stats().unwrap().unacked_duplicates
    }
}

/// Lost LOCK-RSP: the client retransmits LOCK(X); the coordinator answers the
/// repeat with the answer it already gave: the same token, no second grant
/// (invariant 5).
#[test]
fn a_lost_lock_rsp_is_answered_again_with_the_same_grant() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(3, |_| {});
    net.drop_next(is_lock_rsp);
    let r = net.lock(b, C1, "x", Duration::from_secs(5));
    assert!(net.events(b).is_empty(), "the answer was lost");
    let grants = net.node(a).stats().grants;
    net.advance(ms(200));
    let t = net.granted(b, r, C1, "x", 1);
    assert_eq!(net.node(a).stats().grants, grants, "no second grant");
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), t)]);
    assert!(net.node(b).stats().retransmissions >= 1);
    net.advance(ms(1000));
    assert!(net.events(b).is_empty(), "exactly one Acquired");
}

/// A new request from a client the table names as holder (its node no
/// longer counts that grant: a lost answer it cancelled, a loss it was told
/// of) is granted under a fresh token, never the old one again
/// (invariant 3).
#[test]
fn a_new_request_from_the_recorded_holder_gets_a_fresh_token() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(2, |_| {});
    let r = net.lock(b, C1, "x", Duration::from_secs(5));
    let t = net.granted(b, r, C1, "x", 1);
    let mut again: Vec<(NodeId, NodeId, LockMsg)> = net
        .log
        .iter()
        .filter(|(f, to, m)| *f == b && *to == a && matches!(m, LockMsg::Lock(_)))
        .cloned()
        .collect();
    assert_eq!(again.len(), 1);
    if let LockMsg::Lock(req) = &mut again[0].2 {
        req.id = ReqId(r.0 + 1_000);
    }
    net.inject(again);
    let table = net.table(a);
    assert_eq!(table.len(), 1);
    assert_eq!((table[0].0.clone(), table[0].1), (name("x"), owner(b, C1)), "b still holds x");
    assert!(table[0].2 > t, "a fresh token {:?}, above {t:?}", table[0].2);
}

/// Lost UNLOCK: retransmitted until the coordinator confirms; the lock is
/// released once and the next waiter granted once (invariant 5).
#[test]
fn a_lost_unlock_is_retransmitted_and_releases_once() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    let tb = net.granted(b, rb, C1, "x", 1);
    let rc = net.lock(c, C1, "x", Duration::from_secs(5));
    net.drop_next(|_, _, m| matches!(m, LockMsg::Unlock(_)));
    net.unlock(b, C1, "x");
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), tb)], "the unlock was lost");
    net.advance(ms(200));
    let tc = net.granted(c, rc, C1, "x", 1);
    assert_eq!(net.table(a), vec![(name("x"), owner(c, C1), tc)]);
    assert_eq!(net.node(b).pending_ops(), 0, "the unlock was confirmed");
    net.advance(ms(2000));
    assert!(net.events(c).is_empty() && net.events(b).is_empty());
    assert_eq!(net.table(a), vec![(name("x"), owner(c, C1), tc)]);
}

/// Lost UNLOCK-RSP: the repeated UNLOCK carries the old token, so it cannot
/// release the next holder's grant (invariant 5).
#[test]
fn a_lost_unlock_rsp_does_not_release_the_next_grant() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    net.granted(b, rb, C1, "x", 1);
    let rc = net.lock(c, C1, "x", Duration::from_secs(5));
    net.drop_next(|_, _, m| matches!(m, LockMsg::UnlockRsp(_)));
    net.unlock(b, C1, "x");
    let tc = net.granted(c, rc, C1, "x", 1);
    assert_eq!(net.node(b).pending_ops(), 1, "b still waits for the confirmation");
    let grants = net.node(a).stats().grants;
    net.advance(ms(500));
    assert_eq!(net.node(b).pending_ops(), 0);
    assert_eq!(net.table(a), vec![(name("x"), owner(c, C1), tc)], "c keeps its grant");
    assert_eq!(net.node(a).stats().grants, grants);
    assert!(net.events(c).is_empty());
}

/// Duplicated and reordered datagrams (invariant 5): a LOCK delivered twice
/// grants once; a stale LOCK after the unlock does not grant again; a stale
/// LOCK-RSP from an earlier round does not change the client.
#[test]
fn duplicated_and_reordered_datagrams_never_change_state() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let r1 = net.with(b, |n, now| n.lock(now, C1, name("x"), Duration::from_secs(5)));
    let req = net.copy_where(|_, _, m| matches!(m, LockMsg::Lock(_)));
    assert_eq!(req.len(), 1);
    net.inflight.extend(req.clone());
    net.deliver_all();
    let t1 = net.granted(b, r1, C1, "x", 1);
    assert_eq!(net.node(a).stats().grants, 1, "the doubled LOCK granted once");

    // Keep a copy of the grant, as if it were delayed in the network.
    net.unlock(b, C1, "x");
    let r2 = net.with(b, |n, now| n.lock(now, C1, name("x"), Duration::from_secs(5)));
    let old_rsp = net.copy_where(is_lock_rsp);
    assert!(old_rsp.is_empty(), "nothing answered yet");
    net.deliver_all();
    let t2 = net.granted(b, r2, C1, "x", 1);
    assert!(t2 > t1);

    // A stale copy of the first LOCK arrives after its unlock.
    net.inject(req);
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), t2)]);
    assert!(net.events(b).is_empty());

    // A new round (merge view), then a LOCK-RSP of the old round shows up.
    let stale = vec![(
        a,
        b,
        LockMsg::LockRsp(LockRsp { id: r1, term: 1, outcome: LockOutcome::Granted(t1), stamp: 0 }),
    )];
    net.install_view(&[a, b, c], true);
    net.advance(ms(500));
    net.inject(stale);
    assert!(net.events(b).is_empty());
    let held: Vec<Token> = net.node(b).held().iter().map(|h| h.token).collect();
    assert_eq!(held, vec![t2]);
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), t2)]);
}

/// DESIGN Lock semantics: a member that leaves the view loses its locks and
/// the coordinator grants them to the next waiter, once the lock-delay has
/// passed and the departed holder's lease can have run out (it may only be
/// paused, with its clients still at work).
#[test]
fn a_waiter_is_granted_when_the_holders_node_leaves() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let config = Config::lan(1);
    let mut net = Net::new(4, |_| {});
    let rb = net.lock(b, C1, "x", Duration::from_secs(10));
    let tb = net.granted(b, rb, C1, "x", 1);
    let rc = net.lock(c, C1, "x", Duration::from_secs(10));
    let crashed = net.now;
    net.crash(b);
    net.install_view(&[a, c, d], false);
    net.advance(config.lock_delay - ms(1));
    assert!(net.events(c).is_empty(), "not before the lock-delay");
    // The lease b had when it was last heard of ends by then at the latest.
    net.advance(crashed + config.stretched(config.lease) + ms(1) - net.now);
    let tc = net.granted(c, rc, C1, "x", 1);
    assert!(tc > tb);
    assert_eq!(net.table(a), vec![(name("x"), owner(c, C1), tc)]);
    let regranted = Notice::DepartedLockRegranted { name: name("x"), departed: b, token: tc, to: c };
    assert!(net.notices(a).contains(&regranted), "the log says whose lock went to whom");
}

/// Same, with a `lock_delay` above the lease bound: the freed lock is
/// granted exactly when the delay has run out.
#[test]
fn with_a_lock_delay_the_waiter_is_granted_only_after_it() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |cfg| cfg.lock_delay = Duration::from_secs(3));
    let rb = net.lock(b, C1, "x", Duration::from_secs(10));
    net.granted(b, rb, C1, "x", 1);
    let rc = net.lock(c, C1, "x", Duration::from_secs(10));
    net.crash(b);
    net.install_view(&[a, c, d], false);
    net.advance(ms(2_999));
    assert!(net.events(c).is_empty(), "not before the lock-delay");
    assert!(net.table(a).is_empty());
    net.advance(ms(1));
    net.granted(c, rc, C1, "x", 1);
}

/// Leases: a holder whose node cannot reach the coordinator keeps its lock
/// until its lease ends and then drops it and is told; the coordinator,
/// which saw the holder leave, grants the lock to the next waiter no
/// earlier than that (invariant 1 with a lease, DESIGN "Restarts, pauses
/// and stops").
#[test]
fn a_cut_off_holder_loses_its_lease_before_anyone_else_is_granted() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let rb = net.lock(b, C1, "x", Duration::from_secs(10));
    let tb = net.granted(b, rb, C1, "x", 1);
    let safe_until = net.node(b).held()[0].safe_until;
    let rc = net.lock(c, C1, "x", Duration::from_secs(10));
    net.isolate(b);
    net.install_view(&[a, c], false);
    let mut lost_at = None;
    let mut granted_at = None;
    for _ in 0..400 {
        net.advance(ms(10));
        for e in net.events(b) {
            assert_eq!(
                e,
                Event::Lost { client: C1, name: name("x"), token: tb, reason: LossReason::LeaseExpired }
            );
            lost_at = Some(net.now);
        }
        if !net.events(c).is_empty() {
            granted_at = Some(net.now);
            break;
        }
    }
    let (lost_at, granted_at) = (lost_at.expect("b was told"), granted_at.expect("c was granted"));
    assert!(lost_at <= safe_until + ms(10), "dropped when the lease ended ({lost_at:?}, {safe_until:?})");
    assert!(granted_at > safe_until, "granted at {granted_at:?}, inside b's lease (until {safe_until:?})");
    assert!(net.node(b).held().is_empty());
    let _ = rc;
}

/// Leases: a successor grants nothing, not even a lock nobody reported,
/// until the old coordinator's own lease (x the clock margin) has passed
/// since its view without it: the old coordinator may have renewed its own
/// clients up to the moment it stopped, which SWIM may report at once.
#[test]
fn a_successor_waits_out_the_old_coordinators_own_lease() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(2, |_| {});
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    net.granted(a, ra, C1, "x", 1);
    net.crash(a);
    net.install_view(&[b], false);
    let view_at = net.now;
    let wait = Config::lan(2).stretched(Config::lan(2).own_lease);
    let rb = net.lock(b, C1, "x", Duration::from_secs(10));
    let granted_at = net.first_event_at(b).expect("b was granted");
    assert!(
        granted_at >= view_at + wait,
        "granted {:?} after the view, inside {wait:?}",
        granted_at - view_at
    );
    assert!(granted_at <= view_at + wait + ms(100), "granted {:?} after the view", granted_at - view_at);
    let _ = rb;
}

/// Witnessed own leases: the coordinator's own client holds a lock while
/// both witnesses vouch; the coordinator crashes and the view without it
/// comes after detection. The successor's round gets both witnesses'
/// records, which show the own leases over, so it grants at once instead of
/// waiting the own lease after the view; the grant still comes after the
/// crashed coordinator's own client's lease ended.
#[test]
fn a_successor_grants_at_once_when_the_witnesses_vouched() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    net.granted(a, ra, C1, "x", 1);
    net.advance(Duration::from_secs(1));
    assert_eq!(net.node(a).held().len(), 1, "renewed through the witnesses' acknowledgements");
    let lease_end = net.node(a).held()[0].safe_until;
    net.crash(a);
    // Failure detection takes about this long.
    net.advance(ms(700));
    net.install_view(&[b, c], false);
    let view_at = net.now;
    let rc = net.lock(c, C1, "x", Duration::from_secs(10));
    let granted_at = net.first_event_at(c).expect("c was granted");
    assert!(granted_at > lease_end, "granted at {granted_at:?}, inside a's own lease (until {lease_end:?})");
    assert!(granted_at <= view_at + ms(50), "granted {:?} after the view", granted_at - view_at);
    assert_eq!(net.node(b).stats().witnessed_takeovers, 1);
    let _ = rc;
}

/// Witnessed own leases: a successor that cannot get every witness's
/// record (one witness went down with the coordinator) waits the own lease
/// after its view, as without witnesses. (The lock-delay, which a departed
/// member's locks need, is made shorter than the own lease here, so that
/// the wait shows.)
#[test]
fn a_successor_missing_a_witness_record_waits_out_the_own_lease() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |c| {
        c.lease = ms(300);
        c.lock_delay = ms(320);
    });
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    net.granted(a, ra, C1, "x", 1);
    net.advance(Duration::from_secs(1));
    net.crash(a);
    net.crash(c);
    net.advance(ms(700));
    net.install_view(&[b, d], false);
    let view_at = net.now;
    let wait = Config::lan(2).stretched(Config::lan(2).own_lease);
    let rd = net.lock(d, C1, "x", Duration::from_secs(10));
    let granted_at = net.first_event_at(d).expect("d was granted");
    assert!(
        granted_at >= view_at + wait,
        "granted {:?} after the view, inside {wait:?}",
        granted_at - view_at
    );
    assert_eq!(net.node(b).stats().witnessed_takeovers, 0);
    let _ = rd;
}

/// Witnessed own leases: a grant to the coordinator's own client runs no
/// further than a vouch a witness acknowledged. With its vouches lost, the
/// grant is held back, so when the coordinator crashes and the successor
/// (whose witnesses' records show nothing held past them) grants the lock
/// at once, nobody else held it.
#[test]
fn an_own_grant_waits_for_a_witness_to_vouch() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    net.advance(Duration::from_secs(3));
    net.drop_where(move |from, _, m| from == a && matches!(m, LockMsg::Vouch(_)));
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    net.advance(ms(200));
    assert!(net.events(a).is_empty(), "no witness vouched: not granted yet");
    net.crash(a);
    net.install_view(&[b, c], false);
    let rc = net.lock(c, C1, "x", Duration::from_secs(10));
    net.advance(ms(50));
    net.granted(c, rc, C1, "x", 1);
    assert_eq!(net.node(b).stats().witnessed_takeovers, 1);
    let _ = ra;
}

/// Witnessed own leases: a coordinator whose view dropped its witnesses
/// (here, all of them: it renews its own clients' leases locally) keeps
/// vouching to them, so their records name its new view. When it crashes,
/// a former witness whose view still listed it finds the record of
/// another view and waits out the own lease, instead of trusting a record
/// from before the coordinator renewed on its own.
#[test]
fn a_coordinator_keeps_vouching_to_the_witnesses_its_view_dropped() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    net.install_view(&[a], false);
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    // Fresh grants wait the lock-delay of the members that left a's view.
    net.advance(Duration::from_secs(3));
    net.granted(a, ra, C1, "x", 1);
    let lease_end = net.node(a).held()[0].safe_until;
    net.crash(a);
    net.install_view(&[b, c], false);
    let rc = net.lock(c, C1, "x", Duration::from_secs(10));
    let granted_at = net.first_event_at(c).expect("c was granted");
    assert!(granted_at > lease_end, "granted at {granted_at:?}, inside a's own lease (until {lease_end:?})");
    assert_eq!(net.node(b).stats().witnessed_takeovers, 0);
    let _ = rc;
}

/// Witnessed own leases: a view of two has no witnesses (one witness's
/// death would end the own leases until the view without it), so the
/// coordinator renews its own clients' leases itself, and the other
/// member's silence costs them nothing.
#[test]
fn a_two_member_coordinator_keeps_its_own_leases_when_the_member_dies() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(2, |_| {});
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    net.granted(a, ra, C1, "x", 1);
    net.crash(b);
    net.advance(Duration::from_secs(2));
    assert!(net.events(a).is_empty(), "nothing lost");
    assert_eq!(net.node(a).held().len(), 1);
    assert!(net.node(a).held()[0].safe_until > net.now, "renewed locally");
}

/// Witnessed own leases: a coordinator renews its own clients' leases only
/// as far as a witness acknowledged. Cut off from both witnesses it renews
/// nothing (its own client is told the lock is lost when the lease ends);
/// cut off from one, the other keeps the leases going.
#[test]
fn own_leases_run_only_as_far_as_a_witness_vouched() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    let token = net.granted(a, ra, C1, "x", 1);
    net.cut(a, b);
    net.advance(Duration::from_secs(2));
    assert_eq!(net.node(a).held().len(), 1, "one witness is enough");
    assert!(net.events(a).is_empty());
    net.cut(a, c);
    let cut_at = net.now;
    let lease_end = net.node(a).held()[0].safe_until;
    assert!(lease_end <= cut_at + Config::lan(1).own_lease, "lease until {lease_end:?}, cut at {cut_at:?}");
    net.advance(Duration::from_secs(1));
    assert_eq!(
        net.events(a),
        vec![Event::Lost { client: C1, name: name("x"), token, reason: LossReason::LeaseExpired }]
    );
    assert!(net.node(a).held().is_empty());
}

/// A coordinator that takes over a group it never saw (an older node
/// merging in) cannot know a member that left the group at the same time:
/// the group's former coordinator reports how long such members may still
/// hold locks it granted, and the new coordinator grants nothing new before
/// (simulator seeds 5853, 8414).
#[test]
fn a_new_coordinator_waits_for_members_only_the_former_coordinator_saw_leave() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::without_view(3, |_| {});
    net.install_view(&[b, c], false);
    net.advance(Duration::from_secs(3));
    let rc = net.lock(c, C1, "x", Duration::from_secs(10));
    net.granted(c, rc, C1, "x", 1);
    let lease_end = net.node(c).held()[0].safe_until;
    // c stops (paused: its lease runs on) as a, older, merges with b.
    net.crash(c);
    net.install_view(&[a, b], true);
    let rb = net.lock(b, C1, "x", Duration::from_secs(10));
    let granted_at = net.first_event_within(b, ms(50), Duration::from_secs(5)).expect("b was granted");
    assert!(granted_at > lease_end, "granted at {granted_at:?}, inside c's lease (until {lease_end:?})");
    let _ = rb;
}

/// A member's report of members only it saw leave is cut to the longest
/// wait such members can need (a lease or the lock-delay): a bound of 49
/// days, from a bug or a forgery, does not stop grants for 49 days.
#[test]
fn an_unreported_bound_is_cut_to_the_longest_lease() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::without_view(2, |_| {});
    net.delay_next(|_, _, m| matches!(m, LockMsg::LockInfoRsp(_)));
    net.install_view(&[a, b], false);
    for (_, _, m) in net.delayed.iter_mut() {
        if let LockMsg::LockInfoRsp(r) = m {
            r.unreported_ms = u32::MAX;
        }
    }
    net.release_delayed();
    let asked_at = net.now;
    let rb = net.lock(b, C1, "x", Duration::from_secs(60));
    let granted_at =
        net.first_event_within(b, ms(50), Duration::from_secs(5)).expect("b was granted within 5 s");
    let most = Config::lan(1).longest_unseen_hold();
    assert!(
        granted_at - asked_at >= most,
        "granted after {:?}: the report was not honoured",
        granted_at - asked_at
    );
    let _ = rb;
}

/// Witnessed own leases: a witness acknowledges only a coordinator of its
/// own view. Once both witnesses installed a view without the coordinator
/// (they may be taking over), their acknowledgements stop, and the
/// coordinator's own client loses its lock when the lease ends, although
/// both still receive its vouches.
#[test]
fn witnesses_that_left_the_coordinators_view_stop_acknowledging() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    let token = net.granted(a, ra, C1, "x", 1);
    net.install_view(&[b, c], false);
    net.advance(Duration::from_secs(1));
    assert_eq!(
        net.events(a),
        vec![Event::Lost { client: C1, name: name("x"), token, reason: LossReason::LeaseExpired }]
    );
}

/// A coordinator that membership says was declared down (others may be
/// installing views without it, while its own view still lists them) holds
/// still: its own clients' short leases run out unrenewed and nothing is
/// granted, until the first view after its identity was renewed, which
/// starts a new round under a higher term.
#[test]
fn a_coordinator_declared_down_holds_still_until_the_view_after_its_renewal() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(2, |_| {});
    let ra = net.lock(a, C1, "x", Duration::from_secs(10));
    let ta = net.granted(a, ra, C1, "x", 1);
    let own_lease = net.node(a).held()[0].safe_until - net.now;
    net.with(a, |n, now| n.hold_down(now));
    let held_at = net.now;
    let rb = net.lock(b, C1, "y", Duration::from_secs(10));
    let mut lost_at = None;
    for _ in 0..100 {
        net.advance(ms(10));
        for e in net.events(a) {
            assert_eq!(
                e,
                Event::Lost { client: C1, name: name("x"), token: ta, reason: LossReason::LeaseExpired }
            );
            lost_at = Some(net.now);
        }
        assert!(net.events(b).is_empty(), "nothing is granted while a is held down");
    }
    let lost_at = lost_at.expect("a's own client was told its lock was lost");
    assert!(lost_at <= held_at + own_lease + ms(10), "lost at {lost_at:?}, own lease {own_lease:?}");
    // Renewed, but no view yet: still nothing.
    net.with(a, |n, now| n.renewed(now));
    net.advance(ms(200));
    assert!(net.events(b).is_empty(), "still held until the next view");
    let before = net.terms[&a];
    net.install_view(&[a, b], true);
    net.advance(Duration::from_secs(1));
    let tb = net.granted(b, rb, C1, "y", 1);
    assert!(tb.term() > before && tb > ta, "a new round: {tb} after {ta}");
}

/// Leases: a grant that reaches its node after its lease ended (the node
/// was paused with the answer queued) is not applied; the request is
/// repeated and answered again with a fresh lease.
#[test]
fn a_grant_that_arrives_after_its_lease_is_not_applied() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(2, |_| {});
    net.delay_next(|_, _, m| matches!(m, LockMsg::LockRsp(_)));
    let r = net.lock(b, C1, "x", Duration::from_secs(10));
    net.deliver_all();
    assert!(net.events(b).is_empty());
    // b does not run for 3 s (paused); its answer waited, and arrives past
    // the 2 s lease it carried.
    net.crashed.insert(b);
    net.advance(Duration::from_secs(3));
    net.crashed.remove(&b);
    net.release_delayed();
    net.deliver_all();
    assert_eq!(net.node(b).stats().stale_grants, 1, "the stale grant was not applied");
    // The one grant b applied is the repeat's answer, with a fresh lease.
    let t = net.granted(b, r, C1, "x", 1);
    let held = net.node(b).held();
    assert_eq!(held[0].token, t);
    assert!(held[0].safe_until > net.now + Duration::from_secs(1), "fresh lease: {held:?}");
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), t)], "one grant, the same token");
}

/// Leases are renewed while the coordinator answers: a lock held far longer
/// than the lease is still held, with its deadline moving ahead.
#[test]
fn leases_are_renewed_while_the_coordinator_answers() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(2, |_| {});
    let r = net.lock(b, C1, "x", Duration::from_secs(10));
    let t = net.granted(b, r, C1, "x", 1);
    net.advance(Duration::from_secs(10));
    let held = net.node(b).held();
    assert_eq!(held[0].token, t);
    assert!(held[0].safe_until > net.now + Duration::from_secs(1), "renewed: {held:?}");
    assert!(net.events(b).is_empty());
    let r = net.lock(a, C1, "y", Duration::from_secs(10));
    net.granted(a, r, C1, "y", 1);
    net.advance(Duration::from_secs(10));
    assert_eq!(net.node(a).held().len(), 1, "the coordinator's own client keeps its lock too");
}

/// "On reception of a timeout (client)": the request fails with `TimedOut`
/// and is withdrawn at the coordinator, so a later release does not grant it.
#[test]
fn a_client_timeout_cancels_the_queued_request() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    net.granted(b, rb, C1, "x", 1);
    let rc = net.lock(c, C1, "x", ms(100));
    net.advance(ms(150));
    assert_eq!(
        net.events(c),
        vec![Event::Failed { req: rc, client: C1, name: name("x"), reason: Failure::TimedOut }]
    );
    assert_eq!(net.node(a).table_stats().unwrap().waiters, 0, "the waiter was withdrawn");
    let grants = net.node(a).stats().grants;
    net.unlock(b, C1, "x");
    net.advance(ms(1000));
    assert!(net.events(c).is_empty(), "no grant to a cancelled request");
    assert!(net.table(a).is_empty());
    assert_eq!(net.node(a).stats().grants, grants);
    assert!(net.node(c).held().is_empty());
}

/// DESIGN Lock semantics: a client connection that closes releases its locks
/// and withdraws its requests; other clients of the node keep theirs.
#[test]
fn release_client_releases_all_its_locks() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let r1 = net.lock(b, C1, "x", Duration::from_secs(5));
    net.granted(b, r1, C1, "x", 1);
    let r2 = net.lock(b, C1, "y", Duration::from_secs(5));
    net.granted(b, r2, C1, "y", 1);
    let r3 = net.lock(b, C2, "z", Duration::from_secs(5));
    let tz = net.granted(b, r3, C2, "z", 1);
    let rw = net.lock(c, C2, "w", Duration::from_secs(5));
    let tw = net.granted(c, rw, C2, "w", 1);
    let _queued = net.lock(b, C1, "w", Duration::from_secs(5));
    let rc = net.lock(c, C1, "x", Duration::from_secs(5));
    assert!(net.events(b).is_empty() && net.events(c).is_empty());

    net.with(b, |n, now| n.release_client(now, C1));
    net.deliver_all();
    let tx = net.granted(c, rc, C1, "x", 1);
    net.advance(ms(500));
    assert_eq!(
        net.table(a),
        vec![(name("w"), owner(c, C2), tw), (name("x"), owner(c, C1), tx), (name("z"), owner(b, C2), tz)]
    );
    assert_eq!(net.node(a).table_stats().unwrap().waiters, 0, "b/1's wait for w was withdrawn");
    assert_eq!(net.node(b).pending_ops(), 0);
    assert!(net.events(b).is_empty());
}

/// DESIGN Split brain and modes: in majority mode a minority side reports its
/// locks as `Lost { QuorumLost }` and its try_lock fails with `NoQuorum`.
#[test]
fn majority_mode_minority_side_loses_its_locks() {
    let (a, b, c, d, e) = (id(1), id(2), id(3), id(4), id(5));
    let members = NonZeroUsize::new(5).unwrap();
    let mut net = Net::new(5, |cfg| cfg.mode = Mode::Majority { members });
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    let tb = net.granted(b, rb, C1, "x", 1);
    let ra = net.lock(a, C1, "y", Duration::from_secs(5));
    let ta = net.granted(a, ra, C1, "y", 1);

    net.partition(&[a, b], &[c, d, e]);
    net.install_view(&[a, b], false);
    net.install_view(&[c, d, e], false);
    assert_eq!(
        net.events(b),
        vec![Event::Lost { client: C1, name: name("x"), token: tb, reason: LossReason::QuorumLost }]
    );
    assert_eq!(
        net.events(a),
        vec![Event::Lost { client: C1, name: name("y"), token: ta, reason: LossReason::QuorumLost }]
    );
    assert!(!net.node(a).is_coordinator(), "a minority coordinator does not serve");

    let r = net.try_lock(b, C2, "z");
    assert_eq!(
        net.events(b),
        vec![Event::Failed { req: r, client: C2, name: name("z"), reason: Failure::NoQuorum }]
    );

    net.advance(ms(500));
    assert!(net.node(c).is_serving(), "the majority side serves");
    let rd = net.lock(d, C1, "z", Duration::from_secs(5));
    assert!(net.events(d).is_empty(), "nothing new within the lock-delay of the round");
    net.advance(Config::lan(1).lock_delay);
    let tz = net.granted(d, rd, C1, "z", 1);
    assert!(tz > tb.max(ta));
}

/// ReconciliationProtocol "or occurrence of timeout" + invariant 7: a member
/// whose LOCK-INFO-RSP misses the deadline answers late; its report is still
/// merged and the duplicate it carries is resolved (highest token kept,
/// loser told).
#[test]
fn a_late_reconciliation_answer_is_merged_duplicates_and_all() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |_| {});
    net.partition(&[a, b], &[c, d]);
    net.install_view(&[a, b], false);
    net.install_view(&[c, d], false);
    // The new side grants once the leases the other side's members may
    // still hold have run out (the lock-delay after their departure).
    net.advance(ms(2_500));
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    let tb = net.granted(b, rb, C1, "x", 1);
    let rd = net.lock(d, C1, "x", Duration::from_secs(5));
    let td = net.granted(d, rd, C1, "x", 1);
    assert!(td > tb);

    net.heal();
    net.drop_where(move |from, _, m| from == d && matches!(m, LockMsg::LockInfoRsp(_)));
    net.install_view(&[a, b, c, d], true);
    // c reports the term of its own side, so the round restarts above it
    // once; each round has its own deadline.
    net.advance(ms(1000));
    assert!(net.node(a).is_serving(), "served after the deadline without d");
    assert_eq!(net.node(a).awaiting(), vec![d]);
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), tb)], "only b's hold is known");

    net.heal();
    net.advance(ms(1000));
    assert!(net.node(a).awaiting().is_empty(), "d's late answer arrived");
    assert_eq!(net.table(a), vec![(name("x"), owner(d, C1), td)], "the higher token stays");
    assert_eq!(
        net.events(b),
        vec![Event::Lost { client: C1, name: name("x"), token: tb, reason: LossReason::Duplicate }]
    );
    assert!(net.events(d).is_empty());
    assert!(net.node(b).held().is_empty());
}

/// `Event::TermStarted` / `LockNode::with_term_floor` (invariant 2 across a
/// restart): a coordinator restarted alone with the last term it announced
/// issues tokens above its earlier ones; without the floor it would repeat
/// a token.
#[test]
fn a_restart_with_the_term_floor_never_repeats_a_token() {
    let a = id(1);
    let mut net = Net::new(1, |_| {});
    let r = net.lock(a, C1, "x", Duration::from_secs(5));
    let before = net.granted(a, r, C1, "x", 1);
    let floor = net.terms[&a];
    assert_eq!(floor, before.term());
    net.crash(a);

    let restarted = NodeId { epoch: 100, addr: a.addr };
    let mut fresh = LockNode::new(restarted, Config::lan(1));
    fresh.handle_view(net.now, View { id: 1, members: vec![restarted], merge: false, gossiped_term: 0 });
    fresh.handle_timeout(net.now + ms(1));
    let _ = fresh.lock(net.now + ms(1), C1, name("x"), Duration::from_secs(1));
    let repeated = std::iter::from_fn(|| fresh.poll_event()).find_map(|e| match e {
        Event::Acquired { token, .. } => Some(token),
        _ => None,
    });
    assert_eq!(repeated, Some(before), "the hazard the floor exists for");

    net.add(LockNode::with_term_floor(restarted, Config::lan(1), floor));
    net.install_view(&[restarted], false);
    net.advance(ms(100));
    let r = net.lock(restarted, C1, "x", Duration::from_secs(5));
    let after = net.granted(restarted, r, C1, "x", 1);
    assert!(after > before, "{after} > {before}");
    assert!(net.terms[&restarted] > floor);
}

/// LOCK(X) (client) "sent to the coordinator ... until a LOCK-RSP(X) has been
/// received": an isolated member keeps retransmitting with backoff, and once
/// the network heals its request is granted exactly once (invariant 5).
#[test]
fn an_isolated_member_retransmits_until_healed_and_is_granted_once() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(3, |_| {});
    net.isolate(b);
    let r = net.lock(b, C1, "x", Duration::from_secs(10));
    net.advance(ms(1000));
    assert!(net.events(b).is_empty());
    let sent = net.node(b).stats().retransmissions;
    assert!((3..=10).contains(&sent), "backoff bounds the repeats: {sent}");
    net.heal();
    net.advance(ms(600));
    let t = net.granted(b, r, C1, "x", 1);
    assert_eq!(net.node(a).stats().grants, 1);
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), t)]);
}

/// "On reception of a LOCK-RSP(X) (client)" applies only answers of the
/// round the client reported to: a grant of the old round that arrives after
/// a new round (merge view) is not applied, before or after the new round's
/// own grant; the client ends with exactly one grant, the one in the table
/// (invariant 5).
#[test]
fn a_grant_of_an_old_round_is_never_applied() {
    for late_after_new_grant in [false, true] {
        let (a, b, c) = (id(1), id(2), id(3));
        let mut net = Net::new(3, |_| {});
        let rc = net.lock(c, C1, "x", Duration::from_secs(5));
        net.granted(c, rc, C1, "x", 1);
        let rb = net.lock(b, C1, "x", Duration::from_secs(5));
        // c's release grants x to b; that answer is delayed in the network.
        net.delay_next(move |_, to, m| to == b && matches!(m, LockMsg::LockRsp(_)));
        net.unlock(c, C1, "x");
        let [(_, _, LockMsg::LockRsp(old))] = net.delayed.as_slice() else { panic!("{:?}", net.delayed) };
        let LockOutcome::Granted(t_old) = old.outcome else { panic!("a grant: {old:?}") };
        assert!(net.events(b).is_empty(), "b has not heard of its grant");

        if !late_after_new_grant {
            // b answers the new round, but its answer is held back too: the
            // old grant reaches b first, while the new round is not served.
            net.delay_next(move |from, _, m| from == b && matches!(m, LockMsg::LockInfoRsp(_)));
        }
        net.install_view(&[a, b, c], true);
        assert_eq!(net.delayed.len(), if late_after_new_grant { 1 } else { 2 });
        if !late_after_new_grant {
            assert!(!net.node(a).is_serving());
        }
        // Deliver the old round's grant (then b's answer, if held back).
        net.release_delayed();
        net.advance(ms(1000));
        let t_new = net.granted(b, rb, C1, "x", 1);
        assert_ne!(t_new, t_old, "b got the new round's grant, not the stale one");
        let held: Vec<Token> = net.node(b).held().iter().map(|h| h.token).collect();
        assert_eq!(held, vec![t_new]);
        assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), t_new)]);
        assert!(t_new > t_old, "the new round grants above the old: {t_new} {t_old}");
    }
}

/// Client timeout whose CANCEL is lost while the holder lets go: the
/// coordinator grants the lock to the withdrawn request, the client (which
/// already reported `TimedOut`) never applies it, and the retransmitted
/// CANCEL releases that grant so the next waiter gets the lock (invariants
/// 1 and 5).
#[test]
fn a_late_cancel_releases_a_grant_the_client_gave_up_on() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |_| {});
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    net.granted(b, rb, C1, "x", 1);
    let rc = net.lock(c, C1, "x", ms(100));
    let rd = net.lock(d, C1, "x", Duration::from_secs(5));
    net.drop_where(move |from, _, m| from == c && matches!(m, LockMsg::Cancel(_)));
    net.advance(ms(150));
    assert_eq!(
        net.events(c),
        vec![Event::Failed { req: rc, client: C1, name: name("x"), reason: Failure::TimedOut }]
    );
    net.unlock(b, C1, "x");
    let (_, holder, t_c) = net.table(a).pop().expect("granted to the withdrawn request");
    assert_eq!(holder, owner(c, C1));
    assert!(net.events(c).is_empty() && net.node(c).held().is_empty(), "c never applies it");

    net.heal();
    net.advance(ms(1000));
    let t_d = net.granted(d, rd, C1, "x", 1);
    assert!(t_d > t_c);
    assert_eq!(net.table(a), vec![(name("x"), owner(d, C1), t_d)]);
    assert!(net.events(c).is_empty());
    assert_eq!(net.node(c).pending_ops(), 0);
}

/// Coordinator crash with an UNLOCK in flight: the new coordinator rebuilds
/// its table from the members' reports (the released lock is not among
/// them), grants the waiter once, and answers the repeated UNLOCK without
/// touching the new grant (invariants 4 and 5).
#[test]
fn an_unlock_in_flight_survives_a_coordinator_crash() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |_| {});
    let rc = net.lock(c, C1, "x", Duration::from_secs(30));
    let tc = net.granted(c, rc, C1, "x", 1);
    let rd = net.lock(d, C1, "x", Duration::from_secs(30));
    net.drop_next(|_, _, m| matches!(m, LockMsg::Unlock(_)));
    net.unlock(c, C1, "x");
    net.crash(a);
    net.install_view(&[b, c, d], false);
    net.advance(ms(1000));
    let td = net.granted(d, rd, C1, "x", 1);
    assert!(td > tc);
    assert_eq!(net.table(b), vec![(name("x"), owner(d, C1), td)]);
    assert_eq!(net.node(c).pending_ops(), 0, "the new coordinator confirmed the unlock");
    assert!(net.events(c).is_empty() && net.events(d).is_empty());
    assert_eq!(net.node(b).stats().grants, 1);
}

/// DUPLICATE-LOCK is repeated until acknowledged: with the first copy lost,
/// the loser still learns it lost the lock, exactly once (invariant 6).
#[test]
fn a_lost_duplicate_lock_is_repeated_until_acknowledged() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |_| {});
    net.partition(&[a, b], &[c, d]);
    net.install_view(&[a, b], false);
    net.install_view(&[c, d], false);
    // The new side grants once the leases the other side's members may
    // still hold have run out (the lock-delay after their departure).
    net.advance(ms(2_500));
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    let tb = net.granted(b, rb, C1, "x", 1);
    let rd = net.lock(d, C1, "x", Duration::from_secs(5));
    let td = net.granted(d, rd, C1, "x", 1);

    net.heal();
    net.drop_next(|_, _, m| matches!(m, LockMsg::DuplicateLock(_)));
    net.install_view(&[a, b, c, d], true);
    assert!(net.events(b).is_empty(), "the first DUPLICATE-LOCK was lost");
    assert_eq!(net.table_stats_unacked(a), 1);
    net.advance(ms(1000));
    assert_eq!(
        net.events(b),
        vec![Event::Lost { client: C1, name: name("x"), token: tb, reason: LossReason::Duplicate }]
    );
    assert_eq!(net.table_stats_unacked(a), 0);
    assert_eq!(net.table(a), vec![(name("x"), owner(d, C1), td)]);
}

/// Re-locking while the last UNLOCK is still unconfirmed: the new LOCK waits
/// for the unlock's answer (one request per name in flight), so it cannot
/// overtake it; it gets a fresh, higher token.
#[test]
fn relocking_during_an_unconfirmed_unlock_gets_a_fresh_token() {
    let (a, b) = (id(1), id(2));
    let mut net = Net::new(3, |_| {});
    let r1 = net.lock(b, C1, "x", Duration::from_secs(5));
    let t1 = net.granted(b, r1, C1, "x", 1);
    net.drop_next(|_, _, m| matches!(m, LockMsg::UnlockRsp(_)));
    net.unlock(b, C1, "x");
    let r2 = net.lock(b, C1, "x", Duration::from_secs(5));
    assert!(net.events(b).is_empty(), "waits for the unlock to be confirmed");
    net.advance(ms(500));
    let t2 = net.granted(b, r2, C1, "x", 1);
    assert!(t2 > t1);
    assert_eq!(net.table(a), vec![(name("x"), owner(b, C1), t2)]);
}

/// Invariants 3 and 2 for two groups that formed apart (a partition from the
/// start): both coordinators grant under the same term, the tag keeps their
/// tokens apart, and after the merge every grant exceeds both sides' tokens.
#[test]
fn two_groups_formed_apart_share_a_term_but_never_a_token() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::without_view(4, |_| {});
    net.partition(&[a, b], &[c, d]);
    net.install_view(&[a, b], false);
    net.install_view(&[c, d], false);
    // The new side grants once the leases the other side's members may
    // still hold have run out (the lock-delay after their departure).
    net.advance(ms(2_000));
    let rb = net.lock(b, C1, "x", Duration::from_secs(5));
    let tb = net.granted(b, rb, C1, "x", 1);
    let rd = net.lock(d, C1, "x", Duration::from_secs(5));
    let td = net.granted(d, rd, C1, "x", 1);
    assert_eq!(tb.term(), td.term(), "same term on both sides");
    assert_eq!((tb.tag(), td.tag()), (1, 3), "each coordinator's tag");
    assert_ne!(tb, td);

    net.heal();
    net.install_view(&[a, b, c, d], true);
    net.advance(ms(500));
    assert_eq!(net.table(a), vec![(name("x"), owner(d, C1), td)]);
    assert_eq!(
        net.events(b),
        vec![Event::Lost { client: C1, name: name("x"), token: tb, reason: LossReason::Duplicate }]
    );
    let r = net.lock(c, C1, "y", Duration::from_secs(5));
    assert!(net.granted(c, r, C1, "y", 1) > tb.max(td));
}

/// BecomeCoord "blocks until done, or timeout": nothing is granted while the
/// new coordinator reconciles; a try_lock made meanwhile is retransmitted and
/// granted once the round is over, and a lost LOCK-INFO-REQ is repeated so a
/// held lock still keeps its token (invariant 4).
#[test]
fn no_grant_while_reconciling_and_a_lost_lock_info_req_is_repeated() {
    let (a, b, c, d) = (id(1), id(2), id(3), id(4));
    let mut net = Net::new(4, |_| {});
    let rc = net.lock(c, C1, "x", Duration::from_secs(5));
    let tc = net.granted(c, rc, C1, "x", 1);
    net.crash(a);
    net.drop_next(move |_, to, m| to == c && matches!(m, LockMsg::LockInfoReq(_)));
    net.drop_where(move |from, _, m| from == d && matches!(m, LockMsg::LockInfoRsp(_)));
    net.install_view(&[b, c, d], false);
    let r = net.lock(c, C2, "y", Duration::from_secs(5));
    for _ in 0..20 {
        net.advance(ms(10));
        if net.node(b).is_serving() {
            break;
        }
        assert!(net.events(c).is_empty(), "no grant while reconciling");
        assert_eq!(net.node(b).stats().grants, 0);
    }
    assert!(!net.node(b).awaiting().contains(&c), "c answered the repeated request");
    net.advance(ms(1000));
    assert!(net.node(b).is_serving());
    // d never answers: nothing new is granted until a lease it may have had
    // renewed before the round began has run out.
    assert!(net.events(c).is_empty(), "no fresh grant while d may hold unknown locks");
    net.advance(Config::lan(1).stretched(Config::lan(1).lease));
    let ty = net.granted(c, r, C2, "y", 1);
    assert!(ty > tc);
    assert_eq!(net.table(b), vec![(name("x"), owner(c, C1), tc), (name("y"), owner(c, C2), ty)]);
}

/// A coordinator that holds a lock through its own client and crashes: its
/// lock dies with it, and the waiter is granted by the next coordinator once
/// its round is over.
#[test]
fn a_crashed_coordinators_own_lock_goes_to_the_waiter() {
    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    let ra = net.lock(a, C1, "x", Duration::from_secs(5));
    let ta = net.granted(a, ra, C1, "x", 1);
    let rc = net.lock(c, C1, "x", Duration::from_secs(5));
    net.crash(a);
    net.install_view(&[b, c], false);
    net.advance(ms(500));
    let tc = net.granted(c, rc, C1, "x", 1);
    assert!(tc > ta);
    assert_eq!(net.table(b), vec![(name("x"), owner(c, C1), tc)]);
}

/// One step of a random schedule for [`random_schedules_keep_mutual_exclusion`].
#[derive(Clone, Debug)]
enum Step {
    Lock {
        node: u16,
        client: u64,
        lock: u8,
        timeout_ms: u64,
    },
    TryLock {
        node: u16,
        client: u64,
        lock: u8,
    },
    Unlock {
        node: u16,
        client: u64,
        lock: u8,
    },
    Release {
        node: u16,
        client: u64,
    },
    DropNext {
        kind: u8,
    },
    Advance {
        ms: u64,
    },
    CrashCoordinator,
    /// Delivers again the message delivered `back` deliveries ago (modulo
    /// the log): a duplicate or a very late copy.
    Replay {
        back: usize,
    },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1..=4u16, 1..=2u64, 0..2u8, 20..2000u64)
            .prop_map(|(node, client, lock, timeout_ms)| Step::Lock { node, client, lock, timeout_ms }),
        2 => (1..=4u16, 1..=2u64, 0..2u8).prop_map(|(node, client, lock)| Step::TryLock { node, client, lock }),
        4 => (1..=4u16, 1..=2u64, 0..2u8).prop_map(|(node, client, lock)| Step::Unlock { node, client, lock }),
        1 => (1..=4u16, 1..=2u64).prop_map(|(node, client)| Step::Release { node, client }),
        2 => (0..5u8).prop_map(|kind| Step::DropNext { kind }),
        4 => (1..400u64).prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::CrashCoordinator),
        3 => (0..LOG_LEN).prop_map(|back| Step::Replay { back }),
    ]
}

impl Net {
    /// Invariant 1 as the clients see it: in a component that agrees on its
    /// coordinator, at most one client holds each name; and the holder the
    /// clients believe in is never contradicted by the serving coordinator.
    fn check_exclusion(&self) {
        let live: Vec<&LockNode> =
            self.nodes.iter().filter(|(id, _)| !self.crashed.contains(id)).map(|(_, n)| n).collect();
        let mut holders: BTreeMap<LockName, Vec<(NodeId, ClientId, Token)>> = BTreeMap::new();
        for n in &live {
            for h in n.held() {
                holders.entry(h.name).or_default().push((n.id(), h.client, h.token));
            }
        }
        for (name, hs) in &holders {
            assert!(hs.len() <= 1, "{name} held by {hs:?} at {:?}", self.now);
        }
        for n in live.iter().filter(|n| n.is_serving()) {
            for (name, owner, token) in n.table() {
                if let Some([(node, client, t)]) = holders.get(&name).map(Vec::as_slice) {
                    assert_eq!((owner, token), (Owner { node: *node, client: *client }, *t), "{name}");
                }
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Random operations with lost messages and a coordinator crash, in one
    /// component: after every step no name has two holders (invariant 1),
    /// grants of one name carry strictly increasing tokens (invariant 2),
    /// and once the losses stop every operation finishes (liveness).
    #[test]
    fn random_schedules_keep_mutual_exclusion(steps in proptest::collection::vec(step(), 1..60)) {
        let mut net = Net::new(4, |_| {});
        let names = ["x", "y"];
        let mut last: BTreeMap<LockName, Token> = BTreeMap::new();
        let mut crashed_once = false;
        for s in steps {
            match s {
                Step::Lock { node, client, lock, timeout_ms } if !net.crashed.contains(&id(node)) => {
                    net.lock(id(node), ClientId(client), names[usize::from(lock)], ms(timeout_ms));
                }
                Step::TryLock { node, client, lock } if !net.crashed.contains(&id(node)) => {
                    net.try_lock(id(node), ClientId(client), names[usize::from(lock)]);
                }
                Step::Unlock { node, client, lock } if !net.crashed.contains(&id(node)) => {
                    let n = name(names[usize::from(lock)]);
                    let _ = net.with(id(node), |nd, now| nd.unlock(now, ClientId(client), &n));
                    net.deliver_all();
                }
                Step::Release { node, client } if !net.crashed.contains(&id(node)) => {
                    net.with(id(node), |nd, now| nd.release_client(now, ClientId(client)));
                    net.deliver_all();
                }
                Step::DropNext { kind } => net.drop_next(move |_, _, m| {
                    matches!(
                        (kind, m),
                        (0, LockMsg::Lock(_))
                            | (1, LockMsg::LockRsp(_))
                            | (2, LockMsg::Unlock(_))
                            | (3, LockMsg::UnlockRsp(_))
                            | (4, LockMsg::Cancel(_))
                    )
                }),
                Step::Advance { ms: d } => net.advance(ms(d)),
                Step::Replay { back } => net.replay(back),
                Step::CrashCoordinator if !crashed_once => {
                    crashed_once = true;
                    net.crash(id(1));
                    net.install_view(&[id(2), id(3), id(4)], false);
                }
                _ => {}
            }
            net.check_exclusion();
            for (node, events) in net.events.clone() {
                for e in events {
                    if let Event::Acquired { name, token, holds: 1, .. } = e
                        && let Some(prev) = last.insert(name.clone(), token)
                    {
                        assert!(token > prev, "{node}: {name} granted {token} after {prev}");
                    }
                }
            }
            net.events.clear();
        }
        net.heal();
        net.advance(Duration::from_secs(5));
        net.check_exclusion();
        for (id, n) in &net.nodes {
            if !net.crashed.contains(id) {
                assert_eq!(n.pending_ops(), 0, "{id} finished every operation");
            }
        }
    }
}

/// One step of [`random_partitions_keep_exclusion`].
#[derive(Clone, Debug)]
enum SplitStep {
    Op(Step),
    /// Splits the cluster: members whose bit is set go to one side.
    Partition {
        mask: u8,
    },
    /// Heals the network and installs a merge view everywhere.
    Merge,
}

fn split_step() -> impl proptest::strategy::Strategy<Value = SplitStep> {
    use proptest::prelude::*;
    prop_oneof![
        8 => step().prop_map(SplitStep::Op),
        1 => (1..31u8).prop_map(|mask| SplitStep::Partition { mask }),
        1 => Just(SplitStep::Merge),
    ]
}

/// The node an operation step runs on, if any.
fn op_node(s: &Step) -> Option<u16> {
    match s {
        Step::Lock { node, .. }
        | Step::TryLock { node, .. }
        | Step::Unlock { node, .. }
        | Step::Release { node, .. } => Some(*node),
        _ => None,
    }
}

impl Net {
    /// Applies one operation step of a random schedule.
    fn apply(&mut self, s: Step) {
        let names = ["x", "y"];
        match s {
            Step::Lock { node, client, lock, timeout_ms } => {
                self.lock(id(node), ClientId(client), names[usize::from(lock)], ms(timeout_ms));
            }
            Step::TryLock { node, client, lock } => {
                self.try_lock(id(node), ClientId(client), names[usize::from(lock)]);
            }
            Step::Unlock { node, client, lock } => {
                let n = name(names[usize::from(lock)]);
                let _ = self.with(id(node), |nd, now| nd.unlock(now, ClientId(client), &n));
                self.deliver_all();
            }
            Step::Release { node, client } => {
                self.with(id(node), |nd, now| nd.release_client(now, ClientId(client)));
                self.deliver_all();
            }
            Step::DropNext { kind } => self.drop_next(move |_, _, m| {
                matches!(
                    (kind, m),
                    (0, LockMsg::Lock(_))
                        | (1, LockMsg::LockRsp(_))
                        | (2, LockMsg::Unlock(_))
                        | (3, LockMsg::UnlockRsp(_))
                        | (4, LockMsg::Cancel(_))
                )
            }),
            Step::Advance { ms: d } => self.advance(ms(d)),
            Step::Replay { back } => self.replay(back),
            Step::CrashCoordinator => {}
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// DESIGN Split brain and modes. Majority mode, with views installed on
    /// the minority side before the majority side: no name ever has two
    /// holders anywhere in the cluster. Available mode: sides may both
    /// grant, but after the final merge every duplicate is resolved. Either
    /// way, after the merge every operation finishes and exclusion holds
    /// (invariants 1 and 6).
    #[test]
    fn random_partitions_keep_exclusion(
        majority in proptest::prelude::any::<bool>(),
        delay_ms in proptest::prelude::prop_oneof![proptest::prelude::Just(0u64), 1..300u64],
        steps in proptest::collection::vec(split_step(), 1..60),
    ) {
        let members = NonZeroUsize::new(5).unwrap();
        let mode = if majority { Mode::Majority { members } } else { Mode::Available };
        let mut net = Net::new(5, |cfg| {
            cfg.mode = mode;
            cfg.lock_delay = ms(delay_ms);
        });
        let mut all: Vec<NodeId> = (1..=5).map(id).collect();
        for s in steps {
            match s {
                // Keep a majority of the 5 alive, so that the final merge
                // can serve (below it, nothing can finish by design).
                SplitStep::Op(Step::CrashCoordinator) if all.len() <= 3 => {}
                SplitStep::Op(Step::CrashCoordinator) => {
                    // The oldest live member crashes; the others see it go.
                    let gone = all.remove(0);
                    net.crash(gone);
                    net.heal();
                    net.install_view(&all, false);
                }
                SplitStep::Op(op) if op_node(&op).is_some_and(|n| net.crashed.contains(&id(n))) => {}
                SplitStep::Op(op) => net.apply(op),
                SplitStep::Partition { mask } => {
                    net.heal();
                    let (left, right): (Vec<NodeId>, Vec<NodeId>) =
                        all.iter().partition(|n| mask & (1 << (n.epoch - 1)) != 0);
                    net.partition(&left, &right);
                    let (minority, majority) = if left.len() < right.len() { (left, right) } else { (right, left) };
                    net.install_view(&minority, false);
                    net.install_view(&majority, false);
                }
                SplitStep::Merge => {
                    net.heal();
                    net.install_view(&all, true);
                }
            }
            if majority {
                net.check_exclusion();
            }
        }
        net.heal();
        net.install_view(&all, true);
        net.advance(Duration::from_secs(5));
        net.check_exclusion();
        for n in net.nodes.values().filter(|n| !net.crashed.contains(&n.id())) {
            assert_eq!(n.pending_ops(), 0, "{} finished every operation", n.id());
        }
    }
}

/// Found by `random_partitions_keep_exclusion`: a lock freed behind the
/// lock-delay (its holder left the view) and then re-installed from the
/// holder's late reconciliation answer kept its delay; once the delay ran
/// out with the lock held and a waiter queued, nothing could be granted and
/// the delay was never cleared, so `poll_timeout` stayed in the past and
/// `handle_timeout` never moved it (a busy timer loop).
#[test]
fn a_lock_delay_ends_even_when_the_lock_was_reinstalled_meanwhile() {
    let (a, b, c, d, e) = (id(1), id(2), id(3), id(4), id(5));
    let mut net = Net::new(5, |cfg| cfg.lock_delay = ms(1));
    let rc = net.lock(c, C1, "y", Duration::from_secs(5));
    let tc = net.granted(c, rc, C1, "y", 1);
    // c leaves a's view: y is freed behind the lock-delay.
    net.partition(&[a, b], &[c, d, e]);
    net.install_view(&[a, b], false);
    net.install_view(&[c, d, e], false);
    // c comes back (not a merge for a): its late answer re-installs y.
    net.heal();
    net.partition(&[a, b, c], &[d, e]);
    net.install_view(&[d, e], false);
    net.install_view(&[a, b, c], false);
    assert_eq!(net.table(a), vec![(name("y"), owner(c, C1), tc)]);
    let ra = net.lock(a, C1, "y", ms(20));
    net.advance(ms(1));
    let due = net.node(a).poll_timeout().expect("a's waiter has a deadline");
    assert!(due > net.now, "the next timer is in the future, not {due:?} <= {:?}", net.now);
    net.advance(ms(100));
    assert_eq!(
        net.events(a),
        vec![Event::Failed { req: ra, client: C1, name: name("y"), reason: Failure::TimedOut }]
    );
    assert_eq!(net.table(a), vec![(name("y"), owner(c, C1), tc)]);
}

/// The members `coord` sent LOCK-INFO-REQ to, among the last delivered
/// messages.
fn asked_by(net: &Net, coord: NodeId) -> BTreeSet<NodeId> {
    net.log
        .iter()
        .filter(|(from, _, m)| *from == coord && matches!(m, LockMsg::LockInfoReq(_)))
        .map(|(_, to, _)| *to)
        .collect()
}

/// ReconciliationProtocol (LOCK-INFO-REQ to all members), paced: a round
/// asks at most `reconcile_window` members at once, asks the next as
/// answers come in, and stops waiting on a silent member after a few asks,
/// so that a thousand answers never reach the coordinator at once.
#[test]
fn a_round_asks_a_window_of_members_at_a_time() {
    let mut net = Net::without_view(6, |c| c.reconcile_window = 2);
    let all: Vec<NodeId> = net.nodes.keys().copied().collect();
    let others: Vec<NodeId> = all.iter().copied().filter(|n| *n != id(1)).collect();
    // Every answer but the coordinator's own is lost for now.
    net.drop_where(|_, to, m| to == id(1) && matches!(m, LockMsg::LockInfoRsp(_)));
    net.install_view(&all, false);
    let first = asked_by(&net, id(1));
    let first_others = first.iter().filter(|n| **n != id(1)).count();
    assert!(first_others <= 2, "asked {first:?} at once with a window of 2");
    // Silent members give their places up after a few asks: everyone is
    // asked in the end, though nobody answers.
    net.advance(ms(2_000));
    let later = asked_by(&net, id(1));
    assert!(others.iter().all(|n| later.contains(n)), "every member asked in the end: {later:?}");
    // Once answers arrive, the round completes with every member.
    net.heal();
    net.advance(ms(2_000));
    assert!(net.node(id(1)).is_serving());
    assert!(net.node(id(1)).awaiting().is_empty(), "every member answered: {:?}", net.node(id(1)).awaiting());
}

/// With answers coming in, the window moves on one member per answer: a
/// round of many members completes without any member asked twice.
#[test]
fn a_paced_round_completes_without_asking_twice() {
    let mut net = Net::without_view(12, |c| c.reconcile_window = 3);
    let all: Vec<NodeId> = net.nodes.keys().copied().collect();
    net.install_view(&all, false);
    let asks =
        net.log.iter().filter(|(from, _, m)| *from == id(1) && matches!(m, LockMsg::LockInfoReq(_))).count();
    assert!(net.node(id(1)).is_serving() && net.node(id(1)).awaiting().is_empty());
    assert!(asks <= all.len(), "{asks} asks for {} members", all.len());
}

/// A member holding thousands of locks answers a new coordinator one window
/// of parts per LOCK-INFO-REQ (never a burst larger than a socket buffer),
/// and the coordinator asks for the next window as soon as one is in,
/// without waiting for its retransmission timer.
#[test]
fn a_large_answer_comes_in_windows_asked_for_back_to_back() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use swimlock_lock::REPORT_WINDOW_PARTS;

    let (a, b, c) = (id(1), id(2), id(3));
    let mut net = Net::new(3, |_| {});
    // Two whole windows of 32-entry parts and a few more locks.
    let locks = 32 * REPORT_WINDOW_PARTS * 2 + 100;
    for i in 0..locks {
        net.lock(c, C1, &format!("l{i}"), Duration::from_secs(30));
    }
    assert_eq!(net.node(c).held().len(), locks);
    // (asks to c, parts since the last ask, most parts after one ask)
    let seen = Rc::new(RefCell::new((0usize, 0usize, 0usize)));
    let watch = Rc::clone(&seen);
    net.drop_where(move |from, to, m| {
        let mut s = watch.borrow_mut();
        match m {
            LockMsg::LockInfoReq(_) if to == c => (s.0, s.1) = (s.0 + 1, 0),
            LockMsg::LockInfoRsp(_) if from == c => (s.1, s.2) = (s.1 + 1, s.2.max(s.1 + 1)),
            _ => {}
        }
        false
    });
    net.crash(a);
    net.install_view(&[b, c], false);
    let (asks, _, most) = *seen.borrow();
    assert_eq!(asks, 3, "one ask per window, each sent as the previous window came in");
    assert_eq!(most, REPORT_WINDOW_PARTS, "no ask drew more than one window");
    assert_eq!(net.table(b).iter().filter(|(_, o, _)| o.node == c).count(), locks, "the whole answer is in");
}

/// A member that joins holding a lock it was granted elsewhere (a node that
/// formed a group of its own) does not cancel the lock-delay of a departed
/// holder of that lock: when it lets go, the next waiter still waits out the
/// departed holder's delay (simulator seed 2123).
#[test]
fn a_reported_hold_keeps_a_departed_holders_lock_delay() {
    let (a, b, c, e) = (id(1), id(2), id(3), id(5));
    let mut net = Net::new(3, |_| {});
    // Two more rounds: e's term (its first) stays below the coordinator's,
    // so its answer is merged into the serving table.
    for _ in 0..2 {
        net.install_view(&[a, b, c], true);
        net.advance(ms(500));
    }
    let rc = net.lock(c, C1, "x", Duration::from_secs(30));
    net.granted(c, rc, C1, "x", 1);
    // e, in a group of its own, takes x from itself.
    net.add(LockNode::new(e, Config::lan(5)));
    net.install_view(&[e], false);
    net.advance(ms(10));
    let re = net.lock(e, C1, "x", Duration::from_secs(30));
    net.granted(e, re, C1, "x", 1);
    // c leaves holding x: b's request for it waits out c's lease.
    net.crash(c);
    net.install_view(&[a, b], false);
    let departed_at = net.now;
    let rb = net.lock(b, C1, "x", Duration::from_secs(30));
    // e joins, reports x, and lets it go.
    net.install_view(&[a, b, e], false);
    net.advance(ms(50));
    net.unlock(e, C1, "x");
    let lock_delay = Config::lan(1).lock_delay;
    net.advance(lock_delay - (net.now - departed_at) - ms(10));
    assert!(net.events(b).is_empty(), "b was granted x inside the departed holder's lock-delay");
    net.advance(ms(100));
    net.granted(b, rb, C1, "x", 1);
}
