//! The client endpoint: TCP and Unix-socket listeners, one task per
//! connection. A connection is one client of the node; when it closes (or
//! breaks a bound), the node releases its locks.
//!
//! Everything a client can make the agent hold is bounded, and each bound
//! that bites is counted in `swimlock_client_rejected_total{reason}`:
//! - connections: at most [`AgentConfig::max_client_connections`] (TCP and
//!   Unix together); more are closed as soon as accepted;
//! - input: a request frame is at most [`MAX_REQUEST_FRAME`] bytes (a
//!   prefix announcing more closes the connection before anything is
//!   buffered) and must complete within
//!   [`AgentConfig::client_frame_timeout`]; requests the node has not
//!   answered yet are at most [`MAX_OUTSTANDING`] (the connection is not
//!   read meanwhile);
//! - output: at most [`MAX_UNREAD_OUTPUT`] bytes the client has not read;
//!   past that it is disconnected.
//!
//! When `accept` fails (typically EMFILE at the open-file limit), the loop
//! sleeps [`ACCEPT_BACKOFF`] instead of spinning, and logs at most one line
//! per [`LOG_EVERY`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use swimlock_wire::client::{
    self, ClientRequest, CloseReason, MAX_REQUEST_FRAME, PREFIX_LEN, Reply, Request, ServerMessage,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::config::AgentConfig;
use super::task::Command;
use super::{AgentError, socket};
use crate::client::Session;
use crate::metrics::{ClientCounters, ClientRejection};

/// Requests of one connection the node has not answered yet, beyond which
/// the connection is not read (so one client cannot grow the node's memory).
pub const MAX_OUTSTANDING: usize = 1024;
/// Output a client has not read yet, beyond which it is disconnected: room
/// for one largest frame (a `Status` of a big table) and as much again.
pub const MAX_UNREAD_OUTPUT: usize = 2 * client::MAX_CLIENT_FRAME;
/// Pause after a failed `accept` that may fail again at once (EMFILE...).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this period for a repeated endpoint warning.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the endpoint tries to deliver its last words (a `Closing`
/// notice, an `Auth` refusal) before it closes a connection anyway.
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
    token: Option<String>,
    max_connections: usize,
    connections: AtomicUsize,
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
            token: config.client_token.clone(),
            max_connections: config.max_client_connections,
            connections: AtomicUsize::new(0),
        }
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
                            let auth = endpoint.token.is_some();
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
    let Ok(frame) = client::encode(&ServerMessage::Closing { reason: CloseReason::TooManyConnections })
    else {
        return;
    };
    let _ = match &stream {
        Accepted::Tcp(s) => s.try_write(&frame),
        Accepted::Unix(s) => s.try_write(&frame),
    };
}

/// Request bytes of one connection not yet decoded, and since when the
/// frame at their front has been incomplete.
struct Input {
    buf: Vec<u8>,
    since: Option<Instant>,
}

impl Input {
    fn new() -> Input {
        Input { buf: Vec::with_capacity(READ_CHUNK), since: None }
    }

    /// Appends what was read and takes every complete request off the
    /// front. Refuses a frame announced over [`MAX_REQUEST_FRAME`] before
    /// buffering it.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<ClientRequest>) -> Result<(), CloseReason> {
        self.buf.extend_from_slice(bytes);
        let mut used = 0;
        let result = loop {
            let rest = &self.buf[used..];
            let Some(prefix) = rest.first_chunk::<PREFIX_LEN>() else { break Ok(()) };
            let len = u32::from_le_bytes(*prefix) as usize;
            if len > MAX_REQUEST_FRAME {
                break Err(CloseReason::FrameTooLarge);
            }
            let Some(body) = rest.get(PREFIX_LEN..PREFIX_LEN + len) else { break Ok(()) };
            match client::decode::<ClientRequest>(body) {
                Ok(request) => out.push(request),
                Err(_) => break Err(CloseReason::Malformed),
            }
            used += PREFIX_LEN + len;
        };
        self.buf.drain(..used);
        if self.buf.is_empty() {
            self.since = None;
        } else if used > 0 || self.since.is_none() {
            self.since = Some(Instant::now());
        }
        result
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

