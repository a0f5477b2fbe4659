use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;

fn args(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn name(s: &str) -> LockName {
    LockName::new(s).unwrap()
}

fn code(v: Value) -> String {
    match v {
        Value::Error(e) => e.split(' ').next().unwrap().to_string(),
        other => panic!("not an error: {other:?}"),
    }
}

#[test]
fn lock_commands_read_as_requests() {
    let parse_ok = |v: &[&str]| parse(&args(v)).unwrap();
    assert_eq!(
        parse_ok(&["lock", "a", "250"]),
        Command::Node(Request::Lock { name: name("a"), timeout_ms: 250 })
    );
    assert_eq!(
        parse_ok(&["LOCK", "a"]),
        Command::Node(Request::Lock { name: name("a"), timeout_ms: u64::MAX })
    );
    assert_eq!(
        parse_ok(&["LOCK", "a", "0", "withlease"]),
        Command::Node(Request::LockWithLease { name: name("a"), timeout_ms: u64::MAX })
    );
    assert_eq!(parse_ok(&["TRYLOCK", "a"]), Command::Node(Request::TryLock { name: name("a") }));
    assert_eq!(
        parse_ok(&["TryLock", "a", "WITHLEASE"]),
        Command::Node(Request::TryLockWithLease { name: name("a") })
    );
    assert_eq!(parse_ok(&["UNLOCK", "a"]), Command::Node(Request::Unlock { name: name("a") }));
    assert_eq!(parse_ok(&["HOLDS", "a"]), Command::Node(Request::Holds { name: name("a") }));
    assert_eq!(parse_ok(&["LEASE", "a"]), Command::Node(Request::Lease { name: name("a") }));
    assert_eq!(parse_ok(&["status"]), Command::Node(Request::Status));
    assert_eq!(parse_ok(&["ACCEPTTERM", "9"]), Command::Node(Request::AcceptTerm { term: 9 }));
    assert_eq!(parse_ok(&["WATCH", "view"]), Command::Node(Request::WatchView));
}

#[test]
fn connection_commands_read() {
    let parse_ok = |v: &[&str]| parse(&args(v)).unwrap();
    assert_eq!(parse_ok(&["HELLO"]), Command::Hello { proto: None, auth: None, name: None });
    assert_eq!(
        parse_ok(&["HELLO", "3", "AUTH", "default", "pw", "SETNAME", "x"]),
        Command::Hello { proto: Some(Proto::Resp3), auth: Some("pw".into()), name: Some("x".into()) }
    );
    assert_eq!(code(parse(&args(&["HELLO", "4"])).unwrap_err()), "NOPROTO");
    assert_eq!(parse_ok(&["AUTH", "pw"]), Command::Auth { password: "pw".into() });
    assert_eq!(parse_ok(&["AUTH", "default", "pw"]), Command::Auth { password: "pw".into() });
    assert_eq!(parse_ok(&["ping"]), Command::Ping(None));
    assert_eq!(parse_ok(&["CLIENT", "setname", "w1"]), Command::SetName("w1".into()));
    assert_eq!(parse_ok(&["QUIT"]), Command::Quit);
    assert_eq!(parse_ok(&["INFO", "server"]), Command::Info);
}

#[test]
fn bad_commands_are_errors_with_a_code() {
    let err = |v: &[&str]| code(parse(&args(v)).unwrap_err());
    // What clients send on connect, and anything else unknown.
    assert_eq!(err(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]), "ERR");
    assert_eq!(err(&["SELECT", "0"]), "ERR");
    assert_eq!(err(&["COMMAND", "DOCS"]), "ERR");
    assert_eq!(err(&["SET", "k", "v"]), "ERR");
    // Wrong arity.
    assert_eq!(err(&["LOCK"]), "ERR");
    assert_eq!(err(&["UNLOCK", "a", "b"]), "ERR");
    assert_eq!(err(&["LOCK", "a", "soon"]), "ERR");
    assert_eq!(err(&["LOCK", "a", "-1"]), "ERR");
    // Names.
    assert_eq!(code(parse(&[b"LOCK".to_vec(), vec![0xff, 0xfe]]).unwrap_err()), "BADNAME");
    assert_eq!(err(&["LOCK", ""]), "BADNAME");
    assert_eq!(code(parse(&[b"TRYLOCK".to_vec(), vec![b'x'; 256]]).unwrap_err()), "BADNAME");
    // A long, odd command name is shown short and printable.
    let long = parse(&[vec![b'\n'; 500]]).unwrap_err();
    assert!(matches!(&long, Value::Error(e) if e.len() < 120 && !e.contains('\n')), "{long:?}");
}

