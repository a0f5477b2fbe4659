//! The deterministic simulator over many seeds, and the seeds that once
//! found bugs.

use std::time::Duration;

use swimlock::sim::{RunConfig, parse_mode, print_failure, run, run_seeds};
use swimlock_lock::Mode;

fn base(nodes: usize) -> RunConfig {
    RunConfig::new(0, nodes)
}

fn assert_clean(summary: &swimlock::sim::Summary, base: &RunConfig) {
    for failure in &summary.failures {
        let replay = run(RunConfig { seed: failure.seed, trace: true, ..base.clone() });
        print_failure(&replay, base);
    }
    assert!(summary.failures.is_empty(), "{}", summary.line());
}

#[test]
fn one_seed_gives_one_trace() {
    let a = run(RunConfig::new(7, 5));
    let b = run(RunConfig::new(7, 5));
    let c = run(RunConfig::new(8, 5));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.steps, b.steps);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn a_thousand_seeds_keep_every_invariant() {
    let base = base(5);
    let summary = run_seeds(0..1_000, &base, 2);
    println!("{}", summary.line());
    assert!(summary.grants > 10_000 && summary.merges > 100 && summary.failovers > 100, "{}", summary.line());
    assert_clean(&summary, &base);
}

#[test]
fn majority_mode_never_has_two_holders_anywhere() {
    let mut base = base(5);
    base.mode = parse_mode("majority", 5).unwrap();
    assert!(matches!(base.mode, Mode::Majority { .. }));
    let summary = run_seeds(10_000..10_200, &base, 2);
    println!("{}", summary.line());
    assert_clean(&summary, &base);
}

#[test]
fn small_and_large_clusters() {
    for nodes in [1, 2, 3, 9] {
        let mut base = base(nodes);
        base.fault_phase = Duration::from_secs(8);
        let summary = run_seeds(20_000..20_040, &base, 2);
        assert_clean(&summary, &base);
    }
}

/// `SWIMLOCK_SEED=S cargo test --release --test simulator replay -- --ignored --nocapture`
/// prints the whole trace of one seed.
#[test]
#[ignore = "a tool for replaying one seed"]
fn replay() {
    let seed = std::env::var("SWIMLOCK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let nodes = std::env::var("SWIMLOCK_NODES").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut cfg = RunConfig { seed, trace: true, ..base(nodes) };
    if std::env::var("SWIMLOCK_MODE").as_deref() == Ok("majority") {
        cfg.mode = parse_mode("majority", 5).unwrap();
    }
    let outcome = run(cfg);
    for line in &outcome.trace {
        println!("{line}");
    }
    println!("{:?}", outcome.violation);
}