    fn push(&mut self, msg: &ServerMessage) {
        match client::encode(msg) {
            Ok(frame) => self.buf.extend_from_slice(&frame),
            Err(e) => warn!(error = %e, "a message to a client could not be encoded; dropped"),
        }
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

/// Serves one connection until it closes, it breaks a bound, or the node
/// stops.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, slot: Slot, needs_auth: bool) {
    let endpoint = slot.0.clone();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut input = Input::new();
    let mut pending = Vec::new();
    let mut out = Output { buf: Vec::new(), sent: 0 };
    if needs_auth && !authenticate(&endpoint, &mut reader, &mut writer, &mut input, &mut pending).await {
        return;
    }
    let (events, mut from_node) = mpsc::unbounded_channel();
    let (reply, client) = oneshot::channel();
    if endpoint.commands.send(Command::Connect { session: Session::Remote(events), reply }).is_err() {
        return;
    }
    let Ok(client) = client.await else { return };
    let mut outstanding = 0usize;
    let mut chunk = [0u8; READ_CHUNK];
    let closing: Option<CloseReason> = 'conn: loop {
        for request in pending.drain(..) {
            if let Request::Auth { token } = &request.request {
                // Once authenticated (or where none is needed), a repeat is
                // answered here; a wrong one still closes the connection.
                if needs_auth && !endpoint.token.as_deref().is_some_and(|t| same_token(token, t)) {
                    endpoint.counters.count(ClientRejection::Unauthorized);
                    out.push(&refusal(request.id, "wrong client token"));
                    break 'conn None;
                }
                out.push(&ServerMessage::Reply { id: request.id, reply: Reply::Authenticated });
                continue;
            }
            outstanding += 1;
            if endpoint.commands.send(Command::Request { client, request }).is_err() {
                break 'conn None;
            }
        }
        let reading = outstanding < MAX_OUTSTANDING;
        let frame_deadline = input.since.filter(|_| reading).map(|t| t + endpoint.frame_timeout);
        tokio::select! {
            // `read` is cancel-safe: nothing is lost if another branch wins.
            read = reader.read(&mut chunk), if reading => {
                let n = match read {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => n,
                };
                if let Err(reason) = input.push(&chunk[..n], &mut pending) {
                    // Serve what came before the bad frame, then close.
                    for request in pending.drain(..) {
                        if !matches!(request.request, Request::Auth { .. }) {
                            let _ = endpoint.commands.send(Command::Request { client, request });
                        }
                    }
                    break Some(reason);
                }
            }
            msg = from_node.recv() => {
                let Some(msg) = msg else { break None };
                if matches!(msg, ServerMessage::Reply { .. }) {
                    outstanding = outstanding.saturating_sub(1);
                }
                out.push(&msg);
                if out.unsent().len() > MAX_UNREAD_OUTPUT {
                    break Some(CloseReason::SlowReader);
                }
            }
            // Cancel-safe too: when another branch wins, nothing was written.
            written = writer.write(out.unsent()), if !out.unsent().is_empty() => match written {
                Ok(0) | Err(_) => break None,
                Ok(n) => out.advance(n),
            },
            () = sleep_until(frame_deadline) => break Some(CloseReason::FrameTimeout),
        }
    };
    // The node forgets the client first: its locks are released even if the
    // last words below never get through.
    let _ = endpoint.commands.send(Command::Disconnect { client });
    // What the node said before it dropped the session is still delivered.
    while let Ok(msg) = from_node.try_recv() {
        out.push(&msg);
    }
    if let Some(reason) = closing {
        endpoint.counters.count(rejection(reason));
        debug!(client = client.0, %reason, "closing a client connection");
        if reason == CloseReason::SlowReader {
            // Its unread output is what it is disconnected for.
            out = Output { buf: Vec::new(), sent: 0 };
        }
        out.push(&ServerMessage::Closing { reason });
    }
    let _ = tokio::time::timeout(LAST_WORDS, writer.write_all(out.unsent())).await;
    let _ = tokio::time::timeout(LAST_WORDS, writer.shutdown()).await;
    drop(slot);
}

/// Reads the first request, which must be `Auth` with the endpoint's
/// password, within the frame timeout; answers it. True if accepted;
/// requests that came behind it are left in `pending`.
async fn authenticate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    endpoint: &Endpoint,
    reader: &mut R,
    writer: &mut W,
    input: &mut Input,
    pending: &mut Vec<ClientRequest>,
) -> bool {
    let deadline = Instant::now() + endpoint.frame_timeout;
    let mut chunk = [0u8; 256];
    let first = loop {
        if !pending.is_empty() {
            break pending.remove(0);
        }
        let read = tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            Ok(_) => return false,
            Err(_) => {
                endpoint.counters.count(ClientRejection::Unauthorized);
                return false;
            }
        };
        if let Err(reason) = input.push(&chunk[..n], pending) {
            endpoint.counters.count(rejection(reason));
            return false;
        }
    };
    let expected = endpoint.token.as_deref().unwrap_or_default();
    let answer = match &first.request {
        Request::Auth { token } if same_token(token, expected) => {
            ServerMessage::Reply { id: first.id, reply: Reply::Authenticated }
        }
        Request::Auth { .. } => refusal(first.id, "wrong client token"),
        _ => refusal(first.id, "this endpoint requires a client token (Auth) first"),
    };
    let accepted = matches!(answer, ServerMessage::Reply { reply: Reply::Authenticated, .. });
    if !accepted {
        endpoint.counters.count(ClientRejection::Unauthorized);
        debug!("client connection refused: no valid client token");
    }
    if let Ok(frame) = client::encode(&answer) {
        let wrote = tokio::time::timeout(LAST_WORDS, writer.write_all(&frame)).await;
        if !matches!(wrote, Ok(Ok(()))) {
            return false;
        }
    }
    if !accepted {
        let _ = tokio::time::timeout(LAST_WORDS, writer.shutdown()).await;
    }
    accepted
}

fn refusal(id: u64, message: &str) -> ServerMessage {
    ServerMessage::Reply { id, reply: Reply::Error { message: message.to_string() } }
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

    fn frame(request: Request) -> Vec<u8> {
        client::encode(&ClientRequest { id: 7, request }).unwrap()
    }

    #[test]
    fn input_takes_complete_frames_and_keeps_the_rest() {
        let mut input = Input::new();
        let mut out = Vec::new();
        let mut bytes = frame(Request::Status);
        bytes.extend_from_slice(&frame(Request::Status)[..3]);
        input.push(&bytes, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(input.since.is_some(), "a partial frame is timed");
        input.push(&frame(Request::Status)[3..], &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(input.since.is_none() && input.buf.is_empty());
    }

    #[test]
    fn input_refuses_an_oversized_announcement_before_buffering_it() {
        let mut input = Input::new();
        let mut out = Vec::new();
        let prefix = ((MAX_REQUEST_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(input.push(&prefix, &mut out), Err(CloseReason::FrameTooLarge));
        let mut bad = Input::new();
        assert_eq!(bad.push(&[3, 0, 0, 0, 0xff, 0xff, 0xff], &mut out), Err(CloseReason::Malformed));
    }

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
