//! swimlock membership: [foca] (SWIM gossip) wrapped as a sans-I/O,
//! deterministic state machine that reports *views* and *merge views*.
//!
//! # Calling convention
//!
//! The same as quinn-proto's: the driver owns the socket and the clock, and
//! [`Membership`] never reads either.
//!
//! 1. Feed input: [`Membership::start`] once, then
//!    [`Membership::handle_datagram`] for every gossip datagram (the payload
//!    after swimlock's frame header, with the sender the envelope
//!    authenticated) and [`Membership::handle_timeout`] when the deadline
//!    from `poll_timeout` passes (calling it early or twice is harmless).
//! 2. After every call, drain [`Membership::poll_transmit`] (send each
//!    payload to its destination's address, wrapped in a swimlock frame of
//!    kind Gossip) and [`Membership::poll_event`] (views to hand to the lock
//!    layer).
//! 3. Re-arm one timer at [`Membership::poll_timeout`], an absolute
//!    deadline on the driver's clock.
//!
//! `now` is the time since an origin the driver fixes; it must not go
//! backwards (an earlier `now` is treated as the latest one seen). All
//! randomness comes from the `rng_seed` given to [`Membership::new`], and
//! all ordered state is in `BTreeMap`s and `Vec`s, so one seed and one input
//! sequence give one output sequence.
//!
//! # Identity and views
//!
//! Members are keyed by [`NodeId`] = (start stamp, address); a restarted
//! process is a new, younger member. Views list members oldest first, and
//! the first is the coordinator; each member also shows its display name
//! and its node tag ([`Member::tag`], changed with
//! [`Membership::set_tag`]). Internally foca gossips a renewable identity
//! (key, a renewal counter, name and tag): when a node learns it was
//! declared down, it renews and rejoins on its own (see below). Together
//! with foca telling down members they are down, periodic announces to down
//! members, down members remembered for 24 h, and this crate's own announce
//! loop to configured seeds that are not active members (every second), the
//! sides of a healed partition find each other again with no operator
//! action, and a node that starts or is left alone keeps looking for its
//! seeds. A member that still addresses an earlier process at this node's
//! address is announced to like a seed ([`Membership::note_stale_caller`]):
//! after a restart with every seed out of reach, it may be the only way in.
//!
//! # One address, two identities
//!
//! foca keeps one member per address; of two identities at one address the
//! one with the larger start stamp wins, then the larger renewal counter.
//! Two processes can claim one address: a second agent started on a port
//! in use (SO_REUSEADDR), two hosts advertising the same address, or a
//! forged identity update. What this crate does about it:
//!
//! - **A newer process wins, and the older one stands down.** A node that
//!   sees an identity with a larger start stamp at its own address (in a
//!   gossip update, or as the sender or destination of a datagram it
//!   receives) can never win its address back, so it stops for good: it
//!   sends nothing more, asks for no timer and installs no view, and
//!   [`Membership::superseded_by`] names the newer process. Every other
//!   node already prefers the newer identity, so all of them agree: the
//!   address belongs to the newer process, or to nobody once that one has
//!   gone. In the test harness (`tests/twins.rs`, 5 nodes, 200 seeds) the
//!   older process stood down and every node agreed within 251 ms of a twin
//!   leaving and 1.06 s of a twin crashing (its failure detection).
//! - **A renewal outranks what it lost to, in one step.** foca's own
//!   renewal (`Identity::renew`) is turned off: a node declared down goes
//!   `Defunct` in foca and this crate renews it, with a renewal counter
//!   above its own and above every same-stamp identity seen at its address.
//!   A forged "node n renewed to 1000" is outranked by n's next renewal; foca
//!   alone climbed one counter per round trip, a thousand round trips.
//!
//! The storm this replaces: a process that lost its address to a newer one
//! was told "you are down" (foca's `TurnUndead`) for every datagram it
//! sent; foca answered each with a new identity and a gossip to three
//! members, each of which answered "you are down" again. A loop paced only
//! by round trips: 385 datagrams per node per second in the harness (1–3 ms
//! delays, 20 at idle), 20–50k over loopback, and a merge view every
//! [`Config::view_max_delay`] on the looping node, for ever.
//!
//! # Bounded traffic
//!
//! Whatever the cause, no exchange of datagrams feeds itself any more:
//!
//! - every datagram this crate sends is either driven by a timer (probes,
//!   periodic gossip and announces, seed announces, merge bursts, and
//!   renewals), or is the single answer foca gives to one received
//!   datagram (an ack, a feed, one hop of an indirect probe, a "you are
//!   down"; a suspicion of this node in a received update is refuted with
//!   one gossip to 3 members);
//! - answers are not answered, except by "you are down", and this crate lets
//!   at most one "you are down" go to an address per probe period;
//! - renewals, the only answer that fanned out, happen at once the first
//!   time, then after a gap that doubles from one probe period up to 5 s
//!   (back to immediate after 30 s without one).
//!
//! So every chain of datagrams starts at a timer and is at most four long
//! (the indirect probe), and a node's traffic is bounded by its timers plus
//! one answer per datagram it receives, whatever twins or forgeries do. In
//! the harness no node sent more than 70 datagrams in any second (3.5
//! times the idle rate, as much as an ordinary join) through twins that
//! come and go and forged identities; the tests assert 5 times.
//!
//! Limits: two live processes with the same start stamp at one address
//! (only possible with a configured epoch) keep outranking each other,
//! one renewal per gap at most: bounded, but they never settle. Before
//! datagrams are authenticated, a forged or corrupted datagram naming a
//! newer identity at a node's address makes that node stand down.
//!
//! # Merge rule
//!
//! A view is installed only once the live member set has been stable for
//! [`Config::view_settle`] (about two probe periods; at most
//! [`Config::view_max_delay`] under churn), and each install yields exactly
//! one [`Event`] with a fresh local view id. It is an [`Event::Merge`] when,
//! since the previous install, a member this node had seen go down came back
//! or this node itself was declared down and rejoined (a paused coordinator
//! sees only that, and must reconcile); otherwise an [`Event::View`]. A
//! member never seen before is a join. A renewal that keeps the key changes
//! no view.
//!
//! Limit: two groups that formed without ever having seen each other (seed
//! lists that do not overlap) meet as a join, not a merge.
//!
//! # LAN defaults ([`Config::lan`])
//!
//! Probe every 100 ms (40 ms for the direct ack), suspicion 400 ms, gossip
//! every 50 ms to 3 members, updates retransmitted 12 times (more past 16
//! members: 15 at 64, 21 at 1,000; see [`Config::transmissions_for`]),
//! announce to down members every 500 ms, to seeds every 1 s, views settle
//! for 200 ms.
//! When a merge starts (a down member returns, or this node rejoins), this
//! node also announces to every member it still believes down at once, so
//! the renewal cascade of a heal completes within one settle window.
//!
//! Measured in simulated time with the test harness of `tests/` (1–3 ms
//! one-way delay, no loss), LAN defaults, one seed for every node:
//!
//! | scenario | p50 | max | runs |
//! |---|---|---|---|
//! | 5 nodes started together, to one identical view | 251 ms | 304 ms | 200 |
//! | 50 nodes started together, to one identical view | 303 ms | 388 ms | 30 |
//! | crash of a member to out of every view (5 nodes) | 766 ms | 1.04 s | 100 |
//! | crash of the coordinator to out of every view (5 nodes) | 769 ms | 996 ms | 100 |
//! | crash to out of every view (50 nodes) | 870 ms | 1.16 s | 30 |
//! | heal of 3/2 to one merge view on every node | 490 ms | 791 ms | 100 |
//! | heal of 30/19 to one merge view on every node | 545 ms | 742 ms | 30 |
//!
//! Every node reported exactly one merge per heal in those runs, except
//! one 50-node run where a node that still held a pre-renewal identity of
//! one member declared it down 3 s later and re-merged it (one extra view
//! and merge on that node only). With packet loss, spurious renewals add
//! merges now and then (7 of 200 heals at 1% loss had one extra on one
//! node, measured while foca's "you are down" after a refuted suspicion
//! still went out; it is dropped now, see `drop_refuted_turn_undead`); a
//! spurious merge costs the lock layer one extra reconciliation.
//!
//! A process paused for longer than the suspicion timeout is declared down;
//! when it resumes it rejoins (reported to it as a merge) and every node
//! is back in one view about 200 ms later.
//!
//! [`NodeId`]: swimlock_wire::NodeId

