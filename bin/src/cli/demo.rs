//! `swimlock demo`: a 3-node cluster on loopback, as child processes.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::{EXIT_UNAVAILABLE, status};
use crate::client::Client;

/// Options of `swimlock demo`: `--nodes` agents on loopback. Kill one to see
/// failover; `restart N` on standard input starts node-N again.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// UDP port of the first node; the others follow.
    #[arg(long, default_value_t = 7946)]
    pub udp_port: u16,
    /// Client port of the first node; the others follow.
    #[arg(long, default_value_t = 7950)]
    pub client_port: u16,
    /// Metrics port of the first node; the others follow.
    #[arg(long, default_value_t = 9950)]
    pub metrics_port: u16,
}

/// Starts the nodes, prints how to use them, then watches them until
/// Ctrl-C: a node that dies is reported with the time the survivors took to
/// form a view without it, and `restart N` on standard input starts it
/// again.
pub async fn run(args: DemoArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("swimlock demo: cannot find the swimlock binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(taken) = ports_free(&args) {
        eprintln!(
            "swimlock demo: {taken} is already in use (another swimlock demo or agent?); stop it, or \
             choose other ports with --udp-port, --client-port and --metrics-port"
        );
        return ExitCode::from(EXIT_UNAVAILABLE);
    }
    // The demo's own cluster key, in a file only this user can read.
    let key_file = match DemoKey::create() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("swimlock demo: cannot write a cluster key: {e}");
            return ExitCode::FAILURE;
        }
    };
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let demo = Demo { exe, args, key: key_file.0.clone(), level, started: Instant::now() };
    let mut nodes: Vec<Option<Child>> = Vec::new();
    for i in 0..demo.args.nodes {
        match demo.spawn(i) {
            Ok(child) => nodes.push(Some(child)),
            Err(e) => {
                eprintln!("swimlock demo: cannot start node-{}: {e}", i + 1);
                stop(&mut nodes).await;
                return ExitCode::FAILURE;
            }
        }
        // Start a little apart, so node-1 is the oldest and coordinates.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let first = format!("127.0.0.1:{}", demo.args.client_port);
    let formed = wait_for_view(&first, usize::from(demo.args.nodes), Duration::from_secs(10)).await;
    match formed {
        Some(s) => say(&status::to_text(&s)),
        None => {
            eprintln!("swimlock demo: the nodes did not form one view within 10s (see their log above)");
            stop(&mut nodes).await;
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    }
    demo.banner(&nodes);
    let code = demo.watch(&mut nodes).await;
    stop(&mut nodes).await;
    code
}

/// Prints a line; a closed standard output (`swimlock demo | head`) is not
/// an error: the demo keeps running until Ctrl-C.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The first of the demo's ports that cannot be bound, if any.
fn ports_free(args: &DemoArgs) -> Result<(), String> {
    for i in 0..args.nodes {
        let node = i + 1;
        let udp = port(args.udp_port, i);
        std::net::UdpSocket::bind(("127.0.0.1", udp)).map_err(|_| format!("UDP port {udp} (node-{node})"))?;
        for (what, base) in [("client", args.client_port), ("metrics", args.metrics_port)] {
            let p = port(base, i);
            std::net::TcpListener::bind(("127.0.0.1", p))
                .map_err(|_| format!("TCP port {p} ({what} endpoint of node-{node})"))?;
        }
    }
    Ok(())
}

fn port(base: u16, i: u16) -> u16 {
    base.saturating_add(i)
}

/// What the demo needs to start and watch its nodes.
struct Demo {
    exe: std::path::PathBuf,
    args: DemoArgs,
    key: std::path::PathBuf,
    level: String,
    started: Instant,
}

impl Demo {
    /// Starts node `i` (0-based) as a child process.
    fn spawn(&self, i: u16) -> std::io::Result<Child> {
        let a = &self.args;
        Command::new(&self.exe)
            .arg("agent")
            .args(["--name", &format!("node-{}", i + 1)])
            .args(["--bind", &format!("127.0.0.1:{}", port(a.udp_port, i))])
            .args(["--seed", &format!("127.0.0.1:{}", a.udp_port)])
            .args(["--client", &format!("127.0.0.1:{}", port(a.client_port, i))])
            .args(["--metrics", &format!("127.0.0.1:{}", port(a.metrics_port, i))])
            .args(["--node-tag", &(i + 1).to_string()])
            .args(["--log-level", &self.level])
            .arg("--key-file")
            .arg(&self.key)
            // Commands are read by the demo, not by its nodes.
            .stdin(std::process::Stdio::null())
            .spawn()
    }

    fn banner(&self, nodes: &[Option<Child>]) {
        let a = &self.args;
        let pids: Vec<String> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some(format!("node-{} {}", i + 1, n.as_ref()?.id()?)))
            .collect();
        let pids = pids.join(", ");
        let first = format!("127.0.0.1:{}", a.client_port);
        let last = format!("127.0.0.1:{}", port(a.client_port, a.nodes - 1));
        say(&format!(
            "\n{n} nodes running (their logs, at level {level}, follow here; RUST_LOG=info swimlock demo \
             shows more). From another shell:\n\
             \x20 swimlock status --client {first}\n\
             \x20 swimlock lock demo --client {last} -- sh -c 'echo token $SWIMLOCK_TOKEN; sleep 5'\n\
             \x20 swimlock lock demo --client {first} --timeout 10s -- echo got it after the first\n\
             \x20 curl -s http://127.0.0.1:{metrics}/ready; curl -s http://127.0.0.1:{metrics}/metrics | grep ^swimlock_\n\
             Failover: kill a node (pids: {pids}; e.g. kill -9 PID): the demo says which one died and \
             when the others re-formed. Type `restart N` and Enter to start node-N again. \
             Ctrl-C stops the cluster.\n",
            n = a.nodes,
            level = self.level,
            metrics = a.metrics_port,
        ));
    }

    fn stamp(&self) -> String {
        format!("[{:7.2}s]", self.started.elapsed().as_secs_f64())
    }

    /// Reports deaths, re-formed views and restarts until Ctrl-C.
    async fn watch(&self, nodes: &mut [Option<Child>]) -> ExitCode {
        // Standard input is read by a thread of its own: a read blocked on
        // it would keep the runtime from shutting down at the end.
        let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdin_open = true;
        // After a death or a restart: the view size to wait for, since when.
        let mut awaiting: Option<(usize, Instant)> = None;
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = super::wait_for_stop_signal() => return ExitCode::SUCCESS,
                (i, status) = wait_any(nodes) => {
                    nodes[i] = None;
                    let alive = nodes.iter().filter(|n| n.is_some()).count();
                    say(&format!(
                        "{} node-{} exited ({status}); waiting for the {alive} others to form a view without it\n",
                        self.stamp(),
                        i + 1
                    ));
                    if alive == 0 {
                        say("every node has exited; the demo stops\n");
                        return ExitCode::FAILURE;
                    }
                    awaiting = Some((alive, Instant::now()));
                }
                line = lines.recv(), if stdin_open => match line {
                    Some(line) => {
                        if let Some(size) = self.command(line.trim(), nodes) {
                            awaiting = Some((size, Instant::now()));
                        }
                    }
                    None => stdin_open = false,
                },
                _ = poll.tick(), if awaiting.is_some() => {
                    let Some((size, since)) = awaiting else { continue };
                    if let Some(ready) = self.view_of(nodes, size).await {
                        say(&format!(
                            "{} {} re-formed in {:.2}s: view of {} members, coordinator {}\n",
                            self.stamp(),
                            alive_names(nodes),
                            since.elapsed().as_secs_f64(),
                            ready.members,
                            ready.coordinator.as_deref().unwrap_or("-"),
                        ));
                        awaiting = None;
                    }
                }
            }
        }
    }

    /// `restart N`: starts node-N again; returns the view size to wait for.
    fn command(&self, line: &str, nodes: &mut [Option<Child>]) -> Option<usize> {
        let mut words = line.split_whitespace();
        let (Some("restart" | "r"), Some(n)) = (words.next(), words.next()) else {
            if !line.is_empty() {
                say("commands: restart N (start node-N again); Ctrl-C stops the demo\n");
            }
            return None;
        };
        let Some(i) = n.parse::<usize>().ok().filter(|i| (1..=nodes.len()).contains(i)).map(|i| i - 1) else {
            say(&format!("no node {n}: nodes are 1 to {}\n", nodes.len()));
            return None;
        };
        if nodes[i].is_some() {
            say(&format!("node-{n} is running\n"));
            return None;
        }
        match self.spawn(i as u16) {
            Ok(child) => {
                let pid = child.id().map_or_else(String::new, |p| format!(" (pid {p})"));
                nodes[i] = Some(child);
                say(&format!("{} node-{n} started again{pid}; waiting for it to join\n", self.stamp()));
                Some(nodes.iter().filter(|n| n.is_some()).count())
            }
            Err(e) => {
                say(&format!("cannot start node-{n}: {e}\n"));
                None
            }
        }
    }

    /// The readiness of a live node once its view has `size` members and a
    /// coordinator.
    async fn view_of(&self, nodes: &[Option<Child>], size: usize) -> Option<crate::http::Readiness> {
        let i = nodes.iter().position(Option::is_some)?;
        let addr = format!("127.0.0.1:{}", port(self.args.metrics_port, i as u16));
        let ready = get_ready(&addr).await?;
        (ready.members == size && ready.reason().is_none()).then_some(ready)
    }
}

