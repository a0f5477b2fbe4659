//! The tokio driver of one node.
//!
//! One UDP socket carries gossip and lock traffic. One task owns the
//! [`Node`](crate::node::Node) core and is its only user: it is fed
//! datagrams, timer expiries (`sleep_until` the core's `poll_timeout`) and
//! client commands over a channel, so no lock guards protocol state. The
//! client endpoint (TCP, and a Unix socket if configured) runs one task per
//! connection; a connection is one [`ClientId`](swimlock_wire::ClientId), and
//! when it closes the node releases its locks.
//!
//! [`spawn`] starts all of it inside the current tokio runtime and returns a
//! [`Handle`] that gives in-process [`Client`]s and shuts the node down.

#[cfg(feature = "cli")]
mod args;
mod awake;
mod config;
mod endpoint;
mod keyring;
mod socket;
mod state;
mod task;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

#[cfg(feature = "cli")]
pub use args::AgentArgs;
pub use config::{
    AgentConfig, CLIENT_TOKEN_ENV, ConfigError, DEFAULT_BIND, DEFAULT_CLIENT, DEFAULT_CLIENT_FRAME_TIMEOUT,
    DEFAULT_CLUSTER, DEFAULT_MAX_CLIENT_CONNECTIONS, DEFAULT_METRICS, DEFAULT_STOP_GRACE,
    MAJORITY_LOCK_DELAY, MAX_STOP_GRACE, mode_name, node_tag, parse_duration,
};
pub use endpoint::{MAX_LOCK_WAITERS, MAX_OUTSTANDING, MAX_UNREAD_OUTPUT};
pub use keyring::{generate_key, read_key_file};
pub(crate) use task::{Command, Reload};

use crate::client::{Client, ClientError};

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be opened.
    #[error("cannot open {what} on {addr}: {source}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// Its address or path.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state directory could not be used.
    #[error("cannot use the state directory {path}: {source}")]
    State {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// No cluster key, and insecure mode not asked for.
    #[error(
        "no cluster key: run `swimlock keygen` and set `key` in the config file or pass \
         `--key-file PATH` (a file of mode 0600 holding the key); or pass `--insecure` to run \
         without one (then anyone who can reach the UDP port is a member)"
    )]
    NoKey,
    /// The keyring file (or the random source for the nonce salt) could not
    /// be used.
    #[error("cannot use the keyring {path}: {source}")]
    Keyring {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A running agent. Dropping it does not stop the node; call
/// [`Handle::shutdown`].
#[derive(Debug)]
pub struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    /// Stops the listeners once the node task has ended.
    cleanup: JoinHandle<()>,
    udp: SocketAddr,
    client: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    ready: tokio::sync::watch::Receiver<crate::http::Readiness>,
    client_token: endpoint::ClientToken,
}

impl Handle {
    /// The node's readiness (what `/ready` answers), kept current.
    pub fn readiness(&self) -> tokio::sync::watch::Receiver<crate::http::Readiness> {
        self.ready.clone()
    }

    /// A new client of this node, in-process (no socket): the same API as
    /// [`Client::connect`].
    pub async fn client(&self) -> Result<Client, ClientError> {
        Client::local(self.commands.clone()).await
    }

