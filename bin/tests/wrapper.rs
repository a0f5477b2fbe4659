//! `swimlock lock` against real agents: a killed wrapper and a stopping
//! agent never let the lock move while the command's group still runs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use swimlock::client::Client;

const FORM: Duration = Duration::from_secs(15);

/// Processes of group `pgrp` that still run (zombies excepted), from /proc.
fn live_group(pgrp: i32) -> Vec<i32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|p| p.parse::<i32>().ok()) == Some(pgrp)
            && !matches!(f.first(), Some(&"Z" | &"X"))
        {
            live.push(pid);
        }
    }
    live
}

/// The process group of `pid`.
fn pgrp_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Processes a test started indirectly (the wrapper's command), killed by
/// pid when the test ends, whatever happened.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Waits until the coordinator (agent 0) has `n` requests waiting.
fn wait_waiters(cluster: &Cluster, n: u64) {
    wait_until(Duration::from_secs(10), "the waiter to queue at the coordinator", || {
        cluster.agents[0].status().is_some_and(|s| s["table"]["waiters"].as_u64() == Some(n))
    });
}

/// Issue 10, finding 4: SIGKILL of `swimlock lock` whose command left a
/// grandchild (`sh -c 'sleep 30 & wait'`). By the time a waiter on another
/// node is granted the lock, no process of the command's group runs, and
/// the grant comes within a bound.
#[test]
fn killed_wrapper_leaves_no_process_of_its_group_running() {
    const HANDOVER_BOUND: Duration = Duration::from_secs(5);
    let _serial = serial();
    let cluster = Cluster::start("guard", 2, &[]);
    cluster.wait_formed(&[0, 1], FORM);
    let pids = cluster.dir.path().join("pids");
    let script = format!("sleep 30 & echo $! >> {0}; echo $$ >> {0}; wait", pids.display());
    let mut wrapper = Proc(Some(
        Command::new(BIN)
            .args(["lock", "guarded", "--client", &cluster.agents[1].client_arg(), "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_until(Duration::from_secs(10), "the command and its grandchild", || {
        std::fs::read_to_string(&pids).is_ok_and(|s| s.lines().count() == 2)
    });
    let started: Vec<i32> =
        std::fs::read_to_string(&pids).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let _cleanup = KillOnDrop(started.clone());
    let group = pgrp_of(started[1]);
    assert_eq!(pgrp_of(started[0]), group, "the grandchild is in the command's group");
    let members = live_group(group);
    eprintln!("command group {group}: {members:?} (guardian, sh, sleep)");
    assert_eq!(members.len(), 3, "guardian, sh and sleep: {members:?}");

    let rt = runtime();
    let waiter = rt.block_on(Client::connect(&cluster.agents[0].client_arg())).unwrap();
    let pending = rt.spawn(async move {
        let guard = waiter.lock("guarded", Duration::from_secs(20)).await;
        // Checked the moment the grant arrives.
        let alive = live_group(group);
        (Instant::now(), alive, guard.map(|g| g.token()))
    });
    wait_waiters(&cluster, 1);

    let killed = Instant::now();
    wrapper.kill();
    let (granted, alive, token) = rt.block_on(pending).unwrap();
    token.expect("the waiter is granted the lock");
    let handover = granted - killed;
    eprintln!(
        "wrapper SIGKILLed; lock granted to the waiter {handover:?} later; live group members then: {alive:?}"
    );
    // The guardian leads the group (its pid is the group id). It closes its
    // copy of the connection as it exits, so it may still be finishing its
    // exit in the kernel; it runs no code of its own any more.
    let command: Vec<i32> = alive.iter().copied().filter(|&p| p != group).collect();
    assert!(command.is_empty(), "processes of the command's group {group} alive at the grant: {command:?}");
    assert!(handover < HANDOVER_BOUND, "handover took {handover:?}");
    wait_until(Duration::from_secs(2), "the guardian to be gone", || live_group(group).is_empty());
}

/// Issue 10, finding 5: SIGTERM to the agent of a holder whose command
/// traps TERM and takes 1 s to finish. The agent tells the wrapper, which
/// stops its command and exits 79; the waiter on another node starts only
/// after the command has ended.
#[test]
fn stopping_agent_waits_for_the_holder_to_let_go() {
    let _serial = serial();
    let cluster = Cluster::start("stop", 2, &[]);
    cluster.wait_formed(&[0, 1], FORM);
    let dir = cluster.dir.path();
    let log = dir.join("times");
    let holder_script = format!(
        "trap 'sleep 1; echo end $(date +%s%N) >> {0}; exit 0' TERM; echo start $(date +%s%N) >> {0}; \
         sleep 30 & wait",
        log.display()
    );
    let stderr = dir.join("wrapper.err");
    let mut holder = Proc(Some(
        Command::new(BIN)
            .args([
                "lock",
                "stop",
                "--client",
                &cluster.agents[1].client_arg(),
                "--",
                "sh",
                "-c",
                &holder_script,
            ])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    ));
    wait_until(Duration::from_secs(10), "the holder's command to start", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("start"))
    });
    let waiter_script = format!("echo next $(date +%s%N) >> {}", log.display());
    let mut waiter = Proc(Some(
        Command::new(BIN)
            .args(["lock", "stop", "--timeout", "30s", "--client", &cluster.agents[0].client_arg()])
            .args(["--", "sh", "-c", &waiter_script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_waiters(&cluster, 1);

    let agent = nix::unistd::Pid::from_raw(cluster.agents[1].proc.pid() as i32);
    let term = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = holder.wait_exit(Duration::from_secs(20)).expect("the wrapper exits");
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(79), "wrapper: {err}");
    assert!(err.contains("the agent is stopping"), "{err}");
    let status = waiter.wait_exit(Duration::from_secs(20)).expect("the waiter runs");
    assert!(status.success(), "waiter: {status}");

    let times = std::fs::read_to_string(&log).unwrap();
    let at = |what: &str| -> u128 {
        let line =
            times.lines().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("no {what} in {times}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (start, end, next) = (at("start"), at("end"), at("next"));
    let secs = |a: u128, b: u128| (b as f64 - a as f64) / 1e9;
    eprintln!(
        "holder command: start, SIGTERM to its agent {:.3}s later, command ended {:.3}s after that; \
         waiter started {:.3}s after the holder's command ended",
        secs(start, term),
        secs(term, end),
        secs(end, next)
    );
    assert!(end > term, "the holder's command ended before the agent was stopped: {times}");
    assert!(next > end, "the waiter started before the holder's command ended: {times}");
}
