//! The Rust client library.
//!
//! ```no_run
//! # async fn demo() -> Result<(), swimlock::client::ClientError> {
//! use std::time::Duration;
//! use swimlock::client::Client;
//!
//! let client = Client::connect("127.0.0.1:7950").await?;
//! let mut guard = client.lock("db/orders", Duration::from_secs(5)).await?;
//! let token = guard.token(); // pass it to the fenced resource
//! tokio::select! {
//!     lost = guard.lost() => eprintln!("lost the lock: {lost}"),
//!     () = tokio::time::sleep(Duration::from_secs(1)) => {}
//! }
//! guard.unlock().await?; // or drop the guard
//! # let _ = token;
//! # Ok(()) }
//! ```
//!
//! A [`Client`] is one connection to a node, which is one lock owner: two
//! clients exclude each other, and one client locking a name it holds gets
//! the same token again (the lock is released when every guard is gone).
//! Closing the connection (dropping the client and all its guards) releases
//! its locks. Clones share the connection.
//!
//! In-process nodes ([`crate::agent::spawn`]) hand out clients with
//! [`crate::agent::Handle::client`]; the API is the same.
//!
//! A stopping node first asks its clients to let go of their locks:
//! [`LockGuard::lost`] then resolves with [`LostCause::AgentStopping`] while
//! the lock is still held, and the application should stop the work the
//! lock protects and unlock (or drop the guard) within the grace it names.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swimlock_wire::client::{
    self as proto, ClientRequest, FailReason, Reply, Request, ServerMessage, Status,
};
use swimlock_wire::{ClientId, LockName, Token, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::Command;

/// What went wrong with a client operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot connect to the swimlock agent at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection to the node closed.
    #[error("the connection to the swimlock agent closed")]
    Closed,
    /// `lock`: no grant before the timeout.
    #[error("timed out waiting for the lock")]
    TimedOut,
    /// `lock`: another owner holds the lock (only `try_lock` says so by
    /// returning `None`).
    #[error("the lock is held by another owner")]
    Busy,
    /// Mode `majority` and the node's side holds no majority.
    #[error("no quorum: this node's side of the cluster holds no majority of the members")]
    NoQuorum,
    /// `unlock` of a lock this client does not hold.
    #[error("the lock is not held by this client")]
    NotHeld,
    /// An invalid lock name.
    #[error("invalid lock name: {0}")]
    BadName(WireError),
    /// The node refused the request.
    #[error("the agent refused the request: {0}")]
    Server(String),
    /// The node sent something this library does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The endpoint requires a password (`client_token`) and refused the
    /// one given, or none was given.
    #[error("the agent refused the client token: {0}")]
    Unauthorized(String),
}

/// Why a held lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostCause {
    /// Held twice after a partition healed; the other holder kept it.
    Duplicate,
    /// Mode `majority`: the node's side lost its majority.
    QuorumLost,
    /// The connection to the node closed, so the lock is (or soon will be)
    /// released.
    ConnectionClosed,
    /// The lease ran out before the coordinator renewed it (the node was
    /// paused, or cut off from the coordinator).
    LeaseExpired,
    /// Not lost yet: the node is stopping and asks for the lock back. It
    /// stays held for at most `grace`; stop the work it protects, then
    /// unlock (or drop the guard). When the grace ends the node leaves the
    /// cluster without releasing it, and the lock is then treated as held
    /// by a departed member. [`LockGuard::lost`] resolves again if the lock
    /// is then really lost (for example the connection closes).
    AgentStopping {
        /// How long the node waits, counted from when it sent the notice.
        grace: Duration,
    },
}

/// A lock that is no longer held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The lock.
    pub name: LockName,
    /// The token that was held.
    pub token: Token,
    /// Why.
    pub cause: LostCause,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.cause {
            LostCause::Duplicate => "held twice after a partition healed; the other holder kept it",
            LostCause::QuorumLost => "this node's side of the cluster lost its majority",
            LostCause::ConnectionClosed => "the connection to the agent closed",
            LostCause::LeaseExpired => "its lease ran out before the coordinator renewed it",
            LostCause::AgentStopping { grace } => {
                let grace = humantime::format_duration(Duration::from_millis(grace.as_millis() as u64));
                return write!(
                    f,
                    "the agent is stopping: lock {} (token {}) must be let go within {grace}",
                    self.name, self.token
                );
            }
        };
        write!(f, "lock {} (token {}) lost: {why}", self.name, self.token)
    }
}

type LostTx = watch::Sender<Option<Lost>>;
type LostRx = watch::Receiver<Option<Lost>>;
/// Where the connection task hands a reply (and, for a grant, the lock's
/// loss channel).
type ReplyTx = oneshot::Sender<(Reply, Option<LostRx>)>;

