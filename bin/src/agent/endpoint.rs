//! The client endpoint: TCP and Unix-socket listeners, one task per
//! connection, speaking RESP2 and RESP3 ([`connection`] holds the
//! protocol state of one connection). A connection is one client of the
//! node; when it closes (or breaks a bound), the node releases its locks.
//!
//! Everything a client can make the agent hold is bounded, and each bound
//! that bites is counted in `swimlock_client_rejected_total{reason}`:
//! - connections: at most [`AgentConfig::max_client_connections`] (TCP and
//!   Unix together); more are told `-ERR max number of clients reached`
//!   and closed;
//! - input: a command has at most [`MAX_ARGS`](swimlock_wire::resp::MAX_ARGS)
//!   arguments of at most [`MAX_ARG_LEN`](swimlock_wire::resp::MAX_ARG_LEN) bytes each (a header announcing more is answered
//!   `-ERR Protocol error` and the connection closed before anything is
//!   buffered) and must complete within
//!   [`AgentConfig::client_frame_timeout`]; commands not yet answered are
//!   at most [`MAX_OUTSTANDING`] (the connection is not read meanwhile);
//!   LOCK requests waiting on the endpoint at most [`MAX_LOCK_WAITERS`]
//!   (more are answered `-QUEUEFULL`);
//! - output: at most [`MAX_UNREAD_OUTPUT`] bytes the client has not read;
//!   past that it is disconnected.
//!
//! With a password (`client_token`), a TCP connection must give it (AUTH,
//! or HELLO with AUTH) within the frame timeout; other commands are
//! answered `-NOAUTH` until then, and a wrong password closes it.
//!
//! When `accept` fails (typically EMFILE at the open-file limit), the loop
//! sleeps [`ACCEPT_BACKOFF`] instead of spinning, and logs at most one line
//! per [`LOG_EVERY`].

mod connection;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use swimlock_wire::client::{CloseReason, ServerMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use self::connection::{Action, Conn};
use super::config::AgentConfig;
use super::task::Command;
use super::{AgentError, socket};
use crate::client::Session;
use crate::metrics::{ClientCounters, ClientRejection};

pub use connection::{MAX_LOCK_WAITERS, MAX_OUTSTANDING};
/// Output a client has not read yet, beyond which it is disconnected.
pub const MAX_UNREAD_OUTPUT: usize = 2 << 20;
/// Pause after a failed `accept` that may fail again at once (EMFILE...).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this period for a repeated endpoint warning.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the endpoint tries to deliver its last words (a closing
/// notice, a refused password) before it closes a connection anyway.
const LAST_WORDS: Duration = Duration::from_millis(200);
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 4096;

/// The bound listeners, before their tasks start.
pub struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
}

