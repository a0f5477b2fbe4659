//! Clients on every node: lock, try_lock and lock with a timeout on a few
//! names, some re-entrant holds, and writes to the fenced register while
//! holding. Each client is one connection (one lock owner) to its node's
//! Unix socket, and records what it did and saw in the [`History`].
//!
//! A node's clients can be paused with it (the host stops, not only the
//! agent): a paused client starts no operation and writes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swimlock::client::{Client, ClientError, LockGuard, LostCause};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::history::{History, OpKind, Outcome, What};

/// Workers holding a lock now: worker → node.
type Holding = Arc<Mutex<BTreeMap<usize, usize>>>;

/// The running clients.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    gates: Vec<watch::Sender<bool>>,
    holding: Holding,
}

/// What one client needs.
struct Worker {
    id: usize,
    node: usize,
    addr: String,
    names: Vec<String>,
    history: Arc<History>,
    gate: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    holding: Holding,
    rng: SmallRng,
    next_op: u64,
}

enum End {
    Release,
    Lost(swimlock::client::Lost),
}

impl Workload {
    /// Starts `per_node` clients on each node (node `i` at `sockets[i]`)
    /// over `names` lock names, on runtime `rt`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        sockets: &[PathBuf],
        per_node: usize,
        names: usize,
        history: Arc<History>,
        seed: u64,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let holding = Holding::default();
        let names: Vec<String> = (0..names).map(|k| format!("r{k}")).collect();
        let mut gates = Vec::new();
        let mut tasks = Vec::new();
        for (node, socket) in sockets.iter().enumerate() {
            let (gate, rx) = watch::channel(false);
            gates.push(gate);
            for k in 0..per_node {
                let id = node * per_node + k;
                let worker = Worker {
                    id,
                    node,
                    addr: format!("unix:{}", socket.display()),
                    names: names.clone(),
                    history: history.clone(),
                    gate: rx.clone(),
                    stop: stop.clone(),
                    holding: holding.clone(),
                    rng: SmallRng::seed_from_u64(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    next_op: id as u64 * 1_000_000,
                };
                tasks.push(rt.spawn(worker.run()));
            }
        }
        Workload { stop, tasks, gates, holding }
    }

    /// Pauses (or resumes) node `i`'s clients.
    pub fn pause_node(&self, i: usize, paused: bool) {
        let _ = self.gates[i].send(paused);
    }

    /// Nodes on which some client holds a lock now.
    pub fn holder_nodes(&self) -> Vec<usize> {
        let holding = self.holding.lock().unwrap_or_else(|e| e.into_inner());
        let mut nodes: Vec<usize> = holding.values().copied().collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Tells the clients to finish and waits up to `limit` for them; the
    /// ones still busy then are aborted (their open requests stay
    /// unanswered in the history). Returns how many were aborted.
    pub fn stop(self, rt: &tokio::runtime::Runtime, limit: Duration) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for gate in &self.gates {
            let _ = gate.send(false);
        }
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + limit;
            let mut aborted = 0;
            for task in self.tasks {
                let abort = task.abort_handle();
                if tokio::time::timeout_at(deadline, task).await.is_err() {
                    abort.abort();
                    aborted += 1;
                }
            }
            aborted
        })
    }
}

fn outcome<T>(res: &Result<T, ClientError>, token: impl Fn(&T) -> Option<(u64, u32)>) -> Outcome {
    match res {
        Ok(v) => match token(v) {
            Some((token, holds)) => Outcome::Granted { token, holds },
            None => Outcome::Busy,
        },
        Err(ClientError::Busy) => Outcome::Busy,
        Err(ClientError::TimedOut) => Outcome::TimedOut,
        Err(ClientError::NoQuorum) => Outcome::NoQuorum,
        Err(e) => Outcome::Error(e.to_string()),
    }
}

