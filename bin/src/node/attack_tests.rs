//! Issue 9's attacks on the node core, in simulated time: forged frames
//! from a party without the key, replays of captured traffic (also after
//! the sender or the receiver restarted), and bit-flipped copies of real
//! datagrams. Each forgery is first shown to work against insecure nodes
//! (what every node was before sealing), then to be dropped and counted by
//! sealed nodes with nothing changed.

use foca::{Header, Member, Message, State};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use swimlock_wire::frame::{ENVELOPE_LEN, Envelope, Suite};
use swimlock_wire::lock::{CancelReq, DuplicateLock, Hello, LockInfoRsp, LockMsg, LockReq, UnlockReq, Wait};
use swimlock_wire::{ClusterId, Owner, Token};

use super::tests::{CLUSTER, Net, addr, name, sealed};
use super::*;

/// foca's identity as membership encodes it (field for field).
#[derive(Serialize)]
struct Ident {
    addr: SocketAddr,
    epoch: u64,
    bump: u64,
    name: String,
    tag: u16,
}

fn ident(id: NodeId, bump: u64, name: &str) -> Ident {
    Ident { addr: id.addr, epoch: id.epoch, bump, name: name.to_string(), tag: 0 }
}

/// A foca payload: header, then the updates (count as big-endian u16).
fn gossip(src: Ident, dst: Ident, message: Message<Ident>, updates: Vec<Member<Ident>>) -> Vec<u8> {
    let mut out = postcard::to_allocvec(&Header { src, src_incarnation: 0, dst, message }).unwrap();
    if !updates.is_empty() {
        out.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for m in updates {
            out.extend_from_slice(&postcard::to_allocvec(&m).unwrap());
        }
    }
    out
}

/// One forged datagram's content: who it claims to be from, for whom.
enum Forged {
    Lock(LockFrame),
    Gossip { from: NodeId, to_epoch: u64, payload: Vec<u8> },
}

/// How the attacker wraps it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Wrap {
    /// In clear, as insecure nodes (and every node before sealing) accept.
    Plain,
    /// A sealed envelope under the cluster's key id (public in any captured
    /// datagram), with a made-up tag: the attacker has no key.
    Guess,
    /// A sealed envelope under a key id nobody has.
    OtherKey,
}

fn wrap(forged: &Forged, how: Wrap, key_id: u32, rng: &mut SmallRng) -> Vec<u8> {
    let cluster = ClusterId::from_name(CLUSTER);
    let mut d = match forged {
        Forged::Lock(f) => frame::encode_lock(f, cluster).unwrap(),
        Forged::Gossip { from, to_epoch, payload } => {
            frame::encode_gossip(*from, *to_epoch, payload, cluster).unwrap()
        }
    };
    if how != Wrap::Plain {
        let (mut env, _) = Envelope::read(&d, cluster).unwrap();
        env.suite = Suite::Sealed;
        env.key_id = if how == Wrap::Guess { key_id } else { key_id ^ 0x5a5a };
        rng.fill(&mut env.nonce[..]);
        let mut sealed = Vec::new();
        env.write(&mut sealed);
        sealed.extend_from_slice(&d[ENVELOPE_LEN..]);
        let mut tag = [0u8; 16];
        rng.fill(&mut tag[..]);
        sealed.extend_from_slice(&tag);
        d = sealed;
    }
    d
}

/// A formed 3-node view; node 2's client 1 holds "orders", node 1's client
/// 1 waits for it.
struct Scene {
    net: Net,
    token: Token,
    holder_req: ReqId,
    waiter: ReqId,
}

fn scene(insecure: bool) -> Scene {
    let mut net = Net::with_security(3, insecure);
    net.run_until(Duration::from_secs(5), Net::one_view);
    net.run_until(Duration::from_secs(2), |n| n.nodes[0].lock_node().is_serving());
    let (holder_req, token) = net.lock_now(2, 1, "orders");
    let now = net.now;
    let waiter = net.nodes[1].lock(now, ClientId(1), name("orders"), Duration::from_secs(60));
    net.flush(1);
    net.run_for(Duration::from_millis(200));
    assert!(net.acquired(1, waiter).is_none());
    Scene { net, token, holder_req, waiter }
}

/// Everything an outsider might change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    views: Vec<Vec<NodeId>>,
    lock_views: Vec<Option<Vec<NodeId>>>,
    table: Vec<(LockName, Owner, Token)>,
    held: Vec<Vec<(ClientId, LockName, Token, u32)>>,
    term: Option<u32>,
    lock_events: Vec<usize>,
}

