//! `swimlock agent`'s flags and TOML file, resolved into an [`AgentConfig`]
//! (only with the `cli` feature: an embedding application builds its
//! [`AgentConfig`] itself).

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use swimlock_lock::Mode;

use super::config::*;
use crate::node::seal::Key;

/// The command-line flags of `swimlock agent`; each overrides the same
/// setting of the `--config` file.
#[derive(Args, Clone, Debug, Default)]
pub struct AgentArgs {
    /// TOML file with the settings (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name shown to other members [default: HOSTNAME:PORT].
    #[arg(long)]
    pub name: Option<String>,
    /// UDP address for gossip and lock traffic [default: 127.0.0.1:7946].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// UDP address other members reach this node at [default: the bind address].
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// Address of a member to join through (repeatable; HOST:PORT).
    #[arg(long = "seed", value_name = "ADDR")]
    pub seeds: Vec<String>,
    /// Cluster name; traffic of other clusters is dropped [default: swimlock].
    #[arg(long)]
    pub cluster: Option<String>,
    /// `available`: every side of a partition keeps granting, duplicates are
    /// resolved after it heals; `majority`: only a side with a majority of
    /// --members grants [default: available].
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// Number of configured members (needed by --mode majority).
    #[arg(long, value_name = "N")]
    pub members: Option<usize>,
    /// TCP address of the client endpoint, or `off` [default: 127.0.0.1:7950].
    #[arg(long, value_name = "ADDR")]
    pub client: Option<String>,
    /// Also serve clients on this Unix socket (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,
    /// Give this group (name or id) access to the Unix socket (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub unix_socket_group: Option<String>,
    /// On SIGTERM, how long to wait for clients holding locks to let go
    /// (must exceed the --kill-grace of `swimlock lock`) [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub stop_grace: Option<String>,
    /// Client connections served at once [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_client_connections: Option<usize>,
    /// Serve the TCP client endpoint on a non-loopback address without a
    /// client_token.
    #[arg(long)]
    pub client_allow_unauthenticated: bool,
    /// Directory for the node's durable state (the last coordinator term,
    /// so tokens never repeat across restarts) [default: none].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the Prometheus endpoint, or `off` [default: 127.0.0.1:9950].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Coordinator part of fencing tokens; a tag an older member has is
    /// changed at run time, with a WARN [default: the tag saved in
    /// --state-dir after a collision, else a hash of the advertised address].
    #[arg(long, value_name = "U16")]
    pub node_tag: Option<u16>,
    /// Wait this long before granting again a lock whose holder left; at
    /// least lease x (1 + clock margin) [default: that bound (2.1s with the
    /// LAN defaults), 3s in majority mode].
    #[arg(long, value_name = "DURATION")]
    pub lock_delay: Option<String>,
    /// SWIM probe period [default: 100ms].
    #[arg(long, value_name = "DURATION")]
    pub probe_period: Option<String>,
    /// Wait for a direct probe's ack before probing indirectly [default: 40ms].
    #[arg(long, value_name = "DURATION")]
    pub probe_rtt: Option<String>,
    /// Time a suspected member has to refute before it is declared down [default: 400ms].
    #[arg(long, value_name = "DURATION")]
    pub suspect_timeout: Option<String>,
    /// A view is installed once membership has been stable this long [default: 200ms].
    #[arg(long, value_name = "DURATION")]
    pub view_settle: Option<String>,
    /// How long a new coordinator waits for members' lock reports [default: 300ms].
    #[arg(long, value_name = "DURATION")]
    pub reconcile_timeout: Option<String>,
    /// How long a held lock stays valid without a renewal from the
    /// coordinator [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,
    /// With seeds, how long to wait for one to answer before forming a
    /// group alone [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub join_timeout: Option<String>,
    /// After traffic from peers, keep polling the socket this long before
    /// sleeping (at most 1ms): lower latency on virtual machines whose idle
    /// CPUs are slow to wake, for a CPU kept busy [default: 0s, off].
    #[arg(long, value_name = "DURATION")]
    pub busy_poll: Option<String>,
    /// Never poll the socket after lock traffic (by default the node polls
    /// for a few measured lock round trips while an answer is likely, and
    /// never without lock traffic).
    #[arg(long)]
    pub no_adaptive_poll: bool,
    /// Cluster key (base64, from `swimlock keygen`); prefer --key-file,
    /// since a command line is visible to every user of the host.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// File holding the cluster key (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Run without a key: datagrams unsealed, anyone who can reach the UDP
    /// port is a member.
    #[arg(long)]
    pub insecure: bool,
    /// Log level: error, warn, info, debug, trace, or RUST_LOG-style
    /// directives (`info,swimlock::agent=debug`); SIGHUP re-reads it from
    /// the config file [default: RUST_LOG, else info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log lines as `text` or `json` (one object per line) [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// The TOML file: the same settings as [`AgentArgs`], timings in tables.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    bind: Option<String>,
    advertise: Option<String>,
    #[serde(default)]
    seeds: Vec<String>,
    cluster: Option<String>,
    mode: Option<String>,
    members: Option<usize>,
    client: Option<String>,
    unix_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    metrics: Option<String>,
    node_tag: Option<u16>,
    lock_delay: Option<String>,
    busy_poll: Option<String>,
    adaptive_poll: Option<bool>,
    join_timeout: Option<String>,
    stop_grace: Option<String>,
    max_client_connections: Option<usize>,
    client_frame_timeout: Option<String>,
    client_token: Option<String>,
    client_allow_unauthenticated: Option<bool>,
    unix_socket_group: Option<String>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    insecure: Option<bool>,
    log_level: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    membership: MembershipFile,
    #[serde(default)]
    lock: LockFile,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct MembershipFile {
    probe_period: Option<String>,
    probe_rtt: Option<String>,
    suspect_timeout: Option<String>,
    gossip_interval: Option<String>,
    view_settle: Option<String>,
    view_max_delay: Option<String>,
    announce_to_down_interval: Option<String>,
    seed_announce_interval: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LockFile {
    lease: Option<String>,
    own_lease: Option<String>,
    clock_margin_pct: Option<u32>,
    max_term_step: Option<u32>,
    retransmit_initial: Option<String>,
    retransmit_max: Option<String>,
    queued_keepalive: Option<String>,
    reconcile_timeout: Option<String>,
    try_lock_timeout: Option<String>,
}

impl AgentArgs {
    /// Reads the `--config` file, if any, applies the flags over it and
    /// validates the result.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        self.resolve_with(file)
    }

    fn resolve_with(&self, file: FileConfig) -> Result<AgentConfig, ConfigError> {
        let bind =
            addr("bind", self.bind.as_ref().or(file.bind.as_ref()).map_or(DEFAULT_BIND, |s| s.as_str()))?;
        let mut c = AgentConfig::new(bind);
        if let Some(a) = self.advertise.as_ref().or(file.advertise.as_ref()) {
            c.advertise = addr("advertise", a)?;
        }
        c.name = self.name.clone().or(file.name).unwrap_or_else(|| default_name(c.advertise));
        let seeds = if self.seeds.is_empty() { file.seeds } else { self.seeds.clone() };
        c.seeds = seeds.iter().map(|s| addr("seeds", s)).collect::<Result<_, _>>()?;
        c.cluster = self.cluster.clone().or(file.cluster).unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
        c.client = optional_addr("client", self.client.as_ref().or(file.client.as_ref()), DEFAULT_CLIENT)?;
        c.unix_socket = self.unix_socket.clone().or(file.unix_socket);
        c.state_dir = self.state_dir.clone().or(file.state_dir);
        c.metrics =
            optional_addr("metrics", self.metrics.as_ref().or(file.metrics.as_ref()), DEFAULT_METRICS)?;
        c.lock.tag = self.node_tag.or(file.node_tag).unwrap_or_else(|| node_tag(c.advertise));
        c.node_tag_configured = self.node_tag.or(file.node_tag).is_some();
        let members = self.members.or(file.members);
        c.lock.mode = match self.mode.as_ref().or(file.mode.as_ref()).map(String::as_str) {
            None | Some("available") => Mode::Available,
            Some("majority") => {
                let members = members.and_then(NonZeroUsize::new).ok_or_else(|| {
                    ConfigError::new("members", "mode majority needs the number of configured members (>= 1)")
                })?;
                Mode::Majority { members }
            }
            Some(other) => {
                return Err(ConfigError::new(
                    "mode",
                    format!("`{other}` is neither `available` nor `majority`"),
                ));
            }
        };

        let m = &mut c.membership;
        let mf = &file.membership;
        set(
            &mut m.probe_period,
            "membership.probe_period",
            self.probe_period.as_ref().or(mf.probe_period.as_ref()),
        )?;
        set(&mut m.probe_rtt, "membership.probe_rtt", self.probe_rtt.as_ref().or(mf.probe_rtt.as_ref()))?;
        let suspect = self.suspect_timeout.as_ref().or(mf.suspect_timeout.as_ref());
        set(&mut m.suspect_to_down_after, "membership.suspect_timeout", suspect)?;
        set(&mut m.gossip_interval, "membership.gossip_interval", mf.gossip_interval.as_ref())?;
        set(
            &mut m.view_settle,
            "membership.view_settle",
            self.view_settle.as_ref().or(mf.view_settle.as_ref()),
        )?;
        set(&mut m.view_max_delay, "membership.view_max_delay", mf.view_max_delay.as_ref())?;
        let to_down = mf.announce_to_down_interval.as_ref();
        set(&mut m.announce_to_down_interval, "membership.announce_to_down_interval", to_down)?;
        set(
            &mut m.seed_announce_interval,
            "membership.seed_announce_interval",
            mf.seed_announce_interval.as_ref(),
        )?;

        let l = &mut c.lock;
        let lf = &file.lock;
        l.detection_min = c.membership.detection_min();
        set(&mut l.lease, "lock.lease", self.lease.as_ref().or(lf.lease.as_ref()))?;
        if let Some(pct) = lf.clock_margin_pct {
            l.clock_margin_pct = pct;
        }
        if let Some(step) = lf.max_term_step {
            l.max_term_step = step;
        }
        set(&mut l.own_lease, "lock.own_lease", lf.own_lease.as_ref())?;
        // The least lock-delay the lease allows; in majority mode also time
        // for a cut-off side to notice it lost the majority.
        l.lock_delay = match l.mode {
            Mode::Majority { .. } => l.min_lock_delay().max(MAJORITY_LOCK_DELAY),
            Mode::Available => l.min_lock_delay(),
        };
        set(&mut l.lock_delay, "lock_delay", self.lock_delay.as_ref().or(file.lock_delay.as_ref()))?;
        set(&mut l.retransmit_initial, "lock.retransmit_initial", lf.retransmit_initial.as_ref())?;
        set(&mut l.retransmit_max, "lock.retransmit_max", lf.retransmit_max.as_ref())?;
        set(&mut l.queued_keepalive, "lock.queued_keepalive", lf.queued_keepalive.as_ref())?;
        let reconcile = self.reconcile_timeout.as_ref().or(lf.reconcile_timeout.as_ref());
        set(&mut l.reconcile_timeout, "lock.reconcile_timeout", reconcile)?;
        set(&mut l.try_lock_timeout, "lock.try_lock_timeout", lf.try_lock_timeout.as_ref())?;
        set(&mut c.busy_poll, "busy_poll", self.busy_poll.as_ref().or(file.busy_poll.as_ref()))?;
        c.adaptive_poll = !self.no_adaptive_poll && file.adaptive_poll.unwrap_or(true);
        let join = self.join_timeout.as_ref().or(file.join_timeout.as_ref());
        set(&mut c.join_timeout, "join_timeout", join)?;
        set(&mut c.stop_grace, "stop_grace", self.stop_grace.as_ref().or(file.stop_grace.as_ref()))?;
        set(&mut c.client_frame_timeout, "client_frame_timeout", file.client_frame_timeout.as_ref())?;
        if let Some(n) = self.max_client_connections.or(file.max_client_connections) {
            c.max_client_connections = n;
        }
        c.client_token = std::env::var(CLIENT_TOKEN_ENV).ok().or(file.client_token);
        c.client_allow_unauthenticated =
            self.client_allow_unauthenticated || file.client_allow_unauthenticated.unwrap_or(false);
        c.unix_socket_group = self.unix_socket_group.clone().or(file.unix_socket_group);
        // Flags win over the file as a pair: `--key-file` replaces `key`.
        c.key = if self.key.is_some() || self.key_file.is_some() {
            resolve_key(self.key.as_deref(), self.key_file.as_deref())?
        } else {
            resolve_key(file.key.as_deref(), file.key_file.as_deref())?
        };
        c.insecure = self.insecure || file.insecure.unwrap_or(false);
        c.log_level = self.log_level.clone().or(file.log_level);
        if let Some(level) = &c.log_level {
            crate::logging::parse_level(level).map_err(|reason| ConfigError::new("log_level", reason))?;
        }
        if let Some(format) = self.log_format.as_ref().or(file.log_format.as_ref()) {
            c.log_format = format.parse().map_err(|reason| ConfigError::new("log_format", reason))?;
        }

        c.validate()?;
        Ok(c)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // FILE:LINE:COLUMN, as compilers say it, then toml's own words.
        let at = e.span().map_or_else(String::new, |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(":{line}:{column}")
        });
        ConfigError::new("config", format!("{}{at}: {}", path.display(), e.message().trim_end()))
    })
}

