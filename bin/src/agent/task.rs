//! The node task: the only owner of the [`Node`] core.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use swimlock_lock::{Event, Failure, LossReason};
use swimlock_wire::client::{
    ClientRequest, FailReason, HeldInfo, LostReason, MAX_DEPARTED, MemberInfo, MemberState, Reply, Request,
    ServerMessage, Status, TableEntry, TableInfo, ViewInfo,
};
use swimlock_wire::frame::MAX_DATAGRAM;
use swimlock_wire::{ClientId, LockName, ReqId};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::awake::{Awake, thread_cpu_time};
use super::config::{AgentConfig, ConfigError};
use super::keyring::KeyringStore;
use super::state::{TagStore, TermStore};
use crate::client::Session;
use crate::metrics::{Metrics, WaitResult};
use crate::node::seal::Keyring;
use crate::node::{KeyringReport, Node, NodeConfig, NodeEvent, Security};

/// Longest wait a client may ask for; longer requests are capped (and the
/// deadline arithmetic can never overflow).
const MAX_LOCK_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Inputs taken at most, after the one that woke the task, before what they
/// produced is sent.
const MAX_BATCH: usize = 64;
/// How long a stopping node waits for the coordinator to confirm the
/// releases of its clients' locks before it leaves anyway (leaving releases
/// them too, after failure detection).
const RELEASE_GRACE: Duration = Duration::from_secs(1);
/// Turns of a poll between two looks at the thread's CPU time.
const CPU_CHECK_TURNS: u32 = 8;
/// How long each stage of a keyring command waits for the members.
const KEYRING_TIMEOUT: Duration = Duration::from_secs(5);

/// What the rest of the agent asks the node task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A new client: the task answers with its id and sends it
    /// [`ServerMessage`]s on `events` until it disconnects.
    Connect { session: Session, reply: oneshot::Sender<ClientId> },
    /// A request of a connected client.
    Request { client: ClientId, request: ClientRequest },
    /// The client went away: release its locks.
    Disconnect { client: ClientId },
    /// A configuration reload: the settings that can change at run time.
    Reload { change: Reload, reply: oneshot::Sender<Vec<String>> },
    /// Stop: ask the clients holding locks to let go (up to the stop
    /// grace), release what was let go, leave the cluster. A second one
    /// ends the grace at once.
    Shutdown,
}

/// What a configuration reload changes in the node task.
#[derive(Debug, Default)]
pub(crate) struct Reload {
    /// A new lock-delay, applied only if the lease inequality still holds.
    pub lock_delay: Option<Duration>,
    /// A key (from a changed key file) to accept.
    pub key: Option<crate::node::seal::Key>,
}

/// The node is stopping: it waits for the clients it told to let go.
#[derive(Debug)]
struct Stopping {
    /// When the node leaves, whatever is still held.
    deadline: Instant,
}

/// A lock request waiting for its outcome.
#[derive(Debug)]
struct PendingOp {
    client: ClientId,
    id: u64,
    started: Instant,
    /// When the task took the request, on the node's clock: a grant's lease
    /// is counted from here (see [`Reply::AcquiredWithLease`]).
    received: Duration,
    /// Whether the grant is answered with its lease.
    with_lease: bool,
}

pub(crate) struct NodeTask {
    node: Node,
    socket: UdpSocket,
    origin: Instant,
    name: String,
    bind: SocketAddr,
    mode: String,
    sessions: BTreeMap<ClientId, Session>,
    ops: BTreeMap<ReqId, PendingOp>,
    next_client: u64,
    metrics: Metrics,
    coordinator: bool,
    terms: Option<TermStore>,
    /// An in-process caller was answered since the task last yielded: it
    /// may have a new request ready once it runs.
    woke_local: bool,
    /// When to poll the socket instead of sleeping.
    awake: Awake,
    /// [`NodeCounters::lock_ops_in`](crate::node::NodeCounters) and
    /// `lock_ops_out` as last seen.
    lock_ops_seen: (u64, u64),
    /// Lock messages are held back until an answer comes or this time
    /// passes (see [`Node::set_corked`]).
    cork_until: Option<Instant>,
    /// This node's tag, where a changed one is saved, and whether it was
    /// configured (a change then warns).
    tag: u16,
    tags: Option<TagStore>,
    tag_configured: bool,
    /// A newer process took this node's address: the task stops.
    superseded: bool,
    /// See [`AgentConfig::stop_grace`].
    stop_grace: Duration,
    /// Set once asked to stop.
    stopping: Option<Stopping>,
    /// The command channel closed: nobody can ask anything any more.
    commands_closed: bool,
    /// Where the keyring is saved (with a state directory).
    keyring_store: Option<KeyringStore>,
    /// Keyring commands in flight: the asking client and its request id.
    keyring_ops: BTreeMap<u64, (ClientId, u64)>,
    /// The members of the last view installed, and those that left views
    /// since (the latest [`MAX_DEPARTED`]), for `Status`.
    members: Vec<MemberInfo>,
    departed: Vec<MemberInfo>,
    /// Members a component needs to grant, in mode `majority`.
    quorum: Option<u32>,
    /// Clients that asked for views, and the last view installed as they
    /// are told it.
    watchers: BTreeSet<ClientId>,
    last_view: Option<ViewInfo>,
    /// Dropped when the task ends, which stops the listeners.
    _stopped: oneshot::Sender<()>,
}

