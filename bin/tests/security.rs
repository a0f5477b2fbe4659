//! Only members speak (issue 9), with real `swimlock` processes: no key, no
//! start; the UDP port is the agent's alone; an attacker without the key
//! who sniffs, replays, bit-flips and forges changes nothing (inside a
//! network namespace, since forged gossip names addresses off this host);
//! keys rotate under lock traffic; key bytes never show.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::*;
use foca::{Header, Member, Message, State};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use swimlock::client::Client;
use swimlock::node::seal::Key;
use swimlock_wire::frame::{ENVELOPE_LEN, Envelope, Suite, encode_gossip, encode_lock};
use swimlock_wire::lock::{
    CancelReq, DuplicateLock, Hello, LockFrame, LockInfoRsp, LockMsg, LockReq, UnlockReq, Wait,
};
use swimlock_wire::{ClientId, ClusterId, LockName, NodeId, ReqId, Token};

const FORM: Duration = Duration::from_secs(15);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agent_without_a_key_refuses_to_start_and_insecure_is_explicit() {
    let _serial = serial();
    let dir = TempDir::new("nokey");
    let bind = format!("127.0.0.1:{}", free_port());
    let out = swimlock(&["agent", "--bind", &bind, "--client", "off", "--metrics", "off"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    for hint in ["swimlock keygen", "--key-file", "--insecure"] {
        assert!(stderr(&out).contains(hint), "{hint}: {}", stderr(&out));
    }
    // A key file others can read is refused too.
    let loose = dir.path().join("loose.key");
    std::fs::write(&loose, swimlock(&["keygen"]).stdout).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = loose.display().to_string();
    let out =
        swimlock(&["agent", "--bind", &bind, "--key-file", &loose, "--client", "off", "--metrics", "off"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));

    let agent = Agent::start(dir.path(), "insecure", None, &["--insecure"]);
    wait_until(FORM, "the insecure agent to serve", || {
        agent.status().is_some_and(|s| s["table"]["serving"] == Value::Bool(true))
    });
    let status = agent.status().unwrap();
    assert_eq!(status["insecure"], true);
    let text = agent.cli(&["status", "--client", &agent.client_arg()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("INSECURE"));
    let metrics = agent.scrape().unwrap();
    assert_eq!(metric(&metrics, "swimlock_insecure"), Some(1.0));
    assert_eq!(metric(&metrics, "swimlock_keyring_keys"), Some(0.0));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(log.lines().any(|l| l.contains("WARN") && l.contains("INSECURE")), "{log}");
    let refused = agent.cli(&["keyring", "list", "--client", &agent.client_arg()]);
    assert!(!refused.status.success() && stderr(&refused).contains("insecure"), "{}", stderr(&refused));
}

#[test]
fn a_second_agent_on_a_used_port_fails_at_start() {
    let _serial = serial();
    let cluster = Cluster::start("port", 1, &[]);
    cluster.wait_formed(&[0], FORM);
    let first = &cluster.agents[0];
    let key = key_file(cluster.dir.path()).display().to_string();
    let log = cluster.dir.path().join("second.log");
    let mut second = Proc(Some(
        Command::new(BIN)
            .args(["agent", "--bind", &first.udp.to_string(), "--key-file", &key])
            .args(["--client", "off", "--metrics", "off"])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let status = second.wait_exit(Duration::from_secs(10)).expect("the second agent exits at start");
    assert_eq!(status.code(), Some(78));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("in use") && text.contains(&first.udp.to_string()), "{text}");
    // The first keeps its port and serves.
    let out = swimlock(&["lock", "port", "--timeout", "5s", "--client", &first.client_arg(), "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// foca's identity as swimlock's membership encodes it.
#[derive(Serialize)]
struct Ident {
    addr: SocketAddr,
    epoch: u64,
    bump: u64,
    name: String,
    tag: u16,
}

fn ident(id: NodeId, bump: u64, name: &str) -> Ident {
    Ident { addr: id.addr, epoch: id.epoch, bump, name: name.to_string(), tag: 0 }
}

fn foca_payload(src: Ident, dst: Ident, message: Message<Ident>, updates: Vec<Member<Ident>>) -> Vec<u8> {
    let mut out = postcard::to_allocvec(&Header { src, src_incarnation: 0, dst, message }).unwrap();
    if !updates.is_empty() {
        out.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for m in updates {
            out.extend_from_slice(&postcard::to_allocvec(&m).unwrap());
        }
    }
    out
}

/// swimlock datagrams seen on loopback for `time`: (destination, bytes),
/// each once.
fn sniff(time: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, setsockopt, socket, sockopt,
    };
    use nix::sys::time::{TimeVal, TimeValLike};
    let fd = socket(AddressFamily::Packet, SockType::Datagram, SockFlag::empty(), SockProtocol::EthAll)
        .expect("a packet socket (root)");
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::milliseconds(100)).unwrap();
    let (mut seen, mut out) = (HashSet::new(), Vec::new());
    let mut buf = vec![0u8; 70_000];
    let end = Instant::now() + time;
    while Instant::now() < end {
        let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else { continue };
        let p = &buf[..n];
        // IPv4, UDP: take the destination and the payload.
        if n < 28 || p[0] >> 4 != 4 || p[9] != 17 {
            continue;
        }
        let (ihl, total) = (usize::from(p[0] & 0xf) * 4, usize::from(u16::from_be_bytes([p[2], p[3]])));
        let Some(payload) = p.get(ihl + 8..total.min(n)) else { continue };
        let dst =
            SocketAddr::from(([p[16], p[17], p[18], p[19]], u16::from_be_bytes([p[ihl + 2], p[ihl + 3]])));
        if payload.starts_with(b"SWLK") && seen.insert(payload.to_vec()) {
            out.push((dst, payload.to_vec()));
        }
    }
    out
}

/// The attacker of `outsiders_change_nothing_in_a_namespace`: this test
/// binary, run by that test inside the namespace with
/// `SWIMLOCK_ATTACKER=REPORT_PATH`. It holds no key. Without the variable
/// it does nothing.
#[test]
#[ignore = "a helper process of outsiders_change_nothing_in_a_namespace"]
fn attacker_process() {
    let Ok(report) = std::env::var("SWIMLOCK_ATTACKER") else { return };
    let captured = sniff(Duration::from_millis(1_500));
    assert!(!captured.is_empty(), "nothing captured");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0u64;
    let mut send = |to: SocketAddr, d: &[u8]| {
        let _ = socket.send_to(d, to);
        sent += 1;
        // Paced, so the agents' receive buffers do not overflow.
        if sent.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // Every captured datagram, once more.
    for (to, d) in &captured {
        send(*to, d);
    }
    let replays = captured.len();
    // Bit flips anywhere the tag covers and is not checked before it.
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..10_000 {
        let (to, d) = &captured[rng.random_range(0..captured.len())];
        let mut d = d.clone();
        let at = loop {
            let at = rng.random_range(18..d.len());
            if at != 26 && !(31..43).contains(&at) {
                break at;
            }
        };
        d[at] ^= 1 << rng.random_range(0..8);
        send(*to, &d);
    }
    // Forgeries, naming the members the envelopes show in clear.
    let cluster = ClusterId(u64::from_le_bytes(captured[0].1[6..14].try_into().unwrap()));
    let mut members: Vec<NodeId> = Vec::new();
    let mut key_id = 0;
    for (_, d) in &captured {
        if let Ok((env, _)) = Envelope::read(d, cluster) {
            key_id = env.key_id;
            if !members.contains(&env.from) {
                members.push(env.from);
            }
        }
    }
    members.sort();
    let mut forged: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let names = ["held-a", "held-b"].map(|n| LockName::new(n).unwrap());
    for &to in &members {
        for &from in members.iter().filter(|m| **m != to) {
            let tag = swimlock::agent::node_tag(to.addr);
            let mut msgs = Vec::new();
            for client in 1..=10 {
                for target in 1..=50 {
                    let name = names[0].clone();
                    let id = ReqId(90_000 + client * 100 + target);
                    msgs.push(LockMsg::Cancel(CancelReq {
                        id,
                        sync: 0,
                        client: ClientId(client),
                        name,
                        target: ReqId(target),
                    }));
                }
            }
            let mut unlocks = Vec::new();
            for (i, name) in names.iter().enumerate() {
                for term in 1..=5 {
                    for seq in 1..=100 {
                        let token = Token::new(term, tag, seq);
                        let id = ReqId(100_000 + seq as u64);
                        unlocks.push(LockMsg::Unlock(UnlockReq {
                            id,
                            sync: 0,
                            client: ClientId(1 + i as u64),
                            name: name.clone(),
                            token,
                        }));
                    }
                }
            }
            let phantom = LockMsg::Lock(LockReq {
                id: ReqId(200_000),
                sync: 0,
                client: ClientId(99),
                name: LockName::new("phantom").unwrap(),
                wait: Wait::No,
                ticket: None,
                floor: ReqId(0),
                stamp: 0,
            });
            let dups = (1..=5)
                .map(|term| {
                    LockMsg::DuplicateLock(DuplicateLock {
                        term,
                        client: ClientId(1),
                        name: names[0].clone(),
                        token: Token::new(term, swimlock::agent::node_tag(from.addr), 1),
                        req: ReqId(1),
                    })
                })
                .collect();
            let poison = LockMsg::LockInfoRsp(LockInfoRsp {
                term: 1,
                part: 0,
                parts: 1,
                next_req: ReqId(1),
                max_term: Token::MAX_TERM,
                sync: 1_000,
                stamp: 0,
                held: Vec::new(),
                pending: Vec::new(),
                vouch: None,
                unreported_ms: 0,
            });
            for batch in
                [msgs, unlocks, vec![phantom], dups, vec![LockMsg::Hello(Hello { sync: 1_000 }), poison]]
            {
                forged.push((to.addr, encode_lock(&LockFrame { from, to, msgs: batch }, cluster).unwrap()));
            }
            let fake = NodeId { epoch: 1, addr: SocketAddr::from(([10, 9, 9, 9], 7946)) };
            let announce = foca_payload(
                ident(fake, 0, "evil"),
                ident(NodeId { epoch: 0, ..to }, 0, ""),
                Message::Announce,
                vec![],
            );
            forged.push((to.addr, encode_gossip(fake, 0, &announce, cluster).unwrap()));
            let victim = *members.iter().find(|m| **m != to && **m != from).unwrap_or(&from);
            for update in [
                Member::new(ident(victim, 1_000, "victim"), 0, State::Alive),
                Member::new(ident(victim, 0, "victim"), 9, State::Down),
            ] {
                let p =
                    foca_payload(ident(from, 0, "from"), ident(to, 0, "to"), Message::Gossip, vec![update]);
                forged.push((to.addr, encode_gossip(from, to.epoch, &p, cluster).unwrap()));
            }
        }
    }
    let plain = forged.len();
    for (to, d) in &forged {
        send(*to, d);
    }
    // The same, in sealed envelopes under the real key id with made-up tags.
    for (to, d) in &forged {
        let (mut env, _) = Envelope::read(d, cluster).unwrap();
        env.suite = Suite::Sealed;
        env.key_id = key_id;
        rng.fill(&mut env.nonce[..]);
        let mut sealed = Vec::new();
        env.write(&mut sealed);
        sealed.extend_from_slice(&d[ENVELOPE_LEN..]);
        sealed.extend_from_slice(&rng.random::<[u8; 16]>());
        send(*to, &sealed);
    }
    let summary = serde_json::json!({
        "members": members.len(), "replays": replays, "flips": 10_000, "forged": 2 * plain,
    });
    std::fs::write(report, summary.to_string()).unwrap();
}

/// UDP datagrams the kernel dropped for full receive buffers in the
/// namespace.
fn rcvbuf_errors(ns: &Netns) -> u64 {
    let out = ns.command("cat").arg("/proc/net/snmp").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (head, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
    let at = head.split_whitespace().position(|h| h == "RcvbufErrors").unwrap_or(0);
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn dropped(agents: &[Agent], reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    agents
        .iter()
        .filter_map(|a| a.scrape())
        .filter_map(|t| metric_with(&t, "swimlock_datagrams_dropped_total", &label))
        .sum()
}

/// What an outsider must not change: each agent's view and table.
fn views(agents: &[Agent]) -> Vec<(Value, Value, Value, Value)> {
    agents
        .iter()
        .map(|a| {
            let s = a.status().expect("status");
            (
                s["view_id"].clone(),
                s["view_digest"].clone(),
                s["members"].clone(),
                s["table"]["entries"].clone(),
            )
        })
        .collect()
}

/// Three agents inside `ns`, formed.
fn boxed_cluster(ns: &Netns, tag: &str, extra: &[&str]) -> Cluster {
    let dir = TempDir::new(tag);
    let mut agents: Vec<Agent> = Vec::new();
    for i in 0..3u16 {
        let seed = agents.first().map(|a| a.udp);
        let name = format!("{tag}-{}", i + 1);
        agents.push(Agent::start_in(Some(ns), Ports::nth(i), dir.path(), &name, seed, extra));
        std::thread::sleep(Duration::from_millis(50));
    }
    let cluster = Cluster { agents, dir };
    cluster.wait_formed(&[0, 1, 2], FORM);
    cluster
}

/// `swimlock lock` holders of "held-a" and "held-b" on the two
/// non-coordinators, each writing its token to a file of that name.
fn hold(ns: &Netns, cluster: &Cluster) -> Vec<Proc> {
    let dir = cluster.dir.path();
    let mut holders = Vec::new();
    for (i, lock) in [(1, "held-a"), (2, "held-b")] {
        let script = format!("echo $SWIMLOCK_TOKEN > {}; exec sleep 300", dir.join(lock).display());
        let child = ns
            .command(BIN)
            .args(["lock", lock, "--client", &cluster.agents[i].client_arg(), "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        holders.push(Proc(Some(child)));
    }
    wait_until(Duration::from_secs(10), "both holders", || {
        held_token(dir, "held-a").is_some() && held_token(dir, "held-b").is_some()
    });
    std::thread::sleep(Duration::from_millis(300));
    holders
}

fn held_token(dir: &Path, lock: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(lock)).ok().and_then(|t| t.trim().parse().ok())
}

/// Runs [`attacker_process`] inside `ns` and returns its report.
fn run_attacker(ns: &Netns, dir: &Path) -> Value {
    let report = dir.join("attack.json");
    let mut attacker = Proc(Some(
        ns.command(std::env::current_exe().unwrap())
            .args(["--exact", "attacker_process", "--ignored", "--nocapture", "--test-threads=1"])
            .env("SWIMLOCK_ATTACKER", &report)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let status = attacker.wait_exit(Duration::from_secs(120)).expect("the attacker finishes");
    assert!(status.success(), "the attacker failed");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    eprintln!("attacker: {report}");
    report
}

/// The control: the same attacker, against agents run with `--insecure`
/// (as every agent was before sealing), changes views or takes locks.
#[test]
fn the_outsider_breaks_an_insecure_cluster() {
    let _serial = serial();
    let ns = Netns::new("insecure");
    let cluster = boxed_cluster(&ns, "insecure", &["--insecure"]);
    let mut holders = hold(&ns, &cluster);
    let members = |c: &Cluster| -> Vec<Value> {
        c.agents.iter().map(|a| a.status().map_or(Value::Null, |s| s["members"].clone())).collect()
    };
    let before = members(&cluster);
    run_attacker(&ns, cluster.dir.path());
    wait_until(Duration::from_secs(10), "the attack to show", || {
        members(&cluster) != before
            || holders.iter_mut().any(|h| h.0.as_mut().unwrap().try_wait().unwrap().is_some())
    });
    drop(holders);
    drop(cluster);
    drop(ns);
}

#[test]
fn outsiders_change_nothing_in_a_namespace() {
    let _serial = serial();
    let ns = Netns::new("outsider");
    let mut cluster = boxed_cluster(&ns, "outsider", &[]);
    let mut holders = hold(&ns, &cluster);
    let dir = cluster.dir.path().to_path_buf();
    let token = |lock: &str| held_token(&dir, lock);
    let before = views(&cluster.agents);
    let merges = |agents: &[Agent]| -> f64 {
        agents.iter().filter_map(|a| a.scrape()).filter_map(|t| metric(&t, "swimlock_merges_total")).sum()
    };
    let merges_before = merges(&cluster.agents);
    let (unauth, replayed, rcvbuf) = (
        dropped(&cluster.agents, "unauthenticated"),
        dropped(&cluster.agents, "replayed"),
        rcvbuf_errors(&ns),
    );
    let report = run_attacker(&ns, &dir);
    let (replays, flips, forged) = (
        report["replays"].as_f64().unwrap(),
        report["flips"].as_f64().unwrap(),
        report["forged"].as_f64().unwrap(),
    );
    assert_eq!(report["members"], 3, "the attacker saw every member's identity in clear");

    // Everything the kernel delivered was counted by its reason.
    let lost = (rcvbuf_errors(&ns) - rcvbuf) as f64;
    wait_until(Duration::from_secs(10), "every attack datagram counted", || {
        dropped(&cluster.agents, "unauthenticated") - unauth >= flips + forged - lost
            && dropped(&cluster.agents, "replayed") - replayed >= replays - lost
    });
    eprintln!(
        "dropped: unauthenticated +{}, replayed +{} (kernel buffer drops {lost})",
        dropped(&cluster.agents, "unauthenticated") - unauth,
        dropped(&cluster.agents, "replayed") - replayed
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(views(&cluster.agents), before, "views and the lock table unchanged");
    assert_eq!(merges(&cluster.agents), merges_before);
    for holder in &mut holders {
        assert!(holder.0.as_mut().unwrap().try_wait().unwrap().is_none(), "a holder lost its lock");
    }
    let table = cluster.agents[0].status().unwrap()["table"]["entries"].clone();
    for lock in ["held-a", "held-b"] {
        let entry = table.as_array().unwrap().iter().find(|e| e["name"] == lock).expect("still held");
        assert_eq!(entry["token"].as_u64(), token(lock), "{lock} keeps its token");
    }

    // Failure detection still works: a kill -9'd member leaves the views.
    holders.pop();
    cluster.agents[2].proc.kill();
    let killed = Instant::now();
    wait_until(Duration::from_secs(5), "the killed member out of both views", || {
        (0..2).all(|i| {
            cluster.agents[i].status().is_some_and(|s| s["members"].as_array().map(Vec::len) == Some(2))
        })
    });
    eprintln!("killed member removed after {:?}", killed.elapsed());
    drop(holders);
    drop(cluster);
    drop(ns);
}

fn keyring(agent: &Agent, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("keyring").args(args).args(["--client", &agent.client_arg()]);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out)))
}

fn key_id(text: &str) -> String {
    Key::from_base64(text).unwrap().id().to_string()
}

#[test]
fn keys_rotate_under_lock_traffic_without_a_failure_a_loss_or_a_view_change() {
    let _serial = serial();
    let dir = TempDir::new("rotate");
    let states: Vec<String> =
        (0..3).map(|i| dir.path().join(format!("state-{i}")).display().to_string()).collect();
    let mut agents: Vec<Agent> = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let seed = agents.first().map(|a| a.udp);
        agents.push(Agent::start(dir.path(), &format!("rotate-{}", i + 1), seed, &["--state-dir", state]));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cluster = Cluster { agents, dir };
    cluster.wait_formed(&[0, 1, 2], FORM);
    let before = views(&cluster.agents);
    let old = key_text(cluster.dir.path());
    let new = String::from_utf8(swimlock(&["keygen"]).stdout).unwrap().trim().to_string();
    assert_ne!(old, new);

    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let held = rt.block_on(async {
        let c = Client::connect(&cluster.agents[1].client_arg()).await.unwrap();
        (c.clone(), c.lock("rotate/held", Duration::from_secs(5)).await.unwrap())
    });
    let mut workers = Vec::new();
    for i in 0..8 {
        let addr = cluster.agents[i % 3].client_arg();
        let (stop, ops) = (stop.clone(), ops.clone());
        workers.push(rt.spawn(async move {
            let client = Client::connect(&addr).await.map_err(|e| e.to_string())?;
            let name = format!("rotate/{i}");
            while !stop.load(Ordering::Relaxed) {
                let guard =
                    client.lock(&name, Duration::from_secs(5)).await.map_err(|e| format!("lock: {e}"))?;
                tokio::time::sleep(Duration::from_millis(1)).await;
                if guard.is_lost() {
                    return Err(format!("{name} lost"));
                }
                guard.unlock().await.map_err(|e| format!("unlock: {e}"))?;
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    let started = Instant::now();
    let at = |secs: u64| {
        let t = started + Duration::from_secs(secs);
        std::thread::sleep(t.saturating_duration_since(Instant::now()));
    };
    let mut outputs = Vec::new();
    at(3);
    let (ok, text) = keyring(&cluster.agents[0], &["install", &new], None);
    assert!(ok && text.contains(&format!("key {}  held by 3/3", key_id(&new))), "{text}");
    outputs.push(text);
    at(8);
    let (ok, text) = keyring(&cluster.agents[1], &["use", "-"], Some(&new));
    assert!(ok && text.contains(&format!("key {}  held by 3/3, primary on 3/3", key_id(&new))), "{text}");
    outputs.push(text);
    at(13);
    let (ok, text) = keyring(&cluster.agents[2], &["remove", &old], None);
    assert!(ok && !text.contains(&key_id(&old)), "{text}");
    outputs.push(text);
    at(20);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        rt.block_on(w).unwrap().expect("no request failed and no lock was lost");
    }
    let (holder, held) = held;
    assert!(!held.is_lost(), "the long-held lock survived the rotation");
    rt.block_on(held.unlock()).unwrap();
    drop(holder);
    eprintln!("{} lock+unlock pairs during the rotation", ops.load(Ordering::Relaxed));
    assert!(ops.load(Ordering::Relaxed) > 1_000);
    assert_eq!(
        views(&cluster.agents).iter().map(|v| (&v.0, &v.1)).collect::<Vec<_>>(),
        before.iter().map(|v| (&v.0, &v.1)).collect::<Vec<_>>(),
        "no view changed"
    );
    let (ok, list) = keyring(&cluster.agents[0], &["list", "--json"], None);
    let list: Value = serde_json::from_str(&list).unwrap_or_else(|_| panic!("{list}"));
    assert!(ok);
    assert_eq!(list["keys"], serde_json::json!([{ "id": key_id(&new), "members": 3, "primary": 3 }]));

    // The key bytes never show: not in logs, status, metrics or reports.
    let mut shown: Vec<String> = outputs;
    for a in &cluster.agents {
        shown.push(std::fs::read_to_string(&a.log).unwrap());
        shown.push(a.status().unwrap().to_string());
        shown.push(
            a.cli(&["status", "--client", &a.client_arg()]).stdout.iter().map(|&b| b as char).collect(),
        );
        shown.push(a.scrape().unwrap());
    }
    for text in &shown {
        assert!(!text.contains(&old) && !text.contains(&new), "a key shows in: {text}");
        assert!(!text.contains(&old[..16]) && !text.contains(&new[..16]));
    }
    // Each member saved the rotated keyring (0600), so a restarted member
    // comes back with it even though its --key-file still holds the old key.
    for state in &states {
        let file = Path::new(state).join("keyring");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(&new) && !text.contains(&old));
    }
    cluster.agents[2].proc.kill();
    let seed = Some(cluster.agents[0].udp);
    cluster.agents[2] = Agent::start(cluster.dir.path(), "rotate-3b", seed, &["--state-dir", &states[2]]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let status = cluster.agents[2].status().unwrap();
    assert_eq!(status["keys"], serde_json::json!([key_id(&new)]));
}
