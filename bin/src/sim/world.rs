//! One simulated run: hosts running the lock state machine on a simulated
//! network, a random client workload, faults, and the invariant checks
//! after every step.
//!
//! A run has three phases. *Faults*: partitions, heals, crashes, restarts,
//! loss, duplication and reordering, while clients lock and unlock.
//! *Settle*: the network heals and everything restarts; the cluster must
//! converge to one view, one coordinator and one holder per lock.
//! *Drain*: every client goes away; every lock must be released and every
//! request answered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swimlock_lock::{Config, Event, LockMsg, LockNode, Mode, View};
use swimlock_wire::{ClientId, LockName, NodeId, Owner};

use crate::node::{Node, NodeConfig, NodeEvent};

use super::check::{Checker, Violation, check_exclusive, check_settled_component};
use super::ledger::{Ledger, Network};
use super::net::{Faults, Partition, Queue, delivery_times};

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The seed: it decides everything else that is random.
    pub seed: u64,
    /// Number of hosts.
    pub nodes: usize,
    /// Clients per host.
    pub clients: u64,
    /// Number of distinct lock names (few names, much contention).
    pub names: usize,
    /// Length of the fault phase.
    pub fault_phase: Duration,
    /// Available or majority mode.
    pub mode: Mode,
    /// Record a readable trace.
    pub trace: bool,
    /// Real membership: every host runs the node core (SWIM gossip over the
    /// simulated network) instead of getting views from the scenario.
    pub gossip: bool,
    /// One lock request in eight waits 60 s instead of at most 1.5 s, so
    /// that requests made during the faults are still waiting when the
    /// cluster has converged, and the check that the coordinator knows
    /// every waiting request has something to check.
    pub long_waits: bool,
}

impl RunConfig {
    /// Defaults for `seed`.
    pub fn new(seed: u64, nodes: usize) -> RunConfig {
        RunConfig {
            seed,
            nodes,
            clients: 3,
            names: 3,
            fault_phase: Duration::from_secs(15),
            mode: Mode::Available,
            trace: false,
            long_waits: false,
            gossip: false,
        }
    }
}

/// What a run did, counted (and, in [`super::Summary`], summed over runs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Events processed.
    pub steps: u64,
    /// Fresh grants received by clients.
    pub grants: u64,
    /// Times a node took over as coordinator after the first.
    pub failovers: u64,
    /// Takeovers that granted early on the departed coordinator's
    /// witnesses' records.
    pub witnessed: u64,
    /// Merge views delivered.
    pub merges: u64,
    /// Duplicates resolved by coordinators.
    pub duplicates: u64,
    /// Hosts paused (stopped, then resumed with their input queued).
    pub pauses: u64,
    /// Hosts restarted.
    pub restarts: u64,
    /// Crashes whose views came sooner than detection (scripted views).
    pub sudden: u64,
    /// Hosts that formed a group alone after the join timeout.
    pub alone: u64,
    /// Hosts restarted at once at their address (a new identity while the
    /// old one is still a member).
    pub bounces: u64,
    /// Runs in which two hosts started with one node tag.
    pub twin_tags: u64,
    /// Times a host learnt that another declared it down (and held still).
    pub declared_down: u64,
    /// Two holders of one lock on two sides of a partition (allowed in
    /// `available` mode only).
    pub split_holds: u64,
}

impl Counts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Counts) {
        self.steps += other.steps;
        self.grants += other.grants;
        self.failovers += other.failovers;
        self.witnessed += other.witnessed;
        self.merges += other.merges;
        self.duplicates += other.duplicates;
        self.pauses += other.pauses;
        self.restarts += other.restarts;
        self.sudden += other.sudden;
        self.alone += other.alone;
        self.bounces += other.bounces;
        self.twin_tags += other.twin_tags;
        self.declared_down += other.declared_down;
        self.split_holds += other.split_holds;
    }
}

/// What one run did and found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// What it did.
    pub counts: Counts,
    /// The first broken invariant, with the time it was seen.
    pub violation: Option<(Duration, Violation)>,
    /// Hash of the whole schedule: one seed, one hash.
    pub trace_hash: u64,
    /// The readable trace, if asked for.
    pub trace: Vec<String>,
}

const SETTLE: Duration = Duration::from_secs(8);
const DRAIN: Duration = Duration::from_secs(6);
/// The wait of a long lock request (see [`RunConfig::long_waits`]).
const LONG_WAIT: Duration = Duration::from_secs(60);
/// A run takes about 10,000 steps per simulated second; far more means
/// something loops without time passing.
const MAX_STEPS: u64 = 2_000_000;
/// Longest time from a topology change to a host's new view.
const MAX_DETECT_MS: u64 = 1_200;
/// Shortest time from a topology change to a host's new view: SWIM needs
/// the suspicion timeout plus the view settle time (`Config::detection_min`
/// of the lock machine relies on it).
const MIN_DETECT_MS: u64 = 600;
/// How long after a pause a scripted node installs the current view (an
/// agent's view settle time).
const RESUME_VIEW_DELAY: Duration = Duration::from_millis(200);
/// The generation of that view: current whatever changed meanwhile (the
/// view is computed when it is installed).
const AFTER_PAUSE: u64 = u64::MAX;
/// Longest pause of a host (SIGSTOP to SIGCONT).
const MAX_PAUSE_MS: u64 = 5_000;

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        host: usize,
        from: NodeId,
        to: NodeId,
        msg: LockMsg,
    },
    Datagram {
        host: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Timer {
        host: usize,
    },
    /// A host (re)started: deliver what its start produced, arm its timer.
    Boot {
        host: usize,
    },
    /// Installs the host's view as the topology is now, unless the
    /// topology changed since it was scheduled (`generation`).
    InstallView {
        host: usize,
        generation: u64,
    },
    Workload {
        host: usize,
    },
    /// A paused host continues: its queued input is handled at once.
    Resume {
        host: usize,
    },
    /// A host restarted alone reaches the others again.
    Reconnect {
        host: usize,
    },
    Fault,
    Settle,
    Drain,
    End,
}

/// What runs on a host: the lock machine alone with views from the
/// scenario, or the whole node core with real membership.
#[derive(Debug)]
enum Engine {
    Scripted(Box<LockNode>),
    Gossip(Box<Node>),
}

