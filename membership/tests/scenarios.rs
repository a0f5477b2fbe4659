//! Membership scenarios in simulated time with LAN defaults (1–3 ms delays).
//! Each scenario runs several seeds; a failure names the seed that replays it.
//! Run with `--nocapture` to see the measured figures.

mod common;

use std::time::Duration;

use common::{Sim, ms, node_id, range};
use swimlock_membership::Event;

const SEEDS: std::ops::Range<u64> = 1..11;

/// Starts `n` nodes and waits until they agree on one view.
fn converged(n: usize, seed: u64, bound: Duration) -> (Sim, Duration) {
    let mut sim = Sim::new(n, seed);
    sim.start_all();
    let all = range(0, n);
    let took = sim
        .run_until(bound, |s| s.agreed(&all))
        .unwrap_or_else(|| panic!("seed {seed}: {n} nodes did not converge within {bound:?}"));
    (sim, took)
}

fn report(what: &str, samples: &[Duration]) {
    let max = samples.iter().max().copied().unwrap_or_default();
    let mut sorted = samples.to_vec();
    sorted.sort();
    let p50 = sorted[sorted.len() / 2];
    eprintln!("{what}: p50 {p50:?}, max {max:?} over {} seeds", samples.len());
}

#[test]
fn five_nodes_converge_to_one_view() {
    let mut took = vec![];
    for seed in SEEDS {
        let (sim, t) = converged(5, seed, ms(1_000));
        took.push(t);
        let digest = sim.view(0).digest();
        for i in 0..5 {
            assert_eq!(sim.view(i).digest(), digest, "seed {seed}");
            assert_eq!(sim.view(i).coordinator().unwrap().id, node_id(0), "seed {seed}");
        }
    }
    report("5 nodes converge", &took);
}

#[test]
fn crashed_member_leaves_every_view_within_a_second_and_a_half() {
    let mut took = vec![];
    for seed in SEEDS {
        // Alternate between a plain member and the coordinator.
        let victim = if seed % 2 == 0 { 0 } else { 3 };
        let (mut sim, _) = converged(5, seed, ms(2_000));
        sim.run_for(ms(500));
        sim.crash(victim);
        let survivors: Vec<usize> = range(0, 5).into_iter().filter(|&i| i != victim).collect();
        let t = sim
            .run_until(ms(1_500), |s| s.agreed(&survivors))
            .unwrap_or_else(|| panic!("seed {seed}: node {victim} still in a view after 1.5 s"));
        took.push(t);
    }
    report("crash to removed (5 nodes)", &took);
}

/// Every node of `group` reported exactly one event since `since`, a merge
/// whose view is the whole of `all`, with at least two subgroups.
fn assert_one_merge(sim: &Sim, seed: u64, nodes: &[usize], since: Duration) {
    for &i in nodes {
        let events = sim.events_since(i, since);
        let merges = events.iter().filter(|e| e.is_merge()).count();
        assert_eq!((merges, events.len()), (1, 1), "seed {seed}: node {i} reported {events:#?}");
        let Event::Merge { view, subgroups } = events[0] else { unreachable!() };
        assert!(subgroups.len() >= 2, "seed {seed}: node {i}: {subgroups:?}");
        let listed: usize = subgroups.iter().map(Vec::len).sum();
        assert_eq!(listed, view.members.len(), "seed {seed}: node {i}");
    }
}

