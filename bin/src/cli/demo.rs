//! `swimlock demo`: a 3-node cluster on loopback, as child processes.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::{EXIT_UNAVAILABLE, status};
use crate::client::Client;

/// Options of `swimlock demo`.
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

/// Starts the nodes, prints how to use them, waits for Ctrl-C.
pub async fn run(args: DemoArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("swimlock demo: cannot find the swimlock binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = |base: u16, i: u16| base.checked_add(i).unwrap_or(base);
    let seed = format!("127.0.0.1:{}", args.udp_port);
    // The demo's own cluster key, in a file only this user can read.
    let key_file = match DemoKey::create() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("swimlock demo: cannot write a cluster key: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut children: Vec<Child> = Vec::new();
    for i in 0..args.nodes {
        let child = Command::new(&exe)
            .arg("agent")
            .args(["--name", &format!("node-{}", i + 1)])
            .args(["--bind", &format!("127.0.0.1:{}", port(args.udp_port, i))])
            .args(["--seed", &seed])
            .args(["--client", &format!("127.0.0.1:{}", port(args.client_port, i))])
            .args(["--metrics", &format!("127.0.0.1:{}", port(args.metrics_port, i))])
            .args(["--node-tag", &(i + 1).to_string()])
            .arg("--key-file")
            .arg(&key_file.0)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(e) => {
                eprintln!("swimlock demo: cannot start node {}: {e}", i + 1);
                stop(&mut children).await;
                return ExitCode::FAILURE;
            }
        }
        // Start a little apart, so node-1 is the oldest and coordinates.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let first = format!("127.0.0.1:{}", args.client_port);
    let formed = wait_for_view(&first, usize::from(args.nodes), Duration::from_secs(10)).await;
    match formed {
        Some(s) => print!("{}", status::to_text(&s)),
        None => {
            eprintln!("swimlock demo: the nodes did not form one view within 10s (ports in use?)");
            stop(&mut children).await;
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    }
    let last = format!("127.0.0.1:{}", port(args.client_port, args.nodes - 1));
    println!();
    println!("{} nodes running. From another shell:", args.nodes);
    println!("  swimlock status --client {first}");
    println!("  swimlock lock demo --client {last} -- sh -c 'echo token $SWIMLOCK_TOKEN; sleep 5'");
    println!("  swimlock lock demo --client {first} --timeout 10s -- echo got it after the first");
    println!("  curl -s http://127.0.0.1:{}/metrics | grep ^swimlock_", args.metrics_port);
    println!("Ctrl-C stops the cluster.");

    tokio::select! {
        () = super::wait_for_stop_signal() => {}
        (i, status) = wait_any(&mut children) => {
            eprintln!("swimlock demo: node-{} exited ({status}); stopping", i + 1);
        }
    }
    stop(&mut children).await;
    ExitCode::SUCCESS
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

async fn wait_any(children: &mut [Child]) -> (usize, String) {
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return (i, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to every node (they leave gracefully), SIGKILL after 5 s.
async fn stop(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for child in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}
