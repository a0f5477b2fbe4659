//! Nodes wired through an in-test queue of datagrams in simulated time.

use std::collections::BTreeMap;

use swimlock_lock::{Event, Failure};
use swimlock_wire::frame::MAX_DATAGRAM;
use swimlock_wire::lock::{LockMsg, UnlockRsp};
use swimlock_wire::{ClusterId, Token};

use super::seal::{Key, Keyring};
use super::*;

pub(super) const CLUSTER: &str = "test";

pub(super) fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7000 + i as u16))
}

pub(super) fn id(i: usize) -> NodeId {
    NodeId { epoch: 1_000 + i as u64, addr: addr(i) }
}

/// The cluster key of the tests.
pub(super) fn key() -> Key {
    Key::from_bytes([42; 32])
}

/// Sealed with [`key`], with a salt of its own per node and epoch.
pub(super) fn sealed(me: NodeId) -> Security {
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&me.epoch.to_le_bytes());
    salt[8..10].copy_from_slice(&me.addr.port().to_le_bytes());
    Security::Sealed { keyring: Keyring::new(key()), salt }
}

pub(super) fn config(i: usize) -> NodeConfig {
    NodeConfig {
        name: format!("n{i}"),
        cluster: CLUSTER.to_string(),
        seeds: vec![addr(0)],
        lock: swimlock_lock::Config::lan(i as u16 + 1),
        membership: swimlock_membership::Config::lan(),
        security: sealed(id(i)),
        join_timeout: crate::node::NodeConfig::JOIN_TIMEOUT,
    }
}

/// A datagram as it went over the network: sender index, receiver index
/// (`None` for an address no node has), bytes.
pub(super) type Captured = (usize, Option<usize>, Vec<u8>);

/// A few nodes and the datagrams in flight between them (1 ms one way).
/// Every datagram sent is also kept in `captured`.
pub(super) struct Net {
    pub now: Duration,
    pub nodes: Vec<Node>,
    pub ids: Vec<NodeId>,
    pub alive: Vec<bool>,
    pub events: Vec<Vec<NodeEvent>>,
    flight: BTreeMap<(Duration, u64), (usize, SocketAddr, Vec<u8>)>,
    seq: u64,
    pub captured: Vec<Captured>,
    insecure: bool,
}

impl Net {
    pub fn new(n: usize) -> Net {
        Net::with_security(n, false)
    }

    /// `n` nodes, sealed or all insecure.
    pub fn with_security(n: usize, insecure: bool) -> Net {
        let configure = |i: usize| {
            let mut c = config(i);
            if insecure {
                c.security = Security::Insecure;
            }
            c
        };
        let mut net = Net::unstarted((0..n).map(configure).collect());
        net.insecure = insecure;
        for i in 0..n {
            net.start(i);
        }
        net
    }

    /// Node `i` gets `configs[i]`; none is started.
    pub fn unstarted(configs: Vec<NodeConfig>) -> Net {
        let n = configs.len();
        Net {
            now: Duration::ZERO,
            nodes: configs
                .into_iter()
                .enumerate()
                .map(|(i, c)| Node::new(id(i), c, i as u64).unwrap())
                .collect(),
            ids: (0..n).map(id).collect(),
            alive: vec![true; n],
            events: vec![Vec::new(); n],
            flight: BTreeMap::new(),
            seq: 0,
            captured: Vec::new(),
            insecure: false,
        }
    }

