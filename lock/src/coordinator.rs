//! The coordinator role of CENTRAL_LOCK2: reconciliation, then the lock
//! table and its handlers.
//!
//! A coordinator is created by [`Coordinator::become_coord`] and dropped on
//! CeaseCoord; its phase says whether it may grant:
//! [`Phase::Reconciling`] collects LOCK-INFO-RSP answers and grants
//! nothing, [`Phase::Serving`] owns the lock table. Members that did not
//! answer by the deadline stay in `awaiting` and are asked again; their
//! late answers are merged into the table, duplicates and all.

use std::collections::BTreeMap;
use std::time::Duration;

use swimlock_wire::lock::{
    CancelReq, Denial, DuplicateLock, HeldLock, Hello, HelloAck, LockInfoReq, LockInfoRsp, LockMsg,
    LockOutcome, LockReq, LockRsp, UnlockReq, UnlockRsp, Wait,
};
use swimlock_wire::{ClientId, LockName, NodeId, Owner, ReqId, Token};

use crate::config::{Config, Mode};
use crate::node::{Outbox, TableStats};
use crate::table::{Grant, LockTable, Waiter};
use crate::token::TokenIssuer;

/// One member's answer to a reconciliation round, put together from its
/// parts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    next_req: ReqId,
    sync: u64,
    max_term: u32,
    held: Vec<HeldLock>,
    pending: Vec<LockReq>,
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
    next_ask: Duration,
    backoff: Duration,
}

impl Assembly {
    fn new(now: Duration, config: &Config, min_sync: u64) -> Assembly {
        Assembly {
            min_sync,
            parts: None,
            got: BTreeMap::new(),
            next_ask: now,
            backoff: config.retransmit_initial,
        }
    }

    /// Adds a part; returns the whole report once every part of one answer
    /// is in. A part of a newer answer (higher `sync`) replaces the parts of
    /// an older one; parts of older answers are dropped.
    fn add(&mut self, rsp: LockInfoRsp) -> Option<Report> {
        if rsp.sync < self.min_sync || rsp.part >= rsp.parts {
            return None;
        }
        if let Some(sync) = self.got.values().next().map(|p| p.sync) {
            if rsp.sync < sync {
                return None;
            }
            if rsp.sync > sync {
                self.got.clear();
                self.parts = None;
            }
        }
        if self.parts.is_some_and(|p| p != rsp.parts) {
            return None;
        }
        self.parts = Some(rsp.parts);
        self.got.insert(rsp.part, rsp);
        if self.got.len() < usize::from(self.parts?) {
            return None;
        }
        let mut report = Report::default();
        for part in std::mem::take(&mut self.got).into_values() {
            report.next_req = part.next_req;
            report.sync = part.sync;
            report.max_term = report.max_term.max(part.max_term);
            report.held.extend(part.held);
            report.pending.extend(part.pending);
        }
        Some(report)
    }
}

/// What the coordinator remembers of one member's requests.
#[derive(Clone, Debug, Default)]
struct Session {
    /// The member's count of answered rounds when it answered this one.
    sync: u64,
    /// Requests below this id that are neither held nor queued are finished:
    /// a copy arriving now is stale.
    stale_below: ReqId,
    /// Final answers to lock requests at or above the client's floor, for
    /// repeats.
    answers: BTreeMap<ReqId, LockOutcome>,
}

impl Session {
    fn advance(&mut self, floor: ReqId) {
        if floor > self.stale_below {
            self.stale_below = floor;
            self.answers = self.answers.split_off(&floor);
        }
    }
}

/// A DUPLICATE-LOCK not yet acknowledged.
#[derive(Clone, Copy, Debug)]
struct Resend {
    next: Duration,
    backoff: Duration,
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
    Serving(Serving),
}

/// The lock table and what serving it needs.
#[derive(Debug)]
pub(crate) struct Serving {
    /// New grants wait until then (the lock-delay after a round starts).
    grace_until: Option<Duration>,
    /// Mode `majority`: new grants wait while a member of the view has not
    /// answered, since it may hold any lock.
    hold: bool,
    issuer: TokenIssuer,
    table: LockTable,
    sessions: BTreeMap<NodeId, Session>,
    dups: BTreeMap<(NodeId, ClientId, LockName, Token), (ReqId, Resend)>,
}

