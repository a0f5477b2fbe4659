//! A tiny deterministic network for `Membership` instances: one event queue
//! in simulated time, 1–3 ms delays and optional loss from a seeded RNG,
//! partitions as a set of cut pairs, crash and pause verbs, twins (a second
//! process on an address in use) and injected datagrams. No wall clock.

#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swimlock_membership::{Config, Event, Membership, View};
use swimlock_wire::NodeId;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn addr(i: usize) -> SocketAddr {
    let i = u16::try_from(i).expect("small cluster");
    SocketAddr::from(([10, 0, (i >> 8) as u8, (i & 0xff) as u8], 7000))
}

/// Epochs grow with the index, so node 0 is the oldest (the coordinator).
pub fn node_id(i: usize) -> NodeId {
    NodeId { epoch: 1_000 + i as u64, addr: addr(i) }
}

/// The tag node `i` starts with.
pub fn tag(i: usize) -> u16 {
    100 + i as u16
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Up,
    Crashed,
    Paused,
}

struct SimNode {
    m: Membership,
    addr: SocketAddr,
    state: State,
    /// Datagrams that arrived while paused (the socket buffer).
    /// With the sender, as the envelope would authenticate it.
    inbox: VecDeque<(NodeId, Vec<u8>)>,
    /// Datagrams this process sent.
    sent: u64,
}

struct Delivery {
    /// The destination address; which process gets it is decided on
    /// arrival (see [`Sim::receiver`]).
    to: SocketAddr,
    /// The sending process.
    from: usize,
    bytes: Vec<u8>,
}

/// One entry of the trace: when, which node, what it reported.
pub type TraceEntry = (Duration, usize, Event);

pub struct Sim {
    pub now: Duration,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    queue: BTreeMap<(Duration, u64), Delivery>,
    seq: u64,
    cuts: BTreeSet<(usize, usize)>,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Every event every node reported, in order.
    pub trace: Vec<TraceEntry>,
    /// Gossip datagrams sent so far.
    pub sent: u64,
    pub largest_payload: usize,
    /// When true, every payload sent is also kept in `captured`.
    pub capture: bool,
    /// With their sender.
    pub captured: Vec<(NodeId, Vec<u8>)>,
}

impl Sim {
    /// `n` nodes with LAN defaults, all seeded with node 0, none started.
    pub fn new(n: usize, seed: u64) -> Sim {
        Sim::with_config(n, seed, Config::lan())
    }

    pub fn with_config(n: usize, seed: u64, config: Config) -> Sim {
        let nodes = (0..n)
            .map(|i| SimNode {
                m: Membership::new(
                    node_id(i),
                    format!("node-{i}"),
                    tag(i),
                    config.clone(),
                    vec![addr(0)],
                    seed.wrapping_mul(1_000).wrapping_add(i as u64),
                )
                .expect("valid config"),
                addr: addr(i),
                state: State::Up,
                inbox: VecDeque::new(),
                sent: 0,
            })
            .collect();
        Sim {
            now: Duration::ZERO,
            rng: SmallRng::seed_from_u64(seed),
            nodes,
            queue: BTreeMap::new(),
            seq: 0,
            cuts: BTreeSet::new(),
            loss: 0.0,
            trace: Vec::new(),
            sent: 0,
            largest_payload: 0,
            capture: false,
            captured: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Starts every node, each a few ms after the previous one.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            let at = self.now + ms(self.rng.random_range(0..5));
            self.run_until_time(at);
            self.nodes[i].m.start(self.now);
            self.flush(i);
        }
    }

    pub fn node(&self, i: usize) -> &Membership {
        &self.nodes[i].m
    }

