//! `swimlock bench`: end-to-end latency and throughput of a real cluster on
//! loopback (in-process agents, each with its own UDP socket), against the
//! floor of a raw UDP round trip measured beside every measurement.
//!
//! Every loop is bounded in count and in time; a default run takes well
//! under three minutes.

mod agents;
mod cluster;
mod floor;
mod plot;
mod processes;
mod report;
mod resp;

pub use agents::RUNTIME_ENV as AGENT_RUNTIME_ENV;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::client::Client;
use cluster::Cluster;
use floor::Floor;

/// Options of `swimlock bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Nodes in the cluster (at least 2, so a non-coordinator and a
    /// failover survivor exist).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=9))]
    pub nodes: u16,
    /// Write the results as JSON here (one entry per measurement).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency-by-percentile plot here (SVG), with a PNG beside it
    /// and the failover times of the runs (NAME-failover.svg, .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Pin every thread of the run to this CPU.
    #[arg(long)]
    pub pin_cpu: Option<usize>,
    /// Length of each throughput/contention measurement (uncontended runs
    /// stop at this length or 20,000 pairs).
    #[arg(long, default_value = "2s", value_parser = crate::agent::parse_duration)]
    pub duration: Duration,
    /// Failover runs (a fresh cluster each).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub failover_runs: u32,
    /// Measure real `swimlock agent` processes (this binary, started on
    /// loopback) through their client endpoints, each row beside the same
    /// row of in-process agents of the same run; also their idle CPU and
    /// `swimlock lock NAME -- true` end to end (process start included).
    /// Instead of the default rows (embedded, failover).
    #[arg(long)]
    pub processes: bool,
    /// With --processes: one cluster of agent processes per runtime named
    /// (`current`, the default; `multi`; `split`), for comparing them in
    /// one run.
    #[arg(
        long,
        value_delimiter = ',',
        hide = true,
        requires = "processes",
        value_parser = ["current", "multi", "split"]
    )]
    pub agent_runtimes: Vec<String>,
    /// Run only the rows whose names start with one of these prefixes
    /// (comma-separated, e.g. `resp_noncoord,uncontended_noncoord`); the
    /// floors are always measured. Not with --processes, which has rows
    /// of its own.
    #[arg(long, value_delimiter = ',', conflicts_with = "processes")]
    pub only: Vec<String>,
}

impl BenchArgs {
    /// Whether a row named `row` is to run (see [`BenchArgs::only`]).
    fn wants(&self, row: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| row.starts_with(p.as_str()))
    }

    /// Whether any row of the group named `prefix` is to run.
    fn wants_group(&self, prefix: &str) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|p| p.starts_with(prefix) || prefix.starts_with(p.as_str()))
    }
}

/// Clients of the throughput and contention measurements.
const CLIENTS: usize = 16;
/// Pairs of an uncontended measurement, at most.
const UNCONTENDED_PAIRS: u64 = 20_000;
/// Pairs before each uncontended measurement, not recorded.
const WARMUP_PAIRS: u64 = 200;
/// The busy-poll of the extra non-coordinator measurement.
const BUSY_POLL: Duration = Duration::from_micros(50);
/// Its row.
pub const BUSY_POLL_ROW: &str = "uncontended_noncoord_embedded_busy_poll";
/// Rows of the paired measurement: sealed and insecure clusters, side by side.
pub const PAIRED_SEALED_ROW: &str = "noncoord_embedded_paired_sealed";
/// See [`PAIRED_SEALED_ROW`].
pub const PAIRED_INSECURE_ROW: &str = "noncoord_embedded_paired_insecure";
/// Pairs of one block of the paired measurement; each round is one block
/// on each cluster. Short blocks, so a change of the machine's state falls
/// on both alike.
const PAIRED_BLOCK: u64 = 25;
/// Timeout of one lock call.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// A failover run gives up after this long.
const FAILOVER_LIMIT: Duration = Duration::from_secs(15);

/// One measurement: latencies in nanoseconds, the floor measured right
/// before it, and a rate for the throughput kinds.
pub struct Measurement {
    /// Name in the table and the JSON.
    pub name: String,
    /// What a sample is.
    pub what: &'static str,
    /// Samples, ns.
    pub hist: Histogram<u64>,
    /// The floor measured right before.
    pub floor: Option<Floor>,
    /// Operations per second (pairs or hand-offs), if a rate was measured.
    pub rate: Option<f64>,
}