    /// The UDP address the node is bound to.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The TCP address of the client endpoint, if it has one.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client
    }

    /// The address of the metrics endpoint, if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Graceful stop. Clients without locks are closed; every client
    /// holding a lock is told the node is stopping
    /// ([`LostCause::AgentStopping`](crate::client::LostCause::AgentStopping))
    /// and has [`AgentConfig::stop_grace`] to unlock or disconnect. Locks let
    /// go in time are released (waiting briefly for the coordinator to
    /// confirm); then the node leaves the cluster without releasing the
    /// others, which the cluster treats as held by a departed member, and
    /// the node task ends.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.task.await;
        let _ = self.cleanup.await;
    }

    /// Applies the settings of `new` that can change while the node runs
    /// (lock-delay, re-checked against the lease inequality; a new key from
    /// the key file, accepted into the keyring; the client token, for
    /// connections that start after it) and returns one line per
    /// setting that differs from `old`: what changed, what was refused and
    /// why, and what only a restart can change. The log level is the
    /// caller's (see [`crate::logging`]).
    pub async fn reload(&self, old: &AgentConfig, new: &AgentConfig) -> Vec<String> {
        let mut report = Vec::new();
        let mut change = Reload::default();
        if new.lock.lock_delay != old.lock.lock_delay {
            change.lock_delay = Some(new.lock.lock_delay);
        }
        if new.key != old.key {
            change.key = new.key.clone();
        }
        if change.lock_delay.is_some() || change.key.is_some() {
            let (reply, answer) = oneshot::channel();
            if self.commands.send(Command::Reload { change, reply }).is_ok()
                && let Ok(lines) = answer.await
            {
                report.extend(lines);
            }
        }
        if new.client_token != old.client_token {
            // `new` passed validation: a non-loopback endpoint keeps a token.
            self.client_token.set(new.client_token.clone());
            report.push(
                "client_token changed: new connections must give the new one (connected clients stay)"
                    .to_string(),
            );
        }
        report.extend(config::fixed_changes(old, new));
        report
    }

    /// A handle that can end the stop grace early, for use while
    /// [`Handle::shutdown`] runs.
    pub fn stopper(&self) -> Stopper {
        Stopper { commands: self.commands.clone() }
    }

    /// Crash stop, as a process killed with SIGKILL would: the node task is
    /// aborted without releasing locks or leaving, its socket closes, and
    /// the other members find out by failure detection only.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = self.cleanup.await;
    }
}

/// Ends the stop grace of a stopping agent (see [`Handle::stopper`]).
#[derive(Debug, Clone)]
pub struct Stopper {
    commands: mpsc::UnboundedSender<Command>,
}

