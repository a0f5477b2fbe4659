//! Prometheus metrics of one agent, through the `metrics` facade.
//!
//! Each agent has its own recorder (not the process-global one), so several
//! agents embedded in one process, as the demo and tests do, keep separate
//! figures. The node task owns [`Metrics`] and updates it after every input
//! from [`Node::counters`] and [`LockNode::stats`](swimlock_lock::LockNode::stats)
//! deltas, and publishes the node's [`Readiness`] from the same place;
//! [`crate::http`] serves [`render`]ed text on `/metrics`.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use swimlock_lock::{Alert, LossReason, Mode, Stats};
use swimlock_wire::NodeId;
use tokio::sync::watch;

use crate::http::Readiness;
use crate::node::{DropReason, Node, NodeCounters};

/// The version with the commit it was built from (`git describe`-like;
/// `unknown` when built outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SWIMLOCK_COMMIT"), ")");

/// Every drop reason, in the order of the metric's series.
const DROP_REASONS: [DropReason; 7] = [
    DropReason::Unauthenticated,
    DropReason::Replayed,
    DropReason::UnknownKey,
    DropReason::Malformed,
    DropReason::ForeignCluster,
    DropReason::Misaddressed,
    DropReason::Spoofed,
];

/// Upper bounds of the acquire latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The `reason` label of `swimlock_locks_lost_total`, one per [`LossReason`].
const LOSS_REASONS: [&str; 3] = ["duplicate", "quorum_lost", "lease_expired"];

/// The `result` label of the wait histogram: a wait ends in a grant, a
/// timeout or a refusal for lack of quorum.
const WAIT_RESULTS: [&str; 3] = ["acquired", "timed_out", "no_quorum"];

/// How a lock request's wait ended, for the wait histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitResult {
    /// Granted.
    Acquired,
    /// Not granted within its timeout.
    TimedOut,
    /// Refused: the node's view holds no majority.
    NoQuorum,
}

/// Every metric of one agent, registered once.
pub struct Metrics {
    recorder: PrometheusRecorder,
    m: Instruments,
    client: ClientCounters,
    last_stats: Stats,
    last_counters: NodeCounters,
    /// The coordinator last followed, to count changes.
    last_coordinator: Option<NodeId>,
    /// `swimlock_quorum`, registered on the first update in `majority` mode.
    quorum: Option<Gauge>,
    ready: watch::Sender<Readiness>,
    /// What readiness was last computed from.
    ready_key: Option<(u64, Option<usize>, Option<NodeId>)>,
}

/// Handles to the registered metrics (cheap atomic updates).
struct Instruments {
    view_members: Gauge,
    view_id: Gauge,
    is_coordinator: Gauge,
    locks_held: Gauge,
    table_held: Gauge,
    table_waiters: Gauge,
    requests_acquired: Counter,
    requests_busy: Counter,
    requests_timed_out: Counter,
    requests_no_quorum: Counter,
    acquire_latency: [Histogram; WAIT_RESULTS.len()],
    retransmissions: Counter,
    reconciliations: Counter,
    merges: Counter,
    duplicates_resolved: Counter,
    locks_lost: [Counter; LOSS_REASONS.len()],
    coordinator_changes: Counter,
    coordinator_epoch: Gauge,
    datagrams_in: Counter,
    datagrams_out: Counter,
    dropped: [Counter; DROP_REASONS.len()],
    replay_evictions: Counter,
    keyring_keys: Gauge,
    insecure: Gauge,
    alerts: [Counter; ALERT_KINDS.len()],
    halted: Gauge,
}

