//! Witnessed own leases: how a successor knows, without waiting, that the
//! coordinator it replaces no longer has clients holding locks.
//!
//! The coordinator's own clients hold locks no member reports, so a
//! successor must not grant anything before their leases are over. Without
//! more, that means the view without the old coordinator plus the own lease:
//! the old coordinator may have renewed them until just before that view.
//!
//! Instead, a coordinator renews its own clients' leases only as far as a
//! *witness* vouched for: it sends [`Vouch`] (its clock, its view) to the
//! members after it in its view ([`WITNESSES`] of them, its successors if
//! it goes), and a lease runs at most [`Config::own_lease`] from the stamp
//! of a vouch a witness with the same view acknowledged. Each witness
//! records when the last vouch arrived. A successor asks the witnesses of
//! the view it shared with the old coordinator for their records in its
//! reconciliation round; if every witness answers with a record of that
//! view, no own lease of the old coordinator outlasts the latest record
//! plus the own lease (stretched by the clock margin), which has usually
//! passed by the time the view changes. If any record is missing or names
//! another view, the successor waits as before.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use swimlock_wire::NodeId;
use swimlock_wire::lock::{Vouch, VouchSeen};

use crate::config::Config;

/// How many members after the coordinator witness its vouches. The
/// coordinator needs one acknowledgement per renewal, so its own clients
/// keep their leases when one witness dies; a successor needs a record
/// from each of them.
pub const WITNESSES: usize = 2;

/// The witnesses of a view: the members after its coordinator. A view
/// with fewer members has none (its coordinator renews locally, and a
/// successor waits out the own lease): with a single witness, its death
/// would end the own leases until the view without it.
pub(crate) fn witnesses(members: &[NodeId]) -> &[NodeId] {
    members.get(1..=WITNESSES).unwrap_or(&[])
}

/// The view a vouch names when its coordinator renews locally: no
/// witness's view has it, so the record vouches for nothing.
const UNWITNESSED: u64 = 0;

/// The coordinator side: whom to vouch to, and how far they acknowledged.
#[derive(Debug, Default)]
pub(crate) struct OwnLeases {
    /// The digest of this node's view and its witnesses (empty while this
    /// node does not coordinate, or coordinates alone: then its own clients'
    /// leases are renewed locally).
    view: u64,
    witnesses: Vec<NodeId>,
    /// Members that witnessed an earlier view of this coordinator, and when
    /// they stopped: they still get its vouches (which they do not
    /// acknowledge), so that a record of theirs names the view this node
    /// has now, and a successor of theirs does not trust a record of a
    /// view this node left (their view may still list it).
    former: BTreeMap<NodeId, Duration>,
    /// Witnesses that have not acknowledged a vouch in this view yet: until
    /// each has, vouches go out even when no own client holds a lock, so
    /// that every witness has a record of the view.
    unwitnessed: BTreeSet<NodeId>,
    /// The witnesses changed: a vouch is due at once.
    announce: bool,
    /// The end of the latest acknowledged vouch's lease.
    until: Option<Duration>,
}

impl OwnLeases {
    /// A new view: `witnesses` is empty unless this node coordinates it.
    pub fn on_view(&mut self, now: Duration, view: u64, witnesses: &[NodeId]) {
        if self.view != view || self.witnesses != witnesses {
            self.unwitnessed = witnesses.iter().copied().collect();
            for old in self.witnesses.iter().filter(|w| !witnesses.contains(w)) {
                self.former.insert(*old, now);
            }
            self.former.retain(|w, _| !witnesses.contains(w));
            self.announce = !witnesses.is_empty() || !self.former.is_empty();
        }
        if witnesses.is_empty() && self.former.is_empty() {
            self.announce = false;
        }
        self.view = view;
        self.witnesses = witnesses.to_vec();
    }

    /// No longer coordinating: a new coordinator renews the own clients'
    /// leases, and reports of them reach it in its round.
    pub fn cease(&mut self) {
        self.former.clear();
        self.announce = false;
    }

    /// Whether own leases are witnessed (rather than renewed locally).
    pub fn witnessed(&self) -> bool {
        !self.witnesses.is_empty()
    }

    /// Whether a vouch is needed even with nothing held.
    pub fn owed(&self) -> bool {
        self.announce || !self.unwitnessed.is_empty()
    }

