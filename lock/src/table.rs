//! The coordinator's lock table: per name, the holder and the queue of
//! waiters in ticket order.
//!
//! A coordinator keeps one entry per held lock of its whole cluster, so an
//! entry is kept small: a plain held lock costs 40 bytes besides its name
//! (see [`Entry`] and [`HolderNodes`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU32;
use std::time::Duration;

use swimlock_wire::{ClientId, LockName, NodeId, Owner, ReqId, Token};

/// A granted lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub owner: Owner,
    pub token: Token,
    /// The lock request that was granted.
    pub req: ReqId,
}

/// A lock request waiting for the holder to let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub owner: Owner,
    pub req: ReqId,
    /// Place in the queue; tickets come from the token issuer, so they grow
    /// with arrival time within a term and across terms.
    pub ticket: Token,
    /// The stamp of the latest copy of the request: the grant echoes it,
    /// so a request that waited long is not granted a lease already spent.
    pub stamp: u64,
}

/// A [`Grant`] as the table stores it: the node is a [`NodeRef`] (4 bytes)
/// instead of a `NodeId` (40, most of it a `SocketAddr`), since every held
/// lock has a holder and a cluster has few nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    node: NodeRef,
    client: ClientId,
    token: Token,
    req: ReqId,
}

/// A holder's node in [`HolderNodes`]: slot number plus one. Never zero,
/// so an `Option<Held>` is no larger than a `Held`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeRef(NonZeroU32);

impl NodeRef {
    fn slot(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// The node ids of the table's holders, each stored once with the number
/// of locks it holds.
///
/// A node that holds nothing keeps its slot until the next purge (a node
/// left the view, or a member's late answer replaced what it held), which
/// frees every such slot at once: a node that takes and releases one lock
/// at a time would otherwise leave and re-enter `refs` every time. So the
/// slots are the nodes that held a lock since the last purge, and the ids
/// of nodes that left or restarted do not pile up.
#[derive(Clone, Debug, Default)]
struct HolderNodes {
    /// The node of `NodeRef` `i + 1` in slot `i`; `None` while free.
    slots: Vec<Option<Slot>>,
    /// The reference of every node in `slots`.
    refs: BTreeMap<NodeId, NodeRef>,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    id: NodeId,
    /// Number of locks the node holds.
    holds: usize,
}

impl HolderNodes {
    /// The reference of `node`, if it has a slot.
    fn find(&self, node: NodeId) -> Option<NodeRef> {
        self.refs.get(&node).copied()
    }

    fn slot(&mut self, node: NodeRef) -> &mut Slot {
        self.slots[node.slot()].as_mut().expect("a holder's node has a slot")
    }

    fn id(&self, node: NodeRef) -> NodeId {
        self.slots[node.slot()].expect("a holder's node has a slot").id
    }

    /// The grant that `held` stands for.
    fn grant(&self, held: Held) -> Grant {
        Grant {
            owner: Owner { node: self.id(held.node), client: held.client },
            token: held.token,
            req: held.req,
        }
    }

    /// Sets `holder` to `grant` and counts the locks held per node.
    fn replace(&mut self, holder: &mut Option<Held>, grant: Option<Grant>) {
        let new = grant.map(|g| self.hold(g));
        if let Some(old) = std::mem::replace(holder, new) {
            self.slot(old.node).holds -= 1;
        }
    }

    /// One more lock held by the grant's node.
    fn hold(&mut self, grant: Grant) -> Held {
        let id = grant.owner.node;
        let node = match self.find(id) {
            Some(node) => node,
            None => {
                let free = self.slots.iter().position(Option::is_none);
                let slot = free.unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                self.slots[slot] = Some(Slot { id, holds: 0 });
                let number = u32::try_from(slot + 1).ok().and_then(NonZeroU32::new);
                let node = NodeRef(number.expect("fewer than 2^32 nodes hold locks"));
                self.refs.insert(id, node);
                node
            }
        };
        self.slot(node).holds += 1;
        Held { node, client: grant.owner.client, token: grant.token, req: grant.req }
    }

    /// Frees the slots of the nodes that hold nothing.
    fn forget_idle(&mut self) {
        for slot in &mut self.slots {
            if let Some(Slot { id, holds: 0 }) = *slot {
                self.refs.remove(&id);
                *slot = None;
            }
        }
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
    }
}

/// One lock's state.
///
/// Most held locks have no queue and no lock-delay, so those two live
/// behind one pointer that is `None` while both are empty: a plain held
/// lock pays 8 bytes for them instead of 48.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    holder: Option<Held>,
    rare: Option<Box<Rare>>,
}

/// The parts of an entry that most locks never use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rare {
    waiters: VecDeque<Waiter>,
    /// Not granted again before this instant (lock-delay after its holder
    /// left the view).
    delayed_until: Option<Duration>,
}

