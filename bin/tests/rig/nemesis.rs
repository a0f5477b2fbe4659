//! Fault schedules drawn from a seed, and the run that applies one to a
//! rig under the workload, then checks the history.
//!
//! The seed fixes the schedule (which faults, on which nodes, for how
//! long); the timing of real processes varies from run to run. Set
//! `SWIMLOCK_RIG_SEED` to replay a schedule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use swimlock::client::Client;

use super::check::{Report, check};
use super::history::History;
use super::net::{Mode, Rig};
use super::relay::Latency;
use super::workload::Workload;

/// How long a cluster may take to form, or to become one view again.
const VIEW_LIMIT: Duration = Duration::from_secs(30);

/// One fault, applied and then undone.
#[derive(Clone, Debug)]
pub enum Step {
    /// The network splits into `groups` for `hold`, then heals.
    Partition {
        /// Each node drops datagrams from nodes outside its group.
        groups: Vec<Vec<usize>>,
        /// How long the split lasts.
        hold: Duration,
    },
    /// `to` stops hearing `from` for `hold`.
    OneWay {
        /// The node not heard.
        from: usize,
        /// The node that drops.
        to: usize,
        /// How long.
        hold: Duration,
    },
    /// SIGKILL of the coordinator; it restarts (same state directory)
    /// after `down`.
    KillCoordinator {
        /// How long it stays dead.
        down: Duration,
    },
    /// SIGSTOP of a node whose client holds a lock (its clients pause
    /// too), SIGCONT after `hold`.
    PauseHolder {
        /// How long it stays stopped.
        hold: Duration,
    },
    /// SIGTERM of a node, restart after `down`.
    StopRestart {
        /// Which node.
        node: usize,
        /// How long it stays stopped.
        down: Duration,
    },
}

/// A named list of steps, the mode they run in, and the random loss
/// applied to every node for the whole run.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// A short name for the summary line.
    pub name: String,
    /// The agents' mode.
    pub mode: Mode,
    /// Random datagram loss, percent, on every node's input.
    pub loss: u8,
    /// Delay of every datagram to a node, if any.
    pub latency: Option<Latency>,
    /// The faults, in order, with a quiet second between them.
    pub steps: Vec<Step>,
}

/// The seed: `SWIMLOCK_RIG_SEED` if set, else drawn from the clock.
pub fn seed() -> u64 {
    match std::env::var("SWIMLOCK_RIG_SEED") {
        Ok(s) => s.trim().parse().expect("SWIMLOCK_RIG_SEED is a u64"),
        Err(_) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            u64::from(nanos.subsec_nanos()) ^ nanos.as_secs().rotate_left(32)
        }
    }
}

/// A majority/minority split of `n` nodes, drawn from `rng`.
pub fn split(rng: &mut SmallRng, n: usize) -> Vec<Vec<usize>> {
    let mut nodes: Vec<usize> = (0..n).collect();
    nodes.shuffle(rng);
    let minority = rng.random_range(1..=(n - 1) / 2);
    let (small, big) = nodes.split_at(minority);
    vec![small.to_vec(), big.to_vec()]
}

/// Two distinct nodes.
fn pair(rng: &mut SmallRng, n: usize) -> (usize, usize) {
    let a = rng.random_range(0..n);
    let b = (a + rng.random_range(1..n)) % n;
    (a, b)
}

/// Available mode, 1% loss: a majority/minority split, then a one-way cut.
pub fn partitions(n: usize, seed: u64) -> Schedule {
    let mut rng = SmallRng::seed_from_u64(seed);
    let groups = split(&mut rng, n);
    let (from, to) = pair(&mut rng, n);
    Schedule {
        name: "partitions".into(),
        mode: Mode::Available,
        loss: 1,
        latency: None,
        steps: vec![
            Step::Partition { groups, hold: Duration::from_millis(rng.random_range(3000..5000)) },
            Step::OneWay { from, to, hold: Duration::from_millis(rng.random_range(2000..4000)) },
        ],
    }
}