/// The coordinator role of one node.
#[derive(Debug)]
pub(crate) struct Coordinator {
    config: Config,
    /// No new grants before this instant (see `become_coord`).
    grace_until: Option<Duration>,
    /// The round: every member learns it from LOCK-INFO-REQ, and tokens of
    /// this coordinator carry it (or a higher term, see `Serving::issuer`).
    term: u32,
    members: Vec<NodeId>,
    /// Members whose answer is not complete yet.
    awaiting: BTreeMap<NodeId, Assembly>,
    phase: Phase,
}

impl Coordinator {
    /// BecomeCoord: starts the reconciliation round under `term`. The table
    /// is rebuilt from the members' answers, so it cannot know a holder that
    /// is out of reach; such a holder may still believe it holds its lock
    /// until it learns it is cut off. Hence nothing new is granted for the
    /// lock-delay after the round starts.
    pub fn become_coord(
        now: Duration,
        members: &[NodeId],
        term: u32,
        config: &Config,
        out: &mut Outbox,
    ) -> Self {
        let mut coord = Coordinator {
            config: config.clone(),
            grace_until: (!config.lock_delay.is_zero()).then(|| now + config.lock_delay),
            term,
            members: members.to_vec(),
            awaiting: BTreeMap::new(),
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

    /// The round's term.
    pub fn term(&self) -> u32 {
        self.term
    }

    /// The highest term this coordinator may grant under: its round's, or
    /// the issuer's once it moved on.
    pub fn highest_term(&self) -> u32 {
        match &self.phase {
            Phase::Serving(s) => s.issuer.term().max(self.term),
            Phase::Reconciling { .. } => self.term,
        }
    }

    /// Whether the coordinator grants (reconciliation is over).
    pub fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Serving(_))
    }

    /// Members whose answer to the round is still missing.
    pub fn awaiting(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.awaiting.keys().copied()
    }

    /// Size of the lock table (empty while reconciling).
    pub fn table_stats(&self) -> TableStats {
        match &self.phase {
            Phase::Serving(s) => {
                let (held, waiters) = s.table.sizes();
                TableStats { held, waiters, unacked_duplicates: s.dups.len() }
            }
            Phase::Reconciling { .. } => TableStats::default(),
        }
    }

    /// Whether request `req` of `owner` for `name` holds the lock or waits
    /// in its queue.
    pub fn knows_request(&self, owner: Owner, name: &LockName, req: ReqId) -> bool {
        let Phase::Serving(s) = &self.phase else { return false };
        s.table.holder(name).is_some_and(|h| h.owner == owner && h.req == req)
            || s.table.waiting(name, owner).is_some_and(|w| w.req == req)
    }

    /// The holder and token of every held lock.
    pub fn holders(&self) -> Vec<(LockName, Owner, Token)> {
        match &self.phase {
            Phase::Serving(s) => s.table.holders().map(|(n, g)| (n.clone(), g.owner, g.token)).collect(),
            Phase::Reconciling { .. } => Vec::new(),
        }
    }

    fn ask_due(&mut self, now: Duration, out: &mut Outbox) {
        for (node, a) in self.awaiting.iter_mut() {
            if a.next_ask > now {
                continue;
            }
            let have = a.got.keys().copied().collect();
            out.send(*node, LockMsg::LockInfoReq(LockInfoReq { term: self.term, have }));
            a.next_ask = now + a.backoff;
            a.backoff = (a.backoff * 2).min(self.config.retransmit_max);
        }
    }

