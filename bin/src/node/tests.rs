//! Nodes wired through an in-test queue of datagrams in simulated time.

use std::collections::BTreeMap;

use swimlock_lock::{Event, Failure};
use swimlock_wire::Token;
use swimlock_wire::lock::{LockMsg, UnlockRsp};

use super::*;

const CLUSTER: &str = "test";

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7000 + i as u16))
}

fn id(i: usize) -> NodeId {
    NodeId { epoch: 1_000 + i as u64, addr: addr(i) }
}

fn config(i: usize) -> NodeConfig {
    NodeConfig {
        name: format!("n{i}"),
        cluster: ClusterId::from_name(CLUSTER),
        seeds: vec![addr(0)],
        lock: swimlock_lock::Config::lan(i as u16 + 1),
        membership: swimlock_membership::Config::lan(),
        join_timeout: crate::node::NodeConfig::JOIN_TIMEOUT,
    }
}

/// A few nodes and the datagrams in flight between them (1 ms one way).
struct Net {
    now: Duration,
    nodes: Vec<Node>,
    events: Vec<Vec<NodeEvent>>,
    flight: BTreeMap<(Duration, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    /// Nodes that stopped for good: no timers, datagrams to them are lost.
    crashed: std::collections::BTreeSet<usize>,
}

impl Net {
    fn new(n: usize) -> Net {
        let mut net = Net::unstarted((0..n).map(config).collect());
        for i in 0..n {
            net.start(i);
        }
        net
    }

    /// Node `i` gets `configs[i]`; none is started.
    fn unstarted(configs: Vec<NodeConfig>) -> Net {
        let n = configs.len();
        Net {
            now: Duration::ZERO,
            nodes: configs
                .into_iter()
                .enumerate()
                .map(|(i, c)| Node::new(id(i), c, i as u64).unwrap())
                .collect(),
            events: vec![Vec::new(); n],
            flight: BTreeMap::new(),
            seq: 0,
            crashed: Default::default(),
        }
    }

    fn start(&mut self, i: usize) {
        self.nodes[i].start(self.now);
        self.flush(i);
    }

    /// Adds and starts a node with identity `me`, which may share another
    /// node's address (then, as the socket bound last, it gets every
    /// datagram sent there while it runs).
    fn add(&mut self, me: NodeId, config: NodeConfig) -> usize {
        self.nodes.push(Node::new(me, config, me.epoch).unwrap());
        self.events.push(Vec::new());
        let i = self.nodes.len() - 1;
        self.start(i);
        i
    }

    fn flush(&mut self, i: usize) {
        while let Some((to, datagram)) = self.nodes[i].poll_transmit() {
            self.seq += 1;
            let from = self.nodes[i].id().addr;
            self.flight.insert((self.now + Duration::from_millis(1), self.seq), (from, to, datagram));
        }
        while let Some(event) = self.nodes[i].poll_event() {
            self.events[i].push(event);
        }
    }

    /// When the next datagram arrives or timer fires.
    fn next_at(&self) -> Option<Duration> {
        let live = |i: &usize| !self.crashed.contains(i);
        let timer = (0..self.nodes.len()).filter(live).filter_map(|i| self.nodes[i].poll_timeout()).min();
        let next = self.flight.keys().next().map(|k| k.0);
        [timer, next].into_iter().flatten().min()
    }