/// Majority mode: the coordinator killed and restarted, a holder's node
/// paused past its lease, a minority cut off.
pub fn crashes(n: usize, seed: u64) -> Schedule {
    let mut rng = SmallRng::seed_from_u64(seed);
    let groups = split(&mut rng, n);
    Schedule {
        name: "crashes".into(),
        mode: Mode::Majority,
        loss: 0,
        latency: None,
        steps: vec![
            Step::KillCoordinator { down: Duration::from_millis(rng.random_range(1000..3000)) },
            Step::PauseHolder { hold: Duration::from_millis(rng.random_range(2500..4000)) },
            Step::Partition { groups, hold: Duration::from_millis(rng.random_range(3000..5000)) },
        ],
    }
}

/// `steps` faults of every kind, drawn from `seed`, in `mode` with 1% loss.
pub fn mixed(n: usize, seed: u64, mode: Mode, count: usize) -> Schedule {
    let mut rng = SmallRng::seed_from_u64(seed);
    let steps = (0..count)
        .map(|_| {
            let hold = Duration::from_millis(rng.random_range(1000..6000));
            match rng.random_range(0..6) {
                0 => Step::Partition { groups: split(&mut rng, n), hold },
                1 => {
                    // A bridge: one node hears both halves, which do not
                    // hear each other.
                    let mut nodes: Vec<usize> = (0..n).collect();
                    nodes.shuffle(&mut rng);
                    let half = n / 2;
                    let bridge = nodes[0];
                    let a: Vec<usize> = nodes[..half].to_vec();
                    let mut b: Vec<usize> = nodes[half..].to_vec();
                    b.push(bridge);
                    Step::Partition { groups: vec![a, b], hold }
                }
                2 => {
                    let (from, to) = pair(&mut rng, n);
                    Step::OneWay { from, to, hold }
                }
                3 => Step::KillCoordinator { down: hold },
                4 => Step::PauseHolder { hold },
                _ => Step::StopRestart { node: rng.random_range(0..n), down: hold },
            }
        })
        .collect();
    Schedule { name: format!("mixed-{count}"), mode, loss: 1, latency: None, steps }
}

/// Available mode, 1% loss and 1-3 ms of latency with jitter on every
/// link: a coordinator kill and a majority/minority split.
pub fn latency(n: usize, seed: u64) -> Schedule {
    let mut rng = SmallRng::seed_from_u64(seed);
    let groups = split(&mut rng, n);
    Schedule {
        name: "latency".into(),
        mode: Mode::Available,
        loss: 1,
        latency: Some(Latency { base: Duration::from_millis(2), jitter: Duration::from_millis(1) }),
        steps: vec![
            Step::KillCoordinator { down: Duration::from_millis(rng.random_range(1000..3000)) },
            Step::Partition { groups, hold: Duration::from_millis(rng.random_range(3000..5000)) },
        ],
    }
}

/// What a run measured and the checker's report.
#[derive(Debug, Default)]
pub struct Summary {
    /// From the first agent's start to one view of all.
    pub converge: Duration,
    /// From each partition's end to one view again.
    pub heal: Vec<Duration>,
    /// From each coordinator kill to the first grant of a fresh lock.
    pub failover: Vec<Duration>,
    /// From each restart or resume to one view again.
    pub rejoin: Vec<Duration>,
    /// The checker's verdict and figures (liveness failures of the rig's
    /// own waits are added to its violations).
    pub report: Report,
    /// Wall time of the run.
    pub wall: Duration,
}

fn secs(d: &[Duration]) -> String {
    if d.is_empty() {
        return "-".into();
    }
    let max = d.iter().max().unwrap();
    let list: Vec<String> = d.iter().map(|x| format!("{:.2}", x.as_secs_f64())).collect();
    format!("{}s (max {:.2}s)", list.join(","), max.as_secs_f64())
}

