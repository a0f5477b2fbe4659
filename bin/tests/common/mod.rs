//! Real `swimlock` processes on 127.0.0.1 for the integration tests.
//!
//! Every test takes [`serial`] first: the machines are small and failure
//! detection is timing-based, so clusters of different tests must not
//! compete for the CPU. Every child is killed by pid when its guard drops
//! (also on panic), and every wait is a loop on a condition with a deadline.

#![allow(dead_code)]

pub mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_swimlock");

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (see the module docs).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port nobody listens on now, for TCP and UDP alike.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("swimlock-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL, by pid) and reaped on drop.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL now, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.0 = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The cluster key file of the agents started with `dir` (made with
/// `swimlock keygen` on first use, mode 0600).
pub fn key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("cluster.key");
    if !path.exists() {
        let out = swimlock(&["keygen"]);
        assert!(out.status.success(), "swimlock keygen failed");
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
        f.write_all(&out.stdout).unwrap();
    }
    path
}

/// The key in `dir`'s key file, as base64 text (to grep for it).
pub fn key_text(dir: &Path) -> String {
    std::fs::read_to_string(key_file(dir)).unwrap().trim().to_string()
}

/// `extra`, plus `--key-file` for `dir`'s key unless `extra` already
/// chooses (`--insecure`, `--key`, `--key-file`).
fn with_key(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if !extra.iter().any(|a| ["--insecure", "--key", "--key-file"].contains(a)) {
        args.push("--key-file".into());
        args.push(key_file(dir).display().to_string());
    }
    args
}

/// One `swimlock agent`.
pub struct Agent {
    pub name: String,
    pub udp: SocketAddr,
    pub client: SocketAddr,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    pub proc: Proc,
    /// The network namespace it runs in, if not the test's own.
    pub netns: Option<String>,
}

/// Where an agent listens.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub udp: SocketAddr,
    pub client: SocketAddr,
    pub metrics: SocketAddr,
}

impl Ports {
    /// Free ports of this namespace on 127.0.0.1.
    pub fn free() -> Ports {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Ports { udp: at(free_port()), client: at(free_port()), metrics: at(free_port()) }
    }

    /// Fixed ports for agent `i` of a fresh namespace (nothing else there).
    pub fn nth(i: u16) -> Ports {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Ports { udp: at(17_001 + i), client: at(17_101 + i), metrics: at(17_201 + i) }
    }
}

impl Agent {
    /// Starts an agent named `name` with `seed`, sealed with `dir`'s key
    /// unless `extra` says otherwise; its log goes to `dir`.
    pub fn start(dir: &Path, name: &str, seed: Option<SocketAddr>, extra: &[&str]) -> Agent {
        Agent::start_in(None, Ports::free(), dir, name, seed, extra)
    }

