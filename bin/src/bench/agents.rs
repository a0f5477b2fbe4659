//! A cluster of real `swimlock agent` processes on loopback: this very
//! binary, started as users deploy it, each with its own UDP port, client
//! endpoint and state directory, all under one temporary directory.
//!
//! [`Agents`] is the guard: dropping it (at the end, on an error or while a
//! panic unwinds) kills every agent by pid, reaps it and removes the
//! directory. Agents are started from the thread that runs the benchmark's
//! `block_on`, never from a pool thread that may exit first.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::client::Client;

/// How long the agents may take to form one view with a serving coordinator.
const FORM_LIMIT: Duration = Duration::from_secs(20);
/// Lines of each agent's log shown when a run fails.
const LOG_TAIL: usize = 20;
/// The environment variable that picks an agent's tokio runtime (see
/// `swimlock agent`); unset, the agent's default.
pub const RUNTIME_ENV: &str = "SWIMLOCK_AGENT_RUNTIME";

/// One agent process.
pub struct AgentProc {
    child: Child,
    name: String,
    udp: SocketAddr,
    client: SocketAddr,
    log: PathBuf,
}

impl AgentProc {
    /// Its client endpoint.
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Why it exited, with the end of its log, if it has exited.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Some(format!("agent {} exited ({status}): {}", self.name, tail.join(" | ")))
    }
}

/// Running agent processes; agent 0 started first, so it is the oldest
/// and coordinates.
pub struct Agents {
    /// `runtime` as given to [`Agents::start`] (`default` when none).
    pub runtime: String,
    procs: Vec<AgentProc>,
    dir: PathBuf,
}

impl Agents {
    /// Starts `n` sealed agents of the binary `exe` (with
    /// [`RUNTIME_ENV`]`=runtime` if given), agent 0 first and alone, the
    /// others with it as their seed, and waits until they share one view
    /// and agent 0 serves as coordinator.
    pub async fn start(exe: &Path, n: usize, runtime: Option<&str>) -> anyhow::Result<Agents> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("swimlock-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut agents =
            Agents { runtime: runtime.unwrap_or("default").to_string(), procs: Vec::with_capacity(n), dir };
        let key = agents.write_key()?;
        for i in 0..n {
            let seed = agents.procs.first().map(|p| p.udp);
            let proc = agents.spawn(exe, i, seed, &key, runtime)?;
            agents.procs.push(proc);
            if i == 0 {
                // Agent 0 must be up (and so the oldest) before any other starts.
                agents.wait_formed(1).await?;
            }
        }
        agents.wait_formed(n).await?;
        Ok(agents)
    }

    /// Agent `i`.
    pub fn agent(&self, i: usize) -> anyhow::Result<&AgentProc> {
        self.procs.get(i).context("no such agent")
    }

    /// The process ids, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(AgentProc::pid).collect()
    }

    /// The temporary directory (state directories, key, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Prints the last lines of every agent's log to stderr.
    pub fn print_logs(&self) {
        for p in &self.procs {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("log of agent {} (pid {}), last lines:", p.name, p.pid());
            for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                eprintln!("  {line}");
            }
        }
    }

    /// CPU time each agent has used so far (all its threads).
    pub fn cpu_times(&self) -> Vec<Duration> {
        self.procs.iter().map(|p| cpu_time(p.pid())).collect()
    }

    fn write_key(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = crate::agent::generate_key().context("a cluster key")?;
        let path = self.dir.join("cluster.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "{}", key.to_base64())?;
        Ok(path)
    }

    fn spawn(
        &self,
        exe: &Path,
        i: usize,
        seed: Option<SocketAddr>,
        key: &Path,
        runtime: Option<&str>,
    ) -> anyhow::Result<AgentProc> {
        let name = format!("bench-{}", i + 1);
        let (udp, client) = free_ports()?;
        let state = self.dir.join(&name);
        let log = self.dir.join(format!("{name}.log"));
        let mut cmd = Command::new(exe);
        cmd.arg("agent")
            .args(["--name", &name])
            .args(["--bind", &udp.to_string()])
            .args(["--client", &client.to_string()])
            .args(["--metrics", "off"])
            .args(["--node-tag", &(i + 1).to_string()])
            .arg("--key-file")
            .arg(key)
            .arg("--state-dir")
            .arg(&state)
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("an agent log file")?);
        if let Some(seed) = seed {
            cmd.args(["--seed", &seed.to_string()]);
        }
        match runtime {
            Some(rt) => cmd.env(RUNTIME_ENV, rt),
            None => cmd.env_remove(RUNTIME_ENV),
        };
        let child = cmd.spawn().with_context(|| format!("starting {} agent", exe.display()))?;
        Ok(AgentProc { child, name, udp, client, log })
    }

    /// Waits until the first `n` agents answer `STATUS` with one view of
    /// `n` members whose coordinator is agent 0, and agent 0 serves.
    async fn wait_formed(&mut self, n: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        let coord = self.agent(0)?.udp;
        while start.elapsed() < FORM_LIMIT {
            if let Some(why) = self.procs.iter_mut().find_map(AgentProc::exited) {
                bail!(why);
            }
            let mut formed = true;
            for p in &self.procs[..n] {
                if !is_formed(p.client, n, coord, p.udp == coord).await {
                    formed = false;
                    break;
                }
            }
            if formed {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the {n} agent processes did not form one view within {FORM_LIMIT:?} (logs in {})",
            self.dir.display()
        )
    }
}

async fn is_formed(client: SocketAddr, n: usize, coord: SocketAddr, is_coord: bool) -> bool {
    let Ok(c) = Client::connect(&client.to_string()).await else { return false };
    let Ok(status) = c.status().await else { return false };
    let serving = status.table.as_ref().is_some_and(|t| t.serving);
    status.members.len() == n
        && status.coordinator.as_ref().map(|c| c.id.addr) == Some(coord)
        && (serving || !is_coord)
}

impl Drop for Agents {
    fn drop(&mut self) {
        for p in &mut self.procs {
            // SIGKILL to this child's pid, then reap it.
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time of process `pid` with nanosecond resolution: the sum of the
/// first field of each of its threads' `schedstat` (zero if unreadable).
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(nanos)
}

/// A UDP and a TCP port on 127.0.0.1 that nobody uses now.
fn free_ports() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let udp = UdpSocket::bind("127.0.0.1:0").context("choosing a UDP port")?;
    let tcp = TcpListener::bind("127.0.0.1:0").context("choosing a TCP port")?;
    Ok((udp.local_addr()?, tcp.local_addr()?))
}