    pub fn start(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].start(now);
        self.flush(i);
    }

    /// Adds and starts a node with identity `me`, which may share another
    /// node's address (then, as the socket bound last, it gets every
    /// datagram sent there while it runs).
    pub fn add(&mut self, me: NodeId, config: NodeConfig) -> usize {
        let mut config = config;
        config.security = if self.insecure { Security::Insecure } else { sealed(me) };
        self.nodes.push(Node::new(me, config, me.epoch).unwrap());
        self.ids.push(me);
        self.alive.push(true);
        self.events.push(Vec::new());
        let i = self.nodes.len() - 1;
        self.start(i);
        i
    }

    /// The live process that gets what is sent to `to`: the last one started
    /// there.
    fn receiver(&self, to: SocketAddr) -> Option<usize> {
        (0..self.nodes.len()).rev().find(|&j| self.ids[j].addr == to && self.alive[j])
    }

    pub fn flush(&mut self, i: usize) {
        let mut saves = 0;
        while let Some(event) = self.nodes[i].poll_event() {
            saves += usize::from(matches!(event, NodeEvent::KeyringChanged(_)));
            self.events[i].push(event);
        }
        for _ in 0..saves {
            self.nodes[i].keyring_saved(self.now, Ok(()));
        }
        if saves > 0 {
            return self.flush(i);
        }
        while let Some((to, datagram)) = self.nodes[i].poll_transmit() {
            self.seq += 1;
            let j = self.receiver(to);
            self.captured.push((i, j, datagram.clone()));
            self.flight.insert((self.now + Duration::from_millis(1), self.seq), (i, to, datagram));
        }
    }

    /// Hands `datagram` to node `to` now, as if it came from `source`.
    pub fn inject(&mut self, to: usize, source: SocketAddr, datagram: &[u8]) {
        let now = self.now;
        self.nodes[to].handle_datagram(now, source, datagram);
        self.flush(to);
    }

    /// Node `i` stops for good (kill -9): no input, no timers.
    pub fn crash(&mut self, i: usize) {
        self.alive[i] = false;
    }

    /// Replaces node `i` by a new process at the same address: a newer
    /// epoch and a fresh salt, same key.
    pub fn restart(&mut self, i: usize) {
        let me = NodeId { epoch: 1_000_000 + self.now.as_micros() as u64, addr: addr(i) };
        let mut c = config(i);
        c.security = if self.insecure { Security::Insecure } else { sealed(me) };
        self.nodes[i] = Node::new(me, c, 100 + i as u64).unwrap();
        self.ids[i] = me;
        self.alive[i] = true;
        self.events[i].clear();
        let now = self.now;
        self.nodes[i].start(now);
        self.flush(i);
    }

    /// Advances to the next datagram or timer and handles it.
    pub fn step(&mut self) {
        let live = |i: &usize| self.alive[*i];
        let timer = (0..self.nodes.len()).filter(live).filter_map(|i| self.nodes[i].poll_timeout()).min();
        let next = self.flight.keys().next().map(|k| k.0);
        let at = [timer, next].into_iter().flatten().min().expect("something to do");
        self.now = self.now.max(at);
        if next == Some(at) {
            let (_, (from, to, datagram)) = self.flight.pop_first().unwrap();
            if let Some(i) = self.receiver(to) {
                self.nodes[i].handle_datagram(self.now, self.ids[from].addr, &datagram);
                self.flush(i);
            }
        } else {
            for i in 0..self.nodes.len() {
                if self.alive[i] && self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                    self.flush(i);
                }
            }
        }
    }

    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) {
        let deadline = self.now + limit;
        while !done(self) {
            assert!(self.now < deadline, "condition not met within {limit:?}");
            self.step();
        }
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Every live node has the same view of every live node, and hands it
    /// to its lock machine.
    pub fn one_view(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.alive[i]).collect();
        let mut want: Vec<NodeId> = live.iter().map(|&i| self.ids[i]).collect();
        want.sort();
        live.iter().all(|&i| {
            let n = &self.nodes[i];
            n.membership().view().ids().eq(want.iter().copied())
                && n.lock_node().view().is_some_and(|v| v.members == want)
        })
    }

    pub fn acquired(&self, i: usize, req: ReqId) -> Option<Token> {
        self.events[i].iter().find_map(|e| match e {
            NodeEvent::Lock(Event::Acquired { req: r, token, .. }) if *r == req => Some(*token),
            _ => None,
        })
    }

    pub fn failed(&self, i: usize, req: ReqId) -> Option<Failure> {
        self.events[i].iter().find_map(|e| match e {
            NodeEvent::Lock(Event::Failed { req: r, reason, .. }) if *r == req => Some(*reason),
            _ => None,
        })
    }

    /// `lock` on node `i` for `client`; runs until granted.
    pub fn lock_now(&mut self, i: usize, client: u64, lock: &str) -> (ReqId, Token) {
        let now = self.now;
        let req = self.nodes[i].lock(now, ClientId(client), name(lock), Duration::from_secs(30));
        self.flush(i);
        self.run_until(Duration::from_secs(2), |n| n.acquired(i, req).is_some());
        (req, self.acquired(i, req).unwrap())
    }
}

