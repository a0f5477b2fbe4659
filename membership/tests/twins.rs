//! One address, two identities: a second process on a member's address
//! (as a second agent on a port bound with SO_REUSEADDR), and forged
//! identity updates. Membership must settle on the newer identity within a
//! bounded time, on every node, and no node may send more than a small
//! multiple of the idle rate meanwhile (crate docs, "One address, two
//! identities" and "Bounded traffic").
//!
//! Before the fix, the twin that went away left its older sibling in a
//! loop of "you are down" and renewals at network speed: about 385
//! datagrams per node per second in this harness (1–3 ms delays; 20 at
//! idle), about 40,000 over loopback, for ever.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Sim, addr, ms, node_id, range};
use foca::{Codec, Header, Member, Message, PostcardCodec, State};
use serde::{Deserialize, Serialize};
use swimlock_wire::NodeId;

const SEEDS: std::ops::Range<u64> = 1..11;

/// Datagrams one node sends per second of simulated time in a settled
/// 5-node cluster with LAN defaults, measured by `idle_rate_is_what_the_bounds_assume`.
const IDLE: u64 = 20;
/// Bound on any node's datagrams in any one-second window, faults or not.
/// An ordinary join or heal already reaches 2–3.5 times the idle rate for a
/// second (a node with news gossips to 3 members every 50 ms).
const BOUND: u64 = 5 * IDLE;

/// The wire layout of the crate's gossiped identity, as an outsider would
/// write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WireIdent {
    addr: SocketAddr,
    epoch: u64,
    bump: u64,
    name: String,
    tag: u16,
}

impl foca::Identity for WireIdent {
    type Addr = SocketAddr;
    fn renew(&self) -> Option<Self> {
        None
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.epoch, self.bump) > (other.epoch, other.bump)
    }
}

fn ident(i: usize, epoch: u64, bump: u64) -> WireIdent {
    WireIdent { addr: addr(i), epoch, bump, name: format!("node-{i}"), tag: common::tag(i) }
}

/// The identity node `i` starts with.
fn first_ident(i: usize) -> WireIdent {
    ident(i, node_id(i).epoch, 0)
}

/// "`fake` is alive", sent by `fake` itself to `dst`: the 60-byte forged
/// identity update of the security issue.
/// The sender a forged identity's envelope must name (the envelope binds
/// the sender; only a member holding the key can forge at all).
fn key(id: &WireIdent) -> NodeId {
    NodeId { epoch: id.epoch, addr: id.addr }
}

fn forge(fake: &WireIdent, dst: WireIdent) -> Vec<u8> {
    let mut buf = Vec::new();
    let header = Header { src: fake.clone(), src_incarnation: 0, dst, message: Message::Gossip };
    PostcardCodec.encode_header(&header, &mut buf).unwrap();
    buf.extend_from_slice(&1u16.to_be_bytes());
    PostcardCodec.encode_member(&Member::new(fake.clone(), 0, State::Alive), &mut buf).unwrap();
    buf
}

/// Runs `d` in one-second windows; returns the most datagrams any one
/// process sent in any window.
fn busiest_second(sim: &mut Sim, d: Duration) -> u64 {
    let n = sim.len();
    let mut worst = 0;
    for _ in 0..d.as_secs() {
        let before: Vec<u64> = (0..n).map(|i| sim.sent_by(i)).collect();
        sim.run_for(ms(1_000));
        worst = (0..n).map(|i| sim.sent_by(i) - before[i]).max().unwrap_or(0).max(worst);
    }
    worst
}

fn converged(seed: u64) -> Sim {
    let mut sim = Sim::new(5, seed);
    sim.start_all();
    sim.run_until(ms(2_000), |s| s.agreed(&range(0, 5))).unwrap_or_else(|| panic!("seed {seed}: no view"));
    sim.run_for(ms(1_000));
    sim
}

/// Every node of `nodes` has installed exactly `want` (any order).
fn all_see(sim: &Sim, nodes: &[usize], want: &[NodeId]) -> bool {
    let mut want = want.to_vec();
    want.sort();
    nodes.iter().all(|&i| sim.view(i).ids().eq(want.iter().copied()))
}

fn quiet_afterwards(sim: &mut Sim, seed: u64, nodes: &[usize]) {
    let since = sim.now;
    sim.run_for(ms(5_000));
    for &i in nodes {
        let events = sim.events_since(i, since);
        assert!(events.is_empty(), "seed {seed}: node {i} kept changing views: {events:#?}");
    }
}

