//! The shipped files: the .deb (built from a staged tree, installed into a
//! scratch root, its binary run), the systemd unit (`systemd-analyze
//! verify`) and the sample configuration.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// contrib/deb/build-deb.sh makes a .deb that dpkg installs into a scratch
/// root (maintainer scripts included); `swimlock --version` runs from it and
/// names the commit; the unit, the sample config and the docs are in place
/// and no cluster key is.
#[test]
fn deb_builds_installs_into_a_scratch_root_and_runs() {
    if !have("dpkg-deb") || !have("dpkg") {
        eprintln!("SKIPPED: dpkg-deb or dpkg is not installed");
        return;
    }
    let dir = TempDir::new("deb");
    let deb =
        run(Command::new(repo().join("contrib/deb/build-deb.sh")).arg(BIN).arg(dir.path().join("dist")));
    let deb = PathBuf::from(deb.trim());
    assert!(deb.exists(), "{}", deb.display());
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: swimlock") && info.contains("postinst"), "{info}");

    let root = dir.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends", "--log=/dev/null", "-i"])
        .arg(&deb));
    let status = run(Command::new("dpkg").arg(format!("--root={}", root.display())).args(["-s", "swimlock"]));
    assert!(status.contains("Status: install ok installed"), "{status}");

    let version = run(Command::new(root.join("usr/bin/swimlock")).arg("--version"));
    assert!(version.starts_with("swimlock 0.") && version.contains("(commit "), "{version}");
    for file in
        ["lib/systemd/system/swimlock.service", "etc/swimlock/agent.toml", "usr/share/doc/swimlock/README.md"]
    {
        assert!(root.join(file).exists(), "{file} missing");
    }
    assert!(!root.join("etc/swimlock/key").exists(), "the package ships no key");

    // The sample configuration is valid except for the key it waits for.
    let out = Command::new(root.join("usr/bin/swimlock"))
        .args(["agent", "--config"])
        .arg(root.join("etc/swimlock/agent.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("key_file") && stderr.contains("swimlock keygen"), "{stderr}");
}

/// The unit passes `systemd-analyze verify` (with ExecStart pointed at the
/// binary under test) and refuses to start without a key, saying how to
/// make one.
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("contrib/systemd/swimlock.service")).unwrap();
    for setting in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=swimlock",
        "User=swimlock",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=",
    ] {
        assert!(unit.contains(setting), "{setting} missing");
    }
    assert!(unit.contains("swimlock keygen > /etc/swimlock/key"), "the failure says how to make a key");
    if !have("systemd-analyze") {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let dir = TempDir::new("unit");
    let path = dir.path().join("swimlock.service");
    std::fs::write(&path, unit.replace("/usr/bin/swimlock", BIN)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(!text.contains("swimlock.service:"), "warnings about the unit: {text}");
}
