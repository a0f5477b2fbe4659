//! The client endpoint's command table: RESP commands to [`Request`]s, and
//! the node's answers back to RESP replies, both ways (the endpoint reads
//! commands and writes replies; the Rust client writes commands and reads
//! replies). The README's "Client protocol" section documents each command.
//!
//! Errors carry a code as their first word, which clients match: `ERR`,
//! `TIMEOUT`, `NOQUORUM`, `BADNAME`, `NOTHELD`, `LOST`, `QUEUEFULL`,
//! `NOAUTH`, `WRONGPASS`, `NOPROTO`, `STOPPING`.

use std::net::SocketAddr;

use crate::admin::{KEY_LEN, KeyringOp};
use crate::client::{
    CloseReason, FailReason, HeldInfo, KeyHolders, KeyringFailure, KeyringReport, LostReason, MemberInfo,
    MemberState, Reply, Request, SecurityInfo, ServerMessage, Status, TableEntry, TableInfo, ViewInfo,
};
use crate::ids::{ClientId, LockName, NodeId, Token};
use crate::resp::{Proto, Value};

/// A command read from a client.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello {
        /// The protocol asked for, if any.
        proto: Option<Proto>,
        /// A password given with it.
        auth: Option<String>,
        /// A connection name given with it.
        name: Option<String>,
    },
    /// `AUTH [user] password`.
    Auth {
        /// The password.
        password: String,
    },
    /// `PING [message]`.
    Ping(Option<Vec<u8>>),
    /// `ECHO message`.
    Echo(Vec<u8>),
    /// `QUIT`: `+OK`, then the connection closes.
    Quit,
    /// `CLIENT SETNAME name`.
    SetName(String),
    /// `CLIENT GETNAME`.
    GetName,
    /// `CLIENT ID`.
    ClientId,
    /// `INFO [section]`: a few `key:value` lines (clients such as ioredis
    /// read `loading:0` from it before they send anything else).
    Info,
    /// A request for the node task.
    Node(Request),
}

/// Protocol versions `HELLO` accepts.
fn proto_of(arg: &[u8]) -> Result<Proto, Value> {
    match arg {
        b"2" => Ok(Proto::Resp2),
        b"3" => Ok(Proto::Resp3),
        _ => Err(Value::error("NOPROTO", "unsupported protocol version (this server speaks 2 and 3)")),
    }
}

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

/// A command's name, printable and short, for an error message.
fn shown(arg: &[u8]) -> String {
    let mut s: String = text(arg).chars().filter(|c| !c.is_control()).take(64).collect();
    if arg.len() > 64 {
        s.push_str("...");
    }
    s
}

