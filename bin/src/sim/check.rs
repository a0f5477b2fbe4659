//! The invariants of DESIGN.md, checked by an observer that sees every
//! node's state and every event the application gets.

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use swimlock_lock::{Event, LockNode, LossReason, Waiting};
use swimlock_wire::{LockName, NodeId, Owner, ReqId, Token};

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (1-8 as numbered in DESIGN.md, 0 for liveness).
    pub invariant: u8,
    /// What was seen.
    pub what: String,
    /// The lock concerned, to filter the trace by.
    pub name: Option<LockName>,
}

impl Violation {
    pub(crate) fn new(invariant: u8, name: Option<&LockName>, what: String) -> Violation {
        Violation { invariant, what, name: name.cloned() }
    }
}

/// What one coordinator's reconciliation round could learn: the tokens its
/// members knew of when the round started.
#[derive(Clone, Debug, Default)]
struct RoundSnapshot {
    term: u32,
    known: BTreeMap<NodeId, BTreeMap<LockName, Token>>,
}

/// One coordinator's queues and holders after its latest step, to judge
/// the grants of its next step by (invariant 8).
#[derive(Clone, Debug, Default)]
struct QueueSnapshot {
    term: u32,
    /// Whether it could grant: if not, requests re-queued with older
    /// tickets may come first, and only their tickets order them.
    open: bool,
    waiting: BTreeMap<LockName, Vec<Waiting>>,
    holders: BTreeMap<LockName, (Owner, Token)>,
}

/// The observer. It keeps its own record of what was granted, independent
/// of the state machines' bookkeeping.
#[derive(Debug, Default)]
pub struct Checker {
    /// Every (name, token) granted so far (invariant 3).
    granted: BTreeSet<(LockName, Token)>,
    /// Highest token per name granted by each coordinator (invariant 2).
    by_coordinator: BTreeMap<(NodeId, LockName), Token>,
    /// Highest token per name each live node has received.
    known: BTreeMap<NodeId, BTreeMap<LockName, Token>>,
    /// The round each coordinator runs, with what its members knew.
    rounds: BTreeMap<NodeId, RoundSnapshot>,
    /// Highest token ever granted per name, received or not (seen in a
    /// coordinator's table or in a client's grant).
    best: BTreeMap<LockName, Token>,
    /// Each coordinator's queues after its latest step.
    queues: BTreeMap<NodeId, QueueSnapshot>,
    /// Fresh grants seen (re-entry not counted).
    pub grants: u64,
}

impl Checker {
    /// Forgets a node that crashed: what it knew died with it.
    pub fn crashed(&mut self, node: NodeId) {
        self.known.remove(&node);
        self.rounds.remove(&node);
        self.queues.remove(&node);
    }

