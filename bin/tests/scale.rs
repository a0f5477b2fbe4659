//! Scale runs of the simulator (`swimlock sim --scale`): a cluster of full
//! node cores through cold start, idle, a crash, the coordinator's crash
//! with every node holding locks, and a split and heal. CI runs a small
//! cluster; the 1,000-node run is behind `--ignored` (about 10 minutes of
//! one core per seed):
//! `cargo test --release -p swimlock --test scale -- --ignored --nocapture`

use swimlock::sim::scale::{ScaleConfig, Summary, run};

/// Every step of a 60-node run finishes, and the new coordinator's round
/// re-installs every lock that survived the old coordinator.
#[test]
fn every_step_of_a_small_scale_run_finishes() {
    let mut cfg = ScaleConfig::new(1, 60);
    cfg.locks_per_node = 20;
    let report = run(cfg);
    for line in report.lines() {
        println!("{line}");
    }
    let summary = Summary::of(std::slice::from_ref(&report));
    assert!(summary.complete, "a step missed: {:?}", report);
    let r = report.reconciliation.expect("the round ended");
    // One member crashed earlier in the script; the old coordinator's own
    // clients' locks go with it.
    assert_eq!(r.held_before, 59 * 20);
    assert_eq!(r.reinstalled, 58 * 20, "every lock of a live member is back in the table");
}

/// One seed gives one trace: two runs of a seed measure the same
/// simulated times.
#[test]
fn a_scale_run_is_deterministic() {
    let a = run(ScaleConfig::new(7, 30));
    let b = run(ScaleConfig::new(7, 30));
    assert_eq!(a.steps, b.steps);
    assert_eq!((a.cold_start, a.crash_out, a.split, a.heal), (b.cold_start, b.crash_out, b.split, b.heal));
}

/// The figures of the README: 1,000 nodes, 100 locks each, with the LAN
/// defaults (updates gossiped 21 times at this size, see
/// `swimlock_membership::Config::transmissions_for`).
#[test]
#[ignore = "about 10 minutes of one core: run by hand"]
fn a_thousand_nodes() {
    let report = run(ScaleConfig::new(0, 1_000));
    for line in report.lines() {
        println!("{line}");
    }
    let summary = Summary::of(std::slice::from_ref(&report));
    for line in summary.lines() {
        println!("{line}");
    }
    assert!(summary.complete, "a step missed");
}
