//! [`LockNode`]: the client and coordinator roles of one node behind one
//! calling convention.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use swimlock_wire::lock::{CancelReq, LockMsg, LockReq, Redirect, UnlockReq, Wait};
use swimlock_wire::{ClientId, LockName, NodeId, Owner, ReqId, Token};

use crate::client::ClientRole;
use crate::config::{Config, Mode};
use crate::coordinator::{Coordinator, Takeover};
use crate::token::TokenIssuer;
use crate::vouch::{VouchCheck, witnesses};

/// A membership view as the lock machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Changes whenever the member list does (local to the node).
    pub id: u64,
    /// Live members, oldest first; the first is the coordinator.
    pub members: Vec<NodeId>,
    /// True when members that were apart came back together (a merge
    /// view): the coordinator runs a new reconciliation round.
    pub merge: bool,
    /// The highest coordinator term heard of through gossip: a new
    /// coordinator takes a term above it, even if the member that recorded
    /// it never answers the round.
    pub gossiped_term: u32,
}

impl View {
    /// The coordinator of this view: its oldest member.
    pub fn coordinator(&self) -> Option<NodeId> {
        self.members.first().copied()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains(&node)
    }

    /// The digest of the member list (see [`swimlock_wire::view_digest`]),
    /// equal on every node with the same members.
    pub fn digest(&self) -> u64 {
        swimlock_wire::view_digest(&self.members)
    }
}

/// A message for another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The receiving member.
    pub to: NodeId,
    /// The message.
    pub msg: LockMsg,
}

/// What the application learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A `lock` or `try_lock` succeeded.
    Acquired {
        /// The operation, as returned by `lock`/`try_lock`.
        req: ReqId,
        /// The client that asked.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// Its fencing token (unchanged on re-entry).
        token: Token,
        /// How many times the client now holds it.
        holds: u32,
        /// The end of its lease on this node's clock (renewals move it).
        safe_until: Duration,
    },
    /// A `lock` or `try_lock` did not succeed.
    Failed {
        /// The operation.
        req: ReqId,
        /// The client that asked.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// Why.
        reason: Failure,
    },
    /// The highest term this node knows rose to `term`: as coordinator it
    /// is about to grant under it, or as a member it learned it (a round's
    /// LOCK-INFO-REQ, a token). The driver must make the term durable (see
    /// [`LockNode::with_term_floor`]) before it sends the transmits or
    /// delivers the events of the same batch: then a coordinator grants
    /// only under a term every member that answered its round has recorded,
    /// and after a restart no node goes back below it.
    TermStarted {
        /// The highest term this node knows.
        term: u32,
    },
    /// A lock the client held is no longer its own.
    Lost {
        /// The client that held it.
        client: ClientId,
        /// The lock.
        name: LockName,
        /// The token it held.
        token: Token,
        /// Why.
        reason: LossReason,
    },
    /// Something the operator must look at (log it, count it, show it).
    Alert(Alert),
}

/// Notices kept at most; older ones are dropped (a driver that never polls
/// them must not grow without bound).
pub const MAX_NOTICES: usize = 256;

/// Something a coordinator did that an operator wants in the log, one line
/// each. Nothing depends on them, unlike [`Event`]s: drain them with
/// [`LockNode::poll_notice`] or not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A reconciliation round ended: the coordinator serves.
    ReconciliationFinished {
        /// The term it grants under.
        term: u32,
        /// Locks the members reported, installed in the table.
        locks: usize,
        /// Duplicates among them, resolved.
        duplicates: u64,
    },
    /// Two members held one lock: `kept` stays, `lost` is told DUPLICATE-LOCK.
    DuplicateResolved {
        /// The lock.
        name: LockName,
        /// The token kept (the higher).
        kept: Token,
        /// The token taken away.
        lost: Token,
        /// The member of the losing holder.
        loser: NodeId,
    },
    /// A lock whose holder left the view was granted to its next waiter.
    DepartedLockRegranted {
        /// The lock.
        name: LockName,
        /// The member that held it and left.
        departed: NodeId,
        /// The new grant's token.
        token: Token,
        /// The member of the new holder.
        to: NodeId,
    },
}

