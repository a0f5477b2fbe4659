//! The client's lease countdown against a fake node, in paused time: the
//! fake answers (or does not) exactly as each test says, and every instant
//! is exact.

use std::time::Duration;

use std::collections::VecDeque;

use swimlock_wire::client::{ClientRequest, LostReason, Reply, Request, ServerMessage};
use swimlock_wire::commands::{self, Command};
use swimlock_wire::resp::{self, Proto, Value};
use swimlock_wire::{ClientId, LockName, Token};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::time::{Instant, timeout};

use super::{Client, LockGuard, LostCause};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// The node's end of a client connection, speaking RESP3: it numbers the
/// requests it reads, and its replies must come in that order.
struct FakeNode {
    reader: ReadHalf<DuplexStream>,
    writer: WriteHalf<DuplexStream>,
    buf: Vec<u8>,
    next_id: u64,
    unanswered: VecDeque<(u64, Request)>,
}

impl FakeNode {
    /// The next request, or `None` once the client closed the connection.
    /// The client's `HELLO 3` is answered here.
    async fn next(&mut self) -> Option<ClientRequest> {
        loop {
            if let Some((args, used)) = resp::parse_command(&self.buf).unwrap() {
                self.buf.drain(..used);
                match commands::parse(&args).unwrap() {
                    Command::Hello { .. } => {
                        let hello = Value::Map(vec![(Value::bulk("proto"), Value::Int(3))]);
                        self.writer.write_all(&hello.to_bytes(Proto::Resp3)).await.unwrap();
                    }
                    Command::Node(request) => {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.unanswered.push_back((id, request.clone()));
                        return Some(ClientRequest { id, request });
                    }
                    other => panic!("unexpected command {other:?}"),
                }
                continue;
            }
            if self.reader.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    /// The next request, if one comes within `limit`.
    async fn next_within(&mut self, limit: Duration) -> Option<ClientRequest> {
        timeout(limit, self.next()).await.ok().flatten()
    }

    async fn send(&mut self, msg: ServerMessage) {
        let push = commands::push_value(&msg).expect("a push");
        self.writer.write_all(&push.to_bytes(Proto::Resp3)).await.unwrap();
    }

    async fn reply(&mut self, id: u64, reply: Reply) {
        let (first, request) = self.unanswered.pop_front().expect("a request to answer");
        assert_eq!(first, id, "replies come in request order");
        let v = commands::reply_value(&request, reply, ClientId(1));
        self.writer.write_all(&v.to_bytes(Proto::Resp3)).await.unwrap();
    }

    /// Takes the lease question about `name` that must come next.
    async fn question(&mut self, name: &str) -> u64 {
        let request = self.next().await.expect("a lease question");
        assert_eq!(request.request, Request::Lease { name: LockName::new(name).unwrap() });
        request.id
    }

    /// Answers the lock request that must come next with a grant of
    /// `lease_ms`, after `wait`.
    async fn grant(&mut self, wait: Duration, lease_ms: u64) {
        let request = self.next().await.expect("a lock request");
        assert!(matches!(request.request, Request::LockWithLease { .. }), "{request:?}");
        tokio::time::sleep(wait).await;
        self.reply(request.id, Reply::AcquiredWithLease { token: Token(7), holds: 1, lease_ms }).await;
    }
}

fn connected() -> (Client, FakeNode) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (reader, writer) = tokio::io::split(theirs);
    let node = FakeNode { reader, writer, buf: Vec::new(), next_id: 1, unanswered: VecDeque::new() };
    (Client::over_stream(ours, None).0, node)
}

/// Locks "a" against `node`, which grants after `wait` with `lease_ms`.
async fn locked(client: &Client, node: &mut FakeNode, wait: Duration, lease_ms: u64) -> LockGuard {
    let asking = client.clone();
    let lock = tokio::spawn(async move { asking.lock("a", Duration::from_secs(60)).await });
    node.grant(wait, lease_ms).await;
    lock.await.unwrap().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_grant_is_counted_from_when_the_request_was_sent() {
    let (client, mut node) = connected();
    let sent = Instant::now();
    // 300 ms on the way: the deadline is 700 ms after the grant arrives.
    let guard = locked(&client, &mut node, MS(300), 1_000).await;
    assert_eq!(Instant::now(), sent + MS(300));
    assert_eq!(guard.safe_until(), (sent + MS(1_000)).into_std());
    assert_eq!(guard.lease(), Some((sent + MS(1_000), MS(700))), "700 ms left when the grant came");
}

#[tokio::test(start_paused = true)]
async fn a_grant_that_waited_counts_the_wait() {
    let (client, mut node) = connected();
    let sent = Instant::now();
    // Queued 5 s behind another holder; the node counts the lease from when
    // it took the request.
    let guard = locked(&client, &mut node, Duration::from_secs(5), 7_000).await;
    assert_eq!(guard.safe_until(), (sent + Duration::from_secs(7)).into_std());
    assert_eq!(guard.safe_until() - std::time::Instant::from(Instant::now()), Duration::from_secs(2));
    // What the wrapper's grace is a quarter of: the lease left, not the wait.
    assert_eq!(guard.lease().unwrap().1, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn answers_move_the_deadline_and_one_question_is_asked_at_a_time() {
    let (client, mut node) = connected();
    let granted = Instant::now();
    let mut guard = locked(&client, &mut node, Duration::ZERO, 2_000).await;
    // The first question at a quarter of the lease.
    let id = node.question("a").await;
    assert_eq!(Instant::now(), granted + MS(500));
    // Answered 100 ms later: counted from the question.
    tokio::time::sleep(MS(100)).await;
    node.reply(id, Reply::Lease { lease_ms: Some(2_000) }).await;
    let asked = granted + MS(500);
    let until = asked + MS(2_000);
    let settled = async {
        while guard.safe_until() != until.into_std() {
            tokio::time::sleep(MS(1)).await;
        }
    };
    timeout(MS(100), settled).await.expect("the answer moves the deadline");
    assert_eq!(guard.lease().unwrap().1, MS(1_900), "the lease left when the answer came");
    // The next question a quarter of what was left later.
    let id = node.question("a").await;
    assert_eq!(Instant::now(), granted + MS(600) + MS(1_900) / 4);
    // Left unanswered for 1 s: no second question meanwhile.
    assert!(node.next_within(Duration::from_secs(1)).await.is_none(), "a second question in flight");
    node.reply(id, Reply::Lease { lease_ms: Some(2_000) }).await;
    node.question("a").await;
    assert!(timeout(MS(1), guard.lost()).await.is_err(), "nothing lost while the node answers");
    assert!(!guard.is_lost());
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_is_counted_out_at_the_deadline_and_reported_once() {
    let (client, mut node) = connected();
    let granted = Instant::now();
    let mut guard = locked(&client, &mut node, Duration::ZERO, 1_000).await;
    node.question("a").await;
    let lost = timeout(Duration::from_secs(10), guard.lost()).await.expect("counted out");
    assert_eq!(Instant::now(), granted + MS(1_000), "lost at the deadline exactly");
    assert_eq!((lost.cause, lost.token), (LostCause::LeaseExpired, Token(7)));
    assert!(guard.is_lost());
    assert!(node.next_within(MS(1)).await.is_none(), "one question only, and no more once counted out");
    // The node's own notice of the same loss, when it resumes, is not a
    // second one.
    node.send(ServerMessage::Lost {
        name: LockName::new("a").unwrap(),
        token: Token(7),
        reason: LostReason::LeaseExpired,
    })
    .await;
    assert!(timeout(Duration::from_secs(5), guard.lost()).await.is_err(), "reported twice");
    // The node let go of it: nothing to unlock.
    drop(guard);
    assert!(node.next_within(Duration::from_secs(1)).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_does_not_revive_a_lock_counted_out() {
    let (client, mut node) = connected();
    let mut guard = locked(&client, &mut node, Duration::ZERO, 1_000).await;
    let id = node.question("a").await;
    let lost = timeout(Duration::from_secs(10), guard.lost()).await.expect("counted out");
    assert_eq!(lost.cause, LostCause::LeaseExpired);
    node.reply(id, Reply::Lease { lease_ms: Some(2_000) }).await;
    assert!(timeout(Duration::from_secs(5), guard.lost()).await.is_err());
    assert!(guard.safe_until() <= std::time::Instant::from(Instant::now()));
    // The node may still hold it: dropping the guard releases it there.
    drop(guard);
    let unlock = node.next_within(MS(100)).await.expect("an unlock");
    assert_eq!(unlock.request, Request::Unlock { name: LockName::new("a").unwrap() });
}

#[tokio::test(start_paused = true)]
async fn the_nodes_notice_first_then_no_lease_report() {
    let (client, mut node) = connected();
    let mut guard = locked(&client, &mut node, Duration::ZERO, 1_000).await;
    node.send(ServerMessage::Lost {
        name: LockName::new("a").unwrap(),
        token: Token(7),
        reason: LostReason::Duplicate,
    })
    .await;
    assert_eq!(guard.lost().await.cause, LostCause::Duplicate);
    assert_eq!(guard.lease(), None);
    assert!(guard.safe_until() <= std::time::Instant::from(Instant::now()), "no lease left after a loss");
    assert!(timeout(Duration::from_secs(5), guard.lost()).await.is_err(), "reported twice");
    assert!(node.next_within(MS(1)).await.is_none(), "no question about a lost lock");
}

#[tokio::test(start_paused = true)]
async fn a_node_that_does_not_hold_the_lock_says_so() {
    let (client, mut node) = connected();
    let mut guard = locked(&client, &mut node, Duration::ZERO, 2_000).await;
    let id = node.question("a").await;
    node.reply(id, Reply::Lease { lease_ms: None }).await;
    let lost = guard.lost().await;
    assert_eq!(lost.cause, LostCause::NotHeld);
    assert!(timeout(Duration::from_secs(5), guard.lost()).await.is_err(), "reported twice");
    drop(guard);
    assert!(node.next_within(Duration::from_secs(1)).await.is_none(), "no unlock of what is not held");
}

#[tokio::test(start_paused = true)]
async fn released_locks_are_not_asked_about() {
    let (client, mut node) = connected();
    let guard = locked(&client, &mut node, Duration::ZERO, 2_000).await;
    drop(guard);
    let unlock = node.next().await.unwrap();
    assert_eq!(unlock.request, Request::Unlock { name: LockName::new("a").unwrap() });
    assert!(node.next_within(Duration::from_secs(10)).await.is_none(), "a question about a released lock");
}

#[tokio::test(start_paused = true)]
async fn the_lease_task_does_not_keep_a_dropped_client_connected() {
    let (client, mut node) = connected();
    let guard = locked(&client, &mut node, Duration::ZERO, 2_000).await;
    let id = node.question("a").await;
    node.reply(id, Reply::Lease { lease_ms: Some(2_000) }).await;
    drop(guard);
    drop(client);
    let unlock = node.next().await.unwrap();
    assert_eq!(unlock.request, Request::Unlock { name: LockName::new("a").unwrap() });
    let closed = timeout(Duration::from_secs(1), node.next()).await.expect("the connection closes");
    assert!(closed.is_none(), "{closed:?}");
}

/// The lease task wakes about once per quarter lease however often the
/// client locks and unlocks (with nothing held, it stays armed until the
/// deadline it had rather than going idle and being woken by the next
/// grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_in_a_loop_does_not_wake_the_lease_task_per_grant() {
    let (client, mut node) = connected();
    let serve = tokio::spawn(async move {
        let mut token = 0;
        while let Some(request) = node.next().await {
            let reply = match request.request {
                Request::LockWithLease { .. } => {
                    token += 1;
                    Reply::AcquiredWithLease { token: Token(token), holds: 1, lease_ms: 400 }
                }
                Request::Unlock { .. } => Reply::Unlocked,
                Request::Lease { .. } => Reply::Lease { lease_ms: Some(400) },
                other => panic!("{other:?}"),
            };
            node.reply(request.id, reply).await;
        }
    });
    let started = Instant::now();
    for _ in 0..2_000 {
        drop(client.lock("a", Duration::from_secs(1)).await.unwrap());
    }
    let elapsed = started.elapsed();
    let rounds = client.inner.shared.lock().unwrap().lease_rounds;
    // A question is due 100 ms after each grant: a few rounds per 100 ms.
    let bound = 3 * (elapsed.as_millis() as u64 / 100 + 1);
    eprintln!("2,000 grants in {elapsed:?}: {rounds} rounds of the lease task (bound {bound})");
    assert!(rounds <= bound, "{rounds} rounds of the lease task for 2,000 grants in {elapsed:?}");
    serve.abort();
}