    /// A view with the same coordinator and no merge: members that left
    /// lose their locks, members that joined are asked for theirs.
    pub fn on_view(&mut self, now: Duration, members: &[NodeId], out: &mut Outbox) {
        let departed: Vec<NodeId> = self.members.iter().filter(|m| !members.contains(m)).copied().collect();
        for node in &self.members.clone() {
            if !members.contains(node) {
                self.awaiting.remove(node);
            }
        }
        for node in members {
            if !self.members.contains(node) {
                self.awaiting.insert(*node, Assembly::new(now, &self.config, 0));
            }
        }
        self.members = members.to_vec();
        self.refresh_hold(now, out);
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
                for node in departed {
                    s.purge_node(now, term, node, &self.config, out);
                }
            }
        }
        self.ask_due(now, out);
    }

    /// On reception of LOCK-INFO-RSP: adds the part; a complete answer goes
    /// into the round, or into the table if the round is over.
    pub fn on_lock_info_rsp(&mut self, now: Duration, from: NodeId, rsp: LockInfoRsp, out: &mut Outbox) {
        if rsp.term != self.term {
            out.stats.dropped += 1;
            return;
        }
        let Some(assembly) = self.awaiting.get_mut(&from) else {
            out.stats.dropped += 1;
            return;
        };
        let Some(report) = assembly.add(rsp) else { return };
        self.awaiting.remove(&from);
        let term = self.term;
        match &mut self.phase {
            Phase::Reconciling { reports, .. } => {
                reports.insert(from, report);
                if self.awaiting.is_empty() {
                    self.finish_reconciliation(now, out);
                }
            }
            Phase::Serving(s) => s.merge_late_report(now, term, from, report, &self.config, out),
        }
        self.refresh_hold(now, out);
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
        // At the last term a token can carry there is nothing higher to move
        // to; the round serves as it is (see `TokenIssuer`).
        if learned >= self.term && self.term < Token::MAX_TERM {
            self.start_round(now, TokenIssuer::next_term(learned), out);
            return;
        }
        let mut serving = Serving {
            grace_until: self.grace_until,
            hold: false,
            issuer: TokenIssuer::new(self.term, self.config.tag),
            table: LockTable::default(),
            sessions: BTreeMap::new(),
            dups: BTreeMap::new(),
        };
        let mut pending = Vec::new();
        for (node, report) in reports {
            serving.sessions.insert(
                node,
                Session { sync: report.sync, stale_below: report.next_req, answers: BTreeMap::new() },
            );
            for held in report.held {
                serving.install_reported_hold(now, self.term, node, held, &self.config, out);
            }
            pending.extend(report.pending.into_iter().map(|req| (node, req)));
        }
        sort_by_ticket(&mut pending);
        serving.hold = matches!(self.config.mode, Mode::Majority { .. }) && !self.awaiting.is_empty();
        for (node, req) in pending {
            serving.admit_lock(now, self.term, node, req, out);
        }
        self.phase = Phase::Serving(serving);
    }

    /// Mode `majority`: pauses new grants while any member has not answered
    /// the round, and resumes them once all have.
    fn refresh_hold(&mut self, now: Duration, out: &mut Outbox) {
        let majority = matches!(self.config.mode, Mode::Majority { .. });
        let term = self.term;
        if let Phase::Serving(s) = &mut self.phase {
            let hold = majority && !self.awaiting.is_empty();
            let resumed = s.hold && !hold;
            s.hold = hold;
            if resumed {
                s.grant_all_next(now, term, out);
            }
        }
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
        if s.sessions.get(&from).is_some_and(|session| sync <= session.sync) {
            return true;
        }
        out.stats.dropped += 1;
        if self.members.contains(&from) && !self.awaiting.contains_key(&from) {
            s.sessions.remove(&from);
            self.awaiting.insert(from, Assembly::new(now, &self.config, sync));
            self.refresh_hold(now, out);
            self.ask_due(now, out);
        }
        false
    }

    /// HELLO from a member that now follows this coordinator: acknowledged
    /// if its locks are known here, else it is asked for them.
    pub fn handle_hello(&mut self, now: Duration, from: NodeId, hello: Hello, out: &mut Outbox) {
        if self.in_sync(now, from, hello.sync, out) {
            out.send(from, LockMsg::HelloAck(HelloAck { term: self.term }));
        }
    }

    /// LOCK(X) from a member.
    pub fn handle_lock(&mut self, now: Duration, from: NodeId, req: LockReq, out: &mut Outbox) {
        if self.in_sync(now, from, req.sync, out)
            && let Phase::Serving(s) = &mut self.phase
        {
            s.handle_lock(now, self.term, from, req, out);
        }
    }

    /// UNLOCK(X) from a member.
    pub fn handle_unlock(&mut self, now: Duration, from: NodeId, req: UnlockReq, out: &mut Outbox) {
        if self.in_sync(now, from, req.sync, out)
            && let Phase::Serving(s) = &mut self.phase
        {
            s.handle_unlock(now, self.term, from, req, out);
        }
    }

    /// A member withdraws a lock request.
    pub fn handle_cancel(&mut self, now: Duration, from: NodeId, req: CancelReq, out: &mut Outbox) {
        if self.in_sync(now, from, req.sync, out)
            && let Phase::Serving(s) = &mut self.phase
        {
            s.handle_cancel(now, self.term, from, req, out);
        }
    }

    /// A member acknowledged a DUPLICATE-LOCK.
    pub fn on_duplicate_ack(&mut self, from: NodeId, dup: DuplicateLock) {
        if let Phase::Serving(s) = &mut self.phase {
            s.dups.remove(&(from, dup.client, dup.name, dup.token));
        }
    }

    pub fn handle_timeout(&mut self, now: Duration, out: &mut Outbox) {
        self.ask_due(now, out);
        let term = self.term;
        match &mut self.phase {
            Phase::Reconciling { deadline, .. } => {
                if *deadline <= now {
                    self.finish_reconciliation(now, out);
                }
            }
            Phase::Serving(s) => s.handle_timeout(now, term, &self.config, out),
        }
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        let asks = self.awaiting.values().map(|a| a.next_ask).min();
        let phase = match &self.phase {
            Phase::Reconciling { deadline, .. } => Some(*deadline),
            Phase::Serving(s) => {
                let dups = s.dups.values().map(|(_, r)| r.next).min();
                // Nothing is granted during the grace, lock-delays included.
                // A hold ends with an answer, not with time.
                let grants = match (s.hold, s.grace_until) {
                    (true, _) => None,
                    (false, Some(grace)) => Some(grace),
                    (false, None) => s.table.next_delay_end(),
                };
                dups.into_iter().chain(grants).min()
            }
        };
        asks.into_iter().chain(phase).min()
    }
}