impl Engine {
    fn lock(&self) -> &LockNode {
        match self {
            Engine::Scripted(n) => n,
            Engine::Gossip(n) => n.lock_node(),
        }
    }

    fn handle_timeout(&mut self, now: Duration) {
        match self {
            Engine::Scripted(n) => n.handle_timeout(now),
            Engine::Gossip(n) => n.handle_timeout(now),
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        match self {
            Engine::Scripted(n) => n.poll_timeout(),
            Engine::Gossip(n) => n.poll_timeout(),
        }
    }

    fn lock_op(&mut self, now: Duration, client: ClientId, name: LockName, timeout: Option<Duration>) {
        match (self, timeout) {
            (Engine::Scripted(n), Some(t)) => drop(n.lock(now, client, name, t)),
            (Engine::Scripted(n), None) => drop(n.try_lock(now, client, name)),
            (Engine::Gossip(n), Some(t)) => drop(n.lock(now, client, name, t)),
            (Engine::Gossip(n), None) => drop(n.try_lock(now, client, name)),
        }
    }

    fn unlock(&mut self, now: Duration, client: ClientId, name: &LockName) {
        let _ = match self {
            Engine::Scripted(n) => n.unlock(now, client, name),
            Engine::Gossip(n) => n.unlock(now, client, name),
        };
    }

    fn release_client(&mut self, now: Duration, client: ClientId) {
        match self {
            Engine::Scripted(n) => n.release_client(now, client),
            Engine::Gossip(n) => n.release_client(now, client),
        }
    }
}

#[derive(Debug)]
struct Host {
    node: Option<Engine>,
    id: NodeId,
    armed: Option<Duration>,
    last_members: Vec<NodeId>,
    last_view_at: Duration,
    view_id: u64,
    /// Another host dropped this one from its view: its next view is a
    /// merge, as SWIM tells a member that was declared down.
    dropped_by_others: bool,
    started_at: Duration,
    was_coordinator: bool,
    /// The host's durable state: the last term announced by
    /// `Event::TermStarted`, which survives a crash.
    persisted_term: u32,
    /// The node tag it changed to, kept like the agent's state directory.
    persisted_tag: Option<u16>,
    /// While paused: the input that reached the host, handled when it
    /// resumes (its clock then jumps).
    paused: Option<Vec<Ev>>,
    /// The last pause: from, until.
    last_pause: Option<(Duration, Duration)>,
    /// A group of its own (after the join timeout, or a view of itself
    /// alone after one with others): since, until.
    alone: Option<(Duration, Option<Duration>)>,
    /// The hosts of its last view, and when its view last dropped each
    /// other host.
    view_hosts: Vec<usize>,
    dropped_at: BTreeMap<usize, Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Settle,
    Drain,
}

/// The simulated world of one run.
pub struct World {
    cfg: RunConfig,
    rng: SmallRng,
    now: Duration,
    queue: Queue<Ev>,
    hosts: Vec<Host>,
    partition: Partition,
    faults: Faults,
    phase: Phase,
    checker: Checker,
    ledger: Ledger,
    /// Every partition in force and since when, for the ledger.
    partitions: Vec<(Duration, Partition)>,
    /// Counts topology changes: a view scheduled before the latest one is
    /// dropped, so no view shows a change sooner than detection allows.
    generation: u64,
    /// When the network last lost a message between two hosts (lower
    /// host first).
    lost: BTreeMap<(usize, usize), Duration>,
    /// Clients that let go of locks in the step being handled (`None`:
    /// all of the client's locks).
    let_go: Vec<(usize, ClientId, Option<LockName>)>,
    /// Hosts 0 and 1 start with one node tag (real membership only: its
    /// view path makes the younger take another).
    twin_tags: bool,
    names: Vec<LockName>,
    outcome: Outcome,
    takeovers: u64,
}

fn addr(host: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + host as u8)), 7946)
}

impl World {
    /// A world for `cfg`, with every host started.
    pub fn new(cfg: RunConfig) -> World {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let faults = Faults::draw(&mut rng);
        let twin_tags = cfg.gossip && cfg.nodes > 1 && rng.random_bool(0.25);
        let names = (0..cfg.names).map(|i| LockName::new(format!("lock-{i}")).expect("short name")).collect();
        let mut world = World {
            hosts: Vec::new(),
            partition: Partition::healed(cfg.nodes),
            queue: Queue::default(),
            now: Duration::ZERO,
            phase: Phase::Faults,
            checker: Checker::default(),
            ledger: Ledger::default(),
            partitions: vec![(Duration::ZERO, Partition::healed(cfg.nodes))],
            generation: 0,
            lost: BTreeMap::new(),
            twin_tags,
            let_go: Vec::new(),
            outcome: Outcome { seed: cfg.seed, ..Outcome::default() },
            takeovers: 0,
            faults,
            names,
            rng,
            cfg,
        };
        for host in 0..world.cfg.nodes {
            let h = world.fresh_host(host);
            world.hosts.push(h);
            world.queue.push(world.now, Ev::Boot { host });
            world.schedule_view(host);
            let next = world.now + world.workload_gap();
            world.queue.push(next, Ev::Workload { host });
        }
        let first_fault = world.now + world.fault_gap();
        world.queue.push(first_fault, Ev::Fault);
        world.queue.push(world.cfg.fault_phase, Ev::Settle);
        world
    }

    fn lock_config(&self, host: usize) -> Config {
        let tag = if self.twin_tags && host == 1 { 1 } else { host as u16 + 1 };
        let mut config = Config::lan(tag);
        config.mode = self.cfg.mode;
        if let Mode::Majority { .. } = self.cfg.mode {
            // A minority side learns it lost its majority within the
            // detection bound; the majority side waits longer than that
            // before granting a departed holder's locks.
            config.lock_delay = crate::agent::MAJORITY_LOCK_DELAY;
        }
        config
    }