#[test]
fn partition_settles_per_side_and_heals_into_one_merge_view() {
    let (a, b) = (range(0, 3), range(3, 5));
    let mut split = vec![];
    let mut heal = vec![];
    for seed in SEEDS {
        let (mut sim, _) = converged(5, seed, ms(2_000));
        sim.run_for(ms(500));
        sim.partition(&a, &b);
        let t = sim
            .run_until(ms(2_000), |s| s.agreed(&a) && s.agreed(&b))
            .unwrap_or_else(|| panic!("seed {seed}: sides did not settle"));
        split.push(t);
        // Let each side sit apart for a while, as a real partition would.
        sim.run_for(ms(3_000));
        let healed_at = sim.now;
        sim.heal();
        let all = range(0, 5);
        let t = sim
            .run_until(ms(3_000), |s| s.agreed(&all))
            .unwrap_or_else(|| panic!("seed {seed}: no single view 3 s after the heal"));
        heal.push(t);
        // Nothing more may follow: one merge per node.
        sim.run_for(ms(3_000));
        assert!(sim.agreed(&all), "seed {seed}: diverged after converging");
        assert_one_merge(&sim, seed, &all, healed_at);
        let Event::Merge { subgroups, .. } = sim.events_since(0, healed_at)[0] else { unreachable!() };
        let side = |g: &[usize]| g.iter().map(|&i| node_id(i)).collect::<Vec<_>>();
        assert_eq!(subgroups, &vec![side(&a), side(&b)], "seed {seed}");
    }
    report("partition to each side settled", &split);
    report("heal to one merge view everywhere", &heal);
}

#[test]
fn member_paused_past_suspicion_rejoins_into_one_view() {
    let mut took = vec![];
    for seed in SEEDS {
        let (mut sim, _) = converged(5, seed, ms(2_000));
        sim.run_for(ms(500));
        // Pause the coordinator on even seeds, a member on odd ones.
        let victim = if seed % 2 == 0 { 0 } else { 2 };
        sim.pause(victim);
        let others: Vec<usize> = range(0, 5).into_iter().filter(|&i| i != victim).collect();
        sim.run_until(ms(1_500), |s| s.agreed(&others))
            .unwrap_or_else(|| panic!("seed {seed}: paused node never removed"));
        sim.run_for(ms(500));
        let resumed_at = sim.now;
        sim.resume(victim);
        let all = range(0, 5);
        let t = sim
            .run_until(ms(3_000), |s| s.agreed(&all))
            .unwrap_or_else(|| panic!("seed {seed}: no single view 3 s after resuming"));
        took.push(t);
        sim.run_for(ms(3_000));
        assert!(sim.agreed(&all), "seed {seed}");
        // The paused node was declared down: it must see a merge.
        let events = sim.events_since(victim, resumed_at);
        assert!(events.iter().any(|e| e.is_merge()), "seed {seed}: paused node saw {events:#?}");
        for &i in &others {
            let merges = sim.events_since(i, resumed_at).iter().filter(|e| e.is_merge()).count();
            assert_eq!(merges, 1, "seed {seed}: node {i}");
        }
    }
    report("resume to one view", &took);
}

#[test]
fn fifty_nodes_converge_and_heal_a_crash() {
    let mut conv = vec![];
    let mut crash = vec![];
    for seed in 1..4 {
        let (mut sim, t) = converged(50, seed, ms(2_000));
        conv.push(t);
        let digest = sim.view(0).digest();
        assert!((0..50).all(|i| sim.view(i).digest() == digest));
        // 12 + ceil(2 ln(50 / 16)) retransmissions once all 50 are known.
        assert!((0..50).all(|i| sim.node(i).transmissions().get() == 15));
        sim.run_for(ms(1_000));
        let victim = 17 + seed as usize;
        sim.crash(victim);
        let survivors: Vec<usize> = range(0, 50).into_iter().filter(|&i| i != victim).collect();
        let t = sim
            .run_until(ms(1_500), |s| s.agreed(&survivors))
            .unwrap_or_else(|| panic!("seed {seed}: crash among 50 not healed in 1.5 s"));
        crash.push(t);
        assert!(sim.largest_payload <= 1_400, "seed {seed}: {}", sim.largest_payload);
    }
    report("50 nodes converge", &conv);
    report("crash to removed (50 nodes)", &crash);
}

#[test]
fn same_seed_same_trace() {
    fn run(seed: u64) -> (Vec<common::TraceEntry>, u64) {
        let (mut sim, _) = converged(5, seed, ms(2_000));
        sim.loss = 0.02;
        sim.partition(&[0, 1], &[2, 3, 4]);
        sim.run_for(ms(2_000));
        sim.heal();
        sim.crash(4);
        sim.run_for(ms(3_000));
        (sim.trace, sim.sent)
    }
    let first = run(42);
    assert_eq!(first, run(42));
    assert!(first.0.len() > 5);
    assert_ne!(first, run(43), "different seeds should differ");
}

