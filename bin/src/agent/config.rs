//! Agent settings: a TOML file, command-line flags over it, validation that
//! names the bad field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use swimlock_lock::Mode;

use crate::node::NodeError;
use crate::node::seal::Key;

/// Default UDP address (gossip and lock traffic).
pub const DEFAULT_BIND: &str = "127.0.0.1:7946";
/// Default client endpoint (TCP).
pub const DEFAULT_CLIENT: &str = "127.0.0.1:7950";
/// Default Prometheus endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9950";
/// Default cluster name.
pub const DEFAULT_CLUSTER: &str = "swimlock";
/// Environment variable with the client endpoint's password: the agent
/// takes it as `client_token`, `swimlock lock` and `status` send it.
pub const CLIENT_TOKEN_ENV: &str = "SWIMLOCK_CLIENT_TOKEN";
/// Default [`AgentConfig::stop_grace`].
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest [`AgentConfig::stop_grace`].
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);
/// Default [`AgentConfig::max_client_connections`].
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 4096;
/// Default [`AgentConfig::client_frame_timeout`].
pub const DEFAULT_CLIENT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A setting that was refused, with the field it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{field}`: {reason}")]
pub struct ConfigError {
    /// The field (TOML key, `section.key` for nested ones; flags use the same names).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), reason: reason.into() }
    }
}

impl From<NodeError> for ConfigError {
    fn from(e: NodeError) -> ConfigError {
        ConfigError { field: e.field, reason: e.reason }
    }
}

/// The settings of one agent, resolved and typed.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Display name shown to other members (at most 64 bytes).
    pub name: String,
    /// UDP address to bind (gossip and lock traffic).
    pub bind: SocketAddr,
    /// UDP address other members reach this node at; its identity.
    pub advertise: SocketAddr,
    /// Members to announce to until they are members.
    pub seeds: Vec<SocketAddr>,
    /// Cluster name; nodes of other clusters are ignored.
    pub cluster: String,
    /// TCP address of the client endpoint, if any.
    pub client: Option<SocketAddr>,
    /// Unix socket path of the client endpoint, if any.
    pub unix_socket: Option<PathBuf>,
    /// Address of the Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Lock protocol settings (mode, node tag, timings, lock-delay).
    pub lock: swimlock_lock::Config,
    /// Whether `lock.tag` was configured (`--node-tag`, `node_tag`). If not,
    /// a tag saved in `state_dir` after a collision replaces the default
    /// hash at start. Either way, a tag an older member has is changed at
    /// run time (see [`crate::node::tags`]); a configured one with a WARN.
    pub node_tag_configured: bool,
    /// Membership timings.
    pub membership: swimlock_membership::Config,
    /// Directory where the node keeps the last coordinator term it
    /// started (file `term`), so that after a restart it never grants a
    /// token it granted before. `None` keeps nothing: tokens can then
    /// repeat if every member restarts at once.
    pub state_dir: Option<PathBuf>,
    /// Start stamp of the node's identity; `None` takes the wall clock at
    /// spawn (microseconds since the Unix epoch).
    pub epoch: Option<u64>,
    /// After handling datagrams, keep polling the socket this long before
    /// sleeping (zero: off). A peer's next message then finds the node
    /// awake instead of paying a wake-up, at the price of a CPU kept busy
    /// that long after traffic; see [`MAX_BUSY_POLL`].
    pub busy_poll: Duration,
    /// After lock traffic, poll the socket for a few measured lock round
    /// trips while an answer or the next request is likely (see
    /// `agent::awake`); no polling without lock traffic. On by default.
    pub adaptive_poll: bool,
    /// With seeds, wait this long for one to answer before forming a group
    /// alone (see [`NodeConfig::join_timeout`](crate::node::NodeConfig)).
    pub join_timeout: Duration,
    /// On stop, how long the node waits for clients that hold locks to let
    /// go of them after telling them it is stopping; then it leaves the
    /// cluster without releasing the rest. Must exceed the `--kill-grace`
    /// of the `swimlock lock` wrappers using the node.
    pub stop_grace: Duration,
    /// Client connections (TCP and Unix socket together) served at once;
    /// more are closed as soon as accepted.
    pub max_client_connections: usize,
    /// A request frame that does not complete within this time closes its
    /// connection.
    pub client_frame_timeout: Duration,
    /// Password the TCP client endpoint requires (`Auth` as first request);
    /// `None`: none. The Unix socket is protected by its file mode instead.
    pub client_token: Option<String>,
    /// Serve a TCP client endpoint on a non-loopback address without a
    /// `client_token` (refused otherwise).
    pub client_allow_unauthenticated: bool,
    /// Group (name or numeric id) given access to the Unix socket (mode
    /// 0660); `None`: mode 0600, the agent's user only.
    pub unix_socket_group: Option<String>,
    /// The cluster key: every datagram is sealed with it. With a
    /// `state_dir`, it only seeds `<state_dir>/keyring` on the first start;
    /// the keyring file is the source of truth after that. Required unless
    /// `insecure` or the state directory already holds a keyring.
    pub key: Option<Key>,
    /// Run without sealing, explicitly: datagrams travel in clear and
    /// anyone who can reach the UDP port is a member. Logged at WARN, shown
    /// in `status` and as `swimlock_insecure 1`.
    pub insecure: bool,
    /// Log level (`info`, `debug`, or `RUST_LOG`-style directives); `None`:
    /// `RUST_LOG`, else `info`. Changes on reload (SIGHUP).
    pub log_level: Option<String>,
    /// Log lines as text or JSON.
    pub log_format: crate::logging::LogFormat,
}

/// The longest busy-poll allowed: it spins a CPU.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);

impl AgentConfig {
    /// Defaults for a node bound to `bind`, advertising the same address,
    /// with no client endpoint and no metrics (the embedding defaults).
    pub fn new(bind: SocketAddr) -> AgentConfig {
        AgentConfig {
            name: default_name(bind),
            bind,
            advertise: bind,
            seeds: Vec::new(),
            cluster: DEFAULT_CLUSTER.to_string(),
            client: None,
            unix_socket: None,
            metrics: None,
            lock: swimlock_lock::Config::lan(node_tag(bind)),
            node_tag_configured: false,
            membership: swimlock_membership::Config::lan(),
            state_dir: None,
            epoch: None,
            busy_poll: Duration::ZERO,
            adaptive_poll: true,
            join_timeout: crate::node::NodeConfig::JOIN_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            client_frame_timeout: DEFAULT_CLIENT_FRAME_TIMEOUT,
            client_token: None,
            client_allow_unauthenticated: false,
            unix_socket_group: None,
            key: None,
            insecure: false,
            log_level: None,
            log_format: crate::logging::LogFormat::Text,
        }
    }

    /// Checks the settings against each other; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() || self.name.len() > swimlock_membership::MAX_NAME_LEN {
            let max = swimlock_membership::MAX_NAME_LEN;
            return Err(ConfigError::new(
                "name",
                format!("must be 1 to {max} bytes, got {}", self.name.len()),
            ));
        }
        if self.advertise.ip().is_unspecified() || self.advertise.port() == 0 {
            return Err(ConfigError::new(
                "advertise",
                format!("{} is not an address other members can reach; set --advertise", self.advertise),
            ));
        }
        if self.cluster.is_empty() {
            return Err(ConfigError::new("cluster", "must not be empty"));
        }
        if self.insecure && self.key.is_some() {
            return Err(ConfigError::new("insecure", "cannot be combined with a key: drop one of them"));
        }
        if self.busy_poll > MAX_BUSY_POLL {
            return Err(ConfigError::new(
                "busy_poll",
                format!("{:?} is over the {MAX_BUSY_POLL:?} allowed (it keeps a CPU busy)", self.busy_poll),
            ));
        }
        self.validate_client_endpoint()?;
        self.lock.validate().map_err(|e| ConfigError::new(lock_field(e.field), e.reason))?;
        self.membership.validate().map_err(|e| ConfigError::new(membership_field(e.field), e.reason))?;
        Ok(())
    }

    fn validate_client_endpoint(&self) -> Result<(), ConfigError> {
        if self.stop_grace > MAX_STOP_GRACE {
            return Err(ConfigError::new(
                "stop_grace",
                format!("{:?} is over the {MAX_STOP_GRACE:?} allowed", self.stop_grace),
            ));
        }
        if self.max_client_connections == 0 {
            return Err(ConfigError::new("max_client_connections", "must be at least 1"));
        }
        if self.client_frame_timeout.is_zero() {
            return Err(ConfigError::new("client_frame_timeout", "must be above zero"));
        }
        let max = swimlock_wire::client::MAX_AUTH_TOKEN;
        if let Some(token) = &self.client_token
            && (token.is_empty() || token.len() > max)
        {
            return Err(ConfigError::new("client_token", format!("must be 1 to {max} bytes")));
        }
        if let Some(addr) = self.client
            && !addr.ip().is_loopback()
            && self.client_token.is_none()
            && !self.client_allow_unauthenticated
        {
            return Err(ConfigError::new(
                "client_token",
                format!(
                    "the client endpoint {addr} is reachable from other hosts: set client_token \
                     (or {CLIENT_TOKEN_ENV}), or client_allow_unauthenticated = true"
                ),
            ));
        }
        Ok(())
    }

    /// The mode as `status` shows it.
    pub fn mode_name(&self) -> String {
        mode_name(self.lock.mode)
    }

    /// Takes the tag `saved` in the state directory by an earlier life,
    /// unless a tag was configured.
    pub(crate) fn use_saved_tag(&mut self, saved: Option<u16>) {
        if let Some(tag) = saved.filter(|_| !self.node_tag_configured) {
            self.lock.tag = tag;
        }
    }
}

/// The settings that differ between `old` and `new` and only a restart
/// changes, one line each (a reload names them).
pub(crate) fn fixed_changes(old: &AgentConfig, new: &AgentConfig) -> Vec<String> {
    let mut lock_old = old.lock.clone();
    lock_old.lock_delay = new.lock.lock_delay;
    let fields: [(&str, String, String); 20] = [
        ("name", format!("{:?}", old.name), format!("{:?}", new.name)),
        ("bind", old.bind.to_string(), new.bind.to_string()),
        ("advertise", old.advertise.to_string(), new.advertise.to_string()),
        ("seeds", format!("{:?}", old.seeds), format!("{:?}", new.seeds)),
        ("cluster", format!("{:?}", old.cluster), format!("{:?}", new.cluster)),
        ("mode/members", old.mode_name(), new.mode_name()),
        ("client", format!("{:?}", old.client), format!("{:?}", new.client)),
        ("unix_socket", format!("{:?}", old.unix_socket), format!("{:?}", new.unix_socket)),
        ("unix_socket_group", format!("{:?}", old.unix_socket_group), format!("{:?}", new.unix_socket_group)),
        ("metrics", format!("{:?}", old.metrics), format!("{:?}", new.metrics)),
        ("state_dir", format!("{:?}", old.state_dir), format!("{:?}", new.state_dir)),
        ("lease, lock.* or node_tag", format!("{lock_old:?}"), format!("{:?}", new.lock)),
        ("membership.*", format!("{:?}", old.membership), format!("{:?}", new.membership)),
        ("join_timeout", format!("{:?}", old.join_timeout), format!("{:?}", new.join_timeout)),
        ("stop_grace", format!("{:?}", old.stop_grace), format!("{:?}", new.stop_grace)),
        (
            "max_client_connections",
            old.max_client_connections.to_string(),
            new.max_client_connections.to_string(),
        ),
        ("busy_poll", format!("{:?}", old.busy_poll), format!("{:?}", new.busy_poll)),
        ("adaptive_poll", old.adaptive_poll.to_string(), new.adaptive_poll.to_string()),
        ("insecure", old.insecure.to_string(), new.insecure.to_string()),
        ("log_format", format!("{:?}", old.log_format), format!("{:?}", new.log_format)),
    ];
    fields
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(field, _, _)| format!("{field} changed in the configuration; it takes a restart to apply"))
        .collect()
}

/// `available` or `majority/N`.
pub fn mode_name(mode: Mode) -> String {
    match mode {
        Mode::Available => "available".to_string(),
        Mode::Majority { members } => format!("majority/{members}"),
    }
}

/// The TOML and flag names of the lock settings.
pub(crate) fn lock_field(field: &str) -> String {
    match field {
        "tag" => "node_tag".to_string(),
        "lock_delay" => "lock_delay".to_string(),
        other => format!("lock.{other}"),
    }
}

pub(crate) fn membership_field(field: &str) -> String {
    format!("membership.{field}")
}

/// Default name: the host name and the port.
pub(crate) fn default_name(bind: SocketAddr) -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let mut host = if host.is_empty() { "swimlock".to_string() } else { host };
    host.truncate(48);
    format!("{host}:{}", bind.port())
}

/// Default node tag: a hash (FNV-1a folded to 16 bits) of the advertised
/// address. Two members' tags may collide; the younger then takes another
/// one by itself (see [`crate::node::tags`]).
pub fn node_tag(advertise: SocketAddr) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in advertise.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48)) as u16
}

/// Default lock-delay in mode `majority`: after a new coordinator starts, a
/// side cut off from the majority has until then, minus a lease, to notice
/// (1.5 s with the LAN defaults).
pub const MAJORITY_LOCK_DELAY: std::time::Duration = std::time::Duration::from_secs(3);

/// Parses the documented forms only: whole numbers each followed by a unit
/// `h`, `m`, `s`, `ms` or `us`, with no space between the number and its
/// unit: "500ms", "2s", "1m", "1m 30s", "1m30s". ("1 sec" or "2 hours",
/// which other parsers take, are refused, so that a typo is not read as
/// something else.)
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let refuse =
        || format!("`{text}` is not a duration like 500ms, 2s, 1m or 1m 30s (units: h, m, s, ms, us)");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(refuse());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(refuse());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| refuse())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "s" => Some(Duration::from_secs(number)),
            "ms" => Some(Duration::from_millis(number)),
            "us" => Some(Duration::from_micros(number)),
            _ => None,
        };
        total = part.and_then(|p| total.checked_add(p)).ok_or_else(refuse)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}
