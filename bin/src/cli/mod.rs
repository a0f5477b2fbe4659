//! The `swimlock` command line.

mod demo;
mod guardian;
mod keyring;
mod lock;
mod members;
mod notify;
mod status;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::agent::AgentArgs;

/// Exit code: bad arguments (an unknown flag, a bad value, an invalid lock
/// name), as sysexits' EX_USAGE.
pub const EXIT_USAGE: u8 = 64;
/// Exit code: the lock was not acquired within --timeout.
pub const EXIT_TIMEOUT: u8 = 75;
/// Exit code: the lock was lost while the command ran, or its lease ran
/// out without a renewal from the agent.
pub const EXIT_LOST: u8 = 76;
/// Exit code: the agent could not be reached or refused.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code: the configuration was refused.
pub const EXIT_CONFIG: u8 = 78;
/// Exit code: the agent refused the client token (`SWIMLOCK_CLIENT_TOKEN`).
pub const EXIT_NOPERM: u8 = 77;
/// Exit code: `swimlock lock` could not start its guardian process (the
/// command was not run) or duplicate its agent connection.
pub const EXIT_OSERR: u8 = 71;
/// Exit code: the agent was stopping; the command's process group was
/// stopped and the lock released.
pub const EXIT_AGENT_STOPPING: u8 = 79;

/// swimlock: a distributed lock node (SWIM membership, CENTRAL_LOCK2 locks
/// with fencing tokens).
#[derive(Parser, Debug)]
#[command(name = "swimlock", version = crate::metrics::VERSION)]
pub struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run a lock node on this host (stops gracefully on SIGTERM/Ctrl-C:
    /// asks the clients holding locks to let go within --stop-grace,
    /// releases what they let go and leaves the cluster; a second signal
    /// ends the grace).
    Agent(Box<AgentArgs>),
    /// Hold a lock while a command runs: `swimlock lock NAME -- CMD [ARGS...]`.
    ///
    /// The command runs in its own process group with SWIMLOCK_LOCK and
    /// SWIMLOCK_TOKEN (the fencing token) set; the lock is released when it
    /// exits, and swimlock exits with its code. Exit 75: not acquired within
    /// --timeout. Exit 76: the lock was lost, and the command's whole process
    /// group was stopped (SIGTERM, then SIGKILL after --kill-grace). Exit 76
    /// too when the agent does not renew the lease in time (it may be paused
    /// or cut off): swimlock counts the lease down itself and stops the
    /// group by the time it runs out (SIGTERM up to a quarter of the lease
    /// before, SIGKILL at its end); any stop ends with SIGKILL by then at
    /// the latest. Exit 79:
    /// the agent is stopping; the group was stopped the same way, then the
    /// lock released. Exit 69: the agent could not be reached; 77: it refused
    /// the client token; 71: no guardian process could be started. If
    /// swimlock itself is killed, a guardian process kills the command's
    /// group before the agent can release the lock.
    Lock(lock::LockArgs),
    /// Show the local node's view, coordinator and locks.
    Status(status::StatusArgs),
    /// List the members as the local node's gossip sees them: the view
    /// (oldest first, state alive or suspect) and the members that left it
    /// since the agent started (state down).
    Members(members::MembersArgs),
    /// Print the local node's view, then one line per view it installs
    /// (joins, departures, merges marked), for scripts: `--json` gives one
    /// object per line.
    Watch(watch::WatchArgs),
    /// After a "term jump" alert (metric swimlock_granting_halted = 1): let
    /// the coordinator grant under terms up to TERM again. Check first that
    /// the member reporting it was not started on a copied or stale state
    /// directory; tokens above TERM can then never be issued again.
    AcceptTerm(status::AcceptTermArgs),
    /// Print a new cluster key (32 random bytes, base64).
    Keygen,
    /// Change the cluster's keys through the local agent, on every member:
    /// `list`, `install KEY`, `use KEY`, `remove KEY`.
    Keyring(keyring::KeyringArgs),
    /// Run a 3-node cluster on loopback until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Run the deterministic simulator over many seeds (or replay one).
    Sim(crate::sim::SimArgs),
    /// Measure a 3-node loopback cluster (latency, throughput, contention,
    /// failover) against the raw UDP round trip; table, JSON, SVG plot.
    /// With --processes: real `swimlock agent` processes through their
    /// client endpoints, beside in-process agents in the same run, and
    /// `swimlock lock NAME -- true` end to end.
    Bench(crate::bench::BenchArgs),
    /// Internal: the guardian process of `swimlock lock`.
    #[command(name = guardian::GUARDIAN_ARG, hide = true)]
    Guardian,
}

