//! The results as a table, target checks and JSON (the plots: `plot.rs`).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use swimlock_wire::frame::{ClusterId, TAG_LEN, encode_lock};
use swimlock_wire::lock::{LockFrame, LockMsg, LockReq, Wait};
use swimlock_wire::{ClientId, LockName, NodeId, ReqId};

use super::floor::Floor;
use super::processes::{CLI_ROWS, ENDPOINT_ROWS, SPAWN_ROWS, row_name};
use super::{BUSY_POLL_ROW, BenchArgs, Measurement, PAIRED_INSECURE_ROW, PAIRED_SEALED_ROW};

/// Percentiles of the table, the JSON and the plot.
const PERCENTILES: [(&str, f64); 4] = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)];

/// Size of a sealed lock request datagram (envelope, frame and tag).
pub fn lock_request_len() -> usize {
    let node = |port| NodeId { epoch: 1, addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)) };
    let req = LockReq {
        id: ReqId(1_000_000),
        sync: 1,
        client: ClientId(1000),
        name: LockName::new("bench/uncontended_noncoord_embedded").expect("valid name"),
        wait: Wait::Queue,
        ticket: None,
        floor: ReqId(999_999),
        stamp: 1_700_000_000_000,
    };
    let frame = LockFrame { from: node(7001), to: node(7002), msgs: vec![LockMsg::Lock(req)] };
    encode_lock(&frame, ClusterId::from_name(crate::agent::DEFAULT_CLUSTER)).map_or(64, |d| d.len() + TAG_LEN)
}

fn us(hist: &Histogram<u64>, percentile: f64) -> f64 {
    hist.value_at_percentile(percentile) as f64 / 1e3
}

fn ratio(m: &Measurement) -> Option<f64> {
    m.floor.as_ref().map(|f| us(&m.hist, 50.0) / f.p50_us())
}

/// The table: percentiles in µs, rate, the floor beside it and its mode.
pub fn table(results: &[Measurement]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<39} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>22} {:>9}",
        "measurement (µs)",
        "n",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "ops/s",
        "floor p50 (mode)",
        "p50/floor"
    );
    for m in results {
        let floor = m.floor.as_ref().map_or("-".to_string(), |f| format!("{:.1} ({})", f.p50_us(), f.mode()));
        let rate = m.rate.map_or("-".to_string(), |r| format!("{r:.0}"));
        let ratio = ratio(m).map_or("-".to_string(), |r| format!("{r:.1}x"));
        let _ = write!(s, "{:<39} {:>7}", m.name, m.hist.len());
        for (_, p) in PERCENTILES {
            let _ = write!(s, " {:>10.1}", us(&m.hist, p));
        }
        let _ = writeln!(s, " {:>10.1} {rate:>10} {floor:>22} {ratio:>9}", m.hist.max() as f64 / 1e3);
    }
    s
}

fn find<'a>(results: &'a [Measurement], name: &str) -> Option<&'a Measurement> {
    results.iter().find(|m| m.name == name)
}

