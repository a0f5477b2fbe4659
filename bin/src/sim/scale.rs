//! Scale runs (`swimlock sim --scale`): one large cluster of full node
//! cores (real membership, sealed datagrams, the lock machine) on the
//! simulated network, driven through a fixed script, timing what a user of
//! a big cluster waits for, in simulated time:
//!
//! 1. cold start: every node starts at once, knowing the first three as
//!    seeds, until every node has installed the same view of all nodes;
//! 2. idle: after 10 s of quiet, datagrams and bytes each node sends per
//!    second (the sealed datagram as it goes on the wire, without IP and
//!    UDP headers);
//! 3. a member crashes: until no view lists it;
//! 4. every node takes `locks_per_node` locks; the coordinator crashes:
//!    from the new coordinator's view to the end of its reconciliation
//!    round (every surviving lock back in its table), with the real CPU
//!    time the new coordinator spent in that span and the bytes it
//!    received, per millisecond at the peak (what its socket must hold);
//! 5. a split into two halves, until each half has one view of its own,
//!    then the heal: until every node has one view of all.
//!
//! Invariants are not checked here (the many-seed runs of `swimlock sim`
//! do that on small clusters); the run stops a step that does not finish
//! within its bound and reports it as missed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swimlock_lock::Event;
use swimlock_wire::{ClientId, LockName, NodeId};

use crate::node::{Node, NodeConfig, NodeEvent};

use super::net::{Faults, Queue, delivery_times};

/// Settings of one scale run.
#[derive(Clone, Debug)]
pub struct ScaleConfig {
    /// The seed: it decides every random choice.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Locks each node's clients take before the coordinator crashes.
    pub locks_per_node: usize,
    /// How long the cluster stays quiet after the cold start before the idle
    /// traffic is measured (the join's gossip dies down meanwhile).
    pub quiet: Duration,
    /// How long the idle traffic is measured.
    pub idle: Duration,
    /// Longest simulated time any one step may take before it counts as
    /// missed.
    pub step_limit: Duration,
    /// Membership settings of every node.
    pub membership: swimlock_membership::Config,
}

impl ScaleConfig {
    /// Defaults for `seed` and `nodes`: 100 locks per node, 10 s of quiet
    /// then 10 s of idle measured,
    /// 60 s per step, the LAN membership preset.
    pub fn new(seed: u64, nodes: usize) -> ScaleConfig {
        ScaleConfig {
            seed,
            nodes,
            locks_per_node: 100,
            quiet: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            step_limit: Duration::from_secs(60),
            membership: swimlock_membership::Config::lan(),
        }
    }
}

/// Traffic one node sends, per second.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    /// Mean over the nodes.
    pub mean: f64,
    /// The busiest node.
    pub max: f64,
}

/// The reconciliation after the coordinator crashed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reconciliation {
    /// Locks held when the coordinator crashed (its own clients' included).
    pub held_before: usize,
    /// Locks in the new coordinator's table when its round ended.
    pub reinstalled: usize,
    /// Crash to the new coordinator's view without the old one.
    pub detection: Duration,
    /// That view to the end of the round (simulated time).
    pub round: Duration,
    /// The last member's view without the old coordinator to the end of
    /// the round (zero if the round ended first: a member that has not
    /// installed the view yet answers once it has, and is merged late).
    pub after_last_view: Duration,
    /// Real CPU time the new coordinator's node spent from that view to
    /// the end of the round (every input it handled meanwhile).
    pub cpu: Duration,
    /// Datagrams and bytes the new coordinator received in the round.
    pub datagrams_in: u64,
    /// See `datagrams_in`.
    pub bytes_in: u64,
    /// Most bytes that reached the new coordinator within one millisecond
    /// of the round.
    pub peak_bytes_per_ms: u64,
}

/// What one scale run measured; `None` for a step that missed its bound.
#[derive(Clone, Debug, Default)]
pub struct ScaleReport {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Cold start to one view of every node on every node.
    pub cold_start: Option<Duration>,
    /// Idle datagrams sent per node per second.
    pub idle_datagrams: Rate,
    /// Idle bytes sent per node per second (sealed datagrams).
    pub idle_bytes: Rate,
    /// A member's crash to no view listing it.
    pub crash_out: Option<Duration>,
    /// Time for every node to hold its locks (from the first request).
    pub locks_taken: Option<Duration>,
    /// The coordinator's crash with every node holding locks.
    pub reconciliation: Option<Reconciliation>,
    /// A split into halves to one view per half.
    pub split: Option<Duration>,
    /// The heal to one view of all.
    pub heal: Option<Duration>,
    /// When a step missed: the views the nodes had then (distinct views,
    /// smallest and largest).
    pub missed_views: Option<String>,
    /// Events the run handled.
    pub steps: u64,
    /// Real time the run took.
    pub wall: Duration,
}