#![warn(missing_docs)]

mod config;
mod identity;
mod terms;
mod timers;
mod tracker;
mod view;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use foca::{Codec, Foca, Header, Message, Notification, OwnedNotification, PostcardCodec, Runtime, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use swimlock_wire::NodeId;

pub use config::{Config, ConfigError, MAX_GOSSIP_PAYLOAD, SMALL_CLUSTER};
pub use identity::MAX_NAME_LEN;
pub use view::{Event, Member, View};

use identity::Ident;
use timers::TimerQueue;
use tracker::ViewTracker;

type Swim = Foca<Ident, PostcardCodec, SmallRng, terms::TermGossip>;

/// Why a datagram was rejected. The datagram had no other effect than what
/// foca could apply before the fault; the caller should drop and count it.
#[derive(Debug)]
#[non_exhaustive]
pub enum MembershipError {
    /// [`Membership::start`] was not called yet, or [`Membership::leave`]
    /// was.
    NotRunning,
    /// foca rejected the payload (malformed, too big, from ourselves, ...).
    Gossip(foca::Error),
    /// The payload's sender (its foca header `src` key) is not the member
    /// that the envelope authenticated: one member speaking for another.
    /// Dropped before foca sees it.
    SenderMismatch {
        /// The authenticated sender.
        from: NodeId,
        /// The sender the payload names.
        claimed: NodeId,
    },
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::NotRunning => f.write_str("membership is not running"),
            MembershipError::Gossip(e) => write!(f, "gossip datagram rejected: {e}"),
            MembershipError::SenderMismatch { from, claimed } => {
                write!(f, "gossip from {from} claims to come from {claimed}")
            }
        }
    }
}

impl std::error::Error for MembershipError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MembershipError::NotRunning | MembershipError::SenderMismatch { .. } => None,
            MembershipError::Gossip(e) => Some(e),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Running,
    Left,
    /// A newer process holds this node's address: silent for good.
    Superseded,
}

