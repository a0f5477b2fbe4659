//! A serving coordinator: the lock table and one handler per message of
//! CENTRAL_LOCK2 (handleLock, handleUnlock, duplicates after a merge).

use std::collections::BTreeMap;
use std::time::Duration;

use swimlock_wire::lock::{
    CancelReq, Denial, DuplicateLock, LockMsg, LockOutcome, LockReq, LockRsp, RenewAck, UnlockReq, UnlockRsp,
    Wait,
};
use swimlock_wire::{ClientId, LockName, NodeId, Owner, ReqId, Token};

use crate::config::Config;
use crate::coordinator::{Report, sort_by_ticket};
use crate::node::{Notice, Outbox, TableStats, Waiting};
use crate::table::{Grant, LockTable, Waiter};
use crate::token::TokenIssuer;

/// Final answers a session keeps for repeats; beyond it the oldest are
/// forgotten and treated as stale (a member that keeps its floor low cannot
/// grow the coordinator's memory).
const MAX_ANSWERS: usize = 65_536;

/// What the coordinator remembers of one member's requests.
#[derive(Clone, Debug, Default)]
pub(crate) struct Session {
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
    pub fn new(sync: u64, next_req: ReqId) -> Session {
        Session { sync, stale_below: next_req, answers: BTreeMap::new() }
    }

    fn advance(&mut self, floor: ReqId) {
        if floor > self.stale_below {
            self.stale_below = floor;
            self.answers = self.answers.split_off(&floor);
        }
    }

    fn remember(&mut self, id: ReqId, outcome: LockOutcome) {
        self.answers.insert(id, outcome);
        while self.answers.len() > MAX_ANSWERS {
            let (oldest, _) = self.answers.pop_first().expect("over the cap");
            self.stale_below = self.stale_below.max(ReqId(oldest.0 + 1));
        }
    }
}

/// A DUPLICATE-LOCK not yet acknowledged.
#[derive(Clone, Copy, Debug)]
struct Resend {
    req: ReqId,
    next: Duration,
    backoff: Duration,
}

/// The lock table and what serving it needs.
#[derive(Debug)]
pub(crate) struct Serving {
    config: Config,
    /// New grants wait until then (see `Coordinator::become_coord`).
    grace_until: Option<Duration>,
    /// New grants wait while a member that may hold unseen locks has not
    /// answered the round.
    hold: bool,
    issuer: TokenIssuer,
    table: LockTable,
    sessions: BTreeMap<NodeId, Session>,
    /// Losers of duplicates, until they acknowledge: their names are not
    /// granted to anyone else meanwhile, since the loser may still act.
    dups: BTreeMap<(NodeId, ClientId, LockName, Token), Resend>,
    /// Locks freed by a member's departure while others waited for them,
    /// until their next grant (for [`Notice::DepartedLockRegranted`]).
    departed: BTreeMap<LockName, NodeId>,
}

/// Entries of `Serving::departed` kept at most (it only feeds the log).
const MAX_DEPARTED: usize = 4096;

impl Serving {
    pub fn new(term: u32, grace_until: Option<Duration>, config: &Config) -> Serving {
        Serving {
            config: config.clone(),
            grace_until,
            hold: false,
            issuer: TokenIssuer::new(term, config.tag),
            table: LockTable::default(),
            sessions: BTreeMap::new(),
            dups: BTreeMap::new(),
            departed: BTreeMap::new(),
        }
    }

    pub fn stats(&self) -> TableStats {
        let (held, waiters) = self.table.sizes();
        TableStats { held, waiters, unacked_duplicates: self.dups.len() }
    }

    pub fn knows_request(&self, owner: Owner, name: &LockName, req: ReqId) -> bool {
        self.table.holder(name).is_some_and(|h| h.owner == owner && h.req == req)
            || self.table.waiting(name, owner).is_some_and(|w| w.req == req)
    }

