//! Failover and heal times repeated enough for percentiles: one rig per
//! cell (link latency × loss), a cycle per run of a coordinator kill and a
//! majority/minority split, no workload (the figures are the cluster's).

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::nemesis;
use super::net::{Mode, Rig};
use super::relay::Latency;

/// How long one wait of a cycle may take before the cycle counts as failed.
const LIMIT: Duration = Duration::from_secs(30);

/// One cell of the table: the links' latency and random loss.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    /// Delay of every datagram to a node.
    pub latency: Latency,
    /// Random loss, percent, on every node's input.
    pub loss: u8,
}

/// What the runs of one cell measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Coordinator SIGKILL to the first grant of a fresh lock on another node.
    pub failover: Vec<Duration>,
    /// End of a split to one view of every node with a serving coordinator.
    pub heal: Vec<Duration>,
    /// Waits that did not finish within their bound, with what they were.
    pub failures: Vec<String>,
}

/// The `p`-th percentile (nearest rank) of `d`.
pub fn percentile(d: &[Duration], p: f64) -> Duration {
    let mut v = d.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank - 1).copied().unwrap_or_default()
}

fn stats(d: &[Duration]) -> String {
    if d.is_empty() {
        return "none (n=0)".into();
    }
    let s = |x: Duration| format!("{:.2}s", x.as_secs_f64());
    let mut sorted = d.to_vec();
    sorted.sort();
    let all: Vec<String> = sorted.iter().map(|x| format!("{:.2}", x.as_secs_f64())).collect();
    format!(
        "p50 {} p99 {} min {} max {} (n={}: {})",
        s(percentile(d, 50.0)),
        s(percentile(d, 99.0)),
        s(sorted[0]),
        s(sorted[sorted.len() - 1]),
        d.len(),
        all.join(" ")
    )
}

impl Measured {
    /// One summary line for `cell` on `n` nodes.
    pub fn line(&self, n: usize, cell: Cell, seed: u64) -> String {
        format!(
            "network figures: {n} nodes, latency {:?}±{:?}, loss {}%, seed {seed}: failover {}; heal {}; failed waits {}",
            cell.latency.base,
            cell.latency.jitter,
            cell.loss,
            stats(&self.failover),
            stats(&self.heal),
            self.failures.len()
        )
    }
}

/// Runs `runs` cycles of `cell` on a fresh rig of `n` agents with the
/// default settings (`available` mode).
pub fn measure(n: usize, cell: Cell, runs: usize, seed: u64) -> Measured {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rig = Rig::with_latency(n, Mode::Available, &[], Some(cell.latency), seed);
    let all: Vec<usize> = (0..n).collect();
    let mut out = Measured::default();
    if rt.block_on(rig.wait_one_view(&all, LIMIT)).is_none() {
        out.failures.push(format!("no single view of {n} agents within {LIMIT:?}"));
        return out;
    }
    if cell.loss > 0 {
        rig.set_loss(cell.loss);
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    for k in 0..runs {
        if let Err(e) = cycle(&rt, &mut rig, k, &mut rng, &mut out) {
            out.failures.push(format!("run {k}: {e}"));
            // A fresh start for the next run: every agent up, one view.
            for i in 0..n {
                if !rig.nodes[i].running() {
                    rig.start(i);
                }
            }
            rig.heal();
            if rt.block_on(rig.wait_one_view(&all, LIMIT)).is_none() {
                out.failures.push(format!("run {k}: no single view again within {LIMIT:?}; cell abandoned"));
                break;
            }
        }
    }
    out
}

/// One run: kill the coordinator and time the first fresh grant elsewhere,
/// restart it; split, wait until each side has its own view, heal and
/// time one view again.
fn cycle(
    rt: &tokio::runtime::Runtime,
    rig: &mut Rig,
    k: usize,
    rng: &mut SmallRng,
    out: &mut Measured,
) -> Result<(), String> {
    let n = rig.len();
    let all: Vec<usize> = (0..n).collect();
    let (killed, took) = nemesis::failover(rt, rig, &format!("figures-{k}")).map_err(|e| e.1)?;
    out.failover.push(took);
    rig.start(killed);
    rt.block_on(rig.wait_one_view(&all, LIMIT)).ok_or("no single view after the restart")?;
    let groups = nemesis::split(rng, n);
    rig.partition(&groups);
    for g in &groups {
        rt.block_on(rig.wait_one_view(g, LIMIT)).ok_or_else(|| format!("side {g:?} formed no view"))?;
    }
    rig.heal();
    let healed = Instant::now();
    rt.block_on(rig.wait_one_view(&all, LIMIT)).ok_or("no single view after the heal")?;
    out.heal.push(healed.elapsed());
    rig.mark_one_view();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&d, 99.0), Duration::from_millis(20));
        assert_eq!(percentile(&d[..1], 99.0), Duration::from_millis(1));
    }
}