/// Orders re-queued requests by the ticket a previous coordinator gave
/// them; requests never queued go last, in a fixed order.
fn sort_by_ticket(pending: &mut [(NodeId, LockReq)]) {
    pending.sort_by_key(|(node, req)| (req.ticket.unwrap_or(Token(u64::MAX)), *node, req.id));
}

impl Serving {
    fn reply(&mut self, term: u32, node: NodeId, id: ReqId, outcome: LockOutcome, out: &mut Outbox) {
        if !matches!(outcome, LockOutcome::Queued(_))
            && let Some(session) = self.sessions.get_mut(&node)
        {
            session.answers.insert(id, outcome);
        }
        out.send(node, LockMsg::LockRsp(LockRsp { id, term, outcome }));
    }

    /// On reception of LOCK(X): a repeat gets the answer already given, a
    /// stale copy is dropped, a new request goes to [`Serving::admit_lock`].
    fn handle_lock(&mut self, now: Duration, term: u32, from: NodeId, req: LockReq, out: &mut Outbox) {
        let Some(session) = self.sessions.get_mut(&from) else {
            // Not reconciled with this member yet; it repeats the request.
            out.stats.dropped += 1;
            return;
        };
        session.advance(req.floor);
        let owner = Owner { node: from, client: req.client };
        if let Some(h) = self.table.holder(&req.name).filter(|h| h.owner == owner && h.req == req.id) {
            return self.reply(term, from, req.id, LockOutcome::Granted(h.token), out);
        }
        if let Some(w) = self.table.waiting(&req.name, owner).filter(|w| w.req == req.id) {
            return self.reply(term, from, req.id, LockOutcome::Queued(w.ticket), out);
        }
        if let Some(outcome) = session.answers.get(&req.id).copied() {
            return self.reply(term, from, req.id, outcome, out);
        }
        if req.id < session.stale_below {
            out.stats.dropped += 1;
            return;
        }
        self.admit_lock(now, term, from, req, out);
    }

    /// handleLock(X): grant a free lock, deny a held one to try_lock, or
    /// queue the request behind the holder.
    fn admit_lock(&mut self, now: Duration, term: u32, from: NodeId, req: LockReq, out: &mut Outbox) {
        let owner = Owner { node: from, client: req.client };
        let entry = self.table.get(&req.name);
        if entry.and_then(|e| self.table.holder_of(e)).is_some_and(|h| h.owner == owner) {
            // The table says this client holds the lock, yet it asks anew
            // (re-entry never leaves its node): its node no longer counts
            // that grant (an answer lost and cancelled, a loss it was told
            // of). The old token is dead; the client holds on under a new
            // one, so no token is ever handed out twice.
            let token = self.issuer.issue();
            out.stats.grants += 1;
            self.table.replace_holder(&req.name, Grant { owner, token, req: req.id });
            return self.reply(term, from, req.id, LockOutcome::Granted(token), out);
        }
        let free = self.may_grant(now) && entry.is_none_or(|e| e.grantable(now) && e.waiters().is_empty());
        if free {
            let token = self.issuer.issue();
            out.stats.grants += 1;
            self.table.grant(&req.name, Grant { owner, token, req: req.id });
            return self.reply(term, from, req.id, LockOutcome::Granted(token), out);
        }
        if req.wait == Wait::No {
            return self.reply(term, from, req.id, LockOutcome::Denied(Denial::Held), out);
        }
        let ticket = req.ticket.unwrap_or_else(|| self.issuer.issue());
        self.table.enqueue(&req.name, Waiter { owner, req: req.id, ticket });
        self.reply(term, from, req.id, LockOutcome::Queued(ticket), out);
    }

