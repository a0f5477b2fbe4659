//! The guardian of `swimlock lock`: a small process that makes sure a
//! killed wrapper never leaves its command running after the lock can be
//! granted elsewhere.
//!
//! The problem: the lock is released when the wrapper's connection to the
//! agent closes, and a SIGKILL closes it at once, while the command (and a
//! `sh -c` grandchild) runs on. A subreaper gets no chance to act under
//! SIGKILL, and `PR_SET_PDEATHSIG` reaches only the direct child (and fires
//! when the forking *thread* ends), so neither is enough.
//!
//! The design:
//! 1. Once the lock is granted, the wrapper starts the guardian (this
//!    binary, re-executed as `swimlock __guardian`) as the leader of a new
//!    process group G. The guardian's stdout is a duplicate of the wrapper's
//!    agent connection, so the agent sees the connection close only once the
//!    guardian has exited too; it never reads or writes it. Its stdin is one
//!    end of a socket pair whose other end only the wrapper holds
//!    (close-on-exec, so the command does not inherit it).
//! 2. The guardian blocks every signal it can (a SIGTERM the wrapper sends to
//!    the group is not for it) and writes `R`; only then does the wrapper
//!    start the command, *in group G*. So there is no moment at which the
//!    command runs in a group the guardian does not know.
//! 3. When the wrapper ends normally it writes `D` and the guardian exits.
//!    When the wrapper dies in any way, the kernel closes its end of the
//!    pair and the guardian reads end-of-file. This works for every kind of
//!    death, needs no signal handler and has no thread caveat (the descriptor
//!    closes only when the whole process is gone), which is why it is used
//!    instead of `PR_SET_PDEATHSIG`.
//! 4. On end-of-file the guardian sends SIGKILL to every process of group G
//!    but itself, again and again until none is alive (zombies do not
//!    count: they run no code), and only then exits, which closes the last
//!    copy of the connection and lets the agent release the lock.
//!
//! Limits: a process that leaves the group (`setsid`, `setpgid`) escapes, as
//! with any group-based stop; a process stuck in uninterruptible sleep keeps
//! the lock held until it dies, which is the point. Without `/proc` the
//! guardian cannot list the group and falls back to a group SIGKILL that
//! ends the guardian too, without waiting.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, ExitCode, Stdio};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::unistd::{Pid, getpgrp, getpid, getppid};

/// The hidden subcommand that runs the guardian.
pub const GUARDIAN_ARG: &str = "__guardian";
/// How long the wrapper waits for a new guardian to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two rounds of SIGKILL while the group dies.
const KILL_ROUND: Duration = Duration::from_millis(5);

/// The wrapper's side: the running guardian.
#[derive(Debug)]
pub struct Guardian {
    child: Child,
    control: UnixStream,
    group: Pid,
}

impl Guardian {
    /// Starts a guardian holding `connection` (a duplicate of the agent
    /// connection's socket) and waits until it is ready for a command to
    /// join its group.
    pub fn spawn(connection: OwnedFd) -> std::io::Result<Guardian> {
        let (ours, theirs) = UnixStream::pair()?;
        let exe = if std::path::Path::new("/proc/self/exe").exists() {
            "/proc/self/exe".into()
        } else {
            std::env::current_exe()?
        };
        let child = std::process::Command::new(exe)
            .arg(GUARDIAN_ARG)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(connection))
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let group = Pid::from_raw(child.id() as i32);
        let mut guardian = Guardian { child, control: ours, group };
        let mut ready = [0u8; 1];
        let read = guardian.control.set_read_timeout(Some(READY_TIMEOUT)).and_then(|()| {
            match guardian.control.read(&mut ready) {
                Ok(1) if ready[0] == b'R' => Ok(()),
                Ok(_) => Err(std::io::Error::other("the guardian process exited before it was ready")),
                Err(e) => Err(e),
            }
        });
        match read {
            Ok(()) => Ok(guardian),
            Err(e) => {
                let _ = guardian.child.kill();
                let _ = guardian.child.wait();
                Err(e)
            }
        }
    }

    /// The process group the command must join.
    pub fn group(&self) -> Pid {
        self.group
    }

    /// The wrapper is done (the command exited, or its group is gone): the
    /// guardian exits without killing anything.
    pub fn dismiss(mut self) {
        let _ = self.control.write_all(b"D");
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// `swimlock __guardian`: see the module docs. Single-threaded on purpose
/// (no runtime): the signal mask set here is the whole process's.
pub fn main() -> ExitCode {
    let me = getpid();
    let wrapper = getppid();
    let fail = |what: &str| {
        let _ = writeln!(std::io::stderr(), "swimlock lock: guardian: {what}");
        ExitCode::FAILURE
    };
    if let Err(e) = SigSet::all().thread_block() {
        return fail(&format!("cannot block signals: {e}"));
    }
    if getpgrp() != me {
        return fail("not the leader of its own process group");
    }
    let mut control = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => return fail(&format!("no control socket: {e}")),
    };
    if control.write_all(b"R").is_err() {
        return fail("the wrapper went away before the command started");
    }
    let mut byte = [0u8; 1];
    loop {
        match control.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'D' => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // The wrapper died without saying it was done.
    let killed = kill_group(me, me);
    let _ = writeln!(
        std::io::stderr(),
        "swimlock lock: the wrapper (pid {wrapper}) died; killed {killed} process(es) of the command's \
         group {me} before letting the agent release the lock"
    );
    ExitCode::SUCCESS
}

/// Sends SIGKILL to every live process of `group` except `spare` until
/// none is left; returns how many were signalled. Without `/proc`, one
/// group SIGKILL (which reaches `spare` too).
fn kill_group(group: Pid, spare: Pid) -> usize {
    let mut killed = std::collections::BTreeSet::new();
    loop {
        let Some(live) = live_members(group, spare) else {
            let _ = killpg(group, Signal::SIGKILL);
            return killed.len();
        };
        if live.is_empty() {
            return killed.len();
        }
        for pid in live {
            // A pid listed a moment ago could only be reused after the
            // process exited and the pid space wrapped around.
            let _ = kill(pid, Signal::SIGKILL);
            killed.insert(pid.as_raw());
        }
        std::thread::sleep(KILL_ROUND);
    }
}

/// Sends `signal` to every live process of `group` except `spare`; `None`
/// without `/proc`.
pub fn signal_members(group: Pid, spare: Pid, signal: Signal) -> Option<usize> {
    let live = live_members(group, spare)?;
    for pid in &live {
        let _ = kill(*pid, signal);
    }
    Some(live.len())
}

/// The processes of `group`, `spare` excepted, that still run (zombies are
/// dead: an orphaned grandchild that died waits for init to reap it, which
/// some containers' init never does). `None` if `/proc` cannot be read.
pub fn live_members(group: Pid, spare: Pid) -> Option<Vec<Pid>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut live = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == spare.as_raw() {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command name (in parentheses, may contain spaces):
        // state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(group.as_raw()) && !matches!(state, Some("Z" | "X")) {
            live.push(Pid::from_raw(pid));
        }
    }
    Some(live)
}
