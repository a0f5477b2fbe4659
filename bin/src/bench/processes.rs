//! `swimlock bench --processes`: the client-endpoint rows measured on real
//! `swimlock agent` processes (the binary and runtime users deploy) and,
//! in the same run, on in-process agents, in alternating rounds (A B,
//! B A, A B, B A) so the machine's drift falls on both alike; then
//! `swimlock lock NAME -- true` end to end, process start included.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use super::agents::Agents;
use super::cluster::Cluster;
use super::floor::{self, Floor};
use super::resp::{self, Server};
use super::{BenchArgs, CLIENTS, Measurement, UNCONTENDED_PAIRS, WARMUP_PAIRS, new_hist, record};
use crate::client::Client;

/// Prefix of the rows measured on agent processes.
pub const PROCESS_PREFIX: &str = "proc";
/// The rows measured on both kinds of agents, in this order.
pub const ENDPOINT_ROWS: [&str; 8] = [
    "resp_coord_1_client",
    "resp_noncoord_1_client",
    "resp_coord_16_distinct",
    "resp_coord_16_one_name",
    "resp_noncoord_16_distinct",
    "resp_noncoord_16_one_name",
    "uncontended_coord_tcp",
    "uncontended_noncoord_tcp",
];
/// Rounds of each row: one slot of `--duration / ROUNDS` per group and
/// round, the groups in turn, every other round in reverse order.
const ROUNDS: u32 = 4;
/// Runs of `swimlock lock NAME -- true` per row, at most.
const CLI_RUNS: u64 = 2_000;
/// The CLI rows end to end, on the coordinator's and a non-coordinator's agent.
pub const CLI_ROWS: [&str; 2] = ["cli_lock_true_coord", "cli_lock_true_noncoord"];
/// The process-start floors of the CLI rows.
pub const SPAWN_ROWS: [&str; 2] = ["spawn_true", "spawn_swimlock_version"];

/// The agents one set of rows is measured on: their endpoints.
struct Group {
    prefix: String,
    coord: SocketAddr,
    other: SocketAddr,
    /// The threads of its coordinator and non-coordinator.
    threads: [Threads; 2],
}

/// Threads whose time waiting for a CPU while runnable is counted: all
/// of process `pid`, or only those named `name`.
struct Threads {
    pid: u32,
    name: Option<String>,
}

