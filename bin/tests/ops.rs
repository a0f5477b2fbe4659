//! What an operator relies on: the HTTP endpoint (`/health`, `/ready`,
//! `/metrics`) of real agents, readiness through a quorum loss, the
//! metrics the shipped dashboard and alerts use, and reloads on SIGHUP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::Value;

const FORM: Duration = Duration::from_secs(15);

/// One HTTP/1.1 request: the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn ready(agent: &Agent) -> Option<(u16, Value)> {
    let (code, body) = http(agent.metrics, "GET", "/ready")?;
    Some((code, serde_json::from_str(&body).ok()?))
}

/// Paths and methods of the endpoint: 200 for /health, /ready, /metrics;
/// 404 elsewhere; 405 for other methods. The series come in the same order
/// at every scrape.
#[test]
fn endpoint_paths_methods_and_stable_order() {
    let _serial = serial();
    let cluster = Cluster::start("http", 1, &[]);
    cluster.wait_formed(&[0], FORM);
    let a = &cluster.agents[0];
    assert_eq!(http(a.metrics, "GET", "/health").unwrap(), (200, "ok\n".to_string()));
    let (code, body) = ready(a).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ready"], Value::Bool(true));
    assert_eq!(http(a.metrics, "GET", "/nothing-here").unwrap().0, 404);
    assert_eq!(http(a.metrics, "GET", "/").unwrap().0, 404);
    assert_eq!(http(a.metrics, "POST", "/metrics").unwrap().0, 405);
    assert_eq!(http(a.metrics, "DELETE", "/ready").unwrap().0, 405);
    let series = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
            .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
            .collect()
    };
    let first = http(a.metrics, "GET", "/metrics").unwrap().1;
    for _ in 0..5 {
        assert_eq!(series(&http(a.metrics, "GET", "/metrics").unwrap().1), series(&first));
    }
    for name in [
        "swimlock_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "swimlock_coordinator_changes_total",
    ] {
        assert!(metric(&first, name).is_some(), "{name} missing");
    }
    assert!(metric(&first, "process_open_fds").unwrap() > 3.0);
    assert!(first.contains("swimlock_build_info{version=\""), "{first}");
    for reason in ["duplicate", "quorum_lost", "lease_expired"] {
        let label = format!("reason=\"{reason}\"");
        assert_eq!(metric_with(&first, "swimlock_locks_lost_total", &label), Some(0.0), "{reason}");
    }
    assert_eq!(metric(&first, "swimlock_quorum"), None, "only in majority mode");
}

/// Mode majority, 3 agents: /ready is 200; with two of them killed it turns
/// 503 naming the lost quorum (and `swimlock_quorum` 0); with two agents
/// started again it is 200 again.
#[test]
fn ready_follows_quorum_loss_and_recovery() {
    let _serial = serial();
    let mut cluster = Cluster::start("ready", 3, &["--mode", "majority", "--members", "3"]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let first = &cluster.agents[0];
    wait_until(FORM, "/ready 200 on every agent", || {
        cluster.agents.iter().all(|a| ready(a).is_some_and(|(code, _)| code == 200))
    });
    assert_eq!(metric(&first.scrape().unwrap(), "swimlock_quorum"), Some(1.0));

    cluster.agents[1].proc.kill();
    cluster.agents[2].proc.kill();
    let first = &cluster.agents[0];
    wait_until(FORM, "/ready 503 once the quorum is lost", || {
        ready(first).is_some_and(|(code, _)| code == 503)
    });
    let (_, body) = ready(first).unwrap();
    assert_eq!(body["ready"], Value::Bool(false));
    assert_eq!(body["quorum"], Value::Bool(false));
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("no quorum") && reason.contains("2 needed"), "{body}");
    assert_eq!(http(first.metrics, "GET", "/health").unwrap().0, 200, "alive, only not ready");
    assert_eq!(metric(&first.scrape().unwrap(), "swimlock_quorum"), Some(0.0));

    let seed = Some(first.udp);
    let dir = cluster.dir.path().to_path_buf();
    let extra = ["--mode", "majority", "--members", "3"];
    cluster.agents[1] = Agent::start(&dir, "ready-2b", seed, &extra);
    cluster.agents[2] = Agent::start(&dir, "ready-3b", seed, &extra);
    wait_until(FORM, "/ready 200 on every agent after the restart", || {
        cluster.agents.iter().all(|a| ready(a).is_some_and(|(code, _)| code == 200))
    });
    let text = cluster.agents[0].scrape().unwrap();
    assert_eq!(metric(&text, "swimlock_quorum"), Some(1.0));
}