impl Stopper {
    /// While a stop waits for clients to let go: stop waiting, and leave
    /// the cluster now without releasing the locks still held. (Before any
    /// stop began, this starts one, as [`Handle::shutdown`] does.)
    pub fn stop_now(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// Starts an agent in the current tokio runtime. Fails with the bad field
/// on invalid settings, or when a socket cannot be opened.
///
/// # Panics
/// When called outside a tokio runtime.
pub fn spawn(config: AgentConfig) -> Result<Handle, AgentError> {
    spawn_on(config, None)
}

/// [`spawn`], with the node task and its UDP socket on `node_runtime`
/// and the client endpoint on the current runtime: the two on different
/// threads when each runtime has one.
pub fn spawn_split(config: AgentConfig, node_runtime: &tokio::runtime::Handle) -> Result<Handle, AgentError> {
    spawn_on(config, Some(node_runtime))
}

fn spawn_on(
    mut config: AgentConfig,
    node_runtime: Option<&tokio::runtime::Handle>,
) -> Result<Handle, AgentError> {
    config.validate()?;
    // The only wall clock the node reads: its identity's start stamp.
    let epoch = config.epoch.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64).max(1)
    });
    let (security, keyring_store) = security(&config)?;
    // A socket is served by the runtime it is made in: the node task's.
    let in_node = node_runtime.map(tokio::runtime::Handle::enter);
    let udp = socket::bind_udp(config.bind);
    drop(in_node);
    let udp = udp.map_err(|source| AgentError::Bind {
        what: if source.kind() == std::io::ErrorKind::AddrInUse {
            "UDP socket (is another swimlock agent, or another program, using this port?)"
        } else {
            "UDP socket"
        },
        addr: config.bind.to_string(),
        source,
    })?;
    let udp_addr = udp.local_addr().unwrap_or(config.bind);
    let listeners = endpoint::Listeners::bind(&config)?;
    let client_addr = listeners.tcp_addr();
    let metrics_listener = match config.metrics {
        Some(addr) => Some(socket::bind_tcp(addr).map_err(|source| AgentError::Bind {
            what: "metrics endpoint",
            addr: addr.to_string(),
            source,
        })?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (commands, rx) = mpsc::unbounded_channel();
    let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
    let (term_store, term_floor) = match &config.state_dir {
        Some(dir) => {
            let (store, term) = state::TermStore::open(dir)
                .map_err(|source| AgentError::State { path: dir.display().to_string(), source })?;
            (Some(store), term)
        }
        None => (None, 0),
    };
    let tag_store = match &config.state_dir {
        Some(dir) => {
            let (store, saved) = state::TagStore::open(dir)
                .map_err(|source| AgentError::State { path: dir.display().to_string(), source })?;
            config.use_saved_tag(saved);
            Some(store)
        }
        None => None,
    };
    let insecure = security == crate::node::Security::Insecure;
    let agent = task::NodeTask::new(
        &config,
        epoch,
        udp,
        (term_store, term_floor),
        (security, keyring_store),
        stopped_tx,
    )?
    .with_tag_store(tag_store);
    let ready = agent.readiness();
    let http_sources = crate::http::Sources { metrics: agent.metrics_handle(), ready: ready.clone() };
    let endpoint = endpoint::Endpoint::new(&config, commands.clone(), agent.client_counters());
    let client_token = endpoint.client_token();
    info!(
        name = %config.name, udp = %udp_addr, advertise = %config.advertise, cluster = %config.cluster,
        mode = %config.mode_name(), node_tag = config.lock.tag, epoch, term_floor,
        "agent starting"
    );
    if insecure {
        warn!(
            "running INSECURE (--insecure): datagrams are not sealed, anyone who can reach the UDP port is a member"
        );
    }
    let task = match node_runtime {
        Some(rt) => rt.spawn(agent.run(rx)),
        None => tokio::spawn(agent.run(rx)),
    };
    let mut aux = endpoint::spawn_listeners(listeners, endpoint);
    let metrics_task = metrics_listener.map(|l| tokio::spawn(crate::http::serve(l, http_sources)));
    // The listeners live as long as the node task.
    let unix_socket = config.unix_socket.clone();
    let cleanup = tokio::spawn(async move {
        let _ = stopped_rx.await;
        aux.abort_all();
        if let Some(t) = metrics_task {
            t.abort();
        }
        if let Some(path) = unix_socket {
            let _ = std::fs::remove_file(path);
        }
    });
    Ok(Handle {
        commands,
        task,
        cleanup,
        udp: udp_addr,
        client: client_addr,
        metrics: metrics_addr,
        ready,
        client_token,
    })
}

/// How the node will protect its datagrams: the keyring of the state
/// directory (seeded from the configured key), the configured key alone
/// without a state directory, or insecure mode when asked for; else no
/// start.
fn security(
    config: &AgentConfig,
) -> Result<(crate::node::Security, Option<keyring::KeyringStore>), AgentError> {
    use crate::node::Security;
    use crate::node::seal::Keyring;
    let (store, ring) = match &config.state_dir {
        Some(dir) => {
            let (store, ring) = keyring::KeyringStore::open(dir, config.key.as_ref()).map_err(|source| {
                AgentError::Keyring { path: dir.join(keyring::FILE).display().to_string(), source }
            })?;
            (Some(store), ring)
        }
        None => (None, config.key.clone().map(Keyring::new)),
    };
    let ring = match (ring, config.insecure) {
        (None, true) => return Ok((Security::Insecure, None)),
        (None, false) => return Err(AgentError::NoKey),
        (Some(_), true) => {
            return Err(AgentError::Config(ConfigError {
                field: "insecure".into(),
                reason: "the state directory holds a keyring; remove `insecure` or use another state_dir"
                    .into(),
            }));
        }
        (Some(ring), false) => ring,
    };
    if let Some(key) = &config.key
        && !ring.contains(key.id())
    {
        warn!(
            configured = %key.id(), primary = %ring.primary(),
            "the configured key is not in the keyring file, which wins (a rotation happened)"
        );
    }
    let salt = keyring::fresh_salt()
        .map_err(|source| AgentError::Keyring { path: "(OS random source)".into(), source })?;
    let ids: Vec<String> = ring.ids().iter().map(ToString::to_string).collect();
    info!(primary = %ring.primary(), keys = ?ids, "datagrams sealed (XChaCha20-Poly1305)");
    Ok((Security::Sealed { keyring: ring, salt }, store))
}