    fn fresh_host(&mut self, host: usize) -> Host {
        let id = NodeId { epoch: self.now.as_micros() as u64 + 1, addr: addr(host) };
        let persisted_term = self.hosts.get(host).map_or(0, |h| h.persisted_term);
        let persisted_tag = self.hosts.get(host).and_then(|h| h.persisted_tag);
        let mut lock = self.lock_config(host);
        lock.tag = persisted_tag.unwrap_or(lock.tag);
        let engine = if self.cfg.gossip {
            let rng_seed = self.rng.random();
            let config = NodeConfig {
                name: format!("h{host}"),
                cluster: "sim".to_string(),
                // Every host knows the first host as its seed; a host that
                // restarts while it is down finds the others through them.
                seeds: (0..self.cfg.nodes).filter(|&o| o != host).map(addr).collect(),
                lock,
                membership: swimlock_membership::Config::lan(),
                join_timeout: crate::node::NodeConfig::JOIN_TIMEOUT,
                security: super::sealed(self.cfg.seed, rng_seed),
            };
            let mut node =
                Node::with_term_floor(id, config, rng_seed, persisted_term).expect("valid settings");
            node.start(self.now);
            Engine::Gossip(Box::new(node))
        } else {
            Engine::Scripted(Box::new(LockNode::with_term_floor(id, lock, persisted_term)))
        };
        Host {
            node: Some(engine),
            persisted_term,
            persisted_tag,
            id,
            armed: None,
            last_members: Vec::new(),
            last_view_at: self.now,
            view_id: 0,
            dropped_by_others: false,
            started_at: self.now,
            was_coordinator: false,
            paused: None,
            last_pause: None,
            alone: None,
            view_hosts: Vec::new(),
            dropped_at: BTreeMap::new(),
        }
    }

    fn workload_gap(&mut self) -> Duration {
        Duration::from_micros(self.rng.random_range(2_000..60_000))
    }