fn snapshot(net: &Net) -> Snapshot {
    Snapshot {
        views: net.nodes.iter().map(|n| n.membership().view().ids().collect()).collect(),
        lock_views: net.nodes.iter().map(|n| n.lock_node().view().map(|v| v.members.clone())).collect(),
        table: net.nodes[0].lock_node().table(),
        // Leases move with renewals; what is held, and by whom, must not.
        held: net
            .nodes
            .iter()
            .map(|n| n.lock_node().held().into_iter().map(|h| (h.client, h.name, h.token, h.holds)).collect())
            .collect(),
        term: net.nodes[0].lock_node().round_term(),
        lock_events: net
            .events
            .iter()
            .map(|e| e.iter().filter(|e| matches!(e, NodeEvent::Lock(_))).count())
            .collect(),
    }
}

/// Sum of one counter over every node.
fn total(net: &Net, reason: DropReason) -> u64 {
    net.nodes.iter().map(|n| n.counters().dropped(reason)).sum()
}

/// The forgeries of the issue, each with the node it is sent to.
fn forgeries(s: &Scene) -> Vec<(usize, Forged)> {
    let ids = &s.net.ids;
    let term = s.net.nodes[0].lock_node().round_term().unwrap_or(1);
    // A low round count is served at once; a high one makes the
    // coordinator ask the member for its locks (what HELLO is for).
    let (sync, hello_sync) = (0, 1_000);
    let lock = |from: NodeId, to: NodeId, msgs: Vec<LockMsg>| Forged::Lock(LockFrame { from, to, msgs });
    let cancels = (1..=50)
        .map(|r| {
            LockMsg::Cancel(CancelReq {
                id: ReqId(10_000 + r),
                sync,
                client: ClientId(1),
                name: name("orders"),
                target: ReqId(r),
            })
        })
        .collect();
    let unlock = LockMsg::Unlock(UnlockReq {
        id: ReqId(20_000),
        sync,
        client: ClientId(1),
        name: name("orders"),
        token: s.token,
    });
    let phantom = LockMsg::Lock(LockReq {
        id: ReqId(30_000),
        sync,
        client: ClientId(99),
        name: name("phantom"),
        wait: Wait::No,
        ticket: None,
        floor: ReqId(0),
        stamp: 0,
    });
    let duplicate = LockMsg::DuplicateLock(DuplicateLock {
        term,
        client: ClientId(1),
        name: name("orders"),
        token: s.token,
        req: s.holder_req,
    });
    let poison = LockMsg::LockInfoRsp(LockInfoRsp {
        term,
        part: 0,
        parts: 1,
        next_req: ReqId(1),
        max_term: Token::MAX_TERM,
        sync: hello_sync,
        stamp: 0,
        held: Vec::new(),
        pending: Vec::new(),
        vouch: None,
        unreported_ms: 0,
    });
    let fake = NodeId { epoch: 1, addr: SocketAddr::from(([10, 0, 0, 1], 7999)) };
    let announce = gossip(
        ident(fake, 0, "evil"),
        ident(NodeId { epoch: 0, addr: addr(0) }, 0, ""),
        Message::Announce,
        Vec::new(),
    );
    let newer_n2 = gossip(
        ident(ids[1], 0, "n1"),
        ident(ids[0], 0, "n0"),
        Message::Gossip,
        vec![Member::new(ident(ids[2], 1_000, "n2"), 0, State::Alive)],
    );
    let n2_down = gossip(
        ident(ids[1], 0, "n1"),
        ident(ids[0], 0, "n0"),
        Message::Gossip,
        vec![Member::new(ident(ids[2], 0, "n2"), 9, State::Down)],
    );
    vec![
        (0, lock(ids[2], ids[0], cancels)),
        (0, lock(ids[2], ids[0], vec![unlock])),
        (0, lock(ids[1], ids[0], vec![phantom])),
        (2, lock(ids[0], ids[2], vec![duplicate])),
        (0, lock(ids[1], ids[0], vec![LockMsg::Hello(Hello { sync: hello_sync })])),
        (0, lock(ids[1], ids[0], vec![poison])),
        (0, Forged::Gossip { from: fake, to_epoch: 0, payload: announce }),
        (0, Forged::Gossip { from: ids[1], to_epoch: ids[0].epoch, payload: newer_n2 }),
        (0, Forged::Gossip { from: ids[1], to_epoch: ids[0].epoch, payload: n2_down }),
    ]
}

