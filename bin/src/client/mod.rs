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
//!
//! Leases: a lock is safe to use until [`LockGuard::safe_until`]. The node
//! renews its clients' leases with the coordinator, but a node that is
//! paused or cut off can tell its clients nothing, so each client counts
//! down itself: a grant carries the lease left, and a background task asks
//! the node again every quarter of what is left (one question per held
//! lock at a time). Each answer is counted from when the question was sent,
//! so `safe_until` is never later than the node's own deadline. When it
//! passes without a fresher answer, [`LockGuard::lost`] resolves with
//! [`LostCause::LeaseExpired`] (and the node's own notice of the same loss,
//! if one follows, is not reported again).

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use swimlock_wire::client::{
    self as proto, ClientRequest, FailReason, Reply, Request, ServerMessage, Status, ViewInfo,
};
use swimlock_wire::commands;
use swimlock_wire::resp::{self, Value};
use swimlock_wire::{ClientId, LockName, Token, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

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
    /// paused, or cut off from the coordinator), or before the node answered
    /// this client's lease question (the node may be paused).
    LeaseExpired,
    /// The node answered a lease question saying this client does not hold
    /// the lock (its own notice of why did not come first).
    NotHeld,
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
            LostCause::LeaseExpired => {
                "its lease ran out before it was renewed (or before the agent said it was)"
            }
            LostCause::NotHeld => "the agent says this client does not hold it",
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

/// What the guards of one held lock read: its lease and the latest notice.
/// A renewal changes it silently (nobody is woken); a notice wakes
/// [`LockGuard::lost`].
#[derive(Clone, Debug)]
struct LockState {
    /// The end of the lease on this process's clock.
    safe_until: Instant,
    /// The lease that was left when the answer setting `safe_until` came
    /// (for a grant that waited, the wait is not part of it).
    left_at_answer: Duration,
    /// Lost, or the node stopping.
    notice: Option<Lost>,
}

type StateTx = watch::Sender<LockState>;
type StateRx = watch::Receiver<LockState>;

/// A grant as the caller receives it: the lock's state and which hold
/// epoch of the lock it belongs to.
struct Grant {
    state: StateRx,
    generation: u64,
}

/// Where the connection task hands a reply (and, for a grant, the lock's
/// state).
type ReplyTx = oneshot::Sender<(Reply, Option<Grant>)>;

/// An answer awaited.
enum Waiter {
    /// A caller; a lock request names the lock and when it was sent.
    Call { lock: Option<(LockName, Instant)>, tx: ReplyTx },
    /// A lease question of [`keep_leases`], for one hold epoch of a lock.
    Lease { name: LockName, generation: u64, sent: Instant },
}

/// A lock this client holds, as far as it knows.
struct Held {
    token: Token,
    /// Tells this hold epoch from an earlier one of the same name (lost,
    /// then granted again).
    generation: u64,
    /// Guards not yet released.
    holds: u32,
    state: StateTx,
    /// When the next lease question is due.
    next_query: Instant,
    /// A lease question is awaiting its answer.
    asking: bool,
    /// The lease ran out here first: reported lost, not asked about again.
    expired: bool,
}

/// State shared by the API and whoever delivers the node's messages.
#[derive(Default)]
pub(crate) struct Shared {
    /// Answers awaited, by request id.
    waiting: BTreeMap<u64, Waiter>,
    /// The locks held.
    held: BTreeMap<LockName, Held>,
    closed: bool,
    next_generation: u64,
    /// When [`keep_leases`] wakes next; `None` while it waits to be told.
    lease_wake: Option<Instant>,
    /// Wakes [`keep_leases`]: only when a lease question falls due before
    /// it would wake anyway, or the connection closed.
    lease_task: Arc<Notify>,
    /// Where views go, for [`Client::watch_view`].
    views: Vec<mpsc::UnboundedSender<ViewInfo>>,
    /// Rounds of [`keep_leases`] so far.
    #[cfg(test)]
    lease_rounds: u64,
}

impl Shared {
    /// Makes sure [`keep_leases`] wakes by `at`.
    fn wake_leases_by(&mut self, at: Instant) {
        if self.lease_wake.is_none_or(|w| w > at) {
            self.lease_wake = Some(at);
            self.lease_task.notify_one();
        }
    }

    /// A grant of `name` with `lease_ms` for a request sent at `sent`: a new
    /// hold epoch, or one more hold of the current one.
    fn granted(
        &mut self,
        name: LockName,
        (token, holds): (Token, u32),
        sent: Instant,
        lease_ms: u64,
    ) -> Grant {
        let safe_until = deadline(sent, lease_ms);
        // Not from `sent`: a request that waited carries its wait in the lease.
        let now = Instant::now();
        let left = safe_until.saturating_duration_since(now);
        let fresh = || watch::channel(LockState { safe_until, left_at_answer: left, notice: None });
        let next_query = now + left / 4;
        match self.held.get_mut(&name) {
            Some(held) if holds > 1 && held.token == token && !held.expired => {
                held.holds = holds;
                held.state.send_if_modified(|s| {
                    if safe_until > s.safe_until {
                        s.safe_until = safe_until;
                        s.left_at_answer = left;
                    }
                    false
                });
                Grant { state: held.state.subscribe(), generation: held.generation }
            }
            // Counted out here, but the node still holds it: the new guard
            // gets a live state; the earlier guards keep their notice and
            // still release their holds.
            Some(held) if holds > 1 && held.token == token => {
                let (tx, rx) = fresh();
                *held = Held { holds, state: tx, next_query, asking: false, expired: false, ..*held };
                let generation = held.generation;
                self.wake_leases_by(next_query);
                Grant { state: rx, generation }
            }
            _ => {
                let generation = self.next_generation;
                self.next_generation += 1;
                let (tx, rx) = fresh();
                let held =
                    Held { token, generation, holds, state: tx, next_query, asking: false, expired: false };
                self.held.insert(name, held);
                self.wake_leases_by(next_query);
                Grant { state: rx, generation }
            }
        }
    }

    /// The answer to a lease question sent at `sent`.
    fn lease_answer(&mut self, name: LockName, generation: u64, sent: Instant, reply: Reply) {
        let Some(held) = self.held.get_mut(&name).filter(|h| h.generation == generation) else { return };
        held.asking = false;
        if held.expired {
            return;
        }
        match reply {
            Reply::Lease { lease_ms: Some(ms) } => {
                let now = Instant::now();
                let until = deadline(sent, ms);
                let mut latest = until;
                // Each answer is a lower bound of the node's deadline: keep the latest.
                held.state.send_if_modified(|s| {
                    if until > s.safe_until {
                        s.safe_until = until;
                        s.left_at_answer = until.saturating_duration_since(now);
                    }
                    latest = s.safe_until;
                    false
                });
                held.next_query = now + latest.saturating_duration_since(now) / 4;
                let next = held.next_query;
                self.wake_leases_by(next);
            }
            Reply::Lease { lease_ms: None } => {
                if let Some(held) = self.held.remove(&name) {
                    let token = held.token;
                    announce(&held, Lost { name, token, cause: LostCause::NotHeld });
                }
            }
            _ => {}
        }
    }

    /// Lets go of one hold of `name` in hold epoch `generation`. `Ok` when
    /// the node must be told (it still holds it as far as this client
    /// knows).
    fn release_hold(&mut self, name: &LockName, generation: u64) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        let Some(held) = self.held.get_mut(name).filter(|h| h.generation == generation) else {
            return Err(ClientError::NotHeld);
        };
        held.holds = held.holds.saturating_sub(1);
        if held.holds == 0 {
            self.held.remove(name);
        }
        Ok(())
    }
}