    /// [`Agent::start`] inside network namespace `netns`, on `ports`.
    pub fn start_in(
        netns: Option<&netns::Netns>,
        ports: Ports,
        dir: &Path,
        name: &str,
        seed: Option<SocketAddr>,
        extra: &[&str],
    ) -> Agent {
        let Ports { udp, client, metrics } = ports;
        let log = dir.join(format!("{name}.log"));
        let extra = with_key(dir, extra);
        let mut cmd = match netns {
            Some(ns) => ns.command(BIN),
            None => Command::new(BIN),
        };
        cmd.arg("agent")
            .args(["--name", name])
            .args(["--bind", &udp.to_string()])
            .args(["--client", &client.to_string()])
            .args(["--metrics", &metrics.to_string()])
            .args(["--seed", &seed.unwrap_or(udp).to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start swimlock agent");
        let netns = netns.map(|ns| ns.name().to_string());
        Agent { name: name.to_string(), udp, client, metrics, log, proc: Proc(Some(child)), netns }
    }

    /// Runs the swimlock CLI in this agent's namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(args).stdin(Stdio::null()).output().expect("run swimlock")
    }

    pub fn client_arg(&self) -> String {
        self.client.to_string()
    }

    /// `swimlock status --json` of this agent, if it answers.
    pub fn status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--json", "--client", &self.client_arg()]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The Prometheus text of this agent.
    pub fn scrape(&self) -> Option<String> {
        match &self.netns {
            Some(ns) => netns::inside(ns, || self.scrape_here()),
            None => self.scrape_here(),
        }
    }

    fn scrape_here(&self) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Agents that print their logs if the test fails.
pub struct Cluster {
    pub agents: Vec<Agent>,
    pub dir: TempDir,
}

impl Cluster {
    /// `n` agents seeded by the first, started 50 ms apart so that the first
    /// is the oldest (the coordinator).
    pub fn start(tag: &str, n: usize, extra: &[&str]) -> Cluster {
        let dir = TempDir::new(tag);
        let mut agents: Vec<Agent> = Vec::new();
        for i in 0..n {
            let seed = agents.first().map(|a| a.udp);
            agents.push(Agent::start(dir.path(), &format!("{tag}-{}", i + 1), seed, extra));
            std::thread::sleep(Duration::from_millis(50));
        }
        Cluster { agents, dir }
    }

    /// Waits until every live agent reports the same view of `n` members
    /// and the coordinator serves; returns the time it took.
    pub fn wait_formed(&self, live: &[usize], limit: Duration) -> Duration {
        let started = Instant::now();
        wait_until(limit, "one view of every live agent", || {
            let statuses: Vec<Value> = live.iter().filter_map(|&i| self.agents[i].status()).collect();
            statuses.len() == live.len()
                && statuses.iter().all(|s| {
                    s["members"].as_array().map(Vec::len) == Some(live.len())
                        && s["view_digest"] == statuses[0]["view_digest"]
                })
                && statuses.iter().any(|s| s["table"]["serving"] == Value::Bool(true))
        });
        started.elapsed()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for a in &self.agents {
                eprintln!("---- log of {} ----\n{}", a.name, a.log_tail());
            }
        }
    }
}

/// Runs the swimlock CLI and waits for it.
pub fn swimlock(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run swimlock")
}

/// Polls `cond` every 50 ms until it holds; panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of every sample of metric `name` (all label sets), if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    metric_with(text, name, "")
}

/// The sum of the samples of `name` whose labels contain `label` (e.g.
/// `result="acquired"`).
pub fn metric_with(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric_name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest),
            None => (series, ""),
        };
        if metric_name == name && labels.contains(label) {
            let v: f64 = value.parse().ok()?;
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// A tokio runtime for the client library.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// One generated cluster key for every node of a test binary.
pub fn test_key() -> swimlock::node::seal::Key {
    static KEY: std::sync::OnceLock<swimlock::node::seal::Key> = std::sync::OnceLock::new();
    KEY.get_or_init(|| swimlock::agent::generate_key().expect("a key from the OS")).clone()
}

/// An nftables table (named after `tag` and this process) that drops UDP
/// between two loopback ports, both ways, while it exists: a silent
/// partition. Removed on [`PortPartition::heal`] or when dropped.
pub struct PortPartition {
    table: String,
    healed: bool,
}

impl PortPartition {
    pub fn new(tag: &str, a: u16, b: u16) -> PortPartition {
        let table = format!("swimlock_{tag}_{}", std::process::id());
        let script = format!(
            "table inet {table} {{\n chain input {{\n  type filter hook input priority 0;\n  \
             udp sport {a} udp dport {b} drop\n  udp sport {b} udp dport {a} drop\n }}\n}}\n"
        );
        let mut nft = Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).spawn().expect("nft");
        nft.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft failed");
        PortPartition { table, healed: false }
    }

    pub fn heal(&mut self) {
        if !std::mem::replace(&mut self.healed, true) {
            let _ = Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
        }
    }
}

impl Drop for PortPartition {
    fn drop(&mut self) {
        self.heal();
    }
}
