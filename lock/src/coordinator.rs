//! The coordinator role of CENTRAL_LOCK2: the reconciliation round, then
//! the lock table (see [`crate::serving`]).
//!
//! A coordinator is created by [`Coordinator::become_coord`] and dropped on
//! CeaseCoord; its phase says whether it may grant:
//! [`Phase::Reconciling`] collects LOCK-INFO-RSP answers and grants
//! nothing, [`Phase::Serving`] owns the lock table, [`Phase::Halted`] grants
//! nothing until the operator accepts a term no round should have seen.
//! Members that did not answer by the deadline stay in `awaiting` and are
//! asked again; their late answers are merged into the table, duplicates
//! and all.

use std::collections::BTreeMap;
use std::time::Duration;

use swimlock_wire::lock::{
    CancelReq, DuplicateLock, HeldLock, Hello, HelloAck, LockInfoReq, LockInfoRsp, LockMsg, LockReq, Renew,
    RenewAck, UnlockReq, VouchSeen,
};
use swimlock_wire::{LockName, NodeId, Owner, ReqId, Token};

use crate::config::{Config, Mode, REPORT_WINDOW_PARTS};
use crate::node::{Alert, Event, Notice, Outbox, TableStats, Waiting};
use crate::serving::{Serving, Session};
use crate::token::TokenIssuer;
use crate::vouch::{self, VouchCheck};

/// Bytes a reported entry is counted for, besides its name, while an answer
/// is put together (the decoded entry and its share of the part).
const ENTRY_OVERHEAD: usize = 96;

/// One member's answer to a reconciliation round, put together from its
/// parts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub next_req: ReqId,
    pub sync: u64,
    pub max_term: u32,
    /// The member's clock when it answered: its leases run from it.
    pub stamp: u64,
    pub held: Vec<HeldLock>,
    pub pending: Vec<LockReq>,
    /// The member's record of the departed coordinator's last vouch, if
    /// asked for (see [`crate::vouch`]).
    pub vouch: Option<VouchSeen>,
    /// See [`LockInfoRsp::unreported_ms`].
    pub unreported_ms: u32,
}

/// The parts of a member's answer received so far, and when to ask again.
#[derive(Clone, Debug)]
struct Assembly {
    /// Answers that count have at least this `sync`: when a member is asked
    /// again, its earlier answer to the same term is out of date, and a
    /// late copy of it must not pass for the new one.
    min_sync: u64,
    parts: Option<u16>,
    got: BTreeMap<u16, LockInfoRsp>,
    /// Entries and bytes of `got`, against the limits of [`Config`].
    entries: usize,
    bytes: usize,
    /// An answer refused as too large: its parts are dropped.
    refused: Option<u64>,
    /// Until then (available mode) new grants wait for this answer: the
    /// member may not know the round's term yet, nor have told its locks.
    hold_until: Duration,
    next_ask: Duration,
    backoff: Duration,
    /// LOCK-INFO-REQs sent to this member for this answer.
    asks: u32,
    /// When the last was sent.
    asked_at: Duration,
    /// Parts received since the last ask: a whole window of them means the
    /// member has more to send (see [`REPORT_WINDOW_PARTS`]).
    fresh: usize,
}

/// What adding a part to an [`Assembly`] came to.
enum Added {
    /// More parts are needed.
    Incomplete,
    /// The whole answer.
    Complete(Report),
    /// The answer is larger than the limits: refused.
    TooLarge,
}

impl Assembly {
    fn new(now: Duration, config: &Config, min_sync: u64) -> Assembly {
        Assembly {
            min_sync,
            parts: None,
            got: BTreeMap::new(),
            entries: 0,
            bytes: 0,
            refused: None,
            hold_until: now + config.stretched(config.lease),
            next_ask: now,
            backoff: config.retransmit_initial,
            asks: 0,
            asked_at: now,
            fresh: 0,
        }
    }

    /// Asked, not yet answered, and not silent for long enough to give its
    /// place in the window up.
    fn in_flight(&self) -> bool {
        (1..crate::config::RECONCILE_WINDOW_ASKS).contains(&self.asks)
    }

