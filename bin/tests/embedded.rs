//! Nodes embedded in the test process with `swimlock::agent::spawn`.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{TempDir, free_port};
use swimlock::agent::{self, AgentConfig};
use swimlock::client::Client;
use swimlock::node::seal::Key;

/// One generated key for every node of this test binary.
fn key() -> Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| agent::generate_key().unwrap()).clone()
}

fn config(port: u16, seed: u16) -> AgentConfig {
    let mut c = AgentConfig::new(([127, 0, 0, 1], port).into());
    c.name = format!("embedded-{port}");
    c.seeds = vec![([127, 0, 0, 1], seed).into()];
    c.key = Some(key());
    c
}

async fn wait_members(client: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = client.status().await.unwrap();
        if s.members.len() == n && (s.table.is_none() || s.table.as_ref().is_some_and(|t| t.serving)) {
            return;
        }
        assert!(Instant::now() < deadline, "no view of {n} members: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_nodes_lock_in_process_and_over_a_unix_socket() {
    let dir = TempDir::new("embedded");
    let (p1, p2) = (free_port(), free_port());
    let first = agent::spawn(config(p1, p1)).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut second_config = config(p2, p1);
    let socket = dir.path().join("client.sock");
    second_config.unix_socket = Some(socket.clone());
    let second = agent::spawn(second_config).unwrap();

    let a = first.client().await.unwrap();
    let b = Client::connect(&format!("unix:{}", socket.display())).await.unwrap();
    wait_members(&a, 2).await;
    wait_members(&b, 2).await;

    let guard = a.lock("embedded", Duration::from_secs(5)).await.unwrap();
    let again = a.lock("embedded", Duration::from_secs(5)).await.unwrap();
    assert_eq!((again.token(), again.holds()), (guard.token(), 2), "re-entry keeps the token");
    assert!(b.try_lock("embedded").await.unwrap().is_none());
    drop(again);
    assert!(b.try_lock("embedded").await.unwrap().is_none(), "one hold left");
    let token = guard.token();
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(5);
    let next = loop {
        if let Some(g) = b.try_lock("embedded").await.unwrap() {
            break g;
        }
        assert!(Instant::now() < deadline, "lock not released by the dropped guards");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(next.token() > token);
    drop(next);
    drop(b);
    second.shutdown().await;
    first.shutdown().await;
    assert!(!socket.exists(), "the Unix socket is removed on shutdown");
}

/// An in-process client that goes away (every handle dropped) withdraws
/// its queued request, so the lock passes to the next waiter at once; when
/// the node is killed, a held guard reports the closed connection and new
/// requests fail instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_clients_release_on_drop_and_see_their_node_stop() {
    let port = free_port();
    let node = agent::spawn(config(port, port)).unwrap();
    let (a, b, c) =
        (node.client().await.unwrap(), node.client().await.unwrap(), node.client().await.unwrap());
    wait_members(&a, 1).await;
    let waiters = |n: u64| {
        let a = a.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while a.status().await.unwrap().table.is_none_or(|t| t.waiters != n) {
                assert!(Instant::now() < deadline, "never {n} waiters");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    let held = b.lock("embedded/drop", Duration::from_secs(5)).await.unwrap();
    let gone = node.client().await.unwrap();
    let abandoned = tokio::spawn(async move { gone.lock("embedded/drop", Duration::from_secs(30)).await });
    waiters(1).await;
    let next = tokio::spawn(async move { c.lock("embedded/drop", Duration::from_secs(30)).await });
    waiters(2).await;
    // The abandoned caller's task ends, and with it the last handle of its client.
    abandoned.abort();
    let _ = abandoned.await;
    waiters(1).await;
    drop(held);
    let granted =
        tokio::time::timeout(Duration::from_secs(3), next).await.expect("granted to the next waiter");
    let mut guard = granted.unwrap().expect("granted");

    node.kill().await;
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost()).await.expect("loss reported");
    assert_eq!(lost.cause, swimlock::client::LostCause::ConnectionClosed);
    let refused = tokio::time::timeout(Duration::from_secs(5), a.lock("other", Duration::from_secs(1)))
        .await
        .expect("answered in time");
    assert!(matches!(refused, Err(swimlock::client::ClientError::Closed)), "{refused:?}");
}

/// Two nodes that busy-poll after traffic lock and unlock across the
/// network as any others, and go idle again (their timers still fire: the
/// view forms, which needs probes and settling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_nodes_lock_across_the_network() {
    let (p1, p2) = (free_port(), free_port());
    let mut first = config(p1, p1);
    first.busy_poll = Duration::from_micros(50);
    let mut second = config(p2, p1);
    second.busy_poll = Duration::from_micros(50);
    let (first, second) = (agent::spawn(first).unwrap(), agent::spawn(second).unwrap());
    let (a, b) = (first.client().await.unwrap(), second.client().await.unwrap());
    wait_members(&a, 2).await;
    wait_members(&b, 2).await;
    let mut last = None;
    for _ in 0..200 {
        let guard = b.lock("embedded/busy", Duration::from_secs(5)).await.unwrap();
        assert!(last.is_none_or(|t| guard.token() > t), "tokens grow");
        last = Some(guard.token());
        guard.unlock().await.unwrap();
    }
    let held = a.lock("embedded/busy", Duration::from_secs(5)).await.unwrap();
    assert!(b.try_lock("embedded/busy").await.unwrap().is_none(), "excluded across the nodes");
    held.unlock().await.unwrap();
    second.shutdown().await;
    first.shutdown().await;
}

/// Without a key an embedded node refuses to start, naming the fix; with
/// `insecure` it starts and says so in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_needs_a_key_or_an_explicit_insecure() {
    let port = free_port();
    let mut c = config(port, port);
    c.key = None;
    let e = agent::spawn(c.clone()).unwrap_err();
    assert!(matches!(e, agent::AgentError::NoKey));
    let text = e.to_string();
    assert!(text.contains("swimlock keygen") && text.contains("--insecure"), "{text}");
    c.insecure = true;
    let node = agent::spawn(c).unwrap();
    let status = node.client().await.unwrap().status().await.unwrap();
    assert!(status.security.insecure && status.security.keys.is_empty());
    node.shutdown().await;
    // A sealed node shows its key id, never the key.
    let port = free_port();
    let node = agent::spawn(config(port, port)).unwrap();
    let status = node.client().await.unwrap().status().await.unwrap();
    assert_eq!(status.security.primary_key, Some(key().id().0));
    assert!(!format!("{status:?}").contains(&key().to_base64()));
    node.shutdown().await;
}