fn arity(name: &str) -> Value {
    Value::error("ERR", format!("wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
}

fn name_arg(arg: &[u8]) -> Result<LockName, Value> {
    let s = std::str::from_utf8(arg).map_err(|_| Value::error("BADNAME", "a lock name must be UTF-8"))?;
    LockName::new(s).map_err(|e| Value::error("BADNAME", e))
}

fn int_arg<T: std::str::FromStr>(arg: &[u8], what: &str) -> Result<T, Value> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Value::error("ERR", format!("{what} is not an integer or out of range")))
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// Reads one command (`args[0]` is its name, any case). An error is the
/// reply to give; the connection stays open.
pub fn parse(args: &[Vec<u8>]) -> Result<Command, Value> {
    let Some((cmd, rest)) = args.split_first() else { return Err(Value::error("ERR", "empty command")) };
    let upper = text(cmd).to_ascii_uppercase();
    let node = |r| Ok(Command::Node(r));
    match (upper.as_str(), rest) {
        ("LOCK", [name, opts @ ..]) if opts.len() <= 2 => {
            let name = name_arg(name)?;
            let (mut timeout_ms, mut with_lease) = (0u64, false);
            for opt in opts {
                if is(opt, "WITHLEASE") {
                    with_lease = true;
                } else {
                    timeout_ms = int_arg(opt, "timeout")?;
                }
            }
            // As BLPOP's: 0 (or none) waits without limit.
            let timeout_ms = if timeout_ms == 0 { u64::MAX } else { timeout_ms };
            if with_lease {
                node(Request::LockWithLease { name, timeout_ms })
            } else {
                node(Request::Lock { name, timeout_ms })
            }
        }
        ("TRYLOCK", [name]) => node(Request::TryLock { name: name_arg(name)? }),
        ("TRYLOCK", [name, opt]) if is(opt, "WITHLEASE") => {
            node(Request::TryLockWithLease { name: name_arg(name)? })
        }
        ("UNLOCK", [name]) => node(Request::Unlock { name: name_arg(name)? }),
        ("HOLDS", [name]) => node(Request::Holds { name: name_arg(name)? }),
        ("LEASE", [name]) => node(Request::Lease { name: name_arg(name)? }),
        ("STATUS", []) => node(Request::Status),
        ("ACCEPTTERM", [term]) => node(Request::AcceptTerm { term: int_arg(term, "term")? }),
        ("KEYRING", [op, key @ ..]) => keyring(op, key).map(Command::Node),
        ("WATCH", [what]) if is(what, "VIEW") => node(Request::WatchView),
        ("WATCH", _) => Err(Value::error("ERR", "WATCH takes VIEW (keys cannot be watched here)")),
        ("PING", []) => Ok(Command::Ping(None)),
        ("PING", [msg]) => Ok(Command::Ping(Some(msg.clone()))),
        ("ECHO", [msg]) => Ok(Command::Echo(msg.clone())),
        ("QUIT", _) => Ok(Command::Quit),
        ("AUTH", [password]) | ("AUTH", [_, password]) => Ok(Command::Auth { password: text(password) }),
        ("HELLO", rest) => hello(rest),
        ("INFO", [] | [_]) => Ok(Command::Info),
        ("CLIENT", [sub, rest @ ..]) => {
            let sub = text(sub).to_ascii_uppercase();
            match (sub.as_str(), rest) {
                ("SETNAME", [name]) => Ok(Command::SetName(text(name))),
                ("GETNAME", []) => Ok(Command::GetName),
                ("ID", []) => Ok(Command::ClientId),
                ("SETNAME" | "GETNAME" | "ID", _) => Err(arity(&format!("client|{sub}"))),
                _ => Err(Value::error(
                    "ERR",
                    format!(
                        "unknown subcommand '{}' of 'client' (this server knows SETNAME, GETNAME, ID)",
                        shown(sub.as_bytes())
                    ),
                )),
            }
        }
        (
            "LOCK" | "TRYLOCK" | "UNLOCK" | "HOLDS" | "LEASE" | "STATUS" | "ACCEPTTERM" | "KEYRING" | "PING"
            | "ECHO" | "AUTH" | "INFO" | "CLIENT",
            _,
        ) => Err(arity(&upper)),
        _ => Err(Value::error("ERR", format!("unknown command '{}'", shown(cmd)))),
    }
}

fn hello(args: &[Vec<u8>]) -> Result<Command, Value> {
    let Some((version, mut rest)) = args.split_first() else {
        return Ok(Command::Hello { proto: None, auth: None, name: None });
    };
    let proto = Some(proto_of(version)?);
    let (mut auth, mut name) = (None, None);
    loop {
        match rest {
            [] => break,
            [opt, _user, pass, more @ ..] if is(opt, "AUTH") => {
                auth = Some(text(pass));
                rest = more;
            }
            [opt, n, more @ ..] if is(opt, "SETNAME") => {
                name = Some(text(n));
                rest = more;
            }
            [opt, ..] => {
                return Err(Value::error("ERR", format!("syntax error in HELLO option '{}'", shown(opt))));
            }
        }
    }
    Ok(Command::Hello { proto, auth, name })
}

fn keyring(op: &[u8], arg: &[Vec<u8>]) -> Result<Request, Value> {
    let op = match (text(op).to_ascii_uppercase().as_str(), arg) {
        ("LIST", []) => KeyringOp::List,
        ("INSTALL", [key]) => {
            let key: [u8; KEY_LEN] = key
                .as_slice()
                .try_into()
                .map_err(|_| Value::error("ERR", format!("a key is {KEY_LEN} bytes")))?;
            KeyringOp::Install { key }
        }
        ("USE", [id]) => KeyringOp::Use { key_id: int_arg(id, "key id")? },
        ("REMOVE", [id]) => KeyringOp::Remove { key_id: int_arg(id, "key id")? },
        _ => return Err(Value::error("ERR", "KEYRING takes LIST, INSTALL key, USE id or REMOVE id")),
    };
    Ok(Request::Keyring { op })
}

/// The command a client sends for `request`.
pub fn command_args(request: &Request) -> Vec<Vec<u8>> {
    let s = |x: &str| x.as_bytes().to_vec();
    let n = |name: &LockName| name.as_str().as_bytes().to_vec();
    // 0 means "no limit" on the wire; a zero wait is the shortest one.
    let t = |ms: u64| ms.max(1).to_string().into_bytes();
    match request {
        Request::Lock { name, timeout_ms } => vec![s("LOCK"), n(name), t(*timeout_ms)],
        Request::LockWithLease { name, timeout_ms } => {
            vec![s("LOCK"), n(name), t(*timeout_ms), s("WITHLEASE")]
        }
        Request::TryLock { name } => vec![s("TRYLOCK"), n(name)],
        Request::TryLockWithLease { name } => vec![s("TRYLOCK"), n(name), s("WITHLEASE")],
        Request::Unlock { name } => vec![s("UNLOCK"), n(name)],
        Request::Holds { name } => vec![s("HOLDS"), n(name)],
        Request::Lease { name } => vec![s("LEASE"), n(name)],
        Request::Status => vec![s("STATUS")],
        Request::WatchView => vec![s("WATCH"), s("VIEW")],
        Request::Auth { token } => vec![s("AUTH"), s(token)],
        Request::AcceptTerm { term } => vec![s("ACCEPTTERM"), term.to_string().into_bytes()],
        Request::Keyring { op } => match op {
            KeyringOp::List => vec![s("KEYRING"), s("LIST")],
            KeyringOp::Install { key } => vec![s("KEYRING"), s("INSTALL"), key.to_vec()],
            KeyringOp::Use { key_id } => vec![s("KEYRING"), s("USE"), key_id.to_string().into_bytes()],
            KeyringOp::Remove { key_id } => vec![s("KEYRING"), s("REMOVE"), key_id.to_string().into_bytes()],
        },
    }
}

/// The lock a request names, if any (for the in-band `-LOST`).
pub fn named_lock(request: &Request) -> Option<&LockName> {
    match request {
        Request::Lock { name, .. }
        | Request::LockWithLease { name, .. }
        | Request::TryLock { name }
        | Request::TryLockWithLease { name }
        | Request::Unlock { name }
        | Request::Holds { name }
        | Request::Lease { name } => Some(name),
        _ => None,
    }
}

/// Whether a request may wait (and so holds back the commands after it).
pub fn blocks(request: &Request) -> bool {
    matches!(request, Request::Lock { .. } | Request::LockWithLease { .. } | Request::Keyring { .. })
}

/// The name the protocol gives a loss reason.
pub fn lost_reason_str(reason: LostReason) -> &'static str {
    match reason {
        LostReason::Duplicate => "duplicate",
        LostReason::QuorumLost => "quorum-lost",
        LostReason::LeaseExpired => "lease-expired",
    }
}

