//! `swimlock lock NAME -- CMD [ARGS...]`.
//!
//! Once the lock is granted, the wrapper starts a [`Guardian`] and runs the
//! command in the guardian's process group, so that even a SIGKILL of the
//! wrapper cannot leave the command running once the lock is released (see
//! [`super::guardian`]). Then it waits for the first of: the command exits
//! (release, exit with its code), the lock is lost (stop the group, exit
//! 76), the agent is stopping (stop the group, release, exit 79), or a stop
//! signal (pass SIGTERM on to the group, keep the lock until it exits).

use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::guardian::{Guardian, live_members, signal_members};
use super::{
    EXIT_AGENT_STOPPING, EXIT_LOST, EXIT_NOPERM, EXIT_OSERR, EXIT_TIMEOUT, EXIT_UNAVAILABLE, duration,
};
use crate::agent::{CLIENT_TOKEN_ENV, DEFAULT_CLIENT};
use crate::client::{ClientError, Connection, LockGuard, Lost, LostCause};

/// Longest wait when no --timeout is given (the agent caps waits too).
const FOREVER: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a stopping group is checked (and SIGKILL repeated, once due).
const GROUP_POLL: Duration = Duration::from_millis(20);

/// Options of `swimlock lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    /// Name of the lock (1 to 255 bytes).
    pub name: String,
    /// How long to wait for the lock, e.g. 500ms, 10s, 2m [default: wait indefinitely].
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Client endpoint of the local agent: HOST:PORT or unix:PATH. The
    /// endpoint's password, if it needs one, is read from SWIMLOCK_CLIENT_TOKEN.
    #[arg(long, default_value = DEFAULT_CLIENT, value_name = "ADDR")]
    pub client: String,
    /// When the lock is lost or the agent stops, how long the command's
    /// process group has between SIGTERM and SIGKILL (shortened to fit in
    /// the agent's stop grace).
    #[arg(long, value_parser = duration, default_value = "5s", value_name = "DURATION")]
    pub kill_grace: Duration,
    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Acquires, runs, releases; returns the exit code.