impl Listeners {
    pub fn bind(config: &AgentConfig) -> Result<Listeners, AgentError> {
        let tcp = match config.client {
            Some(addr) => Some(socket::bind_tcp(addr).map_err(|source| AgentError::Bind {
                what: "client endpoint",
                addr: addr.to_string(),
                source,
            })?),
            None => None,
        };
        let unix = match &config.unix_socket {
            Some(path) => Some(bind_unix(path, config.unix_socket_group.as_deref()).map_err(|source| {
                AgentError::Bind { what: "client Unix socket", addr: path.display().to_string(), source }
            })?),
            None => None,
        };
        Ok(Listeners { tcp, unix })
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds `path` with mode 0600 (0660 and the group's ownership with
/// `group`), replacing a stale socket file a previous agent left (but never
/// a file of another kind, nor a live socket). The socket is made under a
/// temporary name and linked into place once its mode is set, so it is
/// never reachable with the umask's mode.
fn bind_unix(path: &Path, group: Option<&str>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let gid = group.map(resolve_group).transpose()?;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
        && std::os::unix::net::UnixStream::connect(path).is_err()
    {
        std::fs::remove_file(path)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = (|| {
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        // A link, not a rename: it fails if `path` exists instead of replacing it.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    placed.map(|()| listener)
}

/// A group name or numeric id.
fn resolve_group(group: &str) -> std::io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(std::io::Error::other(format!("no group named {group}"))),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// What every connection task shares.
pub struct Endpoint {
    commands: mpsc::UnboundedSender<Command>,
    counters: ClientCounters,
    frame_timeout: Duration,
    /// The TCP endpoint's password, if it requires one.
    token: ClientToken,
    max_connections: usize,
    connections: AtomicUsize,
    /// LOCK requests waiting, every connection together.
    lock_waiters: Arc<AtomicUsize>,
}

impl Endpoint {
    pub fn new(
        config: &AgentConfig,
        commands: mpsc::UnboundedSender<Command>,
        counters: ClientCounters,
    ) -> Endpoint {
        Endpoint {
            commands,
            counters,
            frame_timeout: config.client_frame_timeout,
            token: ClientToken(Arc::new(std::sync::RwLock::new(config.client_token.clone()))),
            max_connections: config.max_client_connections,
            connections: AtomicUsize::new(0),
            lock_waiters: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The password clients give, shared with the agent's handle so that a
    /// reload can change it.
    pub fn client_token(&self) -> ClientToken {
        self.token.clone()
    }

    /// A connection slot, if one is free.
    fn take_slot(self: &Arc<Self>) -> Option<Slot> {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// The client endpoint's password (`client_token`), read by each new TCP
/// connection: a reload changes it for connections that start after it;
/// connections already authenticated stay so.
#[derive(Clone, Debug)]
pub struct ClientToken(Arc<std::sync::RwLock<Option<String>>>);

impl ClientToken {
    fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the password.
    pub fn set(&self, token: Option<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = token;
    }
}

/// One counted connection; frees its slot when dropped.
struct Slot(Arc<Endpoint>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the accept loops; they (and their connections) end when the
/// returned set is aborted.
pub fn spawn_listeners(listeners: Listeners, endpoint: Endpoint) -> JoinSet<()> {
    let endpoint = Arc::new(endpoint);
    let mut set = JoinSet::new();
    if let Some(tcp) = listeners.tcp {
        set.spawn(accept_loop(Listener::Tcp(tcp), endpoint.clone()));
    }
    if let Some(unix) = listeners.unix {
        set.spawn(accept_loop(Listener::Unix(unix), endpoint));
    }
    set
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Listener::Tcp(_) => "client endpoint",
            Listener::Unix(_) => "client Unix socket",
        }
    }
}

/// Logs a repeated warning at most once per [`LOG_EVERY`], with the number
/// of occurrences left out.
struct LogLimit {
    next: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn new() -> LogLimit {
        LogLimit { next: None, suppressed: 0 }
    }

    /// `Some(suppressed since the last line)` when a line may be written now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }
}

async fn accept_loop(listener: Listener, endpoint: Arc<Endpoint>) {
    let mut connections = JoinSet::new();
    let (mut accept_log, mut full_log) = (LogLimit::new(), LogLimit::new());
    loop {
        match listener.accept().await {
            Ok(stream) => match endpoint.take_slot() {
                Some(slot) => {
                    match stream {
                        Accepted::Tcp(s) => {
                            let _ = s.set_nodelay(true);
                            let auth = endpoint.token.get().is_some();
                            connections.spawn(serve(s, slot, auth));
                        }
                        // The socket's file mode decides who may connect.
                        Accepted::Unix(s) => {
                            connections.spawn(serve(s, slot, false));
                        }
                    }
                }
                None => {
                    endpoint.counters.count(ClientRejection::TooManyConnections);
                    refuse(stream);
                    if let Some(suppressed) = full_log.allow() {
                        let max = endpoint.max_connections;
                        warn!(max, suppressed, "client connection refused: connection limit reached");
                    }
                }
            },
            Err(e) => {
                endpoint.counters.count(ClientRejection::AcceptError);
                if let Some(suppressed) = accept_log.allow() {
                    warn!(error = %e, suppressed, "accept on the {} failed", listener.what());
                }
                if exhausted(&e) {
                    // The same error would come back at once: the pending
                    // connection stays queued until a descriptor is free.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

/// Whether `accept` failed for want of a resource (and would fail again).
fn exhausted(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM].iter().any(|x| *x as i32 == n)
    })
}

/// Tells a connection over the limit why it is closed, if its socket takes
/// the notice at once, and closes it.
fn refuse(stream: Accepted) {
    let notice = b"-ERR max number of clients reached\r\n";
    let _ = match &stream {
        Accepted::Tcp(s) => s.try_write(notice),
        Accepted::Unix(s) => s.try_write(notice),
    };
}

/// Serves one connection until it closes, it breaks a bound, or the node
/// stops.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, slot: Slot, needs_auth: bool) {
    let endpoint = slot.0.clone();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let password = if needs_auth { endpoint.token.get() } else { None };
    let mut conn = Conn::new(password, endpoint.lock_waiters.clone());
    let (events, mut from_node) = mpsc::unbounded_channel();
    let mut events = Some(events);
    if !needs_auth && !connect(&endpoint, &mut conn, &mut events, &mut Vec::new()).await {
        return;
    }
    // Until the password is given, the connection has the frame timeout
    // to give it.
    let auth_deadline = needs_auth.then(|| Instant::now() + endpoint.frame_timeout);
    let mut out = Output { buf: Vec::new(), sent: 0 };
    let mut actions = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut partial_since: Option<Instant> = None;
    let closing: Option<CloseReason> = 'conn: loop {
        for action in std::mem::take(&mut actions) {
            match action {
                Action::Request(request) => {
                    let Some(client) = conn.client() else { continue };
                    if endpoint.commands.send(Command::Request { client, request }).is_err() {
                        break 'conn None;
                    }
                }
                Action::Connect => {
                    if !connect(&endpoint, &mut conn, &mut events, &mut actions).await {
                        break 'conn None;
                    }
                }
                Action::Unauthorized => {
                    endpoint.counters.count(ClientRejection::Unauthorized);
                    debug!("client connection refused: wrong client token");
                }
            }
        }
        if !actions.is_empty() {
            continue;
        }
        conn.take_output(&mut out.buf);
        if out.unsent().len() > MAX_UNREAD_OUTPUT {
            break Some(CloseReason::SlowReader);
        }
        if let Some(reason) = conn.ended() {
            break reason;
        }
        let reading = conn.reading();
        let deadline =
            match (partial_since.filter(|_| reading), auth_deadline.filter(|_| conn.client().is_none())) {
                (Some(p), Some(a)) => Some((p + endpoint.frame_timeout).min(a)),
                (p, a) => p.map(|p| p + endpoint.frame_timeout).or(a),
            };
        tokio::select! {
            // `read` is cancel-safe: nothing is lost if another branch wins.
            read = reader.read(&mut chunk), if reading => {
                let n = match read {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => n,
                };
                conn.read(&chunk[..n], &mut actions);
                // The timer runs from the first byte of an incomplete command.
                partial_since = if conn.partial() { partial_since.or(Some(Instant::now())) } else { None };
            }
            msg = from_node.recv(), if conn.client().is_some() => {
                let Some(msg) = msg else { break None };
                conn.on_node(msg, &mut actions);
                // What else the node sent goes out in the same write.
                while let Ok(msg) = from_node.try_recv() {
                    conn.on_node(msg, &mut actions);
                }
            }
            // Cancel-safe too: when another branch wins, nothing was written.
            written = writer.write(out.unsent()), if !out.unsent().is_empty() => match written {
                Ok(0) | Err(_) => break None,
                Ok(n) => out.advance(n),
            },
            () = sleep_until(deadline) => break Some(CloseReason::FrameTimeout),
        }
    };
    // The node forgets the client first: its locks are released even if the
    // last words below never get through.
    if let Some(client) = conn.client() {
        let _ = endpoint.commands.send(Command::Disconnect { client });
        // What the node said before it dropped the session is still delivered.
        while let Ok(msg) = from_node.try_recv() {
            conn.on_node(msg, &mut Vec::new());
        }
    }
    conn.take_output(&mut out.buf);
    if let Some(reason) = closing {
        endpoint.counters.count(rejection(reason));
        debug!(client = conn.client().map(|c| c.0), %reason, "closing a client connection");
        if reason == CloseReason::SlowReader {
            // Its unread output is what it is disconnected for.
            out = Output { buf: Vec::new(), sent: 0 };
        }
        if !matches!(reason, CloseReason::FrameTooLarge | CloseReason::Malformed) {
            out.buf.extend_from_slice(&conn.closing_notice(reason));
        }
    }
    let _ = tokio::time::timeout(LAST_WORDS, writer.write_all(out.unsent())).await;
    let _ = tokio::time::timeout(LAST_WORDS, writer.shutdown()).await;
    drop(slot);
}

/// Registers the connection with the node; false if the node is gone.
async fn connect(
    endpoint: &Endpoint,
    conn: &mut Conn,
    events: &mut Option<mpsc::UnboundedSender<ServerMessage>>,
    actions: &mut Vec<Action>,
) -> bool {
    let Some(events) = events.take() else { return false };
    let (reply, client) = oneshot::channel();
    if endpoint.commands.send(Command::Connect { session: Session::Remote(events), reply }).is_err() {
        return false;
    }
    match client.await {
        Ok(client) => {
            conn.connected(client, actions);
            true
        }
        Err(_) => false,
    }
}

/// Encoded output not yet written to the socket.
struct Output {
    buf: Vec<u8>,
    sent: usize,
}

impl Output {
    fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    fn advance(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        } else if self.sent > self.buf.len() / 2 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
    }
}

fn rejection(reason: CloseReason) -> ClientRejection {
    match reason {
        CloseReason::SlowReader => ClientRejection::SlowReader,
        CloseReason::FrameTooLarge => ClientRejection::FrameTooLarge,
        CloseReason::FrameTimeout => ClientRejection::FrameTimeout,
        CloseReason::TooManyConnections => ClientRejection::TooManyConnections,
        CloseReason::Malformed => ClientRejection::Malformed,
    }
}

/// Compares a given token with the expected one in time that depends only
/// on the expected token's length, so a client cannot find it byte by byte.
fn same_token(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    std::hint::black_box(diff) == 0
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("s3cret", "s3cret"));
        assert!(!same_token("s3cre", "s3cret"));
        assert!(!same_token("s3crets", "s3cret"));
        assert!(!same_token("", "s3cret"));
        assert!(!same_token("s3creT", "s3cret"));
    }

    #[test]
    fn repeated_warnings_are_rate_limited() {
        let mut log = LogLimit::new();
        assert_eq!(log.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.allow(), None);
        }
        assert_eq!(log.suppressed, 1000);
    }
}