impl NodeTask {
    pub fn new(
        config: &AgentConfig,
        epoch: u64,
        socket: UdpSocket,
        (terms, term_floor): (Option<TermStore>, u32),
        (security, keyring_store): (Security, Option<KeyringStore>),
        stopped: oneshot::Sender<()>,
    ) -> Result<NodeTask, ConfigError> {
        let me = swimlock_wire::NodeId { epoch, addr: config.advertise };
        let node_config = NodeConfig {
            name: config.name.clone(),
            cluster: config.cluster.clone(),
            security,
            seeds: config.seeds.clone(),
            lock: config.lock.clone(),
            membership: config.membership.clone(),
            join_timeout: config.join_timeout,
        };
        // The seed only spreads probe targets; the start stamp differs per process.
        let node = Node::with_term_floor(me, node_config, epoch ^ u64::from(config.lock.tag), term_floor)?;
        Ok(NodeTask {
            node,
            socket,
            origin: Instant::now(),
            name: config.name.clone(),
            bind: config.bind,
            mode: config.mode_name(),
            sessions: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_client: 1,
            metrics: Metrics::new(),
            coordinator: false,
            terms,
            woke_local: false,
            awake: Awake::new(config.adaptive_poll, config.busy_poll),
            lock_ops_seen: (0, 0),
            cork_until: None,
            tag: config.lock.tag,
            tags: None,
            tag_configured: config.node_tag_configured,
            superseded: false,
            stop_grace: config.stop_grace,
            stopping: None,
            commands_closed: false,
            keyring_store,
            keyring_ops: BTreeMap::new(),
            members: Vec::new(),
            departed: Vec::new(),
            watchers: BTreeSet::new(),
            last_view: None,
            quorum: match config.lock.mode {
                swimlock_lock::Mode::Majority { members } => {
                    Some(u32::try_from(members.get() / 2 + 1).unwrap_or(u32::MAX))
                }
                swimlock_lock::Mode::Available => None,
            },
            _stopped: stopped,
        })
    }

    /// Saves every tag the node changes to in `tags` (the state directory).
    pub fn with_tag_store(mut self, tags: Option<TagStore>) -> NodeTask {
        self.tags = tags;
        self
    }

    pub fn metrics_handle(&self) -> PrometheusHandle {
        self.metrics.handle()
    }

    pub fn readiness(&self) -> tokio::sync::watch::Receiver<crate::http::Readiness> {
        self.metrics.readiness()
    }