/// A condition that needs the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alert {
    /// A member reported a term more than [`Config::max_term_step`] above
    /// what this coordinator knew: it grants nothing until the operator
    /// accepts it ([`LockNode::accept_term`]).
    TermJump {
        /// The term reported.
        term: u32,
        /// The highest term the coordinator would have moved to by itself.
        limit: u32,
    },
    /// Terms are used up: tokens cannot grow any more.
    TermsExhausted,
    /// A member's reconciliation answer was over the size limits and was
    /// refused; its locks are unknown to the coordinator.
    ReportTooLarge {
        /// The member.
        member: NodeId,
    },
}

/// Why a lock operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// try_lock: another owner holds the lock.
    Busy,
    /// No grant before the deadline.
    TimedOut,
    /// Mode `majority` and this node's component holds no majority.
    NoQuorum,
}

/// Why a held lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// Held twice after a merge; the other holder had the higher token.
    Duplicate,
    /// Mode `majority`: this node's component lost its majority.
    QuorumLost,
    /// The lease ran out before the coordinator renewed it (this node was
    /// paused, or cut off from the coordinator).
    LeaseExpired,
}

/// Why `unlock` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockError {
    /// The client does not hold the lock.
    NotHeld,
}

/// A lock held by a client of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldInfo {
    /// The client.
    pub client: ClientId,
    /// The lock.
    pub name: LockName,
    /// Its fencing token.
    pub token: Token,
    /// Hold count (re-entry).
    pub holds: u32,
    /// The end of its lease on this node's clock.
    pub safe_until: Duration,
}

/// A request waiting in the coordinator's queue for a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// Who waits.
    pub owner: Owner,
    /// The request.
    pub req: ReqId,
    /// Its place in the queue.
    pub ticket: Token,
}

/// Size of the coordinator's lock table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Locks held.
    pub held: usize,
    /// Requests waiting.
    pub waiters: usize,
    /// DUPLICATE-LOCK messages not yet acknowledged.
    pub unacked_duplicates: usize,
}

/// Monotonic counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent again after no answer.
    pub retransmissions: u64,
    /// Reconciliation rounds started as coordinator.
    pub reconciliations: u64,
    /// Merge views received.
    pub merges: u64,
    /// Duplicate locks resolved as coordinator.
    pub duplicates_resolved: u64,
    /// Grants made as coordinator.
    pub grants: u64,
    /// Lock operations of this node's clients that succeeded.
    pub acquired: u64,
    /// Lock operations that failed because the lock was held (try_lock).
    pub busy: u64,
    /// Lock operations that timed out.
    pub timed_out: u64,
    /// Lock operations refused for lack of quorum.
    pub no_quorum: u64,
    /// Held locks lost.
    pub lost: u64,
    /// Lock messages dropped as stale or not applicable.
    pub dropped: u64,
    /// Grants that arrived after their lease had ended, not applied.
    pub stale_grants: u64,
    /// Reconciliation answers refused as too large.
    pub reports_refused: u64,
    /// Takeovers that granted before the departed coordinator's own lease
    /// would have run out after the view, because its witnesses' records
    /// showed its own leases over earlier (see [`crate::WITNESSES`]).
    pub witnessed_takeovers: u64,
}

/// What the roles produce while handling one input; drained by the
/// `poll_*` methods.
#[derive(Debug)]
pub(crate) struct Outbox {
    me: NodeId,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    notices: VecDeque<Notice>,
    /// Messages to this node itself, delivered before the input returns.
    local: VecDeque<LockMsg>,
    pub stats: Stats,
}

impl Outbox {
    /// Sends `msg` to `to`; a message to this node stays inside.
    pub fn send(&mut self, to: NodeId, msg: LockMsg) {
        if to == self.me {
            self.local.push_back(msg);
        } else {
            self.transmits.push_back(Transmit { to, msg });
        }
    }

    pub fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }

    pub fn notice(&mut self, notice: Notice) {
        if self.notices.len() == MAX_NOTICES {
            self.notices.pop_front();
        }
        self.notices.push_back(notice);
    }
}

/// A member this node saw leave its view.
#[derive(Clone, Debug)]
struct Departure {
    /// When its view dropped the member.
    at: Duration,
    /// If it coordinated that view: what a successor needs to know.
    coordinated: Option<Coordinated>,
}