/// The queue of an entry without one.
static NO_WAITERS: VecDeque<Waiter> = VecDeque::new();

impl Entry {
    fn is_idle(&self) -> bool {
        self.holder.is_none() && self.rare.is_none()
    }

    /// The queue, in ticket order.
    pub fn waiters(&self) -> &VecDeque<Waiter> {
        self.rare.as_ref().map_or(&NO_WAITERS, |r| &r.waiters)
    }

    /// The end of the lock-delay, if one runs.
    pub fn delayed_until(&self) -> Option<Duration> {
        self.rare.as_ref().and_then(|r| r.delayed_until)
    }

    /// Keeps the waiters for which `keep` is true.
    fn retain_waiters(&mut self, keep: impl FnMut(&Waiter) -> bool) {
        if let Some(rare) = &mut self.rare {
            rare.waiters.retain(keep);
        }
        self.shrink();
    }

    /// Queues `waiter` in ticket order.
    fn insert_waiter(&mut self, waiter: Waiter) {
        let waiters = &mut self.rare.get_or_insert_default().waiters;
        let at = waiters.partition_point(|w| w.ticket < waiter.ticket);
        waiters.insert(at, waiter);
    }

    fn pop_waiter(&mut self) -> Option<Waiter> {
        let next = self.rare.as_mut()?.waiters.pop_front();
        self.shrink();
        next
    }

    /// Starts (`Some`) or ends (`None`) the lock-delay.
    fn set_delay(&mut self, until: Option<Duration>) {
        let until = match (until, self.delayed_until()) {
            // Two reasons to wait: the later one counts.
            (Some(new), Some(old)) if old > new && self.holder.is_none() => Some(old),
            _ => until,
        };
        if until.is_some() || self.rare.is_some() {
            self.rare.get_or_insert_default().delayed_until = until;
        }
        self.shrink();
    }

    /// Frees the box of rare parts once both are empty.
    fn shrink(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.waiters.is_empty() && r.delayed_until.is_none()) {
            self.rare = None;
        }
    }

    /// Whether the next waiter may be granted at `now`.
    pub fn grantable(&self, now: Duration) -> bool {
        self.holder.is_none() && self.delayed_until().is_none_or(|t| t <= now)
    }

    /// The table's rules for one entry: the holder never waits for its own
    /// lock, an owner waits once at most, the queue is in ticket order, and
    /// the box of rare parts is there only while it holds something.
    fn is_valid(&self, nodes: &HolderNodes) -> bool {
        let waiters = self.waiters();
        let holder = self.holder.map(|h| nodes.grant(h).owner);
        let holder_waits = holder.is_some_and(|h| waiters.iter().any(|w| w.owner == h));
        let ordered = waiters.iter().zip(waiters.iter().skip(1)).all(|(a, b)| a.ticket < b.ticket);
        let mut owners: Vec<Owner> = waiters.iter().map(|w| w.owner).collect();
        owners.sort();
        owners.dedup();
        let boxed_if_used =
            self.rare.as_ref().is_none_or(|r| !r.waiters.is_empty() || r.delayed_until.is_some());
        !holder_waits && ordered && owners.len() == waiters.len() && boxed_if_used
    }
}

/// The lock table. A `BTreeMap` keeps every walk over it in one order, so
/// one simulator seed gives one trace.
#[derive(Clone, Debug, Default)]
pub(crate) struct LockTable {
    locks: BTreeMap<LockName, Entry>,
    /// The holders' node ids, which the entries refer to by [`NodeRef`].
    nodes: HolderNodes,
    /// The names whose entry has rare parts (a queue or a lock-delay): the
    /// walks for timers and queues go over these few, not the whole table,
    /// since the coordinator asks for its next deadline after every input.
    rare: BTreeSet<LockName>,
}

