//! The client endpoint against Redis clients nobody here wrote (issue 12):
//! redis-cli, redis-py >= 5 (RESP3 and RESP2) and ioredis (RESP2), each
//! against a real agent on loopback, plus raw bad input.
//!
//! `.ci/run` installs the clients (redis-tools, redis-py from PyPI, ioredis
//! from npm into `target/resp-clients`). Where one is missing, its test
//! fails under CI (`CI` set) and is skipped with a notice elsewhere.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/resp_clients")
}

/// Where `.ci/run` installs ioredis.
fn node_modules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/resp-clients/node_modules")
}

/// Whether `what` is usable; if not, a failure under CI, a notice elsewhere.
fn have(what: &str, probe: &mut Command) -> bool {
    let ok = probe.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "{what} is missing (.ci/run installs it)");
        eprintln!("SKIPPED: {what} is not installed (.ci/run installs it)");
    }
    ok
}

fn agent(dir: &TempDir, name: &str) -> Agent {
    let agent = Agent::start(dir.path(), name, None, &[]);
    wait_until(Duration::from_secs(15), "the agent to serve", || {
        agent.status().is_some_and(|s| s["table"]["serving"] == true)
    });
    agent
}

/// Runs `cmd`, prints its output, and fails the test if it failed.
fn run_script(what: &str, cmd: &mut Command) {
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "--- {what} ({:.1}s)\n{text}{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed");
}

fn redis_cli(agent: &Agent, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &agent.client.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn redis_cli_locks_and_reads_status() {
    let _serial = serial();
    if !have("redis-cli (Debian redis-tools)", Command::new("redis-cli").arg("--version")) {
        return;
    }
    let dir = TempDir::new("resp-cli");
    let agent = agent(&dir, "cli-1");
    assert_eq!(redis_cli(&agent, &["PING"]), "PONG");
    let token: i64 = redis_cli(&agent, &["LOCK", "cli/a", "1000"]).parse().expect("a token");
    assert!(token > 0);
    // One redis-cli run is one connection: the lock went with it.
    assert_eq!(redis_cli(&agent, &["HOLDS", "cli/a"]), "0");
    // Several commands on one connection, as a pipe.
    let mut child = Command::new("redis-cli")
        .args(["-p", &agent.client.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"LOCK cli/b 1000\nLOCK cli/b 1000\nHOLDS cli/b\nUNLOCK cli/b\nUNLOCK cli/b\nUNLOCK cli/b\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    eprintln!("redis-cli pipe: {lines:?}");
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[0], lines[1], "re-entry gets the same token");
    assert_eq!(&lines[2..5], ["2", "OK", "OK"]);
    assert!(lines[5].starts_with("NOTHELD"), "{lines:?}");
    // RESP3 (redis-cli -3 sends HELLO 3 on connect).
    let hello = redis_cli(&agent, &["-3", "HELLO", "3"]);
    assert!(hello.contains("proto") && hello.contains('3'), "{hello}");
    let status = redis_cli(&agent, &["-3", "STATUS"]);
    for key in ["node", "view_id", "members", "coordinator", "mode", "quorum", "locks", "version", "alive"] {
        assert!(status.contains(key), "STATUS lacks {key}: {status}");
    }
    // Connect-time and unknown commands are errors; the connection stays.
    assert!(redis_cli(&agent, &["SELECT", "1"]).starts_with("ERR"));
    assert!(redis_cli(&agent, &["COMMAND", "DOCS"]).starts_with("ERR"));
    assert!(redis_cli(&agent, &["LOCK"]).starts_with("ERR wrong number of arguments"));
}

#[test]
fn redis_py_resp3_and_resp2() {
    let _serial = serial();
    let probe = "import redis,sys; sys.exit(int(redis.__version__.split('.')[0]) < 5)";
    if !have("redis-py >= 5 (pip)", Command::new("python3").args(["-c", probe])) {
        return;
    }
    let dir = TempDir::new("resp-py");
    let agent = agent(&dir, "py-1");
    run_script(
        "redis-py",
        Command::new("python3").arg(scripts().join("redis_py.py")).arg(agent.client.port().to_string()),
    );
}

#[test]
fn ioredis_resp2() {
    let _serial = serial();
    let modules = node_modules();
    let mut probe = Command::new("node");
    probe.args(["-e", "require('ioredis')"]).env("NODE_PATH", &modules);
    if !have("ioredis (npm, in target/resp-clients)", &mut probe) {
        return;
    }
    let dir = TempDir::new("resp-js");
    let agent = agent(&dir, "js-1");
    run_script(
        "ioredis",
        Command::new("node")
            .arg(scripts().join("ioredis.js"))
            .arg(agent.client.port().to_string())
            .env("NODE_PATH", &modules),
    );
}

/// Sends `bytes` on a fresh connection and reads until the agent closes
/// it or `limit` passes: what came back, and whether it closed.
fn exchange(agent: &Agent, bytes: &[u8], limit: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(agent.client).unwrap();
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[test]
fn bad_input_gets_errors_or_a_close_never_a_crash() {
    let _serial = serial();
    let dir = TempDir::new("resp-bad");
    let agent = agent(&dir, "bad-1");
    let short = Duration::from_millis(300);
    let (out, closed) = exchange(&agent, b"*1\r\n$4\r\nNOPE\r\nPING\r\n", short);
    assert_eq!(out, "-ERR unknown command 'NOPE'\r\n+PONG\r\n");
    assert!(!closed);
    let (out, _) = exchange(&agent, b"UNLOCK\r\nUNLOCK a b\r\nLOCK a soon\r\n", short);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.starts_with("-ERR")), "{out}");
    let (out, closed) = exchange(&agent, b"*2\r\n$4\r\nLOCK\r\n$2\r\n\xff\xfe\r\nPING\r\n", short);
    assert_eq!(out, "-BADNAME a lock name must be UTF-8\r\n+PONG\r\n");
    assert!(!closed);
    // A 600 MB bulk length: refused from its header, then closed.
    let (out, closed) =
        exchange(&agent, b"PING\r\n*2\r\n$4\r\nLOCK\r\n$600000000\r\nabc", Duration::from_secs(3));
    assert!(out.starts_with("+PONG\r\n-ERR Protocol error: invalid bulk length 600000000"), "{out}");
    assert!(closed, "the connection closes after a protocol error");
    let (out, closed) = exchange(&agent, b"*1\r\n:1\r\n", Duration::from_secs(3));
    assert!(out.starts_with("-ERR Protocol error"), "{out}");
    assert!(closed);
    // A client that pipelines and never reads is disconnected once its
    // unread replies pass the bound; the agent keeps serving.
    let mut greedy = TcpStream::connect(agent.client).unwrap();
    greedy.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let batch = b"*1\r\n$6\r\nSTATUS\r\n".repeat(1000);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) && greedy.write_all(&batch).is_ok() {}
    assert!(started.elapsed() < Duration::from_secs(20), "the agent kept reading a client that never reads");
    drop(greedy);
    let (out, _) = exchange(&agent, b"PING\r\n", short);
    assert_eq!(out, "+PONG\r\n");
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.proc.pid())).unwrap();
    let rss_kib: u64 = rss
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("agent RSS after the bad input: {} KiB", rss_kib);
    assert!(rss_kib < 32 * 1024, "agent RSS {rss_kib} KiB");
}