fn lost_reason(s: &str) -> Option<LostReason> {
    [LostReason::Duplicate, LostReason::QuorumLost, LostReason::LeaseExpired]
        .into_iter()
        .find(|r| lost_reason_str(*r) == s)
}

/// The in-band error for a lost lock: `-LOST name token reason`.
pub fn lost_error(name: &LockName, token: Token, reason: LostReason) -> Value {
    Value::error("LOST", format!("{name} {} {}", token.0, lost_reason_str(reason)))
}

/// A `-NOTHELD` error for `name`.
fn not_held(name: Option<&LockName>) -> Value {
    match name {
        Some(name) => Value::error("NOTHELD", format!("lock '{name}' is not held by this connection")),
        None => Value::error("NOTHELD", "the lock is not held by this connection"),
    }
}

/// The reply to `request` for the node's answer `reply`; `me` is the
/// connection (`STATUS` lists its own locks apart).
pub fn reply_value(request: &Request, reply: Reply, me: ClientId) -> Value {
    let with_lease = matches!(request, Request::LockWithLease { .. } | Request::TryLockWithLease { .. });
    match reply {
        Reply::Acquired { token, holds } if with_lease => {
            Value::Array(vec![Value::uint(token.0), Value::Int(holds.into()), Value::Int(0)])
        }
        Reply::Acquired { token, .. } => Value::uint(token.0),
        Reply::AcquiredWithLease { token, holds, lease_ms } if with_lease => {
            Value::Array(vec![Value::uint(token.0), Value::Int(holds.into()), Value::uint(lease_ms)])
        }
        Reply::AcquiredWithLease { token, .. } => Value::uint(token.0),
        Reply::Failed { reason: FailReason::Busy } => Value::Null,
        Reply::Failed { reason: FailReason::TimedOut } => {
            let name = named_lock(request).map(|n| n.as_str()).unwrap_or_default();
            Value::error("TIMEOUT", format!("lock '{name}' not granted before the timeout"))
        }
        Reply::Failed { reason: FailReason::NoQuorum } => {
            Value::error("NOQUORUM", "this node's side of the cluster holds no majority of the members")
        }
        Reply::Unlocked | Reply::Authenticated | Reply::Watching => Value::Simple("OK".into()),
        Reply::NotHeld | Reply::Lease { lease_ms: None } => not_held(named_lock(request)),
        Reply::Lease { lease_ms: Some(ms) } => Value::uint(ms),
        Reply::Holds { holds } => Value::Int(holds.into()),
        Reply::Status(status) => status_value(&status, me),
        Reply::Error { message } if message.contains("stopping") => Value::error("STOPPING", message),
        Reply::Error { message } => Value::error("ERR", message),
        Reply::Keyring(report) => keyring_value(&report),
        Reply::TermAccepted { still_halted_on } => {
            still_halted_on.map_or(Value::Null, |t| Value::Int(t.into()))
        }
    }
}