    /// Advances to the next datagram or timer and handles it.
    fn step(&mut self) {
        let next = self.flight.keys().next().map(|k| k.0);
        let at = self.next_at().expect("something to do");
        self.now = self.now.max(at);
        if next == Some(at) {
            let (_, (from, to, datagram)) = self.flight.pop_first().unwrap();
            let receiver = (0..self.nodes.len())
                .rev()
                .find(|&i| self.nodes[i].id().addr == to && !self.crashed.contains(&i));
            if let Some(i) = receiver {
                self.nodes[i].handle_datagram(self.now, from, &datagram);
                self.flush(i);
            }
        } else {
            for i in 0..self.nodes.len() {
                if !self.crashed.contains(&i) && self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                    self.flush(i);
                }
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.next_at().is_some_and(|t| t <= end) {
            self.step();
        }
        self.now = end;
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) {
        let deadline = self.now + limit;
        while !done(self) {
            assert!(self.now < deadline, "condition not met within {limit:?}");
            self.step();
        }
    }

    fn one_view(&self) -> bool {
        let digest = self.nodes[0].membership().view().digest();
        self.nodes.iter().all(|n| {
            n.membership().view().members.len() == self.nodes.len()
                && n.membership().view().digest() == digest
                && n.lock_node().view().is_some_and(|v| v.members.len() == self.nodes.len())
        })
    }

    fn acquired(&self, i: usize, req: ReqId) -> Option<Token> {
        self.events[i].iter().find_map(|e| match e {
            NodeEvent::Lock(Event::Acquired { req: r, token, .. }) if *r == req => Some(*token),
            _ => None,
        })
    }

    fn failed(&self, i: usize, req: ReqId) -> Option<Failure> {
        self.events[i].iter().find_map(|e| match e {
            NodeEvent::Lock(Event::Failed { req: r, reason, .. }) if *r == req => Some(*reason),
            _ => None,
        })
    }
}

fn name(s: &str) -> LockName {
    LockName::new(s).unwrap()
}

#[test]
fn three_nodes_form_one_view_and_grant_a_lock() {
    let mut net = Net::new(3);
    net.run_until(Duration::from_secs(5), Net::one_view);
    assert!(
        net.events[2].iter().any(|e| matches!(e, NodeEvent::View { view, .. } if view.members.len() == 3))
    );
    let coordinator = net.nodes[0].lock_node().coordinator();
    assert_eq!(coordinator, Some(id(0)), "the oldest member coordinates");
    net.run_until(Duration::from_secs(2), |n| n.nodes[0].lock_node().is_serving());

    let now = net.now;
    let req = net.nodes[2].lock(now, ClientId(1), name("orders"), Duration::from_secs(2));
    net.flush(2);
    net.run_until(Duration::from_secs(2), |n| n.acquired(2, req).is_some());
    let token = net.acquired(2, req).unwrap();
    assert_eq!(token.tag(), 1, "granted by the coordinator, node 0 (tag 1)");
    assert_eq!(net.nodes[0].lock_node().table().len(), 1);

    let now = net.now;
    let busy = net.nodes[1].try_lock(now, ClientId(1), name("orders"));
    net.flush(1);
    net.run_until(Duration::from_secs(3), |n| n.failed(1, busy).is_some());
    assert_eq!(net.failed(1, busy), Some(Failure::Busy));
    assert!(net.nodes[2].counters().datagrams_in > 0 && net.nodes[2].counters().datagrams_out > 0);
}

#[test]
fn messages_of_one_input_to_one_peer_share_a_datagram() {
    let mut net = Net::new(2);
    net.run_until(Duration::from_secs(5), Net::one_view);
    net.run_until(Duration::from_secs(2), |n| n.nodes[0].lock_node().is_serving());
    let mut reqs = Vec::new();
    for lock in ["a", "b", "c", "d"] {
        let now = net.now;
        reqs.push(net.nodes[1].lock(now, ClientId(7), name(lock), Duration::from_secs(2)));
        net.flush(1);
    }
    net.run_until(Duration::from_secs(2), |n| reqs.iter().all(|r| n.acquired(1, *r).is_some()));

    // One input (the client goes away) releases four locks: one datagram.
    net.nodes[1].release_client(net.now, ClientId(7));
    let (to, datagram) = net.nodes[1].poll_transmit().expect("unlocks sent");
    assert_eq!(to, addr(0));
    assert_eq!(net.nodes[1].poll_transmit(), None);
    let (_, body) = frame::split_frame(&datagram, ClusterId::from_name(CLUSTER)).unwrap();
    let frame = frame::decode_lock(body).unwrap();
    assert_eq!((frame.from, frame.to, frame.msgs.len()), (id(1), id(0), 4));
    assert!(frame.msgs.iter().all(|m| matches!(m, LockMsg::Unlock(_))));
}

#[test]
fn garbage_foreign_and_misaddressed_datagrams_are_counted_and_ignored() {
    let mut net = Net::new(2);
    net.run_until(Duration::from_secs(5), Net::one_view);
    let before = net.nodes[0].counters();
    let now = net.now;
    let cluster = ClusterId::from_name(CLUSTER);
    let node = &mut net.nodes[0];

    node.handle_datagram(now, addr(9), b"");
    node.handle_datagram(now, addr(9), b"SWLK");
    node.handle_datagram(now, addr(9), &[0xff; 100]);
    node.handle_datagram(now, addr(9), &vec![0u8; frame::MAX_DATAGRAM + 1]);
    let mut bad_kind = frame::encode_gossip(b"x", cluster).unwrap();
    bad_kind[5] = 99;
    node.handle_datagram(now, addr(9), &bad_kind);
    node.handle_datagram(now, addr(9), &frame::encode_gossip(b"not gossip", cluster).unwrap());
    let mut lock_garbage = frame::encode_gossip(&[0xff; 40], cluster).unwrap();
    lock_garbage[5] = Kind::Lock as u8;
    node.handle_datagram(now, addr(9), &lock_garbage);
    let rsp = LockMsg::UnlockRsp(UnlockRsp { id: ReqId(1), term: 1 });
    let valid = LockFrame { from: id(1), to: id(0), msgs: vec![rsp] };
    let good = frame::encode_lock(&valid, cluster).unwrap();
    node.handle_datagram(now, addr(9), &good[..good.len() - 1]);
    assert_eq!(node.counters().decode_errors - before.decode_errors, 8);

    node.handle_datagram(now, addr(9), &frame::encode_lock(&valid, ClusterId::from_name("other")).unwrap());
    node.handle_datagram(now, addr(9), &frame::encode_gossip(b"x", ClusterId::from_name("other")).unwrap());
    assert_eq!(node.counters().foreign_cluster - before.foreign_cluster, 2);

    let restarted = NodeId { epoch: 1, ..id(0) };
    let stale = LockFrame { to: restarted, ..valid };
    node.handle_datagram(now, addr(9), &frame::encode_lock(&stale, cluster).unwrap());
    assert_eq!(node.counters().misaddressed - before.misaddressed, 1);
    assert_eq!(node.counters().datagrams_in - before.datagrams_in, 11);

    // Still serving: a lock from the other member is granted.
    net.flush(0);
    net.run_until(Duration::from_secs(2), |n| n.nodes[0].lock_node().is_serving());
    let now = net.now;
    let req = net.nodes[1].lock(now, ClientId(1), name("x"), Duration::from_secs(2));
    net.flush(1);
    net.run_until(Duration::from_secs(2), |n| n.acquired(1, req).is_some());
}

#[test]
fn bad_settings_are_refused_by_field() {
    let mut c = config(0);
    c.lock.retransmit_initial = Duration::ZERO;
    assert_eq!(Node::new(id(0), c, 1).unwrap_err().field, "lock.retransmit_initial");
    let mut c = config(0);
    c.membership.probe_rtt = c.membership.probe_period;
    assert_eq!(Node::new(id(0), c, 1).unwrap_err().field, "membership.probe_rtt");
    let mut c = config(0);
    c.name = "x".repeat(1000);
    let e = Node::new(id(0), c, 1).unwrap_err();
    assert_eq!(e.field, "name");
    assert!(e.to_string().contains("`name`"));
}

/// The lock machine's tag is never one an older member of the view it acts
/// on has.
fn assert_no_older_twin(net: &Net) {
    for node in &net.nodes {
        let tag = node.lock_node().config().tag;
        assert_eq!(tag, node.membership().tag());
        let view = node.membership().view();
        let older = view.members.iter().find(|m| m.id < node.id() && m.tag == tag);
        assert!(older.is_none(), "{} acts under tag {tag} of older member {older:?}", node.id());
    }
}

fn tag_changes(net: &Net, i: usize) -> Vec<u16> {
    net.events[i]
        .iter()
        .filter_map(|e| match e {
            NodeEvent::TagChanged { tag } => Some(*tag),
            _ => None,
        })
        .collect()
}

/// Two nodes configured with one tag. The younger (node 1) starts first
/// and coordinates alone under it; when the older one arrives, the younger
/// takes another tag in the same view install that names the older one, so
/// it never coordinates, nor holds its tag, beside it. After the older
/// crashes, the younger coordinates again under its new tag.
#[test]
fn the_younger_of_two_nodes_with_one_tag_changes_it_within_one_view() {
    let mut configs: Vec<NodeConfig> = (0..2).map(config).collect();
    for c in &mut configs {
        c.lock.tag = 5;
    }
    let mut net = Net::unstarted(configs);
    net.start(1);
    let now = net.now;
    let req = net.nodes[1].lock(now, ClientId(1), name("early"), Duration::from_secs(5));
    net.flush(1);
    // Its seed is down: it forms a group alone once the join timeout passed.
    net.run_until(Duration::from_secs(4), |n| n.acquired(1, req).is_some());
    assert_eq!(net.acquired(1, req).unwrap().tag(), 5, "alone, node 1 grants under tag 5");

    net.start(0);
    let deadline = net.now + Duration::from_secs(5);
    while !net.one_view() {
        assert!(net.now < deadline, "no common view");
        net.step();
        assert_no_older_twin(&net);
    }
    let changed = tag_changes(&net, 1);
    assert_eq!(changed.len(), 1, "{changed:?}");
    let new = changed[0];
    assert_ne!(new, 5);
    assert!(tag_changes(&net, 0).is_empty(), "the older node keeps its tag");
    // The change came with the first view that named node 0, before it.
    let first_pair = net.events[1]
        .iter()
        .position(|e| matches!(e, NodeEvent::View { view, .. } if view.contains(id(0))))
        .unwrap();
    assert!(matches!(net.events[1][first_pair - 1], NodeEvent::TagChanged { tag } if tag == new));
    let NodeEvent::View { view, .. } = &net.events[1][first_pair] else { unreachable!() };
    assert_eq!(view.members.iter().map(|m| m.tag).collect::<Vec<_>>(), vec![5, new]);
    // Node 0 sees the new tag too.
    net.run_until(Duration::from_secs(2), |n| n.nodes[0].membership().view().members[1].tag == new);

    net.crashed.insert(0);
    net.run_until(Duration::from_secs(3), |n| n.nodes[1].lock_node().is_serving());
    let now = net.now;
    let req = net.nodes[1].lock(now, ClientId(1), name("late"), Duration::from_secs(5));
    net.flush(1);
    // Fresh grants wait the lock-delay after node 0, which had just become
    // coordinator, left.
    net.run_until(Duration::from_secs(4), |n| n.acquired(1, req).is_some());
    assert_eq!(net.acquired(1, req).unwrap().tag(), new, "alone again, under its new tag");
}

/// A second process on node 1's address with a newer start stamp, for a
/// second, then it crashes: node 1 hears the cluster again, finds its
/// address taken and reports it once.
#[test]
fn a_node_whose_address_a_newer_process_took_reports_it() {
    let mut net = Net::new(2);
    net.run_until(Duration::from_secs(5), Net::one_view);
    let newer = NodeId { epoch: 9_000, addr: addr(1) };
    let twin = net.add(newer, config(1));
    net.run_for(Duration::from_secs(1));
    net.crashed.insert(twin);
    let superseded =
        |n: &Net| n.events[1].iter().filter(|e| matches!(e, NodeEvent::Superseded { .. })).count();
    net.run_until(Duration::from_secs(5), |n| superseded(n) > 0);
    assert!(net.events[1].contains(&NodeEvent::Superseded { by: newer }));
    net.run_for(Duration::from_secs(1));
    assert_eq!(superseded(&net), 1, "reported once");
    assert_eq!(net.nodes[1].membership().superseded_by(), Some(newer));
}