/// The `kind` label of `swimlock_alerts_total`, one per [`Alert`] variant.
const ALERT_KINDS: [&str; 3] = ["term_jump", "terms_exhausted", "report_too_large"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics with its own recorder.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("swimlock_acquire_latency_seconds".into()), LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let m = metrics::with_local_recorder(&recorder, || {
            describe();
            let result = |r: &'static str| metrics::counter!("swimlock_requests_total", "result" => r);

            Instruments {
                view_members: metrics::gauge!("swimlock_view_members"),
                view_id: metrics::gauge!("swimlock_view_id"),
                is_coordinator: metrics::gauge!("swimlock_is_coordinator"),
                locks_held: metrics::gauge!("swimlock_locks_held"),
                table_held: metrics::gauge!("swimlock_lock_table_held"),
                table_waiters: metrics::gauge!("swimlock_lock_table_waiters"),
                requests_acquired: result("acquired"),
                requests_busy: result("busy"),
                requests_timed_out: result("timed_out"),
                requests_no_quorum: result("no_quorum"),
                acquire_latency: WAIT_RESULTS
                    .map(|r| metrics::histogram!("swimlock_acquire_latency_seconds", "result" => r)),
                retransmissions: metrics::counter!("swimlock_retransmissions_total"),
                reconciliations: metrics::counter!("swimlock_reconciliations_total"),
                merges: metrics::counter!("swimlock_merges_total"),
                duplicates_resolved: metrics::counter!("swimlock_duplicates_resolved_total"),
                locks_lost: LOSS_REASONS
                    .map(|r| metrics::counter!("swimlock_locks_lost_total", "reason" => r)),
                coordinator_changes: metrics::counter!("swimlock_coordinator_changes_total"),
                coordinator_epoch: metrics::gauge!("swimlock_coordinator_epoch"),
                datagrams_in: metrics::counter!("swimlock_datagrams_total", "direction" => "in"),
                datagrams_out: metrics::counter!("swimlock_datagrams_total", "direction" => "out"),
                dropped: DROP_REASONS
                    .map(|r| metrics::counter!("swimlock_datagrams_dropped_total", "reason" => r.label())),
                replay_evictions: metrics::counter!("swimlock_replay_table_evictions_total"),
                keyring_keys: metrics::gauge!("swimlock_keyring_keys"),
                insecure: metrics::gauge!("swimlock_insecure"),
                alerts: ALERT_KINDS.map(|k| metrics::counter!("swimlock_alerts_total", "kind" => k)),
                halted: metrics::gauge!("swimlock_granting_halted"),
            }
        });
        let client = metrics::with_local_recorder(&recorder, ClientCounters::register);
        metrics::with_local_recorder(&recorder, || {
            let commit = env!("SWIMLOCK_COMMIT");
            let labels = [("version", env!("CARGO_PKG_VERSION")), ("commit", commit)];
            metrics::gauge!("swimlock_build_info", &labels).set(1.0);
        });
        Metrics {
            recorder,
            m,
            client,
            last_stats: Stats::default(),
            last_counters: NodeCounters::default(),
            last_coordinator: None,
            quorum: None,
            ready: watch::channel(Readiness::default()).0,
            ready_key: None,
        }
    }

    /// The node's readiness, as of the last [`Metrics::update`].
    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.ready.subscribe()
    }

    /// Counts a lock of this node's clients that was lost, by reason.
    pub fn record_lost(&self, reason: LossReason) {
        let i = match reason {
            LossReason::Duplicate => 0,
            LossReason::QuorumLost => 1,
            LossReason::LeaseExpired => 2,
        };
        self.m.locks_lost[i].increment(1);
    }

    /// The client endpoint's counters, for its tasks.
    pub fn client_counters(&self) -> ClientCounters {
        self.client.clone()
    }

    /// A handle that renders the current figures.
    pub fn handle(&self) -> PrometheusHandle {
        self.recorder.handle()
    }

    /// Counts an alert by kind.
    pub fn record_alert(&self, alert: &Alert) {
        let kind = match alert {
            Alert::TermJump { .. } => 0,
            Alert::TermsExhausted => 1,
            Alert::ReportTooLarge { .. } => 2,
        };
        self.m.alerts[kind].increment(1);
    }

    /// One lock request's wait, from request to its end.
    pub fn record_wait(&self, result: WaitResult, latency: Duration) {
        let i = match result {
            WaitResult::Acquired => 0,
            WaitResult::TimedOut => 1,
            WaitResult::NoQuorum => 2,
        };
        self.m.acquire_latency[i].record(latency.as_secs_f64());
    }

    /// Brings every figure up to date with `node`.
    pub fn update(&mut self, node: &Node) {
        let lock = node.lock_node();
        let view = node.membership().view();
        self.m.view_members.set(view.members.len() as f64);
        self.m.view_id.set(view.id as f64);
        self.m.is_coordinator.set(if lock.is_coordinator() { 1.0 } else { 0.0 });
        self.m.halted.set(if lock.halted().is_some() { 1.0 } else { 0.0 });
        self.m.locks_held.set(lock.held_count() as f64);
        let table = lock.table_stats().unwrap_or_default();
        self.m.table_held.set(table.held as f64);
        self.m.table_waiters.set(table.waiters as f64);

        let (s, old) = (lock.stats(), self.last_stats);
        self.m.requests_acquired.increment(s.acquired.saturating_sub(old.acquired));
        self.m.requests_busy.increment(s.busy.saturating_sub(old.busy));
        self.m.requests_timed_out.increment(s.timed_out.saturating_sub(old.timed_out));
        self.m.requests_no_quorum.increment(s.no_quorum.saturating_sub(old.no_quorum));
        self.m.retransmissions.increment(s.retransmissions.saturating_sub(old.retransmissions));
        self.m.reconciliations.increment(s.reconciliations.saturating_sub(old.reconciliations));
        self.m.merges.increment(s.merges.saturating_sub(old.merges));
        self.m.duplicates_resolved.increment(s.duplicates_resolved.saturating_sub(old.duplicates_resolved));
        self.last_stats = s;
        self.update_coordination(node);

        let (c, old) = (node.counters(), self.last_counters);
        self.m.datagrams_in.increment(c.datagrams_in - old.datagrams_in);
        self.m.datagrams_out.increment(c.datagrams_out - old.datagrams_out);
        for (counter, reason) in self.m.dropped.iter().zip(DROP_REASONS) {
            counter.increment(c.dropped(reason).saturating_sub(old.dropped(reason)));
        }
        self.m.replay_evictions.increment(c.replay_evictions.saturating_sub(old.replay_evictions));
        self.last_counters = c;
        self.m.keyring_keys.set(node.keyring().map_or(0.0, |r| r.len() as f64));
        self.m.insecure.set(if node.keyring().is_none() { 1.0 } else { 0.0 });
    }
}