    /// handleUnlock(X): release if the member's client holds the lock with
    /// that token (so a repeat is harmless), then grant the next waiter.
    fn handle_unlock(&mut self, now: Duration, term: u32, from: NodeId, req: UnlockReq, out: &mut Outbox) {
        if !self.sessions.contains_key(&from) {
            out.stats.dropped += 1;
            return;
        }
        let owner = Owner { node: from, client: req.client };
        if self.table.release(&req.name, owner, req.token) {
            self.grant_next(now, term, &req.name, out);
        }
        out.send(from, LockMsg::UnlockRsp(UnlockRsp { id: req.id, term }));
    }

    /// Withdraws a lock request: dequeue it, or release the lock if it was
    /// granted already. Either way a late copy of it is answered, not
    /// admitted again.
    fn handle_cancel(&mut self, now: Duration, term: u32, from: NodeId, req: CancelReq, out: &mut Outbox) {
        let Some(session) = self.sessions.get_mut(&from) else {
            out.stats.dropped += 1;
            return;
        };
        session.answers.entry(req.target).or_insert(LockOutcome::Denied(Denial::Cancelled));
        let owner = Owner { node: from, client: req.client };
        if !self.table.dequeue(&req.name, owner, req.target)
            && let Some(h) = self.table.holder(&req.name).filter(|h| h.owner == owner && h.req == req.target)
            && self.table.release(&req.name, owner, h.token)
        {
            self.grant_next(now, term, &req.name, out);
        }
        out.send(from, LockMsg::UnlockRsp(UnlockRsp { id: req.id, term }));
    }

    /// Grants the lock to its first waiter, if it is free.
    /// Whether new grants may be made now.
    fn may_grant(&self, now: Duration) -> bool {
        !self.hold && self.grace_until.is_none_or(|t| t <= now)
    }

    /// Grants the first waiter of every queue (after a pause in granting).
    fn grant_all_next(&mut self, now: Duration, term: u32, out: &mut Outbox) {
        for name in self.table.names_with_waiters() {
            self.grant_next(now, term, &name, out);
        }
    }

    fn grant_next(&mut self, now: Duration, term: u32, name: &LockName, out: &mut Outbox) {
        if !self.may_grant(now) {
            return;
        }
        let Some(next) = self.table.pop_grantable(name, now) else { return };
        let token = self.issuer.issue();
        out.stats.grants += 1;
        self.table.grant(name, Grant { owner: next.owner, token, req: next.req });
        self.reply(term, next.owner.node, next.req, LockOutcome::Granted(token), out);
    }

    /// Adds a lock a member reports as held. If another owner holds it too,
    /// the duplicate is resolved: the grant with the higher token stays
    /// (the one a fenced resource accepts), the other holder is sent
    /// DUPLICATE-LOCK until it acknowledges.
    fn install_reported_hold(
        &mut self,
        now: Duration,
        term: u32,
        node: NodeId,
        held: HeldLock,
        config: &Config,
        out: &mut Outbox,
    ) {
        let reported = Grant { owner: Owner { node, client: held.client }, token: held.token, req: held.req };
        if self.dups.contains_key(&(node, held.client, held.name.clone(), held.token)) {
            // Declared lost, and the member has not confirmed yet: its report
            // may predate the DUPLICATE-LOCK, which is repeated until the
            // member drops the lock. Installed again, the grant would outlive
            // that drop, and other clients would wait behind a holder that
            // no longer exists until the member reports again.
            return;
        }
        let Some(current) = self.table.holder(&held.name) else {
            self.table.grant(&held.name, reported);
            return;
        };
        if current == reported {
            return;
        }
        let (keep, lose) =
            if reported.token > current.token { (reported, current) } else { (current, reported) };
        if keep != current {
            self.table.replace_holder(&held.name, keep);
        }
        out.stats.duplicates_resolved += 1;
        let dup = DuplicateLock {
            term,
            client: lose.owner.client,
            name: held.name.clone(),
            token: lose.token,
            req: lose.req,
        };
        out.send(lose.owner.node, LockMsg::DuplicateLock(dup));
        let resend = Resend { next: now + config.retransmit_initial, backoff: config.retransmit_initial };
        self.dups.insert((lose.owner.node, lose.owner.client, held.name, lose.token), (lose.req, resend));
    }