#[test]
fn a_duplicate_after_a_merge_is_pushed_and_answered_in_band() {
    let _serial = serial();
    let probe = "import redis,sys; sys.exit(int(redis.__version__.split('.')[0]) < 5)";
    if !have("redis-py >= 5 (pip)", Command::new("python3").args(["-c", probe]))
        || !have("nft (Debian nftables)", Command::new("nft").args(["list", "tables"]))
    {
        return;
    }
    let dir = TempDir::new("resp-dup");
    let a = agent(&dir, "dup-a");
    let b_ports = Ports::free();
    let mut partition = PortPartition::new("resp", a.udp.port(), b_ports.udp.port());
    // B seeds from A but cannot reach it: it forms a group of its own.
    let b = Agent::start_in(None, b_ports, dir.path(), "dup-b", Some(a.udp), &["--join-timeout", "300ms"]);
    wait_until(Duration::from_secs(15), "B to serve alone", || {
        b.status().is_some_and(|s| s["table"]["serving"] == true)
    });
    let mut script = Command::new("python3")
        .arg(scripts().join("duplicate.py"))
        .args([a.client.port().to_string(), b.client.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(script.stdout.take().unwrap());
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 && !line.ends_with("locked\n") {
        eprint!("{line}");
        line.clear();
    }
    assert!(line.ends_with("locked\n"), "the script did not lock on both sides");
    let healed = Instant::now();
    partition.heal();
    script.stdin.take().unwrap().write_all(b"healed\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    eprint!("{rest}");
    let status = script.wait().unwrap();
    eprintln!("merge to in-band loss: {:.1}s", healed.elapsed().as_secs_f64());
    if !status.success() {
        eprintln!("{}\n{}", a.log_tail(), b.log_tail());
    }
    assert!(status.success(), "the duplicate scenario failed");
}

/// A client written from the README's "Client protocol" section alone, in
/// Python with a bare socket.
#[test]
fn a_client_written_from_the_readme_alone() {
    let _serial = serial();
    if !have("python3", Command::new("python3").arg("--version")) {
        return;
    }
    let dir = TempDir::new("resp-min");
    let agent = agent(&dir, "min-1");
    run_script(
        "minimal client",
        Command::new("python3").arg(scripts().join("minimal.py")).arg(agent.client.port().to_string()),
    );
}
