//! One client connection's protocol state, without I/O: bytes read go in,
//! requests for the node and bytes to write come out; the connection task
//! ([`super::serve`]) moves them.
//!
//! Ordering: commands take effect in the order they came, and replies go
//! out in that order. Requests that are answered at once (TRYLOCK, UNLOCK,
//! STATUS...) are pipelined to the node; a request that may wait (LOCK)
//! holds back every command after it until it is answered, as BLPOP does
//! in Redis.
//!
//! Loss: a lost lock is pushed at once to a RESP3 connection, and on every
//! connection the next command naming it (once the loss is known here) is
//! answered `-LOST name token reason` instead of being run. A "not held"
//! answer to a command already on its way when the loss came is replaced
//! by the same `-LOST`; a grant never is (the lock would then be held
//! without the client knowing).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use swimlock_wire::client::{ClientRequest, CloseReason, LostReason, Reply, Request, ServerMessage};
use swimlock_wire::commands::{self, Command};
use swimlock_wire::resp::{self, Proto, ProtocolError, Value};
use swimlock_wire::{ClientId, LockName, Token};

/// Commands read but not yet run (behind a waiting LOCK) plus replies not
/// yet sent, beyond which the connection is not read.
pub const MAX_OUTSTANDING: usize = 1024;
/// LOCK requests waiting at once on one endpoint (every connection
/// together); a LOCK beyond it is answered `-QUEUEFULL`.
pub const MAX_LOCK_WAITERS: usize = 16_384;
/// Losses remembered for the in-band `-LOST` of one connection; past this
/// none is added (RESP3 clients were pushed each one anyway).
const MAX_LOST: usize = 1024;

/// What the connection asks of its task.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this request to the node.
    Request(ClientRequest),
    /// Register with the node (now that the password was given); then call
    /// [`Conn::connected`] with the id it gives.
    Connect,
    /// Count a refused password (or the first command refused for want
    /// of one).
    Unauthorized,
}

/// A command read, waiting its turn.
enum Queued {
    Args(Vec<Vec<u8>>),
    /// The bytes after this are not a command: answer this, then close.
    Fatal(Value, CloseReason),
}

/// A reply, in request order.
enum Slot {
    Ready(Value),
    /// Asked of the node as `id`.
    Waiting {
        id: u64,
        request: Request,
    },
}

/// The protocol state of one connection.
pub struct Conn {
    proto: Proto,
    /// The password the endpoint requires, if any.
    password: Option<String>,
    authed: bool,
    /// Registered with the node, once it is.
    client: Option<ClientId>,
    /// A registration is asked for and not answered yet: nothing runs.
    connecting: bool,
    name: Option<String>,
    next_id: u64,
    slots: VecDeque<Slot>,
    queued: VecDeque<Queued>,
    /// The request that holds back the commands after it.
    blocked_on: Option<u64>,
    lost: BTreeMap<LockName, (Token, LostReason)>,
    /// Unread input.
    input: Vec<u8>,
    /// Encoded output not yet taken by the task.
    out: Vec<u8>,
    /// Nothing more is read: a QUIT, a refused password or a protocol
    /// error is queued.
    stop_reading: bool,
    /// Set once that command ran: the connection closes when its replies
    /// are out (with the reason to count, `None` for a QUIT).
    ending: Option<Option<CloseReason>>,
    /// A command was refused for want of the password (counted once).
    told_noauth: bool,
    /// The endpoint's count of waiting LOCK requests, and this
    /// connection's part of it.
    lock_waiters: Arc<AtomicUsize>,
    my_waiters: usize,
}

impl Conn {
    /// A new connection; `password` if the endpoint requires one;
    /// `lock_waiters` counts the LOCK requests waiting on the endpoint.
    pub fn new(password: Option<String>, lock_waiters: Arc<AtomicUsize>) -> Conn {
        Conn {
            proto: Proto::Resp2,
            authed: password.is_none(),
            password,
            client: None,
            connecting: false,
            name: None,
            next_id: 1,
            slots: VecDeque::new(),
            queued: VecDeque::new(),
            blocked_on: None,
            lost: BTreeMap::new(),
            input: Vec::new(),
            out: Vec::new(),
            stop_reading: false,
            ending: None,
            told_noauth: false,
            lock_waiters,
            my_waiters: 0,
        }
    }

    /// The node registered this connection as `client`: what waited for
    /// it runs.
    pub fn connected(&mut self, client: ClientId, actions: &mut Vec<Action>) {
        self.client = Some(client);
        self.connecting = false;
        self.run(actions);
    }

    /// The node's id of this connection, once registered.
    pub fn client(&self) -> Option<ClientId> {
        self.client
    }

    /// Whether more input may be read now.
    pub fn reading(&self) -> bool {
        !self.stop_reading && self.queued.len() + self.slots.len() < MAX_OUTSTANDING
    }