impl Metrics {
    /// Coordinator changes, quorum and readiness.
    fn update_coordination(&mut self, node: &Node) {
        let lock = node.lock_node();
        let coordinator = lock.coordinator();
        if coordinator.is_some() && coordinator != self.last_coordinator {
            if self.last_coordinator.is_some() {
                self.m.coordinator_changes.increment(1);
            }
            self.last_coordinator = coordinator;
        }
        // Start stamps are microseconds since 1970: exact in an f64 for ages.
        self.m.coordinator_epoch.set(coordinator.map_or(0.0, |c| c.epoch as f64));
        let view = lock.view();
        let members = node.membership().view();
        // Readiness changes only with these; most updates (every batch of
        // lock traffic) skip the rest.
        let key = (members.id, view.map(|v| v.members.len()), coordinator);
        if self.ready_key == Some(key) {
            return;
        }
        self.ready_key = Some(key);
        let majority_of = match lock.config().mode {
            Mode::Majority { members } => Some(members.get()),
            Mode::Available => None,
        };
        let readiness = Readiness {
            view_id: view.map(|_| members.id),
            members: view.map_or(0, |v| v.members.len()),
            coordinator: coordinator.map(|id| {
                members.members.iter().find(|m| m.id == id).map_or_else(|| id.to_string(), |m| m.name.clone())
            }),
            majority_of,
        };
        if majority_of.is_some() {
            let recorder = &self.recorder;
            let gauge = self.quorum.get_or_insert_with(|| {
                metrics::with_local_recorder(recorder, || {
                    metrics::describe_gauge!(
                        "swimlock_quorum",
                        "1 while this node's view holds a majority of the configured members (mode majority), else 0."
                    );
                    metrics::gauge!("swimlock_quorum")
                })
            });
            gauge.set(if readiness.quorum() && view.is_some() { 1.0 } else { 0.0 });
        }
        self.ready.send_if_modified(|old| {
            let changed = *old != readiness;
            *old = readiness;
            changed
        });
    }
}

