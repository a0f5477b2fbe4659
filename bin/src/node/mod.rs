//! The sans-I/O node core: one [`Membership`] and one [`LockNode`] behind
//! one calling convention, speaking swimlock frames.
//!
//! # Calling convention
//! The same as the two machines it composes (and quinn-proto's):
//! 1. feed input: [`Node::start`] once, then [`Node::handle_datagram`] for
//!    every datagram received on the node's UDP port, the application
//!    operations ([`Node::lock`], [`Node::unlock`], ...) and
//!    [`Node::handle_timeout`] when the deadline of [`Node::poll_timeout`]
//!    passes (early or repeated calls are harmless);
//! 2. after every call, drain [`Node::poll_event`] (persisting a
//!    `TermStarted` term before anything else leaves the node, and saving
//!    a `KeyringChanged` keyring, then calling [`Node::keyring_saved`]),
//!    then [`Node::poll_transmit`] (send each datagram to its address);
//! 3. re-arm one timer at [`Node::poll_timeout`].
//!
//! `now` is the time since an origin fixed by the driver and never goes
//! backwards; the node reads no clock, no socket and no random source (the
//! salt of its nonces comes in with [`Security`]), so the tokio agent and
//! the simulator run exactly the same code.
//!
//! # Datagrams
//! Every datagram the node sends is sealed ([`seal`]); every datagram it
//! receives is opened, checked for its destination and for replays, and
//! only then decoded. Its sender is the one the envelope proves: a lock
//! frame or gossip payload that names another sender is dropped as
//! `spoofed`. What is dropped is counted in [`NodeCounters`] by
//! [`DropReason`].

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use swimlock_lock::{LockMsg, LockNode, UnlockError};
use swimlock_membership::{Membership, MembershipError};
use swimlock_wire::frame::{self, Kind};
use swimlock_wire::lock::LockFrame;
use swimlock_wire::{ClientId, LockName, NodeId, ReqId};

mod admin;
#[cfg(test)]
mod attack_tests;
pub mod seal;
pub mod tags;
#[cfg(test)]
mod tests;

pub use admin::KeyringReport;
pub use seal::{DropReason, Security};
use seal::{Keyring, Opened, Sealing};

/// Everything a [`Node`] needs besides its identity.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Display name shown to other members.
    pub name: String,
    /// The cluster's name; frames of another cluster are dropped (its id
    /// travels in every envelope, the full name is authenticated).
    pub cluster: String,
    /// Sealed with a keyring, or explicitly insecure.
    pub security: Security,
    /// Addresses to announce to until they are members.
    pub seeds: Vec<SocketAddr>,
    /// Lock protocol settings (mode, node tag, timings).
    pub lock: swimlock_lock::Config,
    /// Membership timings.
    pub membership: swimlock_membership::Config,
    /// With seeds other than itself, the node neither coordinates nor
    /// grants until it has joined a group through one; if none answers
    /// within this time, it forms a group of its own (and says so). About
    /// twice the failure detection time; see [`NodeConfig::JOIN_TIMEOUT`].
    pub join_timeout: Duration,
}

impl NodeConfig {
    /// Default join timeout: about twice the time LAN membership takes to
    /// detect a failure (about one second).
    pub const JOIN_TIMEOUT: Duration = Duration::from_secs(2);
}

/// What the node reports to its driver.
///
/// A [`swimlock_lock::Event::TermStarted`] must be made durable before the
/// driver sends the datagrams or delivers the other events of the same
/// input (drain events first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// An outcome of a lock operation, a lost lock, or a new coordinator term.
    Lock(swimlock_lock::Event),
    /// A view was installed (already handed to the lock machine).
    View {
        /// The new view.
        view: swimlock_membership::View,
        /// Whether it is a merge view.
        merge: bool,
    },
    /// An older member of a view had this node's tag, so the node took
    /// another free one (see [`tags`]), already applied to membership and to
    /// the lock machine before that view reached it. Persist it and use it
    /// at the next start.
    TagChanged {
        /// The new tag.
        tag: u16,
    },
    /// A newer process took this node's address (see
    /// [`Membership::superseded_by`]): membership stopped for good. The
    /// driver should stop the node and say so loudly.
    Superseded {
        /// The newer process.
        by: NodeId,
    },
    /// Another member declared this node down (see
    /// [`Membership::times_declared_down`]): the lock machine grants and
    /// renews nothing until the view after membership renewed the node's
    /// identity.
    DeclaredDown,
    /// No seed answered within the join timeout: the node formed a group of
    /// its own and may grant in it (worth a warning: if the seeds were up
    /// but unreachable, this is a split brain).
    JoinTimedOut,
    /// The keyring changed (a keyring command from a member or from this
    /// node): save it (the agent writes `<state_dir>/keyring`), then call
    /// [`Node::keyring_saved`]. The node's answers wait for that call.
    KeyringChanged(Keyring),
    /// A keyring command started with [`Node::keyring_command`] ended.
    Keyring(KeyringReport),
}