pub(super) fn name(s: &str) -> LockName {
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
    // Opened as node 0 would (a throwaway copy of its keys).
    let mut receiver = Sealing::new(id(0), CLUSTER, sealed(id(0)));
    let mut scratch = Vec::new();
    let opened = receiver.open(&datagram, &mut scratch).expect("sealed for node 0");
    assert_eq!((opened.from, opened.kind), (id(1), Kind::Lock));
    let frame = frame::decode_lock(opened.body).unwrap();
    assert_eq!((frame.from, frame.to, frame.msgs.len()), (id(1), id(0), 4));
    assert!(frame.msgs.iter().all(|m| matches!(m, LockMsg::Unlock(_))));
}

#[test]
fn a_corked_node_holds_lock_messages_and_packs_them_when_uncorked() {
    let mut net = Net::new(2);
    net.run_until(Duration::from_secs(5), Net::one_view);
    net.run_until(Duration::from_secs(2), |n| n.nodes[0].lock_node().is_serving());
    let before = net.nodes[1].counters();
    net.nodes[1].set_corked(true);
    let mut reqs = Vec::new();
    for (client, lock) in [(1, "a"), (2, "b"), (3, "c")] {
        let now = net.now;
        reqs.push(net.nodes[1].lock(now, ClientId(client), name(lock), Duration::from_secs(2)));
        assert!(!net.nodes[1].has_transmits(), "held while corked");
    }
    assert_eq!(net.nodes[1].counters().lock_ops_out, before.lock_ops_out);
    // Three inputs, one datagram.
    net.nodes[1].set_corked(false);
    let (to, datagram) = net.nodes[1].poll_transmit().expect("requests sent");
    assert_eq!((to, net.nodes[1].poll_transmit()), (addr(0), None));
    assert_eq!(net.nodes[1].counters().lock_ops_out - before.lock_ops_out, 3);
    let mut receiver = Sealing::new(id(0), CLUSTER, sealed(id(0)));
    let mut scratch = Vec::new();
    let opened = receiver.open(&datagram, &mut scratch).expect("sealed for node 0");
    let frame = frame::decode_lock(opened.body).unwrap();
    assert_eq!(frame.msgs.len(), 3);
    assert!(frame.msgs.iter().all(|m| matches!(m, LockMsg::Lock(_))));
    // Delivered, they are granted; the answers (and any to retransmitted
    // copies) count as lock operations in.
    net.inject(0, addr(1), &datagram);
    net.run_until(Duration::from_secs(2), |n| reqs.iter().all(|r| n.acquired(1, *r).is_some()));
    assert!(net.nodes[1].counters().lock_ops_in - before.lock_ops_in >= 3);
}

