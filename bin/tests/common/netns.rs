//! Network namespaces for tests whose traffic must stay in a box: a
//! namespace that has only a loopback interface, processes started inside
//! it (`ip netns exec`), threads of the test that join it for a while (so
//! the test can connect to what runs inside), and removal on drop, also
//! when the test panics.
//!
//! Needs root and iproute2 (`.ci/run` installs it). A bigger rig (several
//! namespaces joined by veth pairs) can build on [`Netns::ip`] and
//! [`inside`].

use std::ffi::OsStr;
use std::fs::File;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace with only `lo`, up; deleted on drop. Stop the
/// processes started in it before it drops (a [`super::Proc`] declared
/// after it drops first).
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace `swl-TAG-PID-N`, loopback up. Panics when namespaces
    /// cannot be made (not root, no `ip`).
    pub fn new(tag: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("swl-{tag}-{}-{n}", std::process::id());
        name.truncate(32);
        let ns = Netns { name };
        let out = Command::new("ip").args(["netns", "add", &ns.name]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("ip netns add {}: {}", ns.name, String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!("cannot run `ip` (iproute2, as root): {e}"),
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace. `ip netns exec`
    /// execs the program, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `ip ARGS` inside the namespace (addresses, links, routes);
    /// panics if it fails.
    pub fn ip(&self, args: &[&str]) -> Output {
        let out = self.command("ip").args(args).stdin(Stdio::null()).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `f` on a thread that has joined the namespace: sockets it
    /// creates live there (and keep working from any thread afterwards).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        inside(&self.name, f)
    }
}

/// Runs `f` on a new thread that has joined namespace `name`.
pub fn inside<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(&ns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .expect("namespace thread")
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).stdin(Stdio::null()).output();
    }
}