    /// Whether part of a command is buffered (its completion is timed).
    pub fn partial(&self) -> bool {
        !self.input.is_empty()
    }

    /// Output ready to write, appended to `to`.
    pub fn take_output(&mut self, to: &mut Vec<u8>) {
        to.append(&mut self.out);
    }

    /// Whether the connection is to close now: a QUIT, a refused password
    /// or a protocol error ran, and every reply before it is out. The
    /// reason is `None` for a QUIT.
    pub fn ended(&self) -> Option<Option<CloseReason>> {
        self.ending.filter(|_| self.slots.is_empty())
    }

    /// The notice of a close the task decides (slow reader, timeout): a
    /// push in RESP3, an error in RESP2.
    pub fn closing_notice(&self, reason: CloseReason) -> Vec<u8> {
        closing_notice(self.proto, reason)
    }

    /// Takes `bytes` read from the socket, then runs what it can.
    pub fn read(&mut self, bytes: &[u8], actions: &mut Vec<Action>) {
        if self.stop_reading {
            return;
        }
        self.input.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            match resp::parse_command(&self.input[used..]) {
                Ok(Some((args, n))) => {
                    used += n;
                    if !args.is_empty() {
                        self.queued.push_back(Queued::Args(args));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = match e {
                        ProtocolError::BulkLength(_)
                        | ProtocolError::ArgCount(_)
                        | ProtocolError::InlineTooLong => CloseReason::FrameTooLarge,
                        _ => CloseReason::Malformed,
                    };
                    self.queued.push_back(Queued::Fatal(Value::error("ERR", e), reason));
                    self.stop_reading = true;
                    used = self.input.len();
                    break;
                }
            }
        }
        self.input.drain(..used);
        self.run(actions);
    }

    /// Runs queued commands until one must wait.
    fn run(&mut self, actions: &mut Vec<Action>) {
        while self.blocked_on.is_none() && !self.connecting && self.ending.is_none() {
            let Some(next) = self.queued.pop_front() else { break };
            match next {
                Queued::Args(args) => self.execute(&args, actions),
                Queued::Fatal(reply, reason) => {
                    self.ready(reply);
                    self.end(Some(reason));
                }
            }
        }
        self.flush();
    }

    fn end(&mut self, reason: Option<CloseReason>) {
        self.ending = Some(reason);
        self.stop_reading = true;
        self.queued.clear();
    }

    fn ready(&mut self, v: Value) {
        self.slots.push_back(Slot::Ready(v));
    }

    fn execute(&mut self, args: &[Vec<u8>], actions: &mut Vec<Action>) {
        let command = match commands::parse(args) {
            Ok(c) => c,
            Err(e) => return self.ready(e),
        };
        let noauth = || Value::error("NOAUTH", "Authentication required.");
        match command {
            Command::Auth { password } => {
                self.auth(&password, actions);
            }
            Command::Quit => {
                self.ready(Value::Simple("OK".into()));
                self.end(None);
            }
            Command::Hello { auth: Some(password), proto, name } => {
                if self.auth(&password, actions) {
                    // The AUTH reply is folded into HELLO's.
                    self.slots.pop_back();
                    self.hello(proto, name);
                }
            }
            _ if !self.authed => {
                if !std::mem::replace(&mut self.told_noauth, true) {
                    actions.push(Action::Unauthorized);
                }
                self.ready(noauth());
            }
            Command::Hello { proto, name, .. } => self.hello(proto, name),
            Command::Ping(None) => self.ready(Value::Simple("PONG".into())),
            Command::Ping(Some(m)) | Command::Echo(m) => self.ready(Value::Bulk(m)),
            Command::SetName(name) => {
                self.name = Some(name);
                self.ready(Value::Simple("OK".into()));
            }
            Command::GetName => self.ready(self.name.clone().map_or(Value::Null, Value::bulk)),
            Command::ClientId => self.ready(Value::uint(self.client.map_or(0, |c| c.0))),
            Command::Info => self.ready(Value::bulk(format!(
                "# Server\r\nswimlock_version:{}\r\nloading:0\r\n",
                env!("CARGO_PKG_VERSION")
            ))),
            Command::Node(request) => self.ask_node(request, actions),
        }
    }

    /// Checks a password: true if accepted (an `+OK` is queued); a wrong
    /// one is answered and the connection closes.
    fn auth(&mut self, given: &str, actions: &mut Vec<Action>) -> bool {
        match &self.password {
            Some(expected) if !super::same_token(given, expected) => {
                actions.push(Action::Unauthorized);
                self.ready(Value::error("WRONGPASS", "invalid password"));
                self.end(None);
                false
            }
            _ => {
                if !self.authed {
                    self.authed = true;
                    self.connecting = true;
                    actions.push(Action::Connect);
                }
                self.ready(Value::Simple("OK".into()));
                true
            }
        }
    }