#[test]
fn forged_frames_break_insecure_nodes() {
    // The control: what the forgeries do where nothing is sealed.
    let mut s = scene(true);
    let mut rng = SmallRng::seed_from_u64(1);
    let forged = forgeries(&s);
    // A forged CANCEL "from" the holder's node releases its lock: the
    // waiter is granted while the holder still believes it holds.
    let cancel = wrap(&forged[0].1, Wrap::Plain, 0, &mut rng);
    s.net.inject(0, addr(9), &cancel);
    s.net.run_for(Duration::from_millis(100));
    assert!(s.net.acquired(1, s.waiter).is_some(), "the forged cancel released the lock");
    assert_eq!(s.net.nodes[2].lock_node().held().len(), 1, "the holder was never told");
    // A forged announce puts a member that does not exist in a view.
    let announce = wrap(&forged[6].1, Wrap::Plain, 0, &mut rng);
    s.net.inject(0, addr(9), &announce);
    s.net.run_for(Duration::from_secs(1));
    let ghost = |e: &NodeEvent| matches!(e, NodeEvent::View { view, .. } if view.ids().any(|m| m.epoch == 1));
    assert!(s.net.events[0].iter().any(ghost), "a ghost member joined a view");
}

#[test]
fn forged_frames_without_the_key_are_dropped_and_change_nothing() {
    let mut s = scene(false);
    let key_id = s.net.nodes[0].keyring().unwrap().primary().0;
    let before = snapshot(&s.net);
    let (unauth, unknown) =
        (total(&s.net, DropReason::Unauthenticated), total(&s.net, DropReason::UnknownKey));
    let mut rng = SmallRng::seed_from_u64(2);
    let forged = forgeries(&s);
    for how in [Wrap::Plain, Wrap::Guess, Wrap::OtherKey] {
        for (to, f) in &forged {
            let d = wrap(f, how, key_id, &mut rng);
            s.net.inject(*to, addr(9), &d);
        }
    }
    let n = forged.len() as u64;
    assert_eq!(total(&s.net, DropReason::Unauthenticated) - unauth, 2 * n, "plain and guessed tags");
    assert_eq!(total(&s.net, DropReason::UnknownKey) - unknown, n);
    s.net.run_for(Duration::from_secs(3));
    assert_eq!(snapshot(&s.net), before, "nothing changed");
    assert!(s.net.acquired(1, s.waiter).is_none(), "the waiter still waits");
    assert_eq!(s.net.nodes[2].lock_node().held()[0].token, s.token);
}

/// The lock messages of a datagram captured on its way to `to`.
fn lock_msgs(net: &Net, to: usize, datagram: &[u8]) -> Option<Vec<LockMsg>> {
    let mut receiver = seal::Sealing::new(net.ids[to], CLUSTER, sealed(net.ids[to]));
    let mut scratch = Vec::new();
    let opened = receiver.open(datagram, &mut scratch).ok()?;
    (opened.kind == Kind::Lock).then(|| frame::decode_lock(opened.body).ok().map(|f| f.msgs)).flatten()
}

/// Node 2's client locks and unlocks "orders" and locks it again; returns
/// the captured UNLOCK datagram and the token of the second grant.
fn capture_unlock(net: &mut Net) -> (Vec<u8>, Token) {
    let (_, first) = net.lock_now(2, 1, "orders");
    let seen = net.captured.len();
    let now = net.now;
    net.nodes[2].unlock(now, ClientId(1), &name("orders")).unwrap();
    net.flush(2);
    let unlock = net.captured[seen..]
        .iter()
        .find(|(from, to, d)| {
            *from == 2
                && *to == Some(0)
                && lock_msgs(net, 0, d).is_some_and(|m| m.iter().any(|m| matches!(m, LockMsg::Unlock(_))))
        })
        .map(|c| c.2.clone())
        .expect("the unlock was sent");
    net.run_until(Duration::from_secs(2), |n| n.nodes[2].lock_node().pending_ops() == 0);
    let (_, second) = net.lock_now(2, 1, "orders");
    assert!(second > first);
    (unlock, second)
}

/// A gossip datagram node 1 sent to node 0's address before the view formed.
fn early_gossip(net: &Net) -> Vec<u8> {
    net.captured.iter().find(|(from, to, _)| *from == 1 && *to == Some(0)).map(|c| c.2.clone()).unwrap()
}

fn formed(n: usize) -> Net {
    let mut net = Net::new(n);
    net.run_until(Duration::from_secs(5), Net::one_view);
    net.run_until(Duration::from_secs(2), |n| n.nodes[0].lock_node().is_serving());
    net
}

