//! The README's client example, whole: lock a name through the local agent,
//! write with the fencing token, notice a lost lock. CI builds it, so the
//! README's example keeps compiling.
//!
//! ```sh
//! swimlock demo &                       # or a real agent
//! cargo run --example client -- 127.0.0.1:7950
//! ```

use std::time::Duration;

use swimlock::client::Client;

/// Stands for the application's write to a fenced resource: the resource
/// refuses tokens lower than the highest it has seen.
async fn write_with_fence(token: u64) -> std::io::Result<()> {
    println!("writing under token {token}");
    Ok(())
}

/// Stands for the work the lock protects.
async fn work() -> std::io::Result<()> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7950".into());
    let client = Client::connect(&addr).await?; // or "unix:/run/swimlock.sock"
    let mut guard = client.lock("db/orders", Duration::from_secs(5)).await?; // Err(TimedOut) after 5 s
    write_with_fence(guard.token().0).await?; // the resource rejects older tokens
    tokio::select! {
        lost = guard.lost() => eprintln!("{lost}"), // duplicate, quorum lost, connection closed
        r = work() => r?,
    }
    guard.unlock().await?; // or drop(guard): releases without waiting

    if let Some(g) = client.try_lock("db/orders").await? {
        g.unlock().await?; // free now
    }
    let status = client.status().await?; // view, coordinator, locks
    println!("view {} with {} members", status.view_id, status.members.len());
    Ok(())
}