    pub fn client_counters(&self) -> crate::metrics::ClientCounters {
        self.metrics.client_counters()
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        self.node.start(self.now());
        self.drain().await;
        // One timer, moved only to an earlier deadline: re-arming a timer
        // wakes the runtime's driver, and most inputs push the node's next
        // deadline later (a retransmission due 20 ms on). Firing early is
        // harmless; the node handles what is due and asks again.
        let timer = tokio::time::sleep_until(self.origin);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let wanted = self.node.poll_timeout().map(|d| self.origin + d);
            if let Some(at) = wanted
                && armed.is_none_or(|a| at < a)
            {
                timer.as_mut().reset(at);
                armed = Some(at);
            }
            let lock = self.node.lock_node();
            let expects = || lock.is_coordinator() || lock.pending_ops() > 0;
            let poll_until = self.awake.poll_until(Instant::now(), expects);
            let polled = match poll_until {
                Some(until) => {
                    let until = [armed, self.cork_until].into_iter().flatten().fold(until, Instant::min);
                    self.poll_busily(&commands, &mut buf, until).await
                }
                None => false,
            };
            if !polled && self.cork_until.is_some_and(|c| Instant::now() >= c) {
                self.uncork();
            } else if !polled {
                let stop_deadline = self.stopping.as_ref().map(|s| s.deadline);
                tokio::select! {
                    command = commands.recv(), if !self.commands_closed => match command {
                        Some(command) => self.on_command(command),
                        None => {
                            self.commands_closed = true;
                            self.begin_stop();
                        }
                    },
                    received = self.socket.recv_from(&mut buf) => match received {
                        Ok((len, from)) => self.on_datagram(from, &buf[..len]),
                        Err(e) => debug!(error = %e, "UDP receive failed"),
                    },
                    () = &mut timer, if armed.is_some() => {
                        armed = None;
                        self.node.handle_timeout(self.now());
                    }
                    () = sleep_until(stop_deadline), if stop_deadline.is_some() => {}
                    () = sleep_until(self.cork_until), if self.cork_until.is_some() => self.uncork(),
                }
            }
            self.batch(&mut commands, &mut buf).await;
            // A node whose address a newer process took can do nothing more.
            if self.superseded || self.stop_due() {
                break;
            }
        }
        self.stop(&mut buf).await;
    }

    /// Polls the socket until `until` (see [`Awake`]): true once a datagram
    /// was handled, false when the time is up, a command waits, or the
    /// thread is found competing for its CPU. Each turn yields, so the
    /// runtime's other tasks run and its driver looks at the sockets
    /// without sleeping.
    async fn poll_busily(
        &mut self,
        commands: &mpsc::UnboundedReceiver<Command>,
        buf: &mut [u8],
        until: Instant,
    ) -> bool {
        let (wall, cpu) = (Instant::now(), thread_cpu_time());
        let mut turns = 0u32;
        let got = loop {
            let now = Instant::now();
            if now >= until {
                break false;
            }
            turns += 1;
            if turns.is_multiple_of(CPU_CHECK_TURNS)
                && self.awake.polled(now, now - wall, thread_cpu_time().saturating_sub(cpu))
            {
                return false;
            }
            tokio::task::yield_now().await;
            if !commands.is_empty() {
                break false;
            }
            if let Ok((len, from)) = self.socket.try_recv_from(buf) {
                self.on_datagram(from, &buf[..len]);
                break true;
            }
        };
        let now = Instant::now();
        self.awake.polled(now, now - wall, thread_cpu_time().saturating_sub(cpu));
        got
    }

    /// One datagram from the socket, to the node; notes lock traffic.
    fn on_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        let at = Instant::now();
        self.node.handle_datagram(self.now(), from, datagram);
        self.awake.datagram(at);
        let ops_in = self.node.counters().lock_ops_in;
        if ops_in != self.lock_ops_seen.0 {
            self.lock_ops_seen.0 = ops_in;
            self.awake.lock_received(at);
            self.uncork();
        }
    }

    /// What was held back goes out with the next drain.
    fn uncork(&mut self) {
        if self.cork_until.take().is_some() {
            self.node.set_corked(false);
        }
    }

    /// After an input: answers the clients, lets the in-process callers it
    /// answered run (an application's next request usually follows at once)
    /// and takes what is ready by then, for as long as that brings new input
    /// (at most [`MAX_BATCH`] inputs); only then sends, so that what goes to
    /// one peer leaves in one datagram.
    async fn batch(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>, buf: &mut [u8]) {
        // The timer of a hold fires on the runtime's millisecond grain; an
        // input after the hold ended lets what waited go out at once.
        if self.cork_until.is_some_and(|c| Instant::now() >= c) {
            self.uncork();
        }
        let mut taken = 0;
        'rounds: while taken < MAX_BATCH {
            self.deliver_events();
            if std::mem::take(&mut self.woke_local) {
                tokio::task::yield_now().await;
            }
            let before = taken;
            while taken < MAX_BATCH {
                match commands.try_recv() {
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        if !self.commands_closed {
                            self.commands_closed = true;
                            self.begin_stop();
                        }
                        break 'rounds;
                    }
                    Ok(command) => self.on_command(command),
                    Err(mpsc::error::TryRecvError::Empty) => match self.socket.try_recv_from(buf) {
                        Ok((len, from)) => self.on_datagram(from, &buf[..len]),
                        Err(_) => break,
                    },
                }
                taken += 1;
            }
            if taken == before {
                break;
            }
        }
        self.drain().await;
    }

    /// The stop begins: clients without locks are closed (their waiting
    /// requests withdrawn); every client holding a lock is told
    /// [`ServerMessage::Stopping`] and has [`AgentConfig::stop_grace`] to
    /// unlock or disconnect, while the node keeps serving unlocks (new lock
    /// requests are refused). Asked again, the grace ends now.
    fn begin_stop(&mut self) {
        if let Some(stopping) = &mut self.stopping {
            stopping.deadline = Instant::now();
            return;
        }
        let now = self.now();
        let holders: BTreeSet<ClientId> = self.node.lock_node().held().iter().map(|h| h.client).collect();
        let idle: Vec<ClientId> = self.sessions.keys().filter(|c| !holders.contains(c)).copied().collect();
        for client in idle {
            self.sessions.remove(&client);
            self.ops.retain(|_, op| op.client != client);
            self.node.release_client(now, client);
        }
        let grace_ms = u64::try_from(self.stop_grace.as_millis()).unwrap_or(u64::MAX);
        for client in &holders {
            self.notify_stopping(*client, grace_ms);
        }
        info!(
            clients = holders.len(),
            locks = self.node.lock_node().held_count(),
            grace = ?self.stop_grace,
            "stopping: asked the clients holding locks to let go of them"
        );
        self.stopping = Some(Stopping { deadline: Instant::now() + self.stop_grace });
    }

    fn notify_stopping(&mut self, client: ClientId, grace_ms: u64) {
        if let Some(session) = self.sessions.get(&client) {
            session.send(ServerMessage::Stopping { grace_ms });
            self.woke_local |= session.is_local();
        }
    }

    /// Whether the stop grace is over: every lock was let go, or time is up.
    fn stop_due(&self) -> bool {
        self.stopping
            .as_ref()
            .is_some_and(|s| self.node.lock_node().held_count() == 0 || Instant::now() >= s.deadline)
    }

    /// After the stop grace: withdraws what is still waiting, waits (briefly)
    /// until the coordinator has confirmed the releases, then leaves. Locks
    /// still held are not released: they are logged, and the cluster treats
    /// them as held by a departed member (lock-delay), so that no waiter is
    /// granted one while its holder may still be using it.
    async fn stop(&mut self, buf: &mut [u8]) {
        self.uncork();
        let now = self.now();
        let left = self.node.lock_node().held();
        if !left.is_empty() {
            let locks: Vec<String> = left
                .iter()
                .map(|h| format!("{} (token {}, client {})", h.name, h.token, h.client.0))
                .collect();
            warn!(
                ?locks,
                "stop grace over: leaving the cluster without releasing these locks; \
                 they are granted again only after the departed-holder delay"
            );
        }
        let holders: BTreeSet<ClientId> = left.iter().map(|h| h.client).collect();
        let clients: Vec<ClientId> = self.sessions.keys().filter(|c| !holders.contains(c)).copied().collect();
        for client in clients {
            self.node.release_client(now, client);
        }
        self.ops.clear();
        self.drain().await;
        let give_up = Instant::now() + RELEASE_GRACE;
        while self.node.lock_node().pending_releases() > 0 && Instant::now() < give_up {
            let deadline = self.node.poll_timeout().map(|d| (self.origin + d).min(give_up)).or(Some(give_up));
            tokio::select! {
                received = self.socket.recv_from(buf) => if let Ok((len, from)) = received {
                    self.on_datagram(from, &buf[..len]);
                },
                () = sleep_until(deadline) => self.node.handle_timeout(self.now()),
            }
            self.drain().await;
        }
        self.node.leave(self.now());
        self.drain().await;
        // Only now do the clients see their connections close.
        self.sessions.clear();
        info!(name = %self.name, "left the cluster");
    }

    /// Routes the node's events and sends its datagrams.
    async fn drain(&mut self) {
        self.deliver_events();
        let ops_out = self.node.counters().lock_ops_out;
        if ops_out != self.lock_ops_seen.1 {
            self.lock_ops_seen.1 = ops_out;
            let now = Instant::now();
            self.awake.lock_sent(now);
            // Until these are answered, what follows waits to share a
            // datagram (never on the coordinator, whose answers go at once).
            let stopping = self.stopping.is_some() || self.superseded;
            if !self.node.lock_node().is_coordinator() && !stopping {
                self.cork_until = Some(now + self.awake.hold());
                self.node.set_corked(true);
            }
        }
        while let Some((to, datagram)) = self.node.poll_transmit() {
            if let Err(e) = self.socket.send_to(&datagram, to).await {
                debug!(%to, error = %e, "UDP send failed");
            }
        }
        self.log_notices();
        self.metrics.update(&self.node);
    }

    /// Logs what the coordinator did (one INFO line each).
    fn log_notices(&mut self) {
        use swimlock_lock::Notice;
        while let Some(notice) = self.node.poll_notice() {
            let name = |id: swimlock_wire::NodeId| member_name(&self.node, id);
            match notice {
                Notice::ReconciliationFinished { term, locks, duplicates } => {
                    info!(term, locks, duplicates, "reconciliation finished; serving")
                }
                Notice::DuplicateResolved { name: lock, kept, lost, loser } => info!(
                    lock = %lock, %kept, %lost, loser = %name(loser),
                    "duplicate lock resolved: the higher token stays, the other holder is told"
                ),
                Notice::DepartedLockRegranted { name: lock, departed, token, to } => info!(
                    lock = %lock, departed = %name(departed), %token, to = %name(to),
                    "lock of a departed member granted to its next waiter"
                ),
            }
        }
    }

    /// Routes the node's events to clients and logs, until the node has no
    /// more (saving a keyring releases answers and may end commands). A new
    /// coordinator term is saved first: nothing granted under it may leave
    /// the node before it is durable.
    fn deliver_events(&mut self) {
        loop {
            let mut events = Vec::new();
            while let Some(event) = self.node.poll_event() {
                events.push(event);
            }
            if events.is_empty() {
                return;
            }
            self.deliver(events);
        }
    }

    fn deliver(&mut self, events: Vec<NodeEvent>) {
        let term = events
            .iter()
            .filter_map(|e| match e {
                NodeEvent::Lock(Event::TermStarted { term }) => Some(*term),
                _ => None,
            })
            .max();
        if let (Some(term), Some(store)) = (term, &self.terms)
            && let Err(e) = store.save(term)
        {
            error!(term, error = %e, "cannot save the coordinator term; tokens may repeat after a restart");
        }
        for event in events {
            self.on_event(event);
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            // A stopping node takes no new clients (the caller sees a close).
            Command::Connect { .. } if self.stopping.is_some() => {}
            Command::Connect { session, reply } => {
                let client = ClientId(self.next_client);
                self.next_client += 1;
                if reply.send(client).is_ok() {
                    self.sessions.insert(client, session);
                    debug!(client = client.0, "client connected");
                }
            }
            Command::Request { client, request } => self.on_request(now, client, request),
            Command::Disconnect { client } => {
                self.watchers.remove(&client);
                if self.sessions.remove(&client).is_some() {
                    debug!(client = client.0, "client disconnected; releasing its locks");
                    self.ops.retain(|_, op| op.client != client);
                    self.node.release_client(now, client);
                }
            }
            Command::Shutdown => self.begin_stop(),
            Command::Reload { change, reply } => {
                let _ = reply.send(self.reload(change));
            }
        }
    }

    /// Applies a reload; one line per setting, saying what changed or why
    /// it did not.
    fn reload(&mut self, change: Reload) -> Vec<String> {
        let mut report = Vec::new();
        if let Some(delay) = change.lock_delay {
            let old = self.node.lock_node().config().lock_delay;
            report.push(match self.node.set_lock_delay(delay) {
                Ok(()) => format!("lock_delay changed from {old:?} to {delay:?}"),
                Err(e) => format!("lock_delay {delay:?} refused, still {old:?}: {}", e.reason),
            });
        }
        if let Some(key) = change.key {
            let id = key.id();
            report.push(match self.node.install_key(key) {
                Ok(true) => format!(
                    "key {id} from the key file installed in the keyring (accepted;                      `swimlock keyring use` makes it the one sent with)"
                ),
                Ok(false) => format!("key {id} from the key file is already in the keyring"),
                Err(e) => format!("key {id} from the key file refused: {e}"),
            });
        }
        report
    }

    fn on_request(&mut self, now: Duration, client: ClientId, request: ClientRequest) {
        if !self.sessions.contains_key(&client) {
            return;
        }
        let id = request.id;
        if self.stopping.is_some()
            && matches!(
                request.request,
                Request::Lock { .. }
                    | Request::TryLock { .. }
                    | Request::LockWithLease { .. }
                    | Request::TryLockWithLease { .. }
            )
        {
            let message = "the agent is stopping".to_string();
            self.reply(client, id, Reply::Error { message });
            return;
        }
        let with_lease =
            matches!(request.request, Request::LockWithLease { .. } | Request::TryLockWithLease { .. });
        let op = PendingOp { client, id, started: Instant::now(), received: now, with_lease };
        match request.request {
            Request::Lock { name, timeout_ms } | Request::LockWithLease { name, timeout_ms } => {
                let timeout = Duration::from_millis(timeout_ms).min(MAX_LOCK_WAIT);
                let req = self.node.lock(now, client, name, timeout);
                self.ops.insert(req, op);
            }
            Request::TryLock { name } | Request::TryLockWithLease { name } => {
                let req = self.node.try_lock(now, client, name);
                self.ops.insert(req, op);
            }
            Request::Lease { name } => {
                let lease = self.node.lock_node().safe_until(client, &name);
                let lease_ms = lease.map(|until| lease_ms(until, now));
                self.reply(client, id, Reply::Lease { lease_ms });
            }
            // The current view goes right behind the answer, and every
            // later one after it: one task sends them all, in order, so
            // the watcher sees no gap and no view twice.
            Request::WatchView => {
                self.reply(client, id, Reply::Watching);
                let current = self
                    .last_view
                    .clone()
                    .unwrap_or_else(|| view_info(self.node.membership().view(), false, Vec::new()));
                if let Some(session) = self.sessions.get(&client) {
                    session.send(ServerMessage::View(Box::new(current)));
                }
                self.watchers.insert(client);
            }
            Request::Holds { name } => {
                let holds = self.node.lock_node().holds(client, &name);
                self.reply(client, id, Reply::Holds { holds });
            }
            Request::Unlock { name } => {
                let reply = match self.node.unlock(now, client, &name) {
                    Ok(()) => Reply::Unlocked,
                    Err(_) => Reply::NotHeld,
                };
                self.reply(client, id, reply);
            }
            Request::Status => {
                let status = self.status();
                self.reply(client, id, Reply::Status(Box::new(status)));
            }
            // The endpoint checks passwords itself; in-process clients need none.
            Request::Auth { .. } => self.reply(client, id, Reply::Authenticated),
            Request::AcceptTerm { term } if term > swimlock_wire::Token::MAX_TERM => {
                let message = format!(
                    "term {term} is above {}, the largest a token carries",
                    swimlock_wire::Token::MAX_TERM
                );
                self.reply(client, id, Reply::Error { message });
            }
            Request::AcceptTerm { term } => {
                warn!(term, halted_on = ?self.node.lock_node().halted(), "the operator accepts coordinator terms up to {term}");
                self.node.accept_term(now, term);
                let still_halted_on = self.node.lock_node().halted();
                self.reply(client, id, Reply::TermAccepted { still_halted_on });
            }
            Request::Keyring { op } => {
                info!(?op, "keyring command");
                match self.node.keyring_command(now, op, KEYRING_TIMEOUT) {
                    Ok(command) => {
                        self.keyring_ops.insert(command, (client, id));
                    }
                    Err(message) => self.reply(client, id, Reply::Error { message }),
                }
            }
        }
    }

    fn reply(&mut self, client: ClientId, id: u64, reply: Reply) {
        if let Some(session) = self.sessions.get(&client) {
            session.send(ServerMessage::Reply { id, reply });
            self.woke_local |= session.is_local();
        }
    }

    fn on_event(&mut self, event: NodeEvent) {
        match event {
            NodeEvent::View { view, merge } => self.on_view(&view, merge),
            NodeEvent::Lock(Event::Acquired { req, client, name, token, holds, safe_until }) => {
                debug!(client = client.0, lock = %name, %token, holds, "lock acquired");
                if let Some(op) = self.ops.remove(&req) {
                    self.metrics.record_wait(WaitResult::Acquired, op.started.elapsed());
                    let reply = if op.with_lease {
                        Reply::AcquiredWithLease { token, holds, lease_ms: lease_ms(safe_until, op.received) }
                    } else {
                        Reply::Acquired { token, holds }
                    };
                    self.reply(op.client, op.id, reply);
                    // Granted while stopping (asked before): let go of it too.
                    if let Some(stopping) = &self.stopping {
                        let left = stopping.deadline.saturating_duration_since(Instant::now());
                        self.notify_stopping(op.client, left.as_millis() as u64);
                    }
                }
            }
            NodeEvent::Lock(Event::Failed { req, client, name, reason }) => {
                debug!(client = client.0, lock = %name, ?reason, "lock request failed");
                if let Some(op) = self.ops.remove(&req) {
                    match reason {
                        Failure::TimedOut => {
                            self.metrics.record_wait(WaitResult::TimedOut, op.started.elapsed())
                        }
                        Failure::NoQuorum => {
                            self.metrics.record_wait(WaitResult::NoQuorum, op.started.elapsed())
                        }
                        Failure::Busy => {}
                    }
                    let reason = match reason {
                        Failure::Busy => FailReason::Busy,
                        Failure::TimedOut => FailReason::TimedOut,
                        Failure::NoQuorum => FailReason::NoQuorum,
                    };
                    self.reply(op.client, op.id, Reply::Failed { reason });
                }
            }
            NodeEvent::Lock(Event::Lost { client, name, token, reason }) => {
                self.on_lost(client, name, token, reason)
            }
            NodeEvent::Lock(Event::TermStarted { term }) if self.node.lock_node().is_coordinator() => {
                info!(term, "coordinator term started")
            }
            NodeEvent::Lock(Event::TermStarted { term }) => debug!(term, "term recorded"),
            NodeEvent::Lock(Event::Alert(alert)) => {
                self.metrics.record_alert(&alert);
                on_alert(alert);
            }
            NodeEvent::TagChanged { tag } => self.on_tag_changed(tag),
            NodeEvent::DeclaredDown => info!(
                "another member declared this node down (a missed probe, a pause, or a refuted \
                 suspicion); it grants and renews nothing until it has rejoined"
            ),
            NodeEvent::JoinTimedOut => warn!(
                "no seed answered within the join timeout; forming a group of this node alone \
                 (if the seeds are up but unreachable, this is a split brain)"
            ),
            NodeEvent::Superseded { by } => {
                error!(
                    newer = %by,
                    "a newer process took this node's address (a second agent on it?); this node stops"
                );
                self.superseded = true;
            }
            NodeEvent::KeyringChanged(ring) => self.save_keyring(&ring),
            NodeEvent::Keyring(report) => {
                if let Some((client, id)) = self.keyring_ops.remove(&report.id) {
                    let reply = self.keyring_reply(&report);
                    self.reply(client, id, Reply::Keyring(Box::new(reply)));
                }
            }
        }
    }

    /// An older member had this node's tag; the node took `tag`. Saved so
    /// that the next start uses it.
    fn on_tag_changed(&mut self, tag: u16) {
        let old = std::mem::replace(&mut self.tag, tag);
        // The node logged the change; a configured tag is worth a warning.
        if self.tag_configured {
            warn!(configured = old, tag, "the configured node tag is taken by an older member; changed it");
        }
        if let Some(store) = &self.tags
            && let Err(e) = store.save(tag)
        {
            error!(tag, error = %e, "cannot save the node tag; the next start may collide again");
        }
    }

    /// Saves a changed keyring before the node answers for it.
    fn save_keyring(&mut self, ring: &Keyring) {
        let ids: Vec<String> = ring.ids().iter().map(ToString::to_string).collect();
        let result = match &self.keyring_store {
            Some(store) => store.save(ring).map_err(|e| {
                error!(path = %store.path().display(), error = %e, "cannot save the keyring; the change is lost at the next restart");
                e.to_string()
            }),
            None => {
                warn!("keyring changed without a state_dir: the change is lost at the next restart");
                Ok(())
            }
        };
        info!(primary = %ring.primary(), keys = ?ids, "keyring changed");
        self.node.keyring_saved(self.now(), result);
    }

    /// A keyring command's outcome as the client protocol reports it.
    fn keyring_reply(&self, report: &KeyringReport) -> swimlock_wire::client::KeyringReport {
        use swimlock_wire::admin::KeyringResult;
        use swimlock_wire::client::{KeyHolders, KeyringFailure};
        let view = self.node.membership().view();
        let name = |id: &swimlock_wire::NodeId| {
            view.members.iter().find(|m| m.id == *id).map(|m| m.name.clone()).unwrap_or_default()
        };
        let mut holders: BTreeMap<u32, KeyHolders> = BTreeMap::new();
        let mut failed = Vec::new();
        for (id, answer) in &report.answers {
            match answer {
                KeyringResult::Keys { keys, primary } => {
                    for &key_id in keys {
                        let h =
                            holders.entry(key_id).or_insert(KeyHolders { key_id, members: 0, primary: 0 });
                        h.members += 1;
                        h.primary += u32::from(key_id == *primary);
                    }
                }
                KeyringResult::Refused { reason } => {
                    failed.push(KeyringFailure { name: name(id), id: *id, reason: reason.clone() })
                }
            }
        }
        for id in &report.missing {
            let reason = format!("no answer within {KEYRING_TIMEOUT:?}");
            failed.push(KeyringFailure { name: name(id), id: *id, reason });
        }
        swimlock_wire::client::KeyringReport {
            members: (report.answers.len() + report.missing.len()) as u32,
            keys: holders.into_values().collect(),
            failed,
            refused: report.refused.clone(),
        }
    }

    fn on_lost(&mut self, client: ClientId, name: LockName, token: swimlock_wire::Token, reason: LossReason) {
        let why = match reason {
            LossReason::Duplicate => "duplicate after a merge (another holder has a higher token)",
            LossReason::QuorumLost => "quorum lost",
            LossReason::LeaseExpired => "lease expired without renewal",
        };
        warn!(client = client.0, lock = %name, %token, reason = why, "client told its lock was lost");
        self.metrics.record_lost(reason);
        let reason = match reason {
            LossReason::Duplicate => LostReason::Duplicate,
            LossReason::QuorumLost => LostReason::QuorumLost,
            LossReason::LeaseExpired => LostReason::LeaseExpired,
        };
        if let Some(session) = self.sessions.get(&client) {
            session.send(ServerMessage::Lost { name, token, reason });
        }
    }

    fn on_view(&mut self, view: &swimlock_membership::View, merge: bool) {
        let subgroups = if merge { self.subgroups(view) } else { Vec::new() };
        self.track_departures(view);
        // From the event's view, not the membership's latest: several
        // views installed in one batch each reach the watchers.
        let info = view_info(view, merge, subgroups);
        for client in &self.watchers {
            if let Some(session) = self.sessions.get(client) {
                session.send(ServerMessage::View(Box::new(info.clone())));
                self.woke_local |= session.is_local();
            }
        }
        self.last_view = Some(info);
        let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
        let coordinator = view.coordinator().map_or("-", |m| m.name.as_str());
        info!(view_id = view.id, merge, members = ?names, coordinator, "view installed");
        let me = self.node.id();
        let coordinates = view.coordinator().is_some_and(|m| m.id == me);
        if coordinates != self.coordinator {
            self.coordinator = coordinates;
            if coordinates {
                info!(view_id = view.id, "became coordinator");
            } else {
                info!(view_id = view.id, coordinator, "no longer coordinator");
            }
        }
    }

    /// The groups a merge `view` joined, as this node knows them: the
    /// members of the previous view that stayed, and those that came back;
    /// when none came back (this node alone rejoined), this node and the
    /// others. (The node core's event carries no subgroups: they are
    /// rebuilt here from consecutive views.)
    fn subgroups(&self, view: &swimlock_membership::View) -> Vec<Vec<swimlock_wire::NodeId>> {
        let me = self.node.id();
        let before: BTreeSet<_> = self.members.iter().map(|m| m.id).collect();
        let (stayed, returned): (Vec<_>, Vec<_>) = view.ids().partition(|id| before.contains(id));
        let mut groups = if returned.is_empty() {
            vec![vec![me], view.ids().filter(|id| *id != me).collect()]
        } else {
            vec![stayed, returned]
        };
        groups.retain(|g| !g.is_empty());
        groups.sort();
        groups
    }

    /// Notes the members of the previous view that are not in `view` as
    /// departed (and forgets a departure whose member is back).
    fn track_departures(&mut self, view: &swimlock_membership::View) {
        let now: Vec<MemberInfo> = view.members.iter().map(member_info).collect();
        for gone in self.members.iter().filter(|m| !view.contains(m.id)) {
            self.departed.retain(|d| d.id != gone.id);
            self.departed.push(MemberInfo { state: MemberState::Down, ..gone.clone() });
        }
        self.departed.retain(|d| !view.contains(d.id));
        if self.departed.len() > MAX_DEPARTED {
            self.departed.drain(..self.departed.len() - MAX_DEPARTED);
        }
        self.members = now;
    }

    fn status(&self) -> Status {
        let view = self.node.membership().view();
        let suspected = self.node.membership().suspected();
        let member = |m: &swimlock_membership::Member| MemberInfo {
            state: if suspected.contains(&m.id) { MemberState::Suspect } else { MemberState::Alive },
            ..member_info(m)
        };
        let lock = self.node.lock_node();
        let table = lock.table_stats().map(|t| {
            let entries = lock
                .table()
                .into_iter()
                .map(|(name, owner, token)| TableEntry {
                    name,
                    node: owner.node,
                    client: owner.client,
                    token,
                })
                .collect();
            TableInfo { held: t.held as u64, waiters: t.waiters as u64, serving: lock.is_serving(), entries }
        });
        Status {
            name: self.name.clone(),
            id: self.node.id(),
            bind: self.bind,
            mode: self.mode.clone(),
            view_id: view.id,
            view_digest: view.digest(),
            members: view.members.iter().map(member).collect(),
            departed: {
                let mut d = self.departed.clone();
                d.sort_by_key(|m| m.id);
                d
            },
            quorum: self.quorum,
            version: env!("CARGO_PKG_VERSION").to_string(),
            coordinator: view.coordinator().map(member),
            locks: lock
                .held()
                .into_iter()
                .map(|h| HeldInfo { client: h.client, name: h.name, token: h.token, holds: h.holds })
                .collect(),
            table,
            security: match self.node.keyring() {
                Some(ring) => swimlock_wire::client::SecurityInfo {
                    insecure: false,
                    primary_key: Some(ring.primary().0),
                    keys: ring.ids().into_iter().map(|k| k.0).collect(),
                },
                None => swimlock_wire::client::SecurityInfo {
                    insecure: true,
                    primary_key: None,
                    keys: Vec::new(),
                },
            },
            halted_on_term: self.node.lock_node().halted(),
        }
    }
}