/// What this node knew of a coordinator that left its view.
#[derive(Clone, Debug)]
struct Coordinated {
    /// Until when, as far as this node knows, its own clients could hold
    /// locks under a previous coordinator's (long) leases (`None`:
    /// unknown). Its own renewals are short.
    linger: Option<Duration>,
    /// The digest of the view it coordinated and the witnesses of that
    /// view (see [`crate::vouch`]).
    view: u64,
    witnesses: Vec<NodeId>,
}

/// The lock protocol of one node: client role for its applications,
/// coordinator role while its view names it coordinator.
///
/// See the [crate documentation](crate) for the calling convention.
#[derive(Debug)]
pub struct LockNode {
    me: NodeId,
    config: Config,
    view: Option<View>,
    client: ClientRole,
    /// Present while this node coordinates (and, in majority mode, its
    /// component holds a majority).
    coord: Option<Coordinator>,
    /// Highest term this node has announced with [`Event::TermStarted`]
    /// (or was started with).
    durable_term: u32,
    /// The highest term the operator accepted past the step limit.
    accepted_term: u32,
    /// Members that left this node's view recently: a successor must not
    /// grant what they may still hold under a lease nobody reports.
    departed: BTreeMap<NodeId, Departure>,
    /// What an earlier coordinator role of this node heard last from each
    /// member (see `Coordinator::last_heard`): a later one still needs it
    /// for members that left.
    heard: BTreeMap<NodeId, Duration>,
    /// The latest `now` seen.
    now: Duration,
    /// The time of the last input, to notice that the node did not run.
    last_input: Option<Duration>,
    /// The last gap in which this node did not run (see
    /// [`LockNode::note_gap`]), and when its view was installed: roles
    /// believed across a gap are not trusted.
    gap_at: Option<Duration>,
    view_at: Duration,
    /// After a gap longer than failure detection (the process was paused or
    /// starved), others may have replaced this node: as coordinator it
    /// grants and renews nothing until membership had time to learn what
    /// happened meanwhile (a view installed at once after the gap is made of
    /// what it knew before).
    stale_until: Option<Duration>,
    /// Whether membership told this node that others declared it down,
    /// and since when.
    held: HeldDown,
    held_at: Duration,
    out: Outbox,
}

/// Where a node stands after membership told it that others declared it
/// down (see [`LockNode::hold_down`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeldDown {
    /// Nobody declared it down since its last view after a renewal.
    No,
    /// Declared down; its identity is not renewed yet.
    Down,
    /// Renewed; waiting for the first view after the renewal.
    Renewed,
}

impl LockNode {
    /// A node with identity `me` that has never coordinated. It does
    /// nothing useful until it gets its first view.
    pub fn new(me: NodeId, config: Config) -> LockNode {
        LockNode::with_term_floor(me, config, 0)
    }

