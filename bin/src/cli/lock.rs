//! `swimlock lock NAME -- CMD [ARGS...]`.
//!
//! Once the lock is granted, the wrapper starts a [`Guardian`] and runs the
//! command in the guardian's process group, so that even a SIGKILL of the
//! wrapper cannot leave the command running once the lock is released (see
//! [`super::guardian`]). Then it waits for the first of: the command exits
//! (release, exit with its code), the lock is lost (stop the group, exit
//! 76), the lease runs out (the same), the agent is stopping (stop the
//! group, release, exit 79), or a stop signal (pass SIGTERM on to the group,
//! keep the lock until it exits).
//!
//! The lease: a paused or cut-off agent can tell the wrapper nothing, so the
//! wrapper counts down itself. The grant carries the lease left, and the
//! client asks the agent again every quarter of what is left; each answer
//! moves the deadline `safe_until` (never later than the agent's own). If
//! none moves it in time, the command's group gets SIGTERM at
//! `safe_until - g` and SIGKILL at `safe_until`, with `g` the smaller of
//! `--kill-grace` and a quarter of the lease left at the latest answer; the
//! wrapper exits 76. Whatever else stops the command, SIGKILL comes by
//! `safe_until` at the latest.

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
/// `--kill-grace` when none is given.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
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
    /// the agent's stop grace, and in the lease: SIGKILL comes when the
    /// lease runs out at the latest, SIGTERM at most a quarter of the lease
    /// before) [default: 5s].
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub kill_grace: Option<Duration>,
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
    let acquire = client.lock(&args.name, args.timeout.unwrap_or(FOREVER));
    let guard = match super::with_wait_hint(acquire, args.timeout, &args.client, &args.name).await {
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
    let grace = KillGrace {
        grace: args.kill_grace.unwrap_or(DEFAULT_KILL_GRACE),
        explicit: args.kill_grace.is_some(),
    };
    let code = supervise(child, guard, guardian.group(), grace).await;
    guardian.dismiss();
    code
}

/// Why the command is being stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The lock is lost: it may be granted elsewhere already.
    Lost,
    /// No answer from the agent renewed the lease in time.
    LeaseRanOut,
    /// The agent is stopping and waits for the lock back.
    AgentStopping,
}

/// `--kill-grace`, and whether it was given (only then is its shortening
/// worth a warning).
#[derive(Clone, Copy, Debug)]
struct KillGrace {
    grace: Duration,
    explicit: bool,
}

impl KillGrace {
    /// The time between SIGTERM and SIGKILL when the lease runs out, with
    /// `left` of it left at the latest answer: a quarter of that at most.
    fn for_lease(self, left: Duration) -> Duration {
        self.grace.min(left / 4)
    }
}

/// A SIGTERM time and a SIGKILL time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deadlines {
    term_at: Instant,
    kill_at: Instant,
}

/// When the command's group gets SIGTERM and SIGKILL. The lease's
/// deadlines are replaced by each renewal until the lease's SIGTERM time
/// has come; the stops asked for other reasons only ever move earlier.
/// SIGKILL is due at the earlier of the two, so never after the lease.
#[derive(Debug, Default)]
struct StopPlan {
    /// SIGTERM at `safe_until - g`, SIGKILL at `safe_until`.
    lease: Option<Deadlines>,
    /// Every other reason to stop the command.
    asked: Option<Deadlines>,
    term_sent: bool,
    /// The lease's SIGTERM time came: renewals no longer count.
    lease_ran_out: bool,
}

/// What a [`StopPlan`] says is due.
#[derive(Debug, Default, PartialEq, Eq)]
struct Due {
    term: bool,
    kill: bool,
    /// The lease's SIGTERM time came (reported once).
    lease_ran_out: bool,
}

impl StopPlan {
    /// The lease ends at `safe_until`; SIGTERM `grace` before. Ignored once
    /// the lease's SIGTERM time has come.
    fn lease(&mut self, safe_until: Instant, grace: Duration) {
        if !self.lease_ran_out {
            let term_at = safe_until.checked_sub(grace).unwrap_or(safe_until);
            self.lease = Some(Deadlines { term_at, kill_at: safe_until });
        }
    }

    /// Stop the command for another reason, by these deadlines or earlier.
    fn stop_by(&mut self, term_at: Instant, kill_at: Instant) {
        let (term_at, kill_at) = match self.asked {
            Some(d) => (d.term_at.min(term_at), d.kill_at.min(kill_at)),
            None => (term_at, kill_at),
        };
        self.asked = Some(Deadlines { term_at, kill_at });
    }

