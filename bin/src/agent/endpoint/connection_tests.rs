use swimlock_wire::client::FailReason;

use super::*;

fn conn() -> Conn {
    let mut c = Conn::new(None, Arc::new(AtomicUsize::new(0)));
    c.connected(ClientId(9), &mut Vec::new());
    c
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    resp::encode_command(args, &mut out);
    out
}

/// Feeds `bytes`; returns the requests sent to the node.
fn feed(c: &mut Conn, bytes: &[u8]) -> Vec<ClientRequest> {
    let mut actions = Vec::new();
    c.read(bytes, &mut actions);
    requests(actions)
}

fn requests(actions: Vec<Action>) -> Vec<ClientRequest> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Request(r) => r,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn answer(c: &mut Conn, id: u64, reply: Reply) -> Vec<ClientRequest> {
    let mut actions = Vec::new();
    c.on_node(ServerMessage::Reply { id, reply }, &mut actions);
    requests(actions)
}

fn output(c: &mut Conn) -> String {
    let mut out = Vec::new();
    c.take_output(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn name(s: &str) -> LockName {
    LockName::new(s).unwrap()
}

#[test]
fn replies_keep_request_order_and_a_waiting_lock_holds_back_what_follows() {
    let mut c = conn();
    let mut bytes = cmd(&["TRYLOCK", "a"]);
    bytes.extend(cmd(&["LOCK", "b", "100"]));
    bytes.extend(cmd(&["PING"]));
    bytes.extend(cmd(&["UNLOCK", "b"]));
    let sent = feed(&mut c, &bytes);
    // TRYLOCK and LOCK go at once; PING and UNLOCK wait behind the LOCK.
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].request, Request::Lock { name: name("b"), timeout_ms: 100 });
    // The LOCK is answered first: nothing goes out before TRYLOCK's reply.
    assert!(answer(&mut c, sent[1].id, Reply::Acquired { token: Token(7), holds: 1 }).len() == 1);
    assert_eq!(output(&mut c), "");
    answer(&mut c, sent[0].id, Reply::Failed { reason: FailReason::Busy });
    assert_eq!(output(&mut c), "$-1\r\n:7\r\n+PONG\r\n");
}

#[test]
fn the_unlock_behind_a_lock_runs_after_the_grant() {
    let mut c = conn();
    let mut bytes = cmd(&["LOCK", "b"]);
    bytes.extend(cmd(&["UNLOCK", "b"]));
    let sent = feed(&mut c, &bytes);
    assert_eq!(sent.len(), 1, "the UNLOCK waits for the LOCK's answer");
    let after = answer(&mut c, sent[0].id, Reply::Acquired { token: Token(7), holds: 1 });
    assert_eq!(after[0].request, Request::Unlock { name: name("b") });
    answer(&mut c, after[0].id, Reply::Unlocked);
    assert_eq!(output(&mut c), ":7\r\n+OK\r\n");
}

#[test]
fn a_loss_is_answered_in_band_on_the_next_command_naming_the_lock() {
    let mut c = conn();
    let lost = ServerMessage::Lost { name: name("a"), token: Token(7), reason: LostReason::Duplicate };
    c.on_node(lost, &mut Vec::new());
    assert_eq!(output(&mut c), "", "RESP2 has no pushes");
    // Another lock's command is run as usual.
    assert_eq!(feed(&mut c, &cmd(&["HOLDS", "b"])).len(), 1);
    // The command naming it is not run: its reply is the loss, once.
    assert!(feed(&mut c, &cmd(&["UNLOCK", "a"])).is_empty());
    assert_eq!(feed(&mut c, &cmd(&["UNLOCK", "a"])).len(), 1);
    let sent_holds = 1;
    answer(&mut c, sent_holds, Reply::Holds { holds: 0 });
    assert_eq!(output(&mut c), ":0\r\n-LOST a 7 duplicate\r\n");
}

#[test]
fn resp3_gets_the_push_too_and_a_not_held_answer_in_flight_becomes_lost() {
    let mut c = conn();
    feed(&mut c, &cmd(&["HELLO", "3"]));
    assert!(output(&mut c).starts_with("%7\r\n"));
    let sent = feed(&mut c, &cmd(&["UNLOCK", "a"]));
    let lost = ServerMessage::Lost { name: name("a"), token: Token(7), reason: LostReason::LeaseExpired };
    c.on_node(lost, &mut Vec::new());
    answer(&mut c, sent[0].id, Reply::NotHeld);
    assert_eq!(
        output(&mut c),
        ">4\r\n$4\r\nlost\r\n$1\r\na\r\n:7\r\n$13\r\nlease-expired\r\n-LOST a 7 lease-expired\r\n"
    );
    // Reported once.
    assert_eq!(feed(&mut c, &cmd(&["UNLOCK", "a"])).len(), 1);
}

#[test]
fn hello_switches_protocols_and_says_which() {
    let mut c = conn();
    feed(&mut c, &cmd(&["HELLO", "3"]));
    let hello = output(&mut c);
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    feed(&mut c, &cmd(&["TRYLOCK", "a"]));
    answer(&mut c, 1, Reply::Failed { reason: FailReason::Busy });
    assert_eq!(output(&mut c), "_\r\n");
    feed(&mut c, &cmd(&["HELLO", "2"]));
    assert!(output(&mut c).starts_with("*14\r\n"));
    feed(&mut c, &cmd(&["HELLO", "4"]));
    assert!(output(&mut c).starts_with("-NOPROTO"));
}