/// Datagram counters, monotonic since the node was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Datagrams handed to [`Node::handle_datagram`].
    pub datagrams_in: u64,
    /// Datagrams produced by [`Node::poll_transmit`].
    pub datagrams_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes produced.
    pub bytes_out: u64,
    /// Datagrams dropped as malformed, truncated, oversized or of an unknown
    /// version, suite or kind, and authentic bodies that do not decode
    /// (including gossip that membership refused).
    pub decode_errors: u64,
    /// Datagrams of another cluster, dropped.
    pub foreign_cluster: u64,
    /// Frames for another identity (for example a previous process on this
    /// address), dropped.
    pub misaddressed: u64,
    /// Datagrams that failed to open, or plain ones at a sealed node.
    pub unauthenticated: u64,
    /// Authentic datagrams seen before (or too old), dropped.
    pub replayed: u64,
    /// Datagrams sealed under a key this node does not hold.
    pub unknown_key: u64,
    /// Frames whose body names another sender than the envelope proves.
    pub spoofed: u64,
    /// Senders the replay table forgot because it was full.
    pub replay_evictions: u64,
    /// Times another member declared this node down (and the lock machine
    /// held still until the view after the renewal).
    pub held_down: u64,
    /// Lock operations received from members: requests (lock, unlock,
    /// cancel) and their answers, not leases or reconciliation. The agent
    /// stays awake briefly after them (see `agent::task`).
    pub lock_ops_in: u64,
    /// Lock operations sent, as [`NodeCounters::lock_ops_in`] counts them.
    pub lock_ops_out: u64,
}

impl NodeCounters {
    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Unauthenticated => self.unauthenticated,
            DropReason::Replayed => self.replayed,
            DropReason::UnknownKey => self.unknown_key,
            DropReason::Malformed => self.decode_errors,
            DropReason::ForeignCluster => self.foreign_cluster,
            DropReason::Misaddressed => self.misaddressed,
            DropReason::Spoofed => self.spoofed,
        }
    }
}

/// A setting the node refused; names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeError {
    /// The field, prefixed with `lock.` or `membership.` for the settings of
    /// those machines (for example `lock.retransmit_max`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for NodeError {}

/// The swimlock node core. See the [module documentation](self) for the
/// calling convention. One task owns it; it is not shared.
#[derive(Debug)]
pub struct Node {
    me: NodeId,
    sealing: Sealing,
    /// Reused for the plaintext of every datagram opened.
    scratch: Vec<u8>,
    membership: Membership,
    lock: LockNode,
    admin: admin::Admin,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<NodeEvent>,
    /// While joining: until when to wait for a seed, and the view the lock
    /// machine will get if none answers.
    joining: Option<(Duration, Option<swimlock_lock::View>)>,
    /// The time of the last input: membership ticks every probe period, so
    /// a long gap means the process did not run (see `notice_gap`).
    last_input: Option<Duration>,
    /// A term the lock machine recorded, to spread with the gossip.
    term_to_show: Option<u32>,
    join_timeout: Duration,
    counters: NodeCounters,
    /// [`NodeEvent::Superseded`] was emitted.
    superseded: bool,
    /// How many times membership said others declared this node down, as
    /// last passed to the lock machine.
    downs_seen: u64,
    /// Lock messages wait in the lock machine (see [`Node::set_corked`]).
    corked: bool,
}

impl Node {
    /// A node with identity `me` that never coordinated before; `rng_seed`
    /// fixes every random choice of the membership layer.
    pub fn new(me: NodeId, config: NodeConfig, rng_seed: u64) -> Result<Node, NodeError> {
        Node::with_term_floor(me, config, rng_seed, 0)
    }