    fn term_at(&self) -> Option<Instant> {
        [self.lease, self.asked].into_iter().flatten().map(|d| d.term_at).min()
    }

    fn kill_at(&self) -> Option<Instant> {
        [self.lease, self.asked].into_iter().flatten().map(|d| d.kill_at).min()
    }

    /// The next moment something is due, if any.
    fn next(&self) -> Option<Instant> {
        if self.term_sent { self.kill_at() } else { self.term_at() }
    }

    /// What is due at `now`. SIGTERM is reported once; SIGKILL on every
    /// call from its time on (a process forked since is caught too).
    fn due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if !self.lease_ran_out && self.lease.is_some_and(|d| d.term_at <= now) {
            self.lease_ran_out = true;
            due.lease_ran_out = true;
        }
        if !self.term_sent && self.term_at().is_some_and(|t| t <= now) {
            self.term_sent = true;
            due.term = true;
        }
        due.kill = self.kill_at().is_some_and(|t| t <= now);
        due
    }
}

/// Whether a process of `group` other than the guardian still runs. Without
/// `/proc` nothing can be known beyond the command's own exit.
fn group_alive(group: Pid) -> bool {
    live_members(group, group).is_some_and(|live| !live.is_empty())
}

/// Waits for the command, the loss of the lock, the end of its lease, the
/// agent's stop, or a stop signal, and stops the command's group when
/// needed.
async fn supervise(mut child: Child, mut guard: LockGuard, group: Pid, grace: KillGrace) -> ExitCode {
    let mut stop_signal = std::pin::pin!(super::wait_for_stop_signal());
    let mut plan = StopPlan::default();
    let mut stop: Option<Stop> = None;
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut killed_logged = false;
    if let Some((_, left)) = guard.lease() {
        warn_if_shortened(grace, left);
    }
    loop {
        if status.is_some() && (stop.is_none() || !group_alive(group)) {
            break;
        }
        let now = Instant::now();
        // Read at every wake-up: the client moves it without telling anyone.
        if let Some((safe_until, left)) = guard.lease() {
            plan.lease(safe_until, grace.for_lease(left));
        }
        let due = plan.due(now);
        if due.lease_ran_out && stop != Some(Stop::Lost) {
            let left = plan.kill_at().map_or(Duration::ZERO, |k| k.saturating_duration_since(now));
            eprintln!(
                "swimlock lock: no lease renewal from the agent for {} (token {}); its lease runs out in {}; \
                 stopping the command (process group {group})",
                guard.name(),
                guard.token(),
                humantime::format_duration(Duration::from_millis(left.as_millis() as u64)),
            );
            stop = Some(Stop::LeaseRanOut);
        }
        if due.term {
            let _ = killpg(group, Signal::SIGTERM);
        }
        if due.kill {
            if !killed_logged && group_alive(group) {
                eprintln!("swimlock lock: process group {group} still running; sending SIGKILL");
                killed_logged = true;
            }
            // Repeated on every round: a process forked since is caught too.
            let _ = signal_members(group, group, Signal::SIGKILL);
        }
        // While a stop is under way, look at the group often; otherwise
        // sleep until the plan's next deadline (the lease's SIGTERM time).
        let wake = match (plan.next(), stop.is_some() || plan.term_sent) {
            (next, true) => Some(next.map_or(now + GROUP_POLL, |n| n.min(now + GROUP_POLL))),
            (next, false) => next,
        };
        tokio::select! {
            exited = child.wait(), if status.is_none() => status = Some(exited),
            lost = guard.lost() => on_notice(&lost, &mut stop, &mut plan, grace.grace, group),
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
        Some(Stop::LeaseRanOut) => {
            eprintln!(
                "swimlock lock: no lease renewal from the agent for {} (token {}) before its lease ran out \
                 (the agent may be paused or cut off); the command's group was stopped",
                guard.name(),
                guard.token()
            );
            ExitCode::from(EXIT_LOST)
        }
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

/// Says so when a `--kill-grace` given explicitly does not fit in the lease
/// (known only once granted) and is shortened.
fn warn_if_shortened(grace: KillGrace, left: Duration) {
    let fitted = grace.for_lease(left);
    if grace.explicit && fitted < grace.grace {
        let ms = |d: Duration| humantime::format_duration(Duration::from_millis(d.as_millis() as u64));
        eprintln!(
            "swimlock lock: --kill-grace {} does not fit in the lease ({} left at the grant); \
             if the lease runs out unrenewed, SIGTERM comes {} before SIGKILL",
            ms(grace.grace),
            ms(left),
            ms(fitted)
        );
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
        // The client's own count: the lease's SIGTERM went out before it.
        LostCause::LeaseExpired if *stop == Some(Stop::LeaseRanOut) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn renewals_replace_the_lease_deadlines_until_its_sigterm_time() {
        let t0 = Instant::now();
        let mut plan = StopPlan::default();
        plan.lease(t0 + MS(2_000), MS(500));
        assert_eq!((plan.next(), plan.kill_at()), (Some(t0 + MS(1_500)), Some(t0 + MS(2_000))));
        assert_eq!(plan.due(t0 + MS(1_000)), Due::default());
        // A renewal moves both later.
        plan.lease(t0 + MS(3_000), MS(400));
        assert_eq!((plan.next(), plan.kill_at()), (Some(t0 + MS(2_600)), Some(t0 + MS(3_000))));
        assert_eq!(plan.due(t0 + MS(2_000)), Due::default(), "the earlier deadline no longer counts");
        // No renewal by the SIGTERM time: SIGTERM, then SIGKILL at the deadline.
        assert_eq!(plan.due(t0 + MS(2_600)), Due { term: true, kill: false, lease_ran_out: true });
        assert_eq!(plan.next(), Some(t0 + MS(3_000)));
        // Too late: a renewal now changes nothing.
        plan.lease(t0 + MS(5_000), MS(500));
        assert_eq!(plan.kill_at(), Some(t0 + MS(3_000)));
        assert_eq!(plan.due(t0 + MS(2_900)), Due::default(), "SIGTERM and the report only once");
        let kill = Due { term: false, kill: true, lease_ran_out: false };
        assert_eq!(plan.due(t0 + MS(3_000)), kill);
        assert_eq!(plan.due(t0 + MS(3_020)), kill, "SIGKILL again on every round");
    }

    #[test]
    fn other_stops_only_move_earlier_and_are_killed_by_the_end_of_the_lease() {
        let t0 = Instant::now();
        let mut plan = StopPlan::default();
        plan.lease(t0 + MS(2_000), MS(500));
        // The lock is lost with a 5 s kill grace: SIGTERM now, SIGKILL at
        // the end of the lease rather than 5 s later.
        plan.stop_by(t0 + MS(100), t0 + MS(5_100));
        assert_eq!((plan.next(), plan.kill_at()), (Some(t0 + MS(100)), Some(t0 + MS(2_000))));
        plan.stop_by(t0 + MS(900), t0 + MS(1_900));
        assert_eq!(plan.asked, Some(Deadlines { term_at: t0 + MS(100), kill_at: t0 + MS(1_900) }));
        plan.stop_by(t0 + MS(900), t0 + MS(9_000));
        assert_eq!(plan.kill_at(), Some(t0 + MS(1_900)), "never later");
        assert_eq!(plan.due(t0 + MS(100)), Due { term: true, kill: false, lease_ran_out: false });
        // A renewal still moves the lease (its SIGTERM time has not come),
        // but not the stop already asked for.
        plan.lease(t0 + MS(4_000), MS(500));
        assert_eq!(plan.kill_at(), Some(t0 + MS(1_900)));
        assert!(plan.due(t0 + MS(1_900)).kill);
    }

    #[test]
    fn a_stop_asked_before_the_lease_is_known_keeps_its_deadlines() {
        let t0 = Instant::now();
        let mut plan = StopPlan::default();
        plan.stop_by(t0, t0 + MS(5_000));
        assert_eq!(plan.due(t0), Due { term: true, kill: false, lease_ran_out: false });
        plan.lease(t0 + MS(400), MS(100));
        // Its SIGTERM time is past: reported, but SIGTERM is not sent twice.
        assert_eq!(plan.due(t0 + MS(300)), Due { term: false, kill: false, lease_ran_out: true });
        assert_eq!(plan.next(), Some(t0 + MS(400)));
    }

    #[test]
    fn the_kill_grace_of_a_lease_is_at_most_a_quarter_of_what_was_left() {
        let grace = KillGrace { grace: MS(5_000), explicit: false };
        assert_eq!(grace.for_lease(MS(2_000)), MS(500));
        assert_eq!(grace.for_lease(MS(400)), MS(100));
        assert_eq!(KillGrace { grace: MS(200), explicit: true }.for_lease(MS(2_000)), MS(200));
        assert_eq!(grace.for_lease(Duration::ZERO), Duration::ZERO);
    }
}