/// A member that still addresses an earlier process at this node's address
/// is announced to, as a seed would be: after a restart with every seed out
/// of reach, it may be the only way in.
#[test]
fn a_member_addressing_an_earlier_process_here_is_announced_to() {
    let me = id(1);
    // Its only seed, addr(0), is held by nobody.
    let mut node = Node::new(me, config(1), 1).unwrap();
    let now = Duration::from_millis(10);
    node.start(now);
    while node.poll_transmit().is_some() {}
    let member = NodeId { epoch: 5, addr: addr(9) };
    let mut sealing = Sealing::new(member, CLUSTER, sealed(member));
    let earlier = NodeId { epoch: me.epoch - 1, ..me };
    let stale = sealing
        .seal(earlier, Kind::Gossip, |out| {
            out.extend_from_slice(b"for the earlier process");
            Ok(())
        })
        .unwrap();
    node.handle_datagram(now, addr(9), &stale);
    assert_eq!(node.counters().misaddressed, 1);
    let sent: Vec<_> = std::iter::from_fn(|| node.poll_transmit()).collect();
    let (_, announce) = sent.iter().find(|(to, _)| *to == addr(9)).expect("a datagram to the member");
    let mut scratch = Vec::new();
    let opened = sealing.open(announce, &mut scratch).expect("sealed for the member");
    assert_eq!((opened.from, opened.kind), (me, Kind::Gossip));
}