/// What a client reads: the node's answer to `request` that `v` encodes
/// (the inverse of [`reply_value`]).
pub fn reply_from_value(request: &Request, v: Value) -> Reply {
    let bad = |v: &Value| Reply::Error { message: format!("unexpected reply {v:?}") };
    if let Value::Error(e) = &v {
        let (code, message) = e.split_once(' ').unwrap_or((e, ""));
        return match (code, request) {
            ("TIMEOUT", _) => Reply::Failed { reason: FailReason::TimedOut },
            ("NOQUORUM", _) => Reply::Failed { reason: FailReason::NoQuorum },
            ("NOTHELD" | "LOST", Request::Lease { .. }) => Reply::Lease { lease_ms: None },
            ("NOTHELD" | "LOST", Request::Holds { .. }) => Reply::Holds { holds: 0 },
            ("NOTHELD" | "LOST", _) => Reply::NotHeld,
            _ => Reply::Error { message: if code == "ERR" { message.to_string() } else { e.clone() } },
        };
    }
    let uint = |v: &Value| v.as_int().and_then(|n| u64::try_from(n).ok());
    match request {
        Request::Lock { .. }
        | Request::TryLock { .. }
        | Request::LockWithLease { .. }
        | Request::TryLockWithLease { .. } => match &v {
            Value::Null => Reply::Failed { reason: FailReason::Busy },
            Value::Array(items) if items.len() == 3 => {
                match (uint(&items[0]), uint(&items[1]), uint(&items[2])) {
                    (Some(token), Some(holds), Some(lease_ms)) => Reply::AcquiredWithLease {
                        token: Token(token),
                        holds: u32::try_from(holds).unwrap_or(u32::MAX),
                        lease_ms,
                    },
                    _ => bad(&v),
                }
            }
            other => uint(other).map_or_else(|| bad(&v), |t| Reply::Acquired { token: Token(t), holds: 1 }),
        },
        Request::Unlock { .. } | Request::Auth { .. } => match &v {
            Value::Simple(_) => {
                if matches!(request, Request::Auth { .. }) {
                    Reply::Authenticated
                } else {
                    Reply::Unlocked
                }
            }
            _ => bad(&v),
        },
        Request::Lease { .. } => uint(&v).map_or_else(|| bad(&v), |ms| Reply::Lease { lease_ms: Some(ms) }),
        Request::Holds { .. } => uint(&v).map_or_else(|| bad(&v), |h| Reply::Holds { holds: h as u32 }),
        Request::Status => status_from_value(&v).map_or_else(|| bad(&v), |s| Reply::Status(Box::new(s))),
        Request::WatchView => match &v {
            Value::Simple(_) => Reply::Watching,
            _ => bad(&v),
        },
        Request::AcceptTerm { .. } => match &v {
            Value::Null => Reply::TermAccepted { still_halted_on: None },
            other => uint(other)
                .map_or_else(|| bad(&v), |t| Reply::TermAccepted { still_halted_on: Some(t as u32) }),
        },
        Request::Keyring { .. } => {
            keyring_from_value(&v).map_or_else(|| bad(&v), |r| Reply::Keyring(Box::new(r)))
        }
    }
}

