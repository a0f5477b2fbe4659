//! Real membership and the lock protocol together, scenario by scenario, in
//! simulated time with LAN defaults. Each test prints the figure it
//! measures and asserts a bound on it.

use std::time::Duration;

use swimlock::node::NodeEvent;
use swimlock::sim::cluster::Cluster;
use swimlock_lock::{Event, LossReason};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// 5 nodes started with one seed converge to one view, one coordinator.
#[test]
fn five_nodes_converge_to_one_view() {
    for seed in 0..10 {
        let mut c = Cluster::new(5, seed);
        let all = [0, 1, 2, 3, 4];
        let took = c.run_until(SECS(3), |c| c.agree(&all)).expect("converged");
        let coords: Vec<_> = all.iter().map(|&i| c.coordinator_of(i)).collect();
        assert!(coords.windows(2).all(|w| w[0] == w[1]), "one coordinator: {coords:?}");
        println!("seed {seed}: 5 nodes in one view after {} ms", ms(took));
        assert!(took < SECS(2));
    }
}

/// The coordinator crashes while other members hold locks: survivors drop
/// it from their views, the next oldest reconciles (CENTRAL_LOCK2
/// BecomeCoord), held locks keep their tokens (invariant 4), and a waiter is
/// granted once the holder lets go.
#[test]
fn coordinator_crash_keeps_held_locks_and_grants_waiters() {
    for seed in 0..10 {
        let mut c = Cluster::new(5, seed);
        let all = [0, 1, 2, 3, 4];
        c.run_until(SECS(3), |c| c.agree(&all)).expect("converged");
        c.run_for(Duration::from_millis(500));
        let t0 = c.now();
        c.lock(2, 1, "orders", SECS(5));
        c.lock(3, 1, "billing", SECS(5));
        c.run_until(SECS(1), |c| {
            c.granted(2, 1, "orders", t0).is_some() && c.granted(3, 1, "billing", t0).is_some()
        })
        .expect("granted");
        let (_, orders) = c.granted(2, 1, "orders", t0).unwrap();
        let (_, billing) = c.granted(3, 1, "billing", t0).unwrap();
        c.lock(4, 7, "orders", SECS(10)); // waits behind node 2
        c.run_for(Duration::from_millis(100));

        let crash = c.now();
        c.crash(0);
        let survivors = [1, 2, 3, 4];
        let out = c.run_until(SECS(3), |c| c.agree(&survivors)).expect("survivors agree");
        let serving = c
            .run_until(SECS(3), |c| c.node(1).is_some_and(|n| n.lock_node().is_serving()))
            .expect("successor serves");
        let table = c.node(1).unwrap().lock_node().table();
        assert!(table.iter().any(|(n, _, t)| n.as_str() == "orders" && t.0 == orders), "{table:?}");
        assert!(table.iter().any(|(n, _, t)| n.as_str() == "billing" && t.0 == billing), "{table:?}");
        // A new lock from a survivor is granted by the successor.
        let asked = c.now();
        c.lock(3, 2, "reports", SECS(5));
        let (granted_at, reports) = c
            .run_until(SECS(3), |c| c.granted(3, 2, "reports", asked).is_some())
            .and(c.granted(3, 2, "reports", asked))
            .expect("granted");
        assert!(reports > orders.max(billing), "tokens grow across the failover");
        c.unlock(2, 1, "orders");
        c.run_until(SECS(2), |c| c.granted(4, 7, "orders", crash).is_some()).expect("waiter granted");
        let (_, next) = c.granted(4, 7, "orders", crash).unwrap();
        assert!(next > orders);
        let lost = c.seen.iter().any(|s| matches!(s.event, NodeEvent::Lock(Event::Lost { .. })));
        assert!(!lost, "no lock is lost in a failover");
        println!(
            "seed {seed}: crash -> survivors' view {} ms, successor serving {} ms, crash -> first new grant {} ms",
            ms(out),
            ms(out + serving),
            ms(granted_at - crash)
        );
        assert!(granted_at - crash < Duration::from_millis(2500));
    }
}