impl Threads {
    /// Their time on a run queue so far (second field of `schedstat`).
    fn waited(&self) -> Duration {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else { return Duration::ZERO };
        let nanos = tasks
            .flatten()
            .filter(|t| {
                self.name.as_ref().is_none_or(|name| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
            })
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(nanos)
    }
}

fn waited(threads: &[Threads; 2]) -> Duration {
    threads.iter().map(Threads::waited).sum()
}

/// How one row is measured.
#[derive(Clone, Copy)]
enum Kind {
    /// One raw RESP client's pairs.
    RespPairs,
    /// [`CLIENTS`] raw RESP clients, on distinct names or one name.
    RespMany(bool),
    /// One [`Client`] (RESP3, lease task) over TCP: the embedded API's
    /// pair, through the endpoint.
    ClientPairs,
}

fn kind(row: &str) -> Kind {
    if row.ends_with("_1_client") {
        Kind::RespPairs
    } else if row.ends_with("16_distinct") {
        Kind::RespMany(false)
    } else if row.ends_with("16_one_name") {
        Kind::RespMany(true)
    } else {
        Kind::ClientPairs
    }
}

/// The prefix of the process rows for `runtime` among `all` runtimes.
pub fn prefix(runtime: Option<&str>, several: bool) -> String {
    match runtime {
        Some(rt) if several => format!("{PROCESS_PREFIX}_{rt}"),
        _ => PROCESS_PREFIX.to_string(),
    }
}

/// Measures every row; the floors (UDP, TCP) are returned beside them.
pub async fn measure(
    args: &BenchArgs,
    payload: usize,
) -> anyhow::Result<(Vec<Measurement>, Vec<Floor>, Vec<Floor>)> {
    let exe = std::env::current_exe().context("the path of this binary")?;
    let nodes = usize::from(args.nodes);
    let runtimes: Vec<Option<&str>> = if args.agent_runtimes.is_empty() {
        vec![None]
    } else {
        args.agent_runtimes.iter().map(|r| Some(r.as_str())).collect()
    };
    let inproc = Cluster::start(nodes, Duration::ZERO, false).await?;
    let mut agents = Vec::new();
    for rt in &runtimes {
        let a = Agents::start(&exe, nodes, *rt).await?;
        say(format_args!(
            "agent processes ({} runtime): pids {} in {}",
            a.runtime,
            a.pids().iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
            a.dir().display()
        ));
        agents.push(a);
    }
    idle_cpu(&agents, args.duration).await;
    let addr = |n: &super::cluster::Node| n.agent().client_addr().context("no client endpoint");
    let mut groups = vec![Group {
        prefix: String::new(),
        coord: addr(inproc.node(0)?)?,
        other: addr(inproc.node(1)?)?,
        // The node threads, named after their node.
        threads: [1, 2].map(|i| Threads { pid: std::process::id(), name: Some(format!("bench-{i}")) }),
    }];
    for (a, rt) in agents.iter().zip(&runtimes) {
        groups.push(Group {
            prefix: prefix(*rt, runtimes.len() > 1),
            coord: a.agent(0)?.client_addr(),
            other: a.agent(1)?.client_addr(),
            threads: [
                Threads { pid: a.agent(0)?.pid(), name: None },
                Threads { pid: a.agent(1)?.pid(), name: None },
            ],
        });
    }
    let measured = async {
        let (mut results, udp_floors, tcp_floors) = endpoint_rows(&groups, payload, args.duration).await?;
        results.extend(cli_rows(&exe, &groups[1..], args.duration).await?);
        anyhow::Ok((results, udp_floors, tcp_floors))
    }
    .await;
    if measured.is_err() {
        // The directory goes with the agents: show what they logged first.
        agents.iter().for_each(Agents::print_logs);
    }
    inproc.stop().await;
    drop(agents);
    measured
}

/// Every row of [`ENDPOINT_ROWS`] on every group, in [`ROUNDS`] rounds;
/// the UDP and TCP floors measured before the rows.
async fn endpoint_rows(
    groups: &[Group],
    payload: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<Measurement>, Vec<Floor>, Vec<Floor>)> {
    let (mut results, mut udp_floors, mut tcp_floors) = (Vec::new(), Vec::new(), Vec::new());
    for row in ENDPOINT_ROWS {
        let floor = match kind(row) {
            Kind::ClientPairs => {
                let f = floor::measure(payload).await?;
                udp_floors.push(f.clone());
                f
            }
            _ => {
                let f = resp::tcp_floor().await?;
                tcp_floors.push(f.clone());
                f
            }
        };
        let mut per_group: Vec<(Histogram<u64>, Vec<f64>)> =
            groups.iter().map(|_| (new_hist(), vec![])).collect();
        let mut waits = vec![(Duration::ZERO, Duration::ZERO); groups.len()];
        for round in 0..ROUNDS {
            let order: Vec<usize> =
                if round % 2 == 0 { (0..groups.len()).collect() } else { (0..groups.len()).rev().collect() };
            for g in order {
                let (before, t) = (waited(&groups[g].threads), Instant::now());
                let (hist, rate) = measure_row(row, &groups[g], duration / ROUNDS)
                    .await
                    .with_context(|| format!("row {}", row_name(&groups[g].prefix, row)))?;
                waits[g].0 += waited(&groups[g].threads).saturating_sub(before);
                waits[g].1 += t.elapsed();
                per_group[g].0.add(&hist).context("merging histograms")?;
                per_group[g].1.extend(rate);
            }
        }
        if row.contains("_16_") {
            let rates: Vec<String> = groups
                .iter()
                .zip(&waits)
                .map(|(g, (w, t))| {
                    let who = if g.prefix.is_empty() { "in-process" } else { g.prefix.as_str() };
                    format!("{who} {:.0}", 1e3 * w.as_secs_f64() / t.as_secs_f64().max(1e-9))
                })
                .collect();
            say(format_args!(
                "{row}: ms per second the coordinator + non-coordinator waited for a CPU while runnable: {}",
                rates.join(", ")
            ));
        }
        for (g, (hist, rates)) in groups.iter().zip(per_group) {
            let rate = (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64);
            let what = if row.ends_with("one_name") { "wait for the lock" } else { "lock+unlock pair" };
            results.push(Measurement {
                name: row_name(&g.prefix, row),
                what,
                hist,
                floor: Some(floor.clone()),
                rate,
            });
        }
    }
    Ok((results, udp_floors, tcp_floors))
}

/// Prints the CPU each agent process uses while idle (gossip only, no
/// client), over `window` clamped to 0.5-5 s.
async fn idle_cpu(agents: &[Agents], window: Duration) {
    let window = window.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let before: Vec<Vec<Duration>> = agents.iter().map(Agents::cpu_times).collect();
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = start.elapsed().as_secs_f64();
    for (a, before) in agents.iter().zip(before) {
        let shares: Vec<String> = a
            .cpu_times()
            .iter()
            .zip(before)
            .map(|(after, before)| {
                format!("{:.2}%", 100.0 * after.saturating_sub(before).as_secs_f64() / elapsed)
            })
            .collect();
        say(format_args!(
            "idle CPU per agent process ({} runtime, {elapsed:.1} s, gossip only): {} of a CPU",
            a.runtime,
            shares.join(" ")
        ));
    }
}

/// Whether `m` is a row of the CLI end to end (or its process-start floor).
pub fn is_cli_row(m: &Measurement) -> bool {
    SPAWN_ROWS.contains(&m.name.as_str()) || CLI_ROWS.iter().any(|r| m.name.ends_with(r))
}

/// `row` of the agents with `prefix` (the in-process agents: no prefix).
pub fn row_name(prefix: &str, row: &str) -> String {
    if prefix.is_empty() { row.to_string() } else { format!("{prefix}_{row}") }
}

/// One slot of one row on one group: the histogram, and the rate if the
/// row has one.
async fn measure_row(row: &str, g: &Group, limit: Duration) -> anyhow::Result<(Histogram<u64>, Option<f64>)> {
    let addr = if row.contains("noncoord") { g.other } else { g.coord };
    let server = Server::Swimlock(addr);
    Ok(match kind(row) {
        Kind::RespPairs => {
            (resp::pairs(&server, row, limit, UNCONTENDED_PAIRS / u64::from(ROUNDS)).await?, None)
        }
        Kind::RespMany(one_name) => {
            let shared = one_name.then(|| format!("{row}-contended"));
            let (hist, rate) = resp::many(&server, CLIENTS, shared.as_deref(), limit).await?;
            (hist, Some(rate))
        }
        Kind::ClientPairs => {
            let client = Client::connect(&addr.to_string()).await?;
            let name: &'static str = if row.contains("noncoord") { "proc_noncoord" } else { "proc_coord" };
            super::pairs(client.clone(), name, WARMUP_PAIRS, Duration::MAX).await?;
            (super::pairs(client, name, UNCONTENDED_PAIRS / u64::from(ROUNDS), limit).await?, None)
        }
    })
}

/// `swimlock lock NAME -- true` against each agent group's coordinator and
/// non-coordinator, after the process-start floors: `true` alone, and
/// `swimlock --version`.
async fn cli_rows(exe: &Path, groups: &[Group], limit: Duration) -> anyhow::Result<Vec<Measurement>> {
    let mut results = Vec::new();
    let spawns: [(&str, Vec<String>, PathBuf); 2] = [
        (SPAWN_ROWS[0], vec![], PathBuf::from("true")),
        (SPAWN_ROWS[1], vec!["--version".into()], exe.to_path_buf()),
    ];
    for (name, args, program) in spawns {
        let hist = runs(program, args, limit).await?;
        results.push(Measurement {
            name: name.into(),
            what: "process start to exit",
            hist,
            floor: None,
            rate: None,
        });
    }
    for row in CLI_ROWS {
        for g in groups {
            let addr = if row.ends_with("noncoord") { g.other } else { g.coord };
            let args = ["lock", "bench/cli", "--client", &addr.to_string(), "--timeout", "10s", "--", "true"];
            let hist = runs(exe.to_path_buf(), args.iter().map(|s| s.to_string()).collect(), limit).await?;
            results.push(Measurement {
                name: row_name(&g.prefix, row),
                what: "process start to exit",
                hist,
                floor: None,
                rate: None,
            });
        }
    }
    Ok(results)
}

/// Runs `program args` to its exit, one at a time, for at most `limit`
/// or [`CLI_RUNS`] runs; each must succeed.
async fn runs(program: PathBuf, args: Vec<String>, limit: Duration) -> anyhow::Result<Histogram<u64>> {
    tokio::task::spawn_blocking(move || {
        let mut hist = new_hist();
        let start = Instant::now();
        for _ in 0..CLI_RUNS {
            if start.elapsed() > limit {
                break;
            }
            let t = Instant::now();
            let out = Command::new(&program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("running {}", program.display()))?;
            record(&mut hist, t.elapsed());
            if !out.status.success() {
                bail!(
                    "{} {}: {} {}",
                    program.display(),
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(hist)
    })
    .await?
}

/// Prints a line while agents run. A closed stdout is ignored here: a
/// panic on it would end the process without the guard killing them.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}