/// The metric names in `text` (PromQL or JSON): `swimlock_*` and `process_*`
/// identifiers.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let end = (i..bytes.len()).find(|&j| !ident(bytes[j])).unwrap_or(bytes.len());
            let word = &text[i..end];
            if word.starts_with("swimlock_") || word.starts_with("process_") {
                names.insert(word.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

fn contrib(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// contrib/grafana/swimlock.json parses, has the panels the README promises,
/// and every metric its queries use is one a running agent exports; so is
/// every metric of contrib/prometheus/alerts.yml, which `promtool check
/// rules` accepts (skipped, saying so, where promtool is not installed).
#[test]
fn dashboard_and_alerts_use_exported_metrics() {
    let _serial = serial();
    let cluster = Cluster::start("dash", 1, &["--mode", "majority", "--members", "1"]);
    cluster.wait_formed(&[0], FORM);
    let scrape = cluster.agents[0].scrape().unwrap();
    let exported: std::collections::BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();

    let dashboard: Value = serde_json::from_str(&contrib("grafana/swimlock.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in
        ["View size", "Coordinator", "Grants/s", "Wait latency", "Lost locks", "Merges", "Retrans", "Dropped"]
    {
        assert!(titles.iter().any(|t| t.starts_with(wanted)), "no panel {wanted}: {titles:?}");
    }
    let mut queries = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(exported.contains(&name), "dashboard query uses {name}, not exported: {expr}");
            }
            queries += 1;
        }
    }
    assert!(queries >= 15, "{queries} queries");

    let alerts = contrib("prometheus/alerts.yml");
    for name in metric_names(&alerts) {
        assert!(exported.contains(&name), "alerts.yml uses {name}, not exported");
    }
    for alert in [
        "ViewSizeDisagree",
        "CoordinatorDisagree",
        "MultipleCoordinators",
        "QuorumLost",
        "LocksLost",
        "DatagramsDropped",
    ] {
        assert!(alerts.contains(&format!("alert: Swimlock{alert}")), "{alert}");
    }

    let promtool = std::env::var("SWIMLOCK_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus/alerts.yml");
    match std::process::Command::new(&promtool).arg("check").arg("rules").arg(&rules).output() {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!(
            "SKIPPED promtool check rules: cannot run `{promtool}` ({e}); .ci/run installs it (SWIMLOCK_PROMTOOL)"
        ),
    }
}

fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn hangup(agent: &Agent) {
    let pid = nix::unistd::Pid::from_raw(agent.proc.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

fn log_has(agent: &Agent, text: &str) -> bool {
    std::fs::read_to_string(&agent.log).unwrap_or_default().contains(text)
}

/// SIGHUP re-reads the config file: the log level, the lock-delay and a
/// new key in the key file are applied and logged; a setting that needs a
/// restart is named; a lock-delay that breaks the lease inequality is
/// refused with nothing changed, and the agent keeps running.
#[test]
fn sighup_reloads_what_can_change_and_names_the_rest() {
    let _serial = serial();
    let dir = TempDir::new("hup");
    let config = dir.path().join("agent.toml");
    let key_path = dir.path().join("hup.key");
    let key = |_: ()| String::from_utf8(swimlock(&["keygen"]).stdout).unwrap();
    write_private(&key_path, &key(()));
    std::fs::write(&config, "lock_delay = \"3s\"\nlog_level = \"info\"\n").unwrap();
    let key_arg = key_path.display().to_string();
    let config_arg = config.display().to_string();
    let agent = Agent::start(dir.path(), "hup", None, &["--config", &config_arg, "--key-file", &key_arg]);
    wait_until(FORM, "the agent to serve", || ready(&agent).is_some_and(|(code, _)| code == 200));

    std::fs::write(&config, "lock_delay = \"4s\"\nlog_level = \"debug\"\ncluster = \"other\"\n").unwrap();
    write_private(&key_path, &key(()));
    hangup(&agent);
    wait_until(FORM, "the reload to be logged", || log_has(&agent, "reload: lock_delay changed"));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(log.contains("lock_delay changed from 3s to 4s"), "{log}");
    assert!(log.contains("reload: log level changed"), "{log}");
    assert!(log.contains("from the key file installed in the keyring"), "{log}");
    assert!(log.contains("cluster changed in the configuration; it takes a restart to apply"), "{log}");
    // The new level is in force: a client connecting is logged at DEBUG.
    let from = log.find("reload: log level changed").unwrap();
    wait_until(FORM, "a DEBUG line after the reload", || {
        let _ = agent.status();
        std::fs::read_to_string(&agent.log).unwrap()[from..].contains("DEBUG")
    });

    std::fs::write(&config, "lock_delay = \"100ms\"\nlog_level = \"debug\"\ncluster = \"other\"\n").unwrap();
    hangup(&agent);
    wait_until(FORM, "the refusal to be logged", || log_has(&agent, "reload refused, nothing changed"));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    let refusal = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(refusal.contains("lock_delay") && refusal.contains("below lease"), "{refusal}");
    assert_eq!(http(agent.metrics, "GET", "/health").unwrap().0, 200, "still running");
}

/// SIGHUP with a new `client_token`: connections that start after the
/// reload must give the new one; the old one is refused.
#[test]
fn sighup_changes_the_client_token_for_new_connections() {
    let _serial = serial();
    let dir = TempDir::new("hup-token");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "client_token = \"first-token\"\n").unwrap();
    let config_arg = config.display().to_string();
    let agent = Agent::start(dir.path(), "tok", None, &["--config", &config_arg]);
    let status_with = |token: &str| {
        std::process::Command::new(BIN)
            .args(["status", "--client", &agent.client_arg()])
            .env("SWIMLOCK_CLIENT_TOKEN", token)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run swimlock status")
    };
    wait_until(FORM, "the agent to answer with the first token", || {
        status_with("first-token").status.success()
    });

    std::fs::write(&config, "client_token = \"second-token\"\n").unwrap();
    hangup(&agent);
    wait_until(FORM, "the token change to be logged", || log_has(&agent, "client_token changed"));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(!log.contains("first-token") && !log.contains("second-token"), "a token was logged: {log}");
    assert!(status_with("second-token").status.success(), "the new token is taken");
    let old = status_with("first-token");
    assert!(!old.status.success(), "the old token is still taken");
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
}

/// `--log-format json` writes one JSON object per line, with the fields of
/// the lock-relevant events (here: the view installed).
#[test]
fn json_logs_carry_the_event_fields() {
    let _serial = serial();
    let dir = TempDir::new("json");
    let agent = Agent::start(dir.path(), "json", None, &["--log-format", "json"]);
    wait_until(FORM, "a view installed line", || log_has(&agent, "view installed"));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    let line = log.lines().find(|l| l.contains("view installed")).unwrap();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["message"], "view installed", "{line}");
    assert!(v["view_id"].is_u64() && v["coordinator"].is_string(), "{line}");
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

/// `n` consecutive ports free for UDP and TCP on 127.0.0.1, from `base` on.
fn free_run(n: u16) -> u16 {
    let mut base = 20_000 + (std::process::id() % 20_000) as u16;
    loop {
        let free = (0..n).all(|i| {
            std::net::UdpSocket::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
        });
        if free {
            return base;
        }
        base += n;
    }
}

/// Usage errors exit 64 with the reason; durations take the documented
/// forms only; a TOML syntax error names the file, line and column.
#[test]
fn usage_errors_exit_64_and_config_errors_say_where() {
    let out = swimlock(&["lock", "", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid lock name"));
    let long = "x".repeat(300);
    let out = swimlock(&["lock", &long, "--", "true"]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(swimlock(&["--no-such-flag"]).status.code(), Some(64));
    assert_eq!(swimlock(&["lock"]).status.code(), Some(64));
    assert_eq!(swimlock(&["--version"]).status.code(), Some(0));

    let out = swimlock(&["agent", "--lease", "1 sec", "--metrics", "off", "--client", "off"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lock.lease") && stderr.contains("is not a duration"), "{stderr}");

    let dir = TempDir::new("toml");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "name = \"a\"\n\n  cluster = = \"x\"\n").unwrap();
    let out = swimlock(&["agent", "--config", &path.display().to_string()]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("swimlock agent: {}:3:", path.display())), "{stderr}");
}

/// `--bind localhost:PORT` works: the name is resolved once and logged.
#[test]
fn bind_accepts_a_host_name() {
    let _serial = serial();
    let dir = TempDir::new("hostname");
    let ports = Ports::free();
    let port = ports.udp.port();
    let log = dir.path().join("named.log");
    let child = std::process::Command::new(BIN)
        .args(["agent", "--name", "named", "--bind", &format!("localhost:{port}")])
        .args(["--client", &ports.client.to_string(), "--metrics", &ports.metrics.to_string()])
        .arg("--key-file")
        .arg(key_file(dir.path()))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent {
        name: "named".into(),
        udp: ports.udp,
        client: ports.client,
        metrics: ports.metrics,
        log,
        proc: Proc(Some(child)),
        netns: None,
    };
    wait_until(FORM, "the agent to be ready", || ready(&agent).is_some_and(|(code, _)| code == 200));
    assert!(log_has(&agent, "host name resolved once, at start"), "{}", agent.log_tail());
    assert!(log_has(&agent, &format!("127.0.0.1:{port}")), "{}", agent.log_tail());
}

/// Mode majority without a quorum: a lock request that waits is refused as
/// "no quorum", not "timed out", and counted as `no_quorum`.
#[test]
fn a_wait_without_quorum_is_reported_as_no_quorum() {
    let _serial = serial();
    let cluster = Cluster::start("noquorum", 1, &["--mode", "majority", "--members", "3"]);
    let a = &cluster.agents[0];
    wait_until(FORM, "a view", || ready(a).is_some_and(|(_, body)| body["view_id"].is_u64()));
    let out = a.cli(&["lock", "q", "--timeout", "1s", "--client", &a.client_arg(), "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no quorum"), "{stderr}");
    assert!(!out.status.success());
    let text = a.scrape().unwrap();
    assert_eq!(metric_with(&text, "swimlock_requests_total", "result=\"no_quorum\""), Some(1.0));
    assert_eq!(metric_with(&text, "swimlock_requests_total", "result=\"timed_out\""), Some(0.0));
    assert_eq!(
        metric_with(&text, "swimlock_acquire_latency_seconds_count", "result=\"no_quorum\""),
        Some(1.0)
    );

    // Without --timeout, after 10 s it says what it waits for.
    let log = cluster.dir.path().join("waiting.log");
    let child = std::process::Command::new(BIN)
        .args(["lock", "q", "--client", &a.client_arg(), "--", "true"])
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _waiting = Proc(Some(child));
    wait_until(Duration::from_secs(20), "the still-waiting line", || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("still waiting")
    });
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.contains("lock q after 10s: no quorum: this agent's view has 1 of the 3"), "{line}");
}

/// `swimlock demo` shows failover: a killed node is named, the survivors'
/// new view is reported, `restart N` brings it back; a second demo on the
/// same ports refuses to start; a closed standard output is no panic.
#[test]
fn demo_survives_a_killed_node_and_restarts_it() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let _serial = serial();
    let base = free_run(9);
    let dir = TempDir::new("demo");
    let log = dir.path().join("demo.log");
    let ports = |b: u16| {
        vec![
            "demo".to_string(),
            "--udp-port".into(),
            b.to_string(),
            "--client-port".into(),
            (b + 3).to_string(),
            "--metrics-port".into(),
            (b + 6).to_string(),
        ]
    };
    let child = Command::new(BIN)
        .args(ports(base))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut demo = Proc(Some(child));
    let stdout = demo.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break; // closes the demo's standard output
            }
        }
    });
    let mut seen = Vec::new();
    let mut expect = |what: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {what:?} within 20s; saw:\n{}", seen.join("\n")),
            }
        }
    };
    let pids = expect("pids: ");
    let pid_of = |node: &str| -> i32 {
        let after = &pids[pids.find(&format!("{node} ")).unwrap() + node.len() + 1..];
        after.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    // A second demo on the same ports refuses at once.
    let second = Command::new(BIN).args(ports(base)).stdin(Stdio::null()).output().unwrap();
    assert_eq!(second.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already in use"));

    let node2 = nix::unistd::Pid::from_raw(pid_of("node-2"));
    nix::sys::signal::kill(node2, nix::sys::signal::Signal::SIGKILL).unwrap();
    expect("node-2 exited");
    let reformed = expect("re-formed");
    assert!(reformed.contains("node-1, node-3") && reformed.contains("view of 2 members"), "{reformed}");

    let stdin = demo.0.as_mut().unwrap().stdin.as_mut().unwrap();
    stdin.write_all(b"restart 2\n").unwrap();
    stdin.flush().unwrap();
    expect("node-2 started again");
    let back = expect("re-formed");
    assert!(back.contains("view of 3 members"), "{back}");

    // Nobody reads its output any more: the demo keeps running (it has
    // something to say: node-3 dies), then stops cleanly on SIGTERM.
    drop(rx);
    let node3 = nix::unistd::Pid::from_raw(pid_of("node-3"));
    nix::sys::signal::kill(node3, nix::sys::signal::Signal::SIGKILL).unwrap();
    let node1: SocketAddr = ([127, 0, 0, 1], base + 6).into();
    wait_until(FORM, "node-1 and node-2 in a view without node-3", || {
        http(node1, "GET", "/ready").is_some_and(|(_, body)| body.contains("\"members\":2,"))
    });
    // The demo looks every 100 ms; give it a few looks to write to the closed pipe.
    std::thread::sleep(Duration::from_millis(500));
    assert!(demo.0.as_mut().unwrap().try_wait().unwrap().is_none(), "the demo still runs");
    let pid = nix::unistd::Pid::from_raw(demo.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = demo.wait_exit(Duration::from_secs(15)).expect("the demo stops on SIGTERM");
    assert_eq!(status.code(), Some(0));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// One scrape of one agent: time, view members, is coordinator, acquired
/// total, lost total.
type Sample = (f64, f64, f64, f64, f64);
/// A line of a panel: (seconds, value).
type Series = Vec<(f64, f64)>;
/// A panel: title, one line per agent, the top of its y axis.
type Panel = (&'static str, Vec<Series>, f64);

/// Not a check: draws the dashboard's main panels from a short run (3
/// agents, a client locking in a loop, the coordinator killed after 4 s),
/// scraping /metrics every 250 ms, into `$SWIMLOCK_DASHBOARD_OUT` (default
/// `target/dashboard.svg`, and a PNG beside it). Grafana is not available
/// offline; this shows the same queries' data.
/// `cargo test --release -p swimlock --test ops -- --ignored --nocapture render_dashboard`
#[test]
#[ignore]
fn render_dashboard_panels_from_a_short_run() {
    use plotters::prelude::*;
    let _serial = serial();
    let mut cluster = Cluster::start("panels", 3, &[]);
    cluster.wait_formed(&[0, 1, 2], FORM);
    let client_addr = cluster.agents[2].client_arg();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async {
                let client = swimlock::client::Client::connect(&client_addr).await.unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.lock("panel", Duration::from_millis(500)).await {
                        Ok(g) => {
                            let _ = g.unlock().await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
    };
    let started = std::time::Instant::now();
    // Per agent: (t, view members, is coordinator, acquired total, lost total).
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); 3];
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(12) {
        let t = started.elapsed().as_secs_f64();
        if !killed && t > 4.0 {
            cluster.agents[0].proc.kill();
            killed = true;
        }
        for (i, agent) in cluster.agents.iter().enumerate() {
            if let Some(text) = agent.scrape() {
                let m = |name: &str| metric(&text, name).unwrap_or(0.0);
                let acquired =
                    metric_with(&text, "swimlock_requests_total", "result=\"acquired\"").unwrap_or(0.0);
                samples[i].push((
                    t,
                    m("swimlock_view_members"),
                    m("swimlock_is_coordinator"),
                    acquired,
                    m("swimlock_locks_lost_total"),
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worker.join().unwrap();

    let out = std::env::var("SWIMLOCK_DASHBOARD_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.svg"));
    let font = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/DejaVuSans.ttf"))
        .unwrap();
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, font);
    let rate = |s: &[Sample]| -> Series {
        s.windows(2).map(|w| (w[1].0, ((w[1].3 - w[0].3) / (w[1].0 - w[0].0)).max(0.0))).collect()
    };
    let panels: [Panel; 4] = [
        (
            "View size per node (swimlock_view_members)",
            samples.iter().map(|s| s.iter().map(|p| (p.0, p.1)).collect()).collect(),
            4.0,
        ),
        (
            "Coordinator (swimlock_is_coordinator)",
            samples.iter().map(|s| s.iter().map(|p| (p.0, p.2)).collect()).collect(),
            1.2,
        ),
        (
            "Grants/s on panels-3 (rate of swimlock_requests_total{result=\"acquired\"})",
            vec![Vec::new(), Vec::new(), rate(&samples[2])],
            samples[2].windows(2).map(|w| (w[1].3 - w[0].3) / (w[1].0 - w[0].0)).fold(10.0, f64::max) * 1.2,
        ),
        (
            "Lost locks (swimlock_locks_lost_total)",
            samples.iter().map(|s| s.iter().map(|p| (p.0, p.4)).collect()).collect(),
            3.0,
        ),
    ];
    fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, panels: &[Panel])
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).unwrap();
        let root = root
            .titled("swimlock dashboard: 3 agents, coordinator panels-1 killed at 4 s", ("sans-serif", 22))
            .unwrap();
        let areas = root.split_evenly((2, 2));
        for (area, (title, lines, top)) in areas.iter().zip(panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(*title, ("sans-serif", 14))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..12f64, 0f64..*top)
                .unwrap();
            chart.configure_mesh().x_desc("seconds").label_style(("sans-serif", 11)).draw().unwrap();
            for (i, line) in lines.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
                let color = Palette99::pick(i).to_rgba();
                let style = ShapeStyle::from(&color).stroke_width(2);
                chart
                    .draw_series(LineSeries::new(line.clone(), style))
                    .unwrap()
                    .label(format!("panels-{}", i + 1))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .draw()
                .unwrap();
        }
        root.present().unwrap();
    }
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, (1200, 800)).into_drawing_area(), &panels);
    std::fs::write(&out, svg).unwrap();
    draw(BitMapBackend::new(&out.with_extension("png"), (1200, 800)).into_drawing_area(), &panels);
    eprintln!("dashboard panels written to {} and {}", out.display(), out.with_extension("png").display());
}

/// Under systemd (`Type=notify`): the agent sends READY=1 to
/// `$NOTIFY_SOCKET` once its first view is installed, and STOPPING=1 when
/// it begins a stop.
#[test]
fn agent_notifies_systemd_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let _serial = serial();
    let dir = TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(FORM)).unwrap();
    let ports = Ports::free();
    let child = std::process::Command::new(BIN)
        .args(["agent", "--bind", &ports.udp.to_string(), "--client", &ports.client.to_string()])
        .args(["--metrics", &ports.metrics.to_string()])
        .arg("--key-file")
        .arg(key_file(dir.path()))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Proc(Some(child));
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within the bound");
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.starts_with("READY=1\nSTATUS=view "), "{ready}");
    let (code, body) = http(ports.metrics, "GET", "/ready").unwrap();
    assert_eq!(code, 200, "ready when systemd is told so: {body}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let n = socket.recv(&mut buf).expect("STOPPING=1 within the bound");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(agent.wait_exit(FORM).and_then(|s| s.code()), Some(0));
}