#[test]
fn idle_rate_is_what_the_bounds_assume() {
    for seed in SEEDS {
        let mut sim = converged(seed);
        let before: Vec<u64> = (0..5).map(|i| sim.sent_by(i)).collect();
        sim.run_for(ms(10_000));
        let per_node: Vec<u64> = (0..5).map(|i| (sim.sent_by(i) - before[i]) / 10).collect();
        assert!(per_node.iter().all(|&r| r <= IDLE), "seed {seed}: {per_node:?}");
        assert!(busiest_second(&mut sim, ms(5_000)) <= IDLE + IDLE / 2, "seed {seed}");
    }
}

/// A second process on node 2's address for 3 s (it gets every datagram
/// sent there, as the socket bound last does), then it stops. The older
/// process hears the cluster again and finds every node knows the newer
/// identity: it stands down, and every node agrees that node 2 is gone.
fn twin_goes_away(crash: bool) {
    let others = [0, 1, 3, 4];
    let rest: Vec<NodeId> = others.iter().map(|&i| node_id(i)).collect();
    let (mut settle, mut busiest) = (vec![], 0);
    for seed in SEEDS {
        let mut sim = converged(seed);
        let twin_epoch = 9_000;
        let t = sim.twin(2, twin_epoch);
        let mut worst = busiest_second(&mut sim, ms(3_000));
        if crash {
            sim.crash(t);
        } else {
            sim.leave(t);
        }
        let took = sim
            .run_until(ms(3_000), |s| {
                s.node(2).superseded_by().is_some() && all_see(s, &others, &rest)
            })
            .unwrap_or_else(|| {
                panic!(
                    "seed {seed}: not settled 3 s after the twin stopped: node 2 superseded by {:?}, views {:?}",
                    sim.node(2).superseded_by(),
                    (0..5).map(|i| sim.view(i).members.len()).collect::<Vec<_>>()
                )
            });
        assert_eq!(sim.node(2).superseded_by(), Some(NodeId { epoch: twin_epoch, addr: addr(2) }));
        assert_eq!(sim.node(2).poll_timeout(), None, "seed {seed}: a superseded node stays silent");
        settle.push(took);
        worst = worst.max(busiest_second(&mut sim, ms(10_000)));
        assert!(worst <= BOUND, "seed {seed}: a node sent {worst} datagrams in one second");
        busiest = busiest.max(worst);
        quiet_afterwards(&mut sim, seed, &others);
    }
    settle.sort();
    eprintln!(
        "twin stopped (crash: {crash}) to settled: p50 {:?}, max {:?}; busiest node-second {busiest} datagrams",
        settle[settle.len() / 2],
        settle[settle.len() - 1]
    );
}

#[test]
fn a_twin_that_leaves_leaves_its_address_to_nobody() {
    twin_goes_away(false);
}

#[test]
fn a_twin_that_crashes_leaves_its_address_to_nobody() {
    twin_goes_away(true);
}

/// The original process stops and its twin (the newer) stays: every node
/// settles on the twin.
#[test]
fn the_original_goes_and_every_node_settles_on_the_twin() {
    for seed in SEEDS {
        let mut sim = converged(seed);
        let t = sim.twin(2, 9_000);
        let mut worst = busiest_second(&mut sim, ms(3_000));
        sim.leave(2);
        let want: Vec<NodeId> = [0, 1, 3, 4]
            .iter()
            .map(|&i| node_id(i))
            .chain([NodeId { epoch: 9_000, addr: addr(2) }])
            .collect();
        let alive = [0, 1, 3, 4, t];
        sim.run_until(ms(3_000), |s| all_see(s, &alive, &want))
            .unwrap_or_else(|| panic!("seed {seed}: no common view with the twin"));
        worst = worst.max(busiest_second(&mut sim, ms(5_000)));
        assert!(worst <= BOUND, "seed {seed}: a node sent {worst} datagrams in one second");
        quiet_afterwards(&mut sim, seed, &alive);
    }
}

/// "Node 2 has a newer identity" (same start stamp, bump 1000) told to two
/// nodes: node 2 renews once, past it, and stays a member everywhere.
/// Before the fix it renewed one bump per round trip, ~1,000 times.
#[test]
fn a_forged_renewal_is_outranked_at_once() {
    for seed in SEEDS {
        let mut sim = converged(seed);
        let fake = ident(2, node_id(2).epoch, 1_000);
        let sent = sim.sent_by(2);
        for to in [0, 1] {
            sim.inject(to, key(&fake), &forge(&fake, first_ident(to)));
        }
        let all: Vec<NodeId> = (0..5).map(node_id).collect();
        let worst = busiest_second(&mut sim, ms(5_000));
        assert!(all_see(&sim, &range(0, 5), &all), "seed {seed}: node 2 lost");
        assert_eq!(sim.node(2).superseded_by(), None);
        assert!(worst <= BOUND, "seed {seed}: a node sent {worst} datagrams in one second");
        assert!(sim.sent_by(2) - sent < 5 * 2 * IDLE, "seed {seed}: node 2 sent {}", sim.sent_by(2) - sent);
        quiet_afterwards(&mut sim, seed, &range(0, 5));
    }
}

