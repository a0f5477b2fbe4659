//! The client endpoint under abuse from a local client: everything a client
//! can make the agent hold is bounded, the bounds are counted, and the agent
//! keeps serving well-behaved clients (issue 9, item 6).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The agent's resident memory must stay under this through every phase.
/// It idles at about 7 MiB; the bounds allow each connection a few KiB of
/// input and 2 MiB of unread output, and the phases never hold more than
/// one of those at once. (Before the bounds: 254 MiB for the first phase.)
const RSS_BOUND_KIB: u64 = 24 * 1024;
/// CPU the agent may use while its accept loop sits at the open-file limit.
const CPU_BOUND: f64 = 0.10;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).map(|v| v.parse().unwrap()).collect();
    f[0] + f[1]
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Share of one CPU the agent used over one second.
fn cpu_over_a_second(pid: u32) -> f64 {
    let (before, at) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    (cpu_ticks(pid) - before) as f64 / ticks_per_second() / at.elapsed().as_secs_f64()
}

fn rejected(agent: &Agent, reason: &str) -> f64 {
    let text = agent.scrape().expect("metrics");
    metric_with(&text, "swimlock_client_rejected_total", &format!("reason=\"{reason}\"")).unwrap_or(0.0)
}

/// Reads until end of stream (or `limit`); the last line read, if any.
fn last_message(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 65536];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&bytes).lines().rfind(|l| !l.is_empty()).map(str::to_string)
}

fn status_command(_: u64) -> Vec<u8> {
    b"*1\r\n$6\r\nSTATUS\r\n".to_vec()
}