impl LockTable {
    pub fn get(&self, name: &LockName) -> Option<&Entry> {
        self.locks.get(name)
    }

    pub fn holder(&self, name: &LockName) -> Option<Grant> {
        self.get(name).and_then(|e| self.holder_of(e))
    }

    /// The holder of an entry of this table.
    pub fn holder_of(&self, entry: &Entry) -> Option<Grant> {
        entry.holder.map(|h| self.nodes.grant(h))
    }

    /// Records `grant` as the holder of a free lock: a new grant, made once
    /// any lock-delay on it was over, so the delay ends here. (A hold a
    /// member reports keeps the delay: see [`LockTable::install_reported`].)
    pub fn grant(&mut self, name: &LockName, grant: Grant) {
        self.set_holder(name, grant, true);
    }

    /// Installs a hold a member reported. Unlike a grant, it leaves a
    /// lock-delay in force: a departed holder may still be inside its lease,
    /// so when this holder lets go, the next waiter still waits it out.
    pub fn install_reported(&mut self, name: &LockName, grant: Grant) {
        self.set_holder(name, grant, false);
    }

    fn set_holder(&mut self, name: &LockName, grant: Grant, end_delay: bool) {
        let entry = self.locks.entry(name.clone()).or_default();
        debug_assert!(entry.holder.is_none(), "{name} is held already");
        self.nodes.replace(&mut entry.holder, Some(grant));
        if end_delay {
            entry.set_delay(None);
        }
        entry.retain_waiters(|w| w.owner != grant.owner);
        debug_assert!(entry.is_valid(&self.nodes));
        track(&mut self.rare, name, Some(entry));
    }

    /// Replaces the holder (duplicate resolution keeps the other grant).
    pub fn replace_holder(&mut self, name: &LockName, grant: Grant) {
        let entry = self.locks.entry(name.clone()).or_default();
        self.nodes.replace(&mut entry.holder, Some(grant));
        entry.retain_waiters(|w| w.owner != grant.owner);
        track(&mut self.rare, name, Some(entry));
    }

    /// Queues `waiter` in ticket order.
    pub fn enqueue(&mut self, name: &LockName, waiter: Waiter) {
        let entry = self.locks.entry(name.clone()).or_default();
        entry.insert_waiter(waiter);
        debug_assert!(entry.is_valid(&self.nodes), "bad queue for {name}: {entry:?}");
        track(&mut self.rare, name, Some(entry));
    }

    /// Releases the lock if `owner` holds it with `token`.
    pub fn release(&mut self, name: &LockName, owner: Owner, token: Token) -> bool {
        let Some(entry) = self.locks.get_mut(name) else { return false };
        let holder = entry.holder.map(|h| self.nodes.grant(h));
        if holder.is_some_and(|h| h.owner == owner && h.token == token) {
            self.nodes.replace(&mut entry.holder, None);
            self.forget_if_idle(name);
            return true;
        }
        false
    }

    /// Records the stamp of the latest copy of waiting request `req`.
    pub fn touch_waiter(&mut self, name: &LockName, owner: Owner, req: ReqId, stamp: u64) {
        if let Some(rare) = self.locks.get_mut(name).and_then(|e| e.rare.as_mut()) {
            for w in rare.waiters.iter_mut().filter(|w| w.owner == owner && w.req == req) {
                w.stamp = w.stamp.max(stamp);
            }
        }
    }

    /// Grants nothing on `name` before `until` (a holder the table does not
    /// list may still be inside its lease).
    pub fn delay(&mut self, name: &LockName, until: Duration) {
        let entry = self.locks.entry(name.clone()).or_default();
        if entry.holder.is_none() {
            entry.set_delay(Some(until));
        }
        track(&mut self.rare, name, Some(entry));
        self.forget_if_idle(name);
    }

    /// Removes the waiting request `req` of `owner`; true if it was queued.
    pub fn dequeue(&mut self, name: &LockName, owner: Owner, req: ReqId) -> bool {
        let Some(entry) = self.locks.get_mut(name) else { return false };
        let before = entry.waiters().len();
        entry.retain_waiters(|w| !(w.owner == owner && w.req == req));
        let removed = entry.waiters().len() != before;
        track(&mut self.rare, name, Some(entry));
        self.forget_if_idle(name);
        removed
    }

