//! N agents, one per network namespace, on a bridge that lives in a
//! namespace of its own with no route out; faults made with nftables (in
//! each node's input hook, so drops are silent) and signals.
//!
//! Addresses are 10.77.0.0/24 inside namespaces this rig created; no
//! address of the host is used. Names carry the test's pid and a counter,
//! so rigs of parallel tests never meet. Everything is removed on drop,
//! also when the test panics: agents (SIGCONT, then SIGKILL, by pid), nft
//! tables, namespaces, the bridge, the scratch directory.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use swimlock::client::Client;
use swimlock_wire::client::Status;

use super::relay::{Latency, Relay};
use crate::common::{BIN, Proc, TempDir, key_file};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The nft table and input chain of every node namespace.
const TABLE: &str = "swimrig";
const CHAIN: &str = "rig_in";
/// The agents' UDP port (each namespace has its own ports).
const PORT: u16 = 7946;
/// The port of a node's latency relay.
const RELAY_PORT: u16 = 7947;

/// The lock mode the agents run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every side of a partition grants; duplicates are resolved on merge.
    Available,
    /// Only a side with a majority of the configured members grants.
    Majority,
}

impl Mode {
    /// The `--mode` value.
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Available => "available",
            Mode::Majority => "majority",
        }
    }
}

/// A change the rig made, stamped with its time on the rig's clock.
#[derive(Clone, Debug)]
pub enum Change {
    /// The network's rules now: `blocked[dst]` holds the nodes whose
    /// datagrams `dst` drops; `loss` is the random drop percentage.
    Net { blocked: Vec<BTreeSet<usize>>, loss: u8 },
    /// SIGSTOP of the node's agent.
    Pause(usize),
    /// SIGCONT of the node's agent.
    Resume(usize),
    /// SIGKILL of the node's agent.
    Kill(usize),
    /// SIGTERM of the node's agent, and its exit.
    Stop(usize),
    /// The node's agent started (again, with the same state directory).
    Start(usize),
    /// The rig saw every live node in one view again (after a fault).
    OneView,
}

/// One node: a namespace, its address, its agent.
pub struct Node {
    /// The agent's display name (`n0`, `n1`, ...).
    pub name: String,
    /// The node's namespace.
    pub netns: String,
    /// The agent's UDP address inside the bridge's subnet.
    pub addr: SocketAddr,
    /// The address the agent advertises: `addr`, or its relay's.
    pub advertise: SocketAddr,
    /// The agent's client endpoint (a Unix socket: reachable from the test
    /// process without entering the namespace).
    pub socket: PathBuf,
    /// `--state-dir`, kept across restarts.
    pub state_dir: PathBuf,
    /// The agent's log (appended across restarts).
    pub log: PathBuf,
    proc: Proc,
    paused: bool,
}

impl Node {
    /// Whether an agent process runs (paused or not).
    pub fn running(&self) -> bool {
        self.proc.0.is_some()
    }

    /// The agent's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.running().then(|| self.proc.pid())
    }
}

/// The cluster.
pub struct Rig {
    /// Node `i` is `nodes[i]`.
    pub nodes: Vec<Node>,
    /// The mode every agent runs in.
    pub mode: Mode,
    /// Every change, in order, on the rig's clock.
    pub changes: Vec<(Duration, Change)>,
    epoch: Instant,
    extra: Vec<String>,
    bridge_ns: Option<String>,
    blocked: Vec<BTreeSet<usize>>,
    loss: u8,
    relays: Vec<Relay>,
    dir: TempDir,
}

/// Runs `ip netns exec NS PROGRAM ARGS`.
fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

fn check(out: std::io::Result<Output>, what: &str) {
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("{what}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("{what}: cannot run (needs root, iproute2, nftables): {e}"),
    }
}

fn ip(args: &[&str]) {
    check(Command::new("ip").args(args).stdin(Stdio::null()).output(), &format!("ip {args:?}"));
}

/// Feeds `script` to `ip -batch -` inside `ns`.
fn ip_batch(ns: &str, script: &str) {
    let child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| panic!("ip -batch in {ns}: {e}"));
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    check(child.wait_with_output(), &format!("ip -batch in {ns}"));
}

/// The MAC address of node `i`'s interface.
fn mac(i: usize) -> String {
    format!("02:77:00:00:{:02x}:{:02x}", (i + 1) >> 8, (i + 1) & 0xff)
}