    fn hello(&mut self, proto: Option<Proto>, name: Option<String>) {
        if let Some(p) = proto {
            self.proto = p;
        }
        if name.is_some() {
            self.name = name;
        }
        let kv = |k: &str, v: Value| (Value::bulk(k), v);
        let proto = if self.proto == Proto::Resp3 { 3 } else { 2 };
        self.ready(Value::Map(vec![
            kv("server", Value::bulk("swimlock")),
            kv("version", Value::bulk(env!("CARGO_PKG_VERSION"))),
            kv("proto", Value::Int(proto)),
            kv("id", Value::uint(self.client.map_or(0, |c| c.0))),
            kv("mode", Value::bulk("standalone")),
            kv("role", Value::bulk("master")),
            kv("modules", Value::Array(Vec::new())),
        ]));
    }

    fn ask_node(&mut self, request: Request, actions: &mut Vec<Action>) {
        if let Some(name) = commands::named_lock(&request)
            && let Some((token, reason)) = self.lost.remove(name)
        {
            return self.ready(commands::lost_error(name, token, reason));
        }
        let is_lock = matches!(request, Request::Lock { .. } | Request::LockWithLease { .. });
        if is_lock {
            if self.lock_waiters.fetch_add(1, Ordering::AcqRel) >= MAX_LOCK_WAITERS {
                self.lock_waiters.fetch_sub(1, Ordering::AcqRel);
                return self.ready(Value::error("QUEUEFULL", "too many LOCK requests wait on this node"));
            }
            self.my_waiters += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        if commands::blocks(&request) {
            self.blocked_on = Some(id);
        }
        actions.push(Action::Request(ClientRequest { id, request: request.clone() }));
        self.slots.push_back(Slot::Waiting { id, request });
    }

    /// A message from the node: a reply fills its slot; a loss is
    /// remembered (and pushed to RESP3); a stop notice is pushed.
    pub fn on_node(&mut self, msg: ServerMessage, actions: &mut Vec<Action>) {
        match msg {
            ServerMessage::Reply { id, reply } => self.answer(id, reply),
            ServerMessage::Lost { name, token, reason } => {
                if self.proto == Proto::Resp3 {
                    let push =
                        commands::push_value(&ServerMessage::Lost { name: name.clone(), token, reason });
                    push.into_iter().for_each(|p| p.encode(self.proto, &mut self.out));
                }
                if self.lost.len() < MAX_LOST || self.lost.contains_key(&name) {
                    self.lost.insert(name, (token, reason));
                }
            }
            // A stream the client asked for: an array in RESP2.
            view @ ServerMessage::View(_) => {
                commands::push_value(&view).into_iter().for_each(|p| p.encode(self.proto, &mut self.out));
            }
            other @ (ServerMessage::Stopping { .. } | ServerMessage::Closing { .. }) => {
                if self.proto == Proto::Resp3
                    && let Some(push) = commands::push_value(&other)
                {
                    push.encode(self.proto, &mut self.out);
                }
            }
        }
        self.run(actions);
    }

    fn answer(&mut self, id: u64, reply: Reply) {
        let Some(slot) = self.slots.iter_mut().find(|s| matches!(s, Slot::Waiting { id: i, .. } if *i == id))
        else {
            return;
        };
        let Slot::Waiting { request, .. } = slot else { return };
        if matches!(request, Request::Lock { .. } | Request::LockWithLease { .. }) {
            self.my_waiters -= 1;
            self.lock_waiters.fetch_sub(1, Ordering::AcqRel);
        }
        let not_held =
            matches!(reply, Reply::NotHeld | Reply::Lease { lease_ms: None } | Reply::Holds { holds: 0 });
        let lost =
            commands::named_lock(request).filter(|_| not_held).and_then(|name| self.lost.remove_entry(name));
        let value = match lost {
            Some((name, (token, reason))) => commands::lost_error(&name, token, reason),
            None => commands::reply_value(request, reply, self.client.unwrap_or(ClientId(0))),
        };
        *slot = Slot::Ready(value);
        if self.blocked_on == Some(id) {
            self.blocked_on = None;
        }
    }

    /// Moves the replies at the front that are ready to the output.
    fn flush(&mut self) {
        while let Some(Slot::Ready(_)) = self.slots.front() {
            if let Some(Slot::Ready(v)) = self.slots.pop_front() {
                v.encode(self.proto, &mut self.out);
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.lock_waiters.fetch_sub(self.my_waiters, Ordering::AcqRel);
    }
}

/// The notice of a close: a push in RESP3, an error in RESP2.
pub fn closing_notice(proto: Proto, reason: CloseReason) -> Vec<u8> {
    let v = match proto {
        Proto::Resp3 => commands::push_value(&ServerMessage::Closing { reason }).unwrap_or(Value::Null),
        Proto::Resp2 => Value::error("ERR", format!("closing the connection: {reason}")),
    };
    v.to_bytes(proto)
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
