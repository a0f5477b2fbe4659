//! The deterministic simulator: many seeds of many nodes' lock state
//! machines on a simulated network, with the invariants of DESIGN.md checked
//! after every step.
//!
//! One seed gives one trace: the simulator owns the only clock and the only
//! random source, and every collection whose order reaches the output is
//! ordered. A failing seed is printed with its trace; `--seed S` replays it.

mod check;
pub mod cluster;
mod ledger;
mod net;
pub mod scale;
mod world;

pub use check::Violation;
pub use world::{Counts, Outcome, RunConfig, run};

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swimlock_lock::Mode;

use crate::node::Security;
use crate::node::seal::{Key, Keyring};

/// Options of `swimlock sim`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Number of seeds to run, starting at --first-seed (default 100; 3
    /// with --scale).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Run only this seed and print its trace (replays a failure).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Nodes per run (1-64; with --scale up to 10,000).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Scale mode: one big cluster per seed through a fixed script (cold
    /// start, idle traffic, a crash, the coordinator's crash with every
    /// node holding locks, a split into halves and its heal), reporting
    /// the time of each step in simulated time. Invariants are checked by
    /// the ordinary runs, not here.
    #[arg(long)]
    pub scale: bool,
    /// With --scale: locks each node takes before the coordinator crashes.
    #[arg(long, default_value_t = 100)]
    pub locks_per_node: usize,
    /// With --scale: longest simulated time of one step, in seconds, before
    /// it counts as missed.
    #[arg(long, default_value_t = 60)]
    pub step_limit_secs: u64,
    /// With --scale: a fixed membership `max_transmissions` for every
    /// cluster size, instead of the LAN default's, which grows past 16
    /// members (to compare settings).
    #[arg(long)]
    pub max_transmissions: Option<u8>,
    /// With --scale: membership's `gossip_fanout` instead of the LAN
    /// default (to compare settings).
    #[arg(long)]
    pub gossip_fanout: Option<usize>,
    /// Length of the fault phase, in seconds of simulated time.
    #[arg(long, default_value_t = 15)]
    pub fault_secs: u64,
    /// `available` (both sides of a split grant) or `majority` (only a
    /// component with a majority of the nodes grants).
    #[arg(long, default_value = "available")]
    pub mode: String,
    /// Where views come from: `gossip` runs real SWIM membership over the
    /// simulated network; `scripted` installs views computed from the
    /// scenario (exact control over who sees what, and when).
    #[arg(long, default_value = "gossip")]
    pub membership: String,
    /// One lock request in eight waits 60 s (instead of at most 1.5 s), so
    /// that the end-of-run check that the coordinator knows every waiting
    /// request has requests to check.
    #[arg(long)]
    pub long_waits: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// With --seed: print the whole trace of a failing run (every
    /// datagram, gossip included), not only the lines about its lock.
    #[arg(long)]
    pub full_trace: bool,
}

/// Totals over many runs.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// What they did, summed.
    pub counts: Counts,
    /// Runs with a broken invariant.
    pub failures: Vec<Outcome>,
}

impl Summary {
    fn add(&mut self, o: Outcome) {
        self.seeds += 1;
        self.counts.add(&o.counts);
        if o.violation.is_some() {
            self.failures.push(o);
        }
    }

    /// The one-line summary `swimlock sim` prints.
    pub fn line(&self) -> String {
        let c = &self.counts;
        format!(
            "seeds {} steps {} grants {} failovers {} witnessed {} merges {} duplicates resolved {} restarts {} sudden crashes {} restarts alone {} bounces {} twin tags {} pauses {} declared down {} split holds {} violations {}",
            self.seeds,
            c.steps,
            c.grants,
            c.failovers,
            c.witnessed,
            c.merges,
            c.duplicates,
            c.restarts,
            c.sudden,
            c.alone,
            c.bounces,
            c.twin_tags,
            c.pauses,
            c.declared_down,
            c.split_holds,
            self.failures.len()
        )
    }
}

/// Parses `available` or `majority` (majority of `nodes`).
pub fn parse_mode(mode: &str, nodes: usize) -> Result<Mode, String> {
    match mode {
        "available" => Ok(Mode::Available),
        "majority" => {
            let members = NonZeroUsize::new(nodes).ok_or("--nodes must be at least 1")?;
            Ok(Mode::Majority { members })
        }
        other => Err(format!("--mode must be `available` or `majority`, not `{other}`")),
    }
}

/// Runs `seeds` on `threads` threads; the summary lists failing runs.
pub fn run_seeds(seeds: impl Iterator<Item = u64>, base: &RunConfig, threads: usize) -> Summary {
    let seeds: Vec<u64> = seeds.collect();
    let threads = threads.max(1);
    let chunks: Vec<Vec<u64>> =
        (0..threads).map(|t| seeds.iter().copied().skip(t).step_by(threads).collect()).collect();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk.into_iter().map(|seed| run(RunConfig { seed, ..base.clone() })).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("simulator thread panicked")).collect()
    });
    let mut summary = Summary::default();
    let mut outcomes = outcomes;
    outcomes.sort_by_key(|o| o.seed);
    for o in outcomes {
        summary.add(o);
    }
    summary
}