impl Summary {
    /// The one summary line of the run.
    pub fn line(&self, n: usize, schedule: &Schedule, seed: u64) -> String {
        let r = &self.report;
        let verdict = if r.violations.is_empty() { "PASS" } else { "FAIL" };
        let latency =
            schedule.latency.map_or(String::new(), |l| format!(", latency {:?}±{:?}", l.base, l.jitter));
        let lost: Vec<String> = r.lost.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!(
            "network: {n} nodes, {} ({}, loss {}%{latency}), seed {seed}: {verdict} in {:.1}s; converge {:.2}s; \
             heal {}; failover {}; rejoin {}; lost {} ({}); stale writes rejected {}; holds {}, ops {}, \
             writes {}, overlaps excused by a partition {} ({} ended by Lost), writes lost across a partition {}",
            schedule.name,
            schedule.mode.flag(),
            schedule.loss,
            self.wall.as_secs_f64(),
            self.converge.as_secs_f64(),
            secs(&self.heal),
            secs(&self.failover),
            secs(&self.rejoin),
            r.lost_total(),
            lost.join(", "),
            r.writes_rejected,
            r.holds,
            r.ops,
            r.writes_accepted,
            r.excused_overlaps,
            r.excused_ended_lost,
            r.excused_lost_writes,
        )
    }
}

/// Runs `schedule` on a fresh rig of `n` nodes under the workload, and
/// checks the history.
pub fn run(n: usize, schedule: &Schedule, seed: u64) -> Summary {
    let started = Instant::now();
    eprintln!("network: {n} nodes, schedule {} seed {seed}: {:?}", schedule.name, schedule.steps);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rig = Rig::with_latency(n, schedule.mode, &[], schedule.latency, seed);
    let all: Vec<usize> = (0..n).collect();
    let mut summary = Summary::default();
    let mut liveness = Vec::new();
    match rt.block_on(rig.wait_one_view(&all, VIEW_LIMIT)) {
        Some(_) => summary.converge = rig.now(),
        None => panic!("{n} agents formed no single view within {VIEW_LIMIT:?}"),
    }
    if schedule.loss > 0 {
        rig.set_loss(schedule.loss);
    }
    let history = Arc::new(History::new(rig.epoch()));
    let sockets: Vec<_> = rig.nodes.iter().map(|node| node.socket.clone()).collect();
    let workload = Workload::start(&rt, &sockets, 2, 3, history.clone(), seed);
    let mut rng = SmallRng::seed_from_u64(seed.rotate_left(17));
    std::thread::sleep(Duration::from_secs(1));
    for (k, step) in schedule.steps.iter().enumerate() {
        apply(&rt, &mut rig, &workload, step, k, &mut rng, &mut summary, &mut liveness);
        std::thread::sleep(Duration::from_secs(1));
    }
    let aborted = workload.stop(&rt, Duration::from_secs(20));
    if aborted > 0 {
        liveness.push(format!("{aborted} clients still waited on a request 20 s after the run ended"));
    }
    let end = rig.now();
    summary.report = check(&history.events(), &rig.changes, schedule.mode, end);
    summary.report.violations.extend(liveness);
    summary.wall = started.elapsed();
    drop(rig);
    summary
}