impl Worker {
    async fn run(mut self) {
        let mut client: Option<Client> = None;
        while !self.stop.load(Ordering::Relaxed) {
            self.wait_gate().await;
            let c = match &client {
                Some(c) => c.clone(),
                None => match tokio::time::timeout(Duration::from_secs(1), Client::connect(&self.addr)).await
                {
                    Ok(Ok(c)) => {
                        client = Some(c.clone());
                        c
                    }
                    // The agent is down or restarting.
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let name = self.names[self.rng.random_range(0..self.names.len())].clone();
            let kind = if self.rng.random_bool(0.7) {
                OpKind::Lock { timeout: Duration::from_millis(self.rng.random_range(300..3000)) }
            } else {
                OpKind::TryLock
            };
            let op = self.invoke(&name, kind);
            let res = match kind {
                OpKind::Lock { timeout } => c.lock(&name, timeout).await.map(Some),
                _ => c.try_lock(&name).await,
            };
            let out = outcome(&res, |g: &Option<LockGuard>| g.as_ref().map(|g| (g.token().0, g.holds())));
            self.record(What::Answer { op, outcome: out.clone() });
            match res {
                Ok(Some(guard)) => self.hold(&c, guard).await,
                Ok(None) => {}
                Err(ClientError::Busy | ClientError::TimedOut | ClientError::NoQuorum) => {}
                // Closed, stopping, refused: start over on a new connection.
                Err(_) => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let pause = self.rng.random_range(0..50);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    async fn wait_gate(&mut self) {
        let _ = self.gate.wait_for(|paused| !paused).await;
    }

    fn record(&self, what: What) {
        self.history.record(self.id, self.node, what);
    }

    fn invoke(&mut self, name: &str, kind: OpKind) -> u64 {
        self.next_op += 1;
        self.record(What::Invoke { op: self.next_op, name: name.to_string(), kind });
        self.next_op
    }

    /// Holds `guard` for a few writes, then lets go, unless it is lost.
    async fn hold(&mut self, client: &Client, mut guard: LockGuard) {
        let name = guard.name().to_string();
        let token = guard.token().0;
        self.holding.lock().unwrap_or_else(|e| e.into_inner()).insert(self.id, self.node);
        let mut again = None;
        if self.rng.random_bool(0.3) {
            let op = self.invoke(&name, OpKind::Reenter);
            let res = client.lock(&name, Duration::from_secs(1)).await;
            self.record(What::Answer { op, outcome: outcome(&res, |g| Some((g.token().0, g.holds()))) });
            again = res.ok();
        }
        // Some holds are long, so that they span a partition's end and the
        // merge has duplicates to resolve.
        let long = self.rng.random_bool(0.25);
        let (writes, nap) = if long { (4..=8, 300..700) } else { (1..=3, 20..120) };
        let mut end = End::Release;
        // What this holder knows of the register: read once, then its own
        // writes (a lost update shows as a write built on a stale value).
        let mut value = self.history.read(&name);
        for _ in 0..self.rng.random_range(writes) {
            self.wait_gate().await;
            if guard.is_lost() {
                end = End::Lost(guard.lost().await);
                break;
            }
            if self.history.write(self.id, self.node, &name, token, value) {
                value += 1;
            }
            let nap = Duration::from_millis(self.rng.random_range(nap.clone()));
            tokio::select! {
                lost = guard.lost() => {
                    // A stopping agent asks for its locks back: let go.
                    if !matches!(lost.cause, LostCause::AgentStopping { .. }) {
                        end = End::Lost(lost);
                    }
                    break;
                }
                () = tokio::time::sleep(nap) => {}
            }
        }
        self.holding.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        match end {
            End::Lost(lost) => {
                self.record(What::Lost { name, token, cause: format!("{:?}", lost.cause) });
            }
            End::Release => {
                self.record(What::Release { name, token });
                let limit = Duration::from_secs(2);
                if let Some(g) = again {
                    let _ = tokio::time::timeout(limit, g.unlock()).await;
                }
                let _ = tokio::time::timeout(limit, guard.unlock()).await;
            }
        }
    }
}