    /// The waiting request of `owner` for `name`, if any.
    pub fn waiting(&self, name: &LockName, owner: Owner) -> Option<Waiter> {
        self.locks.get(name)?.waiters().iter().find(|w| w.owner == owner).copied()
    }

    /// Takes the first waiter if the lock can be granted at `now`.
    pub fn pop_grantable(&mut self, name: &LockName, now: Duration) -> Option<Waiter> {
        let entry = self.locks.get_mut(name)?;
        if !entry.grantable(now) {
            return None;
        }
        entry.set_delay(None);
        let next = entry.pop_waiter();
        track(&mut self.rare, name, Some(entry));
        if next.is_none() {
            self.forget_if_idle(name);
        }
        next
    }

    /// Drops every hold and wait of `node` (it left the view). Freed locks
    /// are not granted again before `delayed_until`. Returns the names
    /// touched, for the caller to grant their next waiters.
    pub fn purge_node(&mut self, node: NodeId, delayed_until: Option<Duration>) -> Vec<LockName> {
        let mut touched = Vec::new();
        let node_ref = self.nodes.find(node);
        for (name, entry) in self.locks.iter_mut() {
            let mut hit = false;
            if entry.holder.is_some_and(|h| Some(h.node) == node_ref) {
                self.nodes.replace(&mut entry.holder, None);
                entry.set_delay(delayed_until);
                hit = true;
            }
            let before = entry.waiters().len();
            entry.retain_waiters(|w| w.owner.node != node);
            if hit || entry.waiters().len() != before {
                touched.push(name.clone());
            }
        }
        for name in &touched {
            self.track(name);
        }
        self.locks.retain(|_, e| !e.is_idle());
        self.nodes.forget_idle();
        debug_assert!(self.nodes.find(node).is_none() && self.counts_agree());
        touched
    }

    /// The entries with rare parts, by name.
    fn rare_entries(&self) -> impl Iterator<Item = (&LockName, &Entry)> {
        self.rare.iter().filter_map(|n| self.locks.get(n).map(|e| (n, e)))
    }

    /// Keeps [`LockTable::rare`] in step with `name`'s entry after a change.
    fn track(&mut self, name: &LockName) {
        let entry = self.locks.get(name);
        track(&mut self.rare, name, entry);
    }

    /// The earliest end of a lock-delay.
    pub fn next_delay_end(&self) -> Option<Duration> {
        self.rare_entries().filter_map(|(_, e)| e.delayed_until()).min()
    }