#[test]
fn replies_render_as_documented() {
    let me = ClientId(1);
    let lock = Request::Lock { name: name("a"), timeout_ms: 5 };
    let try_lock = Request::TryLock { name: name("a") };
    let with_lease = Request::LockWithLease { name: name("a"), timeout_ms: 5 };
    let token = Token::new(Token::MAX_TERM, u16::MAX, Token::MAX_SEQ);
    assert_eq!(reply_value(&lock, Reply::Acquired { token, holds: 1 }, me), Value::Int(token.0 as i64));
    assert_eq!(reply_value(&try_lock, Reply::Failed { reason: FailReason::Busy }, me), Value::Null);
    assert_eq!(code(reply_value(&lock, Reply::Failed { reason: FailReason::TimedOut }, me)), "TIMEOUT");
    assert_eq!(code(reply_value(&lock, Reply::Failed { reason: FailReason::NoQuorum }, me)), "NOQUORUM");
    assert_eq!(
        reply_value(&with_lease, Reply::AcquiredWithLease { token: Token(7), holds: 2, lease_ms: 900 }, me),
        Value::Array(vec![Value::Int(7), Value::Int(2), Value::Int(900)])
    );
    let unlock = Request::Unlock { name: name("a") };
    assert_eq!(reply_value(&unlock, Reply::Unlocked, me), Value::Simple("OK".into()));
    assert_eq!(code(reply_value(&unlock, Reply::NotHeld, me)), "NOTHELD");
    let lease = Request::Lease { name: name("a") };
    assert_eq!(reply_value(&lease, Reply::Lease { lease_ms: Some(42) }, me), Value::Int(42));
    assert_eq!(code(reply_value(&lease, Reply::Lease { lease_ms: None }, me)), "NOTHELD");
    assert_eq!(
        lost_error(&name("a"), Token(9), LostReason::Duplicate),
        Value::Error("LOST a 9 duplicate".into())
    );
    let stopping = Reply::Error { message: "the agent is stopping".into() };
    assert_eq!(code(reply_value(&lock, stopping, me)), "STOPPING");
}

#[test]
fn every_token_is_a_non_negative_resp_integer() {
    let max = Token::new(Token::MAX_TERM, u16::MAX, Token::MAX_SEQ);
    assert!(i64::try_from(max.0).is_ok(), "the largest token fits a signed 64-bit integer");
    let lock = Request::Lock { name: name("a"), timeout_ms: 5 };
    let v = reply_value(&lock, Reply::Acquired { token: max, holds: 1 }, ClientId(1));
    assert!(matches!(v, Value::Int(n) if n > 0 && n as u64 == max.0));
}

fn node() -> impl Strategy<Value = NodeId> {
    (1u64..i64::MAX as u64, any::<u32>(), any::<u16>()).prop_map(|(epoch, ip, port)| NodeId {
        epoch,
        addr: SocketAddr::new(Ipv4Addr::from(ip).into(), port),
    })
}

fn lock_name() -> impl Strategy<Value = LockName> {
    "[a-z/._ -]{1,40}".prop_map(|s| LockName::new(s).unwrap())
}

fn member(state: MemberState) -> impl Strategy<Value = MemberInfo> {
    (".{0,20}", node()).prop_map(move |(name, id)| MemberInfo { name, id, state })
}

fn token() -> impl Strategy<Value = Token> {
    (0..=Token::MAX_TERM, any::<u16>(), 0..=Token::MAX_SEQ).prop_map(|(a, b, c)| Token::new(a, b, c))
}