    /// A node whose earlier life on this host announced coordinator terms up
    /// to `term_floor` (the last [`swimlock_lock::Event::TermStarted`] the
    /// driver made durable): it will grant only above that term, so a
    /// restarted coordinator never repeats a token.
    pub fn with_term_floor(
        me: NodeId,
        config: NodeConfig,
        rng_seed: u64,
        term_floor: u32,
    ) -> Result<Node, NodeError> {
        let mut config = config;
        config.lock.detection_min = config.membership.detection_min();
        config
            .lock
            .validate()
            .map_err(|e| NodeError { field: format!("lock.{}", e.field), reason: e.reason.to_string() })?;
        let tag = config.lock.tag;
        let has_seeds = config.seeds.iter().any(|s| *s != me.addr);
        let join_timeout = config.join_timeout;
        let membership = Membership::new(me, config.name, tag, config.membership, config.seeds, rng_seed)
            .map_err(|e| {
                // Arguments of `Membership::new` keep their own name.
                let field = match e.field {
                    "name" | "me.epoch" => e.field.to_string(),
                    other => format!("membership.{other}"),
                };
                NodeError { field, reason: e.reason }
            })?;
        Ok(Node {
            me,
            sealing: Sealing::new(me, &config.cluster, config.security),
            scratch: Vec::with_capacity(frame::TARGET_DATAGRAM),
            membership,
            lock: LockNode::with_term_floor(me, config.lock, term_floor),
            admin: admin::Admin::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            joining: has_seeds.then_some((Duration::MAX, None)),
            term_to_show: (term_floor > 0).then_some(term_floor),
            last_input: None,
            join_timeout,
            counters: NodeCounters::default(),
            superseded: false,
            downs_seen: 0,
            corked: false,
        })
    }

    /// Starts membership: the first view (this node alone) is installed and
    /// the seeds are announced to. Later calls do nothing.
    pub fn start(&mut self, now: Duration) {
        if let Some((deadline, _)) = &mut self.joining {
            *deadline = now.saturating_add(self.join_timeout);
        }
        // A gap counts from the start: a node stopped before its first
        // input did not run either.
        self.last_input.get_or_insert(now);
        self.membership.start(now);
        self.after_input(now);
    }

    /// Tells the lock machine when this node did not run for longer than
    /// failure detection (paused, starved): what it believed about the
    /// others may be out of date.
    fn notice_gap(&mut self, now: Duration) -> bool {
        let detection = self.lock.config().detection_min;
        let gap = self.last_input.is_some_and(|t| now.saturating_sub(t) >= detection);
        if gap {
            self.lock.note_gap(now);
        }
        self.last_input = Some(self.last_input.map_or(now, |t| t.max(now)));
        gap
    }

    /// Whether the node still waits for a seed before it takes part in
    /// locking (see [`NodeConfig::join_timeout`]).
    pub fn is_joining(&self) -> bool {
        self.joining.is_some()
    }

    /// One datagram received (from UDP source `source`, which proves
    /// nothing and is not used: the sender is the one the envelope proves).
    /// A datagram that fails to open, was seen before, is of another
    /// cluster, for another identity, does not decode or names another
    /// sender than its envelope is counted in [`Node::counters`] and
    /// dropped before any machine sees it; no input makes it panic.
    pub fn handle_datagram(&mut self, now: Duration, source: SocketAddr, datagram: &[u8]) {
        self.notice_gap(now);
        let _ = source;
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += datagram.len() as u64;
        let mut scratch = std::mem::take(&mut self.scratch);
        match self.sealing.open(datagram, &mut scratch) {
            Ok(opened) => self.on_opened(now, opened),
            Err(reason) => {
                self.count_drop(reason);
                // Authentic but for another process at this address: if a
                // newer one, this one was replaced (membership stands down);
                // if an older one, the sender has not met this process yet.
                match self.sealing.take_misaddressed() {
                    Some((_, epoch)) if epoch > self.me.epoch => {
                        self.membership.note_claim(now, NodeId { epoch, addr: self.me.addr });
                    }
                    Some((from, _)) => self.membership.note_stale_caller(now, from),
                    None => {}
                }
            }
        }
        self.scratch = scratch;
        self.after_input(now);
    }