    /// Names whose lock-delay has run out at `now`.
    pub fn delays_over(&self, now: Duration) -> Vec<LockName> {
        self.rare_entries()
            .filter(|(_, e)| e.delayed_until().is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Clears an expired delay on an entry with no waiters, or with a
    /// holder (its release grants the next waiter as usual).
    pub fn end_delay(&mut self, name: &LockName) {
        if let Some(entry) = self.locks.get_mut(name) {
            entry.set_delay(None);
        }
        self.track(name);
        self.forget_if_idle(name);
    }

    fn forget_if_idle(&mut self, name: &LockName) {
        if self.locks.get(name).is_some_and(Entry::is_idle) {
            self.locks.remove(name);
        }
    }

    /// Names with a queue.
    pub fn names_with_waiters(&self) -> Vec<LockName> {
        self.rare_entries().filter(|(_, e)| !e.waiters().is_empty()).map(|(n, _)| n.clone()).collect()
    }

    /// Every held lock with its holder.
    pub fn holders(&self) -> impl Iterator<Item = (&LockName, Grant)> {
        self.locks.iter().filter_map(|(n, e)| e.holder.map(|h| (n, self.nodes.grant(h))))
    }

    /// Number of held locks and of waiting requests, without walking the
    /// table (the agent reads them after every batch of input).
    pub fn sizes(&self) -> (usize, usize) {
        let held = self.nodes.slots.iter().flatten().map(|s| s.holds).sum();
        let waiting = self.rare_entries().map(|(_, e)| e.waiters().len()).sum();
        (held, waiting)
    }

    /// Whether [`HolderNodes`] counts exactly the locks each node holds,
    /// its slots and `refs` agree, and [`LockTable::rare`] names exactly the
    /// entries with rare parts. Walks the whole table.
    fn counts_agree(&self) -> bool {
        let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        for held in self.locks.values().filter_map(|e| e.holder) {
            *counts.entry(self.nodes.id(held.node)).or_default() += 1;
        }
        let slots: Vec<Slot> = self.nodes.slots.iter().flatten().copied().collect();
        let kept: BTreeMap<NodeId, usize> =
            slots.iter().filter(|s| s.holds > 0).map(|s| (s.id, s.holds)).collect();
        let linked = self.nodes.refs.iter().all(|(id, r)| self.nodes.id(*r) == *id);
        let rare: BTreeSet<&LockName> =
            self.locks.iter().filter(|(_, e)| e.rare.is_some()).map(|(n, _)| n).collect();
        let rare_tracked = rare.len() == self.rare.len() && self.rare.iter().all(|n| rare.contains(n));
        counts == kept && slots.len() == self.nodes.refs.len() && linked && rare_tracked
    }
}

/// Keeps the set of names with rare parts in step with `name`'s `entry`.
fn track(rare: &mut BTreeSet<LockName>, name: &LockName, entry: Option<&Entry>) {
    if entry.is_some_and(|e| e.rare.is_some()) {
        if !rare.contains(name) {
            rare.insert(name.clone());
        }
    } else if !rare.is_empty() {
        rare.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swimlock_wire::ClientId;

    fn owner(n: u64) -> Owner {
        Owner { node: NodeId { epoch: n, addr: "127.0.0.1:1".parse().unwrap() }, client: ClientId(n) }
    }
    fn name() -> LockName {
        LockName::new("a").unwrap()
    }

    #[test]
    fn waiters_are_kept_in_ticket_order_whatever_the_arrival_order() {
        let mut t = LockTable::default();
        for (o, ticket) in [(1, 30), (2, 10), (3, 20)] {
            t.enqueue(&name(), Waiter { owner: owner(o), req: ReqId(o), ticket: Token(ticket), stamp: 0 });
        }
        let order: Vec<u64> = std::iter::from_fn(|| t.pop_grantable(&name(), Duration::ZERO))
            .map(|w| w.owner.client.0)
            .collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[test]
    fn release_needs_the_holders_token() {
        let mut t = LockTable::default();
        t.grant(&name(), Grant { owner: owner(1), token: Token(5), req: ReqId(1) });
        assert!(!t.release(&name(), owner(1), Token(4)));
        assert!(!t.release(&name(), owner(2), Token(5)));
        assert!(t.release(&name(), owner(1), Token(5)));
        assert!(t.get(&name()).is_none(), "an idle entry is forgotten");
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_held_lock_without_queue_or_delay_stays_small() {
        // The holder with its node as a 4-byte reference (32 bytes), and one
        // pointer for the queue and the lock-delay.
        assert_eq!(std::mem::size_of::<Entry>(), 40);
    }

    #[test]
    fn holder_nodes_are_counted_and_freed_at_a_purge() {
        let mut t = LockTable::default();
        let names: Vec<LockName> = (0..4).map(|i| LockName::new(format!("n{i}")).unwrap()).collect();
        let grant = |o: u64, token: u64| Grant { owner: owner(o), token: Token(token), req: ReqId(token) };
        t.grant(&names[0], grant(1, 1));
        t.grant(&names[1], grant(2, 2));
        t.grant(&names[2], grant(3, 3));
        t.replace_holder(&names[2], grant(3, 4));
        assert!(t.counts_agree());
        assert_eq!(t.nodes.slots.len(), 3);
        // Node 2 holds nothing but keeps its slot until a purge, here of a
        // node without locks.
        assert!(t.release(&names[1], owner(2), Token(2)));
        assert!(t.nodes.find(owner(2).node).is_some() && t.counts_agree());
        t.purge_node(owner(9).node, None);
        assert_eq!(t.nodes.find(owner(2).node), None);
        // Its slot is taken by the next new node.
        t.grant(&names[3], grant(4, 5));
        assert_eq!(t.nodes.slots.len(), 3);
        assert!(t.counts_agree());
        let holders: Vec<Grant> = t.holders().map(|(_, g)| g).collect();
        assert_eq!(holders, vec![grant(1, 1), grant(3, 4), grant(4, 5)]);
        for node in [1, 3, 4] {
            t.purge_node(owner(node).node, None);
        }
        assert!(t.locks.is_empty() && t.nodes.slots.is_empty() && t.nodes.refs.is_empty());
    }

    #[test]
    fn purge_frees_the_nodes_locks_behind_the_lock_delay() {
        let mut t = LockTable::default();
        t.grant(&name(), Grant { owner: owner(1), token: Token(5), req: ReqId(1) });
        t.enqueue(&name(), Waiter { owner: owner(2), req: ReqId(2), ticket: Token(6), stamp: 0 });
        let touched = t.purge_node(owner(1).node, Some(Duration::from_secs(1)));
        assert_eq!(touched, vec![name()]);
        assert_eq!(t.pop_grantable(&name(), Duration::from_millis(999)), None);
        assert_eq!(t.pop_grantable(&name(), Duration::from_secs(1)).map(|w| w.owner), Some(owner(2)));
    }

    proptest::proptest! {
        /// Whatever the operations, the counts and the walks over the names
        /// with rare parts give what a walk over the whole table gives.
        #[test]
        fn counts_and_rare_walks_agree_with_the_whole_table(
            ops in proptest::collection::vec((0u8..8, 0u64..4, 0u64..6, 0u64..50), 1..120)
        ) {
            let mut t = LockTable::default();
            let mut ticket = 0;
            for (op, lock, who, at) in ops {
                let n = LockName::new(format!("l{lock}")).unwrap();
                let now = Duration::from_millis(at);
                ticket += 1;
                match op {
                    0 if t.holder(&n).is_none() => {
                        t.grant(&n, Grant { owner: owner(who), token: Token(ticket), req: ReqId(ticket) })
                    }
                    7 if t.holder(&n).is_none() => {
                        let delay = t.get(&n).and_then(Entry::delayed_until);
                        t.install_reported(&n, Grant { owner: owner(who), token: Token(ticket), req: ReqId(ticket) });
                        proptest::prop_assert_eq!(t.get(&n).and_then(Entry::delayed_until), delay);
                    }
                    1 if t.holder(&n).is_some_and(|h| h.owner != owner(who))
                        && t.waiting(&n, owner(who)).is_none() =>
                    {
                        t.enqueue(&n, Waiter { owner: owner(who), req: ReqId(ticket), ticket: Token(ticket), stamp: 0 })
                    }
                    2 => {
                        if let Some(h) = t.holder(&n) {
                            t.release(&n, h.owner, h.token);
                        }
                    }
                    3 => {
                        if let Some(w) = t.waiting(&n, owner(who)) {
                            t.dequeue(&n, w.owner, w.req);
                        }
                    }
                    4 => {
                        t.purge_node(owner(who).node, Some(now + Duration::from_millis(10)));
                    }
                    5 => {
                        if let Some(w) = t.pop_grantable(&n, now) {
                            t.grant(&n, Grant { owner: w.owner, token: Token(ticket), req: w.req });
                        }
                    }
                    _ => {
                        for over in t.delays_over(now) {
                            if t.holder(&over).is_some() || t.get(&over).is_some_and(|e| e.waiters().is_empty()) {
                                t.end_delay(&over);
                            }
                        }
                    }
                }
                let walk = t.locks.values().fold((0, 0), |(h, w), e| {
                    (h + usize::from(e.holder.is_some()), w + e.waiters().len())
                });
                proptest::prop_assert_eq!(t.sizes(), walk);
                let delay = t.locks.values().filter_map(Entry::delayed_until).min();
                proptest::prop_assert_eq!(t.next_delay_end(), delay);
                let queued: Vec<LockName> =
                    t.locks.iter().filter(|(_, e)| !e.waiters().is_empty()).map(|(n, _)| n.clone()).collect();
                proptest::prop_assert_eq!(t.names_with_waiters(), queued);
                proptest::prop_assert!(t.counts_agree());
            }
        }
    }
}