#[test]
fn a_password_comes_first() {
    let mut c = Conn::new(Some("s3cret".into()), Arc::new(AtomicUsize::new(0)));
    let mut actions = Vec::new();
    c.read(&cmd(&["LOCK", "a"]), &mut actions);
    c.read(&cmd(&["PING"]), &mut actions);
    assert_eq!(actions, vec![Action::Unauthorized], "counted once");
    assert!(output(&mut c).starts_with("-NOAUTH"));
    actions.clear();
    c.read(&cmd(&["AUTH", "s3cret"]), &mut actions);
    assert_eq!(actions, vec![Action::Connect]);
    // Nothing runs until the node registered the connection.
    c.read(&cmd(&["PING"]), &mut Vec::new());
    assert_eq!(output(&mut c), "+OK\r\n");
    let mut after = Vec::new();
    c.connected(ClientId(3), &mut after);
    assert_eq!(output(&mut c), "+PONG\r\n");

    let mut wrong = Conn::new(Some("s3cret".into()), Arc::new(AtomicUsize::new(0)));
    let mut actions = Vec::new();
    wrong.read(&cmd(&["HELLO", "3", "AUTH", "default", "nope"]), &mut actions);
    assert_eq!(actions, vec![Action::Unauthorized]);
    assert!(output(&mut wrong).starts_with("-WRONGPASS"));
    assert_eq!(wrong.ended(), Some(None));
    assert!(!wrong.reading());
}

#[test]
fn a_protocol_error_is_answered_after_what_came_before_then_the_connection_ends() {
    let mut c = conn();
    let mut bytes = cmd(&["PING"]);
    bytes.extend_from_slice(b"*2\r\n$600000000\r\n");
    assert!(feed(&mut c, &bytes).is_empty());
    let out = output(&mut c);
    assert!(out.starts_with("+PONG\r\n-ERR Protocol error: invalid bulk length"), "{out}");
    assert_eq!(c.ended(), Some(Some(CloseReason::FrameTooLarge)));
    assert!(!c.reading() && !c.partial());
}

#[test]
fn unknown_and_connect_time_commands_are_errors_not_closes() {
    let mut c = conn();
    for args in
        [&["CLIENT", "SETINFO", "LIB-NAME", "x"][..], &["SELECT", "0"], &["COMMAND", "DOCS"], &["LOCK"]]
    {
        feed(&mut c, &cmd(args));
        assert!(output(&mut c).starts_with("-ERR"), "{args:?}");
    }
    feed(&mut c, &[b"*2\r\n$4\r\nLOCK\r\n$2\r\n\xff\xfe\r\n".as_slice()].concat());
    assert!(output(&mut c).starts_with("-BADNAME"));
    assert_eq!(c.ended(), None);
    assert!(c.reading());
}

#[test]
fn quit_answers_then_ends() {
    let mut c = conn();
    let mut bytes = cmd(&["QUIT"]);
    bytes.extend(cmd(&["PING"]));
    feed(&mut c, &bytes);
    assert_eq!(output(&mut c), "+OK\r\n");
    assert_eq!(c.ended(), Some(None));
}

#[test]
fn locks_beyond_the_endpoint_s_waiters_are_refused() {
    let waiters = Arc::new(AtomicUsize::new(MAX_LOCK_WAITERS));
    let mut c = Conn::new(None, waiters.clone());
    c.connected(ClientId(1), &mut Vec::new());
    assert!(feed(&mut c, &cmd(&["LOCK", "a"])).is_empty());
    assert!(output(&mut c).starts_with("-QUEUEFULL"));
    waiters.store(0, Ordering::Relaxed);
    let sent = feed(&mut c, &cmd(&["LOCK", "a"]));
    assert_eq!(waiters.load(Ordering::Relaxed), 1);
    answer(&mut c, sent[0].id, Reply::Failed { reason: FailReason::TimedOut });
    assert_eq!(waiters.load(Ordering::Relaxed), 0);
    assert!(output(&mut c).starts_with("-TIMEOUT"));
    let _ = feed(&mut c, &cmd(&["LOCK", "a"]));
    drop(c);
    assert_eq!(waiters.load(Ordering::Relaxed), 0, "a closed connection's waiters are not counted");
}

#[test]
fn reading_stops_at_the_outstanding_bound() {
    let mut c = conn();
    let mut bytes = cmd(&["LOCK", "a"]);
    for _ in 0..MAX_OUTSTANDING {
        bytes.extend(cmd(&["PING"]));
    }
    feed(&mut c, &bytes);
    assert!(!c.reading(), "commands behind a waiting LOCK are bounded");
}

#[test]
fn views_stream_after_the_watch_reply_in_both_protocols() {
    use swimlock_wire::NodeId;
    use swimlock_wire::client::{MemberInfo, MemberState, ViewInfo};
    let view = |id| {
        let n1 = MemberInfo {
            name: "n1".into(),
            id: NodeId { epoch: 1, addr: "127.0.0.1:7001".parse().unwrap() },
            state: MemberState::Alive,
        };
        ViewInfo {
            id,
            digest: 7,
            members: vec![n1.clone()],
            coordinator: Some(n1),
            merge: false,
            subgroups: vec![],
        }
    };
    for resp3 in [false, true] {
        let mut c = conn();
        if resp3 {
            feed(&mut c, &cmd(&["HELLO", "3"]));
            output(&mut c);
        }
        let sent = feed(&mut c, &cmd(&["WATCH", "VIEW"]));
        assert_eq!(sent[0].request, Request::WatchView);
        answer(&mut c, sent[0].id, Reply::Watching);
        c.on_node(ServerMessage::View(Box::new(view(4))), &mut Vec::new());
        let out = output(&mut c);
        let (ok, push) = out.split_at(5);
        assert_eq!(ok, "+OK\r\n");
        assert!(
            push.starts_with(if resp3 { ">2\r\n$4\r\nview\r\n%6" } else { "*2\r\n$4\r\nview\r\n*12" }),
            "{push}"
        );
    }
}