    /// A node that may have coordinated in an earlier life: `term_floor` is
    /// the last term it announced with [`Event::TermStarted`]. Its tokens
    /// will all be above that term, and it reports the term in every
    /// round, so a restarted node never takes any member below a term it
    /// knew before.
    pub fn with_term_floor(me: NodeId, config: Config, term_floor: u32) -> LockNode {
        let mut client = ClientRole::new(me, config.clone());
        client.observe_term(term_floor);
        LockNode {
            me,
            client,
            config,
            view: None,
            coord: None,
            durable_term: term_floor,
            accepted_term: 0,
            departed: BTreeMap::new(),
            heard: BTreeMap::new(),
            now: Duration::ZERO,
            last_input: None,
            gap_at: None,
            view_at: Duration::ZERO,
            stale_until: None,
            held: HeldDown::No,
            held_at: Duration::ZERO,
            out: Outbox {
                me,
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                notices: VecDeque::new(),
                local: VecDeque::new(),
                stats: Stats::default(),
            },
        }
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Takes a new input at `now`: time only moves forward, and locks whose
    /// lease ended are dropped before anything else happens (a node that
    /// was paused must not act on a lock it no longer holds).
    fn begin(&mut self, now: Duration) -> Duration {
        self.now = self.now.max(now);
        let now = self.now;
        // Only a coordinator ticks (see `poll_timeout`), so only its gaps
        // mean it did not run.
        if self.coord.is_some() && self.last_input.is_some_and(|t| now - t >= self.config.detection_min) {
            self.stale_until = Some(now + self.config.detection_min);
        }
        self.last_input = Some(now);
        if self.stale_until.is_some_and(|t| t <= now) {
            self.stale_until = None;
            // Members may have followed another coordinator meanwhile and
            // hold locks its table does not list: a new round, as after a
            // merge, before anything is granted again.
            if self.coord.is_some()
                && self.held == HeldDown::No
                && let Some(view) = self.view.clone()
            {
                self.become_coord(now, &view);
            }
        }
        self.client.expire(now, &mut self.out);
        now
    }

    /// Whether the coordinator role must hold still (see `stale_until`
    /// and [`LockNode::hold_down`]).
    fn stale(&self) -> bool {
        self.stale_until.is_some() || self.held != HeldDown::No
    }

    /// Ends an input: messages to itself delivered, a higher term
    /// announced for the driver to make durable.
    fn end(&mut self) {
        self.route(self.now);
        let known = self.client.max_term().max(self.coord.as_ref().map_or(0, Coordinator::term));
        if known > self.durable_term {
            self.durable_term = known;
            self.out.emit(Event::TermStarted { term: known });
        }
    }

    /// On reception of a view V: follow its coordinator; BecomeCoord if this
    /// node is the new coordinator or V is a merge view; CeaseCoord if it
    /// coordinated and no longer does.
    pub fn handle_view(&mut self, now: Duration, view: View) {
        let now = self.begin(now);
        if view.merge {
            self.out.stats.merges += 1;
        }
        let previous = self.view.as_ref().map(|v| v.members.clone()).unwrap_or_default();
        self.note_departures(now, &previous, &view.members);
        let quorum = self.has_quorum(&view);
        let coordinate = view.coordinator() == Some(self.me) && quorum;
        // The first view after a renewal starts a new round, as a merge does.
        let rejoined = self.held == HeldDown::Renewed;
        if rejoined {
            self.held = HeldDown::No;
        }
        match (&mut self.coord, coordinate) {
            // Held down: no new role and no new round before the renewal.
            (_, true) if self.held == HeldDown::Down => {}
            (Some(coord), true) if !view.merge && !rejoined => {
                coord.on_view(now, &view.members, &mut self.out)
            }
            (_, true) => self.become_coord(now, &view),
            (Some(_), false) => self.cease_coord(),
            (None, false) => {}
        }
        self.client.on_view(now, &view, quorum, &mut self.out);
        self.view = Some(view);
        self.view_at = now;
        self.end();
    }

    /// Remembers who left the view (and who came back), for as long as a
    /// lease of theirs could matter.
    fn note_departures(&mut self, now: Duration, previous: &[NodeId], members: &[NodeId]) {
        // A view installed before this node stopped running may name a
        // coordinator that has long been replaced: it is not trusted to
        // have had only its own short leases.
        let trusted = self.gap_at.is_none_or(|gap| self.view_at > gap);
        for (i, node) in previous.iter().enumerate() {
            if !members.contains(node) && *node != self.me {
                let coordinated = (i == 0 && trusted).then(|| Coordinated {
                    linger: self.client.linger_of(*node),
                    view: swimlock_wire::view_digest(previous),
                    witnesses: witnesses(previous).to_vec(),
                });
                self.departed.insert(*node, Departure { at: now, coordinated });
            }
        }
        let keep = self.config.longest_unseen_hold();
        self.departed.retain(|node, d| !members.contains(node) && d.at + keep > now);
    }

    fn has_quorum(&self, view: &View) -> bool {
        match self.config.mode {
            Mode::Available => true,
            Mode::Majority { members } => view.members.len() > members.get() / 2,
        }
    }

    /// BecomeCoord: a fresh coordinator under a term above every term this
    /// node knows; its reconciliation round starts now. Fresh grants wait
    /// for the leases that members which left recently may still hold: the
    /// lock-delay after each departure (a whole lease: the departed may have
    /// been renewed just before the view without it), the own lease after a
    /// departed coordinator's (it renewed its own clients up to its last
    /// moment, or until it was told it was declared down), unless its
    /// witnesses' records show its own leases ended earlier (see
    /// [`crate::vouch`]).
    fn become_coord(&mut self, now: Duration, view: &View) {
        self.cease_coord();
        let own = self.config.stretched(self.config.own_lease);
        let lease = self.config.stretched(self.config.lease);
        let mut vouch = None;
        let fresh_after = self
            .departed
            .iter()
            .map(|(node, d)| {
                let after = match &d.coordinated {
                    Some(Coordinated { linger: Some(linger), view, witnesses }) => {
                        let mine = witnesses.contains(&self.me).then(|| self.client.vouch_seen(*node, *view));
                        // One check per round: another departed coordinator
                        // (rare) waits as before.
                        if d.at + own > now && !witnesses.is_empty() && mine != Some(None) && vouch.is_none()
                        {
                            vouch = Some(VouchCheck {
                                coordinator: *node,
                                view: *view,
                                others: witnesses.iter().copied().filter(|w| *w != self.me).collect(),
                                mine: mine.flatten(),
                                fallback: d.at + own,
                            });
                            *linger
                        } else {
                            (d.at + own).max(*linger)
                        }
                    }
                    Some(Coordinated { linger: None, .. }) | None => d.at + self.config.lock_delay,
                };
                // A renewal this node saw as coordinator bounds it too.
                self.heard.get(node).map_or(after, |t| after.max(*t + lease))
            })
            .filter(|t| *t > now)
            .max();
        // Leases of this node's clients that another coordinator renewed.
        let linger_until =
            self.client.longest_lease().filter(|t| *t > now + self.config.own_lease).unwrap_or(now);
        self.heard.retain(|node, _| view.members.contains(node));
        let last_heard = std::mem::take(&mut self.heard);
        let takeover =
            Takeover { fresh_after, accepted_term: self.accepted_term, linger_until, last_heard, vouch };
        let mine = self.client.max_term().max(self.durable_term);
        let limit = mine.saturating_add(self.config.max_term_step).max(self.accepted_term);
        let gossiped = if view.gossiped_term > limit {
            // Not taken silently: the round will halt on it if a member
            // reports it too (see `Alert::TermJump`).
            self.out.emit(Event::Alert(Alert::TermJump { term: view.gossiped_term, limit }));
            0
        } else {
            view.gossiped_term
        };
        let term = TokenIssuer::next_term(mine.max(gossiped));
        let coord =
            Coordinator::become_coord(now, &view.members, term, takeover, &self.config, &mut self.out);
        self.coord = Some(coord);
    }

    /// CeaseCoord: drop the lock table and the request queue. The terms it
    /// granted under stay known to this node's client role, which reports
    /// them in later rounds.
    fn cease_coord(&mut self) {
        if let Some(mut coord) = self.coord.take() {
            self.client.observe_term(coord.term());
            self.heard = coord.take_last_heard();
        }
    }

    /// A lock message from member `from`.
    pub fn handle_message(&mut self, now: Duration, from: NodeId, msg: LockMsg) {
        let now = self.begin(now);
        self.dispatch(now, from, msg);
        self.end();
    }

    fn dispatch(&mut self, now: Duration, from: NodeId, msg: LockMsg) {
        if self.stale() && self.coord.is_some() && is_for_coordinator(&msg) {
            // Not knowing yet whether it still coordinates: the sender
            // repeats it.
            self.out.stats.dropped += 1;
            return;
        }
        let out = &mut self.out;
        match (msg, &mut self.coord) {
            (LockMsg::Lock(req), Some(c)) => c.handle_lock(now, from, req, out),
            (LockMsg::Unlock(req), Some(c)) => c.handle_unlock(now, from, req, out),
            (LockMsg::Cancel(req), Some(c)) => c.handle_cancel(now, from, req, out),
            (LockMsg::LockInfoRsp(rsp), Some(c)) => c.on_lock_info_rsp(now, from, rsp, out),
            (LockMsg::DuplicateAck(dup), Some(c)) => c.on_duplicate_ack(now, from, dup, out),
            (LockMsg::Hello(hello), Some(c)) => c.handle_hello(now, from, hello, out),
            (LockMsg::Renew(renew), Some(c)) => c.handle_renew(now, from, renew, out),
            // Own leases run on only while this node coordinates and is
            // not holding still (checked above).
            (LockMsg::Vouched(_), None) => out.stats.dropped += 1,
            (
                LockMsg::Lock(LockReq { id, .. })
                | LockMsg::Unlock(UnlockReq { id, .. })
                | LockMsg::Cancel(CancelReq { id, .. }),
                None,
            ) => self.redirect(from, id),
            (
                LockMsg::LockInfoRsp(_) | LockMsg::DuplicateAck(_) | LockMsg::Hello(_) | LockMsg::Renew(_),
                None,
            ) => out.stats.dropped += 1,
            (LockMsg::LockInfoReq(req), _) => {
                let unreported = self.unreported_until(now);
                self.client.on_lock_info_req(now, from, req, unreported, &mut self.out)
            }
            (msg, _) => self.client.on_message(now, from, msg, out),
        }
    }

    /// Until when members this node served as coordinator, and no longer
    /// in its view, may hold locks it granted: a coordinator that takes
    /// over from this node's group without having seen them leave learns
    /// it from this node's answer (see `LockInfoRsp::unreported_ms`).
    fn unreported_until(&self, now: Duration) -> Option<Duration> {
        let view = self.view.as_ref()?;
        let lease = self.config.stretched(self.config.lease);
        self.heard
            .iter()
            .filter(|(node, _)| !view.contains(**node))
            .map(|(node, heard)| {
                let left = self.departed.get(node).map_or(now, |d| d.at + self.config.lock_delay);
                (*heard + lease).max(left)
            })
            .filter(|t| *t > now)
            .max()
    }

    /// A request reached this node, which does not coordinate: name the
    /// coordinator of its view instead of dropping it silently.
    fn redirect(&mut self, from: NodeId, id: ReqId) {
        let coordinator = self.view.as_ref().and_then(View::coordinator).filter(|c| *c != self.me);
        if coordinator.is_none() && self.view.as_ref().is_some_and(|v| v.coordinator() == Some(self.me)) {
            // This node is the coordinator but has no quorum: the request
            // cannot be served anywhere in this component.
            self.out.stats.dropped += 1;
            return;
        }
        self.out.send(from, LockMsg::Redirect(Redirect { id, coordinator }));
    }

    /// Delivers the messages this node sent itself, until none are left.
    fn route(&mut self, now: Duration) {
        while let Some(msg) = self.out.local.pop_front() {
            self.dispatch(now, self.me, msg);
        }
    }

    /// Timers: retransmissions, renewals, leases, deadlines, the end of a
    /// reconciliation round.
    pub fn handle_timeout(&mut self, now: Duration) {
        let now = self.begin(now);
        if !self.stale()
            && let Some(c) = &mut self.coord
        {
            c.handle_timeout(now, &mut self.out);
        }
        self.client.handle_timeout(now, &mut self.out);
        self.end();
    }

    /// The driver saw that this node did not run for longer than failure
    /// detection before `now` (its process was paused or starved): others
    /// may have replaced it or moved on. As coordinator it holds still and
    /// then starts a new round (see `stale_until`); whatever it believed
    /// about who coordinated is not trusted.
    pub fn note_gap(&mut self, now: Duration) {
        self.gap_at = Some(now);
        if self.coord.is_some() && self.stale_until.is_none() {
            self.stale_until = Some(now + self.config.detection_min);
        }
    }

    /// Membership learnt that other members declared this node down: they
    /// may be installing views without it and following another
    /// coordinator, while its own view still lists them. As coordinator it
    /// holds still: it grants and renews nothing, so its own clients'
    /// leases (shorter than failure detection) end before another
    /// coordinator can grant their locks. It stays so until the first view
    /// after membership renewed its identity (see [`LockNode::renewed`]),
    /// which starts a new round.
    pub fn hold_down(&mut self, now: Duration) {
        let now = self.begin(now);
        self.held = HeldDown::Down;
        self.held_at = now;
        self.end();
    }

    /// Membership renewed this node's identity after it was declared down
    /// and a member has spoken to it since (see [`LockNode::hold_down`]).
    /// The next view ends the hold; if membership already installed one
    /// meanwhile (the merge view of the renewal), the hold ends now, with a
    /// new round on that view.
    pub fn renewed(&mut self, now: Duration) {
        if self.held != HeldDown::Down {
            return;
        }
        let now = self.begin(now);
        self.held = HeldDown::Renewed;
        if self.view_at > self.held_at
            && let Some(view) = self.view.clone()
        {
            self.held = HeldDown::No;
            if view.coordinator() == Some(self.me) && self.has_quorum(&view) {
                self.become_coord(now, &view);
            }
        }
        self.end();
    }

    /// Changes the lock-delay at run time (a configuration reload). Refused,
    /// with nothing changed, when the new value breaks the inequality that
    /// [`Config::validate`] checks; a lock already held back keeps the
    /// release time it was given.
    pub fn set_lock_delay(&mut self, lock_delay: Duration) -> Result<(), crate::ConfigError> {
        let mut config = self.config.clone();
        config.lock_delay = lock_delay;
        config.validate()?;
        self.config = config;
        if let Some(coord) = &mut self.coord {
            coord.set_lock_delay(lock_delay);
        }
        Ok(())
    }

    /// The operator accepts terms up to `term` (see [`Alert::TermJump`]):
    /// a coordinator halted on such a term starts a round above it.
    pub fn accept_term(&mut self, now: Duration, term: u32) {
        let now = self.begin(now);
        self.accepted_term = self.accepted_term.max(term);
        if let Some(c) = &mut self.coord {
            c.accept_term(now, term, &mut self.out);
        }
        self.end();
    }

    /// Sets this node's token tag (unique in the cluster); a coordinator
    /// uses it from its next round.
    pub fn set_tag(&mut self, tag: u16) {
        self.config.tag = tag;
    }

    /// `lock(name, timeout)`: wait up to `timeout` for the lock, behind
    /// earlier waiters. The outcome arrives as [`Event::Acquired`] or
    /// [`Event::Failed`] with the returned id.
    pub fn lock(&mut self, now: Duration, client: ClientId, name: LockName, timeout: Duration) -> ReqId {
        let now = self.begin(now);
        let req = self.client.lock(now, client, name, Wait::Queue, now + timeout, &mut self.out);
        self.end();
        req
    }

    /// `try_lock(name)`: the lock now, or [`Failure::Busy`].
    pub fn try_lock(&mut self, now: Duration, client: ClientId, name: LockName) -> ReqId {
        let now = self.begin(now);
        let deadline = now + self.config.try_lock_timeout;
        let req = self.client.lock(now, client, name, Wait::No, deadline, &mut self.out);
        self.end();
        req
    }

    /// `unlock(name)`: drops one hold; the last one releases the lock at the
    /// coordinator, retransmitted until confirmed. Does not wait.
    pub fn unlock(&mut self, now: Duration, client: ClientId, name: &LockName) -> Result<(), UnlockError> {
        let now = self.begin(now);
        let result = self.client.unlock(now, client, name, &mut self.out);
        self.end();
        result
    }

    /// The client went away (its connection closed): release its locks and
    /// withdraw its requests.
    pub fn release_client(&mut self, now: Duration, client: ClientId) {
        let now = self.begin(now);
        self.client.release_client(now, client, &mut self.out);
        self.end();
    }

    /// The next message to send. Call until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// The next event for the application. Call until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// The next [`Notice`] for the log, if any (optional to drain).
    #[must_use]
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.out.notices.pop_front()
    }

