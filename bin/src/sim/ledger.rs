//! The observer's own ledger of who holds what, and when: invariants 1 and
//! 2 judged on time intervals, independent of the state machines'
//! bookkeeping.
//!
//! A hold starts with the client's grant and ends when the client lets go
//! (unlock, disconnect), is told the lock is lost, its node crashes, or its
//! lease runs out: a holder paused past `safe_until` no longer counts, one
//! that keeps running does until its node drops the lock.

use std::collections::BTreeMap;
use std::time::Duration;

use swimlock_wire::{ClientId, LockName, NodeId, Token};

use super::check::Violation;

/// How long after a partition ends its effects may still show: the sides
/// meet, merge their views and reconcile within this bound. Two holders, or
/// a lower token after a higher one, are excused only if the network
/// separated their hosts within this window.
pub const MERGE_BOUND: Duration = Duration::from_secs(5);

/// One client's hold of one lock.
#[derive(Clone, Debug)]
struct Hold {
    host: usize,
    /// The hosts of the coordinators that granted or renewed it.
    granters: Vec<usize>,
    node: NodeId,
    client: ClientId,
    token: Token,
    start: Duration,
    /// The end of its lease, as the holder's node last reported it.
    safe_until: Option<Duration>,
}

impl Hold {
    fn active(&self, now: Duration) -> bool {
        self.safe_until.is_none_or(|t| t > now)
    }
}

/// A grant as the ledger remembers it, for token order.
#[derive(Clone, Copy, Debug)]
struct GrantRec {
    at: Duration,
    host: usize,
    granter: Option<usize>,
    token: Token,
}

/// What the world tells the ledger about the network, so that the ledger
/// can tell a real partition from a restart or a pause.
pub trait Network {
    /// Whether the network separated `a` and `b` at any time in `[from, to]`.
    fn separated_during(&self, a: usize, b: usize, from: Duration, to: Duration) -> bool;
    /// Whether a live host that knows `term` (has recorded it) was cut off
    /// from host `granter` at some time since `since`.
    fn term_known_across(&self, term: u32, granter: usize, since: Duration) -> bool;
    /// Whether `host` coordinated a group of its own at some time since
    /// `since`: formed after its join timeout (no seed answered), or a view
    /// of itself alone after one with others (it reached nobody: the others
    /// were cut off, paused or down). Documented as a split brain with whatever it could not
    /// reach.
    fn alone_since(&self, host: usize, since: Duration) -> bool;
    /// Whether any live host outside the view of the coordinator that
    /// granted this (its members either told it their terms, or learned
    /// its own) knows `term`.
    fn term_known_outside(&self, term: u32) -> bool;
    /// Whether coordinator `other`, which granted or renewed a hold at
    /// `at`, and the coordinator that granted this are apart because lost
    /// messages made one declare the other down (SWIM's failure detector
    /// does that to a live member, and each side then coordinates): `other`
    /// is alive, was not paused shortly before `at` (a pause is no network
    /// fault), one of the two views lacks the other, and the network lost a
    /// message between them since `since`.
    fn falsely_suspected(&self, other: usize, at: Duration, since: Duration) -> bool;
}

/// Every hold and every grant of a run.
#[derive(Debug, Default)]
pub struct Ledger {
    holds: BTreeMap<LockName, Vec<Hold>>,
    grants: BTreeMap<LockName, Vec<GrantRec>>,
    /// Overlaps that the mode allows (available mode, a real partition).
    pub allowed_overlaps: u64,
}

