//! `swimlock watch --json` (WATCH VIEW on the client endpoint) against real
//! agents: a watcher sees a join, a leave, a kill and a partition that
//! heals, in order, the last one marked as a merge, with consecutive view
//! ids (no gap, no repeat).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The views the watcher printed, as they come.
struct Watcher {
    _proc: Proc,
    lines: mpsc::Receiver<Value>,
    last_id: Option<u64>,
    seen: Vec<String>,
}

impl Watcher {
    fn start(agent: &Agent) -> Watcher {
        let mut child = Command::new(BIN)
            .args(["watch", "--json", "--client", &agent.client_arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("swimlock watch");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).expect("a JSON line")).is_err() {
                    break;
                }
            }
        });
        Watcher { _proc: Proc(Some(child)), lines, last_id: None, seen: Vec::new() }
    }

    /// Reads views until one has exactly `names` as members; that view.
    /// Every view read must follow the one before it (id + 1).
    fn until(&mut self, names: &[&str], limit: Duration) -> Value {
        let want: BTreeSet<&str> = names.iter().copied().collect();
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(view) = self.lines.recv_timeout(left) else {
                panic!("no view with members {want:?} within {limit:?}; seen:\n{}", self.seen.join("\n"));
            };
            let id = view["view_id"].as_u64().unwrap();
            if let Some(last) = self.last_id {
                assert_eq!(
                    id,
                    last + 1,
                    "views in order, no gap, no repeat; seen:\n{}",
                    self.seen.join("\n")
                );
            }
            self.last_id = Some(id);
            self.seen.push(view.to_string());
            let members: BTreeSet<&str> =
                view["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
            if members == want {
                return view;
            }
        }
    }
}

#[test]
fn a_watcher_sees_join_leave_kill_and_a_merge_in_order() {
    let _serial = serial();
    let nft = Command::new("nft").args(["list", "tables"]).stdout(Stdio::null()).status();
    if !nft.is_ok_and(|s| s.success()) {
        assert!(std::env::var_os("CI").is_none(), "nft is missing (.ci/run installs it)");
        eprintln!("SKIPPED: nft is not installed");
        return;
    }
    let dir = TempDir::new("watch");
    let a = Agent::start(dir.path(), "w-a", None, &[]);
    wait_until(Duration::from_secs(15), "A to serve", || a.status().is_some());
    let mut watch = Watcher::start(&a);
    let first = watch.until(&["w-a"], Duration::from_secs(10));
    assert_eq!(first["coordinator"], "w-a");

    // A join, then a leave (SIGTERM: the agent leaves the cluster).
    let b = Agent::start(dir.path(), "w-b", Some(a.udp), &[]);
    let joined = watch.until(&["w-a", "w-b"], Duration::from_secs(10));
    assert_eq!(joined["merge"], false, "{joined}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.proc.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    watch.until(&["w-a"], Duration::from_secs(10));

    // A join, then a kill: failure detection takes it out.
    let mut c = Agent::start(dir.path(), "w-c", Some(a.udp), &[]);
    watch.until(&["w-a", "w-c"], Duration::from_secs(10));
    let killed = Instant::now();
    c.proc.kill();
    watch.until(&["w-a"], Duration::from_secs(10));
    eprintln!("a killed member left the watched view after {:?}", killed.elapsed());

    // A partition, then the heal: a merge view, marked, with both sides.
    let d_ports = Ports::free();
    let d = Agent::start_in(None, d_ports, dir.path(), "w-d", Some(a.udp), &[]);
    watch.until(&["w-a", "w-d"], Duration::from_secs(10));
    let mut partition = PortPartition::new("watch", a.udp.port(), d_ports.udp.port());
    watch.until(&["w-a"], Duration::from_secs(10));
    let healed = Instant::now();
    partition.heal();
    let merged = watch.until(&["w-a", "w-d"], Duration::from_secs(20));
    eprintln!("merge view {:.1}s after the heal: {merged}", healed.elapsed().as_secs_f64());
    assert_eq!(merged["merge"], true, "the healed partition is a merge: {merged}");
    let groups = merged["subgroups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "two sides: {merged}");
    eprintln!("views seen:\n{}", watch.seen.join("\n"));
    drop(d);
}
