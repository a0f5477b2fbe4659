//! Real agents on a real (virtual) network: the rig of issue 11 runs
//! seeded fault schedules under a workload that writes to a fenced
//! register, and the checker judges the history. One summary line per
//! schedule; `SWIMLOCK_RIG_SEED` replays a schedule.
//!
//! The short profile runs by default (3 and 5 nodes, two schedules each);
//! the long one is `--ignored`.

mod common;
mod rig;

use rig::nemesis::{self, Schedule};
use rig::net::Mode;

/// Runs `schedule` on `n` nodes, prints its summary line, fails with the
/// checker's messages.
fn run(n: usize, schedule: impl Fn(usize, u64) -> Schedule) {
    let _serial = common::serial();
    let seed = nemesis::seed();
    let schedule = schedule(n, seed);
    let summary = nemesis::run(n, &schedule, seed);
    let line = summary.line(n, &schedule, seed);
    println!("{line}");
    eprintln!("{line}");
    assert!(
        summary.report.violations.is_empty(),
        "{line}\nreplay with SWIMLOCK_RIG_SEED={seed}\n{}",
        summary.report.violations.join("\n")
    );
}

#[test]
fn three_nodes_partitions() {
    run(3, nemesis::partitions);
}

#[test]
fn three_nodes_crashes() {
    run(3, nemesis::crashes);
}

#[test]
fn five_nodes_partitions() {
    run(5, nemesis::partitions);
}

#[test]
fn five_nodes_crashes() {
    run(5, nemesis::crashes);
}

#[test]
#[ignore = "long profile: about 2 minutes per mode"]
fn five_nodes_long_nemesis_available() {
    run(5, |n, seed| nemesis::mixed(n, seed, Mode::Available, 12));
}

#[test]
#[ignore = "long profile: about 2 minutes per mode"]
fn five_nodes_long_nemesis_majority() {
    run(5, |n, seed| nemesis::mixed(n, seed, Mode::Majority, 12));
}