/// A forged newer process at node 2's address (a larger start stamp), or a
/// renewal node 2 can never outrank (bump u64::MAX): node 2 stands down,
/// the fake is found dead, and every other node agrees node 2 is gone.
#[test]
fn an_identity_that_cannot_be_outranked_ends_in_one_view_without_it() {
    let others = [0, 1, 3, 4];
    let rest: Vec<NodeId> = others.iter().map(|&i| node_id(i)).collect();
    for seed in SEEDS {
        for fake in [ident(2, 9_000, 0), ident(2, node_id(2).epoch, u64::MAX)] {
            let mut sim = converged(seed);
            sim.inject(0, key(&fake), &forge(&fake, first_ident(0)));
            sim.run_until(ms(3_000), |s| s.node(2).superseded_by().is_some() && all_see(s, &others, &rest))
                .unwrap_or_else(|| panic!("seed {seed}: {fake:?} not settled in 3 s"));
            let worst = busiest_second(&mut sim, ms(5_000));
            assert!(worst <= BOUND, "seed {seed}: a node sent {worst} datagrams in one second");
            quiet_afterwards(&mut sim, seed, &others);
        }
    }
}

#[test]
fn twins_replay_identically() {
    fn run(seed: u64) -> (Vec<common::TraceEntry>, u64) {
        let mut sim = converged(seed);
        sim.loss = 0.02;
        let t = sim.twin(2, 9_000);
        sim.run_for(ms(2_000));
        sim.leave(t);
        sim.run_for(ms(3_000));
        (sim.trace, sim.sent)
    }
    assert_eq!(run(7), run(7));
}

/// Decodes the header of a captured payload.
fn header(bytes: &[u8]) -> Header<WireIdent> {
    PostcardCodec.decode_header(bytes).expect("a payload the crate encoded")
}

/// The cluster keeps telling node 0 it is down, whatever identity it
/// takes (what a twin it cannot see does): its renewals back off to one
/// per 5 s instead of one per round trip.
#[test]
fn renewals_back_off_when_the_cluster_keeps_saying_down() {
    let mut sim = Sim::new(2, 3);
    sim.start_all();
    sim.run_until(ms(2_000), |s| s.agreed(&[0, 1])).unwrap();
    sim.capture = true;
    let mut current = first_ident(0);
    let mut renewals = 0;
    for _ in 0..1_000 {
        let mut buf = Vec::new();
        let turn = Header {
            src: first_ident(1),
            src_incarnation: 0,
            dst: current.clone(),
            message: Message::TurnUndead,
        };
        PostcardCodec.encode_header(&turn, &mut buf).unwrap();
        sim.inject(0, node_id(1), &buf);
        sim.run_for(ms(10));
        for (_, bytes) in std::mem::take(&mut sim.captured) {
            let src = header(&bytes).src;
            if src.addr == addr(0) && src.bump > current.bump {
                current = src;
                renewals += 1;
            }
        }
    }
    // Renewals at 0, 0.1, 0.3, 0.7, 1.5, 3.1 and 6.3 s, then every 5 s.
    assert!((2..=7).contains(&renewals), "{renewals} renewals in 10 s");
}

/// A member this node holds down keeps sending (a twin, or a process that
/// does not know it was replaced): it is told "you are down" once per
/// probe period, not once per datagram.
#[test]
fn a_member_held_down_is_told_so_once_per_probe_period() {
    let mut sim = Sim::new(2, 4);
    sim.start_all();
    sim.run_until(ms(2_000), |s| s.agreed(&[0, 1])).unwrap();
    sim.crash(1);
    sim.run_until(ms(2_000), |s| s.agreed(&[0])).unwrap();
    sim.capture = true;
    for n in 0..1_000u16 {
        let mut buf = Vec::new();
        let ping = Header {
            src: first_ident(1),
            src_incarnation: 0,
            dst: first_ident(0),
            message: Message::Ping(n as u8),
        };
        PostcardCodec.encode_header(&ping, &mut buf).unwrap();
        sim.inject(0, node_id(1), &buf);
        sim.run_for(ms(1));
    }
    let told = sim.captured.iter().filter(|(_, b)| header(b).message == Message::TurnUndead).count();
    // 1 s of pings, one per millisecond; the probe period is 100 ms.
    assert!((9..=11).contains(&told), "{told} TurnUndead for 1,000 pings");
}