impl ScaleReport {
    /// The report as lines of text.
    pub fn lines(&self) -> Vec<String> {
        let ms = |d: Option<Duration>| {
            d.map_or("missed".to_string(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
        };
        let mut lines = vec![
            format!(
                "seed {} nodes {} ({} steps, {:.1} s real)",
                self.seed,
                self.nodes,
                self.steps,
                self.wall.as_secs_f64()
            ),
            format!("  cold start to one view            {}", ms(self.cold_start)),
            format!(
                "  idle per node                     {:.1} datagrams/s (max {:.1}), {:.0} B/s (max {:.0})",
                self.idle_datagrams.mean, self.idle_datagrams.max, self.idle_bytes.mean, self.idle_bytes.max
            ),
            format!("  crashed member out of every view  {}", ms(self.crash_out)),
            format!("  locks taken                       {}", ms(self.locks_taken)),
        ];
        match &self.reconciliation {
            Some(r) => {
                lines.push(format!(
                    "  coordinator crash: view after     {} ms; round {:.1} ms simulated ({:.1} ms after the last member's view), {:.1} ms CPU; {}/{} locks re-installed",
                    r.detection.as_millis(),
                    r.round.as_secs_f64() * 1e3,
                    r.after_last_view.as_secs_f64() * 1e3,
                    r.cpu.as_secs_f64() * 1e3,
                    r.reinstalled,
                    r.held_before
                ));
                lines.push(format!(
                    "  round input at the coordinator    {} datagrams, {} bytes, peak {} bytes in 1 ms",
                    r.datagrams_in, r.bytes_in, r.peak_bytes_per_ms
                ));
            }
            None => lines.push("  coordinator crash: round          missed".to_string()),
        }
        lines.push(format!("  split into halves to two views    {}", ms(self.split)));
        lines.push(format!("  heal to one view                  {}", ms(self.heal)));
        if let Some(views) = &self.missed_views {
            lines.push(format!("  views when a step missed          {views}"));
        }
        lines
    }
}

/// The address of host `i` (10.0.0.0/8, so 16 million hosts fit).
fn addr(i: usize) -> SocketAddr {
    let n = u32::try_from(i + 1).expect("fewer than 2^32 hosts");
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n)), 7946)
}

/// The host at `a`, if it is one of ours.
fn host_of(a: SocketAddr, nodes: usize) -> Option<usize> {
    let IpAddr::V4(ip) = a.ip() else { return None };
    let n = u32::from(ip).checked_sub(0x0a00_0001)? as usize;
    (n < nodes).then_some(n)
}

#[derive(Debug)]
enum Ev {
    Datagram { host: usize, bytes: Vec<u8> },
    Timer { host: usize },
}

struct Host {
    node: Option<Box<Node>>,
    armed: Option<Duration>,
    /// The installed view: size and digest.
    view: (usize, u64),
    /// Whether the installed view lists the watched (crashed) node.
    lists_watched: bool,
    sent: u64,
    sent_bytes: u64,
    held: usize,
}

/// What a step waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    /// Every live host's view has every live host (and the same digest).
    OneView,
    /// No live host's view lists the watched node.
    WatchedOut,
    /// Every live host holds its locks.
    LocksHeld,
    /// Every host's view is its own half.
    Halves,
    /// The round of the new coordinator is over.
    Reconciled(usize),
}

struct Scale {
    cfg: ScaleConfig,
    rng: SmallRng,
    now: Duration,
    queue: Queue<Ev>,
    hosts: Vec<Host>,
    /// Side of each host (hosts on different sides do not reach each other).
    side: Vec<u8>,
    watched: Option<NodeId>,
    /// When no view listed the watched node any more.
    watched_out_at: Option<Duration>,
    steps: u64,
    /// While measuring a round: the coordinator's CPU time and input.
    round: Option<RoundMeter>,
}

struct RoundMeter {
    host: usize,
    cpu: Duration,
    datagrams: u64,
    bytes: u64,
    per_ms: Vec<u64>,
    since: Duration,
}