    fn fault_gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(300..2_500))
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let text = line();
            self.outcome.trace.push(format!("{:>10.6} {text}", self.now.as_secs_f64()));
        }
    }

    fn mix(&mut self, values: &[u64]) {
        for v in values {
            let h = &mut self.outcome.trace_hash;
            *h = (*h ^ v).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
        }
    }

    /// Runs to the end or to the first violation.
    pub fn run(mut self) -> Outcome {
        while let Some((at, ev)) = self.queue.pop() {
            self.now = at;
            self.outcome.counts.steps += 1;
            if self.outcome.counts.steps > MAX_STEPS {
                let what = format!("more than {MAX_STEPS} steps: a timer or message loop that never ends");
                self.outcome.violation = Some((self.now, Violation { invariant: 0, what, name: None }));
                break;
            }
            let done = matches!(ev, Ev::End);
            let drain = matches!(ev, Ev::Drain);
            self.let_go.clear();
            let touched = self.step(ev);
            let checks = self
                .check_after(touched)
                .and_then(|_| if drain { self.check_converged() } else { Ok(()) })
                .and_then(|_| if drain { self.check_requests_known() } else { Ok(()) })
                .and_then(|_| if drain { self.release_all() } else { Ok(()) })
                .and_then(|_| if done { self.check_end() } else { Ok(()) });
            if let Err(v) = checks {
                self.outcome.violation = Some((self.now, v));
                break;
            }
            if done {
                break;
            }
        }
        self.outcome.counts.grants = self.checker.grants;
        self.outcome.counts.twin_tags = u64::from(self.twin_tags);
        self.outcome.counts.split_holds = self.ledger.allowed_overlaps;
        self.outcome.counts.failovers = self.takeovers;
        for host in &self.hosts {
            if let Some(node) = host.node.as_ref().map(Engine::lock) {
                self.outcome.counts.merges += node.stats().merges;
                self.outcome.counts.duplicates += node.stats().duplicates_resolved;
                self.outcome.counts.witnessed += node.stats().witnessed_takeovers;
            }
        }
        self.outcome
    }

    /// Handles one event; returns the host it touched, if any.
    fn step(&mut self, ev: Ev) -> Option<usize> {
        let target = match &ev {
            Ev::Deliver { host, .. }
            | Ev::Datagram { host, .. }
            | Ev::Timer { host }
            | Ev::InstallView { host, .. } => Some(*host),
            _ => None,
        };
        if let Some(inbox) = target.and_then(|h| self.hosts[h].paused.as_mut()) {
            inbox.push(ev);
            return None;
        }
        match ev {
            Ev::Deliver { host, from, to, msg } => {
                self.mix(&[1, host as u64, self.now.as_nanos() as u64]);
                let from_host = self.hosts.iter().position(|h| h.id == from);
                let reachable = from_host.is_some_and(|f| self.partition.connected(f, host));
                if self.hosts[host].id != to || !reachable {
                    return None;
                }
                self.trace(|| format!("h{host} <- {from}: {msg:?}"));
                let Some(Engine::Scripted(node)) = self.hosts[host].node.as_mut() else { return None };
                node.handle_message(self.now, from, msg);
                Some(host)
            }
            Ev::Datagram { host, from, bytes } => {
                self.mix(&[7, host as u64, self.now.as_nanos() as u64]);
                if !self.partition.connected(from, host) {
                    return None;
                }
                let (to, seed) = (self.hosts[host].id, self.cfg.seed);
                self.trace(|| format!("h{host} <- h{from}: {}", describe(to, seed, &bytes)));
                let Some(Engine::Gossip(node)) = self.hosts[host].node.as_mut() else { return None };
                node.handle_datagram(self.now, addr(from), &bytes);
                Some(host)
            }
            Ev::Timer { host } => {
                self.mix(&[2, host as u64]);
                if self.hosts[host].armed.is_none_or(|t| t > self.now) {
                    return None;
                }
                self.hosts[host].armed = None;
                let node = self.hosts[host].node.as_mut()?;
                node.handle_timeout(self.now);
                Some(host)
            }
            Ev::Boot { host } => self.hosts[host].node.as_ref().map(|_| host),
            Ev::InstallView { host, generation } => {
                self.mix(&[3, host as u64]);
                let current = generation == self.generation || generation == AFTER_PAUSE;
                if current { self.install_view(host) } else { None }
            }
            Ev::Workload { host } => {
                self.mix(&[4, host as u64]);
                if self.phase == Phase::Faults {
                    let next = self.now + self.workload_gap();
                    self.queue.push(next, Ev::Workload { host });
                    // A paused application does nothing.
                    if self.hosts[host].paused.is_some() { None } else { self.workload(host) }
                } else {
                    None
                }
            }
            Ev::Reconnect { host } => {
                let like = (0..self.cfg.nodes).find(|&o| o != host).expect("two hosts at least");
                let next = self.partition.rejoin(host, like);
                self.set_partition(next);
                self.trace(|| format!("h{host} reaches its seeds again"));
                self.topology_changed();
                None
            }
            Ev::Resume { host } => {
                self.mix(&[8, host as u64]);
                let inbox = self.hosts[host].paused.take()?;
                self.trace(|| format!("resume h{host} ({} inputs queued)", inbox.len()));
                // What the agent's node does from its membership timers: a
                // gap as long as failure detection means it did not run.
                let paused_at = self.hosts[host].last_pause.map_or(self.now, |(from, _)| from);
                if let Some(Engine::Scripted(node)) = self.hosts[host].node.as_mut()
                    && self.now - paused_at >= node.config().detection_min
                {
                    node.note_gap(self.now);
                }
                // An agent's membership handles the gossip queued during the
                // pause at once and installs the view it gives a settle time
                // later: a scripted node learns the current view as soon.
                if !self.cfg.gossip && self.hosts[host].node.is_some() {
                    let at = self.now + RESUME_VIEW_DELAY;
                    self.queue.push(at, Ev::InstallView { host, generation: AFTER_PAUSE });
                }
                for ev in inbox {
                    self.queue.push(self.now, ev);
                }
                self.hosts[host].armed = Some(self.now);
                self.queue.push(self.now, Ev::Timer { host });
                None
            }
            Ev::Fault => {
                self.mix(&[5]);
                if self.phase == Phase::Faults {
                    self.fault();
                    let next = self.now + self.fault_gap();
                    self.queue.push(next, Ev::Fault);
                }
                None
            }
            Ev::Settle => {
                self.trace(|| "settle: heal, restart, no loss".to_string());
                self.phase = Phase::Settle;
                self.faults = Faults::NONE;
                self.set_partition(Partition::healed(self.cfg.nodes));
                for host in 0..self.cfg.nodes {
                    if self.hosts[host].paused.is_some() {
                        self.queue.push(self.now, Ev::Resume { host });
                    }
                    if self.hosts[host].node.is_none() {
                        self.hosts[host] = self.fresh_host(host);
                        self.queue.push(self.now, Ev::Boot { host });
                    }
                }
                self.topology_changed();
                self.queue.push(self.now + SETTLE, Ev::Drain);
                None
            }
            Ev::Drain => {
                self.phase = Phase::Drain;
                self.queue.push(self.now + DRAIN, Ev::End);
                None
            }
            Ev::End => None,
        }
    }

    /// The view oracle: the host's component as it is now. Added members
    /// that existed at the host's previous view (they were apart) make it
    /// a merge view; fresh processes are joins.
    fn install_view(&mut self, host: usize) -> Option<usize> {
        self.hosts[host].node.as_ref()?;
        let members: Vec<NodeId> = {
            let mut m: Vec<NodeId> = (0..self.cfg.nodes)
                .filter(|&o| self.hosts[o].node.is_some() && self.partition.connected(host, o))
                .map(|o| self.hosts[o].id)
                .collect();
            m.sort();
            m
        };
        let h = &self.hosts[host];
        let returning = members.iter().any(|m| {
            !h.last_members.contains(m)
                && self.hosts.iter().any(|o| o.id == *m && o.started_at < h.last_view_at)
                && !h.last_members.is_empty()
        });
        let merge = returning || h.dropped_by_others;
        if members == h.last_members && !merge {
            return None;
        }
        for other in 0..self.cfg.nodes {
            let id = self.hosts[other].id;
            if self.hosts[host].last_members.contains(&id) && !members.contains(&id) {
                self.hosts[other].dropped_by_others = true;
            }
        }
        let h = &mut self.hosts[host];
        // A view of itself alone (after a restart that met nobody, or left
        // by every host of its last view) is a group of its own, as after a
        // join timeout with real membership: nothing can tell it the terms
        // of hosts it never reached.
        if members.len() == 1 {
            if h.alone.is_none_or(|(_, until)| until.is_some()) {
                h.alone = Some((self.now, None));
            }
        } else if let Some((_, until @ None)) = &mut h.alone {
            *until = Some(self.now);
        }
        h.dropped_by_others = false;
        h.view_id += 1;
        h.last_members = members.clone();
        h.last_view_at = self.now;
        // Scripted views carry no gossip: the lock machine learns terms from
        // its rounds only.
        let view = View { id: h.view_id, members, merge, gossiped_term: 0 };
        self.trace(|| format!("h{host} view {:?} merge={merge}", view.members));
        let Some(Engine::Scripted(node)) = self.hosts[host].node.as_mut() else { return None };
        node.handle_view(self.now, view);
        Some(host)
    }

    fn schedule_view(&mut self, host: usize) {
        let delay = Duration::from_millis(self.rng.random_range(MIN_DETECT_MS..MAX_DETECT_MS));
        self.queue.push(self.now + delay, Ev::InstallView { host, generation: self.generation });
    }

    fn topology_changed(&mut self) {
        if self.cfg.gossip {
            return; // membership finds out by itself
        }
        self.generation += 1;
        for host in 0..self.cfg.nodes {
            if self.hosts[host].node.is_some() {
                self.schedule_view(host);
            }
        }
    }

    fn fault(&mut self) {
        let alive: Vec<usize> = (0..self.cfg.nodes).filter(|&h| self.hosts[h].node.is_some()).collect();
        let dead: Vec<usize> = (0..self.cfg.nodes).filter(|&h| self.hosts[h].node.is_none()).collect();
        let roll = self.rng.random_range(0..100);
        match roll {
            0..30 if self.cfg.nodes > 1 => {
                let next = if self.partition.is_healed() {
                    Partition::split(&mut self.rng, self.cfg.nodes)
                } else {
                    Partition::healed(self.cfg.nodes)
                };
                self.set_partition(next);
                let sides = self.partition.sides();
                self.trace(|| format!("partition {sides:?}"));
                self.topology_changed();
            }
            30..50 if alive.len() > 1 => {
                let host = alive[self.rng.random_range(0..alive.len())];
                self.crash(host);
                if !self.cfg.gossip && self.rng.random_bool(0.25) {
                    // Suspected just before it crashed: SWIM may drop a
                    // member right after its last message, so views without
                    // it may come sooner than detection after a crash.
                    for other in (0..self.cfg.nodes).filter(|&h| self.hosts[h].node.is_some()) {
                        let delay = Duration::from_millis(self.rng.random_range(0..MIN_DETECT_MS));
                        self.queue.push(
                            self.now + delay,
                            Ev::InstallView { host: other, generation: self.generation },
                        );
                    }
                    self.outcome.counts.sudden += 1;
                    self.trace(|| format!("h{host} was suspected before it crashed"));
                }
            }
            50..70 if !dead.is_empty() => {
                let host = dead[self.rng.random_range(0..dead.len())];
                self.restart(host);
                if self.cfg.nodes > 1 && self.rng.random_bool(0.3) {
                    // Its seeds are out of reach for a while: long enough,
                    // sometimes, for the join timeout to pass.
                    let apart = Duration::from_millis(self.rng.random_range(500..4_000));
                    self.set_partition(self.partition.isolate(host));
                    self.queue.push(self.now + apart, Ev::Reconnect { host });
                    self.trace(|| format!("h{host} cut off from its seeds for {apart:?}"));
                }
            }
            50..55 if alive.len() > 1 => {
                // One address, a new identity, while the others still hold
                // the old one as a member.
                let host = alive[self.rng.random_range(0..alive.len())];
                self.crash(host);
                self.restart(host);
                self.outcome.counts.bounces += 1;
            }
            70..85 => {
                let running: Vec<usize> =
                    alive.iter().copied().filter(|&h| self.hosts[h].paused.is_none()).collect();
                if running.is_empty() {
                    return;
                }
                let host = running[self.rng.random_range(0..running.len())];
                let pause = Duration::from_millis(self.rng.random_range(50..=MAX_PAUSE_MS));
                self.hosts[host].paused = Some(Vec::new());
                self.hosts[host].last_pause = Some((self.now, self.now + pause));
                self.outcome.counts.pauses += 1;
                self.queue.push(self.now + pause, Ev::Resume { host });
                self.trace(|| format!("pause h{host} for {pause:?}"));
            }
            _ => {
                self.faults = Faults::draw(&mut self.rng);
                let f = self.faults;
                self.trace(|| format!("network {f:?}"));
            }
        }
    }

    fn restart(&mut self, host: usize) {
        self.hosts[host] = self.fresh_host(host);
        self.outcome.counts.restarts += 1;
        self.queue.push(self.now, Ev::Boot { host });
        self.trace(|| format!("restart h{host}"));
        self.topology_changed();
    }

    fn crash(&mut self, host: usize) {
        let id = self.hosts[host].id;
        self.trace(|| format!("crash h{host} ({id})"));
        if let Some(node) = self.hosts[host].node.take().as_ref().map(Engine::lock) {
            self.outcome.counts.merges += node.stats().merges;
            self.outcome.counts.duplicates += node.stats().duplicates_resolved;
            self.outcome.counts.witnessed += node.stats().witnessed_takeovers;
        }
        self.hosts[host].armed = None;
        self.hosts[host].paused = None;
        self.checker.crashed(id);
        self.ledger.crashed(host);
        self.topology_changed();
    }

    /// One random client action on `host`.
    fn workload(&mut self, host: usize) -> Option<usize> {
        let client = ClientId(self.rng.random_range(1..=self.cfg.clients));
        let name = self.names[self.rng.random_range(0..self.names.len())].clone();
        let roll = self.rng.random_range(0..100);
        let mut timeout = Duration::from_millis(self.rng.random_range(10..1_500));
        if self.cfg.long_waits && timeout.as_millis().is_multiple_of(8) {
            timeout = LONG_WAIT;
        }
        let now = self.now;
        let node = self.hosts[host].node.as_mut()?;
        let held: Vec<LockName> =
            node.lock().held().into_iter().filter(|h| h.client == client).map(|h| h.name).collect();
        let action = match roll {
            0..45 if !held.is_empty() => {
                let name = held[(roll as usize) % held.len()].clone();
                node.unlock(now, client, &name);
                self.let_go.push((host, client, Some(name.clone())));
                format!("unlock {name}")
            }
            45..52 if !held.is_empty() => {
                let name = held[(roll as usize) % held.len()].clone();
                node.lock_op(now, client, name.clone(), Some(timeout));
                format!("re-enter {name}")
            }
            52..54 => {
                node.release_client(now, client);
                self.let_go.push((host, client, None));
                "disconnect".to_string()
            }
            54..75 => {
                node.lock_op(now, client, name.clone(), None);
                format!("try_lock {name}")
            }
            _ => {
                node.lock_op(now, client, name.clone(), Some(timeout));
                format!("lock {name} {timeout:?}")
            }
        };
        self.trace(|| format!("h{host} client {} {action}", client.0));
        Some(host)
    }

    /// After a step on `host`: deliver its output, check the invariants.
    fn check_after(&mut self, touched: Option<usize>) -> Result<(), Violation> {
        if let Some(host) = touched {
            self.drain(host)?;
        }
        for side in self.partition.sides() {
            self.check_component(&side)?;
        }
        Ok(())
    }

    /// Invariant 1 on a component whose members all installed the same
    /// view and whose coordinator reconciled with all of them.
    fn check_component(&self, side: &[usize]) -> Result<(), Violation> {
        // A paused host takes no part: its state is as old as its pause.
        let nodes: Vec<&LockNode> = side
            .iter()
            .filter(|&&h| self.hosts[h].paused.is_none())
            .filter_map(|&h| self.hosts[h].node.as_ref())
            .map(Engine::lock)
            .collect();
        let Some(first) = nodes.first() else { return Ok(()) };
        let Some(view) = first.view() else { return Ok(()) };
        let mut ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
        ids.sort();
        if view.members != ids || nodes.iter().any(|n| n.view().map(|v| &v.members) != Some(&view.members)) {
            return Ok(());
        }
        let Some(coord) = nodes.iter().find(|n| Some(n.id()) == view.coordinator()) else { return Ok(()) };
        let settled = coord.is_serving()
            && nodes.iter().all(|n| n.synced())
            && coord.awaiting().is_empty()
            && coord.table_stats().is_some_and(|s| s.unacked_duplicates == 0);
        if !settled {
            return Ok(());
        }
        check_settled_component(coord, &nodes)
    }

    fn drain(&mut self, host: usize) -> Result<(), Violation> {
        let available = self.cfg.mode == Mode::Available;
        let mut events = Vec::new();
        let mut sends = Vec::new();
        let mut datagrams = Vec::new();
        let mut views = Vec::new();
        let mut had_others = self.hosts[host].view_hosts.len() > 1;
        match self.hosts[host].node.as_mut().expect("touched hosts are alive") {
            Engine::Scripted(node) => {
                while let Some(t) = node.poll_transmit() {
                    sends.push(t);
                }
                while let Some(e) = node.poll_event() {
                    events.push(e);
                }
            }
            Engine::Gossip(node) => {
                while let Some(d) = node.poll_transmit() {
                    datagrams.push(d);
                }
                let mut saves = 0;
                let mut new_tag = None;
                let mut joined_alone = false;
                let mut joined_others = false;
                let mut new_view = None;
                while let Some(e) = node.poll_event() {
                    match e {
                        NodeEvent::Lock(e) => events.push(e),
                        NodeEvent::View { view, merge } => {
                            let members: Vec<String> = view.members.iter().map(|m| m.name.clone()).collect();
                            views.push(format!("h{host} view {} {members:?} merge={merge}", view.id));
                            // Left alone by every host of its last view: a
                            // component of one, a side of a split brain with
                            // every host it could not reach, as after a join
                            // timeout.
                            joined_alone |= view.members.len() == 1 && had_others;
                            joined_others = view.members.len() > 1;
                            had_others = joined_others;
                            new_view = Some(view.ids().collect::<Vec<NodeId>>());
                        }
                        NodeEvent::TagChanged { tag } => {
                            new_tag = Some(tag);
                            views.push(format!("h{host} tag {tag}"));
                        }
                        NodeEvent::Superseded { by } => views.push(format!("h{host} superseded by {by}")),
                        NodeEvent::DeclaredDown => {
                            self.outcome.counts.declared_down += 1;
                            views.push(format!("h{host} declared down: holds still until it rejoins"));
                        }
                        NodeEvent::JoinTimedOut => {
                            self.outcome.counts.alone += 1;
                            joined_alone = true;
                            views.push(format!("h{host} join timed out: a group of its own"));
                        }
                        // No keyring commands run here; a host keeps its
                        // keyring in memory like its other state.
                        NodeEvent::KeyringChanged(_) => saves += 1,
                        NodeEvent::Keyring(_) => {}
                    }
                }
                for _ in 0..saves {
                    node.keyring_saved(self.now, Ok(()));
                }
                if let Some(tag) = new_tag {
                    self.hosts[host].persisted_tag = Some(tag);
                }
                if joined_alone {
                    self.hosts[host].alone = Some((self.now, None));
                }
                if let Some((_, until @ None)) = &mut self.hosts[host].alone
                    && joined_others
                {
                    *until = Some(self.now);
                }
                if let Some(ids) = new_view {
                    let hosts: Vec<usize> =
                        ids.iter().filter_map(|id| self.hosts.iter().position(|h| h.id == *id)).collect();
                    let now = self.now;
                    let h = &mut self.hosts[host];
                    for gone in h.view_hosts.iter().filter(|o| !hosts.contains(o)) {
                        h.dropped_at.insert(*gone, now);
                    }
                    h.view_hosts = hosts;
                }
            }
        }
        for line in views {
            self.trace(|| line);
        }
        let from = self.hosts[host].id;
        for (to, bytes) in datagrams {
            let Some(to_host) = (0..self.cfg.nodes).find(|&h| addr(h) == to) else { continue };
            if !self.partition.connected(host, to_host) {
                continue;
            }
            let times = delivery_times(&mut self.rng, self.now, self.faults);
            if times.is_empty() {
                self.lost.insert((host.min(to_host), host.max(to_host)), self.now);
            }
            for at in times {
                self.queue.push(at, Ev::Datagram { host: to_host, from: host, bytes: bytes.clone() });
            }
        }
        for t in sends {
            let Some(to_host) = self.hosts.iter().position(|h| h.id == t.to) else { continue };
            if !self.partition.connected(host, to_host) {
                continue;
            }
            let times = delivery_times(&mut self.rng, self.now, self.faults);
            if times.is_empty() {
                self.lost.insert((host.min(to_host), host.max(to_host)), self.now);
            }
            for at in times {
                self.queue.push(at, Ev::Deliver { host: to_host, from, to: t.to, msg: t.msg.clone() });
            }
        }
        // The coordinator's table first: a round's snapshot must not see the
        // grants this very step delivered.
        self.checker.observe_coordinator(self.hosts[host].node.as_ref().expect("alive").lock())?;
        let coordinator_node = self.hosts[host].node.as_ref().expect("alive").lock();
        let try_locks = if coordinator_node.queues().is_empty() {
            BTreeSet::new()
        } else {
            self.lock_nodes()
                .iter()
                .flat_map(|n| n.pending_try_locks().into_iter().map(|r| (n.id(), r)))
                .collect()
        };
        let engine = self.hosts[host].node.as_ref().expect("alive");
        let timer_due = engine.poll_timeout().is_some_and(|t| t <= self.now);
        self.checker.observe_queues(coordinator_node, self.now, &try_locks, timer_due)?;
        // Holds that ended in this step first, then the grants it made.
        let lost: Vec<(ClientId, LockName)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Lost { client, name, .. } => Some((*client, name.clone())),
                _ => None,
            })
            .collect();
        let held: Vec<_> = {
            let node = self.hosts[host].node.as_ref().expect("alive").lock();
            node.held()
                .into_iter()
                .map(|h| (h.client, h.name.clone(), h.token, lease_of(node, h.client, &h.name)))
                .collect()
        };
        let let_go: Vec<(ClientId, Option<LockName>)> =
            self.let_go.iter().filter(|(h, ..)| *h == host).map(|(_, c, n)| (*c, n.clone())).collect();
        let ended = |client: ClientId, name: &LockName| {
            lost.iter().any(|(c, n)| *c == client && n == name)
                || let_go.iter().any(|(c, n)| *c == client && n.as_ref().is_none_or(|n| n == name))
        };
        let coordinator = {
            let node = self.hosts[host].node.as_ref().expect("alive").lock();
            node.coordinator().and_then(|c| self.hosts.iter().position(|h| h.id == c))
        };
        self.ledger.sync_host(self.now, host, coordinator, &held, &ended)?;
        for event in events {
            self.trace(|| format!("h{host} event {event:?}"));
            match &event {
                Event::Acquired { token, client, name, holds: 1, .. } => {
                    self.mix(&[6, token.0]);
                    let node = self.hosts[host].node.as_ref().expect("alive").lock();
                    let lease = lease_of(node, *client, name);
                    // A grant that arrives after its coordinator crashed (its
                    // host may run a new identity by now) is still judged by
                    // the host that made it.
                    let granter = node.coordinator().and_then(|c| {
                        (self.hosts.iter().position(|h| h.id == c))
                            .or_else(|| self.hosts.iter().position(|h| h.id.addr == c.addr))
                    });
                    let terms =
                        self.hosts.iter().map(|h| h.node.as_ref().map(|n| n.lock().durable_term())).collect();
                    let granter_view = granter
                        .and_then(|g| self.hosts[g].node.as_ref())
                        .and_then(|n| n.lock().view())
                        .map(|v| {
                            v.members
                                .iter()
                                .filter_map(|m| self.hosts.iter().position(|h| h.id == *m))
                                .collect()
                        })
                        .unwrap_or_default();
                    let paused = self.hosts.iter().map(|h| h.last_pause).collect();
                    let alone = self.hosts.iter().map(|h| h.alone).collect();
                    let dropped_at = self.hosts.iter().map(|h| h.dropped_at.clone()).collect();
                    let views = (0..self.hosts.len()).map(|h| self.view_hosts(h)).collect();
                    let net = NetView {
                        partitions: &self.partitions,
                        terms,
                        granter_view,
                        views,
                        granter,
                        lost: &self.lost,
                        paused,
                        alone,
                        dropped_at,
                        now: self.now,
                    };
                    self.ledger.acquired(
                        self.now, host, from, *client, name, *token, lease, available, granter, &net,
                    )?;
                    // Granted and let go within this step: over already.
                    self.ledger.sync_host(self.now, host, coordinator, &held, &ended)?;
                }
                Event::TermStarted { term } => self.hosts[host].persisted_term = *term,
                _ => {}
            }
            self.checker.on_event(from, &event, available)?;
        }
        let engine = self.hosts[host].node.as_ref().expect("alive");
        let coordinating = engine.lock().is_coordinator();
        let next = engine.poll_timeout();
        let h = &mut self.hosts[host];
        if coordinating && !h.was_coordinator && self.outcome.counts.steps > 1 {
            self.takeovers += 1;
        }
        h.was_coordinator = coordinating;
        if let Some(t) = next
            && h.armed.is_none_or(|a| t < a)
        {
            h.armed = Some(t);
            self.queue.push(t.max(self.now), Ev::Timer { host });
        }
        Ok(())
    }

    /// The hosts in `host`'s view.
    fn view_hosts(&self, host: usize) -> Vec<usize> {
        let view = self.hosts[host].node.as_ref().and_then(|n| n.lock().view());
        view.map(|v| v.members.iter().filter_map(|m| self.hosts.iter().position(|h| h.id == *m)).collect())
            .unwrap_or_default()
    }

    /// Puts `partition` in force now.
    fn set_partition(&mut self, partition: Partition) {
        self.partitions.push((self.now, partition.clone()));
        self.partition = partition;
    }

    fn lock_nodes(&self) -> Vec<&LockNode> {
        self.hosts.iter().filter_map(|h| h.node.as_ref()).map(Engine::lock).collect()
    }

    /// The end of the settle phase: one component, one view, a coordinator
    /// that reconciled with everyone, every duplicate resolved.
    fn check_converged(&self) -> Result<(), Violation> {
        let all: Vec<usize> = (0..self.cfg.nodes).collect();
        let nodes = self.lock_nodes();
        let views: Vec<Option<&View>> = nodes.iter().map(|n| n.view()).collect();
        let settled = nodes.iter().any(|n| {
            n.is_serving()
                && n.awaiting().is_empty()
                && n.table_stats().is_some_and(|s| s.unacked_duplicates == 0)
        });
        let one_view = views.windows(2).all(|w| w[0].map(|v| &v.members) == w[1].map(|v| &v.members));
        if !settled || !one_view || nodes.len() != all.len() {
            return Err(Violation {
                invariant: 0,
                what: format!(
                    "no convergence after the heal: one view {one_view}, coordinator settled {settled}"
                ),
                name: None,
            });
        }
        check_exclusive(&nodes)?;
        self.check_component(&all)
    }

    /// Liveness, once converged: every lock request still waiting on a node
    /// holds the lock or waits in the coordinator's queue, and no unlock or
    /// cancel is in flight (after seconds without faults each was
    /// answered). A request the coordinator does not know would wait until
    /// its timeout however free the lock is.
    fn check_requests_known(&self) -> Result<(), Violation> {
        let nodes = self.lock_nodes();
        let Some(coord) = nodes.iter().find(|n| n.is_serving()) else { return Ok(()) };
        for node in &nodes {
            let pending = node.pending_locks();
            for (req, client, name) in &pending {
                let owner = Owner { node: node.id(), client: *client };
                if !coord.knows_request(owner, name, *req) {
                    return Err(Violation {
                        invariant: 0,
                        what: format!(
                            "lock request {} of client {} on {} is waiting, but the coordinator {} \
                             neither granted nor queued it",
                            req.0,
                            client.0,
                            node.id(),
                            coord.id()
                        ),
                        name: Some(name.clone()),
                    });
                }
            }
            if node.pending_releases() > 0 {
                return Err(Violation {
                    invariant: 0,
                    what: format!(
                        "{} has {} unlocks or cancels unanswered seconds after the last fault",
                        node.id(),
                        node.pending_releases()
                    ),
                    name: None,
                });
            }
        }
        Ok(())
    }

    /// Drain phase: every client of every host goes away.
    fn release_all(&mut self) -> Result<(), Violation> {
        for host in 0..self.cfg.nodes {
            let now = self.now;
            let Some(node) = self.hosts[host].node.as_mut() else { continue };
            for client in 1..=self.cfg.clients {
                node.release_client(now, ClientId(client));
                self.let_go.push((host, ClientId(client), None));
            }
            self.drain(host)?;
        }
        Ok(())
    }

    /// The end of the run: one view, nothing pending, nothing held.
    fn check_end(&mut self) -> Result<(), Violation> {
        let nodes = self.lock_nodes();
        check_exclusive(&nodes)?;
        let mut report = String::new();
        for node in &nodes {
            if node.pending_ops() > 0 {
                let _ = write!(report, "{} has {} requests unanswered; ", node.id(), node.pending_ops());
            }
            if !node.held().is_empty() {
                let _ = write!(report, "{} still holds {:?}; ", node.id(), node.held());
            }
            if let Some(stats) = node.table_stats().filter(|s| s.held > 0 || s.waiters > 0) {
                let _ = write!(report, "coordinator {} table not empty: {stats:?}; ", node.id());
            }
        }
        if report.is_empty() { Ok(()) } else { Err(Violation { invariant: 0, what: report, name: None }) }
    }
}