/// State shared by the API and whoever delivers the node's messages.
#[derive(Default)]
pub(crate) struct Shared {
    /// Replies awaited, by request id; lock requests remember their name.
    waiting: BTreeMap<u64, (Option<LockName>, ReplyTx)>,
    /// Per held lock, its token and where its loss is announced.
    lost: BTreeMap<LockName, (Token, LostTx)>,
    closed: bool,
}

/// Where requests go.
enum Outbound {
    /// To the task that owns the connection's socket.
    Stream(mpsc::UnboundedSender<ClientRequest>),
    /// Straight to an in-process node's task, which answers through
    /// [`Session::Local`]: no relay between caller and node.
    Local { commands: mpsc::UnboundedSender<Command>, client: ClientId },
}

struct Inner {
    out: Outbound,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU64,
}

impl Inner {
    fn send(&self, request: ClientRequest) -> Result<(), ClientError> {
        match &self.out {
            Outbound::Stream(tx) => tx.send(request).map_err(|_| ClientError::Closed),
            Outbound::Local { commands, client } => {
                commands.send(Command::Request { client: *client, request }).map_err(|_| ClientError::Closed)
            }
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone: an in-process node releases the client's
    /// locks (a stream's task sees its channel close instead).
    fn drop(&mut self) {
        if let Outbound::Local { commands, client } = &self.out {
            let _ = commands.send(Command::Disconnect { client: *client });
        }
    }
}

/// How a node's task reaches one of its clients.
pub(crate) enum Session {
    /// A connection's task, which writes to the socket.
    Remote(mpsc::UnboundedSender<ServerMessage>),
    /// An in-process client: messages are routed to its waiting callers
    /// directly. Dropping it (the client left, or the node stopped) fails
    /// what is still waiting and marks held locks lost.
    Local(Arc<Mutex<Shared>>),
}

impl Session {
    /// Whether the client is in this process (its caller runs on a task
    /// that the node's answer wakes).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Session::Local(_))
    }

    /// Delivers `msg`; false if the client is gone.
    pub(crate) fn send(&self, msg: ServerMessage) -> bool {
        match self {
            Session::Remote(tx) => tx.send(msg).is_ok(),
            Session::Local(shared) => {
                dispatch(shared, msg);
                true
            }
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Session::Remote(_) => "Session::Remote",
            Session::Local(_) => "Session::Local",
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Session::Local(shared) = self {
            close(shared);
        }
    }
}

/// A connection to a swimlock node: one lock owner. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to a node's client endpoint: `HOST:PORT` (TCP) or
    /// `unix:PATH`.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Connection::open(addr).await?.into_client(None).await
    }

    /// Connects to a node's client endpoint that requires a password
    /// (`client_token`); with `None` it is [`Client::connect`].
    pub async fn connect_with_token(addr: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Connection::open(addr).await?.into_client(token).await
    }

    fn over_stream<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Client {
        let (out, requests) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        tokio::spawn(run_stream(stream, requests, shared.clone()));
        Client { inner: Arc::new(Inner { out: Outbound::Stream(out), shared, next_id: AtomicU64::new(1) }) }
    }