/// Runs the command line; the process exits with the returned code.
pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    match cli.command {
        Commands::Agent(args) => agent(*args),
        Commands::Lock(args) => match swimlock_wire::LockName::new(args.name.clone()) {
            Ok(_) => runtime().block_on(lock::run(args)),
            Err(e) => {
                eprintln!("swimlock lock: invalid lock name: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Commands::Status(args) => runtime().block_on(status::run(args)),
        Commands::Members(args) => runtime().block_on(members::run(args)),
        Commands::Watch(args) => runtime().block_on(watch::run(args)),
        Commands::AcceptTerm(args) => runtime().block_on(status::accept_term(args)),
        Commands::Keygen => keyring::keygen(),
        Commands::Keyring(args) => runtime().block_on(keyring::run(args)),
        Commands::Demo(args) => runtime().block_on(demo::run(args)),
        Commands::Sim(args) => crate::sim::main(args),
        Commands::Bench(args) => crate::bench::main(args),
        Commands::Guardian => guardian::main(),
    }
}

/// `swimlock status | head`: once the reader is gone, printing fails with
/// EPIPE and `println!` panics. A command whose output nobody reads exits
/// quietly with 141 (128 + SIGPIPE, as a shell reports a command killed by
/// it) instead of printing a panic. (The demo's own printing ignores the
/// error and keeps running.)
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swimlock: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// The agent's runtime: one thread for the node task and the client
/// endpoint, the layout of the in-process agents and, by a small margin,
/// the fastest measured (docs/BENCHMARKS.md, *Agent processes*).
/// `SWIMLOCK_AGENT_RUNTIME` picks another, for `swimlock bench
/// --processes` to compare: `multi` (a worker per CPU) or `split` (the
/// client endpoint on one thread, the node task on [`node_thread`]).
fn agent_runtime() -> tokio::runtime::Runtime {
    match std::env::var(crate::bench::AGENT_RUNTIME_ENV).as_deref() {
        Ok("multi") => runtime(),
        Ok("current" | "split") | Err(_) => current_thread(),
        Ok(other) => {
            eprintln!(
                "swimlock: {}={other:?} is not a runtime (current, multi, split); using current",
                crate::bench::AGENT_RUNTIME_ENV
            );
            current_thread()
        }
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swimlock: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// A thread running a single-threaded runtime for as long as the process
/// lives; its handle.
fn node_thread() -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("swimlock-node".into()).spawn(move || {
        let rt = current_thread();
        let _ = tx.send(rt.handle().clone());
        rt.block_on(std::future::pending::<()>());
    });
    match spawned.ok().and_then(|_| rx.recv().ok()) {
        Some(handle) => handle,
        None => {
            eprintln!("swimlock: cannot start the node thread");
            std::process::exit(1);
        }
    }
}

/// Logs to stderr as text, filtered by RUST_LOG (default `info`).
pub fn init_tracing() {
    let _ = crate::logging::init(crate::logging::LogFormat::Text, None);
}

fn agent(args: AgentArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(config) => config,
        // A file that does not parse: FILE:LINE:COLUMN: what is wrong.
        Err(e) if e.field == "config" => {
            eprintln!("swimlock agent: {}", e.reason);
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("swimlock agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let logging = crate::logging::init(config.log_format, config.log_level.as_deref());
    for (field, given, resolved) in
        [("bind", &args.bind, config.bind), ("advertise", &args.advertise, config.advertise)]
    {
        if let Some(name) = given.as_deref().filter(|t| t.parse::<std::net::SocketAddr>().is_err()) {
            tracing::info!(field, name, address = %resolved, "host name resolved once, at start");
        }
    }
    let split = std::env::var(crate::bench::AGENT_RUNTIME_ENV).is_ok_and(|v| v == "split");
    agent_runtime().block_on(async move {
        let spawned = if split {
            crate::agent::spawn_split(config.clone(), &node_thread())
        } else {
            crate::agent::spawn(config.clone())
        };
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                eprintln!("swimlock agent: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        // systemd (Type=notify): ready once the first view is installed.
        let mut ready = handle.readiness();
        tokio::spawn(async move {
            if let Ok(r) = ready.wait_for(|r| r.view_id.is_some()).await {
                let status = format!("STATUS=view {} with {} members", r.view_id.unwrap_or(0), r.members);
                drop(r);
                notify::notify(&format!("READY=1\n{status}"));
            }
        });
        // Listeners made once, so that a signal that arrives while a reload
        // runs is still seen when it is done.
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup()).ok();
        let mut terms = signal(SignalKind::terminate()).ok();
        let mut interrupts = signal(SignalKind::interrupt()).ok();
        let mut config = config;
        loop {
            tokio::select! {
                () = next_signal(&mut terms) => break,
                () = next_signal(&mut interrupts) => break,
                () = next_signal(&mut hangups) => {
                    config = reload(&args, config, &handle, logging.as_ref()).await;
                }
            }
        }
        notify::notify("STOPPING=1");
        tracing::info!("stopping: asking clients to let go of their locks, then leaving the cluster");
        let stopper = handle.stopper();
        let shutdown = handle.shutdown();
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {}
            () = wait_for_stop_signal() => {
                tracing::warn!("asked again: ending the stop grace now");
                stopper.stop_now();
                shutdown.await;
            }
        }
        ExitCode::SUCCESS
    })
}

/// The next delivery of a signal; never, if it could not be listened to.
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(s) = signal
        && s.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// SIGHUP: reads the configuration again (the `--config` file under the
/// same flags) and applies what can change at run time: the log level, the
/// lock-delay (if the lease inequality still holds), a new key in the key
/// file; names what only a restart changes. A configuration that does not
/// resolve changes nothing. Returns the configuration now in force.
async fn reload(
    args: &AgentArgs,
    current: crate::agent::AgentConfig,
    handle: &crate::agent::Handle,
    logging: Option<&crate::logging::Logging>,
) -> crate::agent::AgentConfig {
    tracing::info!(config = ?args.config, "SIGHUP: reloading the configuration");
    let new = match args.resolve() {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e, "reload refused, nothing changed");
            return current;
        }
    };
    let mut applied = current.clone();
    if new.log_level != current.log_level {
        let level = new.log_level.clone().unwrap_or_else(|| "info".into());
        match logging.map(|l| l.set_level(&level)) {
            Some(Ok(())) => {
                applied.log_level = new.log_level.clone();
                tracing::info!(from = ?current.log_level, to = %level, "reload: log level changed");
            }
            Some(Err(e)) => tracing::error!(level, error = %e, "reload: log level refused"),
            None => tracing::warn!("reload: the log level cannot change (logger installed elsewhere)"),
        }
    }
    let lines = handle.reload(&current, &new).await;
    for line in &lines {
        if line.contains("refused") {
            tracing::error!("reload: {line}");
        } else if line.contains("restart") {
            tracing::warn!("reload: {line}");
        } else {
            tracing::info!("reload: {line}");
        }
    }
    if lines.iter().any(|l| l.starts_with("lock_delay changed")) {
        applied.lock.lock_delay = new.lock.lock_delay;
    }
    if lines.iter().any(|l| l.starts_with("key ") && !l.contains("refused")) {
        applied.key = new.key.clone();
    }
    if lines.is_empty() && new.log_level == current.log_level {
        tracing::info!("reload: nothing changed");
    }
    applied
}

/// How long `swimlock lock` without `--timeout` waits before it says what
/// it waits for.
const WAIT_HINT_AFTER: Duration = Duration::from_secs(10);

/// Awaits `acquire`; without a timeout, once it has waited
/// [`WAIT_HINT_AFTER`], prints one line saying what it waits for.
pub(crate) async fn with_wait_hint<T>(
    acquire: impl std::future::Future<Output = T>,
    timeout: Option<Duration>,
    client: &str,
    name: &str,
) -> T {
    if timeout.is_some() {
        return acquire.await;
    }
    tokio::pin!(acquire);
    tokio::select! {
        done = &mut acquire => return done,
        () = tokio::time::sleep(WAIT_HINT_AFTER) => {}
    }
    let why = waiting_for(client, name).await;
    eprintln!("swimlock lock: still waiting for lock {name} after {WAIT_HINT_AFTER:?}: {why}");
    acquire.await
}

/// What a lock request on `name` waits for, as the agent at `client` sees
/// it: no quorum, or the holder and the queue.
async fn waiting_for(client: &str, name: &str) -> String {
    let token = std::env::var(crate::agent::CLIENT_TOKEN_ENV).ok();
    let status = match crate::client::Client::connect_with_token(client, token.as_deref()).await {
        Ok(c) => c.status().await,
        Err(e) => Err(e),
    };
    let Ok(s) = status else {
        return "the agent does not answer a status request".into();
    };
    if let Some(n) = s.mode.strip_prefix("majority/").and_then(|n| n.parse::<usize>().ok())
        && s.members.len() <= n / 2
    {
        return format!(
            "no quorum: this agent's view has {} of the {n} configured members, {} needed",
            s.members.len(),
            n / 2 + 1
        );
    }
    let coordinator = s.coordinator.as_ref().map_or("none yet", |c| c.name.as_str());
    match &s.table {
        Some(table) => match table.entries.iter().find(|e| e.name.as_str() == name) {
            Some(e) => format!(
                "held by client {} of {} (token {}); {} requests wait in the coordinator's queues",
                e.client.0, e.node, e.token, table.waiters
            ),
            None => "the coordinator has not granted it yet (a lock-delay, or a round in progress)".into(),
        },
        None => format!("another client holds it, or holds it back (coordinator: {coordinator})"),
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Parses "500ms", "2s", "1m".
fn duration(text: &str) -> Result<Duration, String> {
    crate::agent::parse_duration(text)
}