    pub fn view(&self, i: usize) -> &View {
        self.nodes[i].m.view()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].state == State::Up
    }

    /// The node stops for good: no more input, no output.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].state = State::Crashed;
    }

    /// The process is stopped (like SIGSTOP): datagrams queue up.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].state = State::Paused;
    }

    /// Resumes a paused node: it sees its queued datagrams and overdue
    /// timers at once.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].state = State::Up;
        let now = self.now;
        self.nodes[i].m.handle_timeout(now);
        while let Some((from, bytes)) = self.nodes[i].inbox.pop_front() {
            let _ = self.nodes[i].m.handle_datagram(now, from, &bytes);
        }
        self.flush(i);
    }

    /// Replaces node `i` by a new process at the same address with a newer
    /// epoch (a restart), and starts it.
    pub fn restart(&mut self, i: usize, epoch: u64, config: Config) {
        let id = NodeId { epoch, addr: addr(i) };
        let mut m = Membership::new(id, format!("node-{i}"), tag(i), config, vec![addr(0)], epoch)
            .expect("valid config");
        m.start(self.now);
        self.nodes[i] = SimNode { m, addr: addr(i), state: State::Up, inbox: VecDeque::new(), sent: 0 };
        self.flush(i);
    }

    /// Starts a second process at node `i`'s address (as a second agent on
    /// a port bound with SO_REUSEADDR) with start stamp `epoch`, while node
    /// `i` keeps running. As on Linux, the process that bound last gets
    /// every datagram sent to the address while it runs. Returns its index.
    pub fn twin(&mut self, i: usize, epoch: u64) -> usize {
        let id = NodeId { epoch, addr: addr(i) };
        let mut m = Membership::new(id, format!("twin-{i}"), tag(i), Config::lan(), vec![addr(0)], epoch)
            .expect("valid config");
        m.start(self.now);
        self.nodes.push(SimNode { m, addr: addr(i), state: State::Up, inbox: VecDeque::new(), sent: 0 });
        let t = self.nodes.len() - 1;
        self.flush(t);
        t
    }

    /// Delivers `bytes` to node `i` now, as if sent by `from` (a forged or
    /// replayed datagram, sealed by a member that has the key); what it
    /// answers is sent as usual.
    pub fn inject(&mut self, i: usize, from: NodeId, bytes: &[u8]) {
        let now = self.now;
        let _ = self.nodes[i].m.handle_datagram(now, from, bytes);
        self.flush(i);
    }

    /// Node `i` changes its tag now.
    pub fn set_tag(&mut self, i: usize, tag: u16) {
        let now = self.now;
        self.nodes[i].m.set_tag(now, tag);
        self.flush(i);
    }

    /// Datagrams sent by node `i` so far.
    pub fn sent_by(&self, i: usize) -> u64 {
        self.nodes[i].sent
    }

    /// The process that gets a datagram sent to `to`: the one that started
    /// last among those at that address that have not crashed or left.
    fn receiver(&self, to: SocketAddr) -> Option<usize> {
        (0..self.nodes.len())
            .rev()
            .find(|&j| self.nodes[j].addr == to && self.nodes[j].state != State::Crashed)
    }

    /// Starts node `i` only (for staggered or late starts).
    pub fn start(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].m.start(now);
        self.flush(i);
    }

    /// Node `i` leaves gracefully; its farewell gossip is sent.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].m.leave(now);
        self.flush(i);
        self.nodes[i].state = State::Crashed;
    }

    /// Cuts every link between the two groups (both directions).
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cuts.insert((x.min(y), x.max(y)));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cuts.clear();
    }

    fn cut(&self, x: usize, y: usize) -> bool {
        self.cuts.contains(&(x.min(y), x.max(y)))
    }

    /// Sends what node `i` has to send and records its events.
    fn flush(&mut self, i: usize) {
        while let Some((to, bytes)) = self.nodes[i].m.poll_transmit() {
            let to = to.addr;
            self.sent += 1;
            self.nodes[i].sent += 1;
            self.largest_payload = self.largest_payload.max(bytes.len());
            if self.capture {
                self.captured.push((self.nodes[i].m.me(), bytes.clone()));
            }
            if !self.nodes.iter().any(|n| n.addr == to) {
                continue;
            }
            if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                continue;
            }
            let at = self.now + Duration::from_micros(self.rng.random_range(1_000..=3_000));
            self.seq += 1;
            self.queue.insert((at, self.seq), Delivery { to, from: i, bytes });
        }
        while let Some(event) = self.nodes[i].m.poll_event() {
            self.trace.push((self.now, i, event));
        }
    }

    /// Time of the next thing that happens, and whose timer it is (None for
    /// a datagram).
    fn next(&self) -> Option<(Duration, Option<usize>)> {
        let datagram = self.queue.keys().next().map(|(t, _)| (*t, None));
        let timer = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.state == State::Up)
            .filter_map(|(i, n)| n.m.poll_timeout().map(|t| (t.max(self.now), Some(i))))
            .min();
        match (datagram, timer) {
            (Some(d), Some(t)) => Some(if t.0 < d.0 { t } else { d }),
            (d, t) => d.or(t),
        }
    }

    /// Processes one thing if it happens no later than `limit`.
    fn step(&mut self, limit: Duration) -> bool {
        let Some((at, who)) = self.next() else {
            return false;
        };
        if at > limit {
            return false;
        }
        self.now = at;
        match who {
            Some(i) => {
                self.nodes[i].m.handle_timeout(at);
                self.flush(i);
            }
            None => {
                let (_, d) = self.queue.pop_first().expect("queue head exists");
                let Some(j) = self.receiver(d.to) else {
                    return true;
                };
                if self.cut(d.from, j) {
                    return true;
                }
                let from = self.nodes[d.from].m.me();
                match self.nodes[j].state {
                    State::Crashed => {}
                    State::Paused => self.nodes[j].inbox.push_back((from, d.bytes)),
                    State::Up => {
                        // Errors (e.g. from a node that left) are dropped, as
                        // the driver would.
                        let _ = self.nodes[j].m.handle_datagram(at, from, &d.bytes);
                        self.flush(j);
                    }
                }
            }
        }
        true
    }

    pub fn run_until_time(&mut self, t: Duration) {
        while self.step(t) {}
        self.now = self.now.max(t);
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until_time(t);
    }

    /// Runs until `cond` holds (checked after every step) or `max` passes.
    /// Returns how long it took.
    pub fn run_until(&mut self, max: Duration, mut cond: impl FnMut(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        let limit = start + max;
        loop {
            if cond(self) {
                return Some(self.now - start);
            }
            if !self.step(limit) {
                self.now = limit;
                return cond(self).then(|| self.now - start);
            }
        }
    }

    /// Every node of `group` has installed exactly the view `{group}`.
    pub fn agreed(&self, group: &[usize]) -> bool {
        let mut want: Vec<NodeId> = group.iter().map(|&i| node_id(i)).collect();
        want.sort();
        group.iter().all(|&i| self.view(i).ids().eq(want.iter().copied()))
    }

    /// Events reported by node `i` at or after `since`.
    pub fn events_since(&self, i: usize, since: Duration) -> Vec<&Event> {
        self.trace.iter().filter(|(t, n, _)| *n == i && *t >= since).map(|(_, _, e)| e).collect()
    }
}

pub fn range(a: usize, b: usize) -> Vec<usize> {
    (a..b).collect()
}