/// The targets, each met or missed.
pub fn targets(results: &[Measurement]) -> String {
    let mut s = String::from("\ntargets:\n");
    let mut line = |what: String, ok: bool| {
        let _ = writeln!(s, "  [{}] {what}", if ok { "met " } else { "MISS" });
    };
    for (name, setting) in [("uncontended_noncoord_embedded", "defaults"), (BUSY_POLL_ROW, "busy-poll 50µs")]
    {
        let Some(m) = find(results, name) else { continue };
        let Some(f) = &m.floor else { continue };
        let (p50, f50) = (us(&m.hist, 50.0), f.p50_us());
        let (p99, f99) = (us(&m.hist, 99.0), us(&f.hist, 99.0));
        line(
            format!(
                "non-coordinator embedded p50 {p50:.1} µs <= 2 x floor p50 {f50:.1} µs ({}; {setting})",
                f.mode()
            ),
            p50 <= 2.0 * f50,
        );
        line(
            format!("non-coordinator embedded p99 {p99:.1} µs <= 5 x floor p99 {f99:.1} µs ({setting})"),
            p99 <= 5.0 * f99,
        );
    }
    if let (Some(sealed), Some(plain)) =
        (find(results, PAIRED_SEALED_ROW), find(results, PAIRED_INSECURE_ROW))
    {
        let (s50, p50) = (us(&sealed.hist, 50.0), us(&plain.hist, 50.0));
        line(
            format!(
                "sealing adds {:.1} µs to the non-coordinator embedded p50 ({s50:.1} sealed vs {p50:.1} insecure, paired) <= 5 µs",
                s50 - p50
            ),
            s50 - p50 <= 5.0,
        );
    }
    if let Some(r) = find(results, "throughput_16_distinct").and_then(|m| m.rate) {
        line(
            format!("{r:.0} pairs/s >= 150,000 (16 clients, distinct names, one coordinator)"),
            r >= 150_000.0,
        );
    }
    if let Some(r) = find(results, "contention_16_one_name").and_then(|m| m.rate) {
        line(format!("{r:.0} hand-offs/s >= 50,000 (16 clients, one name)"), r >= 50_000.0);
    }
    endpoint_targets(results, "", &mut line);
    if let Some(m) = find(results, "failover_kill_coordinator") {
        let p50 = us(&m.hist, 50.0) / 1e6;
        line(format!("failover p50 {p50:.3} s <= 1.0 s ({} runs, defaults)", m.hist.len()), p50 <= 1.0);
    }
    s.push_str("  (reconciliation of 100k locks: `cargo bench -p swimlock-benches --bench reconcile_mem`)\n");
    s
}

/// The client endpoint's targets (issue 12), against the TCP and UDP
/// floors of the same run, for the rows of the agents with `prefix` (see
/// [`row_name`]).
fn endpoint_targets(results: &[Measurement], prefix: &str, line: &mut impl FnMut(String, bool)) {
    let row = |name: &str| find(results, &row_name(prefix, name));
    let p50 = |name: &str| row(name).map(|m| us(&m.hist, 50.0));
    let own_floor = |name: &str| row(name).and_then(|m| m.floor.as_ref()).map(Floor::p50_us);
    let udp = find(results, "udp_floor").map(|m| us(&m.hist, 50.0));
    let of = if prefix.is_empty() { String::new() } else { format!("{prefix}: ") };
    if let (Some(p), Some(tcp)) = (p50("resp_coord_1_client"), own_floor("resp_coord_1_client")) {
        line(
            format!("{of}coordinator endpoint pair p50 {p:.1} µs <= 2.5 x tcp_floor p50 {tcp:.1} µs"),
            p <= 2.5 * tcp,
        );
    }
    if let (Some(p), Some(tcp), Some(udp)) =
        (p50("resp_noncoord_1_client"), own_floor("resp_noncoord_1_client"), udp)
    {
        let bound = 2.5 * tcp + 2.0 * udp;
        line(
            format!(
                "{of}non-coordinator endpoint pair p50 {p:.1} µs <= 2.5 x tcp_floor {tcp:.1} + 2 x udp_floor {udp:.1} = {bound:.1} µs"
            ),
            p <= bound,
        );
    }
    let rate = |name: &str| row(name).and_then(|m| m.rate);
    if let Some(r) = rate("resp_noncoord_16_distinct") {
        line(
            format!(
                "{of}{r:.0} pairs/s >= 60,000 (16 TCP clients, distinct names, non-coordinator endpoint)"
            ),
            r >= 60_000.0,
        );
        if let Some(redis) = find(results, "redis_16_distinct").and_then(|m| m.rate) {
            line(format!("{of}{r:.0} pairs/s >= Redis's {redis:.0} (same clients, same run)"), r >= redis);
        }
    }
    if let Some(m) = row("resp_noncoord_16_one_name") {
        let (r, worst) = (m.rate.unwrap_or(0.0), m.hist.max() as f64 / 1e6);
        line(format!("{of}{r:.0} hand-offs/s >= 30,000 (16 TCP clients, one name)"), r >= 30_000.0);
        line(format!("{of}worst wait {worst:.1} ms < 20 ms (16 TCP clients, one name; FIFO)"), worst < 20.0);
    }
}

