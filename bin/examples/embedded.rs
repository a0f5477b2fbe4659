//! The README's embedded node, whole: a node inside the application's tokio
//! runtime, a lock taken through an in-process client. CI builds it, so
//! the README's example keeps compiling.
//!
//! ```sh
//! swimlock keygen > /tmp/k && chmod 600 /tmp/k
//! cargo run --example embedded -- 127.0.0.1:7946 /tmp/k
//! ```
//! An application embedding a node depends on the library without the
//! command line, the simulator and the benchmark:
//! `swimlock = { path = "...", default-features = false }`.

use std::time::Duration;

use swimlock::agent::{self, AgentConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:7946".into());
    let key_file = args.next().unwrap_or_else(|| "/etc/myapp/swimlock.key".into());

    let mut config = AgentConfig::new(bind.parse()?);
    config.seeds = args.map(|s| s.parse()).collect::<Result<_, _>>()?;
    config.key = Some(agent::read_key_file(key_file.as_ref())?); // or insecure = true
    let node = agent::spawn(config)?; // Err names the bad field or the socket that failed
    let client = node.client().await?; // same API as Client::connect
    let guard = client.lock("jobs/nightly", Duration::from_secs(30)).await?;
    println!("holding jobs/nightly with token {}", guard.token());
    guard.unlock().await?;
    node.shutdown().await; // release, leave the cluster, stop
    Ok(())
}