    fn clear(&mut self) {
        self.got.clear();
        self.parts = None;
        self.entries = 0;
        self.bytes = 0;
    }

    /// Adds a part; returns the whole report once every part of one answer
    /// is in. A part of a newer answer (higher `sync`) replaces the parts of
    /// an older one; parts of older answers are dropped, and so are the
    /// parts of an answer refused as too large.
    fn add(&mut self, rsp: LockInfoRsp, config: &Config) -> Added {
        if rsp.sync < self.min_sync || rsp.part >= rsp.parts || self.refused.is_some_and(|s| rsp.sync <= s) {
            return Added::Incomplete;
        }
        if let Some(sync) = self.got.values().next().map(|p| p.sync) {
            if rsp.sync < sync {
                return Added::Incomplete;
            }
            if rsp.sync > sync {
                self.clear();
            }
        }
        if self.parts.is_some_and(|p| p != rsp.parts) || self.got.contains_key(&rsp.part) {
            return Added::Incomplete;
        }
        self.fresh += 1;
        let entries = rsp.held.len() + rsp.pending.len();
        let names: usize = rsp.held.iter().map(|h| h.name.as_str().len()).sum::<usize>()
            + rsp.pending.iter().map(|p| p.name.as_str().len()).sum::<usize>();
        self.entries += entries;
        self.bytes += names + (entries + 1) * ENTRY_OVERHEAD;
        let too_many_parts = usize::from(rsp.parts) > config.max_report_entries.div_ceil(32).max(1);
        if self.entries > config.max_report_entries || self.bytes > config.max_report_bytes || too_many_parts
        {
            self.refused = Some(rsp.sync);
            self.clear();
            return Added::TooLarge;
        }
        let parts = rsp.parts;
        self.parts = Some(parts);
        self.got.insert(rsp.part, rsp);
        if self.got.len() < usize::from(parts) {
            return Added::Incomplete;
        }
        let mut report = Report::default();
        for part in std::mem::take(&mut self.got).into_values() {
            report.next_req = part.next_req;
            report.sync = part.sync;
            report.stamp = part.stamp;
            report.max_term = report.max_term.max(part.max_term);
            report.vouch = report.vouch.or(part.vouch);
            report.unreported_ms = report.unreported_ms.max(part.unreported_ms);
            report.held.extend(part.held);
            report.pending.extend(part.pending);
        }
        self.clear();
        Added::Complete(report)
    }
}

/// The phase of a coordinator.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Waiting for LOCK-INFO-RSP answers; no grants.
    Reconciling {
        /// When to serve without the members that have not answered.
        deadline: Duration,
        /// Complete answers so far.
        reports: BTreeMap<NodeId, Report>,
    },
    /// Granting.
    Serving(Box<Serving>),
    /// A member reported a term no honest round reaches (or the term space
    /// is used up): nothing is granted until the operator accepts it.
    Halted {
        /// The term that was refused.
        term: u32,
    },
}

/// What a new coordinator knows from its own views when it takes over.
#[derive(Clone, Debug, Default)]
pub(crate) struct Takeover {
    /// No fresh grant before this instant: a member that departed recently
    /// may hold locks no member will report.
    pub fresh_after: Option<Duration>,
    /// The highest term the operator accepted (see [`Phase::Halted`]).
    pub accepted_term: u32,
    /// When the last lease of this node's own clients that a previous
    /// coordinator renewed ends.
    pub linger_until: Duration,
    /// When members last sent this node (as an earlier coordinator)
    /// something a lease may run from.
    pub last_heard: BTreeMap<NodeId, Duration>,
    /// The departed coordinator whose own leases its witnesses' records
    /// may show over before `fresh_after` says (not included in it).
    pub vouch: Option<VouchCheck>,
}

