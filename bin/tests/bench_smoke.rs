//! `swimlock bench`, short: every row is measured and written, including
//! the client-endpoint rows and, where `redis-server` is installed (CI
//! installs it), the Redis rows of the same run. Figures are not judged
//! here: the benchmark prints its targets met or missed.

mod common;

use std::process::{Command, Stdio};

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