/// Prints a failing run: the violation, then the trace lines about its lock
/// and the faults around it (or, `full`, the whole trace).
pub fn print_failure(o: &Outcome, cfg: &RunConfig, full: bool) {
    let Some((at, v)) = &o.violation else { return };
    eprintln!("seed {} violates invariant {} at {:.6}s: {}", o.seed, v.invariant, at.as_secs_f64(), v.what);
    let lines: Vec<&String> = match &v.name {
        Some(_) if full => o.trace.iter().collect(),
        Some(name) => {
            let needle = format!("\"{name}\"");
            o.trace
                .iter()
                .filter(|l| {
                    l.contains(&needle)
                        || l.contains(name.as_str())
                        || l.contains(" view ")
                        || ["crash", "partition", "pause", "resume", "restart", "network", "declared down"]
                            .iter()
                            .any(|fault| l.contains(fault))
                })
                .collect()
        }
        None => o.trace.iter().collect(),
    };
    let skip = if full { 0 } else { lines.len().saturating_sub(400) };
    for line in &lines[skip..] {
        eprintln!("  {line}");
    }
    eprintln!(
        "replay: swimlock sim --seed {} --nodes {} --fault-secs {} --mode {} --membership {}{}",
        o.seed,
        cfg.nodes,
        cfg.fault_phase.as_secs(),
        match cfg.mode {
            Mode::Available => "available",
            Mode::Majority { .. } => "majority",
        },
        if cfg.gossip { "gossip" } else { "scripted" },
        if cfg.long_waits { " --long-waits" } else { "" }
    );
}

/// `swimlock sim`: runs the seeds and prints one summary line; exits
/// non-zero on any violation.
pub fn main(args: SimArgs) -> ExitCode {
    let mode = match parse_mode(&args.mode, args.nodes) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("swimlock sim: {e}");
            return ExitCode::from(2);
        }
    };
    if args.scale {
        return scale_main(&args);
    }
    let seeds = args.seeds.unwrap_or(100);
    if args.nodes == 0 || args.nodes > 64 {
        eprintln!("swimlock sim: --nodes must be between 1 and 64");
        return ExitCode::from(2);
    }
    let mut base = RunConfig::new(0, args.nodes);
    base.mode = mode;
    base.gossip = match args.membership.as_str() {
        "gossip" => true,
        "scripted" => false,
        other => {
            eprintln!("swimlock sim: --membership must be `gossip` or `scripted`, not `{other}`");
            return ExitCode::from(2);
        }
    };
    base.fault_phase = Duration::from_secs(args.fault_secs);
    base.long_waits = args.long_waits;
    let started = Instant::now();
    if let Some(seed) = args.seed {
        let outcome = run(RunConfig { seed, trace: true, ..base.clone() });
        let failed = outcome.violation.is_some();
        if failed {
            print_failure(&outcome, &base, args.full_trace);
        } else {
            for line in &outcome.trace {
                println!("{line}");
            }
        }
        let mut summary = Summary::default();
        summary.add(outcome);
        println!("{} ({:.1}s)", summary.line(), started.elapsed().as_secs_f64());
        return if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    let summary = run_seeds(args.first_seed..args.first_seed + seeds, &base, args.threads);
    for failure in &summary.failures {
        let replay = run(RunConfig { seed: failure.seed, trace: true, ..base.clone() });
        print_failure(&replay, &base, false);
    }
    println!("{} ({:.1}s)", summary.line(), started.elapsed().as_secs_f64());
    if summary.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `swimlock sim --scale`: one report per seed, then the worst of each
/// figure over the seeds and the targets.
fn scale_main(args: &SimArgs) -> ExitCode {
    if !(2..=10_000).contains(&args.nodes) {
        eprintln!("swimlock sim --scale: --nodes must be between 2 and 10000");
        return ExitCode::from(2);
    }
    if args.locks_per_node > 10_000 {
        eprintln!("swimlock sim --scale: --locks-per-node must be at most 10000");
        return ExitCode::from(2);
    }
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first_seed..args.first_seed + args.seeds.unwrap_or(3)).collect(),
    };
    let threads = args.threads.max(1);
    let nodes = args.nodes;
    let mut base = scale::ScaleConfig::new(0, nodes);
    base.locks_per_node = args.locks_per_node;
    base.step_limit = Duration::from_secs(args.step_limit_secs.max(1));
    if let Some(n) = args.max_transmissions {
        match std::num::NonZeroU8::new(n) {
            Some(n) => {
                base.membership.max_transmissions = n;
                base.membership.scale_transmissions = false;
            }
            None => {
                eprintln!("swimlock sim --scale: --max-transmissions must be at least 1");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(n) = args.gossip_fanout {
        match NonZeroUsize::new(n) {
            Some(n) => base.membership.gossip_fanout = n,
            None => {
                eprintln!("swimlock sim --scale: --gossip-fanout must be at least 1");
                return ExitCode::from(2);
            }
        }
    }
    let base = &base;
    let reports: Vec<scale::ScaleReport> = std::thread::scope(|scope| {
        let chunks: Vec<Vec<u64>> =
            (0..threads).map(|t| seeds.iter().copied().skip(t).step_by(threads).collect()).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|seed| {
                            let report = scale::run(scale::ScaleConfig { seed, ..base.clone() });
                            for line in report.lines() {
                                println!("{line}");
                            }
                            report
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("simulator thread panicked")).collect()
    });
    let summary = scale::Summary::of(&reports);
    for line in summary.lines() {
        println!("{line}");
    }
    if summary.complete { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The cluster key of a simulated run, from the run's seed.
pub(crate) fn run_key(run_seed: u64) -> Key {
    let mut key = [0u8; 32];
    SmallRng::seed_from_u64(run_seed ^ 0x6b65_795f_7365_6564).fill(&mut key[..]);
    Key::from_bytes(key)
}

/// How a simulated host seals: the run's key and a salt from the host's own
/// seed (a restarted host draws a new one), so the sealing code runs under
/// the simulator and one seed still gives one trace.
pub(crate) fn sealed(run_seed: u64, host_seed: u64) -> Security {
    let mut salt = [0u8; 16];
    SmallRng::seed_from_u64(host_seed ^ 0x7361_6c74).fill(&mut salt[..]);
    Security::Sealed { keyring: Keyring::new(run_key(run_seed)), salt }
}