/// The coordinator role of one node.
#[derive(Debug)]
pub(crate) struct Coordinator {
    config: Config,
    /// No new grants before this instant (see `become_coord`).
    grace_until: Option<Duration>,
    /// The round: every member learns it from LOCK-INFO-REQ, and tokens of
    /// this coordinator carry it.
    term: u32,
    /// The highest term known before the round, for the step limit.
    base_term: u32,
    accepted_term: u32,
    members: Vec<NodeId>,
    /// Members whose answer is not complete yet.
    awaiting: BTreeMap<NodeId, Assembly>,
    /// When each member last sent something a lease may run from.
    last_heard: BTreeMap<NodeId, Duration>,
    /// Until then this node's own clients may hold locks under leases a
    /// previous coordinator renewed (told to members with each
    /// LOCK-INFO-REQ, for a successor).
    linger_until: Duration,
    /// Until then a member that left may still hold a lock under a lease:
    /// a table rebuilt by a new round (which cannot know those locks) grants
    /// nothing new before.
    departed_until: Option<Duration>,
    /// The witnesses' records asked for in the round, and what they showed
    /// (see [`Takeover::vouch`]).
    vouch: Option<VouchCheck>,
    vouched: BTreeMap<NodeId, Duration>,
    phase: Phase,
}

impl Coordinator {
    /// See [`crate::LockNode::set_lock_delay`].
    pub fn set_lock_delay(&mut self, lock_delay: Duration) {
        self.config.lock_delay = lock_delay;
    }

    /// BecomeCoord: starts the reconciliation round under `term`. The table
    /// is rebuilt from the members' answers, so it cannot know a holder
    /// that does not answer; fresh grants wait for what may still be held
    /// unseen (see [`Takeover`]), and in majority mode for the lock-delay.
    pub fn become_coord(
        now: Duration,
        members: &[NodeId],
        term: u32,
        takeover: Takeover,
        config: &Config,
        out: &mut Outbox,
    ) -> Self {
        let majority_grace = match config.mode {
            Mode::Majority { .. } if !config.lock_delay.is_zero() => Some(now + config.lock_delay),
            _ => None,
        };
        let mut coord = Coordinator {
            config: config.clone(),
            grace_until: majority_grace.max(takeover.fresh_after),
            term,
            base_term: term.saturating_sub(1),
            accepted_term: takeover.accepted_term,
            members: members.to_vec(),
            awaiting: BTreeMap::new(),
            last_heard: takeover.last_heard,
            departed_until: None,
            linger_until: takeover.linger_until,
            vouch: takeover.vouch,
            vouched: BTreeMap::new(),
            phase: Phase::Reconciling { deadline: now, reports: BTreeMap::new() },
        };
        coord.start_round(now, term, out);
        coord
    }

    /// ReconciliationProtocol, first half: LOCK-INFO-REQ to every member.
    fn start_round(&mut self, now: Duration, term: u32, out: &mut Outbox) {
        out.stats.reconciliations += 1;
        self.term = term;
        self.awaiting = self.members.iter().map(|m| (*m, Assembly::new(now, &self.config, 0))).collect();
        self.phase =
            Phase::Reconciling { deadline: now + self.config.reconcile_timeout, reports: BTreeMap::new() };
        self.ask_due(now, out);
    }

    /// A new round above `seen`, unless that would step past what the
    /// operator allows or tokens can carry: then the coordinator halts.
    fn round_above(&mut self, now: Duration, seen: u32, out: &mut Outbox) {
        let limit = self.base_term.saturating_add(self.config.max_term_step).max(self.accepted_term);
        if seen > limit {
            self.halt(seen, Alert::TermJump { term: seen, limit }, out);
        } else if seen >= Token::MAX_TERM {
            self.halt(seen, Alert::TermsExhausted, out);
        } else {
            self.start_round(now, TokenIssuer::next_term(seen), out);
        }
    }

    fn halt(&mut self, term: u32, alert: Alert, out: &mut Outbox) {
        if !matches!(self.phase, Phase::Halted { .. }) {
            out.emit(Event::Alert(alert));
        }
        self.phase = Phase::Halted { term };
    }

    /// The operator accepts terms up to `term`: a coordinator halted on
    /// one of them starts a round above it.
    pub fn accept_term(&mut self, now: Duration, term: u32, out: &mut Outbox) {
        self.accepted_term = self.accepted_term.max(term);
        if let Phase::Halted { term: refused } = self.phase
            && refused <= self.accepted_term
        {
            self.base_term = refused;
            self.round_above(now, refused, out);
        }
    }