/// A histogram of nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

fn record(hist: &mut Histogram<u64>, d: Duration) {
    let _ = hist.record((d.as_nanos() as u64).max(1));
}

/// Runs the benchmark; the process exits with the returned code.
pub fn main(args: BenchArgs) -> ExitCode {
    if let Some(cpu) = args.pin_cpu
        && let Err(e) = pin(cpu)
    {
        eprintln!("swimlock bench: cannot pin to CPU {cpu}: {e}");
        return ExitCode::FAILURE;
    }
    // Threads started from here on inherit the affinity.
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swimlock bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(until_signal(run(&args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swimlock bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `work`, unless SIGTERM or SIGINT comes first: then `work` is dropped,
/// and with it the agent processes it started (their guard kills them).
async fn until_signal(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::select! {
        done = work => done,
        _ = term.recv() => anyhow::bail!("stopped by SIGTERM"),
        _ = int.recv() => anyhow::bail!("stopped by SIGINT"),
    }
}

fn pin(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let payload = report::lock_request_len();
    let nodes = usize::from(args.nodes);
    println!(
        "swimlock bench: {nodes} nodes on loopback{}, floor payload {payload} bytes, duration {:?}{}",
        if args.processes { " (agent processes and in-process agents, side by side)" } else { "" },
        args.duration,
        args.pin_cpu.map(|c| format!(", pinned to CPU {c}")).unwrap_or_default()
    );
    let (results, floors, tcp_floors) = if args.processes {
        processes::measure(args, payload).await?
    } else {
        in_process(args, payload).await?
    };
    if !args.only.is_empty() && results.is_empty() {
        anyhow::bail!("--only {}: no row's name starts with that", args.only.join(","));
    }
    output(args, results, floors, tcp_floors)?;
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The rows of in-process agents; the UDP and TCP floors beside them.
async fn in_process(
    args: &BenchArgs,
    payload: usize,
) -> anyhow::Result<(Vec<Measurement>, Vec<Floor>, Vec<Floor>)> {
    let nodes = usize::from(args.nodes);
    let mut results = Vec::new();
    let mut floors = Vec::new();

    let cluster = Cluster::start(nodes, Duration::ZERO, false).await?;
    let coord = cluster.node(0)?;
    let other = cluster.node(1)?;
    // (name, node, over TCP): embedded callers run on their node's thread,
    // TCP clients on this process's runtime, as another process would.
    let cases = [
        ("uncontended_noncoord_embedded", other, false),
        ("uncontended_coord_embedded", coord, false),
        ("uncontended_noncoord_tcp", other, true),
        ("uncontended_coord_tcp", coord, true),
    ];
    for (name, node, tcp) in cases {
        if !args.wants(name) {
            continue;
        }
        let floor = floor::measure(payload).await?;
        floors.push(floor.clone());
        let hist = if tcp {
            let addr = node.agent().client_addr().context("no client endpoint")?;
            uncontended(Client::connect(&addr.to_string()).await?, name, args.duration).await?
        } else {
            let client = node.agent().client().await?;
            node.run(uncontended(client, name, args.duration)).await?
        };
        results.push(Measurement {
            name: name.into(),
            what: "lock+unlock pair",
            hist,
            floor: Some(floor),
            rate: None,
        });
    }

    let tcp_floors = endpoint_rows(&mut results, coord, other, args).await?;

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(coord.agent().client().await?);
    }
    for (name, shared, what) in [
        ("throughput_16_distinct", None, "lock+unlock pair"),
        ("contention_16_one_name", Some("bench/contended"), "wait for the lock"),
    ] {
        if !args.wants(name) {
            continue;
        }
        let floor = floor::measure(payload).await?;
        floors.push(floor.clone());
        let (hist, rate) = coord.run(throughput(clients.clone(), shared, args.duration)).await?;
        results.push(Measurement { name: name.into(), what, hist, floor: Some(floor), rate: Some(rate) });
    }
    drop(clients);
    cluster.stop().await;

    // The same non-coordinator pairs, every node busy-polling after traffic.
    if args.wants(BUSY_POLL_ROW) {
        busy_poll_row(&mut results, &mut floors, nodes, payload, args.duration).await?;
    }
    if args.wants(PAIRED_SEALED_ROW) || args.wants(PAIRED_INSECURE_ROW) {
        paired_rows(&mut results, &mut floors, nodes, payload, args.duration).await?;
    }
    if args.wants("failover_kill_coordinator") {
        let floor = floor::measure(payload).await?;
        floors.push(floor.clone());
        let hist = failover(nodes, args.failover_runs).await?;
        results.push(Measurement {
            name: "failover_kill_coordinator".into(),
            what: "kill to first grant",
            hist,
            floor: Some(floor),
            rate: None,
        });
    }
    Ok((results, floors, tcp_floors))
}

/// Prints the tables and targets, writes the JSON and the plots.
fn output(
    args: &BenchArgs,
    mut results: Vec<Measurement>,
    floors: Vec<Floor>,
    tcp_floors: Vec<Floor>,
) -> anyhow::Result<()> {
    for (name, what, floors) in
        [("tcp_floor", "TCP round trip", &tcp_floors), ("udp_floor", "UDP round trip", &floors)]
    {
        let mut all = new_hist();
        for f in floors {
            all.add(&f.hist).context("merging floors")?;
        }
        results.insert(0, Measurement { name: name.into(), what, hist: all, floor: None, rate: None });
    }

    let (cli, endpoint): (Vec<_>, Vec<_>) = results.into_iter().partition(processes::is_cli_row);
    let results = endpoint;
    print!("{}", report::table(&results));
    if !cli.is_empty() {
        println!("\nend to end through the CLI, process start included (reported apart):");
        print!("{}", report::table(&cli));
    }
    print!("{}", report::targets(&results));
    if args.processes {
        print!("{}", report::process_targets(&results, &cli, &process_prefixes(args)));
    }
    let results: Vec<Measurement> = results.into_iter().chain(cli).collect();
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&results, args))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        let files =
            plot::write(path, &results).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        println!("plots written to {}", names.join(", "));
    }
    Ok(())
}

/// The non-coordinator embedded pairs again, on a fresh cluster whose
/// nodes busy-poll after traffic.
async fn busy_poll_row(
    results: &mut Vec<Measurement>,
    floors: &mut Vec<Floor>,
    nodes: usize,
    payload: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let cluster = Cluster::start(nodes, BUSY_POLL, false).await?;
    let floor = floor::measure(payload).await?;
    floors.push(floor.clone());
    let other = cluster.node(1)?;
    let client = other.agent().client().await?;
    let hist = other.run(uncontended(client, BUSY_POLL_ROW, limit)).await?;
    results.push(Measurement {
        name: BUSY_POLL_ROW.into(),
        what: "lock+unlock pair",
        hist,
        floor: Some(floor),
        rate: None,
    });
    cluster.stop().await;
    Ok(())
}

/// Sealed against insecure: two fresh clusters side by side, the
/// non-coordinator pairs of both in short alternating rounds.
async fn paired_rows(
    results: &mut Vec<Measurement>,
    floors: &mut Vec<Floor>,
    nodes: usize,
    payload: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let sealed = Cluster::start(nodes, Duration::ZERO, false).await?;
    let plain = Cluster::start(nodes, Duration::ZERO, true).await?;
    let floor = floor::measure(payload).await?;
    floors.push(floor.clone());
    let (sealed_hist, plain_hist, diffs) = paired(sealed.node(1)?, plain.node(1)?, limit).await?;
    println!(
        "paired sealed/insecure: {} rounds of {} pairs each, median per-round p50 difference {:.1} µs",
        diffs.len(),
        PAIRED_BLOCK,
        median(&diffs)
    );
    for (name, hist) in [(PAIRED_SEALED_ROW, sealed_hist), (PAIRED_INSECURE_ROW, plain_hist)] {
        results.push(Measurement {
            name: name.into(),
            what: "lock+unlock pair",
            hist,
            floor: Some(floor.clone()),
            rate: None,
        });
    }
    plain.stop().await;
    sealed.stop().await;
    Ok(())
}

/// The prefixes of the process rows of this run.
fn process_prefixes(args: &BenchArgs) -> Vec<String> {
    if args.agent_runtimes.is_empty() {
        return vec![processes::prefix(None, false)];
    }
    let several = args.agent_runtimes.len() > 1;
    args.agent_runtimes.iter().map(|r| processes::prefix(Some(r), several)).collect()
}

/// The client-endpoint rows, through a raw RESP client: on the
/// coordinator's and on a non-coordinator's endpoint, one client, then 16
/// clients (distinct names, one name); the same against a
/// Redis on loopback when `redis-server` is installed. Each row's floor is
/// a TCP round trip measured right before it; those floors are returned.
async fn endpoint_rows(
    results: &mut Vec<Measurement>,
    coord: &cluster::Node,
    other: &cluster::Node,
    args: &BenchArgs,
) -> anyhow::Result<Vec<Floor>> {
    let limit = args.duration;
    use resp::Server;
    let addr = |n: &cluster::Node| n.agent().client_addr().context("no client endpoint");
    let mut servers = vec![
        ("resp_coord", Server::Swimlock(addr(coord)?)),
        ("resp_noncoord", Server::Swimlock(addr(other)?)),
    ];
    servers.retain(|(prefix, _)| args.wants_group(prefix));
    let redis = if args.wants_group("redis") { resp::Redis::start().await? } else { None };
    match &redis {
        Some(r) => servers.push(("redis", r.server.clone())),
        None if args.wants_group("redis") => println!("redis-server is not installed: no Redis rows"),
        None => {}
    }
    let mut floors = Vec::new();
    for (prefix, server) in &servers {
        let name = format!("{prefix}_1_client");
        if args.wants(&name) {
            let floor = resp::tcp_floor().await?;
            floors.push(floor.clone());
            let hist = resp::pairs(server, &name, limit, UNCONTENDED_PAIRS).await?;
            results.push(Measurement {
                name,
                what: "lock+unlock pair",
                hist,
                floor: Some(floor),
                rate: None,
            });
        }
        for (suffix, shared, what) in [
            ("16_distinct", None, "lock+unlock pair"),
            ("16_one_name", Some(format!("{prefix}-contended")), "wait for the lock"),
        ] {
            if !args.wants(&format!("{prefix}_{suffix}")) {
                continue;
            }
            let floor = resp::tcp_floor().await?;
            floors.push(floor.clone());
            let (hist, rate) = resp::many(server, CLIENTS, shared.as_deref(), limit).await?;
            let name = format!("{prefix}_{suffix}");
            results.push(Measurement { name, what, hist, floor: Some(floor), rate: Some(rate) });
        }
    }
    Ok(floors)
}

/// Non-coordinator pairs on `sealed` and `plain`, in rounds of one block
/// of [`PAIRED_BLOCK`] pairs on each (ABBA order), for about `2 * limit`:
/// both histograms and the per-round p50 differences (µs, sealed minus
/// plain).
async fn paired(
    sealed: &cluster::Node,
    plain: &cluster::Node,
    limit: Duration,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, Vec<f64>)> {
    let (block, block_limit) = (PAIRED_BLOCK, Duration::MAX);
    let (a, b) = (sealed.agent().client().await?, plain.agent().client().await?);
    sealed.run(pairs(a.clone(), "paired", WARMUP_PAIRS, Duration::MAX)).await?;
    plain.run(pairs(b.clone(), "paired", WARMUP_PAIRS, Duration::MAX)).await?;
    let (mut all_a, mut all_b, mut diffs) = (new_hist(), new_hist(), Vec::new());
    let started = Instant::now();
    let rounds = UNCONTENDED_PAIRS / PAIRED_BLOCK;
    for round in 0..rounds {
        if started.elapsed() > 2 * limit {
            break;
        }
        let (ha, hb) = if round % 2 == 0 {
            let ha = sealed.run(pairs(a.clone(), "paired", block, block_limit)).await?;
            (ha, plain.run(pairs(b.clone(), "paired", block, block_limit)).await?)
        } else {
            let hb = plain.run(pairs(b.clone(), "paired", block, block_limit)).await?;
            (sealed.run(pairs(a.clone(), "paired", block, block_limit)).await?, hb)
        };
        diffs.push((ha.value_at_percentile(50.0) as f64 - hb.value_at_percentile(50.0) as f64) / 1e3);
        all_a.add(&ha).context("merging histograms")?;
        all_b.add(&hb).context("merging histograms")?;
    }
    Ok((all_a, all_b, diffs))
}

/// Up to `count` lock+unlock pairs of one client on its own name, for at
/// most `limit`.
async fn pairs(
    client: Client,
    name: &'static str,
    count: u64,
    limit: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let name = format!("bench/{name}");
    let mut hist = new_hist();
    let start = Instant::now();
    for _ in 0..count {
        if start.elapsed() > limit {
            break;
        }
        let t = Instant::now();
        client.lock(&name, LOCK_TIMEOUT).await?.unlock().await?;
        record(&mut hist, t.elapsed());
    }
    Ok(hist)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// lock+unlock pairs of one client on its own name.
async fn uncontended(client: Client, name: &str, limit: Duration) -> anyhow::Result<Histogram<u64>> {
    let name = format!("bench/{name}");
    for _ in 0..WARMUP_PAIRS {
        client.lock(&name, LOCK_TIMEOUT).await?.unlock().await?;
    }
    let mut hist = new_hist();
    let start = Instant::now();
    for _ in 0..UNCONTENDED_PAIRS {
        if start.elapsed() > limit {
            break;
        }
        let t = Instant::now();
        client.lock(&name, LOCK_TIMEOUT).await?.unlock().await?;
        record(&mut hist, t.elapsed());
    }
    Ok(hist)
}

/// Every client loops lock+unlock for `limit`: on its own name (`shared`
/// `None`: latency of the pair, rate in pairs/s) or all on one name (latency
/// of the wait for the grant, rate in hand-offs/s).
async fn throughput(
    clients: Vec<Client>,
    shared: Option<&'static str>,
    limit: Duration,
) -> anyhow::Result<(Histogram<u64>, f64)> {
    let start = Instant::now();
    let deadline = Arc::new(start + limit);
    let mut tasks = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let name = shared.map_or_else(|| format!("bench/distinct-{i}"), str::to_string);
        let contended = shared.is_some();
        let deadline = deadline.clone();
        tasks.spawn(async move {
            let mut hist = new_hist();
            let mut count = 0u64;
            // Bounded by time and by count.
            while Instant::now() < *deadline && count < 10_000_000 {
                let t = Instant::now();
                let guard = client.lock(&name, LOCK_TIMEOUT).await?;
                if contended {
                    record(&mut hist, t.elapsed());
                }
                guard.unlock().await?;
                if !contended {
                    record(&mut hist, t.elapsed());
                }
                count += 1;
            }
            anyhow::Ok((hist, count))
        });
    }
    let mut hist = new_hist();
    let mut total = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let (h, count) = joined??;
        hist.add(&h).context("merging histograms")?;
        total += count;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    Ok((hist, rate))
}

/// Time from killing the coordinator (its task aborted: no release, no
/// leave, socket closed) to the first grant to a client of a survivor,
/// over `runs` fresh clusters.
async fn failover(nodes: usize, runs: u32) -> anyhow::Result<Histogram<u64>> {
    let mut hist = new_hist();
    for run in 0..runs {
        let mut cluster = Cluster::start(nodes, Duration::ZERO, false).await?;
        let survivor = cluster.node(nodes - 1)?.agent().client().await?;
        let name = format!("bench/failover-{run}");
        survivor.lock(&name, LOCK_TIMEOUT).await?.unlock().await?;
        let t = Instant::now();
        cluster.kill(0).await;
        loop {
            match survivor.lock(&name, Duration::from_secs(5)).await {
                Ok(guard) => {
                    println!(
                        "failover run {}: first grant {:.3} s after the kill",
                        run + 1,
                        t.elapsed().as_secs_f64()
                    );
                    record(&mut hist, t.elapsed());
                    drop(guard);
                    break;
                }
                Err(e) if t.elapsed() < FAILOVER_LIMIT => {
                    println!(
                        "failover run {}: {e} after {:.3} s; trying again",
                        run + 1,
                        t.elapsed().as_secs_f64()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    return Err(e).context(format!("failover run {run}: no grant within {FAILOVER_LIMIT:?}"));
                }
            }
        }
        drop(survivor);
        cluster.stop().await;
    }
    Ok(hist)
}