impl Scale {
    fn new(cfg: ScaleConfig) -> Scale {
        let rng = SmallRng::seed_from_u64(cfg.seed);
        let hosts = (0..cfg.nodes)
            .map(|_| Host {
                node: None,
                armed: None,
                view: (0, 0),
                lists_watched: false,
                sent: 0,
                sent_bytes: 0,
                held: 0,
            })
            .collect();
        let side = vec![0; cfg.nodes];
        Scale {
            rng,
            now: Duration::ZERO,
            queue: Queue::default(),
            hosts,
            side,
            watched: None,
            watched_out_at: None,
            steps: 0,
            round: None,
            cfg,
        }
    }

    fn start_all(&mut self) {
        let seeds: Vec<SocketAddr> = (0..self.cfg.nodes.min(3)).map(addr).collect();
        for host in 0..self.cfg.nodes {
            let rng_seed: u64 = self.rng.random();
            let lock = swimlock_lock::Config::lan(u16::try_from(host % 65_000 + 1).expect("fits"));
            let config = NodeConfig {
                name: format!("h{host}"),
                cluster: "sim".to_string(),
                seeds: seeds.clone(),
                lock,
                membership: self.cfg.membership.clone(),
                join_timeout: NodeConfig::JOIN_TIMEOUT,
                security: super::sealed(self.cfg.seed, rng_seed),
            };
            // Start stamps in host order: host 0 is the oldest and coordinates.
            let id = NodeId { epoch: host as u64 + 1, addr: addr(host) };
            let mut node = Node::new(id, config, rng_seed).expect("valid settings");
            node.start(self.now);
            self.hosts[host].node = Some(Box::new(node));
            self.drain(host);
        }
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.cfg.nodes).filter(|&h| self.hosts[h].node.is_some())
    }

    fn done(&self, goal: Goal) -> bool {
        match goal {
            Goal::OneView => {
                let live = self.live().count();
                let mut views = self.live().map(|h| self.hosts[h].view);
                let first = views.next();
                first.is_some_and(|v| v.0 == live && views.all(|w| w == v))
            }
            Goal::WatchedOut => self.live().all(|h| !self.hosts[h].lists_watched),
            Goal::LocksHeld => self.live().all(|h| self.hosts[h].held >= self.cfg.locks_per_node),
            Goal::Halves => {
                let size = |s: u8| self.live().filter(|&h| self.side[h] == s).count();
                let (a, b) = (size(0), size(1));
                let first = |s: u8| self.live().find(|&h| self.side[h] == s).map(|h| self.hosts[h].view);
                let (va, vb) = (first(0), first(1));
                self.live().all(|h| {
                    let (want, size) = if self.side[h] == 0 { (va, a) } else { (vb, b) };
                    Some(self.hosts[h].view) == want && self.hosts[h].view.0 == size
                })
            }
            Goal::Reconciled(host) => self.hosts[host].node.as_ref().is_some_and(|n| {
                let lock = n.lock_node();
                lock.is_serving() && lock.awaiting().is_empty()
            }),
        }
    }

    /// Runs until `goal` holds (checked after every event that may change
    /// it) or the step limit passes; returns how long it took.
    fn run_until(&mut self, goal: Goal) -> Option<Duration> {
        let start = self.now;
        let limit = start + self.cfg.step_limit;
        if self.done(goal) {
            return Some(Duration::ZERO);
        }
        while let Some((at, ev)) = self.queue.pop() {
            if at > limit {
                self.queue.push(at, ev);
                self.now = limit;
                return None;
            }
            self.now = at;
            let host = match &ev {
                Ev::Datagram { host, .. } | Ev::Timer { host } => *host,
            };
            let changed = self.step(ev);
            // A round ends without a view or a grant: watch its host.
            let touched = goal == Goal::Reconciled(host);
            if (changed || touched) && self.done(goal) {
                return Some(self.now - start);
            }
        }
        None
    }

    /// Runs every event up to `until`.
    fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        while let Some((at, ev)) = self.queue.pop() {
            if at > until {
                self.queue.push(at, ev);
                break;
            }
            self.now = at;
            self.step(ev);
        }
        self.now = until;
    }

    /// Handles one event; true if a view or a lock changed.
    fn step(&mut self, ev: Ev) -> bool {
        self.steps += 1;
        let host = match &ev {
            Ev::Datagram { host, .. } | Ev::Timer { host } => *host,
        };
        let now = self.now;
        let metered = self.round.as_ref().is_some_and(|r| r.host == host);
        let started = metered.then(thread_cpu);
        let h = &mut self.hosts[host];
        let Some(node) = h.node.as_mut() else { return false };
        match ev {
            Ev::Datagram { bytes, .. } => {
                if let Some(r) = self.round.as_mut().filter(|r| r.host == host) {
                    r.datagrams += 1;
                    r.bytes += bytes.len() as u64;
                    let ms = (now - r.since).as_millis() as usize;
                    if r.per_ms.len() <= ms {
                        r.per_ms.resize(ms + 1, 0);
                    }
                    r.per_ms[ms] += bytes.len() as u64;
                }
                node.handle_datagram(now, addr(host), &bytes);
            }
            Ev::Timer { .. } => {
                if h.armed.is_none_or(|t| t > now) {
                    return false;
                }
                h.armed = None;
                node.handle_timeout(now);
            }
        }
        let changed = self.drain(host);
        if let (Some(started), Some(r)) = (started, self.round.as_mut()) {
            r.cpu += thread_cpu().saturating_sub(started);
        }
        if changed && self.watched.is_some() && self.watched_out_at.is_none() && self.done(Goal::WatchedOut) {
            self.watched_out_at = Some(self.now);
        }
        changed
    }

    /// Sends what `host` produced, notes its views and grants, re-arms its
    /// timer. True if a view or a lock changed.
    fn drain(&mut self, host: usize) -> bool {
        let now = self.now;
        let watched = self.watched;
        let mut changed = false;
        let mut out = Vec::new();
        let h = &mut self.hosts[host];
        let Some(node) = h.node.as_mut() else { return false };
        while let Some(e) = node.poll_event() {
            match e {
                NodeEvent::View { view, .. } => {
                    h.view = (view.members.len(), view.digest());
                    h.lists_watched = watched.is_some_and(|w| view.contains(w));
                    changed = true;
                }
                NodeEvent::Lock(Event::Acquired { holds: 1, .. }) => {
                    h.held += 1;
                    changed = true;
                }
                NodeEvent::Lock(Event::Lost { .. }) => {
                    h.held = h.held.saturating_sub(1);
                    changed = true;
                }
                NodeEvent::KeyringChanged(_) => node.keyring_saved(now, Ok(())),
                _ => {}
            }
        }
        while let Some(d) = node.poll_transmit() {
            h.sent += 1;
            h.sent_bytes += d.1.len() as u64;
            out.push(d);
        }
        if let Some(t) = node.poll_timeout()
            && h.armed.is_none_or(|a| t < a)
        {
            h.armed = Some(t);
            self.queue.push(t.max(now), Ev::Timer { host });
        }
        for (to, bytes) in out {
            let Some(to) = host_of(to, self.cfg.nodes) else { continue };
            if self.side[to] != self.side[host] {
                continue;
            }
            for at in delivery_times(&mut self.rng, now, Faults::NONE) {
                self.queue.push(at, Ev::Datagram { host: to, bytes: bytes.clone() });
            }
        }
        changed
    }

    /// The views of the live nodes: how many distinct, their sizes.
    fn describe_views(&self) -> String {
        let views: std::collections::BTreeMap<(usize, u64), usize> =
            self.live().fold(std::collections::BTreeMap::new(), |mut m, h| {
                *m.entry(self.hosts[h].view).or_insert(0) += 1;
                m
            });
        let sizes: Vec<usize> = self.live().map(|h| self.hosts[h].view.0).collect();
        let mut largest: Vec<(usize, usize)> = views.iter().map(|((size, _), n)| (*n, *size)).collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        largest.truncate(5);
        format!(
            "{} distinct among {} nodes, sizes {}..{}; most shared (nodes, size): {largest:?}",
            views.len(),
            sizes.len(),
            sizes.iter().min().unwrap_or(&0),
            sizes.iter().max().unwrap_or(&0)
        )
    }

    /// Watches `host` leave every view (from now on, every view lists it).
    fn watch(&mut self, host: usize) {
        self.watched = self.hosts[host].node.as_ref().map(|n| n.id());
        self.watched_out_at = None;
        for h in self.live().collect::<Vec<_>>() {
            self.hosts[h].lists_watched = true;
        }
    }

    fn crash(&mut self, host: usize) {
        self.hosts[host].node = None;
        self.hosts[host].armed = None;
        self.hosts[host].held = 0;
    }

    fn idle(&mut self) -> (Rate, Rate) {
        self.run_for(self.cfg.quiet);
        let before: Vec<(u64, u64)> = self.hosts.iter().map(|h| (h.sent, h.sent_bytes)).collect();
        self.run_for(self.cfg.idle);
        let secs = self.cfg.idle.as_secs_f64();
        let per: Vec<(f64, f64)> = self
            .live()
            .map(|h| {
                let (d, b) = before[h];
                ((self.hosts[h].sent - d) as f64 / secs, (self.hosts[h].sent_bytes - b) as f64 / secs)
            })
            .collect();
        let n = per.len().max(1) as f64;
        let rate = |f: fn(&(f64, f64)) -> f64| Rate {
            mean: per.iter().map(f).sum::<f64>() / n,
            max: per.iter().map(f).fold(0.0, f64::max),
        };
        (rate(|p| p.0), rate(|p| p.1))
    }

    fn take_locks(&mut self) -> Option<Duration> {
        let now = self.now;
        for host in self.live().collect::<Vec<_>>() {
            let node = self.hosts[host].node.as_mut().expect("live");
            for i in 0..self.cfg.locks_per_node {
                let name = LockName::new(format!("h{host}-{i}")).expect("short name");
                let client = ClientId(1 + (i % 4) as u64);
                let _ = node.lock(now, client, name, Duration::from_secs(60));
            }
            self.drain(host);
        }
        self.run_until(Goal::LocksHeld)
    }

    fn reconcile(&mut self) -> Option<Reconciliation> {
        let old = self.live().next()?;
        let new = self.live().nth(1)?;
        let held_before = self.live().map(|h| self.hosts[h].held).sum();
        let crashed_at = self.now;
        let old_view = self.hosts[new].view;
        self.watch(old);
        self.crash(old);
        // The new coordinator's view without the old one.
        let mut guard = 0;
        while self.hosts[new].view == old_view {
            let (at, ev) = self.queue.pop()?;
            self.now = at;
            self.step(ev);
            guard += 1;
            if self.now > crashed_at + self.cfg.step_limit || guard > 100_000_000 {
                return None;
            }
        }
        let detection = self.now - crashed_at;
        self.round = Some(RoundMeter {
            host: new,
            cpu: Duration::ZERO,
            datagrams: 0,
            bytes: 0,
            per_ms: Vec::new(),
            since: self.now,
        });
        let round = self.run_until(Goal::Reconciled(new));
        let meter = self.round.take().expect("set above");
        let round = round?;
        let ended = self.now;
        // The members still installing the view: until the last has.
        let last_view = match self.watched_out_at {
            Some(at) => at,
            None => ended + self.run_until(Goal::WatchedOut)?,
        };
        self.watched = None;
        let reinstalled = self.hosts[new].node.as_ref()?.lock_node().table_stats().map_or(0, |s| s.held);
        Some(Reconciliation {
            held_before,
            reinstalled,
            detection,
            round,
            after_last_view: ended.saturating_sub(last_view),
            cpu: meter.cpu,
            datagrams_in: meter.datagrams,
            bytes_in: meter.bytes,
            peak_bytes_per_ms: meter.per_ms.iter().copied().max().unwrap_or(0),
        })
    }

    fn split_and_heal(&mut self) -> (Option<Duration>, Option<Duration>) {
        let half = self.cfg.nodes / 2;
        for h in 0..self.cfg.nodes {
            self.side[h] = u8::from(h >= half);
        }
        let split = self.run_until(Goal::Halves);
        if split.is_none() {
            return (None, None);
        }
        self.side.iter_mut().for_each(|s| *s = 0);
        (split, self.run_until(Goal::OneView))
    }
}

