//! Node tags in real agents (embedded, in-process): a tag taken by an older
//! member is changed at run time, saved in the state directory, and used
//! at the next start instead of the default hash; a configured tag still
//! wins at start.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TempDir, free_port};
use swimlock::agent::{self, AgentConfig, Handle};
use swimlock::client::Client;

fn config(port: u16, seed: u16, epoch: u64) -> AgentConfig {
    let mut c = AgentConfig::new(([127, 0, 0, 1], port).into());
    c.name = format!("tags-{port}");
    c.seeds = vec![([127, 0, 0, 1], seed).into()];
    c.epoch = Some(epoch);
    c.key = Some(common::test_key());
    c
}

fn saved_tag(dir: &Path) -> Option<u16> {
    std::fs::read_to_string(dir.join("tag")).ok().and_then(|t| t.trim().parse().ok())
}

/// The tag of a token granted now to a client of `node` (which must be able
/// to reach a coordinator).
async fn granted_tag(node: &Handle, name: &str) -> u16 {
    let client = node.client().await.unwrap();
    wait_serving(&client).await;
    let guard = client.lock(name, Duration::from_secs(10)).await.unwrap();
    guard.token().tag()
}

async fn wait_serving(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = client.status().await.unwrap();
        if s.coordinator.is_some() && s.table.as_ref().is_none_or(|t| t.serving) {
            return;
        }
        assert!(Instant::now() < deadline, "no serving coordinator: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_taken_by_an_older_member_is_changed_saved_and_used_at_the_next_start() {
    let dir = TempDir::new("tags");
    std::fs::write(dir.path().join("tag"), "77\n").unwrap();
    let (p1, p2) = (free_port(), free_port());

    // The older member is configured with 77; the younger read 77 back
    // from its state directory.
    let mut older = config(p1, p1, 1_000);
    older.lock.tag = 77;
    older.node_tag_configured = true;
    let older = agent::spawn(older).unwrap();
    let mut younger = config(p2, p1, 2_000);
    younger.state_dir = Some(dir.path().to_path_buf());
    let younger = agent::spawn(younger).unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let new = loop {
        if let Some(tag) = saved_tag(dir.path()).filter(|&t| t != 77) {
            break tag;
        }
        assert!(Instant::now() < deadline, "the younger node kept tag 77");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(granted_tag(&younger, "a").await, 77, "the older member coordinates under 77");
    older.shutdown().await;
    younger.shutdown().await;

    // Alone, from the same state directory: the saved tag, not the hash.
    let restarted = config(p2, p2, 3_000);
    let hash = restarted.lock.tag;
    assert_ne!(hash, new);
    let mut restarted = restarted;
    restarted.state_dir = Some(dir.path().to_path_buf());
    let node = agent::spawn(restarted).unwrap();
    assert_eq!(granted_tag(&node, "b").await, new);
    node.shutdown().await;

    // A configured tag wins over the saved one at start.
    let mut configured = config(p2, p2, 4_000);
    configured.state_dir = Some(dir.path().to_path_buf());
    configured.lock.tag = 501;
    configured.node_tag_configured = true;
    let node = agent::spawn(configured).unwrap();
    assert_eq!(granted_tag(&node, "c").await, 501);
    node.shutdown().await;
    assert_eq!(saved_tag(dir.path()), Some(new), "nothing collided: the file is unchanged");
}