/// The push (RESP3) for a message the node sends unasked; `None` for a
/// reply.
pub fn push_value(msg: &ServerMessage) -> Option<Value> {
    match msg {
        ServerMessage::Reply { .. } => None,
        ServerMessage::Lost { name, token, reason } => Some(Value::Push(vec![
            Value::bulk("lost"),
            Value::bulk(name.as_str()),
            Value::uint(token.0),
            Value::bulk(lost_reason_str(*reason)),
        ])),
        ServerMessage::Stopping { grace_ms } => {
            Some(Value::Push(vec![Value::bulk("stopping"), Value::uint(*grace_ms)]))
        }
        ServerMessage::View(view) => Some(Value::Push(vec![Value::bulk("view"), view_value(view)])),
        ServerMessage::Closing { reason } => Some(Value::Push(vec![
            Value::bulk("closing"),
            Value::bulk(reason.code()),
            Value::bulk(reason.to_string()),
        ])),
    }
}

/// The message a push carries (the inverse of [`push_value`]); `None` for
/// a push this library does not know.
pub fn push_from_value(items: &[Value]) -> Option<ServerMessage> {
    match (items.first()?.as_text()?, items) {
        ("lost", [_, name, token, reason]) => Some(ServerMessage::Lost {
            name: LockName::new(name.as_text()?).ok()?,
            token: Token(u64::try_from(token.as_int()?).ok()?),
            reason: lost_reason(reason.as_text()?)?,
        }),
        ("stopping", [_, grace]) => {
            Some(ServerMessage::Stopping { grace_ms: u64::try_from(grace.as_int()?).ok()? })
        }
        ("view", [_, view]) => Some(ServerMessage::View(Box::new(view_from_value(view)?))),
        ("closing", [_, code, ..]) => {
            Some(ServerMessage::Closing { reason: CloseReason::from_code(code.as_text()?)? })
        }
        _ => None,
    }
}

fn kv(k: &str, v: Value) -> (Value, Value) {
    (Value::bulk(k), v)
}

fn opt_int(v: Option<u32>) -> Value {
    v.map_or(Value::Null, |n| Value::Int(n.into()))
}

fn member_value(m: &MemberInfo) -> Value {
    Value::Map(vec![
        kv("name", Value::bulk(m.name.as_str())),
        kv("addr", Value::bulk(m.id.addr.to_string())),
        kv("epoch", Value::uint(m.id.epoch)),
        kv("state", Value::bulk(m.state.as_str())),
    ])
}

/// The `STATUS` map of `s` for connection `me`.
pub fn status_value(s: &Status, me: ClientId) -> Value {
    let lock = |h: &HeldInfo, with_client: bool| {
        let mut pairs = vec![
            kv("name", Value::bulk(h.name.as_str())),
            kv("token", Value::uint(h.token.0)),
            kv("holds", Value::Int(h.holds.into())),
        ];
        if with_client {
            pairs.push(kv("client", Value::uint(h.client.0)));
        }
        Value::Map(pairs)
    };
    let table = s.table.as_ref().map_or(Value::Null, |t| {
        let entries = t
            .entries
            .iter()
            .map(|e| {
                Value::Map(vec![
                    kv("name", Value::bulk(e.name.as_str())),
                    kv("addr", Value::bulk(e.node.addr.to_string())),
                    kv("epoch", Value::uint(e.node.epoch)),
                    kv("client", Value::uint(e.client.0)),
                    kv("token", Value::uint(e.token.0)),
                ])
            })
            .collect();
        Value::Map(vec![
            kv("held", Value::uint(t.held)),
            kv("waiters", Value::uint(t.waiters)),
            kv("serving", Value::Bool(t.serving)),
            kv("entries", Value::Array(entries)),
        ])
    });
    let security = Value::Map(vec![
        kv("insecure", Value::Bool(s.security.insecure)),
        kv("primary_key", opt_int(s.security.primary_key)),
        kv("keys", Value::Array(s.security.keys.iter().map(|k| Value::Int((*k).into())).collect())),
    ]);
    let members = s.members.iter().chain(&s.departed).map(member_value).collect();
    Value::Map(vec![
        kv("node", Value::bulk(s.name.as_str())),
        kv("addr", Value::bulk(s.id.addr.to_string())),
        kv("epoch", Value::uint(s.id.epoch)),
        kv("bind", Value::bulk(s.bind.to_string())),
        kv("version", Value::bulk(s.version.as_str())),
        kv("mode", Value::bulk(s.mode.as_str())),
        kv("quorum", opt_int(s.quorum)),
        kv("view_id", Value::uint(s.view_id)),
        // A 64-bit hash: as text, since RESP integers are signed.
        kv("view_digest", Value::bulk(format!("{:016x}", s.view_digest))),
        kv("members", Value::Array(members)),
        kv("coordinator", s.coordinator.as_ref().map_or(Value::Null, member_value)),
        kv(
            "locks",
            Value::Array(s.locks.iter().filter(|h| h.client == me).map(|h| lock(h, false)).collect()),
        ),
        kv("node_locks", Value::Array(s.locks.iter().map(|h| lock(h, true)).collect())),
        kv("table", table),
        kv("security", security),
        kv("halted_on_term", opt_int(s.halted_on_term)),
    ])
}