/// Runs one scale run.
pub fn run(cfg: ScaleConfig) -> ScaleReport {
    let started = Instant::now();
    let mut report = ScaleReport { seed: cfg.seed, nodes: cfg.nodes, ..ScaleReport::default() };
    let mut sim = Scale::new(cfg);
    sim.start_all();
    report.cold_start = sim.run_until(Goal::OneView);
    if report.cold_start.is_none() {
        report.missed_views = Some(sim.describe_views());
    }
    if report.cold_start.is_some() {
        (report.idle_datagrams, report.idle_bytes) = sim.idle();
        // A member in the middle of the list (neither coordinator nor seed).
        let victim = sim.cfg.nodes / 2;
        if sim.hosts[victim].node.is_some() {
            sim.watch(victim);
            sim.crash(victim);
            report.crash_out = sim.run_until(Goal::WatchedOut);
        }
        sim.watched = None;
        if report.crash_out.is_some() && sim.cfg.locks_per_node > 0 {
            report.locks_taken = sim.take_locks();
            if report.locks_taken.is_some() {
                report.reconciliation = sim.reconcile();
            }
        }
        if sim.run_until(Goal::OneView).is_some() {
            (report.split, report.heal) = sim.split_and_heal();
        }
    }
    report.steps = sim.steps;
    report.wall = started.elapsed();
    report
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// The worst figure of each step over several runs, and the targets.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Runs summarised.
    pub runs: usize,
    /// Every step of every run finished within its bound.
    pub complete: bool,
    /// The longest cold start.
    pub cold_start: Option<Duration>,
    /// The longest removal of a crashed member.
    pub crash_out: Option<Duration>,
    /// The longest reconciliation round after the view (simulated time
    /// plus the coordinator's CPU time, which the simulation does not
    /// count as time passing).
    pub reconciliation: Option<Duration>,
    /// The most held locks a round re-installed.
    pub locks: usize,
    /// The busiest node's idle bytes per second, and the mean.
    pub idle_bytes: Rate,
    /// The longest heal.
    pub heal: Option<Duration>,
}