    fn on_opened(&mut self, now: Duration, opened: Opened<'_>) {
        match opened.kind {
            Kind::Gossip => self.on_gossip(now, opened.from, opened.body),
            Kind::Lock => self.on_lock_frame(now, opened.from, opened.body),
            Kind::Admin => self.on_admin(now, opened.from, opened.body),
        }
    }

    fn count_drop(&mut self, reason: DropReason) {
        let c = &mut self.counters;
        let slot = match reason {
            DropReason::Unauthenticated => &mut c.unauthenticated,
            DropReason::Replayed => &mut c.replayed,
            DropReason::UnknownKey => &mut c.unknown_key,
            DropReason::Malformed => &mut c.decode_errors,
            DropReason::ForeignCluster => &mut c.foreign_cluster,
            DropReason::Misaddressed => &mut c.misaddressed,
            DropReason::Spoofed => &mut c.spoofed,
        };
        *slot += 1;
    }

    fn on_gossip(&mut self, now: Duration, from: NodeId, body: &[u8]) {
        match self.membership.handle_datagram(now, from, body) {
            Ok(()) => {}
            // Gossip that arrives after `leave` is expected, not an error.
            Err(MembershipError::NotRunning) => {}
            Err(MembershipError::SenderMismatch { .. }) => self.count_drop(DropReason::Spoofed),
            Err(_) => self.count_drop(DropReason::Malformed),
        }
    }

    fn on_lock_frame(&mut self, now: Duration, from: NodeId, body: &[u8]) {
        let frame = match frame::decode_lock(body) {
            Ok(frame) => frame,
            Err(_) => return self.count_drop(DropReason::Malformed),
        };
        if frame.from != from {
            return self.count_drop(DropReason::Spoofed);
        }
        if frame.to != self.me {
            return self.count_drop(DropReason::Misaddressed);
        }
        for msg in frame.msgs {
            self.counters.lock_ops_in += u64::from(is_lock_op(&msg));
            self.lock.handle_message(now, from, msg);
        }
    }