/// The key given inline or in a file (not both).
fn resolve_key(inline: Option<&str>, file: Option<&Path>) -> Result<Option<Key>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::new("key", "give `key` or `key_file`, not both")),
        (Some(text), None) => {
            Key::from_base64(text).map(Some).map_err(|e| ConfigError::new("key", e.to_string()))
        }
        (None, Some(path)) if !path.exists() => Err(ConfigError::new(
            "key_file",
            format!(
                "{} does not exist: make the cluster key once with `swimlock keygen > {0}` \
                 (then `chmod 600 {0}`, owned by the agent's user) and copy it to every host",
                path.display()
            ),
        )),
        (None, Some(path)) => super::keyring::read_key_file(path)
            .map(Some)
            .map_err(|e| ConfigError::new("key_file", e.to_string())),
        (None, None) => Ok(None),
    }
}

/// Parses `HOST:PORT`: an IP address, or a host name resolved once, now
/// (the first IPv4 address it has, else the first address; logged).
fn addr(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(ConfigError::new(
            field,
            format!("`{text}` is not HOST:PORT (an IP address or a host name, and a port)"),
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(ConfigError::new(
            field,
            format!("`{text}` is not HOST:PORT: the port must be a number below 65536"),
        ));
    }
    let found: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| ConfigError::new(field, format!("cannot resolve host `{host}` of `{text}`: {e}")))?
        .collect();
    let chosen = found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| ConfigError::new(field, format!("host `{host}` of `{text}` has no address")))?;
    Ok(chosen)
}

