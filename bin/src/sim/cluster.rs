//! A scripted cluster of node cores (real membership, real lock machine) on
//! a simulated network, for scenario tests that act step by step: crash
//! this node, cut these two sides, lock here, then wait for a condition in
//! simulated time.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swimlock_lock::{Config, Event};
use swimlock_wire::{ClientId, LockName, NodeId, ReqId};

use super::net::Queue;
use crate::node::{Node, NodeConfig, NodeEvent};

/// One event a node reported, with when.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Simulated time.
    pub at: Duration,
    /// Which node.
    pub node: usize,
    /// What.
    pub event: NodeEvent,
}

#[derive(Debug)]
enum Ev {
    Datagram { to: usize, from: usize, bytes: Vec<u8> },
    Timer { node: usize },
}

/// The cluster: node `i` listens on 10.0.0.(i+1):7946 of the simulated
/// network; all nodes use node 0 as their seed.
pub struct Cluster {
    nodes: Vec<Option<Node>>,
    paused_until: Vec<Duration>,
    armed: Vec<Option<Duration>>,
    cut: BTreeSet<(usize, usize)>,
    queue: Queue<Ev>,
    rng: SmallRng,
    /// The run's seed (it fixes the cluster key).
    seed: u64,
    now: Duration,
    /// Every event, in order.
    pub seen: Vec<Seen>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)), 7946)
}

impl Cluster {
    /// `n` nodes with LAN defaults, started at time zero.
    pub fn new(n: usize, seed: u64) -> Cluster {
        let mut c = Cluster {
            nodes: Vec::new(),
            paused_until: vec![Duration::ZERO; n],
            armed: vec![None; n],
            cut: BTreeSet::new(),
            queue: Queue::default(),
            rng: SmallRng::seed_from_u64(seed),
            seed,
            now: Duration::ZERO,
            seen: Vec::new(),
        };
        for i in 0..n {
            let node = c.boot(i);
            c.nodes.push(Some(node));
        }
        for i in 0..n {
            c.after(i);
        }
        c
    }

    fn boot(&mut self, i: usize) -> Node {
        let id = NodeId { epoch: self.now.as_micros() as u64 + 1, addr: addr(i) };
        let rng_seed = self.rng.random();
        let config = NodeConfig {
            name: format!("n{i}"),
            cluster: "scenario".to_string(),
            seeds: if i == 0 { Vec::new() } else { vec![addr(0)] },
            lock: Config::lan(i as u16 + 1),
            membership: swimlock_membership::Config::lan(),
            join_timeout: crate::node::NodeConfig::JOIN_TIMEOUT,
            security: super::sealed(self.seed, rng_seed),
        };
        let mut node = Node::new(id, config, rng_seed).expect("valid settings");
        node.start(self.now);
        node
    }