    /// Runs the timers of both machines that are due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        let gap = self.notice_gap(now);
        if gap && let Some((deadline, _)) = &mut self.joining {
            // The node did not run: seeds may have answered meanwhile, in
            // datagrams not read yet. They are read before the join gives
            // up on them.
            *deadline = (*deadline).max(now + self.membership.config().probe_period);
        }
        self.membership.handle_timeout(now);
        self.lock.handle_timeout(now);
        if let Some((deadline, _)) = &mut self.joining
            && *deadline <= now
            && self.membership.has_peers()
        {
            // A seed answered and the join is under way: its view follows.
            *deadline = now + self.membership.config().view_max_delay;
        }
        if let Some((_, view)) = self.joining.take_if(|(deadline, _)| *deadline <= now) {
            self.events.push_back(NodeEvent::JoinTimedOut);
            if let Some(view) = view {
                self.lock.handle_view(now, view);
                self.drain_lock_events();
            }
        }
        self.admin_timeout(now);
        self.after_input(now);
    }

    /// The operator accepts coordinator terms up to `term` (see
    /// [`swimlock_lock::Alert::TermJump`]).
    pub fn accept_term(&mut self, now: Duration, term: u32) {
        self.notice_gap(now);
        self.lock.accept_term(now, term);
        self.after_input(now);
    }

    /// `lock(name, timeout)` for `client`; the outcome arrives as a
    /// [`NodeEvent::Lock`] carrying the returned id.
    pub fn lock(&mut self, now: Duration, client: ClientId, name: LockName, timeout: Duration) -> ReqId {
        self.notice_gap(now);
        let req = self.lock.lock(now, client, name, timeout);
        self.after_input(now);
        req
    }

    /// `try_lock(name)` for `client`: granted now or failed as busy.
    pub fn try_lock(&mut self, now: Duration, client: ClientId, name: LockName) -> ReqId {
        self.notice_gap(now);
        let req = self.lock.try_lock(now, client, name);
        self.after_input(now);
        req
    }

    /// Drops one hold of `name` by `client`; does not wait for the
    /// coordinator (the release is retransmitted until confirmed).
    pub fn unlock(&mut self, now: Duration, client: ClientId, name: &LockName) -> Result<(), UnlockError> {
        self.notice_gap(now);
        let result = self.lock.unlock(now, client, name);
        self.after_input(now);
        result
    }

    /// `client` went away: its locks are released and its requests withdrawn.
    pub fn release_client(&mut self, now: Duration, client: ClientId) {
        self.notice_gap(now);
        self.lock.release_client(now, client);
        self.after_input(now);
    }

    /// Leaves the cluster: tells a few members, then stops gossiping. Release
    /// the clients' locks first if they should go to waiters at once.
    pub fn leave(&mut self, now: Duration) {
        self.membership.leave(now);
        self.after_input(now);
    }

    /// The next datagram to send, with its destination. Drain after every
    /// input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// While corked, the lock messages that inputs produce wait instead of
    /// becoming datagrams; uncorking packs everything that waited per peer,
    /// as if it came from one input. A driver corks while an answer is on
    /// its way and more messages are likely to follow, so that they share
    /// a datagram; it must uncork soon (every lock message is delayed as
    /// long as it is corked). Gossip is never held.
    pub fn set_corked(&mut self, corked: bool) {
        self.corked = corked;
        if !corked {
            self.batch_lock_transmits();
        }
    }

    /// Whether datagrams wait for [`Node::poll_transmit`].
    pub fn has_transmits(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// The next event. Drain after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When to call [`Node::handle_timeout`] next: the earlier of the two
    /// machines' deadlines, on the `now` clock. Re-read after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        let join = self.joining.as_ref().map(|(deadline, _)| *deadline);
        [self.membership.poll_timeout(), self.lock.poll_timeout(), self.admin_deadline(), join]
            .into_iter()
            .flatten()
            .min()
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Changes the lock-delay (see [`LockNode::set_lock_delay`]).
    pub fn set_lock_delay(&mut self, lock_delay: Duration) -> Result<(), swimlock_lock::ConfigError> {
        self.lock.set_lock_delay(lock_delay)
    }

    /// The next [`swimlock_lock::Notice`] of the lock machine, for the log
    /// (optional to drain; the oldest are dropped past a bound).
    #[must_use]
    pub fn poll_notice(&mut self) -> Option<swimlock_lock::Notice> {
        self.lock.poll_notice()
    }

    /// The lock machine, for status and statistics.
    pub fn lock_node(&self) -> &LockNode {
        &self.lock
    }

    /// The membership machine, for the view and member names.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Datagram counters.
    pub fn counters(&self) -> NodeCounters {
        NodeCounters { replay_evictions: self.sealing.replay_evictions(), ..self.counters }
    }

    /// The keys this node accepts and sends with; `None` in insecure mode.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.sealing.keyring()
    }

    /// Moves what one input produced to the outputs: views go to the lock
    /// machine (so it always acts on the latest view, with a tag no older
    /// member of it has), events are queued in the order they happened, and
    /// lock messages are batched per peer.
    fn after_input(&mut self, now: Duration) {
        self.drain_lock_events();
        // A term this node recorded is gossiped (see `Membership::gossip_term`).
        if let Some(term) = self.term_to_show.take() {
            self.membership.gossip_term(term);
        }
        // Declared down (by a real failure detection or foca's spurious
        // "you are down" after a refuted suspicion): others may drop this
        // node while its view keeps them, so the lock machine holds still
        // until the view after the renewal.
        let downs = self.membership.times_declared_down();
        if downs != self.downs_seen {
            self.downs_seen = downs;
            self.lock.hold_down(now);
            self.counters.held_down += 1;
            self.events.push_back(NodeEvent::DeclaredDown);
        }
        if !self.membership.held_down() {
            self.lock.renewed(now);
        }
        while let Some(event) = self.membership.poll_event() {
            let merge = event.is_merge();
            let mut view = match event {
                swimlock_membership::Event::View(view) | swimlock_membership::Event::Merge { view, .. } => {
                    view
                }
            };
            self.keep_tag_unique(now, &mut view);
            let members: Vec<NodeId> = view.ids().collect();
            let gossiped_term = self.membership.gossiped_term();
            let lock_view = swimlock_lock::View { id: view.id, members, merge, gossiped_term };
            self.events.push_back(NodeEvent::View { view, merge });
            if let Some((_, held)) = &mut self.joining {
                if lock_view.members.len() < 2 {
                    // Alone: not a group to grant in until a seed answers or
                    // the join timeout passes.
                    *held = Some(lock_view);
                    continue;
                }
                self.joining = None;
            }
            self.lock.handle_view(now, lock_view);
            self.drain_lock_events();
        }
        if let Some(by) = self.membership.superseded_by()
            && !std::mem::replace(&mut self.superseded, true)
        {
            self.events.push_back(NodeEvent::Superseded { by });
        }
        while let Some((to, payload)) = self.membership.poll_transmit() {
            // Membership keeps payloads below its packet size, far under the
            // frame limit; an oversized one would be dropped like a lost one.
            let sealed = self.sealing.seal(to, Kind::Gossip, |out| {
                out.extend_from_slice(&payload);
                Ok(())
            });
            if let Ok(datagram) = sealed {
                self.push_transmit(to.addr, datagram);
            }
        }
        if !self.corked {
            self.batch_lock_transmits();
        }
    }

    /// Before `view` reaches the lock machine: if an older member has this
    /// node's tag, take a free one (see [`tags`]) everywhere it is used.
    fn keep_tag_unique(&mut self, now: Duration, view: &mut swimlock_membership::View) {
        let old = self.membership.tag();
        let Some(tag) = tags::replacement(self.me, old, view) else { return };
        if let Some(older) = view.members.iter().find(|m| m.id < self.me && m.tag == old) {
            tracing::info!(old, tag, older = %older.name, "node tag taken by an older member; changed");
        }
        self.membership.set_tag(now, tag);
        self.lock.set_tag(tag);
        for m in view.members.iter_mut().filter(|m| m.id == self.me) {
            m.tag = tag;
        }
        self.events.push_back(NodeEvent::TagChanged { tag });
    }

    fn drain_lock_events(&mut self) {
        while let Some(event) = self.lock.poll_event() {
            if let swimlock_lock::Event::TermStarted { term } = event {
                self.term_to_show = self.term_to_show.max(Some(term));
            }
            self.events.push_back(NodeEvent::Lock(event));
        }
    }

    /// Groups the lock messages of this input per peer (peers in order of
    /// their first message, messages in order) and packs each group into as
    /// few frames of at most [`frame::TARGET_DATAGRAM`] bytes as it fits.
    fn batch_lock_transmits(&mut self) {
        let mut per_peer: Vec<(NodeId, Vec<LockMsg>)> = Vec::new();
        while let Some(t) = self.lock.poll_transmit() {
            self.counters.lock_ops_out += u64::from(is_lock_op(&t.msg));
            match per_peer.iter_mut().find(|(to, _)| *to == t.to) {
                Some((_, msgs)) => msgs.push(t.msg),
                None => per_peer.push((t.to, vec![t.msg])),
            }
        }
        for (to, msgs) in per_peer {
            let empty = LockFrame { from: self.me, to, msgs: Vec::new() };
            // Header, both ids and a length prefix of up to 5 bytes.
            let overhead = frame::lock_frame_len(&empty) + 4;
            let mut batch = LockFrame { msgs: Vec::new(), ..empty };
            let mut size = overhead;
            for msg in msgs {
                let len = postcard::experimental::serialized_size(&msg).unwrap_or(frame::MAX_DATAGRAM);
                if !batch.msgs.is_empty() && size + len > frame::TARGET_DATAGRAM {
                    self.send_lock_frame(&mut batch);
                    size = overhead;
                }
                batch.msgs.push(msg);
                size += len;
            }
            self.send_lock_frame(&mut batch);
        }
    }

    fn send_lock_frame(&mut self, batch: &mut LockFrame) {
        if batch.msgs.is_empty() {
            return;
        }
        // A message too large for any datagram cannot be sent; the
        // protocol's retransmission and timeouts treat it as lost.
        if let Ok(datagram) =
            self.sealing.seal(batch.to, Kind::Lock, |out| frame::write_lock_body(batch, out))
        {
            self.push_transmit(batch.to.addr, datagram);
        }
        batch.msgs.clear();
    }

    fn push_transmit(&mut self, to: SocketAddr, datagram: Vec<u8>) {
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += datagram.len() as u64;
        self.transmits.push_back((to, datagram));
    }
}

/// Whether `msg` is a lock operation or its answer, which a peer's next
/// message often follows within a round trip.
fn is_lock_op(msg: &LockMsg) -> bool {
    matches!(
        msg,
        LockMsg::Lock(_)
            | LockMsg::Unlock(_)
            | LockMsg::Cancel(_)
            | LockMsg::LockRsp(_)
            | LockMsg::UnlockRsp(_)
    )
}
