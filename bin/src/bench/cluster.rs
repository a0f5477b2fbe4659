//! A cluster of in-process agents on loopback, each with its own UDP
//! socket on a distinct 127.0.0.1 port and a TCP client endpoint.
//!
//! Each agent runs on a thread of its own, in a single-threaded runtime,
//! as it would in a process of its own: its node task, its client
//! endpoint and the embedded callers that [`Node::run`] places there share
//! that thread, and nodes reach each other only through their sockets.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::runtime::Handle as RuntimeHandle;
use tokio::sync::oneshot;

use crate::agent::{self, AgentConfig, Handle};

/// How long a cluster may take to form one view with a serving coordinator.
const FORM_LIMIT: Duration = Duration::from_secs(15);

/// One agent and the thread it runs on.
pub struct Node {
    agent: Handle,
    runtime: RuntimeHandle,
    /// Dropped to end the thread (once the agent has stopped).
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl Node {
    /// Starts an agent on a new thread with its own single-threaded runtime.
    fn start(config: AgentConfig) -> anyhow::Result<Node> {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(config.name.clone()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(anyhow::Error::new(e).context("starting a runtime")));
                    return;
                }
            };
            runtime.block_on(async move {
                let agent = agent::spawn(config).map_err(anyhow::Error::new);
                let _ = started_tx.send(agent.map(|a| (a, RuntimeHandle::current())));
                let _ = stopped.await;
            });
        })?;
        let (agent, runtime) = started_rx.recv().context("the node thread ended")??;
        Ok(Node { agent, runtime, stop, thread })
    }

    /// The agent.
    pub fn agent(&self) -> &Handle {
        &self.agent
    }

    /// Runs `work` on this node's thread (as an application that embeds
    /// the node would) and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.runtime.spawn(work).await.context("a task on the node thread")?
    }

    /// Crash stop, then the end of its thread.
    async fn kill(self) {
        self.agent.kill().await;
        drop(self.stop);
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Running nodes; node 0 is the oldest, so it coordinates.
pub struct Cluster {
    /// `None` once killed or stopped.
    pub nodes: Vec<Option<Node>>,
}

impl Cluster {
    /// Starts `n` nodes (with `busy_poll`, see [`AgentConfig::busy_poll`];
    /// sealed with a fresh key unless `insecure`) and waits until they
    /// share one view and node 0 serves as coordinator.
    pub async fn start(n: usize, busy_poll: Duration, insecure: bool) -> anyhow::Result<Cluster> {
        let addrs = free_ports(n)?;
        let key = if insecure { None } else { Some(agent::generate_key().context("a cluster key")?) };
        let base = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64);
        let mut nodes = Vec::with_capacity(n);
        for (i, addr) in addrs.iter().enumerate() {
            let mut config = AgentConfig::new(*addr);
            config.name = format!("bench-{}", i + 1);
            config.seeds = if i == 0 { Vec::new() } else { vec![addrs[0]] };
            config.client = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            config.epoch = Some(base + i as u64);
            config.lock.tag = i as u16 + 1;
            config.busy_poll = busy_poll;
            config.key = key.clone();
            config.insecure = insecure;
            nodes.push(Some(Node::start(config).with_context(|| format!("starting node {}", i + 1))?));
        }
        let cluster = Cluster { nodes };
        cluster.wait_formed(n).await?;
        Ok(cluster)
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> anyhow::Result<&Node> {
        self.nodes.get(i).and_then(Option::as_ref).context("node not running")
    }

    async fn wait_formed(&self, n: usize) -> anyhow::Result<()> {
        let coord = self.node(0)?.agent();
        let start = Instant::now();
        while start.elapsed() < FORM_LIMIT {
            let mut formed = true;
            for h in self.nodes.iter().flatten().map(Node::agent) {
                let status = h.client().await?.status().await?;
                let serving = status.table.as_ref().is_some_and(|t| t.serving);
                let coordinator = status.coordinator.as_ref().map(|c| c.id.addr);
                formed &= status.members.len() == n && coordinator == Some(coord.udp_addr());
                if h.udp_addr() == coord.udp_addr() {
                    formed &= serving;
                }
            }
            if formed {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the {n} nodes did not form one view within {FORM_LIMIT:?}")
    }

    /// Kills node `i` without releasing or leaving (its socket closes).
    pub async fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i).and_then(Option::take) {
            node.kill().await;
        }
    }

    /// Stops every node still running, without waiting for a goodbye.
    pub async fn stop(mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i).await;
        }
    }
}

/// `n` distinct free UDP ports on 127.0.0.1 (held together while chosen).
fn free_ports(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let sockets: Vec<UdpSocket> =
        (0..n).map(|_| UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>().context("choosing ports")?;
    Ok(sockets.iter().map(|s| s.local_addr()).collect::<Result<_, _>>()?)
}
