//! A stopping agent asks its clients to let go of their locks first
//! (in-process clients here; `swimlock lock` in tests/wrapper.rs).

mod common;

use std::time::{Duration, Instant};

use common::free_port;
use swimlock::agent::{self, AgentConfig, Handle};
use swimlock::client::{Client, LostCause};

/// Long enough that a grant after a release (at once) and one after the
/// holder departed (this long after it left) cannot be confused.
const LOCK_DELAY: Duration = Duration::from_secs(3);

fn config(port: u16, seed: u16, stop_grace: Duration) -> AgentConfig {
    let mut c = AgentConfig::new(([127, 0, 0, 1], port).into());
    c.name = format!("stop-{port}");
    c.seeds = vec![([127, 0, 0, 1], seed).into()];
    c.lock.lock_delay = LOCK_DELAY;
    c.stop_grace = stop_grace;
    c.key = Some(common::test_key());
    c
}

/// Two nodes, the first coordinating; clients of each once both serve.
async fn pair(stop_grace: Duration) -> (Handle, Handle, Client, Client) {
    let (p1, p2) = (free_port(), free_port());
    let first = agent::spawn(config(p1, p1, stop_grace)).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = agent::spawn(config(p2, p1, stop_grace)).unwrap();
    let (a, b) = (first.client().await.unwrap(), second.client().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
        let serving = sa.table.as_ref().is_some_and(|t| t.serving);
        if sa.members.len() == 2 && sb.members.len() == 2 && serving {
            break;
        }
        assert!(Instant::now() < deadline, "no view of 2 members");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The lock-delay also holds after the round a coordinator starts: wait it out.
    tokio::time::sleep(LOCK_DELAY).await;
    (first, second, a, b)
}

async fn wait_waiters(client: &Client, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.status().await.unwrap().table.is_none_or(|t| t.waiters != n) {
        assert!(Instant::now() < deadline, "never {n} waiters");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The holder is told, unlocks, and the waiter on the other node is granted
/// at once (a release, not the departed-holder delay); the stop then ends
/// without waiting out its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_told_of_the_stop_lets_go_and_the_lock_is_released() {
    let (first, second, a, b) = pair(Duration::from_secs(10)).await;
    let mut guard = b.lock("stop/told", Duration::from_secs(5)).await.unwrap();
    let waiter =
        tokio::spawn(async move { a.lock("stop/told", Duration::from_secs(20)).await.map(|g| g.token()) });
    wait_waiters(&first.client().await.unwrap(), 1).await;

    let started = Instant::now();
    let stop = tokio::spawn(second.shutdown());
    let notice = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("told of the stop");
    assert_eq!(notice.cause, LostCause::AgentStopping { grace: Duration::from_secs(10) });
    assert_eq!(notice.token, guard.token());
    assert!(!guard.is_lost(), "still held while the agent waits");
    assert!(!waiter.is_finished(), "granted while the holder still held it");
    let held = guard.token();
    guard.unlock().await.unwrap();
    let token =
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("granted").unwrap().unwrap();
    let granted = started.elapsed();
    assert!(token > held);
    assert!(granted < LOCK_DELAY, "granted {granted:?} after the stop: not a release");
    tokio::time::timeout(Duration::from_secs(5), stop).await.expect("stop ends once let go").unwrap();
    eprintln!("stop began; holder let go; waiter granted {granted:?} after the stop began");
    first.shutdown().await;
}

/// A holder that ignores the notice keeps the lock until the grace ends;
/// the node then leaves without releasing it, so the waiter is granted only
/// after the departed-holder delay. The holder then learns the loss, with
/// its real token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_does_not_let_go_keeps_the_lock_until_the_grace_ends() {
    const GRACE: Duration = Duration::from_millis(500);
    let (first, second, a, b) = pair(GRACE).await;
    let mut guard = b.lock("stop/ignored", Duration::from_secs(5)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let token = a.lock("stop/ignored", Duration::from_secs(30)).await.map(|g| g.token());
        (Instant::now(), token)
    });
    wait_waiters(&first.client().await.unwrap(), 1).await;

    let started = Instant::now();
    let stop = tokio::spawn(second.shutdown());
    let notice = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("told of the stop");
    assert_eq!(notice.cause, LostCause::AgentStopping { grace: GRACE });
    tokio::time::timeout(Duration::from_secs(5), stop).await.expect("the stop ends after its grace").unwrap();
    let stopped = started.elapsed();
    assert!(stopped >= GRACE, "stopped after {stopped:?}, before its grace");
    let lost = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("loss reported");
    assert_eq!(lost.cause, LostCause::ConnectionClosed);
    assert_eq!(lost.token, guard.token(), "the lost lock names its real token");
    assert!(lost.to_string().contains(&format!("token {}", guard.token())), "{lost}");

    let (at, token) = tokio::time::timeout(Duration::from_secs(15), waiter).await.expect("granted").unwrap();
    token.unwrap();
    let after_stop = at - (started + stopped);
    eprintln!("grace {GRACE:?}; stop took {stopped:?}; waiter granted {after_stop:?} after the node left");
    assert!(
        after_stop >= LOCK_DELAY - Duration::from_millis(300),
        "granted {after_stop:?} after the node left"
    );
    first.shutdown().await;
}