/// An in-process client counts its leases down like a remote one: a grant
/// carries the lease (400 ms for a client of the coordinator's own node),
/// and the client's questions keep it ahead while the node runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_clients_keep_their_leases() {
    let port = free_port();
    let node = agent::spawn(config(port, port)).unwrap();
    let client = node.client().await.unwrap();
    wait_members(&client, 1).await;
    let guard = client.lock("embedded/lease", Duration::from_secs(5)).await.unwrap();
    let first = guard.safe_until();
    let left = first.saturating_duration_since(Instant::now());
    assert!(left > Duration::ZERO && left <= Duration::from_millis(400), "lease left {left:?}");
    // Three times the lease: held only if the client's questions renew it.
    let until = Instant::now() + Duration::from_millis(1_200);
    while Instant::now() < until {
        assert!(!guard.is_lost(), "lost while the node runs");
        assert!(guard.safe_until() > Instant::now(), "the lease ran out while the node runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(guard.safe_until() > first + Duration::from_millis(800), "safe_until did not move");
    guard.unlock().await.unwrap();
    node.shutdown().await;
}

/// `Client::watch_view`, in process and over the Unix socket (RESP3
/// pushes): the current view first, then the join of a second node, with
/// consecutive view ids on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_watch_views_in_process_and_over_a_socket() {
    let dir = TempDir::new("embedded-watch");
    let (p1, p2) = (free_port(), free_port());
    let mut first_config = config(p1, p1);
    let socket = dir.path().join("watch.sock");
    first_config.unix_socket = Some(socket.clone());
    let first = agent::spawn(first_config).unwrap();
    let local = first.client().await.unwrap();
    wait_members(&local, 1).await;
    let remote = Client::connect(&format!("unix:{}", socket.display())).await.unwrap();
    let mut watches = [local.watch_view().await.unwrap(), remote.watch_view().await.unwrap()];
    let mut ids = Vec::new();
    for w in &mut watches {
        let current = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap();
        assert_eq!(current.members.len(), 1, "{current:?}");
        ids.push(current.id);
    }
    let second = agent::spawn(config(p2, p1)).unwrap();
    for (w, id) in watches.iter_mut().zip(ids) {
        let next = tokio::time::timeout(Duration::from_secs(15), w.next()).await.unwrap().unwrap();
        assert_eq!(next.id, id + 1, "the next view, none skipped");
        assert_eq!(next.members.len(), 2, "{next:?}");
        assert!(!next.merge);
    }
    second.shutdown().await;
    first.shutdown().await;
}