fn status() -> impl Strategy<Value = Status> {
    let held = (0u64..1 << 40, lock_name(), token(), any::<u32>())
        .prop_map(|(c, name, token, holds)| HeldInfo { client: ClientId(c), name, token, holds });
    let entry = (lock_name(), node(), 0u64..1 << 40, token()).prop_map(|(name, node, c, token)| TableEntry {
        name,
        node,
        client: ClientId(c),
        token,
    });
    let table = (0u64..1 << 40, 0u64..1 << 40, any::<bool>(), prop::collection::vec(entry, 0..4))
        .prop_map(|(held, waiters, serving, entries)| TableInfo { held, waiters, serving, entries });
    let alive = prop_oneof![Just(MemberState::Alive), Just(MemberState::Suspect)].prop_flat_map(member);
    (
        (".{0,20}", node(), "[a-z/0-9]{0,12}", 0u64..1 << 40, any::<u64>()),
        prop::collection::vec(alive, 0..5),
        prop::collection::vec(member(MemberState::Down), 0..3),
        prop::option::of(member(MemberState::Alive)),
        prop::collection::vec(held, 0..4),
        prop::option::of(table),
        (prop::option::of(any::<u32>()), prop::option::of(any::<u32>())),
    )
        .prop_map(
            |(
                (name, id, mode, view_id, view_digest),
                members,
                departed,
                coordinator,
                locks,
                table,
                (quorum, halted),
            )| {
                Status {
                    name,
                    id,
                    bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7946),
                    mode,
                    view_id,
                    view_digest,
                    members,
                    departed,
                    quorum,
                    version: "0.1.0".into(),
                    coordinator,
                    locks,
                    table,
                    security: SecurityInfo {
                        insecure: view_id % 2 == 0,
                        primary_key: Some(7),
                        keys: vec![7, 9],
                    },
                    halted_on_term: halted,
                }
            },
        )
}

