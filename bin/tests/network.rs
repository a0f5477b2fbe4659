//! Real agents on a real (virtual) network: the rig of issue 11 runs
//! seeded fault schedules under a workload that writes to a fenced
//! register, and the checker judges the history. One summary line per
//! schedule; `SWIMLOCK_RIG_SEED` replays a schedule.
//!
//! The short profile runs by default (3 and 5 nodes, two schedules each);
//! the long one is `--ignored`.

mod common;
mod rig;

use std::time::{Duration, Instant};

use rig::nemesis::{self, Schedule};
use rig::net::{Mode, Rig};

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

/// Idle figures of `live` agents over `window`: mean bytes sent per agent
/// per second, mean and max CPU share, max RSS.
fn idle_figures(rig: &Rig, window: Duration) -> String {
    let n = rig.len();
    let before: Vec<(u64, Option<(Duration, u64)>)> =
        (0..n).map(|i| (rig.tx_bytes(i), rig.usage(i))).collect();
    let started = Instant::now();
    std::thread::sleep(window);
    let secs = started.elapsed().as_secs_f64();
    let mut bytes = Vec::new();
    let mut cpu = Vec::new();
    let mut rss = Vec::new();
    for (i, (tx, use0)) in before.into_iter().enumerate() {
        bytes.push((rig.tx_bytes(i) - tx) as f64 / secs);
        if let (Some((c0, _)), Some((c1, r))) = (use0, rig.usage(i)) {
            cpu.push((c1 - c0).as_secs_f64() / secs * 100.0);
            rss.push(r as f64 / 1e6);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    format!(
        "idle gossip {:.0} B/s sent per agent (max {:.0}), CPU {:.2}% of one core per agent (max {:.2}%), RSS max {:.1} MB",
        mean(&bytes),
        max(&bytes),
        mean(&cpu),
        max(&cpu),
        max(&rss)
    )
}

#[test]
#[ignore = "long profile: 64 agents"]
fn sixty_four_agents_scale() {
    let _serial = common::serial();
    // SWIMLOCK_RIG_SCALE_N: another size, to find where a problem starts.
    let n = std::env::var("SWIMLOCK_RIG_SCALE_N").map_or(64, |v| v.parse().expect("a node count"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Timings for a loaded machine, e.g. "--probe-period 300ms --suspect-timeout 1500ms".
    let extra = std::env::var("SWIMLOCK_RIG_AGENT_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let mut rig = Rig::new(n, Mode::Available, &extra);
    let all: Vec<usize> = (0..n).collect();
    let first = rig.changes.first().map(|c| c.0).unwrap();
    if rt.block_on(rig.wait_one_view(&all, Duration::from_secs(120))).is_none() {
        panic!(
            "{n} agents (extra flags {extra:?}) formed no single view within 120 s: {}",
            rt.block_on(rig.views(&all))
        );
    }
    let converge = rig.now() - first;
    let idle = idle_figures(&rig, Duration::from_secs(10));
    // A member killed: out of every view.
    rig.kill(n - 1);
    let killed = Instant::now();
    let live = rig.live();
    rt.block_on(rig.wait_one_view(&live, Duration::from_secs(60))).expect("the killed member removed");
    let removed = killed.elapsed();
    let (_, failover) = nemesis::failover(&rt, &mut rig, "scale-probe").map_err(|e| e.1).unwrap();
    let live = rig.live();
    rt.block_on(rig.wait_one_view(&live, Duration::from_secs(60))).expect("one view after the failover");
    rig.set_loss(1);
    let (_, failover_lossy) = nemesis::failover(&rt, &mut rig, "scale-probe-2").map_err(|e| e.1).unwrap();
    let live = rig.live();
    let settled = rt.block_on(rig.wait_one_view(&live, Duration::from_secs(60)));
    let idle_lossy = idle_figures(&rig, Duration::from_secs(10));
    let line = format!(
        "network scale: {n} agents: converge {:.2}s from the first start; {idle}; a killed member out of every view in \
         {:.2}s; failover {:.2}s; with 1% loss: failover {:.2}s, one view again {}, {idle_lossy}",
        converge.as_secs_f64(),
        removed.as_secs_f64(),
        failover.as_secs_f64(),
        failover_lossy.as_secs_f64(),
        settled.map_or("not within 60s".into(), |d| format!("in {:.2}s", d.as_secs_f64())),
    );
    println!("{line}");
    eprintln!("{line}");
}