fn get_u64(v: &Value, key: &str) -> Option<u64> {
    u64::try_from(v.get(key)?.as_int()?).ok()
}

fn get_u32(v: &Value, key: &str) -> Option<u32> {
    u32::try_from(v.get(key)?.as_int()?).ok()
}

fn get_text(v: &Value, key: &str) -> Option<String> {
    v.get(key)?.as_text().map(str::to_string)
}

fn get_opt_u32(v: &Value, key: &str) -> Option<Option<u32>> {
    match v.get(key)? {
        Value::Null => Some(None),
        x => Some(Some(u32::try_from(x.as_int()?).ok()?)),
    }
}

fn node_of(v: &Value) -> Option<NodeId> {
    Some(NodeId { epoch: get_u64(v, "epoch")?, addr: get_text(v, "addr")?.parse::<SocketAddr>().ok()? })
}

fn member_of(v: &Value) -> Option<MemberInfo> {
    Some(MemberInfo {
        name: get_text(v, "name")?,
        id: node_of(v)?,
        state: MemberState::parse(&get_text(v, "state")?)?,
    })
}

fn items<'a>(v: &'a Value, key: &str) -> Option<&'a [Value]> {
    v.get(key)?.as_items()
}

/// The [`Status`] a `STATUS` map encodes (its `locks` are every lock of
/// the node's clients, from `node_locks`).
pub fn status_from_value(v: &Value) -> Option<Status> {
    let mut members = Vec::new();
    let mut departed = Vec::new();
    for m in items(v, "members")? {
        let m = member_of(m)?;
        if m.state == MemberState::Down { departed.push(m) } else { members.push(m) }
    }
    let locks = items(v, "node_locks")?
        .iter()
        .map(|h| {
            Some(HeldInfo {
                client: ClientId(get_u64(h, "client")?),
                name: LockName::new(get_text(h, "name")?).ok()?,
                token: Token(get_u64(h, "token")?),
                holds: get_u32(h, "holds")?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let table = match v.get("table")? {
        Value::Null => None,
        t => Some(TableInfo {
            held: get_u64(t, "held")?,
            waiters: get_u64(t, "waiters")?,
            serving: t.get("serving")?.as_int()? != 0,
            entries: items(t, "entries")?
                .iter()
                .map(|e| {
                    Some(TableEntry {
                        name: LockName::new(get_text(e, "name")?).ok()?,
                        node: node_of(e)?,
                        client: ClientId(get_u64(e, "client")?),
                        token: Token(get_u64(e, "token")?),
                    })
                })
                .collect::<Option<Vec<_>>>()?,
        }),
    };
    let sec = v.get("security")?;
    let security = SecurityInfo {
        insecure: sec.get("insecure")?.as_int()? != 0,
        primary_key: get_opt_u32(sec, "primary_key")?,
        keys: items(sec, "keys")?.iter().map(|k| u32::try_from(k.as_int()?).ok()).collect::<Option<_>>()?,
    };
    Some(Status {
        name: get_text(v, "node")?,
        id: node_of(v)?,
        bind: get_text(v, "bind")?.parse().ok()?,
        mode: get_text(v, "mode")?,
        view_id: get_u64(v, "view_id")?,
        view_digest: u64::from_str_radix(&get_text(v, "view_digest")?, 16).ok()?,
        members,
        departed,
        quorum: get_opt_u32(v, "quorum")?,
        version: get_text(v, "version")?,
        coordinator: match v.get("coordinator")? {
            Value::Null => None,
            c => Some(member_of(c)?),
        },
        locks,
        table,
        security,
        halted_on_term: get_opt_u32(v, "halted_on_term")?,
    })
}

fn node_value(id: &NodeId) -> Value {
    Value::Map(vec![kv("addr", Value::bulk(id.addr.to_string())), kv("epoch", Value::uint(id.epoch))])
}

/// The map of a view in a `view` push (`WATCH VIEW`): `id`, `digest`,
/// `members` (member maps, oldest first), `coordinator`, `merge` and
/// `subgroups` (arrays of `{addr, epoch}` maps; empty unless a merge).
pub fn view_value(v: &ViewInfo) -> Value {
    Value::Map(vec![
        kv("id", Value::uint(v.id)),
        kv("digest", Value::bulk(format!("{:016x}", v.digest))),
        kv("members", Value::Array(v.members.iter().map(member_value).collect())),
        kv("coordinator", v.coordinator.as_ref().map_or(Value::Null, member_value)),
        kv("merge", Value::Bool(v.merge)),
        kv(
            "subgroups",
            Value::Array(
                v.subgroups.iter().map(|g| Value::Array(g.iter().map(node_value).collect())).collect(),
            ),
        ),
    ])
}

/// The [`ViewInfo`] a view map encodes.
pub fn view_from_value(v: &Value) -> Option<ViewInfo> {
    Some(ViewInfo {
        id: get_u64(v, "id")?,
        digest: u64::from_str_radix(&get_text(v, "digest")?, 16).ok()?,
        members: items(v, "members")?.iter().map(member_of).collect::<Option<_>>()?,
        coordinator: match v.get("coordinator")? {
            Value::Null => None,
            c => Some(member_of(c)?),
        },
        merge: v.get("merge")?.as_int()? != 0,
        subgroups: items(v, "subgroups")?
            .iter()
            .map(|g| g.as_items()?.iter().map(node_of).collect::<Option<Vec<_>>>())
            .collect::<Option<_>>()?,
    })
}

/// The `KEYRING` reply map of `r`.
pub fn keyring_value(r: &KeyringReport) -> Value {
    let keys = r
        .keys
        .iter()
        .map(|k| {
            Value::Map(vec![
                kv("key_id", Value::Int(k.key_id.into())),
                kv("members", Value::Int(k.members.into())),
                kv("primary", Value::Int(k.primary.into())),
            ])
        })
        .collect();
    let failed = r
        .failed
        .iter()
        .map(|f| {
            Value::Map(vec![
                kv("name", Value::bulk(f.name.as_str())),
                kv("addr", Value::bulk(f.id.addr.to_string())),
                kv("epoch", Value::uint(f.id.epoch)),
                kv("reason", Value::bulk(f.reason.as_str())),
            ])
        })
        .collect();
    Value::Map(vec![
        kv("members", Value::Int(r.members.into())),
        kv("keys", Value::Array(keys)),
        kv("failed", Value::Array(failed)),
        kv("refused", r.refused.as_ref().map_or(Value::Null, |s| Value::bulk(s.as_str()))),
    ])
}

/// The [`KeyringReport`] a `KEYRING` reply encodes.
pub fn keyring_from_value(v: &Value) -> Option<KeyringReport> {
    Some(KeyringReport {
        members: get_u32(v, "members")?,
        keys: items(v, "keys")?
            .iter()
            .map(|k| {
                Some(KeyHolders {
                    key_id: get_u32(k, "key_id")?,
                    members: get_u32(k, "members")?,
                    primary: get_u32(k, "primary")?,
                })
            })
            .collect::<Option<_>>()?,
        failed: items(v, "failed")?
            .iter()
            .map(|f| {
                Some(KeyringFailure {
                    name: get_text(f, "name")?,
                    id: node_of(f)?,
                    reason: get_text(f, "reason")?,
                })
            })
            .collect::<Option<_>>()?,
        refused: match v.get("refused")? {
            Value::Null => None,
            s => Some(s.as_text()?.to_string()),
        },
    })
}

#[cfg(test)]
#[path = "commands_tests.rs"]
mod tests;