    pub fn holders(&self) -> Vec<(LockName, Owner, Token)> {
        self.table.holders().map(|(n, g)| (n.clone(), g.owner, g.token)).collect()
    }

    pub fn stalled(&self, now: Duration) -> Vec<LockName> {
        let names = self.table.names_with_waiters().into_iter().filter(|n| !self.held_back(now, n));
        names.filter(|n| self.table.get(n).is_some_and(|e| e.grantable(now))).collect()
    }

    pub fn queues(&self) -> Vec<(LockName, Vec<Waiting>)> {
        self.table
            .names_with_waiters()
            .into_iter()
            .map(|name| {
                let waiters = self.table.get(&name).map_or_else(Vec::new, |e| {
                    e.waiters()
                        .iter()
                        .map(|w| Waiting { owner: w.owner, req: w.req, ticket: w.ticket })
                        .collect()
                });
                (name, waiters)
            })
            .collect()
    }

    /// Whether the issuer has used up its term (a new round must start).
    pub fn exhausted(&self) -> bool {
        self.issuer.exhausted()
    }

    pub fn in_sync(&self, from: NodeId, sync: u64) -> bool {
        self.sessions.get(&from).is_some_and(|session| sync <= session.sync)
    }

    pub fn forget_session(&mut self, node: NodeId) {
        self.sessions.remove(&node);
    }

    /// Installs a member's answer: its session, its holds (duplicates
    /// resolved) and a renewal of its leases from the answer's stamp.
    /// Returns its pending requests, for the caller to queue in ticket
    /// order with everyone else's.
    pub fn install_report(
        &mut self,
        now: Duration,
        term: u32,
        node: NodeId,
        session: Session,
        report: Report,
        out: &mut Outbox,
    ) -> Vec<(NodeId, LockReq)> {
        self.sessions.insert(node, session);
        for held in report.held {
            let grant =
                Grant { owner: Owner { node, client: held.client }, token: held.token, req: held.req };
            self.install_reported_hold(now, term, &held.name, grant, out);
        }
        out.send(node, LockMsg::RenewAck(RenewAck { stamp: report.stamp, term }));
        report.pending.into_iter().map(|req| (node, req)).collect()
    }

    fn reply(
        &mut self,
        term: u32,
        node: NodeId,
        id: ReqId,
        outcome: LockOutcome,
        stamp: u64,
        out: &mut Outbox,
    ) {
        if !matches!(outcome, LockOutcome::Queued(_))
            && let Some(session) = self.sessions.get_mut(&node)
        {
            session.remember(id, outcome);
        }
        out.send(node, LockMsg::LockRsp(LockRsp { id, term, outcome, stamp }));
    }

    /// On reception of LOCK(X): a repeat gets the answer already given
    /// (with this copy's stamp), a stale copy is dropped, a new request goes
    /// to [`Serving::admit_lock`].
    pub fn handle_lock(&mut self, now: Duration, term: u32, from: NodeId, req: LockReq, out: &mut Outbox) {
        let Some(session) = self.sessions.get_mut(&from) else {
            // Not reconciled with this member yet; it repeats the request.
            out.stats.dropped += 1;
            return;
        };
        session.advance(req.floor);
        let owner = Owner { node: from, client: req.client };
        if let Some(h) = self.table.holder(&req.name).filter(|h| h.owner == owner && h.req == req.id) {
            return self.reply(term, from, req.id, LockOutcome::Granted(h.token), req.stamp, out);
        }
        if let Some(w) = self.table.waiting(&req.name, owner).filter(|w| w.req == req.id) {
            self.table.touch_waiter(&req.name, owner, req.id, req.stamp);
            return self.reply(term, from, req.id, LockOutcome::Queued(w.ticket), req.stamp, out);
        }
        if let Some(outcome) = session.answers.get(&req.id).copied() {
            return self.reply(term, from, req.id, outcome, req.stamp, out);
        }
        if req.id < session.stale_below {
            out.stats.dropped += 1;
            return;
        }
        self.admit_lock(now, term, from, req, out);
    }

