//! Hostile input: garbage, truncated, mutated and oversized payloads are
//! rejected with `Err` (or harmlessly accepted) and never panic.

mod common;

use common::{Sim, ms, node_id, range};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swimlock_membership::{Config, Membership};

fn started() -> Membership {
    let mut m = Membership::new(node_id(0), "n0".into(), 1, Config::lan(), vec![], 1).unwrap();
    m.start(ms(0));
    m
}

#[test]
fn random_bytes_are_rejected() {
    let mut m = started();
    let mut rng = SmallRng::seed_from_u64(9);
    let mut accepted = 0;
    for round in 0..20_000u64 {
        let len = rng.random_range(0..200);
        let mut buf = vec![0u8; len];
        rng.fill(&mut buf[..]);
        if m.handle_datagram(ms(round), node_id(1), &buf).is_ok() {
            accepted += 1;
        }
        m.handle_timeout(ms(round));
        while m.poll_transmit().is_some() {}
        while m.poll_event().is_some() {}
    }
    // Essentially all random payloads fail to decode.
    assert!(accepted < 20, "{accepted} random payloads accepted");
    assert_eq!(m.view().members.len(), 1);
}

#[test]
fn empty_oversized_and_huge_counts_are_errors() {
    let mut m = started();
    assert!(m.handle_datagram(ms(1), node_id(1), &[]).is_err());
    assert!(m.handle_datagram(ms(1), node_id(1), &vec![0u8; 64 * 1024]).is_err());
    assert!(m.handle_datagram(ms(1), node_id(1), &[0xff; 1400]).is_err());
}

#[test]
fn truncated_and_mutated_real_traffic_never_panics() {
    // Capture real gossip of every kind from a small cluster that forms,
    // loses a member and heals a partition.
    let mut sim = Sim::new(4, 5);
    sim.capture = true;
    sim.start_all();
    sim.run_until(ms(2_000), |s| s.agreed(&range(0, 4))).unwrap();
    sim.partition(&[0, 1], &[2, 3]);
    sim.run_for(ms(1_500));
    sim.heal();
    sim.run_for(ms(1_500));
    let samples = sim.captured;
    assert!(samples.len() > 100);
    let mut rng = SmallRng::seed_from_u64(11);
    let mut m = started();
    for round in 0..20_000u64 {
        let (from, bytes) = &samples[rng.random_range(0..samples.len())];
        let (from, mut bytes) = (*from, bytes.clone());
        match rng.random_range(0..3) {
            0 => bytes.truncate(rng.random_range(0..bytes.len())),
            1 => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            _ => bytes.extend((0..rng.random_range(1..50)).map(|_| rng.random::<u8>())),
        }
        // The real sender, so that mutations reach foca unless they hit
        // the sender's key.
        let _ = m.handle_datagram(ms(round), from, &bytes);
        m.handle_timeout(ms(round));
        while m.poll_transmit().is_some() {}
        while m.poll_event().is_some() {}
    }
}