/// What foca asks of its runtime, collected for the poll functions.
#[derive(Debug, Default)]
struct Io {
    /// The `now` of the call being handled; foca's relative timers are
    /// anchored on it.
    now: Duration,
    timers: TimerQueue,
    /// Destination key (epoch 0 for a seed placeholder) and payload.
    transmits: VecDeque<(NodeId, Vec<u8>)>,
    notes: Vec<OwnedNotification<Ident>>,
    /// When a "you are down" (foca's `TurnUndead`) last went to each
    /// address; at most one per address per `turn_undead_gap`.
    turn_undead_sent: BTreeMap<SocketAddr, Duration>,
    turn_undead_gap: Duration,
}

impl Io {
    /// Whether a `TurnUndead` to `to` may go now (and records it if so).
    fn turn_undead_allowed(&mut self, to: SocketAddr) -> bool {
        let (now, gap) = (self.now, self.turn_undead_gap);
        if self.turn_undead_sent.get(&to).is_some_and(|&at| now < at + gap) {
            return false;
        }
        self.turn_undead_sent.retain(|_, at| now < *at + gap);
        self.turn_undead_sent.insert(to, now);
        true
    }
}

impl Runtime<Ident> for Io {
    fn notify(&mut self, notification: Notification<'_, Ident>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: Ident, data: &[u8]) {
        // foca answers every datagram from a member it holds down with a
        // TurnUndead, and two nodes that each hold the other down would
        // bounce them at network speed; one per address per gap is enough
        // to tell it (see the crate docs, "Bounded traffic").
        if is_turn_undead(data) && !self.turn_undead_allowed(to.addr) {
            return;
        }
        self.transmits.push_back((to.key(), data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Ident>, after: Duration) {
        self.timers.push(self.now + after, event);
    }
}

/// A one-line account of a gossip payload for traces: sender, its
/// incarnation, the addressee, the message kind and the member updates it carries (state
/// and incarnation). Never fails: what does not decode says so.
pub fn describe_payload(mut data: &[u8]) -> String {
    use bytes::Buf;
    let Ok(header) = PostcardCodec.decode_header(&mut data) else { return "undecodable".to_string() };
    let short = |id: &Ident| format!("{}.{}", id.addr.ip(), id.bump);
    let mut line = format!(
        "{:?} from {}@{} to {}",
        header.message,
        short(&header.src),
        header.src_incarnation,
        short(&header.dst)
    );
    if data.remaining() >= 2 && header.message != Message::Broadcast {
        for _ in 0..data.get_u16() {
            match PostcardCodec.decode_member(&mut data) {
                Ok(m) => line.push_str(&format!(" {}:{:?}@{}", short(m.id()), m.state(), m.incarnation())),
                Err(_) => return line + " (bad update)",
            }
        }
    }
    line
}

/// Whether `data` (a payload foca encoded) is a `TurnUndead`.
fn is_turn_undead(data: &[u8]) -> bool {
    let header: Result<Header<Ident>, _> = PostcardCodec.decode_header(data);
    header.is_ok_and(|h| h.message == Message::TurnUndead)
}

/// When this node renews its identity after foca declared it down.
#[derive(Debug, Default)]
struct Renewal {
    /// foca holds this identity down (`Defunct`) and it has not renewed.
    due: bool,
    /// How many times foca reported this node declared down.
    downs: u64,
    /// Earliest time of the next renewal.
    not_before: Duration,
    /// Wait after the last renewal before the next: one probe period after
    /// the first in a while, doubling with each renewal up to
    /// [`RENEWAL_GAP_MAX`].
    gap: Duration,
    /// When this node last renewed.
    last: Option<Duration>,
    /// After a renewal that followed a "you are down", until a member
    /// speaks to the new identity: when to announce to the members foca
    /// still lists, then when to give up on them.
    rejoining: Option<Duration>,
    /// The announce to the listed members went out.
    reannounced: bool,
}

/// Longest wait between two renewals of a node that keeps being declared
/// down.
const RENEWAL_GAP_MAX: Duration = Duration::from_secs(5);
/// A renewal this long after the previous one is immediate again.
const RENEWAL_QUIET: Duration = Duration::from_secs(30);

/// The membership state machine of one node. See the crate docs for the
/// calling convention. Not thread-safe by design: one task owns it.
pub struct Membership {
    me: NodeId,
    config: Config,
    /// Configured seed addresses, without our own.
    seeds: Vec<SocketAddr>,
    foca: Swim,
    io: Io,
    phase: Phase,
    next_seed_announce: Duration,
    /// Earliest time for the next announce to a member that addressed an
    /// earlier process at this address (see [`Membership::note_stale_caller`]).
    next_caller_announce: Duration,
    /// Earliest time for the next burst of announces to down members.
    next_down_burst: Duration,
    tracker: ViewTracker,
    /// foca reported something since the tracker last looked at its member
    /// list: every change of the live set (up, down, rename) comes with a
    /// notification, so without one there is nothing new to look at (the
    /// look costs a pass over every member, too much per datagram in a
    /// cluster of a thousand).
    members_changed: bool,
    events: VecDeque<Event>,
    renewal: Renewal,
    /// The newest other identity seen in datagram headers at this node's
    /// address (foca keeps those of gossip updates in its member list).
    rival: Option<Ident>,
    /// The newer process that holds this node's address, once seen.
    superseded_by: Option<NodeId>,
    /// The highest coordinator term heard of through gossip (see
    /// [`Membership::gossip_term`]).
    gossiped_term: Arc<AtomicU32>,
    /// foca's `max_transmissions` now: it follows the number of active
    /// members ([`Config::transmissions_for`]).
    transmissions: std::num::NonZeroU8,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.me)
            .field("phase", &self.phase)
            .field("view", self.tracker.installed())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Creates the state machine of node `me`.
    ///
    /// `name` is shown to other members (at most [`MAX_NAME_LEN`] bytes),
    /// and so is `tag`, the node tag its fencing tokens carry
    /// ([`Member::tag`]).
    /// `seeds` are addresses to announce to until they are active members
    /// (our own address is ignored). `rng_seed` fixes every random choice.
    /// Fails on an invalid `config`, a too long `name` or `me.epoch == 0`
    /// (reserved).
    pub fn new(
        me: NodeId,
        name: String,
        tag: u16,
        config: Config,
        seeds: Vec<SocketAddr>,
        rng_seed: u64,
    ) -> Result<Membership, ConfigError> {
        config.validate()?;
        if name.len() > MAX_NAME_LEN {
            return Err(ConfigError::new("name", format!("{} bytes, at most {MAX_NAME_LEN}", name.len())));
        }
        if me.epoch == 0 {
            return Err(ConfigError::new("me.epoch", "0 is reserved for seed placeholders"));
        }
        let mut unique = Vec::with_capacity(seeds.len());
        for seed in seeds {
            if seed != me.addr && !unique.contains(&seed) {
                unique.push(seed);
            }
        }
        let gossiped_term = Arc::new(AtomicU32::new(0));
        let foca = Foca::with_custom_broadcast(
            Ident::new(me, name.clone(), tag),
            config.to_foca(1),
            SmallRng::seed_from_u64(rng_seed),
            PostcardCodec,
            terms::TermGossip::new(gossiped_term.clone()),
        );
        Ok(Membership {
            me,
            seeds: unique,
            foca,
            io: Io { turn_undead_gap: config.probe_period, ..Io::default() },
            phase: Phase::NotStarted,
            next_seed_announce: Duration::ZERO,
            next_caller_announce: Duration::ZERO,
            next_down_burst: Duration::ZERO,
            tracker: ViewTracker::new(me, name, tag),
            members_changed: true,
            events: VecDeque::new(),
            renewal: Renewal::default(),
            rival: None,
            superseded_by: None,
            gossiped_term,
            transmissions: config.transmissions_for(1),
            config,
        })
    }

    /// Begins: installs the first view (this node alone, emitted as an
    /// [`Event::View`]) and announces to every seed. Later calls do nothing.
    pub fn start(&mut self, now: Duration) {
        if self.phase != Phase::NotStarted {
            return;
        }
        let now = self.advance(now);
        self.phase = Phase::Running;
        let first = self.tracker.install_initial();
        self.events.push_back(first);
        self.announce_to_seeds(now);
        self.settle(now);
    }

    /// Handles one gossip datagram (the payload after swimlock's frame
    /// header) that the envelope proved to come from member `from`.
    ///
    /// foca trusts the sender its payload names, so a payload whose header
    /// names another member than `from` (by key: epoch and address) is
    /// refused with [`MembershipError::SenderMismatch`] before foca sees it.
    /// An `Err` means the datagram was dropped; it never panics on any
    /// input.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: NodeId,
        payload: &[u8],
    ) -> Result<(), MembershipError> {
        let now = self.advance(now);
        if self.phase != Phase::Running {
            return Err(MembershipError::NotRunning);
        }
        let header = PostcardCodec
            .decode_header(payload)
            .map_err(|e| MembershipError::Gossip(foca::Error::Decode(Box::new(e))))?;
        let claimed: NodeId = Ident::key(&header.src);
        if claimed != from {
            return Err(MembershipError::SenderMismatch { from, claimed });
        }
        if header.dst == *self.foca.identity() {
            // A member spoke to this identity (renewed or not).
            self.renewal.rejoining = None;
        }
        self.watch_header(header);
        let result = self.foca.handle_data(payload, &mut self.io);
        // foca may have applied part of a payload before failing on the
        // rest, so what it reported is processed either way.
        self.settle(now);
        result.map_err(MembershipError::Gossip)
    }