/// The targets of `--processes`, for the process rows of each of
/// `prefixes`: every endpoint row at least 80% of the same row of the
/// in-process agents (ops/s, or for one client the inverse of the p50);
/// the non-coordinator pair of the client API through the agent's
/// endpoint against the UDP floor; the endpoint targets again; and the CLI
/// rows against the process-start floor.
pub fn process_targets(results: &[Measurement], cli: &[Measurement], prefixes: &[String]) -> String {
    let mut s = String::from("\ntargets of the agent processes:\n");
    let mut line = |what: String, ok: bool| {
        let _ = writeln!(s, "  [{}] {what}", if ok { "met " } else { "MISS" });
    };
    for prefix in prefixes {
        for row in ENDPOINT_ROWS {
            let (Some(p), Some(i)) = (find(results, &row_name(prefix, row)), find(results, row)) else {
                continue;
            };
            let (pct, how) = match (p.rate, i.rate) {
                (Some(pr), Some(ir)) => (100.0 * pr / ir, format!("{pr:.0} vs {ir:.0} ops/s")),
                _ => {
                    let (pp, ip) = (us(&p.hist, 50.0), us(&i.hist, 50.0));
                    (100.0 * ip / pp, format!("p50 {pp:.1} vs {ip:.1} µs"))
                }
            };
            line(format!("{}: {pct:.0}% of in-process ({how}) >= 80%", p.name), pct >= 80.0);
        }
        if let Some(m) = find(results, &row_name(prefix, "uncontended_noncoord_tcp"))
            && let Some(f) = &m.floor
        {
            let (p50, f50, p99, f99) = (us(&m.hist, 50.0), f.p50_us(), us(&m.hist, 99.0), us(&f.hist, 99.0));
            line(
                format!(
                    "{}: p50 {p50:.1} µs <= 2 x udp floor p50 {f50:.1} µs ({}; defaults)",
                    m.name,
                    f.mode()
                ),
                p50 <= 2.0 * f50,
            );
            line(
                format!("{}: p99 {p99:.1} µs <= 5 x udp floor p99 {f99:.1} µs (defaults)", m.name),
                p99 <= 5.0 * f99,
            );
        }
        endpoint_targets(results, prefix, &mut line);
    }
    if let Some(spawn) = find(cli, SPAWN_ROWS[1]) {
        let base = us(&spawn.hist, 50.0);
        for m in cli.iter().filter(|m| CLI_ROWS.iter().any(|r| m.name.ends_with(r))) {
            let p50 = us(&m.hist, 50.0);
            let _ = writeln!(
                s,
                "  (info) {}: p50 {:.2} ms, {:.1}x the start of `swimlock --version` ({:.2} ms)",
                m.name,
                p50 / 1e3,
                p50 / base,
                base / 1e3
            );
        }
    }
    s
}

/// One JSON entry per measurement.
pub fn json(results: &[Measurement], args: &BenchArgs) -> String {
    let entries: Vec<serde_json::Value> = results
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "sample": m.what,
                "count": m.hist.len(),
                "p50_us": us(&m.hist, 50.0),
                "p90_us": us(&m.hist, 90.0),
                "p99_us": us(&m.hist, 99.0),
                "p999_us": us(&m.hist, 99.9),
                "max_us": m.hist.max() as f64 / 1e3,
                "mean_us": m.hist.mean() / 1e3,
                "ops_per_s": m.rate,
                "floor_p50_us": m.floor.as_ref().map(|f| f.p50_us()),
                "floor_p99_us": m.floor.as_ref().map(|f| us(&f.hist, 99.0)),
                "floor_mode": m.floor.as_ref().map(|f| f.mode()),
                "p50_over_floor": ratio(m),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "nodes": args.nodes,
        "pin_cpu": args.pin_cpu,
        "duration_s": args.duration.as_secs_f64(),
        "processes": args.processes,
        "agent_runtimes": args.agent_runtimes,
        "measurements": entries,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}
