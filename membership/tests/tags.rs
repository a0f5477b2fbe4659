//! Node tags travel in the gossiped identity: every view shows every
//! member's tag, and a change reaches every node as one plain view.

mod common;

use common::{Sim, ms, range, tag};
use swimlock_membership::Event;

const SEEDS: std::ops::Range<u64> = 1..11;

fn tags_seen_by(sim: &Sim, i: usize) -> Vec<u16> {
    sim.view(i).members.iter().map(|m| m.tag).collect()
}

#[test]
fn every_view_shows_every_members_tag() {
    for seed in SEEDS {
        let mut sim = Sim::new(5, seed);
        sim.start_all();
        sim.run_until(ms(2_000), |s| s.agreed(&range(0, 5))).unwrap();
        for i in 0..5 {
            assert_eq!(tags_seen_by(&sim, i), (0..5).map(tag).collect::<Vec<_>>(), "seed {seed}: node {i}");
        }
        assert_eq!(sim.node(3).tag(), tag(3));
    }
}

#[test]
fn a_changed_tag_is_seen_by_all_as_one_plain_view() {
    for seed in SEEDS {
        let mut sim = Sim::new(5, seed);
        sim.start_all();
        sim.run_until(ms(2_000), |s| s.agreed(&range(0, 5))).unwrap();
        sim.run_for(ms(500));
        let digest = sim.view(0).digest();
        let since = sim.now;
        sim.set_tag(3, 777);
        assert_eq!(sim.node(3).tag(), 777);
        assert_eq!(sim.view(3).members[3].tag, 777, "its own view shows it at once");
        let took = sim
            .run_until(ms(1_000), |s| (0..5).all(|i| s.view(i).members[3].tag == 777))
            .unwrap_or_else(|| panic!("seed {seed}: the new tag did not reach every node in 1 s"));
        sim.run_for(ms(2_000));
        for i in 0..5 {
            let events = sim.events_since(i, since);
            let want = if i == 3 { 0 } else { 1 };
            assert_eq!(events.len(), want, "seed {seed}: node {i}: {events:#?} (after {took:?})");
            if let Some(Event::View(v)) = events.first() {
                assert_eq!(v.digest(), digest, "seed {seed}: same members");
            } else {
                assert!(events.is_empty(), "seed {seed}: node {i}: not a plain view: {events:#?}");
            }
            assert_eq!(sim.view(i).digest(), digest);
        }
        // The same tag again changes nothing.
        let sent = sim.sent;
        sim.set_tag(3, 777);
        assert_eq!(sim.sent, sent);
    }
}

#[test]
fn a_tag_set_before_start_is_the_one_others_see() {
    let mut sim = Sim::new(3, 5);
    sim.set_tag(2, 4242);
    sim.start_all();
    sim.run_until(ms(2_000), |s| s.agreed(&range(0, 3))).unwrap();
    for i in 0..3 {
        assert_eq!(tags_seen_by(&sim, i), vec![tag(0), tag(1), 4242], "node {i}");
    }
}