#[test]
fn garbage_foreign_misaddressed_and_spoofed_datagrams_are_counted_and_ignored() {
    let mut net = Net::new(2);
    net.run_until(Duration::from_secs(5), Net::one_view);
    let before = net.nodes[0].counters();
    let now = net.now;
    let cluster = ClusterId::from_name(CLUSTER);
    // An insider: holds the key, speaks from an address of its own.
    let insider_id = NodeId { epoch: 5, addr: addr(9) };
    let mut insider = Sealing::new(insider_id, CLUSTER, sealed(insider_id));
    let mut seal = |to: NodeId, kind: Kind, body: &[u8]| {
        insider
            .seal(to, kind, |out| {
                out.extend_from_slice(body);
                Ok(())
            })
            .unwrap()
    };
    let rsp = LockMsg::UnlockRsp(UnlockRsp { id: ReqId(1), term: 1 });
    let valid = LockFrame { from: insider_id, to: id(0), msgs: vec![rsp] };
    let mut body = Vec::new();
    frame::write_lock_body(&valid, &mut body).unwrap();
    let not_gossip = seal(id(0), Kind::Gossip, b"not gossip");
    let lock_garbage = seal(id(0), Kind::Lock, &[0xff; 40]);
    let good = seal(id(0), Kind::Lock, &body);
    let stale = seal(NodeId { epoch: 1, ..id(0) }, Kind::Lock, &body);
    let mut spoof_body = Vec::new();
    frame::write_lock_body(&LockFrame { from: id(1), ..valid.clone() }, &mut spoof_body).unwrap();
    let spoofed = seal(id(0), Kind::Lock, &spoof_body);
    let plain = frame::encode_lock(&valid, cluster).unwrap();
    let node = &mut net.nodes[0];

    for garbage in [&b""[..], b"SWLK", &[0xff; 100], &vec![0u8; MAX_DATAGRAM + 1], &not_gossip, &lock_garbage]
    {
        node.handle_datagram(now, addr(9), garbage);
    }
    assert_eq!(node.counters().decode_errors - before.decode_errors, 6);
    node.handle_datagram(now, addr(9), &good[..good.len() - 1]);
    node.handle_datagram(now, addr(9), &plain);
    assert_eq!(node.counters().unauthenticated - before.unauthenticated, 2);
    node.handle_datagram(now, addr(9), &frame::encode_lock(&valid, ClusterId::from_name("other")).unwrap());
    let other_cluster = frame::encode_gossip(insider_id, 0, b"x", ClusterId::from_name("other")).unwrap();
    node.handle_datagram(now, addr(9), &other_cluster);
    assert_eq!(node.counters().foreign_cluster - before.foreign_cluster, 2);
    node.handle_datagram(now, addr(9), &stale);
    assert_eq!(node.counters().misaddressed - before.misaddressed, 1);
    node.handle_datagram(now, addr(9), &spoofed);
    assert_eq!(node.counters().spoofed - before.spoofed, 1);
    node.handle_datagram(now, addr(9), &good);
    node.handle_datagram(now, addr(9), &good);
    assert_eq!(node.counters().replayed - before.replayed, 1);
    assert_eq!(node.counters().datagrams_in - before.datagrams_in, 14);

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

/// Runs keyring command `op` on node `i` and returns its report.
fn keyring(net: &mut Net, i: usize, op: swimlock_wire::admin::KeyringOp) -> KeyringReport {
    let now = net.now;
    let id = net.nodes[i].keyring_command(now, op, Duration::from_secs(2)).unwrap();
    net.flush(i);
    let done = |n: &Net| n.events[i].iter().any(|e| matches!(e, NodeEvent::Keyring(r) if r.id == id));
    net.run_until(Duration::from_secs(5), done);
    net.events[i]
        .iter()
        .find_map(|e| match e {
            NodeEvent::Keyring(r) if r.id == id => Some(r.clone()),
            _ => None,
        })
        .unwrap()
}

fn keys_of(net: &Net) -> Vec<(Vec<u32>, u32)> {
    net.nodes
        .iter()
        .map(|n| {
            let ring = n.keyring().unwrap();
            (ring.ids().iter().map(|k| k.0).collect(), ring.primary().0)
        })
        .collect()
}

#[test]
fn a_key_rotates_across_the_view_while_locks_keep_working() {
    use swimlock_wire::admin::{KeyringOp, KeyringResult};
    let mut net = Net::new(3);
    net.run_until(Duration::from_secs(5), Net::one_view);
    net.run_until(Duration::from_secs(2), |n| n.nodes[0].lock_node().is_serving());
    let (_, held) = net.lock_now(2, 1, "held-through-rotation");
    let views = net.events.iter().map(|e| e.iter().filter(|e| matches!(e, NodeEvent::View { .. })).count());
    let views_before: Vec<usize> = views.collect();
    let (old, new) = (key().id().0, Key::from_bytes([7; 32]).id().0);

    // `use` of a key nobody has is refused at once; nothing changes.
    let r = keyring(&mut net, 1, KeyringOp::Use { key_id: new });
    assert!(r.refused.as_deref().is_some_and(|w| w.contains("not installed")), "{r:?}");
    let r = keyring(&mut net, 1, KeyringOp::Remove { key_id: old });
    assert!(r.refused.is_some(), "the primary cannot be removed");

    let r = keyring(&mut net, 1, KeyringOp::Install { key: [7; 32] });
    assert_eq!((r.answers.len(), r.missing.len(), r.refused.clone()), (3, 0, None));
    let both = if old < new { vec![old, new] } else { vec![new, old] };
    assert!(r.answers.values().all(|a| *a == KeyringResult::Keys { keys: both.clone(), primary: old }));
    net.lock_now(0, 2, "during-install");

    let r = keyring(&mut net, 1, KeyringOp::Use { key_id: new });
    assert_eq!(r.refused, None);
    assert!(keys_of(&net).iter().all(|(keys, primary)| *keys == both && *primary == new));
    net.lock_now(1, 2, "after-use");

    let r = keyring(&mut net, 2, KeyringOp::Remove { key_id: old });
    assert_eq!(r.refused, None);
    assert!(keys_of(&net).iter().all(|(keys, primary)| *keys == vec![new] && *primary == new));
    net.lock_now(2, 2, "after-remove");
    let r = keyring(&mut net, 0, KeyringOp::List);
    assert_eq!(r.answers.len(), 3);

    // Every node saved each change before answering for it (3 each).
    for events in &net.events {
        assert_eq!(events.iter().filter(|e| matches!(e, NodeEvent::KeyringChanged(_))).count(), 3);
    }
    let views = net.events.iter().map(|e| e.iter().filter(|e| matches!(e, NodeEvent::View { .. })).count());
    assert_eq!(views.collect::<Vec<_>>(), views_before, "no view changed");
    assert_eq!(
        net.nodes[2]
            .lock_node()
            .held()
            .iter()
            .find(|h| h.name.as_str() == "held-through-rotation")
            .unwrap()
            .token,
        held
    );
    assert!(net.events.iter().flatten().all(|e| !matches!(e, NodeEvent::Lock(Event::Lost { .. }))));
}

#[test]
fn use_is_refused_while_a_member_lacks_the_key_and_remove_while_one_sends_with_it() {
    use swimlock_wire::admin::KeyringOp;
    let mut net = Net::new(3);
    net.run_until(Duration::from_secs(5), Net::one_view);
    let new = Key::from_bytes([8; 32]);
    // Only nodes 0 and 1 get the new key (node 2 is cut off meanwhile).
    for i in 0..2 {
        net.nodes[i].sealing.keyring_mut().unwrap().install(new.clone()).unwrap();
    }
    let r = keyring(&mut net, 0, KeyringOp::Use { key_id: new.id().0 });
    let why = r.refused.clone().unwrap();
    assert!(why.contains(&net.ids[2].to_string()) && why.contains("not installed"), "{why}");
    assert!(keys_of(&net).iter().all(|(_, primary)| *primary == key().id().0), "nothing changed");

    // Node 1 still sends with the old key: it cannot go.
    net.nodes[2].sealing.keyring_mut().unwrap().install(new.clone()).unwrap();
    for i in [0, 2] {
        net.nodes[i].sealing.keyring_mut().unwrap().use_key(new.id()).unwrap();
    }
    net.run_for(Duration::from_millis(500));
    let r = keyring(&mut net, 0, KeyringOp::Remove { key_id: key().id().0 });
    let why = r.refused.clone().unwrap();
    assert!(why.contains(&net.ids[1].to_string()) && why.contains("still the primary"), "{why}");
    assert!(net.nodes.iter().all(|n| n.keyring().unwrap().len() == 2));
    assert!(net.one_view());
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

    net.crash(0);
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
    net.crash(twin);
    let superseded =
        |n: &Net| n.events[1].iter().filter(|e| matches!(e, NodeEvent::Superseded { .. })).count();
    net.run_until(Duration::from_secs(5), |n| superseded(n) > 0);
    assert!(net.events[1].contains(&NodeEvent::Superseded { by: newer }));
    net.run_for(Duration::from_secs(1));
    assert_eq!(superseded(&net), 1, "reported once");
    assert_eq!(net.nodes[1].membership().superseded_by(), Some(newer));
}

/// A node paused while it joins (its join timeout passes while it is
/// stopped) reads what the seed sent meanwhile before it gives up on the
/// seed: it joins instead of forming a group of its own (simulator seed
/// 2123, where such a node granted a lock another member held).
#[test]
fn a_node_paused_while_joining_reads_the_seeds_answer_before_giving_up() {
    let mut net = Net::new(2);
    // Node 1 stops at once; what the seed sends it waits in its socket.
    net.alive[1] = false;
    let paused_from = net.captured.len();
    net.run_for(NodeConfig::JOIN_TIMEOUT + Duration::from_secs(1));
    let queued: Vec<Vec<u8>> = net.captured[paused_from..]
        .iter()
        // (No live node has its address while it is stopped.)
        .filter(|(from, to, _)| *from == 0 && to.is_none())
        .map(|(_, _, d)| d.clone())
        .collect();
    assert!(!queued.is_empty(), "the seed answered the paused node");
    // Resumed: its overdue timers fire first, then the queued datagrams.
    net.alive[1] = true;
    let now = net.now;
    net.nodes[1].handle_timeout(now);
    net.flush(1);
    for d in &queued {
        net.inject(1, addr(0), d);
    }
    net.run_until(Duration::from_secs(5), Net::one_view);
    let gave_up = net.events[1].iter().any(|e| matches!(e, NodeEvent::JoinTimedOut));
    assert!(!gave_up, "the node formed a group of its own though the seed had answered");
}