    /// Called after every step for a coordinator. A new round is recorded
    /// with what the members of its view knew at its start; every token
    /// this coordinator newly put in its table is checked at that moment
    /// (invariant 2): above its earlier grants of the name, and above every
    /// token of the name known to a member it has reconciled with by then.
    pub fn observe_coordinator(&mut self, node: &LockNode) -> Result<(), Violation> {
        let Some(term) = node.round_term() else {
            self.rounds.remove(&node.id());
            return Ok(());
        };
        if self.rounds.get(&node.id()).is_none_or(|r| r.term != term) {
            let members = node.view().map(|v| v.members.clone()).unwrap_or_default();
            let known =
                members.iter().map(|m| (*m, self.known.get(m).cloned().unwrap_or_default())).collect();
            self.rounds.insert(node.id(), RoundSnapshot { term, known });
        }
        let tag = node.config().tag;
        let awaiting = node.awaiting();
        let members = node.view().map(|v| v.members.clone()).unwrap_or_default();
        for (name, _, token) in node.table() {
            let best = self.best.entry(name.clone()).or_insert(token);
            *best = (*best).max(token);
            if token.tag() != tag || token.term() < term {
                continue; // installed from a member's answer, not granted here
            }
            let key = (node.id(), name.clone());
            let prev = self.by_coordinator.get(&key).copied();
            if prev == Some(token) {
                continue;
            }
            if let Some(prev) = prev.filter(|p| *p > token) {
                return Err(Violation::new(
                    2,
                    Some(&name),
                    format!("{} granted {name} with {token} after granting {prev}", node.id()),
                ));
            }
            self.by_coordinator.insert(key, token);
            let round = &self.rounds[&node.id()];
            for (member, known) in &round.known {
                if awaiting.contains(member) || !members.contains(member) {
                    continue; // not (or no longer) reconciled with
                }
                if let Some(old) = known.get(&name).filter(|old| **old >= token) {
                    return Err(Violation::new(
                        2,
                        Some(&name),
                        format!(
                            "{} granted {name} with {token}, not above {old} known to {member} which reconciled with it",
                            node.id()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Called after every step of a coordinator, with the try-lock requests
    /// in flight anywhere (by node and request id). Checks that its queues
    /// are in ticket order and hold no try-lock; that every grant of this
    /// step went to the earliest of the requests that were waiting before
    /// it and still wait after it (the others left: timed out, cancelled,
    /// their node departed), which is FIFO (invariant 8); and that while
    /// it may grant, no free lock has waiters (an unlock hands the lock on),
    /// unless a timer of the node is due and has not run yet.
    pub fn observe_queues(
        &mut self,
        node: &LockNode,
        now: Duration,
        try_locks: &BTreeSet<(NodeId, ReqId)>,
        timer_due: bool,
    ) -> Result<(), Violation> {
        let id = node.id();
        let Some(term) = node.round_term() else {
            self.queues.remove(&id);
            return Ok(());
        };
        let waiting: BTreeMap<LockName, Vec<Waiting>> = node.queues().into_iter().collect();
        let holders: BTreeMap<LockName, (Owner, Token)> =
            node.table().into_iter().map(|(name, owner, token)| (name, (owner, token))).collect();
        for (name, queue) in &waiting {
            if let Some(pair) = queue.windows(2).find(|w| w[0].ticket >= w[1].ticket) {
                return Err(Violation::new(
                    8,
                    Some(name),
                    format!(
                        "{id}'s queue for {name} has ticket {} before {}",
                        pair[0].ticket, pair[1].ticket
                    ),
                ));
            }
            if let Some(w) = queue.iter().find(|w| try_locks.contains(&(w.owner.node, w.req))) {
                return Err(Violation::new(
                    0,
                    Some(name),
                    format!("try_lock {} of {} waits in {id}'s queue for {name}", w.req.0, w.owner),
                ));
            }
        }
        let tag = node.config().tag;
        let prev = self.queues.get(&id).filter(|p| p.term == term);
        for (name, &(owner, token)) in holders.iter().filter(|(_, (_, t))| t.tag() == tag && t.term() >= term)
        {
            let Some(prev) = prev.filter(|p| p.holders.get(name).map(|h| h.1) != Some(token)) else {
                continue;
            };
            let Some(before) = prev.waiting.get(name) else { continue };
            let still_waits = |w: &Waiting| {
                waiting.get(name).is_some_and(|q| q.iter().any(|x| x.owner == w.owner && x.req == w.req))
            };
            let granted = before.iter().find(|w| w.owner == owner).map(|w| w.ticket);
            if granted.is_none() && !prev.open {
                continue;
            }
            let passed = before.iter().find(|w| still_waits(w) && granted.is_none_or(|t| w.ticket < t));
            if let Some(w) = passed {
                return Err(Violation::new(
                    8,
                    Some(name),
                    format!(
                        "{id} granted {name} ({token}) to {} (ticket {}) while {} (ticket {}) waited before it",
                        owner,
                        granted.map_or_else(|| "none".to_string(), |t| t.to_string()),
                        w.owner,
                        w.ticket
                    ),
                ));
            }
        }
        let open = node.grants_open(now);
        // A grace or lock-delay that has ended is acted on by the node's
        // timer, which may be due but not yet run (a paused node resumes).
        if open
            && !timer_due
            && let Some(name) = node.stalled(now).first()
        {
            return Err(Violation::new(
                0,
                Some(name),
                format!("{id} may grant, yet {name} is free while requests wait for it"),
            ));
        }
        self.queues.insert(id, QueueSnapshot { term, open, waiting, holders });
        Ok(())
    }

    /// An event of node `at`'s application.
    pub fn on_event(&mut self, at: NodeId, event: &Event, available_mode: bool) -> Result<(), Violation> {
        match event {
            Event::Acquired { name, token, holds: 1, .. } => self.on_grant(at, name, *token),
            Event::Lost { name, token, reason: LossReason::Duplicate, .. } => {
                if self.best.get(name).is_some_and(|b| b > token) {
                    Ok(())
                } else {
                    Err(Violation::new(
                        6,
                        Some(name),
                        format!(
                            "{at} lost {name} (token {token}) as a duplicate, but no higher token was granted"
                        ),
                    ))
                }
            }
            Event::Lost { name, token, reason: LossReason::QuorumLost, .. } if available_mode => {
                Err(Violation::new(
                    4,
                    Some(name),
                    format!("{at} lost {name} ({token}) to quorum in available mode"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn on_grant(&mut self, at: NodeId, name: &LockName, token: Token) -> Result<(), Violation> {
        self.grants += 1;
        if !self.granted.insert((name.clone(), token)) {
            return Err(Violation::new(3, Some(name), format!("token {token} of {name} granted twice")));
        }
        let known = self.known.entry(at).or_default().entry(name.clone()).or_insert(token);
        *known = (*known).max(token);
        let best = self.best.entry(name.clone()).or_insert(token);
        *best = (*best).max(token);
        Ok(())
    }
}

/// Invariant 1 (and 4, 5, 6 in their steady form) for one component that
/// agrees on its coordinator, which has finished reconciling with every
/// member and has no duplicate unresolved: every lock a client believes it
/// holds is the table's holder, with the same token.
pub fn check_settled_component(coordinator: &LockNode, members: &[&LockNode]) -> Result<(), Violation> {
    let table: BTreeMap<LockName, (Owner, Token)> =
        coordinator.table().into_iter().map(|(name, owner, token)| (name, (owner, token))).collect();
    for node in members {
        for held in node.held() {
            let owner = Owner { node: node.id(), client: held.client };
            match table.get(&held.name) {
                Some((o, t)) if *o == owner && *t == held.token => {}
                other => {
                    return Err(Violation::new(
                        1,
                        Some(&held.name),
                        format!(
                            "{owner} holds {} with {} but coordinator {} has {:?}",
                            held.name,
                            held.token,
                            coordinator.id(),
                            other
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Majority mode, and the end of every run: no two clients anywhere hold
/// one name.
pub fn check_exclusive(nodes: &[&LockNode]) -> Result<(), Violation> {
    let mut holders: BTreeMap<LockName, (Owner, Token)> = BTreeMap::new();
    for node in nodes {
        for held in node.held() {
            let owner = Owner { node: node.id(), client: held.client };
            if let Some((other, t)) = holders.insert(held.name.clone(), (owner, held.token)) {
                return Err(Violation::new(
                    1,
                    Some(&held.name),
                    format!("{} held by {other} ({t}) and by {owner} ({})", held.name, held.token),
                ));
            }
        }
    }
    Ok(())
}