    /// Runs every timer due at `now`: foca's own (in deadline order), the
    /// seed announce loop and view installation. Safe to call early or
    /// twice.
    pub fn handle_timeout(&mut self, now: Duration) {
        let now = self.advance(now);
        if self.phase != Phase::Running {
            return;
        }
        while let Some(timer) = self.io.timers.pop_due(now) {
            let suspicion = matches!(timer, foca::Timer::ChangeSuspectToDown { .. });
            let queued = self.io.transmits.len();
            // Timer errors are foca noting a probe cycle it already
            // recovered from (or a timer of an identity it left); nothing
            // for the caller to do.
            let _ = self.foca.handle_timer(timer, &mut self.io);
            if suspicion {
                self.drop_refuted_turn_undead(queued);
            }
            self.drain_notes(now);
        }
        if now >= self.next_seed_announce {
            self.announce_to_seeds(now);
        }
        if self.renewal.rejoining.is_some_and(|t| now >= t) {
            self.give_up_rejoining(now);
        }
        self.settle(now);
    }

    /// foca 2.0 sends "you are down" when a suspicion times out even if the
    /// member refuted it in time (`Members::apply_existing_if` reports the
    /// refused update, and foca acts on the report): the member would renew
    /// its identity and every node install a merge view for nothing. Such a
    /// message, queued from `from` on to a member foca still lists as
    /// active, is dropped.
    fn drop_refuted_turn_undead(&mut self, from: usize) {
        let mut i = from;
        while i < self.io.transmits.len() {
            let (to, data) = &self.io.transmits[i];
            if is_turn_undead(data) && self.foca.iter_members().any(|m| m.id().key() == *to) {
                self.io.transmits.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Nobody spoke to this node's renewed identity within a failure
    /// detection. foca restarted its timers with the identity and probes
    /// nobody until a member speaks, and the members may know only the old
    /// identity, so both ends can wait for ever (each renewed, each
    /// listing the other's old identity). First this node announces itself
    /// to every member it lists; if still nobody speaks within another
    /// failure detection, those members (some suspected, with their down
    /// timers gone) are declared down here, as their timers would have.
    fn give_up_rejoining(&mut self, now: Duration) {
        if !self.renewal.reannounced {
            self.renewal.reannounced = true;
            self.renewal.rejoining = Some(now + self.config.suspect_to_down_after + self.config.probe_period);
            let listed: Vec<Ident> = self.foca.iter_members().map(|m| m.id().clone()).collect();
            for id in listed {
                let _ = self.foca.announce(id, &mut self.io);
            }
            return;
        }
        self.renewal.rejoining = None;
        let listed: Vec<foca::Member<Ident>> =
            self.foca.iter_members().map(|m| foca::Member::down(m.id().clone())).collect();
        // Members this node itself declares down: no broadcast needed.
        let _ = self.foca.apply_many(listed.into_iter(), false, &mut self.io);
        self.drain_notes(now);
    }

    /// Changes the node tag this node shows in its identity. The identity
    /// is renewed (a higher bump, same key), so the new tag wins over the
    /// old one everywhere; every other node then installs a plain view that
    /// shows it. This node's own installed view shows it at once and no view
    /// event follows here. A tag equal to the current one changes nothing.
    pub fn set_tag(&mut self, now: Duration, tag: u16) {
        let now = self.advance(now);
        if tag == self.foca.identity().tag {
            return;
        }
        self.tracker.set_my_tag(tag);
        match self.phase {
            Phase::Running => {
                self.renew(now, tag);
                self.settle(now);
            }
            Phase::NotStarted => {
                // Nobody knows this identity yet; a higher bump all the same,
                // so the old one can never outrank it.
                let mine = self.foca.identity().clone();
                let next = Ident { tag, bump: mine.bump + 1, ..mine };
                let _ = self.foca.change_identity(next, &mut self.io);
                self.io.transmits.clear();
            }
            Phase::Left | Phase::Superseded => {}
        }
    }

    /// The node tag this node shows.
    pub fn tag(&self) -> u16 {
        self.foca.identity().tag
    }

    /// Spreads `term` (a coordinator term this node recorded) with the
    /// gossip, if it is higher than any heard of: every member learns it
    /// while it can still talk to this one, even if this one never answers
    /// a round (it may pause or leave first). Four bytes on the gossip; only
    /// the highest term travels.
    pub fn gossip_term(&mut self, term: u32) {
        if term > self.gossiped_term() {
            // Four bytes never exceed the packet size; nothing can fail.
            let _ = self.foca.add_broadcast(&terms::encode(term));
        }
    }

    /// The highest coordinator term heard of through gossip (this node's
    /// own included).
    pub fn gossiped_term(&self) -> u32 {
        self.gossiped_term.load(Ordering::Relaxed)
    }

    /// How many times a member told this node it was declared down (so
    /// that others may be installing views without it). Members running an
    /// older swimlock also say so after a suspicion of this node was
    /// refuted (a foca 2.0 defect this crate now works around), so a live,
    /// connected node may see it too. The count only grows; a driver
    /// compares it with the last value it saw.
    pub fn times_declared_down(&self) -> u64 {
        self.renewal.downs
    }

    /// Whether this node is held down now: declared down and not renewed
    /// yet (renewals back off, see `Renewal`), or renewed and not yet
    /// spoken to (foca restarts its timers with a new identity and probes
    /// nobody meanwhile, so its member list is not news). The first view
    /// after that is a merge.
    pub fn held_down(&self) -> bool {
        self.renewal.due || self.renewal.rejoining.is_some()
    }

    /// Reports that a datagram for `id` reached this node's address: for a
    /// driver that drops datagrams addressed to another identity before
    /// membership sees them (an envelope bound to its destination), which
    /// would hide the newer process from [`Membership::handle_datagram`].
    /// If `id` is at this node's address with a larger start stamp, a newer
    /// process holds or held the address and this node stands down (see
    /// [`Membership::superseded_by`]); otherwise nothing happens.
    pub fn note_claim(&mut self, now: Duration, id: NodeId) {
        self.advance(now);
        if self.phase == Phase::Running && id.addr == self.me.addr && id.epoch > self.me.epoch {
            self.stand_down(id);
        }
    }

    /// Reports that member `from` addressed a datagram to an earlier
    /// process at this node's address (a driver that drops such datagrams
    /// before membership sees them calls this instead). `from` knows this
    /// address but not this process, and may be the only member this node
    /// can reach: a restarted node whose seeds are out of reach would
    /// otherwise never meet it. This node announces to `from` as to a seed,
    /// unless `from` is an active member already; at most once per
    /// [`Config::seed_announce_interval`], whatever the number of callers.
    pub fn note_stale_caller(&mut self, now: Duration, from: NodeId) {
        let now = self.advance(now);
        if self.phase != Phase::Running
            || from.addr == self.me.addr
            || self.renewal.due
            || now < self.next_caller_announce
            || self.foca.iter_members().any(|m| m.id().addr == from.addr)
        {
            return;
        }
        self.next_caller_announce = now + self.config.seed_announce_interval;
        // As for seeds: an encode error leaves nothing to send, and the
        // caller's next datagram retries.
        let _ = self.foca.announce(Ident::placeholder(from.addr), &mut self.io);
        self.drain_notes(now);
        self.settle(now);
    }

    /// The newer process that took this node's address, if one did: this
    /// node then stopped for good (see the crate docs, "One address, two
    /// identities"). The driver should stop the node and say so loudly.
    /// This node's own key when what holds the address is a renewal of it
    /// that it cannot outrank (a forged renewal counter at its maximum).
    pub fn superseded_by(&self) -> Option<NodeId> {
        self.superseded_by
    }

    /// Leaves the cluster gracefully: tells a few members this node is down
    /// (drain [`Membership::poll_transmit`] afterwards) and stops. No event
    /// follows; later input is refused and no timeout is requested.
    pub fn leave(&mut self, now: Duration) {
        self.advance(now);
        if self.phase != Phase::Running {
            self.phase = Phase::Left;
            return;
        }
        // An encode error here leaves nothing to send; the others will
        // then detect the departure by probing.
        let _ = self.foca.leave_cluster(&mut self.io);
        self.io.notes.clear();
        self.io.timers.clear();
        self.phase = Phase::Left;
    }

    /// Next gossip payload to send, with its destination's key: send it to
    /// that key's address. The epoch is 0 for an announce to a seed whose
    /// identity is not known yet (a placeholder). Drain after every
    /// `start`/`handle_*`/`leave` call. Each payload is at most
    /// [`Config::max_packet_size`] bytes.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.io.transmits.pop_front()
    }

    /// Next view change, in the order they were installed. Drain after
    /// every `start`/`handle_*` call.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Membership::handle_timeout`] next: an absolute
    /// deadline on the `now` clock. `None` before `start` and after `leave`.
    /// Re-read it after every call.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.phase != Phase::Running {
            return None;
        }
        let foca = self.io.timers.next_deadline();
        let view = self.tracker.deadline(self.config.view_settle, self.config.view_max_delay);
        let renewal = self.renewal.due.then_some(self.renewal.not_before);
        [foca, view, renewal, self.renewal.rejoining, Some(self.next_seed_announce)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether gossip knows another active member now, installed in a view
    /// or not yet (a join under way).
    pub fn has_peers(&self) -> bool {
        self.foca.iter_members().next().is_some()
    }

    /// Members that some member suspects of having failed (they stay in
    /// the view until declared down or cleared): for display only.
    pub fn suspected(&self) -> Vec<NodeId> {
        let suspect = |m: &&foca::Member<Ident>| m.state() == foca::State::Suspect;
        self.foca.iter_members().filter(suspect).map(|m| m.id().key()).collect()
    }

    /// The view installed last (id 0, this node alone, before `start`).
    pub fn view(&self) -> &View {
        self.tracker.installed()
    }

    /// This node's key.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn advance(&mut self, now: Duration) -> Duration {
        self.io.now = self.io.now.max(now);
        self.io.now
    }

    /// Announces to every seed whose address is not an active member, and
    /// schedules the next round. Not while foca holds this identity down:
    /// the answer would only be "you are down" again.
    fn announce_to_seeds(&mut self, now: Duration) {
        self.next_seed_announce = now + self.config.seed_announce_interval;
        if self.renewal.due {
            return;
        }
        for &seed in &self.seeds {
            let active = self.foca.iter_members().any(|m| m.id().addr == seed);
            if !active {
                // Encoding our own header cannot fail in practice; if it
                // did, the next round retries.
                let _ = self.foca.announce(Ident::placeholder(seed), &mut self.io);
            }
        }
        self.drain_notes(now);
    }

    fn drain_notes(&mut self, now: Duration) {
        let mut merging = false;
        self.members_changed |= !self.io.notes.is_empty();
        for note in std::mem::take(&mut self.io.notes) {
            match note {
                OwnedNotification::Defunct => {
                    // foca learnt this identity is held down; see `renew`.
                    self.renewal.due = true;
                    self.renewal.downs += 1;
                }
                // A member spoke to the renewed identity.
                OwnedNotification::Active => self.renewal.rejoining = None,
                _ => {}
            }
            merging |= self.tracker.on_notification(now, &note);
        }
        if merging {
            self.merge_burst(now);
        }
    }

    /// A merge has started (see `announce_to_down`), at most once per probe
    /// period.
    fn merge_burst(&mut self, now: Duration) {
        if now >= self.next_down_burst {
            self.announce_to_down(now);
        }
    }

    /// Notes every other identity at this node's address that a datagram
    /// names (sender or destination): a newer process there (see
    /// `supersede_if_newer`), or a renewal of ours this node never made
    /// (forged, or a twin with the same start stamp), which the next
    /// renewal must outrank. Undecodable payloads are foca's to reject.
    fn watch_header(&mut self, header: Header<Ident>) {
        let Header { src, dst, .. } = header;
        for id in [src, dst] {
            let mine = self.foca.identity();
            if id.addr == mine.addr
                && id != *mine
                && self.rival.as_ref().is_none_or(|r| foca::Identity::win_addr_conflict(&id, r))
                && (id.epoch, id.bump) > (mine.epoch, mine.bump)
            {
                self.rival = Some(id);
            }
        }
    }

    /// The highest-ranked identity other than ours known at our address:
    /// from foca's member list (foca records them there, held down) and
    /// from datagram headers.
    fn strongest_rival(&self) -> Option<&Ident> {
        let mine = self.foca.identity();
        self.foca
            .iter_membership_state()
            .map(|m| m.id())
            .filter(|id| id.addr == mine.addr && *id != mine)
            .chain(self.rival.as_ref())
            .max_by(|a, b| a.epoch.cmp(&b.epoch).then(a.bump.cmp(&b.bump)))
    }

    /// Stops for good if a newer process (a larger start stamp) holds or
    /// held this node's address: it wins every conflict, so every renewal of
    /// ours would be refused, and fighting it is what made the storm.
    fn supersede_if_newer(&mut self) -> bool {
        let Some(newer) = self.strongest_rival().filter(|r| r.epoch > self.me.epoch).map(Ident::key) else {
            return false;
        };
        self.stand_down(newer);
        true
    }

    /// Stops for good: `by` holds this node's address.
    fn stand_down(&mut self, by: NodeId) {
        self.superseded_by = Some(by);
        self.phase = Phase::Superseded;
        // Whatever this input queued would only contest the winner.
        self.io.transmits.clear();
        self.io.timers.clear();
        self.io.notes.clear();
        self.renewal.due = false;
    }

    /// Renews this node's identity, showing `tag`: a bump above its own and
    /// above every same-epoch identity seen at its address, so it wins every
    /// conflict at once instead of one bump per round trip. The next renewal
    /// waits a gap that doubles (see [`Renewal`]).
    fn renew(&mut self, now: Duration, tag: u16) {
        let mine = self.foca.identity().clone();
        let top =
            self.strongest_rival().filter(|r| r.epoch == mine.epoch).map_or(0, |r| r.bump).max(mine.bump);
        let Some(bump) = top.checked_add(1) else {
            // Cannot outrank it: a forged bump at the very top. Stand down
            // rather than contest it for ever.
            self.stand_down(mine.key());
            return;
        };
        let was_down = std::mem::take(&mut self.renewal.due);
        let r = &mut self.renewal;
        if r.last.is_some_and(|last| now >= last + RENEWAL_QUIET) {
            r.gap = Duration::ZERO;
        }
        r.gap = if r.gap.is_zero() { self.config.probe_period } else { (r.gap * 2).min(RENEWAL_GAP_MAX) };
        r.last = Some(now);
        r.not_before = now + r.gap;
        // An encode error leaves the old identity; the next "you are down"
        // renews again.
        let _ = self.foca.change_identity(Ident { bump, tag, ..mine }, &mut self.io);
        self.members_changed = true;
        if was_down {
            self.renewal.rejoining = Some(now + self.config.suspect_to_down_after + self.config.probe_period);
            self.renewal.reannounced = false;
            // A rejoin: the others will see this node come back.
            self.tracker.on_rejoin(now);
            self.merge_burst(now);
        }
    }

    /// Sets foca's retransmissions for the number of active members now
    /// (updates already queued keep the count they were queued with).
    fn fit_transmissions(&mut self) {
        let want = self.config.transmissions_for(self.foca.num_members() + 1);
        // Only max_transmissions differs, which foca accepts at any time.
        if want != self.transmissions
            && self.foca.set_config(self.config.to_foca(self.foca.num_members() + 1)).is_ok()
        {
            self.transmissions = want;
        }
    }

    /// How many times this node retransmits a membership update now
    /// ([`Config::transmissions_for`] its active members).
    pub fn transmissions(&self) -> std::num::NonZeroU8 {
        self.transmissions
    }

    /// A merge has started: announce to every member still believed down
    /// now instead of waiting for foca's periodic round. Each such announce
    /// makes both ends renew and meet, so the whole heal cascade happens in
    /// a few round trips and lands in one settled (merge) view.
    fn announce_to_down(&mut self, now: Duration) {
        self.next_down_burst = now + self.config.probe_period;
        let down: Vec<Ident> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Down)
            .map(|m| m.id().clone())
            .collect();
        for id in down {
            let _ = self.foca.announce(id, &mut self.io);
        }
    }