/// One view of every node from a cold start, at most.
pub const TARGET_COLD_START: Duration = Duration::from_secs(5);
/// A crashed member out of every view, at most.
pub const TARGET_CRASH_OUT: Duration = Duration::from_secs(2);
/// Reconciliation after the view, at most.
pub const TARGET_RECONCILIATION: Duration = Duration::from_millis(300);
/// Idle gossip per node, bytes per second, at most.
pub const TARGET_IDLE_BYTES: f64 = 4096.0;

impl Summary {
    /// The worst of `reports`; a missed step makes its figure `None`.
    pub fn of(reports: &[ScaleReport]) -> Summary {
        let worst = |f: &dyn Fn(&ScaleReport) -> Option<Duration>| -> Option<Duration> {
            reports.iter().map(f).collect::<Option<Vec<_>>>()?.into_iter().max()
        };
        let complete = !reports.is_empty()
            && reports.iter().all(|r| {
                r.cold_start.is_some()
                    && r.crash_out.is_some()
                    && r.reconciliation.is_some()
                    && r.split.is_some()
                    && r.heal.is_some()
            });
        Summary {
            runs: reports.len(),
            complete,
            cold_start: worst(&|r| r.cold_start),
            crash_out: worst(&|r| r.crash_out),
            reconciliation: worst(&|r| r.reconciliation.map(|c| c.round + c.cpu)),
            locks: reports.iter().filter_map(|r| r.reconciliation.map(|c| c.reinstalled)).max().unwrap_or(0),
            idle_bytes: Rate {
                mean: reports.iter().map(|r| r.idle_bytes.mean).fold(0.0, f64::max),
                max: reports.iter().map(|r| r.idle_bytes.max).fold(0.0, f64::max),
            },
            heal: worst(&|r| r.heal),
        }
    }