    /// The round's term: the only term this coordinator grants under.
    pub fn term(&self) -> u32 {
        self.term
    }

    /// Whether the coordinator grants (reconciliation is over).
    pub fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Serving(_))
    }

    /// The term that halted this coordinator, if it is halted.
    pub fn halted(&self) -> Option<u32> {
        match self.phase {
            Phase::Halted { term } => Some(term),
            _ => None,
        }
    }

    /// Members whose answer to the round is still missing.
    pub fn awaiting(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.awaiting.keys().copied()
    }

    fn serving(&self) -> Option<&Serving> {
        match &self.phase {
            Phase::Serving(s) => Some(s),
            _ => None,
        }
    }

    /// Size of the lock table (empty while reconciling).
    pub fn table_stats(&self) -> TableStats {
        self.serving().map(Serving::stats).unwrap_or_default()
    }

    /// Whether request `req` of `owner` for `name` holds the lock or waits
    /// in its queue.
    pub fn knows_request(&self, owner: Owner, name: &LockName, req: ReqId) -> bool {
        self.serving().is_some_and(|s| s.knows_request(owner, name, req))
    }

    /// The holder and token of every held lock.
    pub fn holders(&self) -> Vec<(LockName, Owner, Token)> {
        self.serving().map(Serving::holders).unwrap_or_default()
    }

    /// Every queue: name, then the waiters in grant order (owner, request,
    /// ticket).
    pub fn queues(&self) -> Vec<(LockName, Vec<Waiting>)> {
        self.serving().map(Serving::queues).unwrap_or_default()
    }

    /// Names that are free, past any lock-delay, and have waiters.
    pub fn stalled(&self, now: Duration) -> Vec<LockName> {
        self.serving().map(|s| s.stalled(now)).unwrap_or_default()
    }

    /// Whether the coordinator may make new grants at `now`.
    pub fn grants_open(&self, now: Duration) -> bool {
        self.serving().is_some_and(|s| s.may_grant(now))
    }

    /// Sends LOCK-INFO-REQ to every awaited member whose ask is due: again
    /// to those asked before, and first asks while fewer than
    /// `reconcile_window` members are in flight (asked, not answered, not
    /// given up on).
    fn ask_due(&mut self, now: Duration, out: &mut Outbox) {
        let linger = self.linger_until.saturating_sub(now).as_millis();
        let linger_ms = u32::try_from(linger).unwrap_or(u32::MAX);
        let (term, backoff_max) = (self.term, self.config.retransmit_max);
        let vouch_of = self.vouch.as_ref().map(|v| v.coordinator);
        let mut ask = |node: NodeId, a: &mut Assembly| {
            a.asks = a.asks.saturating_add(1);
            a.asked_at = now;
            a.fresh = 0;
            let have = a.got.keys().copied().collect();
            out.send(node, LockMsg::LockInfoReq(LockInfoReq { term, have, linger_ms, vouch_of }));
            a.next_ask = now + a.backoff;
            a.backoff = (a.backoff * 2).min(backoff_max);
        };
        // Again, to members asked before (some leave the window by it).
        for (node, a) in self.awaiting.iter_mut().filter(|(_, a)| a.asks > 0 && a.next_ask <= now) {
            ask(*node, a);
        }
        let in_flight = self.awaiting.values().filter(|a| a.in_flight()).count();
        let room = self.config.reconcile_window.saturating_sub(in_flight);
        for (node, a) in self.awaiting.iter_mut().filter(|(_, a)| a.asks == 0 && a.next_ask <= now).take(room)
        {
            ask(*node, a);
        }
    }

    /// A view with the same coordinator and no merge: members that left
    /// lose their locks, members that joined are asked for theirs.
    pub fn on_view(&mut self, now: Duration, members: &[NodeId], out: &mut Outbox) {
        let departed: Vec<NodeId> = self.members.iter().filter(|m| !members.contains(m)).copied().collect();
        // A member that left before it answered may hold locks the table
        // does not list: nothing new is granted until its leases are over.
        let unknown: Vec<NodeId> =
            departed.iter().filter(|n| self.awaiting.remove(n).is_some()).copied().collect();
        for node in members {
            if !self.members.contains(node) {
                self.awaiting.insert(*node, Assembly::new(now, &self.config, 0));
            }
        }
        self.members = members.to_vec();
        let departures: Vec<(NodeId, Duration)> =
            departed.iter().map(|node| (*node, self.lease_bound(now, *node))).collect();
        for (_, until) in &departures {
            self.departed_until = self.departed_until.max(Some(*until));
        }
        let term = self.term;
        match &mut self.phase {
            Phase::Reconciling { reports, .. } => {
                for node in &departed {
                    reports.remove(node);
                }
                if self.awaiting.is_empty() {
                    self.finish_reconciliation(now, out);
                }
            }
            Phase::Serving(s) => {
                for (node, until) in departures {
                    if unknown.contains(&node) {
                        s.extend_grace(until);
                    }
                    s.purge_node(now, term, node, until, out);
                }
            }
            Phase::Halted { .. } => {}
        }
        self.refresh_hold(now, out);
        self.ask_due(now, out);
    }

    /// On reception of LOCK-INFO-RSP: adds the part; a complete answer goes
    /// into the round, or into the table if the round is over.
    pub fn on_lock_info_rsp(&mut self, now: Duration, from: NodeId, rsp: LockInfoRsp, out: &mut Outbox) {
        if rsp.term != self.term {
            out.stats.dropped += 1;
            return;
        }
        self.heard(now, from);
        let Some(assembly) = self.awaiting.get_mut(&from) else {
            out.stats.dropped += 1;
            return;
        };
        let report = match assembly.add(rsp, &self.config) {
            Added::Incomplete if assembly.fresh >= REPORT_WINDOW_PARTS => {
                // A whole window came in: the next one is asked for now, and
                // the member, which is answering, keeps its place.
                assembly.asks = 1;
                assembly.next_ask = now;
                assembly.backoff = self.config.retransmit_initial;
                self.ask_due(now, out);
                return;
            }
            Added::Incomplete => return,
            Added::TooLarge => {
                out.stats.reports_refused += 1;
                out.emit(Event::Alert(Alert::ReportTooLarge { member: from }));
                return;
            }
            Added::Complete(report) => report,
        };
        self.awaiting.remove(&from);
        if report.unreported_ms > 0 {
            // Members of a group the answering member coordinated, gone
            // from its view, may hold locks it granted and nobody reports.
            // No honest bound is longer than a lease or the lock-delay.
            let most = self.config.longest_unseen_hold();
            let until = now + Duration::from_millis(u64::from(report.unreported_ms)).min(most);
            self.departed_until = self.departed_until.max(Some(until));
            if let Phase::Serving(s) = &mut self.phase {
                s.extend_grace(until);
            }
        }
        if let (Some(check), Some(seen)) = (&self.vouch, &report.vouch)
            && seen.coordinator == check.coordinator
            && seen.view == check.view
        {
            let at = vouch::arrival(now, report.stamp, seen, &self.config);
            self.vouched.entry(from).and_modify(|t| *t = (*t).max(at)).or_insert(at);
        }
        match &mut self.phase {
            Phase::Reconciling { reports, .. } => {
                reports.insert(from, report);
                if self.awaiting.is_empty() {
                    self.finish_reconciliation(now, out);
                }
            }
            Phase::Serving(_) if report.max_term >= self.term => {
                // The member saw a term this round is not above: every
                // member must learn a higher one before it is granted under.
                self.round_above(now, report.max_term, out);
            }
            Phase::Serving(s) => s.merge_late_report(now, self.term, from, report, out),
            Phase::Halted { .. } => {}
        }
        // The answer freed a place in the window: the next member is asked.
        self.ask_due(now, out);
        self.refresh_hold(now, out);
        self.after_serving(now, out);
    }

    /// ReconciliationProtocol, second half: rebuild the table from the
    /// answers (dropping duplicates), re-queue pending requests in ticket
    /// order, then serve. If a member has seen a term at least as high as
    /// this round's, the round starts again above it, so that every member
    /// that answers learns the term this coordinator grants under.
    fn finish_reconciliation(&mut self, now: Duration, out: &mut Outbox) {
        let Phase::Reconciling { reports, .. } = &mut self.phase else { return };
        let reports = std::mem::take(reports);
        let learned = reports.values().map(|r| r.max_term).max().unwrap_or(0);
        if learned >= self.term {
            self.round_above(now, learned, out);
            return;
        }
        // The departed coordinator's own leases: over at the latest vouch a
        // witness recorded plus the own lease, or waited out as before.
        let own =
            self.vouch.as_ref().map(|check| check.until(&self.config, |w| self.vouched.get(&w).copied()));
        if let (Some(check), Some(until)) = (&self.vouch, own)
            && until < check.fallback
            && check.fallback > now
        {
            out.stats.witnessed_takeovers += 1;
        }
        let grace =
            self.grace_until.max(self.departed_until.filter(|t| *t > now)).max(own.filter(|t| *t > now));
        let mut serving = Serving::new(self.term, grace, &self.config);
        // Paused before the pending requests are admitted: they are new
        // grants too.
        serving.set_hold(now, self.term, self.holds(now), out);
        let mut pending = Vec::new();
        let duplicates_before = out.stats.duplicates_resolved;
        for (node, report) in reports {
            let session = Session::new(report.sync, report.next_req);
            pending.extend(serving.install_report(now, self.term, node, session, report, out));
        }
        out.notice(Notice::ReconciliationFinished {
            term: self.term,
            locks: serving.stats().held,
            duplicates: out.stats.duplicates_resolved - duplicates_before,
        });
        sort_by_ticket(&mut pending);
        for (node, req) in pending {
            serving.admit_lock(now, self.term, node, req, out);
        }
        self.phase = Phase::Serving(Box::new(serving));
        self.refresh_hold(now, out);
    }

    /// Pauses new grants while a member has not answered: it may not have
    /// recorded the term this coordinator grants under (so a successor of
    /// its could issue lower tokens), and it may hold locks nobody else
    /// knows of. In majority mode until it answers or leaves; in available
    /// mode at most until a lease renewed before it was asked has ended.
    fn refresh_hold(&mut self, now: Duration, out: &mut Outbox) {
        let hold = self.holds(now);
        let term = self.term;
        if let Phase::Serving(s) = &mut self.phase {
            s.set_hold(now, term, hold, out);
        }
    }

    fn holds(&self, now: Duration) -> bool {
        self.hold_end(now).is_some()
    }

    /// When the current hold on new grants ends by itself, if one is on
    /// (`Duration::MAX`: only an answer or a departure ends it).
    fn hold_end(&self, now: Duration) -> Option<Duration> {
        match self.config.mode {
            Mode::Majority { .. } => (!self.awaiting.is_empty()).then_some(Duration::MAX),
            Mode::Available => self.awaiting.values().map(|a| a.hold_until).filter(|t| *t > now).max(),
        }
    }

    /// Starts a new round when the issuer has used up its term.
    fn after_serving(&mut self, now: Duration, out: &mut Outbox) {
        if let Phase::Serving(s) = &self.phase
            && s.exhausted()
        {
            let term = self.term;
            self.base_term = term;
            self.round_above(now, term, out);
        }
    }

    /// When members last sent something a lease may run from (handed on to
    /// this node's next coordinator role).
    pub fn take_last_heard(&mut self) -> BTreeMap<NodeId, Duration> {
        std::mem::take(&mut self.last_heard)
    }

    /// Notes that `from` sent something a lease may run from.
    fn heard(&mut self, now: Duration, from: NodeId) {
        self.last_heard.insert(from, now);
    }

    /// When a member that left at `now` can no longer be inside a lease:
    /// after the lock-delay, and after a lease renewed when it was last
    /// heard of.
    fn lease_bound(&mut self, now: Duration, node: NodeId) -> Duration {
        let heard = self.last_heard.remove(&node);
        let lease_end = heard.map_or(now, |t| t + self.config.stretched(self.config.lease));
        lease_end.max(now + self.config.lock_delay)
    }

    /// Whether requests of `from` may be served now. A member that never
    /// answered this round, or answered another round since (its `sync`
    /// count is higher than in its answer here), is asked for its locks
    /// again first: its new answer replaces what the table knew of it.
    fn in_sync(&mut self, now: Duration, from: NodeId, sync: u64, out: &mut Outbox) -> bool {
        let Phase::Serving(s) = &mut self.phase else {
            out.stats.dropped += 1;
            return false;
        };
        if s.in_sync(from, sync) {
            return true;
        }
        out.stats.dropped += 1;
        if self.members.contains(&from) && !self.awaiting.contains_key(&from) {
            s.forget_session(from);
            self.awaiting.insert(from, Assembly::new(now, &self.config, sync));
            self.refresh_hold(now, out);
            self.ask_due(now, out);
        }
        false
    }

    /// HELLO from a member that now follows this coordinator: acknowledged
    /// if its locks are known here, else it is asked for them.
    pub fn handle_hello(&mut self, now: Duration, from: NodeId, hello: Hello, out: &mut Outbox) {
        // A member asked before it followed this coordinator dropped the
        // ask; it follows now, so it is asked again at once instead of
        // after its backoff (in a large cluster views arrive over a few
        // hundred milliseconds, and the last one decides the round). A
        // HELLO right after the ask may have crossed it: not that one.
        if let Some(a) = self.awaiting.get_mut(&from)
            && a.asks > 0
            && a.next_ask > now
            && now >= a.asked_at + self.config.retransmit_initial
        {
            a.next_ask = now;
            self.ask_due(now, out);
        }
        if self.in_sync(now, from, hello.sync, out) {
            out.send(from, LockMsg::HelloAck(HelloAck { term: self.term }));
        }
    }

    /// A member renews the leases of its locks: acknowledged if its locks
    /// are known here (then the table's copy of them is what it holds).
    pub fn handle_renew(&mut self, now: Duration, from: NodeId, renew: Renew, out: &mut Outbox) {
        self.heard(now, from);
        if self.in_sync(now, from, renew.sync, out) {
            out.send(from, LockMsg::RenewAck(RenewAck { stamp: renew.stamp, term: self.term }));
        }
    }

    /// LOCK(X) from a member.
    pub fn handle_lock(&mut self, now: Duration, from: NodeId, req: LockReq, out: &mut Outbox) {
        self.heard(now, from);
        if self.in_sync(now, from, req.sync, out)
            && let Phase::Serving(s) = &mut self.phase
        {
            s.handle_lock(now, self.term, from, req, out);
        }
        self.after_serving(now, out);
    }

    /// UNLOCK(X) from a member.
    pub fn handle_unlock(&mut self, now: Duration, from: NodeId, req: UnlockReq, out: &mut Outbox) {
        if self.in_sync(now, from, req.sync, out)
            && let Phase::Serving(s) = &mut self.phase
        {
            s.handle_unlock(now, self.term, from, req, out);
        }
        self.after_serving(now, out);
    }

    /// A member withdraws a lock request.
    pub fn handle_cancel(&mut self, now: Duration, from: NodeId, req: CancelReq, out: &mut Outbox) {
        if self.in_sync(now, from, req.sync, out)
            && let Phase::Serving(s) = &mut self.phase
        {
            s.handle_cancel(now, self.term, from, req, out);
        }
        self.after_serving(now, out);
    }

    /// A member acknowledged a DUPLICATE-LOCK.
    pub fn on_duplicate_ack(&mut self, now: Duration, from: NodeId, dup: DuplicateLock, out: &mut Outbox) {
        if let Phase::Serving(s) = &mut self.phase {
            s.on_duplicate_ack(now, self.term, from, dup, out);
        }
        self.after_serving(now, out);
    }

    pub fn handle_timeout(&mut self, now: Duration, out: &mut Outbox) {
        self.ask_due(now, out);
        self.refresh_hold(now, out);
        let term = self.term;
        match &mut self.phase {
            Phase::Reconciling { deadline, .. } => {
                if *deadline <= now {
                    self.finish_reconciliation(now, out);
                }
            }
            Phase::Serving(s) => s.handle_timeout(now, term, out),
            Phase::Halted { .. } => {}
        }
        self.after_serving(now, out);
    }

    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        // Members waiting for a place in the window are asked when an
        // answer frees one (or a silent member gives its place up at its
        // own next ask), not by a deadline of their own.
        let asks = self.awaiting.values().filter(|a| a.asks > 0).map(|a| a.next_ask).min();
        let hold_end = self.hold_end(now).filter(|t| *t < Duration::MAX);
        let phase = match &self.phase {
            Phase::Reconciling { deadline, .. } => Some(*deadline),
            Phase::Serving(s) => s.poll_timeout(),
            Phase::Halted { .. } => None,
        };
        [asks, hold_end, phase].into_iter().flatten().min()
    }
}

