//! The `swimlock` command line.

mod demo;
mod guardian;
mod keyring;
mod lock;
mod status;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::agent::AgentArgs;

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
    Bench(crate::bench::BenchArgs),
    /// Internal: the guardian process of `swimlock lock`.
    #[command(name = guardian::GUARDIAN_ARG, hide = true)]
    Guardian,
}

/// Runs the command line; the process exits with the returned code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Agent(args) => agent(*args),
        Commands::Lock(args) => runtime().block_on(lock::run(args)),
        Commands::Status(args) => runtime().block_on(status::run(args)),
        Commands::AcceptTerm(args) => runtime().block_on(status::accept_term(args)),
        Commands::Keygen => keyring::keygen(),
        Commands::Keyring(args) => runtime().block_on(keyring::run(args)),
        Commands::Demo(args) => runtime().block_on(demo::run(args)),
        Commands::Sim(args) => crate::sim::main(args),
        Commands::Bench(args) => crate::bench::main(args),
        Commands::Guardian => guardian::main(),
    }
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

/// Logs to stderr, filtered by RUST_LOG (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

fn agent(args: AgentArgs) -> ExitCode {
    init_tracing();
    let config = match args.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("swimlock agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    runtime().block_on(async move {
        let handle = match crate::agent::spawn(config) {
            Ok(handle) => handle,
            Err(e) => {
                eprintln!("swimlock agent: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        wait_for_stop_signal().await;
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