/// Waits for one view of every live node after a fault ended at `since`.
fn reunite(
    rt: &tokio::runtime::Runtime,
    rig: &mut Rig,
    since: Instant,
    what: &str,
    liveness: &mut Vec<String>,
) -> Option<Duration> {
    let live = rig.live();
    match rt.block_on(rig.wait_one_view(&live, VIEW_LIMIT)) {
        Some(_) => {
            let took = since.elapsed();
            rig.mark_one_view();
            Some(took)
        }
        None => {
            liveness.push(format!(
                "no single view of {live:?} within {VIEW_LIMIT:?} after {what} (at {:.3}s)",
                rig.now().as_secs_f64()
            ));
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    rt: &tokio::runtime::Runtime,
    rig: &mut Rig,
    workload: &Workload,
    step: &Step,
    k: usize,
    rng: &mut SmallRng,
    summary: &mut Summary,
    liveness: &mut Vec<String>,
) {
    match step {
        Step::Partition { groups, hold } => {
            rig.partition(groups);
            std::thread::sleep(*hold);
            rig.heal();
            let healed = Instant::now();
            summary.heal.extend(reunite(rt, rig, healed, "a partition healed", liveness));
        }
        Step::OneWay { from, to, hold } => {
            rig.cut_one_way(*from, *to);
            std::thread::sleep(*hold);
            rig.heal();
            let healed = Instant::now();
            summary.heal.extend(reunite(rt, rig, healed, "a one-way cut healed", liveness));
        }
        Step::KillCoordinator { down } => {
            let killed = Instant::now();
            let c = match failover(rt, rig, &format!("probe{k}")) {
                Ok((c, took)) => {
                    summary.failover.push(took);
                    c
                }
                Err((Some(c), e)) => {
                    liveness.push(e);
                    c
                }
                Err((None, e)) => {
                    liveness.push(e);
                    return;
                }
            };
            std::thread::sleep(down.saturating_sub(killed.elapsed()));
            rig.start(c);
            let started = Instant::now();
            summary.rejoin.extend(reunite(rt, rig, started, "a restart", liveness));
        }
        Step::PauseHolder { hold } => {
            let holders = workload.holder_nodes();
            let live = rig.live();
            let candidates: Vec<usize> = holders.into_iter().filter(|i| live.contains(i)).collect();
            let candidates = if candidates.is_empty() { live } else { candidates };
            let i = candidates[rng.random_range(0..candidates.len())];
            rig.pause(i);
            workload.pause_node(i, true);
            std::thread::sleep(*hold);
            rig.resume(i);
            workload.pause_node(i, false);
            let resumed = Instant::now();
            summary.rejoin.extend(reunite(rt, rig, resumed, "a resume", liveness));
        }
        Step::StopRestart { node, down } => {
            if !rig.nodes[*node].running() {
                return;
            }
            if !rig.stop(*node, Duration::from_secs(15)) {
                liveness.push(format!("n{node} did not exit within 15 s of SIGTERM"));
            }
            std::thread::sleep(*down);
            rig.start(*node);
            let started = Instant::now();
            summary.rejoin.extend(reunite(rt, rig, started, "a restart", liveness));
        }
    }
}

/// Kills the coordinator (SIGKILL) and asks another live node for the
/// fresh lock `name`: the killed node and the time from the kill to the
/// grant. The error names the killed node, if one was killed.
pub fn failover(
    rt: &tokio::runtime::Runtime,
    rig: &mut Rig,
    name: &str,
) -> Result<(usize, Duration), (Option<usize>, String)> {
    let live = rig.live();
    let Some(c) = rt.block_on(rig.coordinator(&live)) else {
        return Err((None, format!("live nodes {live:?} agreed on no coordinator")));
    };
    let Some(&other) = live.iter().find(|&&i| i != c) else {
        return Err((None, "no other live node".into()));
    };
    let addr = format!("unix:{}", rig.nodes[other].socket.display());
    // Connected before the kill, so the figure is the cluster's alone.
    let probe =
        rt.block_on(Client::connect(&addr)).map_err(|e| (None, format!("probe client on n{other}: {e}")))?;
    let killed = Instant::now();
    rig.kill(c);
    match rt.block_on(probe.lock(name, Duration::from_secs(20))) {
        Ok(guard) => {
            let took = killed.elapsed();
            let _ = rt.block_on(guard.unlock());
            Ok((c, took))
        }
        Err(e) => {
            Err((Some(c), format!("no grant on n{other} within 20 s of killing coordinator n{c}: {e}")))
        }
    }
}