pub async fn run(args: LockArgs) -> ExitCode {
    let connection = match Connection::open(&args.client).await {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!("swimlock lock: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    // The guardian's copy of the connection, taken before the client owns it.
    let socket = match connection.try_clone_fd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("swimlock lock: cannot duplicate the agent connection: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    };
    let token = std::env::var(CLIENT_TOKEN_ENV).ok();
    let client = match connection.into_client(token.as_deref()).await {
        Ok(client) => client,
        Err(e @ ClientError::Unauthorized(_)) => {
            eprintln!("swimlock lock: {e} (set {CLIENT_TOKEN_ENV})");
            return ExitCode::from(EXIT_NOPERM);
        }
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
    let guardian = match Guardian::spawn(socket) {
        Ok(guardian) => guardian,
        Err(e) => {
            eprintln!("swimlock lock: cannot start the guardian process: {e}; the command was not run");
            release(guard).await;
            return ExitCode::from(EXIT_OSERR);
        }
    };
    let child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("SWIMLOCK_LOCK", &args.name)
        .env("SWIMLOCK_TOKEN", guard.token().to_string())
        // The guardian's group: a lost lock, or the guardian, stops
        // grandchildren too.
        .process_group(guardian.group().as_raw())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("swimlock lock: cannot run {}: {e}", args.command[0]);
            release(guard).await;
            guardian.dismiss();
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            return ExitCode::from(code);
        }
    };
    let code = supervise(child, guard, guardian.group(), args.kill_grace).await;
    guardian.dismiss();
    code
}

/// Why the command is being stopped.
#[derive(Debug)]
enum Stop {
    /// The lock is lost: it may be granted elsewhere already.
    Lost,
    /// The agent is stopping and waits for the lock back.
    AgentStopping,
}

/// When the command's group gets SIGTERM and SIGKILL. Only ever moved
/// earlier; every reason to stop the command goes through
/// [`StopPlan::stop_by`]. A lease would add its deadline here too:
/// `stop_by(safe_until - kill_grace, safe_until)`, replaced on each renewal.
#[derive(Debug, Default)]
struct StopPlan {
    term_at: Option<Instant>,
    kill_at: Option<Instant>,
    term_sent: bool,
}

impl StopPlan {
    fn stop_by(&mut self, term_at: Instant, kill_at: Instant) {
        self.term_at = Some(self.term_at.map_or(term_at, |t| t.min(term_at)));
        self.kill_at = Some(self.kill_at.map_or(kill_at, |t| t.min(kill_at)));
    }

    /// The next moment something is due, if any.
    fn next(&self) -> Option<Instant> {
        if self.term_sent { self.kill_at } else { self.term_at }
    }

    /// Sends what is due at `now` to `group` (whose leader, the guardian,
    /// ignores SIGTERM and is spared SIGKILL).
    fn act(&mut self, now: Instant, group: Pid) {
        if !self.term_sent && self.term_at.is_some_and(|t| t <= now) {
            let _ = killpg(group, Signal::SIGTERM);
            self.term_sent = true;
        }
        if self.kill_at.is_some_and(|t| t <= now) {
            // Repeated on every round: a process forked since is caught too.
            let _ = signal_members(group, group, Signal::SIGKILL);
        }
    }
}

/// Whether a process of `group` other than the guardian still runs. Without
/// `/proc` nothing can be known beyond the command's own exit.
fn group_alive(group: Pid) -> bool {
    live_members(group, group).is_some_and(|live| !live.is_empty())
}

/// Waits for the command, the loss of the lock, the agent's stop, or a stop
/// signal, and stops the command's group when needed.
async fn supervise(mut child: Child, mut guard: LockGuard, group: Pid, grace: Duration) -> ExitCode {
    let mut stop_signal = std::pin::pin!(super::wait_for_stop_signal());
    let mut plan = StopPlan::default();
    let mut stop: Option<Stop> = None;
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut killed_logged = false;
    loop {
        if status.is_some() && (stop.is_none() || !group_alive(group)) {
            break;
        }
        let now = Instant::now();
        if !killed_logged && plan.kill_at.is_some_and(|t| t <= now) && group_alive(group) {
            eprintln!("swimlock lock: process group {group} still running after {grace:?}; sending SIGKILL");
            killed_logged = true;
        }
        plan.act(now, group);
        let wake = plan.next().or_else(|| stop.as_ref().map(|_| now + GROUP_POLL));
        let wake = wake.map(|w| w.min(now + GROUP_POLL));
        tokio::select! {
            exited = child.wait(), if status.is_none() => status = Some(exited),
            lost = guard.lost() => on_notice(&lost, &mut stop, &mut plan, grace, group),
            () = &mut stop_signal => {
                // Asked to stop: pass it on and keep the lock until the command is gone.
                let _ = killpg(group, Signal::SIGTERM);
                stop_signal.set(super::wait_for_stop_signal());
            }
            () = sleep_until(wake) => {}
        }
    }
    match stop {
        Some(Stop::Lost) => ExitCode::from(EXIT_LOST),
        Some(Stop::AgentStopping) => {
            release(guard).await;
            eprintln!(
                "swimlock lock: the agent is stopping; the command's group is gone and the lock released"
            );
            ExitCode::from(EXIT_AGENT_STOPPING)
        }
        None => {
            release(guard).await;
            match status {
                Some(Ok(status)) => exit_code(status),
                Some(Err(e)) => {
                    eprintln!("swimlock lock: waiting for the command failed: {e}");
                    ExitCode::FAILURE
                }
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// A notice about the lock: plan the command's stop.
fn on_notice(lost: &Lost, stop: &mut Option<Stop>, plan: &mut StopPlan, grace: Duration, group: Pid) {
    let now = Instant::now();
    match lost.cause {
        LostCause::AgentStopping { grace: agent_grace } => {
            if stop.is_some() {
                return;
            }
            // Gone before the agent gives up waiting, with time left for the
            // unlock to reach it.
            let kill_after = grace.min(agent_grace - agent_grace / 5);
            eprintln!(
                "swimlock lock: the agent is stopping and wants lock {} (token {}) back within {}; \
                 stopping the command (process group {group})",
                lost.name,
                lost.token,
                humantime::format_duration(Duration::from_millis(agent_grace.as_millis() as u64)),
            );
            *stop = Some(Stop::AgentStopping);
            plan.stop_by(now, now + kill_after);
        }
        _ => {
            eprintln!("swimlock lock: {lost}; stopping the command (process group {group})");
            if stop.is_none() {
                *stop = Some(Stop::Lost);
            }
            plan.stop_by(now, now + grace);
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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