    /// A client of an in-process node.
    pub(crate) async fn local(commands: mpsc::UnboundedSender<Command>) -> Result<Client, ClientError> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (reply, client) = oneshot::channel();
        let session = Session::Local(shared.clone());
        commands.send(Command::Connect { session, reply }).map_err(|_| ClientError::Closed)?;
        let client = client.await.map_err(|_| ClientError::Closed)?;
        let out = Outbound::Local { commands, client };
        Ok(Client { inner: Arc::new(Inner { out, shared, next_id: AtomicU64::new(1) }) })
    }

    /// Waits up to `timeout` for `name`, behind earlier waiters.
    pub async fn lock(&self, name: &str, timeout: Duration) -> Result<LockGuard, ClientError> {
        let name = LockName::new(name).map_err(ClientError::BadName)?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.acquire(Request::Lock { name: name.clone(), timeout_ms }, name).await
    }

    /// Takes `name` if it is free now; `None` if another owner holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, ClientError> {
        let name = LockName::new(name).map_err(ClientError::BadName)?;
        match self.acquire(Request::TryLock { name: name.clone() }, name).await {
            Ok(guard) => Ok(Some(guard)),
            Err(ClientError::Busy) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The node's view and locks.
    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.request(Request::Status, None).await?.0 {
            Reply::Status(status) => Ok(*status),
            other => Err(unexpected(other)),
        }
    }

    /// Gives the endpoint its password.
    async fn authenticate(&self, token: &str) -> Result<(), ClientError> {
        match self.request(Request::Auth { token: token.to_string() }, None).await {
            Ok((Reply::Authenticated, _)) => Ok(()),
            Ok((other, _)) => Err(unexpected(other)),
            Err(ClientError::Server(message)) => Err(ClientError::Unauthorized(message)),
            Err(e) => Err(e),
        }
    }

    /// A keyring command for every member of the node's view (see
    /// `swimlock keyring`): how many members hold each key afterwards, and
    /// which failed. `Err(Server)` if the node runs insecure.
    pub async fn keyring(
        &self,
        op: swimlock_wire::admin::KeyringOp,
    ) -> Result<swimlock_wire::client::KeyringReport, ClientError> {
        match self.request(Request::Keyring { op }, None).await?.0 {
            Reply::Keyring(report) => Ok(*report),
            other => Err(unexpected(other)),
        }
    }

    /// Accepts coordinator terms up to `term` on this node (see
    /// `swimlock accept-term`); `Ok(true)` if its coordinator had stopped
    /// granting on a term jump.
    pub async fn accept_term(&self, term: u32) -> Result<bool, ClientError> {
        match self.request(Request::AcceptTerm { term }, None).await?.0 {
            Reply::TermAccepted { was_halted } => Ok(was_halted),
            other => Err(unexpected(other)),
        }
    }

    async fn acquire(&self, request: Request, name: LockName) -> Result<LockGuard, ClientError> {
        match self.request(request, Some(name.clone())).await? {
            (Reply::Acquired { token, holds }, Some(lost)) => Ok(LockGuard {
                client: self.clone(),
                name,
                token,
                holds,
                lost,
                reported: None,
                released: false,
            }),
            (Reply::Failed { reason: FailReason::Busy }, _) => Err(ClientError::Busy),
            (Reply::Failed { reason: FailReason::TimedOut }, _) => Err(ClientError::TimedOut),
            (Reply::Failed { reason: FailReason::NoQuorum }, _) => Err(ClientError::NoQuorum),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn unlock(&self, name: &LockName) -> Result<(), ClientError> {
        match self.request(Request::Unlock { name: name.clone() }, None).await?.0 {
            Reply::Unlocked => Ok(()),
            Reply::NotHeld => Err(ClientError::NotHeld),
            other => Err(unexpected(other)),
        }
    }

    /// Sends an unlock and does not wait for the answer (guard drop).
    fn unlock_nowait(&self, name: &LockName) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.send(ClientRequest { id, request: Request::Unlock { name: name.clone() } });
    }

    async fn request(
        &self,
        request: Request,
        lock: Option<LockName>,
    ) -> Result<(Reply, Option<LostRx>), ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut shared = self.inner.shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.closed {
                return Err(ClientError::Closed);
            }
            shared.waiting.insert(id, (lock, tx));
        }
        if let Err(e) = self.inner.send(ClientRequest { id, request }) {
            self.inner.shared.lock().unwrap_or_else(|e| e.into_inner()).waiting.remove(&id);
            return Err(e);
        }
        match rx.await {
            Ok((Reply::Error { message }, _)) => Err(ClientError::Server(message)),
            Ok(reply) => Ok(reply),
            Err(_) => Err(ClientError::Closed),
        }
    }
}

/// An open connection to a node's client endpoint that is not yet a
/// [`Client`]: lets the caller duplicate its socket first (`swimlock lock`
/// hands a copy to its guardian process, so that the node releases the lock
/// only once that process is gone too).
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
}

#[derive(Debug)]
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Connection {
    /// Connects to `HOST:PORT` (TCP) or `unix:PATH`.
    pub async fn open(addr: &str) -> Result<Connection, ClientError> {
        let err = |source| ClientError::Connect { addr: addr.to_string(), source };
        let stream = if let Some(path) = addr.strip_prefix("unix:") {
            Stream::Unix(tokio::net::UnixStream::connect(path).await.map_err(err)?)
        } else {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(err)?;
            let _ = stream.set_nodelay(true);
            Stream::Tcp(stream)
        };
        Ok(Connection { stream })
    }

    /// A new descriptor of the same socket (close-on-exec). The node sees
    /// the connection close only once every copy is closed.
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        match &self.stream {
            Stream::Tcp(s) => s.as_fd().try_clone_to_owned(),
            Stream::Unix(s) => s.as_fd().try_clone_to_owned(),
        }
    }

    /// Starts the client, first giving the endpoint its password if
    /// `token` is set ([`ClientError::Unauthorized`] if it is refused).
    pub async fn into_client(self, token: Option<&str>) -> Result<Client, ClientError> {
        let client = match self.stream {
            Stream::Tcp(s) => Client::over_stream(s),
            Stream::Unix(s) => Client::over_stream(s),
        };
        if let Some(token) = token {
            client.authenticate(token).await?;
        }
        Ok(client)
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {reply:?}"))
}

