//! End-to-end tests with real `swimlock` processes on 127.0.0.1.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use swimlock::client::Client;
use swimlock_wire::client;
use swimlock_wire::frame::{ClusterId, ENVELOPE_LEN, Kind, encode_gossip, encode_lock};
use swimlock_wire::lock::{LockFrame, LockMsg, UnlockRsp};
use swimlock_wire::{NodeId, ReqId};

const FORM: Duration = Duration::from_secs(15);

#[test]
fn three_agents_form_one_view() {
    let _serial = serial();
    let cluster = Cluster::start("view", 3, &[]);
    let took = cluster.wait_formed(&[0, 1, 2], FORM);
    eprintln!("3 agents formed one view in {took:?}");
    let status = cluster.agents[2].status().unwrap();
    let names: Vec<&str> =
        status["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["view-1", "view-2", "view-3"], "members oldest first");
    assert_eq!(status["coordinator"], "view-1");
    assert_eq!(cluster.agents[0].status().unwrap()["is_coordinator"], true);
    assert_eq!(status["is_coordinator"], false);
}

/// 24 `swimlock lock` runs against all three nodes protect a read-modify-write
/// of one file: the count is exact, and the tokens, logged in acquisition
/// order, strictly increase.
#[test]
fn concurrent_lock_commands_exclude_each_other() {
    let _serial = serial();
    let cluster = Cluster::start("rmw", 3, &[]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let dir = cluster.dir.path();
    std::fs::write(dir.join("count"), "0\n").unwrap();
    // The pause between read and write makes a lost update near certain
    // without mutual exclusion.
    let script = "n=$(cat count); echo \"$SWIMLOCK_TOKEN\" >> tokens; sleep 0.02; echo $((n + 1)) > count";
    let started = Instant::now();
    let mut runs: Vec<Proc> = (0..24)
        .map(|i| {
            let client = cluster.agents[i % 3].client_arg();
            let child = Command::new(BIN)
                .args(["lock", "counter", "--timeout", "60s", "--client", &client, "--", "sh", "-c", script])
                .current_dir(dir)
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            Proc(Some(child))
        })
        .collect();
    for run in &mut runs {
        let status = run.wait_exit(Duration::from_secs(90)).expect("lock run finished");
        assert!(status.success(), "lock run failed: {status}");
    }
    eprintln!("24 lock runs took {:?}", started.elapsed());
    let count = std::fs::read_to_string(dir.join("count")).unwrap();
    assert_eq!(count.trim(), "24");
    let tokens: Vec<u64> =
        std::fs::read_to_string(dir.join("tokens")).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(tokens.len(), 24);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens not strictly increasing: {tokens:?}");
}

/// kill -9 of the coordinator while a client of another node holds a lock:
/// the survivors form a view, the lock keeps its token, and a new grant
/// carries a higher token, within FAILOVER_BOUND.
#[test]
fn coordinator_kill_9_fails_over_and_keeps_held_locks() {
    const FAILOVER_BOUND: Duration = Duration::from_secs(5);
    let _serial = serial();
    let mut cluster = Cluster::start("failover", 3, &[]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let rt = runtime();
    let (b, c) = (cluster.agents[1].client_arg(), cluster.agents[2].client_arg());
    let holder = rt.block_on(Client::connect(&b)).unwrap();
    let mut held = rt.block_on(holder.lock("failover", Duration::from_secs(5))).unwrap();
    let waiter = rt.block_on(Client::connect(&c)).unwrap();

    let killed = Instant::now();
    cluster.agents[0].proc.kill();
    // A fresh lock on the third node is granted once the new coordinator serves.
    let fresh =
        rt.block_on(waiter.lock("after-failover", Duration::from_secs(10))).expect("granted after failover");
    let failover = killed.elapsed();
    eprintln!("failover after kill -9 of the coordinator: {failover:?} (bound {FAILOVER_BOUND:?})");
    assert!(failover < FAILOVER_BOUND, "failover took {failover:?}");
    cluster.wait_formed(&[1, 2], Duration::from_secs(5));

    // The held lock survived with its token: it is in the new coordinator's table.
    let status = cluster.agents[1].status().unwrap();
    assert_eq!(status["coordinator"], "failover-2");
    let entries = status["table"]["entries"].as_array().unwrap();
    let entry = entries.iter().find(|e| e["name"] == "failover").expect("held lock re-installed");
    assert_eq!(entry["token"], held.token().0);
    assert!(!held.is_lost());
    assert!(fresh.token() > held.token());

    // The next grant of the same name carries a higher token.
    let old = held.token();
    let next = rt.block_on(async {
        let next = tokio::spawn({
            let waiter = waiter.clone();
            async move { waiter.lock("failover", Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lost = tokio::time::timeout(Duration::from_millis(10), held.lost()).await;
        assert!(lost.is_err(), "held lock reported lost");
        held.unlock().await.unwrap();
        next.await.unwrap()
    });
    let next = next.expect("waiter granted after the unlock");
    assert!(next.token() > old, "token {} not above {}", next.token(), old);
}

/// A client connection that closes while holding a lock releases it: the
/// next waiter, on another node, gets it.
#[test]
fn dropped_connection_hands_the_lock_to_the_next_waiter() {
    let _serial = serial();
    let cluster = Cluster::start("drop", 3, &[]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let dir = cluster.dir.path();
    let pidfile = dir.join("cmd.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let mut holder = Proc(Some(
        Command::new(BIN)
            .args(["lock", "conn", "--client", &cluster.agents[1].client_arg(), "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_until(Duration::from_secs(10), "the holder's command to start", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.trim().is_empty())
    });
    let cmd_pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // The holder's command is a child we started indirectly: kill it at the end.
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _cmd = KillOnDrop(cmd_pid);

    let rt = runtime();
    let waiter = rt.block_on(Client::connect(&cluster.agents[2].client_arg())).unwrap();
    let first = cluster.agents[1].status().unwrap();
    let held_token = first["locks"][0]["token"].as_u64().expect("holder has the lock");
    let pending =
        rt.spawn(async move { waiter.lock("conn", Duration::from_secs(15)).await.map(|g| g.token()) });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!pending.is_finished(), "waiter got a held lock");

    // SIGKILL the `swimlock lock` process: its connection closes, unlock never sent.
    let dropped = Instant::now();
    holder.kill();
    let token = rt.block_on(pending).unwrap().expect("waiter granted after the connection dropped");
    eprintln!("lock handed over {:?} after the holder's connection dropped", dropped.elapsed());
    assert!(token.0 > held_token);
}

/// Garbage, truncated, foreign and unsealed datagrams are dropped and
/// counted by reason; the agent keeps serving.
#[test]
fn bad_datagrams_are_counted_and_the_agent_keeps_serving() {
    let _serial = serial();
    let cluster = Cluster::start("garbage", 1, &[]);
    cluster.wait_formed(&[0], FORM);
    let agent = &cluster.agents[0];
    let dropped = |reason: &str| {
        agent
            .scrape()
            .and_then(|t| {
                metric_with(&t, "swimlock_datagrams_dropped_total", &format!("reason=\"{reason}\""))
            })
            .unwrap_or(0.0)
    };
    let before: Vec<f64> =
        ["malformed", "unauthenticated", "foreign_cluster"].iter().map(|r| dropped(r)).collect();

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ours = ClusterId::from_name("swimlock");
    let foreign = ClusterId::from_name("another");
    let stranger = NodeId { epoch: 1, addr: socket.local_addr().unwrap() };
    let to_someone_else = NodeId { epoch: 2, addr: agent.udp };
    let rsp = LockMsg::UnlockRsp(UnlockRsp { id: ReqId(1), term: 1 });
    let frame = LockFrame { from: stranger, to: to_someone_else, msgs: vec![rsp] };
    let mut garbage_lock = encode_gossip(stranger, 2, &[0xff; 64], ours).unwrap();
    garbage_lock[ENVELOPE_LEN] = Kind::Lock as u8;
    let malformed: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![0u8; 1000], b"SWLK\x02".to_vec()];
    // Well-formed but unsealed: an outsider's frames, refused by a sealed node.
    let unsealed = vec![
        encode_gossip(stranger, 0, b"not gossip at all", ours).unwrap(),
        garbage_lock,
        encode_lock(&frame, ours).unwrap(),
    ];
    let other_cluster =
        vec![encode_gossip(stranger, 0, b"x", foreign).unwrap(), encode_lock(&frame, foreign).unwrap()];
    for d in malformed.iter().chain(&unsealed).chain(&other_cluster) {
        socket.send_to(d, agent.udp).unwrap();
    }
    wait_until(Duration::from_secs(5), "every bad datagram to be counted by reason", || {
        dropped("malformed") >= before[0] + 3.0
            && dropped("unauthenticated") >= before[1] + 3.0
            && dropped("foreign_cluster") >= before[2] + 2.0
    });
    let text = agent.scrape().unwrap();
    assert_eq!(
        metric(&text, "swimlock_decode_errors_total"),
        None,
        "replaced by swimlock_datagrams_dropped_total"
    );
    for reason in ["replayed", "unknown_key", "misaddressed", "spoofed"] {
        let label = format!("reason=\"{reason}\"");
        assert_eq!(metric_with(&text, "swimlock_datagrams_dropped_total", &label), Some(0.0), "{reason}");
    }
    assert_eq!(metric(&text, "swimlock_keyring_keys"), Some(1.0));
    assert_eq!(metric(&text, "swimlock_insecure"), Some(0.0));

    // Still serving.
    let out =
        swimlock(&["lock", "still-here", "--timeout", "5s", "--client", &agent.client_arg(), "--", "true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// /metrics reports the view, the coordinator flag and exactly the requests
/// the test made.
#[test]
fn metrics_report_view_coordinator_and_requests() {
    let _serial = serial();
    let cluster = Cluster::start("metrics", 3, &[]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let rt = runtime();
    let node = &cluster.agents[1];
    rt.block_on(async {
        let a = Client::connect(&node.client_arg()).await.unwrap();
        let b = Client::connect(&node.client_arg()).await.unwrap();
        let g1 = a.lock("m1", Duration::from_secs(5)).await.unwrap();
        let g2 = a.lock("m2", Duration::from_secs(5)).await.unwrap();
        assert!(b.try_lock("m1").await.unwrap().is_none(), "m1 is held by a");
        let t = b.lock("m2", Duration::from_millis(300)).await;
        assert!(matches!(t, Err(swimlock::client::ClientError::TimedOut)), "{t:?}");
        g1.unlock().await.unwrap();
        g2.unlock().await.unwrap();
        let g3 = b.try_lock("m1").await.unwrap().expect("free again");
        g3.unlock().await.unwrap();
    });
    wait_until(Duration::from_secs(5), "metrics to reflect the requests", || {
        node.scrape()
            .is_some_and(|t| metric_with(&t, "swimlock_requests_total", "result=\"acquired\"") == Some(3.0))
    });
    let text = node.scrape().unwrap();
    assert_eq!(metric(&text, "swimlock_view_members"), Some(3.0));
    assert_eq!(metric(&text, "swimlock_is_coordinator"), Some(0.0));
    assert_eq!(metric_with(&text, "swimlock_requests_total", "result=\"busy\""), Some(1.0));
    assert_eq!(metric_with(&text, "swimlock_requests_total", "result=\"timed_out\""), Some(1.0));
    assert_eq!(metric_with(&text, "swimlock_requests_total", "result=\"no_quorum\""), Some(0.0));
    let count = |result: &str| {
        metric_with(&text, "swimlock_acquire_latency_seconds_count", &format!("result=\"{result}\""))
    };
    assert_eq!(count("acquired"), Some(3.0));
    assert_eq!(count("timed_out"), Some(1.0), "a wait that timed out is in the histogram too");
    assert!(metric_with(&text, "swimlock_datagrams_total", "direction=\"in\"").unwrap() > 0.0);
    assert_eq!(metric(&text, "swimlock_locks_held"), Some(0.0));

    let coordinator = cluster.agents[0].scrape().unwrap();
    assert_eq!(metric(&coordinator, "swimlock_is_coordinator"), Some(1.0));
    assert_eq!(metric(&coordinator, "swimlock_view_members"), Some(3.0));
    assert!(metric(&coordinator, "swimlock_reconciliations_total").unwrap() >= 1.0);
    assert_eq!(metric(&coordinator, "swimlock_lock_table_held"), Some(0.0));
}

/// Bad configuration is refused at start with the field named.
#[test]
fn bad_configuration_is_refused_naming_the_field() {
    let out = swimlock(&["agent", "--mode", "majority", "--metrics", "off", "--client", "off"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`members`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = swimlock(&["agent", "--probe-period", "fast"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("membership.probe_period"));
    let out = swimlock(&["agent", "--busy-poll", "5ms", "--metrics", "off", "--client", "off"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy_poll"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mode majority: when the holder's node loses its majority, `swimlock lock`
/// reports the loss, stops the command's whole process group (a grandchild
/// included) and exits 76.
#[test]
fn lost_lock_stops_the_whole_process_group() {
    let _serial = serial();
    let mut cluster = Cluster::start("lost", 3, &["--mode", "majority", "--members", "3"]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let dir = cluster.dir.path().to_path_buf();
    let pids = dir.join("pids");
    // A grandchild in the background, as `sh -c` scripts often leave.
    let script = format!("sleep 60 & echo $! >> {0}; echo $$ >> {0}; wait", pids.display());
    let mut run = Proc(Some(
        Command::new(BIN)
            .args(["lock", "lost", "--kill-grace", "1s", "--client", &cluster.agents[2].client_arg()])
            .args(["--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_until(Duration::from_secs(10), "the command and its grandchild", || {
        std::fs::read_to_string(&pids).is_ok_and(|s| s.lines().count() == 2)
    });
    let group: Vec<i32> =
        std::fs::read_to_string(&pids).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    struct KillOnDrop(Vec<i32>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for &pid in &self.0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _group = KillOnDrop(group.clone());

    cluster.agents[0].proc.kill();
    cluster.agents[1].proc.kill();
    let status = run.wait_exit(Duration::from_secs(15)).expect("swimlock lock exits after the loss");
    assert_eq!(status.code(), Some(76));
    let alive = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    wait_until(Duration::from_secs(3), "the process group to be gone", || !group.iter().any(|&p| alive(p)));
}

/// With --state-dir, a node restarted alone grants above every token of its
/// earlier life.
#[test]
fn restarted_node_with_state_dir_never_repeats_a_token() {
    let _serial = serial();
    let dir = TempDir::new("restart");
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let mut tokens = Vec::new();
    for life in 0..2 {
        let mut agent =
            Agent::start(dir.path(), &format!("restart-{life}"), None, &["--state-dir", state_arg]);
        wait_until(FORM, "the restarted node to serve", || {
            agent.status().is_some_and(|s| s["table"]["serving"] == serde_json::Value::Bool(true))
        });
        let status = Command::new(BIN)
            .args(["lock", "r", "--timeout", "5s", "--client", &agent.client_arg(), "--"])
            .args(["sh", "-c", "echo $SWIMLOCK_TOKEN"])
            .output()
            .unwrap();
        tokens.push(String::from_utf8_lossy(&status.stdout).trim().parse::<u64>().unwrap());
        agent.proc.kill();
    }
    assert!(tokens[1] > tokens[0], "token after restart {} not above {}", tokens[1], tokens[0]);
}

/// A lock-delay too short for the lease is refused at start (exit 78,
/// EX_CONFIG), with the inequality and every value in it named.
#[test]
fn a_lock_delay_below_the_lease_bound_is_refused() {
    let out = Command::new(BIN)
        .args(["agent", "--bind", "127.0.0.1:7", "--insecure", "--lease", "5s", "--lock-delay", "1s"])
        .stdin(Stdio::null())
        .output()
        .expect("run swimlock agent");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in ["lock_delay 1s", "lease 5s", "(1 + 5%)", "5.25s"] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

/// A member whose state directory holds a term far above the cluster's
/// (copied or stale) stops the coordinator's grants, raises the alert in
/// the status and the metrics, and `swimlock accept-term` resumes them
/// above that term.
#[test]
fn a_term_jump_halts_grants_until_the_operator_accepts_it() {
    const JUMP: u32 = 200_000;
    let _serial = serial();
    let dir = TempDir::new("jump");
    let coordinator = Agent::start(dir.path(), "jump-1", None, &[]);
    wait_until(FORM, "the first node to serve", || {
        coordinator.status().is_some_and(|s| s["table"]["serving"] == serde_json::Value::Bool(true))
    });
    let state = dir.path().join("jump-2-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("term"), format!("{JUMP}\n")).unwrap();
    let _member =
        Agent::start(dir.path(), "jump-2", Some(coordinator.udp), &["--state-dir", state.to_str().unwrap()]);
    wait_until(FORM, "the coordinator to halt on the reported term", || {
        coordinator.status().and_then(|s| s["halted_on_term"].as_u64()).is_some_and(|t| t >= u64::from(JUMP))
    });
    let halted_on = coordinator.status().unwrap()["halted_on_term"].as_u64().unwrap();
    let text = coordinator.scrape().unwrap();
    assert_eq!(metric(&text, "swimlock_granting_halted"), Some(1.0));
    assert!(metric_with(&text, "swimlock_alerts_total", "kind=\"term_jump\"").is_some_and(|n| n >= 1.0));
    let plain = coordinator.cli(&["status", "--client", &coordinator.client_arg()]);
    assert!(String::from_utf8_lossy(&plain.stdout).contains("accept-term"));

    let client = coordinator.client_arg();
    let refused = swimlock(&["lock", "j", "--timeout", "1s", "--client", &client, "--", "true"]);
    assert_eq!(refused.status.code(), Some(75), "nothing is granted while halted");

    let too_low = swimlock(&["accept-term", &(halted_on - 1).to_string(), "--client", &client]);
    assert_eq!(too_low.status.code(), Some(1), "a lower term leaves it halted, and says so");
    assert!(String::from_utf8_lossy(&too_low.stderr).contains(&format!("accept {halted_on}")));
    let beyond = swimlock(&["accept-term", "8388608", "--client", &client]);
    assert_eq!(beyond.status.code(), Some(64), "a term no token can carry is refused (a usage error)");
    let mut raw = std::net::TcpStream::connect(coordinator.client).unwrap();
    let reply = call(&mut raw, 1, client::Request::AcceptTerm { term: swimlock_wire::Token::MAX_TERM + 1 });
    assert!(matches!(reply, client::Reply::Error { .. }), "the agent refuses it too: {reply:?}");
    assert_eq!(coordinator.status().unwrap()["halted_on_term"].as_u64(), Some(halted_on));
    let accepted = swimlock(&["accept-term", &halted_on.to_string(), "--client", &client]);
    assert!(accepted.status.success(), "{}", String::from_utf8_lossy(&accepted.stderr));
    assert!(String::from_utf8_lossy(&accepted.stdout).contains("accepted terms up to"));
    let granted = swimlock(&[
        "lock",
        "j",
        "--timeout",
        "5s",
        "--client",
        &client,
        "--",
        "sh",
        "-c",
        "echo $SWIMLOCK_TOKEN",
    ]);
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let token: u64 = String::from_utf8_lossy(&granted.stdout).trim().parse().unwrap();
    let term = swimlock_wire::Token(token).term();
    assert!(term > halted_on as u32, "granted under term {term}, not above the accepted {halted_on}");
    assert_eq!(metric(&coordinator.scrape().unwrap(), "swimlock_granting_halted"), Some(0.0));
}

/// One request over a raw RESP2 client connection, as its command; the
/// reply, read back as the request's answer (`id` is only for the reader).
fn call(stream: &mut std::net::TcpStream, id: u64, request: client::Request) -> client::Reply {
    use std::io::{Read, Write};

    use redis_protocol::resp2::types::OwnedFrame as F;
    use swimlock_wire::resp::Value;
    fn value(f: F) -> Value {
        match f {
            F::SimpleString(s) => Value::Simple(String::from_utf8_lossy(&s).into_owned()),
            F::Error(e) => Value::Error(e),
            F::Integer(n) => Value::Int(n),
            F::BulkString(b) => Value::Bulk(b),
            F::Null => Value::Null,
            F::Array(items) => Value::Array(items.into_iter().map(value).collect()),
        }
    }
    let _ = id;
    let mut out = Vec::new();
    swimlock_wire::resp::encode_command(&swimlock_wire::commands::command_args(&request), &mut out);
    stream.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((frame, _)) = redis_protocol::resp2::decode::decode(&buf).unwrap() {
            return swimlock_wire::commands::reply_from_value(&request, value(frame));
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the agent closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The lease on the client protocol, spoken raw: a `LOCK ... WITHLEASE`
/// grant carries the lease left (2 s on a member, 400 ms for the
/// coordinator's own clients, counted from when the agent took the
/// request), `LEASE` reports it as the agent renews it, and `-NOTHELD` for
/// a lock the connection does not hold; a plain `LOCK` answers the token.
#[test]
fn the_lease_is_served_on_the_client_protocol() {
    use client::{FailReason, Reply, Request};
    let _serial = serial();
    let cluster = Cluster::start("lease", 2, &[]);
    cluster.wait_formed(&[0, 1], FORM);
    let connect = |i: usize| {
        let s = std::net::TcpStream::connect(cluster.agents[i].client).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let name = |n: &str| swimlock_wire::LockName::new(n).unwrap();
    let (mut member, mut own, mut other) = (connect(1), connect(0), connect(1));

    // A request the member re-sends (to a coordinator that took over while
    // it waited) anchors the lease at the re-send, later than the agent took
    // it: the lease left can exceed 2 s by at most the time the call took.
    let asked_at = Instant::now();
    let granted = call(&mut member, 1, Request::LockWithLease { name: name("raw"), timeout_ms: 5_000 });
    let waited = asked_at.elapsed().as_millis() as u64;
    let Reply::AcquiredWithLease { token, holds: 1, lease_ms } = granted else { panic!("{granted:?}") };
    eprintln!("member's grant: token {token}, lease {lease_ms} ms after {waited} ms");
    assert!((1_500..=2_000 + waited).contains(&lease_ms), "lease {lease_ms} ms after {waited} ms");
    let again = call(&mut member, 2, Request::Lock { name: name("raw"), timeout_ms: 5_000 });
    assert_eq!(again, Reply::Acquired { token, holds: 1 }, "a plain LOCK answers the token alone");
    assert_eq!(call(&mut member, 2, Request::Holds { name: name("raw") }), Reply::Holds { holds: 2 });
    let busy = call(&mut other, 3, Request::TryLockWithLease { name: name("raw") });
    assert_eq!(busy, Reply::Failed { reason: FailReason::Busy });
    assert_eq!(call(&mut other, 4, Request::Lease { name: name("raw") }), Reply::Lease { lease_ms: None });

    let asked_at = Instant::now();
    let own_grant = call(&mut own, 5, Request::TryLockWithLease { name: name("own") });
    let waited = asked_at.elapsed().as_millis() as u64;
    let Reply::AcquiredWithLease { lease_ms: own_ms, .. } = own_grant else { panic!("{own_grant:?}") };
    eprintln!("coordinator's own client's grant: lease {own_ms} ms after {waited} ms");
    assert!((200..=400 + waited).contains(&own_ms), "own lease {own_ms} ms after {waited} ms");

    // Held for 3 s, longer than either lease: the agents renew, and every
    // answer shows it.
    let until = Instant::now() + Duration::from_secs(3);
    let (mut least, mut least_own, mut asked) = (u64::MAX, u64::MAX, 0);
    while Instant::now() < until {
        let Reply::Lease { lease_ms: Some(ms) } =
            call(&mut member, 10 + asked, Request::Lease { name: name("raw") })
        else {
            panic!("the member's lease is gone");
        };
        let Reply::Lease { lease_ms: Some(own_ms) } =
            call(&mut own, 10 + asked, Request::Lease { name: name("own") })
        else {
            panic!("the own lease is gone");
        };
        assert!(ms <= 2_000 && own_ms <= 400, "{ms} ms, {own_ms} ms");
        (least, least_own, asked) = (least.min(ms), least_own.min(own_ms), asked + 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{asked} lease questions in 3 s: least lease left {least} ms (member), {least_own} ms (own)");
    assert!(least >= 1_000 && least_own >= 100, "renewals fell behind: {least} ms, {least_own} ms");
    let released = call(&mut member, 100, Request::Unlock { name: name("raw") });
    assert_eq!(released, Reply::Unlocked);
    assert!(matches!(
        call(&mut member, 101, Request::Lease { name: name("raw") }),
        Reply::Lease { lease_ms: Some(_) }
    ));
    assert_eq!(call(&mut member, 102, Request::Unlock { name: name("raw") }), Reply::Unlocked);
    assert_eq!(call(&mut member, 103, Request::Lease { name: name("raw") }), Reply::Lease { lease_ms: None });
}

/// `swimlock members` lists the view with each member's state, and a
/// member killed with SIGKILL as down once gossip declared it so.
#[test]
fn members_lists_the_view_and_the_departed() {
    let _serial = serial();
    let mut cluster = Cluster::start("members", 2, &[]);
    cluster.wait_formed(&[0, 1], FORM);
    let members = |cluster: &Cluster| -> Vec<serde_json::Value> {
        let out = cluster.agents[0].cli(&["members", "--json", "--client", &cluster.agents[0].client_arg()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let both = members(&cluster);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both.iter().all(|m| m["state"] == "alive"), "{both:?}");
    assert_eq!(both.iter().filter(|m| m["coordinator"] == true).count(), 1);
    assert_eq!(both.iter().filter(|m| m["self"] == true).count(), 1);
    let text = cluster.agents[0].cli(&["members", "--client", &cluster.agents[0].client_arg()]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.starts_with("NAME") && text.contains("this node") && text.contains("alive"), "{text}");
    let gone = cluster.agents[1].name.clone();
    cluster.agents[1].proc.kill();
    wait_until(Duration::from_secs(10), "the killed member to show as down", || {
        members(&cluster).iter().any(|m| m["name"] == gone.as_str() && m["state"] == "down")
    });
    let after = members(&cluster);
    assert_eq!(after.iter().filter(|m| m["state"] == "alive").count(), 1, "{after:?}");
}

/// A member that stops answering probes shows in `swimlock members` as
/// suspect while gossip suspects it, and as alive again once it answers.
#[test]
fn members_shows_a_suspected_member() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let _serial = serial();
    // A long suspicion timeout keeps the suspect state visible for seconds.
    let cluster = Cluster::start("suspect", 3, &["--suspect-timeout", "5s"]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let paused = cluster.agents[2].name.clone();
    let state = |cluster: &Cluster| -> Option<String> {
        let out = cluster.agents[0].cli(&["members", "--json", "--client", &cluster.agents[0].client_arg()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let members: Vec<serde_json::Value> =
            text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        members
            .iter()
            .find(|m| m["name"] == paused.as_str())
            .map(|m| m["state"].as_str().unwrap_or("").to_string())
    };
    let pid = Pid::from_raw(i32::try_from(cluster.agents[2].proc.pid()).unwrap());
    kill(pid, Signal::SIGSTOP).unwrap();
    let suspected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(Duration::from_secs(4), "the paused member to show as suspect", || {
            state(&cluster).as_deref() == Some("suspect")
        })
    }));
    kill(pid, Signal::SIGCONT).unwrap();
    if let Err(e) = suspected {
        std::panic::resume_unwind(e);
    }
    wait_until(Duration::from_secs(10), "the resumed member to show as alive", || {
        state(&cluster).as_deref() == Some("alive")
    });
}