/// The Prometheus text of `handle`: families in name order and the series of
/// a counter or gauge in label order (the recorder's own order changes from
/// one scrape to the next), then the process metrics.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = stable_order(&handle.render());
    process::append(&mut text);
    text
}

/// Sorts the families of a rendered text by name, and the sample lines of
/// counters and gauges; histogram lines keep their order (buckets by `le`).
fn stable_order(text: &str) -> String {
    let mut families: Vec<(String, Vec<&str>)> = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let lines: Vec<&str> = block.lines().filter(|l| !l.is_empty()).collect();
        let Some(type_line) = lines.iter().find(|l| l.starts_with("# TYPE ")) else {
            families.push((String::new(), lines));
            continue;
        };
        let mut words = type_line.split_whitespace().skip(2);
        let (name, kind) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let mut lines = lines.clone();
        if kind == "counter" || kind == "gauge" {
            let first = lines.iter().position(|l| !l.starts_with('#')).unwrap_or(lines.len());
            lines[first..].sort_unstable();
        }
        families.push((name.to_string(), lines));
    }
    families.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(text.len());
    for (_, lines) in families {
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// Process metrics as the Prometheus client libraries name them, read from
/// `/proc/self` at each scrape (nothing is written where it is missing).
mod process {
    use std::fmt::Write;

    /// Appends `process_*` families to `out`.
    pub fn append(out: &mut String) {
        let ticks =
            nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        let page =
            nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as f64;
        let mut family = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
        };
        if let Some(stat) = self_stat() {
            let field = |n: usize| stat.get(n - 3).and_then(|v| v.parse::<f64>().ok());
            if let (Some(user), Some(system)) = (field(14), field(15)) {
                family(
                    "process_cpu_seconds_total",
                    "counter",
                    "Total user and system CPU time spent in seconds.",
                    (user + system) / ticks,
                );
            }
            if let Some(rss) = field(24) {
                family(
                    "process_resident_memory_bytes",
                    "gauge",
                    "Resident memory size in bytes.",
                    rss * page,
                );
            }
            if let Some(vsize) = field(23) {
                family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize);
            }
            if let Some(threads) = field(20) {
                family("process_threads", "gauge", "Number of OS threads in the process.", threads);
            }
            if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                family(
                    "process_start_time_seconds",
                    "gauge",
                    "Start time of the process since unix epoch in seconds.",
                    boot + start / ticks,
                );
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            family("process_open_fds", "gauge", "Number of open file descriptors.", dir.count() as f64);
        }
        if let Some(max) = max_fds() {
            family("process_max_fds", "gauge", "Maximum number of open file descriptors.", max);
        }
    }

    /// The fields of `/proc/self/stat` after the command name (field 3 on).
    fn self_stat() -> Option<Vec<String>> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(str::to_string).collect())
    }

    fn boot_time() -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
    }

    fn max_fds() -> Option<f64> {
        let text = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }
}

/// Why the client endpoint closed or refused a connection (a bound bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRejection {
    /// Too much unread output.
    SlowReader,
    /// A request frame announced more than the endpoint accepts.
    FrameTooLarge,
    /// A request frame did not complete in time.
    FrameTimeout,
    /// The connection limit was reached.
    TooManyConnections,
    /// A request frame did not decode.
    Malformed,
    /// A missing or wrong client token.
    Unauthorized,
    /// `accept` failed (for example at the open-file limit).
    AcceptError,
}