fn optional_addr(
    field: &str,
    text: Option<&String>,
    default: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    match text.map(String::as_str) {
        Some("off" | "none" | "") => Ok(None),
        Some(t) => addr(field, t).map(Some),
        None => addr(field, default).map(Some),
    }
}

/// Parses a human duration ("500ms", "2s") into `slot` when one is given.
fn set(slot: &mut Duration, field: &str, text: Option<&String>) -> Result<(), ConfigError> {
    if let Some(text) = text {
        *slot = parse_duration(text).map_err(|reason| ConfigError::new(field, reason))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut AgentArgs)) -> AgentArgs {
        let mut a = AgentArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn durations_take_the_documented_forms_only() {
        let ok = |t: &str| parse_duration(t).unwrap();
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2s"), Duration::from_secs(2));
        assert_eq!(ok("1m 30s"), Duration::from_secs(90));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("50us"), Duration::from_micros(50));
        for bad in [
            "1 sec",
            "1sec",
            "2 hours",
            "soon",
            "",
            "1",
            "s",
            "-1s",
            "1.5s",
            "1m 30",
            "99999999999999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn toml_errors_name_file_line_and_column() {
        let dir = std::env::temp_dir().join(format!("swimlock-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, "name = \"a\"\nbind = 127.0.0.1:7946\n").unwrap();
        let e = read_file(&path).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.reason.starts_with(&format!("{}:2:", path.display())), "{e}");
    }

    #[test]
    fn bind_takes_a_host_name() {
        let c = args(|a| a.bind = Some("localhost:7946".into())).resolve_with(FileConfig::default()).unwrap();
        assert!(c.bind.ip().is_loopback() && c.bind.port() == 7946, "{}", c.bind);
        let e = args(|a| a.bind = Some("no-such-host.invalid:7946".into()))
            .resolve_with(FileConfig::default())
            .unwrap_err();
        assert!(e.field == "bind" && e.reason.contains("cannot resolve host"), "{e}");
        let e = args(|a| a.bind = Some("localhost".into())).resolve_with(FileConfig::default()).unwrap_err();
        assert!(e.reason.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn defaults_resolve() {
        let c = AgentArgs::default().resolve().unwrap();
        assert_eq!(c.bind, DEFAULT_BIND.parse().unwrap());
        assert_eq!(c.advertise, c.bind);
        assert_eq!(c.client, Some(DEFAULT_CLIENT.parse().unwrap()));
        assert_eq!(c.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
        assert_eq!(c.lock.tag, node_tag(c.advertise));
        assert_eq!(c.mode_name(), "available");
    }

    #[test]
    fn a_saved_tag_replaces_the_default_but_not_a_configured_one() {
        let mut c = AgentArgs::default().resolve().unwrap();
        assert!(!c.node_tag_configured);
        c.use_saved_tag(None);
        assert_eq!(c.lock.tag, node_tag(c.advertise));
        c.use_saved_tag(Some(4321));
        assert_eq!(c.lock.tag, 4321);
        let mut c = args(|a| a.node_tag = Some(17)).resolve().unwrap();
        assert!(c.node_tag_configured);
        c.use_saved_tag(Some(4321));
        assert_eq!(c.lock.tag, 17);
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            r#"
            name = "from-file"
            bind = "127.0.0.1:8000"
            seeds = ["127.0.0.1:8001"]
            mode = "majority"
            members = 3
            metrics = "off"
            busy_poll = "50us"
            [membership]
            probe_period = "300ms"
            [lock]
            reconcile_timeout = "1s"
            "#,
        )
        .unwrap();
        let flags = args(|a| {
            a.name = Some("from-flag".into());
            a.probe_period = Some("200ms".into());
        });
        let c = flags.resolve_with(file).unwrap();
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.bind.port(), 8000);
        assert_eq!(c.seeds, vec!["127.0.0.1:8001".parse().unwrap()]);
        assert_eq!(c.mode_name(), "majority/3");
        assert_eq!(c.metrics, None);
        assert_eq!(c.membership.probe_period, Duration::from_millis(200));
        assert_eq!(c.lock.reconcile_timeout, Duration::from_secs(1));
        assert_eq!(c.busy_poll, Duration::from_micros(50));
        assert_eq!(c.stop_grace, DEFAULT_STOP_GRACE);
        assert_eq!(c.max_client_connections, DEFAULT_MAX_CLIENT_CONNECTIONS);
        assert!(c.key.is_none() && !c.insecure);
    }

    #[test]
    fn keys_come_from_flags_or_the_file() {
        let key = crate::node::seal::Key::from_bytes([5; 32]);
        let file: FileConfig = toml::from_str(&format!("key = \"{}\"", key.to_base64())).unwrap();
        let c = AgentArgs::default().resolve_with(file).unwrap();
        assert_eq!(c.key, Some(key.clone()));
        let file: FileConfig = toml::from_str("insecure = true").unwrap();
        assert!(AgentArgs::default().resolve_with(file).unwrap().insecure);
        let file: FileConfig = toml::from_str("adaptive_poll = false").unwrap();
        assert!(!AgentArgs::default().resolve_with(file).unwrap().adaptive_poll);
        assert!(AgentArgs::default().resolve_with(FileConfig::default()).unwrap().adaptive_poll);
        let other = crate::node::seal::Key::from_bytes([6; 32]);
        let file: FileConfig = toml::from_str(&format!("key = \"{}\"", key.to_base64())).unwrap();
        let c = args(|a| a.key = Some(other.to_base64())).resolve_with(file).unwrap();
        assert_eq!(c.key, Some(other), "the flag wins");
        assert!(format!("{c:?}").find(&key.to_base64()).is_none(), "Debug shows no key");
    }

    #[test]
    fn client_endpoint_settings() {
        let file: FileConfig = toml::from_str(
            r#"
            client = "127.0.0.1:7000"
            stop_grace = "30s"
            max_client_connections = 10
            client_frame_timeout = "2s"
            client_token = "s3cret"
            unix_socket_group = "adm"
            "#,
        )
        .unwrap();
        let c = AgentArgs::default().resolve_with(file).unwrap();
        assert_eq!(c.stop_grace, Duration::from_secs(30));
        assert_eq!(c.max_client_connections, 10);
        assert_eq!(c.client_frame_timeout, Duration::from_secs(2));
        assert_eq!(c.client_token.as_deref(), Some("s3cret"));
        assert_eq!(c.unix_socket_group.as_deref(), Some("adm"));

        let field = |a: AgentArgs, f: &str| {
            let file: FileConfig = toml::from_str(f).unwrap();
            a.resolve_with(file).unwrap_err().field
        };
        let open = "client = \"0.0.0.0:7950\"";
        assert_eq!(field(AgentArgs::default(), open), "client_token");
        let allowed = args(|a| a.client_allow_unauthenticated = true);
        assert!(allowed.resolve_with(toml::from_str(open).unwrap()).is_ok());
        let with_token = format!("{open}\nclient_token = \"x\"");
        assert!(AgentArgs::default().resolve_with(toml::from_str(&with_token).unwrap()).is_ok());
        assert_eq!(field(args(|a| a.max_client_connections = Some(0)), ""), "max_client_connections");
        assert_eq!(field(args(|a| a.stop_grace = Some("2h".into())), ""), "stop_grace");
        assert_eq!(field(AgentArgs::default(), "client_token = \"\""), "client_token");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let field = |a: AgentArgs| a.resolve_with(FileConfig::default()).unwrap_err().field;
        assert_eq!(field(args(|a| a.bind = Some("nowhere".into()))), "bind");
        assert_eq!(field(args(|a| a.bind = Some("0.0.0.0:7000".into()))), "advertise");
        assert_eq!(field(args(|a| a.mode = Some("majority".into()))), "members");
        assert_eq!(field(args(|a| a.mode = Some("both".into()))), "mode");
        assert_eq!(field(args(|a| a.probe_period = Some("soon".into()))), "membership.probe_period");
        assert_eq!(field(args(|a| a.probe_rtt = Some("1s".into()))), "membership.probe_rtt");
        assert_eq!(field(args(|a| a.name = Some(String::new()))), "name");
        assert_eq!(field(args(|a| a.seeds = vec!["x".into()])), "seeds");
        assert_eq!(field(args(|a| a.busy_poll = Some("2ms".into()))), "busy_poll");
        assert_eq!(field(args(|a| a.key = Some("short".into()))), "key");
        assert_eq!(field(args(|a| a.key_file = Some("/nonexistent/key".into()))), "key_file");
        let key = crate::node::seal::Key::from_bytes([3; 32]).to_base64();
        assert_eq!(
            field(args(|a| {
                a.key = Some(key.clone());
                a.insecure = true;
            })),
            "insecure"
        );
        let e = args(|a| a.key = Some("AAAA".into())).resolve_with(FileConfig::default()).unwrap_err();
        assert!(!e.reason.contains("AAAA"), "{e}");
        let e = toml::from_str::<FileConfig>("bogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"));
    }
}