#[test]
fn a_captured_unlock_or_gossip_replayed_later_is_dropped_as_replayed() {
    let mut net = formed(3);
    let gossip = early_gossip(&net);
    let (unlock, token) = capture_unlock(&mut net);
    // A minute later, in injected time.
    net.run_for(Duration::from_secs(60));
    let before = snapshot(&net);
    let replayed = net.nodes[0].counters().replayed;
    net.inject(0, addr(2), &unlock);
    net.inject(0, addr(1), &gossip);
    assert_eq!(net.nodes[0].counters().replayed - replayed, 2);
    net.run_for(Duration::from_secs(1));
    assert_eq!(snapshot(&net), before);
    assert!(net.nodes[0].lock_node().table().iter().any(|(n, _, t)| n.as_str() == "orders" && *t == token));
}

#[test]
fn replays_stay_dropped_after_the_sender_restarts() {
    let mut net = formed(3);
    let old_gossip =
        net.captured.iter().find(|(from, to, _)| *from == 2 && *to == Some(0)).unwrap().2.clone();
    let (unlock, _) = capture_unlock(&mut net);
    // Node 2 restarts: a new epoch and a new salt; the view takes it in.
    net.restart(2);
    net.run_until(Duration::from_secs(5), Net::one_view);
    net.run_for(Duration::from_secs(1));
    let before = snapshot(&net);
    let replayed = net.nodes[0].counters().replayed;
    net.inject(0, addr(2), &unlock);
    net.inject(0, addr(2), &old_gossip);
    assert_eq!(net.nodes[0].counters().replayed - replayed, 2, "an older epoch than the newest heard");
    net.run_for(Duration::from_secs(1));
    assert_eq!(snapshot(&net), before);
}

#[test]
fn replays_stay_dropped_after_the_receiver_restarts() {
    let mut net = formed(3);
    // Node 1's announce to its seed, node 0's address, placeholder epoch 0:
    // the one datagram whose destination epoch does not pin node 0's process.
    let announce = early_gossip(&net);
    assert_eq!(Envelope::read(&announce, ClusterId::from_name(CLUSTER)).unwrap().0.to_epoch, 0);
    let (unlock, _) = capture_unlock(&mut net);
    // Node 0 restarts with a new identity and forgets every window.
    net.restart(0);
    net.run_until(Duration::from_secs(5), Net::one_view);
    net.run_until(Duration::from_secs(2), |n| n.nodes[1].lock_node().is_serving());
    net.run_for(Duration::from_secs(1));
    let before = snapshot(&net);
    let c = net.nodes[0].counters();
    net.inject(0, addr(2), &unlock);
    net.inject(0, addr(1), &announce);
    let after = net.nodes[0].counters();
    // Both senders spoke to the new process since, from later counters.
    assert_eq!(after.replayed - c.replayed, 2);
    net.run_for(Duration::from_secs(1));
    assert_eq!(snapshot(&net), before);

    // Before a sender has spoken to the new process, its old datagrams
    // are still refused: the destination epoch is authenticated.
    net.restart(0);
    let c = net.nodes[0].counters();
    net.inject(0, addr(2), &unlock);
    assert_eq!(net.nodes[0].counters().misaddressed - c.misaddressed, 1);
}

#[test]
fn ten_thousand_bit_flipped_copies_are_unauthenticated_and_detection_still_works() {
    let mut net = formed(3);
    let (_, _) = net.lock_now(2, 1, "orders");
    net.run_for(Duration::from_secs(1));
    let samples: Vec<(usize, Vec<u8>)> =
        net.captured.iter().filter_map(|(_, to, d)| to.map(|to| (to, d.clone()))).collect();
    assert!(samples.len() > 100);
    let before = snapshot(&net);
    let unauth = total(&net, DropReason::Unauthenticated);
    let mut rng = SmallRng::seed_from_u64(9);
    for round in 0..10_000 {
        let (to, d) = &samples[rng.random_range(0..samples.len())];
        let mut d = d.clone();
        // Any byte the tag covers, except those checked before it: magic,
        // version, suite, cluster id, key id, address family and padding.
        let at = loop {
            let at = rng.random_range(18..d.len());
            if !(26..27).contains(&at) && !(31..43).contains(&at) {
                break at;
            }
        };
        d[at] ^= 1 << rng.random_range(0..8);
        net.inject(*to, addr(9), &d);
        if round % 100 == 99 {
            net.run_for(Duration::from_millis(10));
        }
    }
    assert_eq!(total(&net, DropReason::Unauthenticated) - unauth, 10_000);
    assert_eq!(snapshot(&net).views, before.views, "no member appeared or disappeared");
    assert_eq!(snapshot(&net).table, before.table);

    // A crashed member is still removed in its usual time.
    net.crash(2);
    let crashed = net.now;
    net.run_until(Duration::from_secs(2), |n| {
        (0..2).all(|i| n.nodes[i].membership().view().members.len() == 2)
    });
    let took = net.now - crashed;
    assert!(took < Duration::from_millis(1_500), "removed after {took:?}");
}