impl ClientRejection {
    const ALL: [ClientRejection; 7] = [
        ClientRejection::SlowReader,
        ClientRejection::FrameTooLarge,
        ClientRejection::FrameTimeout,
        ClientRejection::TooManyConnections,
        ClientRejection::Malformed,
        ClientRejection::Unauthorized,
        ClientRejection::AcceptError,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            ClientRejection::SlowReader => "slow_reader",
            ClientRejection::FrameTooLarge => "frame_too_large",
            ClientRejection::FrameTimeout => "frame_timeout",
            ClientRejection::TooManyConnections => "too_many_connections",
            ClientRejection::Malformed => "malformed",
            ClientRejection::Unauthorized => "unauthorized",
            ClientRejection::AcceptError => "accept_error",
        }
    }
}

/// `swimlock_client_rejected_total{reason}`, one handle per reason; cheap to
/// clone and to bump from any task.
#[derive(Clone)]
pub struct ClientCounters {
    counters: [Counter; 7],
}

impl std::fmt::Debug for ClientCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCounters").finish_non_exhaustive()
    }
}

impl ClientCounters {
    fn register() -> ClientCounters {
        metrics::describe_counter!(
            "swimlock_client_rejected_total",
            "Client connections closed or refused because a bound of the client endpoint bit, by reason."
        );
        ClientCounters {
            counters: ClientRejection::ALL
                .map(|r| metrics::counter!("swimlock_client_rejected_total", "reason" => r.label())),
        }
    }

    /// Counts one rejection.
    pub fn count(&self, reason: ClientRejection) {
        if let Some(i) = ClientRejection::ALL.iter().position(|r| *r == reason) {
            self.counters[i].increment(1);
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("swimlock_view_members", "Members in this node's installed view.");
    describe_gauge!("swimlock_view_id", "This node's local view number (grows with every installed view).");
    describe_gauge!(
        "swimlock_is_coordinator",
        "1 while this node coordinates (holds the lock table), else 0."
    );
    describe_gauge!("swimlock_locks_held", "Locks held by this node's clients.");
    describe_gauge!("swimlock_lock_table_held", "Locks held in the lock table (coordinator only, else 0).");
    describe_gauge!(
        "swimlock_lock_table_waiters",
        "Requests waiting in the lock table (coordinator only, else 0)."
    );
    describe_counter!("swimlock_requests_total", "Lock operations of this node's clients, by result.");
    describe_histogram!(
        "swimlock_acquire_latency_seconds",
        Unit::Seconds,
        "Time a lock request of this node's clients waited, by how it ended (acquired, timed_out, no_quorum)."
    );
    describe_counter!("swimlock_retransmissions_total", "Lock requests sent again after no answer.");
    describe_counter!("swimlock_reconciliations_total", "Reconciliation rounds started as coordinator.");
    describe_counter!("swimlock_merges_total", "Merge views installed (partitions healed).");
    describe_counter!(
        "swimlock_duplicates_resolved_total",
        "Duplicate locks resolved as coordinator after merges."
    );
    describe_counter!("swimlock_locks_lost_total", "Locks of this node's clients that were lost, by reason.");
    describe_counter!(
        "swimlock_coordinator_changes_total",
        "Times the coordinator this node follows changed to another member."
    );
    describe_gauge!(
        "swimlock_coordinator_epoch",
        "Start stamp (microseconds since 1970) of the coordinator this node follows, 0 when none: members that agree on their coordinator show the same value."
    );
    describe_gauge!("swimlock_build_info", "Always 1; the labels name the version and the commit built.");
    describe_counter!("swimlock_datagrams_total", "UDP datagrams, by direction.");
    describe_counter!(
        "swimlock_datagrams_dropped_total",
        "Datagrams dropped before reaching membership or the lock machine, by reason."
    );
    describe_counter!(
        "swimlock_replay_table_evictions_total",
        "Senders whose replay window was forgotten because the table was full."
    );
    describe_gauge!("swimlock_keyring_keys", "Keys in this node's keyring (0 when insecure).");
    describe_gauge!("swimlock_insecure", "1 when the node runs without sealing (--insecure), else 0.");
    describe_counter!(
        "swimlock_alerts_total",
        "Conditions that need the operator, by kind (the log says what to do)."
    );
    describe_gauge!(
        "swimlock_granting_halted",
        "1 while this coordinator grants nothing until `swimlock accept-term` (see the log)."
    );
}