    /// The vouch to send at `stamp`, and to whom: the witnesses and the
    /// former witnesses.
    pub fn vouch(&mut self, now: Duration, stamp: u64, config: &Config) -> (Vouch, Vec<NodeId>) {
        self.announce = false;
        let keep = config.longest_unseen_hold();
        self.former.retain(|_, left| *left + keep > now);
        let to = self.witnesses.iter().chain(self.former.keys()).copied().collect();
        let view = if self.witnessed() { self.view } else { UNWITNESSED };
        (Vouch { stamp, view }, to)
    }

    /// A witness acknowledged `vouch`: own leases may run to the returned
    /// end (`None` if the acknowledgement does not count).
    pub fn on_vouched(&mut self, from: NodeId, vouch: Vouch, config: &Config) -> Option<Duration> {
        if vouch.view != self.view || !self.witnesses.contains(&from) || !self.witnessed() {
            return None;
        }
        self.unwitnessed.remove(&from);
        let until = Duration::from_micros(vouch.stamp) + config.own_lease;
        self.until = self.until.max(Some(until));
        Some(until)
    }

    /// How far an own client's lease may run now: `None` when own leases
    /// are not witnessed (no cap).
    pub fn cap(&self) -> Option<Duration> {
        self.witnessed().then(|| self.until.unwrap_or(Duration::ZERO))
    }
}

/// The witness side: the last vouch received from each coordinator.
#[derive(Debug, Default)]
pub(crate) struct Records {
    seen: BTreeMap<NodeId, (u64, Duration)>,
}

impl Records {
    /// Records a vouch that arrived at `now`. Records older than any lease
    /// are dropped: a successor that misses one only waits longer.
    pub fn record(&mut self, now: Duration, from: NodeId, vouch: Vouch, config: &Config) {
        let keep = config.longest_unseen_hold();
        self.seen.retain(|_, (_, at)| *at + keep > now);
        self.seen.insert(from, (vouch.view, now));
    }

    /// The record of `coordinator`'s last vouch, for a reconciliation
    /// answer (`at` on the same clock as the answer's stamp).
    pub fn seen(&self, coordinator: NodeId) -> Option<VouchSeen> {
        let (view, at) = *self.seen.get(&coordinator)?;
        Some(VouchSeen { coordinator, view, at: u64::try_from(at.as_micros()).unwrap_or(u64::MAX) })
    }

    /// This node's own record of `coordinator` in `view`.
    pub fn seen_in(&self, coordinator: NodeId, view: u64) -> Option<Duration> {
        self.seen.get(&coordinator).filter(|(v, _)| *v == view).map(|(_, at)| *at)
    }
}

/// What a successor checks before it grants: the witnesses of the view it
/// shared with the departed coordinator, and their records.
#[derive(Clone, Debug)]
pub(crate) struct VouchCheck {
    /// The departed coordinator.
    pub coordinator: NodeId,
    /// The digest of the view this node last saw it coordinate.
    pub view: u64,
    /// The witnesses of that view other than this node.
    pub others: Vec<NodeId>,
    /// This node's own record, if it is a witness (it has one, of that
    /// view: otherwise there is no check).
    pub mine: Option<Duration>,
    /// The bound without the records: the view without the coordinator
    /// plus the own lease.
    pub fallback: Duration,
}

impl VouchCheck {
    /// The end of the departed coordinator's own leases, from the
    /// witnesses' records (`found` gives another witness's record of this
    /// check's view, on this node's clock); the fallback if any is missing.
    pub fn until(&self, config: &Config, found: impl Fn(NodeId) -> Option<Duration>) -> Duration {
        let mut latest = self.mine;
        for witness in &self.others {
            match found(*witness) {
                Some(at) => latest = latest.max(Some(at)),
                None => return self.fallback,
            }
        }
        latest.map_or(self.fallback, |at| (at + config.stretched(config.own_lease)).min(self.fallback))
    }
}

/// The arrival of a witness's recorded vouch on this node's clock, from its
/// answer completed at `now`: the answer says how long before it was made
/// the vouch arrived (on the witness's clock); counting that span as short
/// as the clock margin allows gives a time no earlier than the arrival.
pub(crate) fn arrival(now: Duration, answer_stamp: u64, seen: &VouchSeen, config: &Config) -> Duration {
    let ago = Duration::from_micros(answer_stamp.saturating_sub(seen.at));
    now.saturating_sub(ago * 100 / (100 + config.clock_margin_pct))
}