/// The names of the live nodes, for messages.
fn alive_names(nodes: &[Option<Child>]) -> String {
    let names: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is_some())
        .map(|(i, _)| format!("node-{}", i + 1))
        .collect();
    names.join(", ")
}

/// `GET /ready` of a node's metrics endpoint, parsed.
async fn get_ready(addr: &str) -> Option<crate::http::Readiness> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(1), io).await.ok().flatten()
}

/// A fresh key in a private file, removed when the demo ends.
struct DemoKey(std::path::PathBuf);

impl DemoKey {
    fn create() -> std::io::Result<DemoKey> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = crate::agent::generate_key()?;
        let path = std::env::temp_dir().join(format!("swimlock-demo-{}.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        writeln!(f, "{}", key.to_base64())?;
        Ok(DemoKey(path))
    }
}

impl Drop for DemoKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn wait_for_view(addr: &str, members: usize, limit: Duration) -> Option<swimlock_wire::client::Status> {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Ok(client) = Client::connect(addr).await
            && let Ok(s) = client.status().await
            && s.members.len() == members
            && s.table.as_ref().is_some_and(|t| t.serving)
        {
            return Some(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn wait_any(children: &mut [Option<Child>]) -> (usize, String) {
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            if let Some(child) = child
                && let Ok(Some(status)) = child.try_wait()
            {
                return (i, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM to every node (they leave gracefully), SIGKILL after 5 s.
async fn stop(children: &mut [Option<Child>]) {
    for child in children.iter().flatten() {
        if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for child in children.iter_mut().flatten() {
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}