/// The end of a lease of `ms` counted from `sent`; one that does not fit
/// the clock counts as none.
fn deadline(sent: Instant, ms: u64) -> Instant {
    sent.checked_add(Duration::from_millis(ms)).unwrap_or(sent)
}

/// Announces `lost` to the guards of `held`. The lease ends with the loss.
fn announce(held: &Held, lost: Lost) {
    let now = Instant::now();
    held.state.send_modify(|s| {
        if !matches!(lost.cause, LostCause::AgentStopping { .. }) {
            s.safe_until = s.safe_until.min(now);
        }
        s.notice = Some(lost);
    });
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

    /// A client over `stream`, which first sends `HELLO 3` (with the
    /// password `token`); the receiver tells how the endpoint answered it.
    fn over_stream<S: AsyncRead + AsyncWrite + Send + 'static>(
        stream: S,
        token: Option<&str>,
    ) -> (Client, oneshot::Receiver<Result<(), ClientError>>) {
        let (out, requests) = mpsc::unbounded_channel();
        let (hello_tx, hello) = oneshot::channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let hello_cmd = hello_command(token);
        tokio::spawn(run_stream(stream, (hello_cmd, hello_tx), requests, shared.clone()));
        let client = Client::start(Inner { out: Outbound::Stream(out), shared, next_id: AtomicU64::new(1) });
        (client, hello)
    }

    /// Starts the lease task of a new client.
    fn start(inner: Inner) -> Client {
        let inner = Arc::new(inner);
        tokio::spawn(keep_leases(Arc::downgrade(&inner), inner.shared.clone()));
        Client { inner }
    }

    /// A client of an in-process node.
    pub(crate) async fn local(commands: mpsc::UnboundedSender<Command>) -> Result<Client, ClientError> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (reply, client) = oneshot::channel();
        let session = Session::Local(shared.clone());
        commands.send(Command::Connect { session, reply }).map_err(|_| ClientError::Closed)?;
        let client = client.await.map_err(|_| ClientError::Closed)?;
        let out = Outbound::Local { commands, client };
        Ok(Client::start(Inner { out, shared, next_id: AtomicU64::new(1) }))
    }

    /// Waits up to `timeout` for `name`, behind earlier waiters.
    pub async fn lock(&self, name: &str, timeout: Duration) -> Result<LockGuard, ClientError> {
        let name = LockName::new(name).map_err(ClientError::BadName)?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.acquire(Request::LockWithLease { name: name.clone(), timeout_ms }, name).await
    }

    /// Takes `name` if it is free now; `None` if another owner holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, ClientError> {
        let name = LockName::new(name).map_err(ClientError::BadName)?;
        match self.acquire(Request::TryLockWithLease { name: name.clone() }, name).await {
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

    /// Subscribes to the node's views: the stream yields the current view
    /// first, then every view the node installs, in order, with no gap and
    /// no repeat (one node task sends them all on this connection). Ask
    /// once per client.
    pub async fn watch_view(&self) -> Result<ViewWatch, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Registered before the request goes: the current view follows its answer.
        self.inner.shared.lock().unwrap_or_else(|e| e.into_inner()).views.push(tx);
        match self.request(Request::WatchView, None).await?.0 {
            Reply::Watching => Ok(ViewWatch { views: rx, _client: self.clone() }),
            other => Err(unexpected(other)),
        }
    }

    /// Accepts coordinator terms up to `term` on this node (see
    /// `swimlock accept-term`); `Ok(Some(t))` if its coordinator still
    /// stops on term `t`, above the one accepted.
    pub async fn accept_term(&self, term: u32) -> Result<Option<u32>, ClientError> {
        match self.request(Request::AcceptTerm { term }, None).await?.0 {
            Reply::TermAccepted { still_halted_on } => Ok(still_halted_on),
            other => Err(unexpected(other)),
        }
    }

    async fn acquire(&self, request: Request, name: LockName) -> Result<LockGuard, ClientError> {
        match self.request(request, Some(name.clone())).await? {
            (Reply::AcquiredWithLease { token, holds, .. }, Some(grant)) => Ok(LockGuard {
                client: self.clone(),
                name,
                token,
                holds,
                generation: grant.generation,
                state: grant.state,
                reported: None,
                released: false,
            }),
            (Reply::Failed { reason: FailReason::Busy }, _) => Err(ClientError::Busy),
            (Reply::Failed { reason: FailReason::TimedOut }, _) => Err(ClientError::TimedOut),
            (Reply::Failed { reason: FailReason::NoQuorum }, _) => Err(ClientError::NoQuorum),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Releases one hold of `name` in hold epoch `generation`.
    async fn unlock(&self, name: &LockName, generation: u64) -> Result<(), ClientError> {
        match self.ask(Request::Unlock { name: name.clone() }, Ask::Release(name, generation)).await?.0 {
            Reply::Unlocked => Ok(()),
            Reply::NotHeld => Err(ClientError::NotHeld),
            other => Err(unexpected(other)),
        }
    }

    /// Releases one hold without waiting for the answer (guard drop).
    fn unlock_nowait(&self, name: &LockName, generation: u64) {
        if self.release_hold(name, generation).is_err() {
            // Lost, or the connection closed: the node holds nothing to release.
            return;
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.send(ClientRequest { id, request: Request::Unlock { name: name.clone() } });
    }

    fn release_hold(&self, name: &LockName, generation: u64) -> Result<(), ClientError> {
        self.inner.shared.lock().unwrap_or_else(|e| e.into_inner()).release_hold(name, generation)
    }

    /// Sends `request` and waits for its answer. A lock request (`lock`
    /// names the lock) is stamped with its send time, from which the lease
    /// of its grant is counted.
    async fn request(
        &self,
        request: Request,
        lock: Option<LockName>,
    ) -> Result<(Reply, Option<Grant>), ClientError> {
        self.ask(request, lock.map_or(Ask::Plain, Ask::Lock)).await
    }

    /// [`Client::request`], with what `ask` says done in the same hold of
    /// the shared state.
    async fn ask(&self, request: Request, ask: Ask<'_>) -> Result<(Reply, Option<Grant>), ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut shared = self.inner.shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.closed {
                return Err(ClientError::Closed);
            }
            let lock = match ask {
                Ask::Plain => None,
                // Taken before the request can reach the node.
                Ask::Lock(name) => Some((name, Instant::now())),
                Ask::Release(name, generation) => {
                    shared.release_hold(name, generation)?;
                    None
                }
            };
            shared.waiting.insert(id, Waiter::Call { lock, tx });
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

/// What a request does to the client's own state as it is sent.
enum Ask<'a> {
    Plain,
    /// A lock request: stamped with its send time.
    Lock(LockName),
    /// An unlock: one hold of this hold epoch released.
    Release(&'a LockName, u64),
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

    /// Starts the client: RESP3 (`HELLO 3`), giving the endpoint its
    /// password if `token` is set ([`ClientError::Unauthorized`] if it is
    /// refused or missing).
    pub async fn into_client(self, token: Option<&str>) -> Result<Client, ClientError> {
        let (client, hello) = match self.stream {
            Stream::Tcp(s) => Client::over_stream(s, token),
            Stream::Unix(s) => Client::over_stream(s, token),
        };
        hello.await.map_err(|_| ClientError::Closed)??;
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
        ServerMessage::Reply { id, reply } => match shared.waiting.remove(&id) {
            Some(Waiter::Call { lock, tx }) => {
                // The lock's state exists before the caller sees the grant,
                // so a loss that follows at once is never missed.
                let grant = match (&reply, lock) {
                    (&Reply::AcquiredWithLease { token, holds, lease_ms }, Some((name, sent))) => {
                        Some(shared.granted(name, (token, holds), sent, lease_ms))
                    }
                    _ => None,
                };
                let _ = tx.send((reply, grant));
            }
            Some(Waiter::Lease { name, generation, sent }) => {
                shared.lease_answer(name, generation, sent, reply)
            }
            None => {}
        },
        ServerMessage::Lost { name, token, reason } => {
            let cause = match reason {
                proto::LostReason::Duplicate => LostCause::Duplicate,
                proto::LostReason::QuorumLost => LostCause::QuorumLost,
                proto::LostReason::LeaseExpired => LostCause::LeaseExpired,
            };
            // Only the hold epoch it is about; one already reported lost
            // here (its lease ran out first) is not reported again.
            if shared.held.get(&name).is_some_and(|h| h.token == token)
                && let Some(held) = shared.held.remove(&name)
                && !held.expired
            {
                announce(&held, Lost { name, token, cause });
            }
        }
        ServerMessage::View(view) => shared.views.retain(|tx| tx.send((*view).clone()).is_ok()),
        ServerMessage::Stopping { grace_ms } => {
            // The locks stay held: a real loss may still follow.
            let cause = LostCause::AgentStopping { grace: Duration::from_millis(grace_ms) };
            for (name, held) in shared.held.iter().filter(|(_, h)| !h.expired) {
                announce(held, Lost { name: name.clone(), token: held.token, cause });
            }
        }
        ServerMessage::Closing { reason } => {
            // The connection closes next; say why to whoever waits.
            let message = reason.to_string();
            for (_, waiter) in std::mem::take(&mut shared.waiting) {
                if let Waiter::Call { tx, .. } = waiter {
                    let _ = tx.send((Reply::Error { message: message.clone() }, None));
                }
            }
        }
    }
}

/// The connection is gone: pending requests fail, held locks are lost, the
/// lease task ends.
fn close(shared: &Mutex<Shared>) {
    let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
    shared.closed = true;
    shared.views.clear();
    shared.waiting.clear();
    for (name, held) in std::mem::take(&mut shared.held) {
        if !held.expired {
            announce(&held, Lost { name, token: held.token, cause: LostCause::ConnectionClosed });
        }
    }
    shared.lease_task.notify_one();
}

/// The lease task of one client: asks the node about each held lock every
/// quarter of the lease left (one question per lock at a time), and reports
/// a lock lost when its lease runs out before a fresher answer. Holds the
/// client weakly: it never keeps the connection open, and ends when the
/// connection closes.
async fn keep_leases(inner: Weak<Inner>, shared: Arc<Mutex<Shared>>) {
    let wake = shared.lock().unwrap_or_else(|e| e.into_inner()).lease_task.clone();
    let mut questions = Vec::new();
    loop {
        let at = {
            let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.closed {
                return;
            }
            #[cfg(test)]
            {
                shared.lease_rounds += 1;
            }
            let now = Instant::now();
            // With nothing held, stay armed until the deadline already set:
            // a client that locks and unlocks in a loop then wakes this task
            // about once per quarter lease, not once per grant.
            let at = due_leases(&mut shared, now, &mut questions).or(shared.lease_wake.filter(|w| *w > now));
            shared.lease_wake = at;
            at
        };
        if !questions.is_empty() {
            let Some(inner) = inner.upgrade() else { return };
            for (name, generation) in questions.drain(..) {
                let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
                let request = Request::Lease { name: name.clone() };
                {
                    let mut shared = inner.shared.lock().unwrap_or_else(|e| e.into_inner());
                    let sent = Instant::now();
                    shared.waiting.insert(id, Waiter::Lease { name, generation, sent });
                }
                if inner.send(ClientRequest { id, request }).is_err() {
                    return;
                }
            }
        }
        let sleep = async {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// At `now`: reports the locks whose lease ran out, marks the lease
/// questions due (pushed to `questions`), and returns when something is due
/// next.
fn due_leases(shared: &mut Shared, now: Instant, questions: &mut Vec<(LockName, u64)>) -> Option<Instant> {
    let mut next: Option<Instant> = None;
    for (name, held) in shared.held.iter_mut().filter(|(_, h)| !h.expired) {
        let until = held.state.borrow().safe_until;
        if until <= now {
            held.expired = true;
            announce(held, Lost { name: name.clone(), token: held.token, cause: LostCause::LeaseExpired });
            continue;
        }
        if !held.asking && held.next_query <= now {
            held.asking = true;
            questions.push((name.clone(), held.generation));
            // When the next one is due if this one is answered at once.
            held.next_query = now + until.saturating_duration_since(now) / 4;
        }
        // An answer that is late wakes the task itself; until then only
        // the end of the lease matters.
        let due = if held.asking && held.next_query <= now { until } else { held.next_query.min(until) };
        next = Some(next.map_or(due, |n| n.min(due)));
    }
    next
}

/// `HELLO 3`, with the password if there is one.
fn hello_command(token: Option<&str>) -> Vec<u8> {
    let mut args: Vec<&[u8]> = vec![b"HELLO", b"3"];
    if let Some(token) = token {
        args.extend([b"AUTH".as_slice(), b"default", token.as_bytes()]);
    }
    let mut out = Vec::new();
    resp::encode_command(&args, &mut out);
    out
}

/// A command sent on the stream, whose reply is awaited (replies come in
/// the order of the commands).
enum Sent {
    Hello(oneshot::Sender<Result<(), ClientError>>),
    Request(u64, Request),
}

/// What the endpoint answered to `HELLO 3`.
fn hello_result(v: Value) -> Result<(), ClientError> {
    match v {
        Value::Map(_) if v.get("proto").and_then(Value::as_int) == Some(3) => Ok(()),
        Value::Error(e) if e.starts_with("NOAUTH") => {
            Err(ClientError::Unauthorized("this endpoint requires a client token".into()))
        }
        Value::Error(e) if e.starts_with("WRONGPASS") => {
            Err(ClientError::Unauthorized("wrong client token".into()))
        }
        other => Err(ClientError::Protocol(format!("the endpoint did not take HELLO 3: {other:?}"))),
    }
}

/// A RESP3 frame as a [`Value`]; kinds the endpoint never sends become
/// text or null.
fn value_of(frame: redis_protocol::resp3::types::OwnedFrame) -> Value {
    use redis_protocol::resp3::types::OwnedFrame as F;
    match frame {
        F::SimpleString { data, .. } => Value::Simple(String::from_utf8_lossy(&data).into_owned()),
        F::SimpleError { data, .. } => Value::Error(data),
        F::BlobError { data, .. } => Value::Error(String::from_utf8_lossy(&data).into_owned()),
        F::Number { data, .. } => Value::Int(data),
        F::BlobString { data, .. } | F::VerbatimString { data, .. } => Value::Bulk(data),
        F::Boolean { data, .. } => Value::Bool(data),
        F::Array { data, .. } => Value::Array(data.into_iter().map(value_of).collect()),
        F::Set { data, .. } => Value::Array(data.into_iter().map(value_of).collect()),
        F::Push { data, .. } => Value::Push(data.into_iter().map(value_of).collect()),
        F::Map { data, .. } => {
            Value::Map(data.into_iter().map(|(k, v)| (value_of(k), value_of(v))).collect())
        }
        F::Double { data, .. } => Value::Simple(data.to_string()),
        F::BigNumber { data, .. } => Value::Simple(String::from_utf8_lossy(&data).into_owned()),
        _ => Value::Null,
    }
}

/// Largest reply the client buffers (a `STATUS` of a very large table).
const MAX_REPLY: usize = 64 << 20;

async fn run_stream<S: AsyncRead + AsyncWrite>(
    stream: S,
    (hello, hello_tx): (Vec<u8>, oneshot::Sender<Result<(), ClientError>>),
    mut requests: mpsc::UnboundedReceiver<ClientRequest>,
    shared: Arc<Mutex<Shared>>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = Vec::with_capacity(4096);
    let mut sent = std::collections::VecDeque::new();
    let mut out = Vec::new();
    if writer.write_all(&hello).await.is_err() {
        let _ = hello_tx.send(Err(ClientError::Closed));
        close(&shared);
        return;
    }
    sent.push_back(Sent::Hello(hello_tx));
    'conn: loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { break };
                // Whatever else is ready goes in the same write.
                let mut next = Some(request);
                while let Some(ClientRequest { id, request }) = next {
                    resp::encode_command(&commands::command_args(&request), &mut out);
                    sent.push_back(Sent::Request(id, request));
                    next = requests.try_recv().ok();
                }
                if writer.write_all(&out).await.is_err() {
                    break;
                }
                out.clear();
            }
            read = reader.read_buf(&mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                let mut used = 0;
                loop {
                    match redis_protocol::resp3::decode::complete::decode(&buf[used..]) {
                        Ok(Some((frame, n))) => {
                            used += n;
                            if !on_frame(&shared, &mut sent, value_of(frame)) {
                                break 'conn;
                            }
                        }
                        Ok(None) if buf.len() - used > MAX_REPLY => break 'conn,
                        Ok(None) => break,
                        Err(_) => break 'conn,
                    }
                }
                buf.drain(..used);
            }
        }
    }
    let _ = writer.shutdown().await;
    close(&shared);
}

/// Routes one frame from the endpoint: a push, or the reply to the oldest
/// command sent. False when the connection must end.
fn on_frame(shared: &Mutex<Shared>, sent: &mut std::collections::VecDeque<Sent>, v: Value) -> bool {
    if let Value::Push(items) = &v {
        if let Some(msg) = commands::push_from_value(items) {
            dispatch(shared, msg);
        }
        return true;
    }
    match sent.pop_front() {
        Some(Sent::Hello(tx)) => {
            let result = hello_result(v);
            let ok = result.is_ok();
            let _ = tx.send(result);
            ok
        }
        Some(Sent::Request(id, request)) => {
            let reply = commands::reply_from_value(&request, v);
            dispatch(shared, ServerMessage::Reply { id, reply });
            true
        }
        // An error nobody asked for: the endpoint is closing the connection.
        None => true,
    }
}

/// The views of a node, from [`Client::watch_view`]. Holds its client's
/// connection open.
#[derive(Debug)]
pub struct ViewWatch {
    views: mpsc::UnboundedReceiver<ViewInfo>,
    _client: Client,
}

impl ViewWatch {
    /// The next view; `None` once the connection closed.
    pub async fn next(&mut self) -> Option<ViewInfo> {
        self.views.recv().await
    }
}

/// A held lock. Dropping it releases one hold (without waiting); use
/// [`LockGuard::unlock`] to wait for the node's answer.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    name: LockName,
    token: Token,
    holds: u32,
    /// The hold epoch this guard belongs to.
    generation: u64,
    state: StateRx,
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
        let state = self.state.borrow();
        state.notice.as_ref().is_some_and(|l| !matches!(l.cause, LostCause::AgentStopping { .. }))
    }

    /// Until when the lock is safe to use, as far as this client knows: the
    /// lease its node last reported, counted from when this client asked,
    /// so never later than the node's own deadline. Work that the lock
    /// protects must be over by then. Moved later by the lease questions
    /// the client asks in the background (no notice is sent when it moves:
    /// read it again); once the lock is lost, it is no later than when that
    /// became known. [`LockGuard::lost`] resolves with
    /// [`LostCause::LeaseExpired`] when it passes without a fresher answer.
    pub fn safe_until(&self) -> std::time::Instant {
        self.state.borrow().safe_until.into_std()
    }

    /// [`LockGuard::safe_until`], and the lease that was left when the
    /// answer that set it arrived; `None` once the lock is known lost (read
    /// together, so a deadline cut short by a loss is never taken for a
    /// renewal).
    pub(crate) fn lease(&self) -> Option<(Instant, Duration)> {
        let state = self.state.borrow();
        let lost = state.notice.as_ref().is_some_and(|l| !matches!(l.cause, LostCause::AgentStopping { .. }));
        (!lost).then_some((state.safe_until, state.left_at_answer))
    }

    /// Completes with the next notice about the lock: lost (duplicate after
    /// a partition healed, quorum lost, lease run out, connection to the
    /// node closed), or
    /// [`LostCause::AgentStopping`], after which it can complete once more
    /// with the loss. Pending while the lock is held and nothing happened.
    /// Each notice is returned once.
    pub async fn lost(&mut self) -> Lost {
        loop {
            let current = self.state.borrow_and_update().notice.clone();
            if let Some(lost) = current
                && self.reported.as_ref() != Some(&lost)
            {
                self.reported = Some(lost.clone());
                return lost;
            }
            if self.state.changed().await.is_err() {
                // The channel goes away only once the lock was released.
                return std::future::pending().await;
            }
        }
    }

    /// Releases this hold and waits for the node to accept it.
    pub async fn unlock(mut self) -> Result<(), ClientError> {
        self.released = true;
        self.client.unlock(&self.name, self.generation).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released {
            self.client.unlock_nowait(&self.name, self.generation);
        }
    }
}

#[cfg(test)]
mod lease_tests;