    /// handleLock(X): grant a free lock, deny a held one to try_lock, or
    /// queue the request behind the holder.
    pub fn admit_lock(&mut self, now: Duration, term: u32, from: NodeId, req: LockReq, out: &mut Outbox) {
        let owner = Owner { node: from, client: req.client };
        let entry = self.table.get(&req.name);
        if entry.and_then(|e| self.table.holder_of(e)).is_some_and(|h| h.owner == owner) {
            // The table says this client holds the lock, yet it asks anew
            // (re-entry never leaves its node): its node no longer counts
            // that grant (an answer lost and cancelled, a loss it was told
            // of). The old token is dead; the client holds on under a new
            // one, so no token is ever handed out twice.
            let Some(token) = self.issuer.issue() else { return };
            out.stats.grants += 1;
            self.table.replace_holder(&req.name, Grant { owner, token, req: req.id });
            return self.reply(term, from, req.id, LockOutcome::Granted(token), req.stamp, out);
        }
        let free = self.may_grant(now)
            && !self.contested(&req.name)
            && entry.is_none_or(|e| e.grantable(now) && e.waiters().is_empty());
        if free {
            let Some(token) = self.issuer.issue() else { return };
            out.stats.grants += 1;
            self.table.grant(&req.name, Grant { owner, token, req: req.id });
            return self.reply(term, from, req.id, LockOutcome::Granted(token), req.stamp, out);
        }
        if req.wait == Wait::No {
            return self.reply(term, from, req.id, LockOutcome::Denied(Denial::Held), req.stamp, out);
        }
        let ticket = match req.ticket {
            Some(ticket) => ticket,
            None => match self.issuer.issue() {
                Some(ticket) => ticket,
                None => return,
            },
        };
        self.table.enqueue(&req.name, Waiter { owner, req: req.id, ticket, stamp: req.stamp });
        self.reply(term, from, req.id, LockOutcome::Queued(ticket), req.stamp, out);
    }