    /// When [`LockNode::handle_timeout`] should be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        let coord = match (self.stale_until, self.held) {
            (Some(until), _) => Some(until),
            // Held down: the coordinator's timers wait for the next view.
            (None, HeldDown::Down | HeldDown::Renewed) => None,
            (None, HeldDown::No) => self.coord.as_ref().and_then(|c| c.poll_timeout(self.now)),
        };
        // A coordinator runs at least this often, so a longer gap between
        // inputs means the process did not run (see `stale_until`).
        let tick = self.coord.as_ref().and(self.last_input).map(|t| t + self.config.detection_min / 2);
        coord.into_iter().chain(tick).chain(self.client.poll_timeout()).min()
    }

    /// The current view.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// The coordinator of the current view.
    pub fn coordinator(&self) -> Option<NodeId> {
        self.view.as_ref().and_then(View::coordinator)
    }

    /// Whether this node coordinates, has finished reconciliation and is
    /// not holding still (after a gap, or declared down).
    pub fn is_serving(&self) -> bool {
        !self.stale() && self.coord.as_ref().is_some_and(Coordinator::is_serving)
    }

    /// Whether this node coordinates (reconciling or serving).
    pub fn is_coordinator(&self) -> bool {
        self.coord.is_some()
    }

    /// The coordinator's current round term, if this node coordinates.
    pub fn round_term(&self) -> Option<u32> {
        self.coord.as_ref().map(Coordinator::term)
    }

    /// The term that halted this coordinator (see [`Alert::TermJump`]).
    pub fn halted(&self) -> Option<u32> {
        self.coord.as_ref().and_then(Coordinator::halted)
    }

    /// Every queue of the coordinator's table: name, then the waiters in
    /// the order they will be granted (owner, request, ticket).
    pub fn queues(&self) -> Vec<(LockName, Vec<Waiting>)> {
        self.coord.as_ref().map(Coordinator::queues).unwrap_or_default()
    }

    /// Names this coordinator leaves free at `now` although requests wait
    /// for them and neither a lock-delay nor an unresolved duplicate holds
    /// them back. While grants are open this is always empty: an unlock
    /// hands the lock to the next waiter.
    pub fn stalled(&self, now: Duration) -> Vec<LockName> {
        self.coord.as_ref().map(|c| c.stalled(now)).unwrap_or_default()
    }

    /// Whether this node, as coordinator, may make new grants at `now`
    /// (serving, no grace, no hold, not just back from a gap).
    pub fn grants_open(&self, now: Duration) -> bool {
        !self.stale() && self.coord.as_ref().is_some_and(|c| c.grants_open(now))
    }

    /// The highest term this node has announced as durable.
    pub fn durable_term(&self) -> u32 {
        self.durable_term
    }

    /// Members whose reconciliation answer this coordinator still lacks.
    pub fn awaiting(&self) -> Vec<NodeId> {
        self.coord.as_ref().map(|c| c.awaiting().collect()).unwrap_or_default()
    }

    /// Locks held by this node's clients.
    pub fn held(&self) -> Vec<HeldInfo> {
        self.client.held().collect()
    }

    /// How many times `client` holds `name` (0: not at all), without
    /// listing every lock as [`LockNode::held`] does.
    pub fn holds(&self, client: ClientId, name: &LockName) -> u32 {
        self.client.holds(client, name)
    }

    /// Until when `client` may use its hold of `name` (the end of its
    /// lease, on this node's clock), or `None` if it does not hold it.
    pub fn safe_until(&self, client: ClientId, name: &LockName) -> Option<Duration> {
        self.client.safe_until(client, name)
    }

    /// Lock requests of this node's clients in flight to the coordinator:
    /// the request id it knows them by, the client, the name.
    pub fn pending_locks(&self) -> Vec<(ReqId, ClientId, LockName)> {
        self.client.pending_locks().map(|(id, client, name)| (id, client, name.clone())).collect()
    }

    /// Try-lock requests of this node's clients in flight to the
    /// coordinator, by the id it knows them by.
    pub fn pending_try_locks(&self) -> Vec<ReqId> {
        self.client.pending_try_locks().collect()
    }

    /// Unlocks and cancels of this node's clients in flight to the
    /// coordinator.
    pub fn pending_releases(&self) -> usize {
        self.client.pending_releases()
    }

    /// Whether this node, as a serving coordinator, has lock request `req`
    /// of `owner` for `name` as the holder or in the queue.
    pub fn knows_request(&self, owner: Owner, name: &LockName, req: ReqId) -> bool {
        self.coord.as_ref().is_some_and(|c| c.knows_request(owner, name, req))
    }

    /// How many locks this node's clients hold (without listing them).
    pub fn held_count(&self) -> usize {
        self.client.held_count()
    }

    /// Whether the coordinator of this node's view has confirmed that it
    /// knows this node's locks.
    pub fn synced(&self) -> bool {
        self.client.synced()
    }

    /// Operations of this node's clients not yet finished.
    pub fn pending_ops(&self) -> usize {
        self.client.pending()
    }

    /// The coordinator's table: every held lock with holder and token.
    pub fn table(&self) -> Vec<(LockName, Owner, Token)> {
        self.coord.as_ref().map(Coordinator::holders).unwrap_or_default()
    }

    /// Size of the lock table, if this node coordinates.
    pub fn table_stats(&self) -> Option<TableStats> {
        self.coord.as_ref().map(Coordinator::table_stats)
    }

    /// Counters since the node started.
    pub fn stats(&self) -> Stats {
        self.out.stats
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Whether `msg` is for the coordinator role.
fn is_for_coordinator(msg: &LockMsg) -> bool {
    matches!(
        msg,
        LockMsg::Lock(_)
            | LockMsg::Unlock(_)
            | LockMsg::Cancel(_)
            | LockMsg::LockInfoRsp(_)
            | LockMsg::DuplicateAck(_)
            | LockMsg::Hello(_)
            | LockMsg::Renew(_)
            | LockMsg::Vouched(_)
    )
}
