//! `swimlock bench`, short: every row is measured and written, including
//! the client-endpoint rows and, where `redis-server` is installed (CI
//! installs it), the Redis rows of the same run. Figures are not judged
//! here: the benchmark prints its targets met or missed.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn a_short_bench_run_has_every_row() {
    let _serial = serial();
    let dir = TempDir::new("bench");
    let json = dir.path().join("bench.json");
    let out = Command::new(BIN)
        .args(["bench", "--duration", "200ms", "--failover-runs", "1", "--json", json.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("swimlock bench");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "swimlock bench failed");
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let names: Vec<&str> =
        rows["measurements"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    let mut want = vec![
        "udp_floor",
        "tcp_floor",
        "resp_coord_1_client",
        "resp_noncoord_1_client",
        "resp_coord_16_distinct",
        "resp_noncoord_16_distinct",
        "resp_noncoord_16_one_name",
    ];
    let redis = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status();
    if redis.is_ok_and(|s| s.success()) {
        want.extend(["redis_1_client", "redis_16_distinct", "redis_16_one_name"]);
    } else {
        assert!(std::env::var_os("CI").is_none(), "redis-server is missing (.ci/run installs it)");
    }
    for name in want {
        assert!(names.contains(&name), "no {name} row in {names:?}");
    }
    assert!(text.contains("coordinator endpoint pair p50"), "the endpoint targets are printed");
}

/// The agent pids and the directory that `bench --processes` names in its
/// line `agent processes (R runtime): pids A B C in DIR`.
fn agents_line(text: &str) -> (Vec<u32>, std::path::PathBuf) {
    let line = text.lines().find(|l| l.starts_with("agent processes")).expect("the agent processes line");
    let rest = line.split_once("pids ").expect("pids").1;
    let (pids, dir) = rest.split_once(" in ").expect("a directory");
    (pids.split(' ').map(|p| p.parse().expect("a pid")).collect(), dir.into())
}

/// Whether `pid` is still one of the bench's agents (a reused pid runs
/// something else).
fn agent_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("agent\0--name\0bench-"))
}

#[test]
fn a_short_processes_run_has_every_row_and_leaves_no_agent() {
    let _serial = serial();
    let dir = TempDir::new("bench-processes");
    let json = dir.path().join("bench.json");
    let out = Command::new(BIN)
        .args(["bench", "--processes", "--duration", "100ms", "--json", json.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("swimlock bench --processes");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "swimlock bench --processes failed");
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let names: Vec<&str> =
        rows["measurements"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    for row in [
        "resp_coord_1_client",
        "resp_noncoord_1_client",
        "resp_coord_16_distinct",
        "resp_noncoord_16_one_name",
        "uncontended_noncoord_tcp",
    ] {
        for name in [row.to_string(), format!("proc_{row}")] {
            assert!(names.contains(&name.as_str()), "no {name} row in {names:?}");
            assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} is not in the table");
        }
    }
    for name in
        ["udp_floor", "tcp_floor", "spawn_true", "proc_cli_lock_true_coord", "proc_cli_lock_true_noncoord"]
    {
        assert!(names.contains(&name), "no {name} row in {names:?}");
    }
    assert!(text.contains("proc_resp_coord_1_client: "), "the 80% targets are printed");
    let (pids, agent_dir) = agents_line(&text);
    assert_eq!(pids.len(), 3, "three agents");
    for pid in pids {
        assert!(!agent_alive(pid), "agent {pid} still runs");
    }
    assert!(!agent_dir.exists(), "{} was not removed", agent_dir.display());
}

#[test]
fn a_processes_run_stopped_by_sigterm_leaves_no_agent() {
    use std::io::{BufRead, BufReader};
    let _serial = serial();
    let mut bench = Proc(Some(
        Command::new(BIN)
            .args(["bench", "--processes", "--duration", "5s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("swimlock bench --processes"),
    ));
    let stdout = bench.0.as_mut().unwrap().stdout.take().unwrap();
    // The agents line comes once they formed; the pipe stays open after it.
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let line = lines.find(|l| l.starts_with("agent processes")).expect("the agent processes line");
    let (pids, agent_dir) = agents_line(&line);
    assert!(pids.iter().all(|&p| agent_alive(p)), "the agents run while the bench does");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bench.pid() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM to the bench");
    let status = bench.wait_exit(Duration::from_secs(10)).expect("the bench exits on SIGTERM");
    assert!(!status.success(), "a stopped run is not a success");
    drop(lines);
    for pid in pids {
        assert!(!agent_alive(pid), "agent {pid} still runs");
    }
    assert!(!agent_dir.exists(), "{} was not removed", agent_dir.display());
}

/// `--only` that names no row is an error, not an empty run; with
/// `--processes` (rows of its own) it is refused as a usage error.
#[test]
fn only_that_matches_no_row_is_an_error() {
    let _serial = serial();
    let run =
        |args: &[&str]| Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("swimlock bench");
    let out = run(&["bench", "--duration", "10ms", "--failover-runs", "1", "--only", "no_such_row"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no_such_row"), "{err}");
    let out = run(&["bench", "--processes", "--only", "resp"]);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
}