/// Feeds `script` to `nft -f -` inside `ns`.
fn nft(ns: &str, script: &str) {
    let child = in_ns(ns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    check(child.wait_with_output(), &format!("nft in {ns}:\n{script}"));
}

impl Rig {
    /// Builds `n` namespaces on one bridge and starts one agent in each, in
    /// order (node 0 is the oldest, so it coordinates), every agent seeded
    /// with every other node. `extra` goes to every agent's command line.
    pub fn new(n: usize, mode: Mode, extra: &[&str]) -> Rig {
        Rig::with_latency(n, mode, extra, None, 0)
    }

    /// [`Rig::new`], with every datagram to a node delayed by `latency`
    /// (a relay per node; `seed` draws the delays).
    pub fn with_latency(n: usize, mode: Mode, extra: &[&str], latency: Option<Latency>, seed: u64) -> Rig {
        assert!((1..=250).contains(&n), "the subnet holds 250 nodes");
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("swr{}x{k}", std::process::id());
        let mut rig = Rig {
            nodes: Vec::new(),
            mode,
            changes: Vec::new(),
            epoch: Instant::now(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            bridge_ns: None,
            blocked: vec![BTreeSet::new(); n],
            loss: 0,
            relays: Vec::new(),
            dir: TempDir::new(&prefix),
        };
        // Each piece is registered in `rig` as soon as it exists, so a
        // failure half-way still removes what was made.
        let br = format!("{prefix}br");
        ip(&["netns", "add", &br]);
        rig.bridge_ns = Some(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 0..n {
            rig.add_node(&prefix, &br, i);
            if let Some(latency) = latency {
                let node = &mut rig.nodes[i];
                node.advertise = SocketAddr::new(node.addr.ip(), RELAY_PORT);
                let relay = Relay::start(&node.netns, node.advertise, node.addr, latency, seed ^ i as u64);
                rig.relays.push(relay);
            }
        }
        rig.pin_neighbours();
        for i in 0..n {
            rig.start(i);
        }
        rig
    }

    /// Every node gets a permanent neighbour entry for every other one. The
    /// kernel's neighbour table is shared by all namespaces and holds 1,024
    /// learnt entries by default (`gc_thresh3`): 64 nodes that learn each
    /// other need 4,032, and past the limit datagrams were dropped for want
    /// of an entry ("neighbor table overflow" in the kernel log): agents
    /// were falsely suspected and the last ones started never met anyone.
    /// Permanent entries are not counted against that limit, and no ARP
    /// request is needed.
    fn pin_neighbours(&self) {
        for node in &self.nodes {
            let mut script = String::new();
            for (j, other) in self.nodes.iter().enumerate().filter(|(_, o)| o.addr != node.addr) {
                script.push_str(&format!(
                    "neigh replace {} lladdr {} dev eth0 nud permanent\n",
                    other.addr.ip(),
                    mac(j)
                ));
            }
            ip_batch(&node.netns, &script);
        }
    }

    fn add_node(&mut self, prefix: &str, br: &str, i: usize) {
        let ns = format!("{prefix}n{i}");
        ip(&["netns", "add", &ns]);
        let dir = self.dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let addr = SocketAddr::from((Ipv4Addr::new(10, 77, 0, i as u8 + 1), PORT));
        self.nodes.push(Node {
            name: format!("n{i}"),
            netns: ns.clone(),
            addr,
            advertise: addr,
            socket: dir.join("client.sock"),
            state_dir: dir.join("state"),
            log: dir.join("agent.log"),
            proc: Proc(None),
            paused: false,
        });
        let veth = format!("v{i}");
        ip(&["-n", br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["-n", br, "link", "set", &veth, "master", "br0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", "eth0", "address", &mac(i)]);
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", addr.ip()), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        nft(
            &ns,
            &format!(
                "add table inet {TABLE}\n\
                 add chain inet {TABLE} {CHAIN} {{ type filter hook input priority 0; policy accept; }}\n"
            ),
        );
    }

    /// Time on the rig's clock (CLOCK_MONOTONIC since the rig was made).
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The instant the rig's clock counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Scratch directory (logs, state).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Records that every live node was seen in one view just now.
    pub fn mark_one_view(&mut self) {
        self.note(Change::OneView);
    }

    fn note(&mut self, change: Change) {
        let t = self.now();
        self.changes.push((t, change));
    }

    /// Starts node `i`'s agent (again, with the same state directory and
    /// address; a restarted agent is a new, younger member).
    pub fn start(&mut self, i: usize) {
        assert!(!self.nodes[i].running(), "n{i} already runs");
        // SWIMLOCK_RIG_SEEDS=K: only the first K nodes are seeds (as a large
        // deployment would list a few), else every other node is.
        let first =
            std::env::var("SWIMLOCK_RIG_SEEDS").map_or(usize::MAX, |v| v.parse().expect("a seed count"));
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i && *j < first)
            .map(|(_, n)| n.advertise.to_string())
            .collect();
        let key = key_file(self.dir.path());
        let members = self.nodes.len().to_string();
        let node = &self.nodes[i];
        let _ = std::fs::remove_file(&node.socket);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let mut cmd = in_ns(&node.netns, BIN);
        cmd.arg("agent")
            .args(["--name", &node.name])
            .args(["--bind", &node.addr.to_string()])
            .args(["--advertise", &node.advertise.to_string()])
            .args(["--client", "off", "--metrics", "off"])
            .arg("--unix-socket")
            .arg(&node.socket)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--key-file")
            .arg(&key)
            .args(["--mode", self.mode.flag(), "--members", &members]);
        for s in &seeds {
            cmd.args(["--seed", s]);
        }
        cmd.args(&self.extra).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().expect("start swimlock agent");
        self.nodes[i].proc = Proc(Some(child));
        self.nodes[i].paused = false;
        self.note(Change::Start(i));
    }

    fn signal(&self, i: usize, sig: Signal) {
        let pid = self.nodes[i].pid().unwrap_or_else(|| panic!("n{i} does not run"));
        kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("{sig} to n{i}: {e}"));
    }

    /// SIGSTOP of node `i`'s agent.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.nodes[i].paused = true;
        self.note(Change::Pause(i));
    }

    /// SIGCONT of node `i`'s agent.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.nodes[i].paused = false;
        self.note(Change::Resume(i));
    }

    /// SIGKILL of node `i`'s agent (no leave, no release).
    pub fn kill(&mut self, i: usize) {
        assert!(self.nodes[i].running(), "n{i} does not run");
        self.nodes[i].proc.kill();
        self.note(Change::Kill(i));
    }

    /// SIGTERM of node `i`'s agent; true if it exited within `limit`
    /// (else it is killed).
    pub fn stop(&mut self, i: usize, limit: Duration) -> bool {
        if self.nodes[i].paused {
            self.resume(i);
        }
        self.signal(i, Signal::SIGTERM);
        let exited = self.nodes[i].proc.wait_exit(limit).is_some();
        if !exited {
            self.nodes[i].proc.kill();
        }
        self.note(Change::Stop(i));
        exited
    }

    /// Splits the network into `groups`: two nodes hear each other only
    /// if some group holds both. A node in two groups bridges them (it
    /// hears both, they do not hear each other); a node in no group is
    /// cut from everyone.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let n = self.len();
        let together = |a: usize, b: usize| groups.iter().any(|g| g.contains(&a) && g.contains(&b));
        self.blocked =
            (0..n).map(|dst| (0..n).filter(|&src| src != dst && !together(src, dst)).collect()).collect();
        self.apply();
    }

    /// `to` stops hearing `from` (one way; `from` still hears `to`).
    pub fn cut_one_way(&mut self, from: usize, to: usize) {
        self.blocked[to].insert(from);
        self.apply();
    }

    /// Removes every partition (loss stays).
    pub fn heal(&mut self) {
        self.blocked = vec![BTreeSet::new(); self.len()];
        self.apply();
    }

    /// Drops `pct` percent of the UDP datagrams every node receives, at
    /// random.
    pub fn set_loss(&mut self, pct: u8) {
        self.loss = pct;
        self.apply();
    }

    /// Whether `dst` drops what `src` sends, now.
    pub fn blocks(&self, dst: usize, src: usize) -> bool {
        self.blocked[dst].contains(&src)
    }

    /// Writes every node's rules (flush and refill in one nft transaction).
    fn apply(&mut self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let mut script = format!("flush chain inet {TABLE} {CHAIN}\n");
            let srcs: Vec<String> =
                self.blocked[i].iter().map(|&s| self.nodes[s].addr.ip().to_string()).collect();
            if !srcs.is_empty() {
                script += &format!("add rule inet {TABLE} {CHAIN} ip saddr {{ {} }} drop\n", srcs.join(", "));
            }
            if self.loss > 0 {
                script += &format!(
                    "add rule inet {TABLE} {CHAIN} iifname \"eth0\" meta l4proto udp numgen random mod 100 < {} drop\n",
                    self.loss
                );
            }
            nft(&node.netns, &script);
        }
        let change = Change::Net { blocked: self.blocked.clone(), loss: self.loss };
        self.note(change);
    }

    /// `status` of node `i`, if its agent answers within `limit`.
    pub async fn status(&self, i: usize, limit: Duration) -> Option<Status> {
        let addr = format!("unix:{}", self.nodes[i].socket.display());
        tokio::time::timeout(limit, async {
            let client = Client::connect(&addr).await.ok()?;
            client.status().await.ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// The node index of an agent's display name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The coordinator as `live` nodes agree on it, if they do.
    pub async fn coordinator(&self, live: &[usize]) -> Option<usize> {
        let mut seen = None;
        for &i in live {
            let c = self.status(i, Duration::from_secs(1)).await?.coordinator?;
            let c = self.index_of(&c.name)?;
            if seen.is_some_and(|s| s != c) {
                return None;
            }
            seen = Some(c);
        }
        seen
    }

    /// Whether `live` nodes share one view of exactly themselves and its
    /// coordinator serves.
    pub async fn one_view(&self, live: &[usize]) -> bool {
        let mut first: Option<Status> = None;
        let mut serving = false;
        // One answer off is enough to say no: stop asking then (status
        // requests are work for agents that may be busy converging).
        for &i in live {
            let Some(s) = self.status(i, Duration::from_secs(1)).await else { return false };
            if s.members.len() != live.len() || first.as_ref().is_some_and(|f| f.view_digest != s.view_digest)
            {
                return false;
            }
            let coordinates = s.coordinator.as_ref().is_some_and(|c| c.name == s.name);
            serving |= coordinates && s.table.as_ref().is_some_and(|t| t.serving);
            first.get_or_insert(s);
        }
        first.is_none() || serving
    }

    /// How many nodes of `live` see views of each size, for a message.
    pub async fn views(&self, live: &[usize]) -> String {
        let mut sizes: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
        let mut silent = 0;
        for &i in live {
            match self.status(i, Duration::from_secs(1)).await {
                Some(s) => *sizes.entry(s.members.len()).or_default() += 1,
                None => silent += 1,
            }
        }
        let sizes: Vec<String> = sizes.iter().map(|(size, nodes)| format!("{nodes} see {size}")).collect();
        format!("views: {}; {silent} did not answer", sizes.join(", "))
    }

    /// Waits until `live` nodes share one view (see [`Rig::one_view`]);
    /// the time it took, or `None` after `limit`.
    pub async fn wait_one_view(&self, live: &[usize], limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.one_view(live).await {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Nodes whose agent runs and is not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.nodes[i].running() && !self.nodes[i].paused).collect()
    }

    /// Bytes node `i` sent on its link (every datagram whole: IP, UDP,
    /// envelope).
    pub fn tx_bytes(&self, i: usize) -> u64 {
        let out = in_ns(&self.nodes[i].netns, "cat").arg("/sys/class/net/eth0/statistics/tx_bytes").output();
        let out = out.expect("read tx_bytes");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("tx_bytes is a number")
    }

    /// CPU time (user + system) and resident memory of node `i`'s agent.
    pub fn usage(&self, i: usize) -> Option<(Duration, u64)> {
        let pid = self.nodes[i].pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses.
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 =
            status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
        // USER_HZ is 100 on Linux.
        Some((Duration::from_millis(ticks * 10), rss_kb * 1024))
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!("---- log of n{i} ----\n{}", self.log_tail(i, 20));
            }
        }
        for node in &mut self.nodes {
            if let Some(pid) = node.pid() {
                // A stopped process takes SIGKILL too; SIGCONT first lets
                // it be reaped at once.
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            }
            node.proc.kill();
        }
        for node in &self.nodes {
            let _ = in_ns(&node.netns, "nft").args(["delete", "table", "inet", TABLE]).output();
            let _ = Command::new("ip").args(["netns", "delete", &node.netns]).output();
        }
        if let Some(br) = &self.bridge_ns {
            let _ = Command::new("ip").args(["-n", br, "link", "delete", "br0"]).output();
            let _ = Command::new("ip").args(["netns", "delete", br]).output();
        }
    }
}