/// Routes one message from the node.
fn dispatch(shared: &Mutex<Shared>, msg: ServerMessage) {
    let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
    match msg {
        ServerMessage::Reply { id, reply } => {
            let Some((lock, tx)) = shared.waiting.remove(&id) else { return };
            // The loss channel exists before the caller sees the grant, so a
            // loss that follows at once is never missed.
            let lost = match (&reply, lock) {
                (Reply::Acquired { holds, token }, Some(name)) => {
                    let fresh = *holds == 1 || !shared.lost.contains_key(&name);
                    if fresh {
                        shared.lost.insert(name.clone(), (*token, watch::channel(None).0));
                    }
                    shared.lost.get(&name).map(|(_, tx)| tx.subscribe())
                }
                _ => None,
            };
            let _ = tx.send((reply, lost));
        }
        ServerMessage::Lost { name, token, reason } => {
            let cause = match reason {
                proto::LostReason::Duplicate => LostCause::Duplicate,
                proto::LostReason::QuorumLost => LostCause::QuorumLost,
                proto::LostReason::LeaseExpired => LostCause::LeaseExpired,
            };
            if let Some((_, tx)) = shared.lost.remove(&name) {
                let _ = tx.send(Some(Lost { name, token, cause }));
            }
        }
        ServerMessage::Stopping { grace_ms } => {
            // The locks stay in the map: a real loss may still follow.
            let cause = LostCause::AgentStopping { grace: Duration::from_millis(grace_ms) };
            for (name, (token, tx)) in &shared.lost {
                let _ = tx.send(Some(Lost { name: name.clone(), token: *token, cause }));
            }
        }
        ServerMessage::Closing { reason } => {
            // The connection closes next; say why to whoever waits.
            let message = reason.to_string();
            for (_, (_, tx)) in std::mem::take(&mut shared.waiting) {
                let _ = tx.send((Reply::Error { message: message.clone() }, None));
            }
        }
    }
}

/// The connection is gone: pending requests fail, held locks are lost.
fn close(shared: &Mutex<Shared>) {
    let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
    shared.closed = true;
    shared.waiting.clear();
    for (name, (token, tx)) in std::mem::take(&mut shared.lost) {
        let _ = tx.send(Some(Lost { name, token, cause: LostCause::ConnectionClosed }));
    }
}

async fn run_stream<S: AsyncRead + AsyncWrite>(
    stream: S,
    mut requests: mpsc::UnboundedReceiver<ClientRequest>,
    shared: Arc<Mutex<Shared>>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = Vec::with_capacity(4096);
    'conn: loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { break };
                let Ok(frame) = proto::encode(&request) else { continue };
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
            read = reader.read_buf(&mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                loop {
                    match proto::decode_frame::<ServerMessage>(&buf) {
                        Ok(Some((msg, used))) => {
                            buf.drain(..used);
                            dispatch(&shared, msg);
                        }
                        Ok(None) => break,
                        Err(_) => break 'conn,
                    }
                }
            }
        }
    }
    let _ = writer.shutdown().await;
    close(&shared);
}

/// A held lock. Dropping it releases one hold (without waiting); use
/// [`LockGuard::unlock`] to wait for the node's answer.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    name: LockName,
    token: Token,
    holds: u32,
    lost: LostRx,
    /// The last notice [`LockGuard::lost`] returned.
    reported: Option<Lost>,
    released: bool,
}

impl LockGuard {
    /// The fencing token of the grant: give it to the resource the lock
    /// protects, which rejects tokens lower than the highest it has seen.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The lock.
    pub fn name(&self) -> &LockName {
        &self.name
    }

    /// How many holds this client had right after this acquisition.
    pub fn holds(&self) -> u32 {
        self.holds
    }

    /// Whether the lock is known to be lost (a [`LostCause::AgentStopping`]
    /// notice alone does not count: the lock is still held then).
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().as_ref().is_some_and(|l| !matches!(l.cause, LostCause::AgentStopping { .. }))
    }

    /// Completes with the next notice about the lock: lost (duplicate after
    /// a partition healed, quorum lost, connection to the node closed), or
    /// [`LostCause::AgentStopping`], after which it can complete once more
    /// with the loss. Pending while the lock is held and nothing happened.
    /// Each notice is returned once.
    pub async fn lost(&mut self) -> Lost {
        loop {
            let current = self.lost.borrow_and_update().clone();
            if let Some(lost) = current
                && self.reported.as_ref() != Some(&lost)
            {
                self.reported = Some(lost.clone());
                return lost;
            }
            if self.lost.changed().await.is_err() {
                // The channel goes away only once the lock was released.
                return std::future::pending().await;
            }
        }
    }

    /// Releases this hold and waits for the node to accept it.
    pub async fn unlock(mut self) -> Result<(), ClientError> {
        self.released = true;
        self.client.unlock(&self.name).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released && !self.is_lost() {
            self.client.unlock_nowait(&self.name);
        }
    }
}