    /// Brings the view tracker up to date and installs a due view; renews
    /// this node's identity when that is due, or stops if a newer process
    /// took its address.
    fn settle(&mut self, now: Duration) {
        self.drain_notes(now);
        if self.phase != Phase::Running || self.supersede_if_newer() {
            return;
        }
        if self.renewal.due && now >= self.renewal.not_before {
            let tag = self.foca.identity().tag;
            self.renew(now, tag);
            self.drain_notes(now);
        }
        if std::mem::take(&mut self.members_changed) {
            self.tracker.observe(now, self.foca.iter_members().map(|m| m.id()));
            self.fit_transmissions();
        }
        if let Some(event) = self.tracker.poll(now, self.config.view_settle, self.config.view_max_delay) {
            self.events.push_back(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> NodeId {
        NodeId { epoch: 1, addr: SocketAddr::from(([10, 0, 0, 1], port)) }
    }

    #[test]
    fn start_emits_a_single_member_view_and_announces_to_seeds() {
        let seed = node(2).addr;
        let mut m =
            Membership::new(node(1), "a".into(), 1, Config::lan(), vec![seed, node(1).addr], 7).unwrap();
        assert_eq!(m.poll_timeout(), None);
        m.start(Duration::from_millis(5));
        let Some(Event::View(v)) = m.poll_event() else { panic!("expected a view") };
        assert_eq!(v.id, 1);
        assert_eq!(v.ids().collect::<Vec<_>>(), vec![node(1)]);
        assert_eq!(m.poll_transmit().map(|(to, _)| to), Some(NodeId { epoch: 0, addr: seed }));
        assert_eq!(m.poll_transmit(), None);
        assert_eq!(m.poll_timeout(), Some(Duration::from_millis(1005)));
    }

    #[test]
    fn rejects_bad_arguments_by_field() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let e = Membership::new(node(1), long, 1, Config::lan(), vec![], 1).unwrap_err();
        assert_eq!(e.field, "name");
        let mut zero = node(1);
        zero.epoch = 0;
        let e = Membership::new(zero, "a".into(), 1, Config::lan(), vec![], 1).unwrap_err();
        assert_eq!(e.field, "me.epoch");
    }

    #[test]
    fn a_claim_by_a_newer_process_at_our_address_stops_the_node() {
        let mut m = Membership::new(node(1), "a".into(), 1, Config::lan(), vec![node(2).addr], 1).unwrap();
        m.start(Duration::ZERO);
        while m.poll_transmit().is_some() {}
        let older = NodeId { epoch: 0, ..node(1) };
        m.note_claim(Duration::ZERO, older);
        m.note_claim(Duration::ZERO, NodeId { epoch: 5, ..node(2) });
        assert_eq!((m.superseded_by(), m.poll_timeout().is_some()), (None, true));
        let newer = NodeId { epoch: 5, ..node(1) };
        m.note_claim(Duration::ZERO, newer);
        assert_eq!(m.superseded_by(), Some(newer));
        assert_eq!(m.poll_timeout(), None);
        m.handle_timeout(Duration::from_secs(5));
        assert_eq!(m.poll_transmit(), None, "silent for good");
    }

    /// A member that still addresses an earlier process at this address is
    /// announced to, as a seed would be, once per seed announce interval,
    /// and the member learns this process from it.
    #[test]
    fn a_member_addressing_an_earlier_process_here_is_announced_to() {
        let mut a = Membership::new(node(1), "a".into(), 1, Config::lan(), vec![node(9).addr], 1).unwrap();
        let mut b = Membership::new(node(2), "b".into(), 2, Config::lan(), vec![], 2).unwrap();
        a.start(Duration::ZERO);
        b.start(Duration::ZERO);
        while a.poll_transmit().is_some() {}
        let at = Duration::from_millis(10);
        a.note_stale_caller(at, node(2));
        let (to, announce) = a.poll_transmit().expect("an announce to the caller");
        assert_eq!(to, NodeId { epoch: 0, addr: node(2).addr });
        assert_eq!(a.poll_transmit().map(|(to, _)| to), None);
        a.note_stale_caller(at + Duration::from_millis(500), node(3));
        assert_eq!(a.poll_transmit().map(|(to, _)| to), None, "one announce per interval");
        b.handle_datagram(at, node(1), &announce).unwrap();
        assert!(b.foca.iter_members().any(|m| m.id().key() == node(1)));
        let (to, feed) = b.poll_transmit().expect("an answer");
        assert_eq!(to, node(1));
        a.handle_datagram(at, node(2), &feed).unwrap();
        assert!(a.has_peers());
        while a.poll_transmit().is_some() {}
        a.note_stale_caller(at + Duration::from_secs(2), node(2));
        assert_eq!(a.poll_transmit().map(|(to, _)| to), None, "an active member is not announced to");
    }

    #[test]
    fn gossip_naming_another_sender_than_the_envelope_is_refused() {
        let mut a = Membership::new(node(1), "a".into(), 1, Config::lan(), vec![node(2).addr], 1).unwrap();
        let mut b = Membership::new(node(2), "b".into(), 2, Config::lan(), vec![], 2).unwrap();
        a.start(Duration::ZERO);
        b.start(Duration::ZERO);
        let (to, announce) = a.poll_transmit().expect("announce to the seed");
        assert_eq!(to, NodeId { epoch: 0, addr: node(2).addr });
        for forged in [node(3), NodeId { epoch: 2, ..node(1) }] {
            let e = b.handle_datagram(Duration::from_millis(1), forged, &announce).unwrap_err();
            assert!(
                matches!(e, MembershipError::SenderMismatch { from, claimed } if from == forged && claimed == node(1))
            );
        }
        assert_eq!(b.poll_transmit(), None, "nothing answered");
        b.handle_timeout(Duration::from_secs(1));
        assert!(b.foca.iter_members().next().is_none(), "no member added");
        b.handle_datagram(Duration::from_secs(1), node(1), &announce).unwrap();
        assert_eq!(b.foca.iter_members().count(), 1);
        assert!(matches!(
            b.handle_datagram(Duration::from_secs(1), node(1), b"garbage"),
            Err(MembershipError::Gossip(_))
        ));
    }

    #[test]
    fn input_before_start_is_refused() {
        let mut m = Membership::new(node(1), "a".into(), 1, Config::lan(), vec![], 1).unwrap();
        assert!(matches!(m.handle_datagram(Duration::ZERO, node(2), b"x"), Err(MembershipError::NotRunning)));
    }
}