impl Ledger {
    /// A fresh grant (not a re-entry) to `client` of `node` on `host`.
    ///
    /// Invariant 1: no other owner holds the name now, unless `available`
    /// and a split brain explains it: within the last [`MERGE_BOUND`] the
    /// network separated the two holders, or the two coordinators that
    /// granted (or renewed) the holds (`granter` is this one's host). Invariant 2: the token is
    /// above every token granted for the name before, by any node, crashed
    /// or not, unless the same split brain explains it. Invariant 3: no
    /// token is granted twice.
    #[allow(clippy::too_many_arguments)]
    pub fn acquired(
        &mut self,
        now: Duration,
        host: usize,
        node: NodeId,
        client: ClientId,
        name: &LockName,
        token: Token,
        safe_until: Option<Duration>,
        available: bool,
        granter: Option<usize>,
        net: &dyn Network,
    ) -> Result<(), Violation> {
        let holds = self.holds.entry(name.clone()).or_default();
        holds.retain(|h| h.active(now));
        let recent = now.saturating_sub(MERGE_BOUND);
        let split_brain = |other: Option<usize>, since: Duration| match (other, granter) {
            (Some(a), Some(b)) => available && a != b && net.separated_during(a, b, since, now),
            _ => false,
        };
        for other in holds.iter().filter(|h| (h.node, h.client) != (node, client)) {
            let holders_apart = available && net.separated_during(other.host, host, recent, now);
            let suspected =
                available && other.granters.iter().any(|g| net.falsely_suspected(*g, other.start, recent));
            if holders_apart || suspected || other.granters.iter().any(|g| split_brain(Some(*g), recent)) {
                self.allowed_overlaps += 1;
                continue;
            }
            return Err(Violation::new(
                1,
                Some(name),
                format!(
                    "{name} granted to {node}/{} ({token}) while {}/{} holds it ({}, since {:.6}s, lease {})",
                    client.0,
                    other.node,
                    other.client.0,
                    other.token,
                    other.start.as_secs_f64(),
                    other.safe_until.map_or("none".to_string(), |t| format!("{:.6}s", t.as_secs_f64())),
                ),
            ));
        }
        holds.retain(|h| (h.node, h.client) != (node, client));
        let granters = granter.into_iter().collect();
        holds.push(Hold { host, granters, node, client, token, start: now, safe_until });
        let grants = self.grants.entry(name.clone()).or_default();
        for g in grants.iter().filter(|g| g.token >= token) {
            // A side that was cut off when it granted, and never merged
            // since (its coordinator died first), cannot have taught anyone
            // its term.
            // Nobody to learn the term from: it is known only across the
            // partition, or only to members that are all down (available
            // mode forms a group of whoever is left).
            let known_elsewhere = available
                && (granter.is_some_and(|b| net.term_known_across(g.token.term(), b, recent))
                    || !net.term_known_outside(g.token.term()));
            let suspected = available && g.granter.is_some_and(|o| net.falsely_suspected(o, g.at, recent));
            let alone = available
                && [g.granter, granter].into_iter().flatten().any(|h| net.alone_since(h, g.at.min(recent)));
            if g.token != token
                && (split_brain(g.granter, g.at.saturating_sub(MERGE_BOUND))
                    || known_elsewhere
                    || suspected
                    || alone)
            {
                continue;
            }
            let what = if g.token == token { "the same token as" } else { "a token below" };
            return Err(Violation::new(
                2,
                Some(name),
                format!(
                    "{name} granted to {node} with {token}, {what} {} granted at {:.6}s on host {}",
                    g.token,
                    g.at.as_secs_f64(),
                    g.host
                ),
            ));
        }
        // Only the highest grants per host matter for later comparisons.
        grants.retain(|g| g.host != host || g.token > token);
        grants.push(GrantRec { at: now, host, granter, token });
        Ok(())
    }

    /// After a step of `host`: its node now holds `held` (client, name,
    /// token, lease end). A hold the ledger has that the node no longer
    /// lists must have ended for a reason the world saw (`ended` says
    /// whether client and name let go or were told of the loss this step);
    /// otherwise the lock vanished silently.
    /// `coordinator` is the host of the coordinator of the node's view: a
    /// lease it renewed counts as its grant too.
    pub fn sync_host(
        &mut self,
        now: Duration,
        host: usize,
        coordinator: Option<usize>,
        held: &[(ClientId, LockName, Token, Option<Duration>)],
        ended: &dyn Fn(ClientId, &LockName) -> bool,
    ) -> Result<(), Violation> {
        for (name, holds) in self.holds.iter_mut() {
            let mut silent = None;
            holds.retain_mut(|h| {
                if h.host != host {
                    return true;
                }
                match held.iter().find(|(c, n, t, _)| *c == h.client && n == name && *t == h.token) {
                    Some((_, _, _, safe_until)) => {
                        if *safe_until > h.safe_until
                            && let Some(c) = coordinator.filter(|c| !h.granters.contains(c))
                        {
                            h.granters.push(c);
                        }
                        h.safe_until = *safe_until;
                        true
                    }
                    None => {
                        if !ended(h.client, name) && h.active(now) {
                            silent = Some(h.clone());
                        }
                        false
                    }
                }
            });
            if let Some(h) = silent {
                return Err(Violation::new(
                    1,
                    Some(name),
                    format!(
                        "{}/{} stopped holding {name} ({}) without being told it was lost",
                        h.node, h.client.0, h.token
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A host crashed: its clients died with it.
    pub fn crashed(&mut self, host: usize) {
        for holds in self.holds.values_mut() {
            holds.retain(|h| h.host != host);
        }
    }
}
