//! `swimlock lock NAME -- CMD [ARGS...]`.

use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::{EXIT_LOST, EXIT_TIMEOUT, EXIT_UNAVAILABLE, duration};
use crate::agent::DEFAULT_CLIENT;
use crate::client::{Client, ClientError, LockGuard};

/// Longest wait when no --timeout is given (the agent caps waits too).
const FOREVER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Options of `swimlock lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    /// Name of the lock (1 to 255 bytes).
    pub name: String,
    /// How long to wait for the lock, e.g. 500ms, 10s, 2m [default: wait indefinitely].
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Client endpoint of the local agent: HOST:PORT or unix:PATH.
    #[arg(long, default_value = DEFAULT_CLIENT, value_name = "ADDR")]
    pub client: String,
    /// When the lock is lost, how long the command's process group has
    /// between SIGTERM and SIGKILL.
    #[arg(long, value_parser = duration, default_value = "5s", value_name = "DURATION")]
    pub kill_grace: Duration,
    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Acquires, runs, releases; returns the exit code.
pub async fn run(args: LockArgs) -> ExitCode {
    let client = match Client::connect(&args.client).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("swimlock lock: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let guard = match client.lock(&args.name, args.timeout.unwrap_or(FOREVER)).await {
        Ok(guard) => guard,
        Err(ClientError::TimedOut) => {
            let waited = humantime::format_duration(args.timeout.unwrap_or(FOREVER));
            eprintln!("swimlock lock: timed out after {waited} waiting for lock {}", args.name);
            return ExitCode::from(EXIT_TIMEOUT);
        }
        Err(e) => {
            eprintln!("swimlock lock: cannot acquire lock {}: {e}", args.name);
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("SWIMLOCK_LOCK", &args.name)
        .env("SWIMLOCK_TOKEN", guard.token().to_string())
        // Its own group, so that a lost lock stops grandchildren too.
        .process_group(0)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("swimlock lock: cannot run {}: {e}", args.command[0]);
            release(guard).await;
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            return ExitCode::from(code);
        }
    };
    supervise(child, guard, args.kill_grace).await
}

/// Waits for the command, the loss of the lock, or a stop signal.
async fn supervise(mut child: Child, mut guard: LockGuard, grace: Duration) -> ExitCode {
    let Some(group) = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw) else {
        // Already reaped: nothing to supervise.
        let status = child.wait().await;
        release(guard).await;
        return status.map_or(ExitCode::FAILURE, exit_code);
    };
    let mut stop = std::pin::pin!(super::wait_for_stop_signal());
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            lost = guard.lost() => {
                eprintln!("swimlock lock: {lost}; stopping the command (process group {group})");
                stop_group(&mut child, group, grace).await;
                return ExitCode::from(EXIT_LOST);
            }
            () = &mut stop => {
                // Asked to stop: pass it on and keep the lock until the command is gone.
                let _ = killpg(group, Signal::SIGTERM);
                stop.set(super::wait_for_stop_signal());
            }
        }
    };
    release(guard).await;
    match status {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("swimlock lock: waiting for the command failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM to the whole group; SIGKILL to whatever is left after `grace`.
async fn stop_group(child: &mut Child, group: Pid, grace: Duration) {
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    let mut reaped = false;
    while tokio::time::Instant::now() < deadline {
        if !reaped && matches!(child.try_wait(), Ok(Some(_))) {
            reaped = true;
        }
        if reaped && !group_alive(group) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("swimlock lock: process group {group} still running after {grace:?}; sending SIGKILL");
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait().await;
}

/// Whether a process of `group` is still running. Zombies do not count: an
/// orphaned grandchild that died waits for init to reap it, which some
/// containers' init never does.
fn group_alive(group: Pid) -> bool {
    // Signal 0 probes the group; without /proc it is the whole answer.
    if killpg(group, None).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return true };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        // After the command name (in parentheses, may contain spaces):
        // state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(')') else { return false };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(group.as_raw()) && state != Some("Z")
    })
}

/// Releases the lock and waits (briefly) for the agent to accept.
async fn release(guard: LockGuard) {
    let name = guard.name().clone();
    match tokio::time::timeout(Duration::from_secs(5), guard.unlock()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("swimlock lock: releasing {name}: {e}"),
        Err(_) => eprintln!("swimlock lock: the agent did not confirm the release of {name}"),
    }
}

/// The command's exit code; 128 + N when it was killed by signal N.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
        (None, Some(signal)) => ExitCode::from((128 + signal).clamp(0, 255) as u8),
        (None, None) => ExitCode::FAILURE,
    }
}