    /// A member's answer that came after the round's deadline, or after it
    /// was asked again: it replaces what the table knew of the member, its
    /// holds are merged like the others (duplicates and all), and the issuer
    /// moves above any term it reveals.
    fn merge_late_report(
        &mut self,
        now: Duration,
        term: u32,
        node: NodeId,
        report: Report,
        config: &Config,
        out: &mut Outbox,
    ) {
        self.issuer.raise_above(report.max_term);
        self.sessions.insert(
            node,
            Session { sync: report.sync, stale_below: report.next_req, answers: BTreeMap::new() },
        );
        let forgotten = self.table.purge_node(node, None);
        for held in report.held {
            self.install_reported_hold(now, term, node, held, config, out);
        }
        let mut pending: Vec<(NodeId, LockReq)> = report.pending.into_iter().map(|r| (node, r)).collect();
        sort_by_ticket(&mut pending);
        for (node, req) in pending {
            self.admit_lock(now, term, node, req, out);
        }
        for name in forgotten {
            self.grant_next(now, term, &name, out);
        }
    }

    /// A member left the view: it loses its locks and waits.
    fn purge_node(&mut self, now: Duration, term: u32, node: NodeId, config: &Config, out: &mut Outbox) {
        self.sessions.remove(&node);
        self.dups.retain(|(n, ..), _| *n != node);
        let delay = (!config.lock_delay.is_zero()).then(|| now + config.lock_delay);
        for name in self.table.purge_node(node, delay) {
            self.grant_next(now, term, &name, out);
        }
    }

    fn handle_timeout(&mut self, now: Duration, term: u32, config: &Config, out: &mut Outbox) {
        match self.grace_until {
            Some(grace) if grace <= now => {
                self.grace_until = None;
                self.grant_all_next(now, term, out);
            }
            Some(_) => return self.resend_duplicates(now, term, config, out),
            None => {}
        }
        self.resend_duplicates(now, term, config, out);
        if self.hold {
            return;
        }
        for name in self.table.delays_over(now) {
            if self.table.get(&name).is_some_and(|e| e.waiters().is_empty()) {
                self.table.end_delay(&name);
            } else {
                self.grant_next(now, term, &name, out);
            }
        }
    }

    fn resend_duplicates(&mut self, now: Duration, term: u32, config: &Config, out: &mut Outbox) {
        for ((node, client, name, token), (req, resend)) in self.dups.iter_mut() {
            if resend.next <= now {
                out.stats.retransmissions += 1;
                let dup =
                    DuplicateLock { term, client: *client, name: name.clone(), token: *token, req: *req };
                out.send(*node, LockMsg::DuplicateLock(dup));
                resend.backoff = (resend.backoff * 2).min(config.retransmit_max);
                resend.next = now + resend.backoff;
            }
        }
    }
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
            held: Vec::new(),
            pending: Vec::new(),
        }
    }

    #[test]
    fn a_late_copy_of_an_earlier_answer_does_not_pass_for_the_new_one() {
        let config = Config::lan(1);
        // Asked again because the member answered a round with sync 6.
        let mut asm = Assembly::new(Duration::ZERO, &config, 6);
        assert!(asm.add(part(5, 0, 1)).is_none(), "the old answer (sync 5) is dropped");
        let report = asm.add(part(7, 0, 1)).expect("the new answer completes");
        assert_eq!((report.sync, report.next_req), (7, ReqId(70)));
    }

    #[test]
    fn parts_of_two_answers_are_never_mixed() {
        let config = Config::lan(1);
        let mut asm = Assembly::new(Duration::ZERO, &config, 0);
        assert!(asm.add(part(3, 0, 2)).is_none());
        // A newer answer starts over; a part of the older one is dropped.
        assert!(asm.add(part(4, 1, 2)).is_none());
        assert!(asm.add(part(3, 1, 2)).is_none(), "part 1 of the old answer does not complete the new");
        let report = asm.add(part(4, 0, 2)).expect("both parts of the new answer");
        assert_eq!(report.sync, 4);
    }
}