/// A view member as a view change reports it: alive (`Status` marks the
/// suspected ones).
fn member_info(m: &swimlock_membership::Member) -> MemberInfo {
    MemberInfo { name: m.name.clone(), id: m.id, state: MemberState::Alive }
}

/// `view` as `WatchView` reports it.
fn view_info(
    view: &swimlock_membership::View,
    merge: bool,
    subgroups: Vec<Vec<swimlock_wire::NodeId>>,
) -> ViewInfo {
    ViewInfo {
        id: view.id,
        digest: view.digest(),
        members: view.members.iter().map(member_info).collect(),
        coordinator: view.coordinator().map(member_info),
        merge,
        subgroups,
    }
}

/// A member's name in the current view, else its identity.
fn member_name(node: &Node, id: swimlock_wire::NodeId) -> String {
    let view = node.membership().view();
    view.members.iter().find(|m| m.id == id).map_or_else(|| id.to_string(), |m| m.name.clone())
}

/// Logs a condition the operator must look at.
fn on_alert(alert: swimlock_lock::Alert) {
    match alert {
        swimlock_lock::Alert::TermJump { term, limit } => error!(
            term,
            limit,
            "a member reported a coordinator term far above any this cluster reached; granting stopped \
             until an operator accepts it with `swimlock accept-term {term}` (a bug, a stale state \
             directory or a forgery: check the members' state directories first)"
        ),
        swimlock_lock::Alert::TermsExhausted => {
            error!("coordinator terms are used up: tokens cannot grow any more; granting stopped")
        }
        swimlock_lock::Alert::ReportTooLarge { member } => warn!(
            %member,
            "a member's reconciliation answer is over the size limits and was refused; its locks are unknown"
        ),
    }
}

/// The lease left at `from` of a lock safe until `until` (both on the
/// node's clock), in whole milliseconds, rounded down so that a client that
/// counts it from an earlier moment never outlasts the node.
fn lease_ms(until: Duration, from: Duration) -> u64 {
    u64::try_from(until.saturating_sub(from).as_millis()).unwrap_or(u64::MAX)
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