#[test]
fn converges_under_packet_loss() {
    for seed in SEEDS {
        let mut sim = Sim::new(5, seed);
        sim.loss = 0.05;
        sim.start_all();
        let all = range(0, 5);
        sim.run_until(ms(5_000), |s| s.agreed(&all))
            .unwrap_or_else(|| panic!("seed {seed}: no view under 5% loss"));
        sim.crash(4);
        let survivors = range(0, 4);
        sim.run_until(ms(3_000), |s| s.agreed(&survivors))
            .unwrap_or_else(|| panic!("seed {seed}: crash not healed under 5% loss"));
    }
}

#[test]
fn restart_is_a_join_not_a_merge() {
    for seed in SEEDS {
        let (mut sim, _) = converged(5, seed, ms(2_000));
        sim.crash(3);
        let survivors = [0, 1, 2, 4];
        sim.run_until(ms(1_500), |s| s.agreed(&survivors))
            .unwrap_or_else(|| panic!("seed {seed}: crash not detected"));
        let restarted_at = sim.now;
        let new_id = swimlock_wire::NodeId { epoch: 5_000, addr: common::addr(3) };
        sim.restart(3, new_id.epoch, swimlock_membership::Config::lan());
        let t = sim.run_until(ms(2_000), |s| {
            (0..5).all(|i| s.view(i).contains(new_id) && s.view(i).members.len() == 5)
        });
        assert!(t.is_some(), "seed {seed}: restarted node not joined in 2 s");
        sim.run_for(ms(1_000));
        for i in 0..5 {
            let events = sim.events_since(i, restarted_at);
            assert!(!events.iter().any(|e| e.is_merge()), "seed {seed}: node {i}: {events:#?}");
            // A restart does not steal coordinatorship.
            assert_eq!(sim.view(i).coordinator().unwrap().id, node_id(0));
        }
    }
}

#[test]
fn nodes_started_before_their_seed_find_it() {
    for seed in SEEDS {
        let mut sim = Sim::new(5, seed);
        for i in 1..5 {
            sim.start(i);
        }
        // Node 0 (everyone's seed) comes up 3 s late: the others are alone
        // and idle in foca, and only their own seed loop can find it.
        sim.run_for(ms(3_000));
        sim.start(0);
        let all = range(0, 5);
        sim.run_until(ms(2_000), |s| s.agreed(&all))
            .unwrap_or_else(|| panic!("seed {seed}: late seed not found within 2 s"));
    }
}

#[test]
fn graceful_leave_is_seen_quickly() {
    for seed in SEEDS {
        let (mut sim, _) = converged(5, seed, ms(2_000));
        sim.run_for(ms(300));
        sim.leave(2);
        assert_eq!(sim.node(2).poll_timeout(), None);
        let rest = [0, 1, 3, 4];
        // Leaving skips suspicion: well under the crash figure.
        sim.run_until(ms(600), |s| s.agreed(&rest))
            .unwrap_or_else(|| panic!("seed {seed}: leave not seen within 600 ms"));
    }
}

/// A member paused for less than the suspicion timeout is suspected and
/// refutes in time; the suspicion's timer then finds it refuted, and no
/// member tells it "you are down" (foca 2.0 would: the member renewed its
/// identity and every node installed a merge view for nothing).
#[test]
fn a_refuted_suspicion_does_not_make_the_member_renew() {
    for seed in SEEDS {
        let (mut sim, _) = converged(3, seed, Duration::from_secs(5));
        let before = sim.node(2).times_declared_down();
        for _ in 0..10 {
            sim.pause(2);
            sim.run_for(ms(150));
            sim.resume(2);
            sim.run_for(ms(1_000));
        }
        assert_eq!(sim.node(2).times_declared_down(), before, "seed {seed}: told it was down after refuting");
        assert!(sim.agreed(&range(0, 3)), "seed {seed}: one view");
    }
}