#[test]
fn abusive_clients_are_bounded_counted_and_the_agent_keeps_serving() {
    let _serial = serial();
    let dir = TempDir::new("bounds");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "client_frame_timeout = \"1s\"\nmax_client_connections = 100\n").unwrap();
    let sock = dir.path().join("client.sock");
    let extra = ["--config", config.to_str().unwrap(), "--unix-socket", sock.to_str().unwrap()];
    let agent = Agent::start(dir.path(), "bounds-1", None, &extra);
    wait_until(Duration::from_secs(15), "the agent to serve", || agent.status().is_some());
    let pid = agent.proc.pid();
    let open_fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let idle_fds = open_fds();
    let mut peak = rss_kib(pid);
    let mut measure = |phase: &str| {
        let rss = rss_kib(pid);
        peak = peak.max(rss);
        eprintln!("{phase}: agent RSS {:.1} MiB", rss as f64 / 1024.0);
        assert!(rss < RSS_BOUND_KIB, "{phase}: RSS {rss} KiB over the bound {RSS_BOUND_KIB} KiB");
    };
    measure("idle");

    // The Unix socket is the agent user's only.
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "Unix socket mode {mode:o}");

    // 200 connections that announce a 600 MB argument and send 1 MiB of it.
    let mut open = Vec::new();
    let body = vec![0u8; 64 * 1024];
    for _ in 0..200 {
        let mut s = TcpStream::connect(agent.client).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"*2\r\n$4\r\nLOCK\r\n$600000000\r\n");
        let mut left = 1 << 20;
        while left > 0 {
            let n = left.min(body.len());
            if s.write_all(&body[..n]).is_err() {
                break;
            }
            left -= n;
        }
        open.push(s);
    }
    wait_until(Duration::from_secs(10), "every oversized frame refused", || {
        rejected(&agent, "frame_too_large") >= 200.0
    });
    measure("200 connections announcing 600 MB arguments");
    let last = last_message(&mut open[0], Duration::from_secs(2)).unwrap_or_default();
    assert!(last.starts_with("-ERR Protocol error: invalid bulk length"), "{last}");
    open.clear();

    // Commands within the limits that never complete are closed after the frame timeout.
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(agent.client).unwrap();
            s.write_all(b"*2\r\n$4\r\nLOCK\r\n$100\r\n").unwrap();
            s.write_all(&[b'a'; 99]).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let last = last_message(&mut stalled[0], Duration::from_secs(5)).unwrap_or_default();
    assert!(last.starts_with("-ERR closing the connection: a request did not complete in time"), "{last}");
    let closed_after = started.elapsed();
    eprintln!("a stalled frame closed its connection after {closed_after:?} (timeout 1s)");
    assert!(closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4));
    wait_until(Duration::from_secs(5), "every stalled frame timed out", || {
        rejected(&agent, "frame_timeout") >= 20.0
    });
    stalled.clear();

    // A client that sends 1,024 STATUS commands and never reads...
    let mut greedy = TcpStream::connect(agent.client).unwrap();
    greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let batch: Vec<u8> = (0..1024).flat_map(status_command).collect();
    greedy.write_all(&batch).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    measure("1,024 STATUS commands never read");
    // ...and keeps sending: disconnected once its unread output passes the bound.
    let started = Instant::now();
    let mut sent = 1024u64;
    while started.elapsed() < Duration::from_secs(30) {
        let batch: Vec<u8> = (sent..sent + 1024).flat_map(status_command).collect();
        match greedy.write_all(&batch) {
            Ok(()) => sent += 1024,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if rejected(&agent, "slow_reader") >= 1.0 {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    wait_until(Duration::from_secs(10), "the slow reader to be disconnected", || {
        rejected(&agent, "slow_reader") >= 1.0
    });
    eprintln!("the slow reader was disconnected after {sent} STATUS commands");
    measure("a client that never reads");
    drop(greedy);

    // The connection limit: 100 served, the rest told why and closed.
    let mut crowd: Vec<TcpStream> = (0..120).map(|_| TcpStream::connect(agent.client).unwrap()).collect();
    wait_until(Duration::from_secs(10), "20 connections over the limit refused", || {
        rejected(&agent, "too_many_connections") >= 20.0
    });
    assert_eq!(
        last_message(crowd.last_mut().unwrap(), Duration::from_secs(2)).as_deref(),
        Some("-ERR max number of clients reached")
    );
    measure("120 connections against a limit of 100");
    crowd.clear();

    // The open-file limit: accept fails with EMFILE; the loop backs off and
    // logs once, instead of spinning.
    wait_until(Duration::from_secs(10), "the agent to close the connections of earlier phases", || {
        open_fds() <= idle_fds + 2
    });
    let limit = open_fds() + 10;
    let lowered =
        Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")]).status();
    assert!(lowered.unwrap().success(), "prlimit failed");
    let logged_before = count_lines(&agent, "accept on the client endpoint failed");
    let flood: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(agent.client).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_over_a_second(pid);
    let logged = count_lines(&agent, "accept on the client endpoint failed") - logged_before;
    eprintln!(
        "at the open-file limit ({limit}): agent CPU {:.1}% over 1 s, {logged} log line(s)",
        cpu * 100.0
    );
    assert!(cpu < CPU_BOUND, "agent CPU {:.1}% at the fd limit", cpu * 100.0);
    assert!((1..=2).contains(&logged), "{logged} accept-failure lines logged");
    measure("at the open-file limit");
    drop(flood);
    let raised = Command::new("prlimit").args(["--pid", &pid.to_string(), "--nofile=4096:"]).status();
    assert!(raised.unwrap().success(), "prlimit failed");
    wait_until(Duration::from_secs(5), "the accept failures to be counted", || {
        rejected(&agent, "accept_error") >= 1.0
    });

    // Well-behaved clients are still served, over TCP and the Unix socket.
    for client in [agent.client_arg(), format!("unix:{}", sock.display())] {
        let out = swimlock(&["lock", "bounds", "--timeout", "5s", "--client", &client, "--", "true"]);
        assert!(out.status.success(), "{client}: {}", String::from_utf8_lossy(&out.stderr));
    }
    measure("after");
    eprintln!("peak agent RSS {:.1} MiB (bound {} MiB)", peak as f64 / 1024.0, RSS_BOUND_KIB / 1024);
}

fn count_lines(agent: &Agent, needle: &str) -> usize {
    std::fs::read_to_string(&agent.log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

/// A TCP endpoint with `client_token`: a client must give it first (the CLI
/// reads SWIMLOCK_CLIENT_TOKEN); a missing or wrong one is refused and
/// counted. The Unix socket needs none (its file mode protects it). A
/// non-loopback TCP endpoint without a token is refused at start.
#[test]
fn client_token_is_required_on_tcp() {
    let _serial = serial();
    let dir = TempDir::new("auth");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "client_token = \"s3cret\"\n").unwrap();
    let sock = dir.path().join("client.sock");
    let extra = ["--config", config.to_str().unwrap(), "--unix-socket", sock.to_str().unwrap()];
    let agent = Agent::start(dir.path(), "auth-1", None, &extra);
    let unix = format!("unix:{}", sock.display());
    wait_until(Duration::from_secs(15), "the agent to serve", || {
        swimlock(&["status", "--client", &unix]).status.success()
    });
    let run = |token: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_remove("SWIMLOCK_CLIENT_TOKEN");
        if let Some(t) = token {
            cmd.env("SWIMLOCK_CLIENT_TOKEN", t);
        }
        cmd.stdin(std::process::Stdio::null()).output().unwrap()
    };
    let tcp = agent.client_arg();
    let lock = ["lock", "auth", "--timeout", "5s", "--client", &tcp, "--", "true"];

    let none = run(None, &lock);
    assert_eq!(none.status.code(), Some(77), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("requires a client token"), "{none:?}");
    let wrong = run(Some("guess"), &lock);
    assert_eq!(wrong.status.code(), Some(77), "{wrong:?}");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong client token"), "{wrong:?}");
    let right = run(Some("s3cret"), &lock);
    assert!(right.status.success(), "{right:?}");
    assert!(run(Some("s3cret"), &["status", "--client", &tcp]).status.success());
    let over_unix = run(None, &["lock", "auth", "--timeout", "5s", "--client", &unix, "--", "true"]);
    assert!(over_unix.status.success(), "{over_unix:?}");
    wait_until(Duration::from_secs(5), "both refusals counted", || rejected(&agent, "unauthorized") >= 2.0);

    let port = free_port().to_string();
    let open = swimlock(&["agent", "--client", &format!("0.0.0.0:{port}"), "--metrics", "off"]);
    assert_eq!(open.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&open.stderr).contains("client_token"), "{open:?}");
}