    /// The targets, one line each, worst run first.
    pub fn lines(&self) -> Vec<String> {
        let verdict = |ok: bool| if ok { "[met ]" } else { "[MISS]" };
        let check = |what: &str, got: Option<Duration>, target: Duration| match got {
            Some(d) => format!(
                "  {} {what} {:.0} ms <= {:.0} ms",
                verdict(d <= target),
                d.as_secs_f64() * 1e3,
                target.as_secs_f64() * 1e3
            ),
            None => format!("  [MISS] {what}: a run did not finish this step"),
        };
        vec![
            format!("targets (worst of {} runs):", self.runs),
            check("cold start to one view", self.cold_start, TARGET_COLD_START),
            check("crashed member out of every view", self.crash_out, TARGET_CRASH_OUT),
            check(
                &format!("reconciliation of {} held locks after the view (simulated + CPU)", self.locks),
                self.reconciliation,
                TARGET_RECONCILIATION,
            ),
            format!(
                "  {} idle gossip per node {:.0} B/s mean, {:.0} B/s busiest <= {:.0} B/s (sealed datagrams)",
                verdict(self.idle_bytes.max <= TARGET_IDLE_BYTES),
                self.idle_bytes.mean,
                self.idle_bytes.max,
                TARGET_IDLE_BYTES
            ),
            match self.heal {
                Some(d) => {
                    format!("  heal of a split into halves to one view: {:.0} ms", d.as_secs_f64() * 1e3)
                }
                None => "  [MISS] heal: a run did not finish this step".to_string(),
            },
        ]
    }
}
