//! Prometheus metrics of one agent, through the `metrics` facade.
//!
//! Each agent has its own recorder (not the process-global one), so several
//! agents embedded in one process, as the demo and tests do, keep separate
//! figures. The node task owns [`Metrics`] and updates it after every input
//! from [`Node::counters`] and [`LockNode::stats`](swimlock_lock::LockNode::stats)
//! deltas; [`serve`] answers `GET /metrics` with the rendered text.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use swimlock_lock::{Alert, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::node::{DropReason, Node, NodeCounters};

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

/// Every metric of one agent, registered once.
pub struct Metrics {
    recorder: PrometheusRecorder,
    m: Instruments,
    client: ClientCounters,
    last_stats: Stats,
    last_counters: NodeCounters,
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
    acquire_latency: Histogram,
    retransmissions: Counter,
    reconciliations: Counter,
    merges: Counter,
    duplicates_resolved: Counter,
    locks_lost: Counter,
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
                acquire_latency: metrics::histogram!("swimlock_acquire_latency_seconds"),
                retransmissions: metrics::counter!("swimlock_retransmissions_total"),
                reconciliations: metrics::counter!("swimlock_reconciliations_total"),
                merges: metrics::counter!("swimlock_merges_total"),
                duplicates_resolved: metrics::counter!("swimlock_duplicates_resolved_total"),
                locks_lost: metrics::counter!("swimlock_locks_lost_total"),
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
        Metrics { recorder, m, client, last_stats: Stats::default(), last_counters: NodeCounters::default() }
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

    /// One acquired lock's wait, from request to grant.
    pub fn record_acquire_latency(&self, latency: Duration) {
        self.m.acquire_latency.record(latency.as_secs_f64());
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
        self.m.locks_lost.increment(s.lost.saturating_sub(old.lost));
        self.last_stats = s;

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
        "Time from a lock request to its grant, for this node's clients."
    );
    describe_counter!("swimlock_retransmissions_total", "Lock requests sent again after no answer.");
    describe_counter!("swimlock_reconciliations_total", "Reconciliation rounds started as coordinator.");
    describe_counter!("swimlock_merges_total", "Merge views installed (partitions healed).");
    describe_counter!(
        "swimlock_duplicates_resolved_total",
        "Duplicate locks resolved as coordinator after merges."
    );
    describe_counter!("swimlock_locks_lost_total", "Locks of this node's clients that were lost.");
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

/// Serves the rendered metrics over HTTP on `listener` until the task is
/// dropped: every request gets the Prometheus text (any path works, and
/// `/metrics` is the one to configure).
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = upkeep.tick() => handle.run_upkeep(),
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else {
                    // At the open-file limit `accept` fails at once, again and again.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let body = handle.render();
                tokio::spawn(async move {
                    // Read the request head (bounded) before answering, so the
                    // client does not see a reset; its content does not matter.
                    let mut head = [0u8; 4096];
                    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head)).await;
                    if !matches!(read, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        }
    }
}