/// Orders re-queued requests by the ticket a previous coordinator gave
/// them; requests never queued go last, in a fixed order.
pub(crate) fn sort_by_ticket(pending: &mut [(NodeId, LockReq)]) {
    pending.sort_by_key(|(node, req)| (req.ticket.unwrap_or(Token(u64::MAX)), *node, req.id));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(sync: u64, part: u16, parts: u16) -> LockInfoRsp {
        LockInfoRsp {
            term: 1,
            part,
            parts,
            next_req: ReqId(sync * 10),
            max_term: 0,
            sync,
            stamp: 0,
            held: Vec::new(),
            pending: Vec::new(),
            vouch: None,
            unreported_ms: 0,
        }
    }

    fn complete(added: Added) -> Option<Report> {
        match added {
            Added::Complete(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn a_late_copy_of_an_earlier_answer_does_not_pass_for_the_new_one() {
        let config = Config::lan(1);
        // Asked again because the member answered a round with sync 6.
        let mut asm = Assembly::new(Duration::ZERO, &config, 6);
        assert!(complete(asm.add(part(5, 0, 1), &config)).is_none(), "the old answer (sync 5) is dropped");
        let report = complete(asm.add(part(7, 0, 1), &config)).expect("the new answer completes");
        assert_eq!((report.sync, report.next_req), (7, ReqId(70)));
    }

    #[test]
    fn parts_of_two_answers_are_never_mixed() {
        let config = Config::lan(1);
        let mut asm = Assembly::new(Duration::ZERO, &config, 0);
        assert!(complete(asm.add(part(3, 0, 2), &config)).is_none());
        // A newer answer starts over; a part of the older one is dropped.
        assert!(complete(asm.add(part(4, 1, 2), &config)).is_none());
        assert!(
            complete(asm.add(part(3, 1, 2), &config)).is_none(),
            "part 1 of the old answer does not complete the new"
        );
        let report = complete(asm.add(part(4, 0, 2), &config)).expect("both parts of the new answer");
        assert_eq!(report.sync, 4);
    }

    #[test]
    fn an_answer_over_the_limits_is_refused_and_its_parts_dropped() {
        let mut config = Config::lan(1);
        config.max_report_bytes = 10 * ENTRY_OVERHEAD;
        let mut asm = Assembly::new(Duration::ZERO, &config, 0);
        let mut big = part(1, 0, 3);
        big.held = (0..16)
            .map(|i| HeldLock {
                client: swimlock_wire::ClientId(i),
                name: LockName::new(format!("n{i}")).unwrap(),
                token: Token(i),
                req: ReqId(i),
            })
            .collect();
        assert!(matches!(asm.add(big, &config), Added::TooLarge));
        assert_eq!((asm.entries, asm.bytes, asm.got.len()), (0, 0, 0), "nothing kept");
        // More parts of the refused answer are dropped, not buffered.
        assert!(matches!(asm.add(part(1, 1, 3), &config), Added::Incomplete));
        assert!(asm.got.is_empty());
        // A later answer is heard again.
        assert!(complete(asm.add(part(2, 0, 1), &config)).is_some());
    }

    #[test]
    fn a_repeated_part_is_counted_once() {
        let config = Config::lan(1);
        let mut asm = Assembly::new(Duration::ZERO, &config, 0);
        assert!(complete(asm.add(part(1, 0, 2), &config)).is_none());
        let bytes = asm.bytes;
        assert!(complete(asm.add(part(1, 0, 2), &config)).is_none());
        assert_eq!(asm.bytes, bytes);
    }
}