/// The end of the lease on `name` held by `client`, if the node has one.
fn lease_of(node: &LockNode, client: ClientId, name: &LockName) -> Option<Duration> {
    node.held().into_iter().find(|h| h.client == client && h.name == *name).map(|h| h.safe_until)
}

/// The partitions of a run, as the ledger asks about them.
struct NetView<'a> {
    partitions: &'a [(Duration, Partition)],
    /// The durable term of every live host (`None`: crashed).
    terms: Vec<Option<u32>>,
    /// The hosts in the view of the coordinator that granted.
    granter_view: Vec<usize>,
    /// Every host's view, as hosts.
    views: Vec<Vec<usize>>,
    /// The coordinator that granted.
    granter: Option<usize>,
    /// When the network last lost a message between two hosts.
    lost: &'a BTreeMap<(usize, usize), Duration>,
    /// When each host was last paused (from, until), if ever.
    paused: Vec<Option<(Duration, Duration)>>,
    /// When each host last formed a group of its own (after its join
    /// timeout, or a view of itself alone after one with others), and until when it stayed alone
    /// (`None`: still).
    alone: Vec<Option<(Duration, Option<Duration>)>>,
    /// When each host's view last dropped each other host.
    dropped_at: Vec<BTreeMap<usize, Duration>>,
    now: Duration,
}