/// Partition {0,1,2} | {3,4}: each side keeps granting; after the heal one
/// coordinator remains, the duplicate is resolved in favour of the higher
/// token (invariant 6) and later grants exceed both sides' (invariant 2).
#[test]
fn partition_heal_resolves_duplicates() {
    for seed in 0..10 {
        let mut c = Cluster::new(5, seed);
        let all = [0, 1, 2, 3, 4];
        c.run_until(SECS(3), |c| c.agree(&all)).expect("converged");
        c.run_for(Duration::from_millis(500));
        c.partition(&[0, 1, 2], &[3, 4]);
        c.run_until(SECS(4), |c| c.agree(&[0, 1, 2]) && c.agree(&[3, 4])).expect("two sides");
        c.run_until(SECS(2), |c| c.node(3).is_some_and(|n| n.lock_node().is_serving()))
            .expect("side 2 serves");
        let t = c.now();
        c.lock(1, 1, "x", SECS(3));
        c.lock(4, 1, "x", SECS(3));
        // Side 2 grants after the lock-delay (2.1 s) of the members it lost.
        c.run_until(SECS(3), |c| c.granted(1, 1, "x", t).is_some() && c.granted(4, 1, "x", t).is_some())
            .expect("both sides grant");
        let (_, a) = c.granted(1, 1, "x", t).unwrap();
        let (_, b) = c.granted(4, 1, "x", t).unwrap();
        assert_ne!(a, b, "invariant 3");

        let heal = c.now();
        c.heal();
        let merged = c
            .run_until(SECS(6), |c| {
                all.iter().all(|&i| {
                    c.seen.iter().any(|s| {
                        s.node == i && s.at >= heal && matches!(s.event, NodeEvent::View { merge: true, .. })
                    })
                })
            })
            .expect("merge view everywhere");
        let one = c.run_until(SECS(4), |c| c.agree(&all)).expect("one view");
        let (loser_node, loser_token) = if a < b { (1, a) } else { (4, b) };
        let resolved = c
            .run_until(SECS(4), |c| {
                c.seen.iter().any(|s| {
                    s.node == loser_node
                        && matches!(&s.event, NodeEvent::Lock(Event::Lost { token, reason: LossReason::Duplicate, .. }) if token.0 == loser_token)
                })
            })
            .expect("the lower token lost");
        let holders: usize = all.iter().map(|&i| c.node(i).unwrap().lock_node().held().len()).sum();
        assert_eq!(holders, 1, "one holder after the merge");
        let asked = c.now();
        c.lock(2, 9, "y", SECS(3));
        c.run_until(SECS(2), |c| c.granted(2, 9, "y", asked).is_some()).expect("granted after merge");
        let (_, y) = c.granted(2, 9, "y", asked).unwrap();
        assert!(y > a.max(b), "invariant 2 across the merge");
        println!(
            "seed {seed}: heal -> merge view on every node {} ms, one view {} ms, duplicate resolved {} ms",
            ms(merged),
            ms(merged + one),
            ms(merged + one + resolved)
        );
        assert!(merged < SECS(4));
    }
}

/// A member pauses longer than the suspicion timeout and comes back: the
/// component may briefly name two coordinators, but not for long.
#[test]
fn a_flapping_member_does_not_leave_two_coordinators() {
    for seed in 0..10 {
        let mut c = Cluster::new(5, seed);
        let all = [0, 1, 2, 3, 4];
        c.run_until(SECS(3), |c| c.agree(&all)).expect("converged");
        c.pause(0, Duration::from_millis(1500)); // the coordinator stalls
        let start = c.now();
        let mut split_since: Option<Duration> = None;
        let mut longest = Duration::ZERO;
        let settled = c.run_until(SECS(10), |c| {
            let claim: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| c.node(i).is_some_and(|n| n.lock_node().is_coordinator()))
                .collect();
            if claim.len() > 1 {
                let since = *split_since.get_or_insert(c.now());
                longest = longest.max(c.now() - since);
            } else {
                split_since = None;
            }
            c.now() > start + SECS(3) && c.agree(&all) && claim.len() == 1
        });
        assert!(settled.is_some(), "seed {seed}: one view again");
        println!("seed {seed}: two nodes claimed coordinatorship for at most {} ms", ms(longest));
        assert!(longest < SECS(3));
    }
}