/// The reply bytes as a client reads them, through `redis-protocol`.
fn through_the_wire(v: &Value, proto: Proto) -> Value {
    use redis_protocol::resp2::types::OwnedFrame as F2;
    use redis_protocol::resp3::types::OwnedFrame as F3;
    fn from2(f: F2) -> Value {
        match f {
            F2::SimpleString(s) => Value::Simple(String::from_utf8(s).unwrap()),
            F2::Error(e) => Value::Error(e),
            F2::Integer(n) => Value::Int(n),
            F2::BulkString(b) => Value::Bulk(b),
            F2::Null => Value::Null,
            F2::Array(items) => Value::Array(items.into_iter().map(from2).collect()),
        }
    }
    fn from3(f: F3) -> Value {
        match f {
            F3::SimpleString { data, .. } => Value::Simple(String::from_utf8(data).unwrap()),
            F3::SimpleError { data, .. } => Value::Error(data),
            F3::Number { data, .. } => Value::Int(data),
            F3::BlobString { data, .. } => Value::Bulk(data),
            F3::Null => Value::Null,
            F3::Boolean { data, .. } => Value::Bool(data),
            F3::Array { data, .. } => Value::Array(data.into_iter().map(from3).collect()),
            F3::Push { data, .. } => Value::Push(data.into_iter().map(from3).collect()),
            F3::Map { data, .. } => Value::Map(data.into_iter().map(|(k, v)| (from3(k), from3(v))).collect()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let bytes = v.to_bytes(proto);
    match proto {
        Proto::Resp2 => from2(redis_protocol::resp2::decode::decode(&bytes).unwrap().unwrap().0),
        Proto::Resp3 => from3(redis_protocol::resp3::decode::complete::decode(&bytes).unwrap().unwrap().0),
    }
}

proptest! {
    #[test]
    fn status_reads_back_in_both_protocols(s in status(), resp3 in any::<bool>()) {
        let proto = if resp3 { Proto::Resp3 } else { Proto::Resp2 };
        let v = through_the_wire(&status_value(&s, ClientId(1)), proto);
        prop_assert_eq!(status_from_value(&v), Some(s));
    }

    #[test]
    fn requests_survive_the_command_table(
        n in lock_name(),
        t in 1u64..1 << 50,
        term in any::<u32>(),
        key_id in any::<u32>(),
    ) {
        let requests = [
            Request::Lock { name: n.clone(), timeout_ms: t },
            Request::LockWithLease { name: n.clone(), timeout_ms: t },
            Request::TryLock { name: n.clone() },
            Request::TryLockWithLease { name: n.clone() },
            Request::Unlock { name: n.clone() },
            Request::Holds { name: n.clone() },
            Request::Lease { name: n.clone() },
            Request::Status,
            Request::WatchView,
            Request::AcceptTerm { term },
            Request::Keyring { op: KeyringOp::List },
            Request::Keyring { op: KeyringOp::Install { key: [7; KEY_LEN] } },
            Request::Keyring { op: KeyringOp::Use { key_id } },
            Request::Keyring { op: KeyringOp::Remove { key_id } },
        ];
        for r in requests {
            prop_assert_eq!(parse(&command_args(&r)), Ok(Command::Node(r)));
        }
    }

    #[test]
    fn replies_read_back(t in token(), holds in 1u32..1000, lease_ms in 0u64..1 << 40, n in lock_name()) {
        let me = ClientId(3);
        let cases = [
            (Request::LockWithLease { name: n.clone(), timeout_ms: 1 }, Reply::AcquiredWithLease { token: t, holds, lease_ms }),
            (Request::TryLockWithLease { name: n.clone() }, Reply::Failed { reason: FailReason::Busy }),
            (Request::Lock { name: n.clone(), timeout_ms: 1 }, Reply::Failed { reason: FailReason::TimedOut }),
            (Request::Lock { name: n.clone(), timeout_ms: 1 }, Reply::Failed { reason: FailReason::NoQuorum }),
            (Request::Unlock { name: n.clone() }, Reply::Unlocked),
            (Request::Unlock { name: n.clone() }, Reply::NotHeld),
            (Request::Lease { name: n.clone() }, Reply::Lease { lease_ms: Some(lease_ms) }),
            (Request::Lease { name: n.clone() }, Reply::Lease { lease_ms: None }),
            (Request::Holds { name: n.clone() }, Reply::Holds { holds }),
            (Request::AcceptTerm { term: 3 }, Reply::TermAccepted { still_halted_on: Some(holds) }),
            (Request::AcceptTerm { term: 3 }, Reply::TermAccepted { still_halted_on: None }),
            (Request::Status, Reply::Error { message: "no".into() }),
        ];
        for (req, reply) in cases {
            for proto in [Proto::Resp2, Proto::Resp3] {
                let v = through_the_wire(&reply_value(&req, reply.clone(), me), proto);
                prop_assert_eq!(reply_from_value(&req, v), reply.clone());
            }
        }
    }

    #[test]
    fn pushes_read_back(n in lock_name(), t in token(), grace_ms in 0u64..1 << 40) {
        let msgs = [
            ServerMessage::Lost { name: n.clone(), token: t, reason: LostReason::Duplicate },
            ServerMessage::Lost { name: n.clone(), token: t, reason: LostReason::QuorumLost },
            ServerMessage::Lost { name: n, token: t, reason: LostReason::LeaseExpired },
            ServerMessage::Stopping { grace_ms },
            ServerMessage::Closing { reason: CloseReason::SlowReader },
            ServerMessage::View(Box::new(ViewInfo {
                id: grace_ms,
                digest: u64::MAX - grace_ms,
                members: vec![MemberInfo {
                    name: "n1".into(),
                    id: NodeId { epoch: 3, addr: "127.0.0.1:7001".parse().unwrap() },
                    state: MemberState::Alive,
                }],
                coordinator: None,
                merge: grace_ms % 2 == 0,
                subgroups: vec![vec![NodeId { epoch: 3, addr: "[::1]:7001".parse().unwrap() }], vec![]],
            })),
        ];
        for msg in msgs {
            let v = through_the_wire(&push_value(&msg).unwrap(), Proto::Resp3);
            prop_assert_eq!(push_from_value(v.as_items().unwrap()), Some(msg));
        }
    }

    #[test]
    fn any_arguments_never_panic(a in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..6)) {
        let _ = parse(&a);
    }
}

#[test]
fn keyring_reports_read_back() {
    let r = KeyringReport {
        members: 3,
        keys: vec![KeyHolders { key_id: 7, members: 3, primary: 2 }],
        failed: vec![KeyringFailure {
            name: "n3".into(),
            id: NodeId { epoch: 5, addr: "127.0.0.1:7003".parse().unwrap() },
            reason: "no answer".into(),
        }],
        refused: Some("insecure".into()),
    };
    for proto in [Proto::Resp2, Proto::Resp3] {
        let v = through_the_wire(&keyring_value(&r), proto);
        assert_eq!(keyring_from_value(&v), Some(r.clone()));
    }
}