    /// handleUnlock(X): release if the member's client holds the lock with
    /// that token (so a repeat is harmless), then grant the next waiter.
    pub fn handle_unlock(
        &mut self,
        now: Duration,
        term: u32,
        from: NodeId,
        req: UnlockReq,
        out: &mut Outbox,
    ) {
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
    pub fn handle_cancel(
        &mut self,
        now: Duration,
        term: u32,
        from: NodeId,
        req: CancelReq,
        out: &mut Outbox,
    ) {
        let Some(session) = self.sessions.get_mut(&from) else {
            out.stats.dropped += 1;
            return;
        };
        if !session.answers.contains_key(&req.target) {
            session.remember(req.target, LockOutcome::Denied(Denial::Cancelled));
        }
        let owner = Owner { node: from, client: req.client };
        if !self.table.dequeue(&req.name, owner, req.target)
            && let Some(h) = self.table.holder(&req.name).filter(|h| h.owner == owner && h.req == req.target)
            && self.table.release(&req.name, owner, h.token)
        {
            self.grant_next(now, term, &req.name, out);
        }
        out.send(from, LockMsg::UnlockRsp(UnlockRsp { id: req.id, term }));
    }

    /// Whether new grants may be made now.
    pub fn may_grant(&self, now: Duration) -> bool {
        !self.hold && self.grace_until.is_none_or(|t| t <= now)
    }

    /// Whether nothing of `name` may be granted now, whatever its entry
    /// says: grants are paused, a duplicate of it is unresolved, or the
    /// term has no tokens left.
    fn held_back(&self, now: Duration, name: &LockName) -> bool {
        !self.may_grant(now) || self.contested(name) || self.issuer.exhausted()
    }

    /// Whether a loser of a duplicate on `name` has not acknowledged yet.
    fn contested(&self, name: &LockName) -> bool {
        !self.dups.is_empty() && self.dups.keys().any(|(_, _, n, _)| n == name)
    }

    /// Grants nothing new before `until` (see `grace_until`).
    pub fn extend_grace(&mut self, until: Duration) {
        self.grace_until = self.grace_until.max(Some(until));
    }

    /// Pauses or resumes new grants; resuming grants every free queue.
    pub fn set_hold(&mut self, now: Duration, term: u32, hold: bool, out: &mut Outbox) {
        let resumed = self.hold && !hold;
        self.hold = hold;
        if resumed {
            self.grant_all_next(now, term, out);
        }
    }

    /// Grants the first waiter of every queue (after a pause in granting).
    fn grant_all_next(&mut self, now: Duration, term: u32, out: &mut Outbox) {
        for name in self.table.names_with_waiters() {
            self.grant_next(now, term, &name, out);
        }
    }

    /// Grants the lock to its first waiter, if it is free.
    fn grant_next(&mut self, now: Duration, term: u32, name: &LockName, out: &mut Outbox) {
        if self.held_back(now, name) {
            return;
        }
        let Some(next) = self.table.pop_grantable(name, now) else { return };
        let Some(token) = self.issuer.issue() else { return };
        out.stats.grants += 1;
        if let Some(departed) = self.departed.remove(name) {
            out.notice(Notice::DepartedLockRegranted {
                name: name.clone(),
                departed,
                token,
                to: next.owner.node,
            });
        }
        self.table.grant(name, Grant { owner: next.owner, token, req: next.req });
        self.reply(term, next.owner.node, next.req, LockOutcome::Granted(token), next.stamp, out);
    }

    /// Adds a lock a member reports as held. If another owner holds it too,
    /// the duplicate is resolved: the grant with the higher token stays
    /// (the one a fenced resource accepts), the other holder is sent
    /// DUPLICATE-LOCK until it acknowledges.
    fn install_reported_hold(
        &mut self,
        now: Duration,
        term: u32,
        name: &LockName,
        reported: Grant,
        out: &mut Outbox,
    ) {
        let key = (reported.owner.node, reported.owner.client, name.clone(), reported.token);
        if self.dups.contains_key(&key) {
            // Declared lost, and the member has not confirmed yet: its report
            // may predate the DUPLICATE-LOCK, which is repeated until the
            // member drops the lock. Installed again, the grant would outlive
            // that drop, and other clients would wait behind a holder that
            // no longer exists until the member reports again.
            return;
        }
        let Some(current) = self.table.holder(name) else {
            self.table.install_reported(name, reported);
            return;
        };
        if current == reported {
            return;
        }
        let (keep, lose) =
            if reported.token > current.token { (reported, current) } else { (current, reported) };
        if keep != current {
            self.table.replace_holder(name, keep);
        }
        out.stats.duplicates_resolved += 1;
        out.notice(Notice::DuplicateResolved {
            name: name.clone(),
            kept: keep.token,
            lost: lose.token,
            loser: lose.owner.node,
        });
        let dup = DuplicateLock {
            term,
            client: lose.owner.client,
            name: name.clone(),
            token: lose.token,
            req: lose.req,
        };
        out.send(lose.owner.node, LockMsg::DuplicateLock(dup));
        let resend = Resend {
            req: lose.req,
            next: now + self.config.retransmit_initial,
            backoff: self.config.retransmit_initial,
        };
        self.dups.insert((lose.owner.node, lose.owner.client, name.clone(), lose.token), resend);
    }

    /// A member acknowledged a DUPLICATE-LOCK: the loser let go, so the
    /// name may go to its next waiter. Only an acknowledgement of this
    /// round's message counts: the member may have reported the lock again
    /// after it acknowledged an older round's.
    pub fn on_duplicate_ack(
        &mut self,
        now: Duration,
        term: u32,
        from: NodeId,
        dup: DuplicateLock,
        out: &mut Outbox,
    ) {
        if dup.term != term {
            out.stats.dropped += 1;
            return;
        }
        if self.dups.remove(&(from, dup.client, dup.name.clone(), dup.token)).is_some() {
            self.grant_next(now, term, &dup.name, out);
        }
    }

    /// A member's answer that came after the round's deadline, or after it
    /// was asked again: it replaces what the table knew of the member, and
    /// its holds are merged like the others (duplicates and all).
    pub fn merge_late_report(
        &mut self,
        now: Duration,
        term: u32,
        node: NodeId,
        report: Report,
        out: &mut Outbox,
    ) {
        let session = Session::new(report.sync, report.next_req);
        let forgotten = self.table.purge_node(node, None);
        let mut pending = self.install_report(now, term, node, session, report, out);
        sort_by_ticket(&mut pending);
        for (node, req) in pending {
            self.admit_lock(now, term, node, req, out);
        }
        for name in forgotten {
            self.grant_next(now, term, &name, out);
        }
    }

    /// A member left the view: it loses its locks and waits. Its locks are
    /// not granted again before `until` (the lock-delay, and the end of a
    /// lease renewed when it was last heard of); the same holds for names
    /// it lost as a duplicate and never confirmed.
    pub fn purge_node(&mut self, now: Duration, term: u32, node: NodeId, until: Duration, out: &mut Outbox) {
        self.sessions.remove(&node);
        let waited: std::collections::BTreeSet<LockName> =
            self.table.names_with_waiters().into_iter().collect();
        let mut touched = self.table.purge_node(node, Some(until));
        for name in &touched {
            // Free now and still wanted: the departed member held it.
            let wanted = waited.contains(name);
            if wanted && self.table.holder(name).is_none() && self.departed.len() < MAX_DEPARTED {
                self.departed.insert(name.clone(), node);
            }
        }
        let contested: Vec<LockName> =
            self.dups.keys().filter(|(n, ..)| *n == node).map(|(_, _, name, _)| name.clone()).collect();
        self.dups.retain(|(n, ..), _| *n != node);
        for name in contested {
            self.table.delay(&name, until);
            touched.push(name);
        }
        for name in touched {
            self.grant_next(now, term, &name, out);
        }
    }

    pub fn handle_timeout(&mut self, now: Duration, term: u32, out: &mut Outbox) {
        if self.grace_until.is_some_and(|grace| grace <= now) {
            self.grace_until = None;
            self.grant_all_next(now, term, out);
        }
        self.resend_duplicates(now, term, out);
        if !self.may_grant(now) {
            return;
        }
        for name in self.table.delays_over(now) {
            if self.table.holder(&name).is_some()
                || self.table.get(&name).is_some_and(|e| e.waiters().is_empty())
            {
                self.table.end_delay(&name);
            } else {
                self.grant_next(now, term, &name, out);
            }
        }
    }

    fn resend_duplicates(&mut self, now: Duration, term: u32, out: &mut Outbox) {
        for ((node, client, name, token), resend) in self.dups.iter_mut() {
            if resend.next <= now {
                out.stats.retransmissions += 1;
                let dup = DuplicateLock {
                    term,
                    client: *client,
                    name: name.clone(),
                    token: *token,
                    req: resend.req,
                };
                out.send(*node, LockMsg::DuplicateLock(dup));
                resend.backoff = (resend.backoff * 2).min(self.config.retransmit_max);
                resend.next = now + resend.backoff;
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        let dups = self.dups.values().map(|r| r.next).min();
        // Nothing is granted during the grace, lock-delays included. A hold
        // ends with an answer, not with time.
        let grants = match (self.hold, self.grace_until) {
            (true, _) => None,
            (false, Some(grace)) => Some(grace),
            (false, None) => self.table.next_delay_end(),
        };
        dups.into_iter().chain(grants).min()
    }
}