impl Network for NetView<'_> {
    fn separated_during(&self, a: usize, b: usize, from: Duration, to: Duration) -> bool {
        let to = to.min(self.now);
        // The partition in force at `from`, and every one that began after.
        let first = self.partitions.iter().rposition(|(at, _)| *at <= from).unwrap_or(0);
        self.partitions[first..].iter().take_while(|(at, _)| *at <= to).any(|(_, p)| !p.connected(a, b))
    }

    fn alone_since(&self, host: usize, since: Duration) -> bool {
        self.alone[host].is_some_and(|(_, until)| until.is_none_or(|t| t >= since))
    }

    fn falsely_suspected(&self, other: usize, at: Duration, since: Duration) -> bool {
        let Some(granter) = self.granter.filter(|g| *g != other) else { return false };
        let alive = self.terms[other].is_some();
        let detection = Duration::from_millis(MAX_DETECT_MS);
        // A pause shorter than the suspicion timeout does not get a member
        // declared down by itself.
        let suspicion = swimlock_membership::Config::lan().suspect_to_down_after;
        // The split: when one of the two views dropped the other. A pause
        // of either that began before it, long enough to get it declared
        // down, is its cause; one that began after it is not.
        let _ = at;
        let split = [self.dropped_at[granter].get(&other), self.dropped_at[other].get(&granter)]
            .into_iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(self.now);
        let caused = |h: usize| {
            self.paused[h].is_some_and(|(from, until)| {
                from <= split && until + detection >= split && until - from >= suspicion
            })
        };
        let paused = caused(other) || caused(granter);
        let pair = (granter.min(other), granter.max(other));
        let lossy = self.lost.get(&pair).is_some_and(|t| *t >= since);
        let apart = !self.granter_view.contains(&other) || !self.views[other].contains(&granter);
        alive && !paused && lossy && apart
    }

    fn term_known_outside(&self, term: u32) -> bool {
        self.terms
            .iter()
            .enumerate()
            .any(|(host, known)| !self.granter_view.contains(&host) && known.is_some_and(|t| t >= term))
    }

    fn term_known_across(&self, term: u32, granter: usize, since: Duration) -> bool {
        self.terms.iter().enumerate().any(|(host, known)| {
            known.is_some_and(|t| t >= term) && self.separated_during(host, granter, since, self.now)
        })
    }
}

/// A datagram for the trace: lock messages in full, gossip by size.
/// A datagram for the trace, opened with a throwaway copy of the
/// receiver's keys (the receiver's own replay state is not touched).
fn describe(to: NodeId, run_seed: u64, datagram: &[u8]) -> String {
    use swimlock_wire::frame::{Kind, decode_lock};
    let mut sealing = crate::node::seal::Sealing::new(to, "sim", super::sealed(run_seed, 0));
    let mut scratch = Vec::new();
    match sealing.open(datagram, &mut scratch) {
        Ok(o) if o.kind == Kind::Lock => match decode_lock(o.body) {
            Ok(frame) => format!("{:?}", frame.msgs),
            Err(e) => format!("bad lock frame: {e}"),
        },
        Ok(o) => format!(
            "{:?} ({} bytes) {}",
            o.kind,
            datagram.len(),
            swimlock_membership::describe_payload(o.body)
        ),
        Err(reason) => format!("dropped: {}", reason.label()),
    }
}

/// Runs one seed.
pub fn run(cfg: RunConfig) -> Outcome {
    World::new(cfg).run()
}