    /// Simulated time now.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Node `i`, if running.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes[i].as_ref()
    }

    /// Stops node `i` for good (kill -9).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        self.armed[i] = None;
    }

    /// Node `i` neither runs timers nor reads datagrams until `now + dur`
    /// (datagrams sent to it meanwhile are lost), like a stopped process.
    pub fn pause(&mut self, i: usize, dur: Duration) {
        self.paused_until[i] = self.now + dur;
        self.queue.push(self.now + dur, Ev::Timer { node: i });
    }

    /// Cuts every link between `a` and `b` (both directions).
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// `lock` on node `i`.
    pub fn lock(&mut self, i: usize, client: u64, name: &str, timeout: Duration) -> ReqId {
        let name = LockName::new(name).expect("valid name");
        let now = self.now;
        let req = self.nodes[i].as_mut().expect("running").lock(now, ClientId(client), name, timeout);
        self.after(i);
        req
    }

    /// `unlock` on node `i`.
    pub fn unlock(&mut self, i: usize, client: u64, name: &str) {
        let name = LockName::new(name).expect("valid name");
        let now = self.now;
        let _ = self.nodes[i].as_mut().expect("running").unlock(now, ClientId(client), &name);
        self.after(i);
    }

    fn after(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else { return };
        // Events first: a keyring to save holds the node's answers, which
        // `keyring_saved` releases (the node keeps its keyring in memory).
        loop {
            let mut saves = 0;
            while let Some(event) = node.poll_event() {
                saves += usize::from(matches!(event, NodeEvent::KeyringChanged(_)));
                self.seen.push(Seen { at: self.now, node: i, event });
            }
            if saves == 0 {
                break;
            }
            for _ in 0..saves {
                node.keyring_saved(self.now, Ok(()));
            }
        }
        let mut out = Vec::new();
        while let Some(d) = node.poll_transmit() {
            out.push(d);
        }
        let next = node.poll_timeout();
        for (to, bytes) in out {
            let Some(j) = (0..self.nodes.len()).find(|&j| addr(j) == to) else { continue };
            if self.cut.contains(&(i, j)) {
                continue;
            }
            let at = self.now + Duration::from_micros(self.rng.random_range(500..3_000));
            self.queue.push(at, Ev::Datagram { to: j, from: i, bytes });
        }
        if let Some(t) = next
            && self.armed[i].is_none_or(|a| t < a)
        {
            self.armed[i] = Some(t);
            self.queue.push(t.max(self.now), Ev::Timer { node: i });
        }
    }

    fn step(&mut self) -> bool {
        let Some((at, ev)) = self.queue.pop() else { return false };
        self.now = at;
        match ev {
            Ev::Datagram { to, from, bytes } => {
                if self.paused_until[to] > at || self.cut.contains(&(from, to)) {
                    return true;
                }
                if let Some(node) = self.nodes[to].as_mut() {
                    node.handle_datagram(at, addr(from), &bytes);
                    self.after(to);
                }
            }
            Ev::Timer { node } => {
                if self.paused_until[node] > at || self.armed[node].is_some_and(|t| t > at) {
                    return true;
                }
                self.armed[node] = None;
                if let Some(n) = self.nodes[node].as_mut() {
                    n.handle_timeout(at);
                    self.after(node);
                }
            }
        }
        true
    }

    /// Runs until `cond` holds or `limit` of simulated time has passed;
    /// returns how long it took, or `None` at the limit.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Cluster) -> bool) -> Option<Duration> {
        let start = self.now;
        let end = start + limit;
        loop {
            if cond(self) {
                return Some(self.now - start);
            }
            if self.now > end || !self.step() {
                return None;
            }
        }
    }

    /// Runs for `dur` of simulated time.
    pub fn run_for(&mut self, dur: Duration) {
        let _ = self.run_until(dur, |_| false);
    }

    /// Running nodes whose views list exactly the running `members`.
    pub fn agree(&self, members: &[usize]) -> bool {
        let want: BTreeSet<NodeId> = members.iter().filter_map(|&i| self.node(i)).map(Node::id).collect();
        members.iter().all(|&i| {
            self.node(i).is_some_and(|n| {
                let got: BTreeSet<NodeId> = n.membership().view().members.iter().map(|m| m.id).collect();
                got == want
            })
        })
    }

    /// The coordinator node `i`'s view names.
    pub fn coordinator_of(&self, i: usize) -> Option<NodeId> {
        self.node(i).and_then(|n| n.lock_node().coordinator())
    }

    /// The token of the first grant to `client` of `name` on node `i` at or
    /// after `since`.
    pub fn granted(&self, i: usize, client: u64, name: &str, since: Duration) -> Option<(Duration, u64)> {
        self.seen.iter().find_map(|s| match &s.event {
            NodeEvent::Lock(Event::Acquired { client: c, name: n, token, .. })
                if s.node == i && s.at >= since && c.0 == client && n.as_str() == name =>
            {
                Some((s.at, token.0))
            }
            _ => None,
        })
    }

    /// When node `i` reported lock request `req` acquired.
    pub fn acquired(&self, i: usize, req: ReqId) -> Option<Duration> {
        self.seen.iter().find_map(|s| match &s.event {
            NodeEvent::Lock(Event::Acquired { req: r, .. }) if s.node == i && *r == req => Some(s.at),
            _ => None,
        })
    }
}