/// 50 nodes converge, and a coordinator crash among 50 is healed.
#[test]
fn fifty_nodes_converge_and_survive_a_coordinator_crash() {
    for seed in 0..3 {
        let mut c = Cluster::new(50, seed);
        let all: Vec<usize> = (0..50).collect();
        let took = c.run_until(SECS(5), |c| c.agree(&all)).expect("50 converge");
        c.crash(0);
        let rest: Vec<usize> = (1..50).collect();
        let healed = c.run_until(SECS(5), |c| c.agree(&rest)).expect("crash healed");
        let serving =
            c.run_until(SECS(3), |c| c.node(1).is_some_and(|n| n.lock_node().is_serving())).expect("serving");
        println!(
            "seed {seed}: 50 nodes in one view {} ms; crash out of every view {} ms; successor serving +{} ms",
            ms(took),
            ms(healed),
            ms(serving)
        );
        assert!(took < SECS(3) && healed < SECS(3));
    }
}

/// A lock asked for just after the coordinator died (its request goes to
/// the dead node first) is granted by the successor, without waiting for
/// the caller's timeout.
#[test]
fn a_request_sent_to_a_dead_coordinator_is_granted_by_its_successor() {
    for seed in 0..10 {
        let mut c = Cluster::new(3, seed);
        c.run_until(SECS(3), |c| c.agree(&[0, 1, 2])).expect("converged");
        c.run_for(Duration::from_millis(500));
        let crash = c.now();
        c.crash(0);
        c.run_for(Duration::from_millis(5));
        // One from the successor itself, one from another member.
        c.lock(1, 1, "after-crash", SECS(5));
        c.lock(2, 1, "after-crash-2", SECS(5));
        let took = c.run_until(SECS(5), |c| {
            c.granted(1, 1, "after-crash", crash).is_some()
                && c.granted(2, 1, "after-crash-2", crash).is_some()
        });
        println!("seed {seed}: crash -> grant of a request first sent to the dead coordinator: {took:?}");
        assert!(took.is_some_and(|t| t < SECS(2)), "seed {seed}: {took:?}");
    }
}

/// The same client locks and unlocks a name, the coordinator dies, and the
/// client asks for the name again (what `swimlock bench` does): once after
/// the unlock was answered, once with the unlock still in flight to the
/// dead coordinator, so the new request waits on this node behind it.
#[test]
fn relock_after_the_coordinator_died() {
    for gap_ms in [5, 0] {
        for seed in 0..10 {
            let mut c = Cluster::new(3, seed);
            c.run_until(SECS(3), |c| c.agree(&[0, 1, 2])).expect("converged");
            c.run_for(Duration::from_millis(500));
            let t = c.now();
            c.lock(2, 1, "x", SECS(5));
            c.run_until(SECS(1), |c| c.granted(2, 1, "x", t).is_some()).expect("granted");
            c.unlock(2, 1, "x");
            c.run_for(Duration::from_millis(gap_ms));
            c.crash(0);
            let crash = c.now();
            let req = c.lock(2, 1, "x", SECS(5));
            let took = c.run_until(SECS(5), |c| c.acquired(2, req).is_some());
            println!("unlock {gap_ms} ms before the crash, seed {seed}: crash -> re-grant {took:?}");
            assert!(took.is_some_and(|t| t < SECS(2)), "gap {gap_ms} ms, seed {seed}: {took:?}");
            assert!(c.acquired(2, req).is_some_and(|at| at >= crash));
        }
    }
}
