//! Fixtures shared by the swimlock benchmarks: sample messages of every
//! kind, and a coordinator about to reconcile a member that holds many
//! locks. The benchmarks themselves are in `benches/`; the end-to-end
//! benchmark against the UDP floor is `swimlock bench`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use swimlock_lock::{Config, Event, LockNode, View};
use swimlock_wire::lock::{
    CancelReq, DuplicateLock, HeldLock, LockFrame, LockInfoReq, LockInfoRsp, LockMsg, LockOutcome, LockReq,
    LockRsp, Redirect, UnlockReq, UnlockRsp, Wait,
};
use swimlock_wire::{ClientId, LockName, NodeId, ReqId, Token};

/// A node id on loopback.
pub fn node(port: u16, epoch: u64) -> NodeId {
    NodeId { epoch, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
}

/// A lock name of typical length.
pub fn name(i: usize) -> LockName {
    LockName::new(format!("jobs/batch-{i:06}")).expect("valid name")
}

/// One message of every kind, with its name: the lock path's messages
/// carry one request each, the reconciliation answer one full part.
pub fn sample_messages() -> Vec<(&'static str, LockMsg)> {
    let token = Token::new(7, 1, 42);
    let req = LockReq {
        id: ReqId(1001),
        sync: 3,
        client: ClientId(17),
        name: name(1),
        wait: Wait::Queue,
        ticket: None,
        floor: ReqId(990),
        stamp: 1_700_000_000_000,
    };
    let held = |i: usize| HeldLock { client: ClientId(i as u64), name: name(i), token, req: ReqId(i as u64) };
    let dup = DuplicateLock { term: 7, client: ClientId(17), name: name(1), token, req: ReqId(1001) };
    vec![
        ("lock_req", LockMsg::Lock(req.clone())),
        (
            "unlock_req",
            LockMsg::Unlock(UnlockReq {
                id: ReqId(1002),
                sync: 3,
                client: ClientId(17),
                name: name(1),
                token,
            }),
        ),
        (
            "cancel_req",
            LockMsg::Cancel(CancelReq {
                id: ReqId(1003),
                sync: 3,
                client: ClientId(17),
                name: name(1),
                target: ReqId(1001),
            }),
        ),
        (
            "lock_rsp",
            LockMsg::LockRsp(LockRsp {
                id: ReqId(1001),
                term: 7,
                outcome: LockOutcome::Granted(token),
                stamp: 1_700_000_000_000,
            }),
        ),
        ("unlock_rsp", LockMsg::UnlockRsp(UnlockRsp { id: ReqId(1002), term: 7 })),
        ("redirect", LockMsg::Redirect(Redirect { id: ReqId(1001), coordinator: Some(node(7001, 1)) })),
        (
            "lock_info_req",
            LockMsg::LockInfoReq(LockInfoReq { term: 7, have: vec![0, 1, 2], linger_ms: 0, vouch_of: None }),
        ),
        (
            "lock_info_rsp_32",
            LockMsg::LockInfoRsp(LockInfoRsp {
                term: 7,
                part: 0,
                parts: 1,
                next_req: ReqId(2000),
                max_term: 6,
                sync: 3,
                stamp: 1_700_000_000_000,
                held: (0..31).map(held).collect(),
                pending: vec![req],
                vouch: None,
                unreported_ms: 0,
            }),
        ),
        ("duplicate_lock", LockMsg::DuplicateLock(dup.clone())),
        ("duplicate_ack", LockMsg::DuplicateAck(dup)),
    ]
}

/// A frame carrying one message, between two loopback nodes.
pub fn frame_of(msg: LockMsg) -> LockFrame {
    LockFrame { from: node(7002, 2), to: node(7001, 1), msgs: vec![msg] }
}

/// A single-node cluster: the node is its own coordinator, serving.
pub fn single_node() -> LockNode {
    let me = node(7001, 1);
    let mut n = LockNode::new(me, Config::lan(1));
    n.handle_view(Duration::ZERO, View { id: 1, members: vec![me], merge: false, gossiped_term: 0 });
    let mut now = Duration::ZERO;
    // The round with only itself finishes at once; step time just in case.
    for _ in 0..100 {
        if n.is_serving() {
            break;
        }
        now += Duration::from_millis(10);
        n.handle_timeout(now);
    }
    assert!(n.is_serving(), "single node did not start serving");
    drain(&mut n);
    n
}

/// Drops every pending transmit and event; returns the number of grants.
pub fn drain(n: &mut LockNode) -> usize {
    while n.poll_transmit().is_some() {}
    let mut grants = 0;
    while let Some(e) = n.poll_event() {
        grants += usize::from(matches!(e, Event::Acquired { .. }));
    }
    grants
}

/// A member that holds `locks` locks (each its own client and name),
/// granted while it coordinated alone, and the coordinator id that will
/// take over.
pub struct ReconcileFixture {
    /// The member holding the locks.
    pub member: LockNode,
    /// Its id.
    pub member_id: NodeId,
    /// The older node that becomes coordinator of the merged view.
    pub coord_id: NodeId,
    /// The merged view (coordinator first).
    pub view: View,
}

impl ReconcileFixture {
    /// Builds the member and has it take `locks` locks.
    pub fn new(locks: usize) -> ReconcileFixture {
        let member_id = node(7002, 2);
        let coord_id = node(7001, 1);
        let view = View { id: 2, members: vec![coord_id, member_id], merge: true, gossiped_term: 0 };
        ReconcileFixture::holding(member_id, 2, coord_id, view, (0..locks).map(name))
    }

    /// Member `member_id` (node tag `tag`) that took a lock on each of
    /// `names` while it coordinated alone, then installed `view` (merged,
    /// coordinated by `coord_id`).
    pub fn holding(
        member_id: NodeId,
        tag: u16,
        coord_id: NodeId,
        view: View,
        names: impl Iterator<Item = LockName>,
    ) -> ReconcileFixture {
        let mut member = LockNode::new(member_id, Config::lan(tag));
        member.handle_view(
            Duration::ZERO,
            View { id: 1, members: vec![member_id], merge: false, gossiped_term: 0 },
        );
        let now = Duration::from_millis(1);
        member.handle_timeout(now);
        let (mut granted, mut locks) = (0, 0);
        for (i, name) in names.enumerate() {
            member.lock(now, ClientId(i as u64 + 1), name, Duration::from_secs(10));
            granted += drain(&mut member);
            locks += 1;
        }
        assert_eq!(granted, locks, "the member did not get every lock");
        member.handle_view(now, view.clone());
        drain(&mut member);
        ReconcileFixture { member, member_id, coord_id, view }
    }

    /// A fresh coordinator that has started its round, and the member's
    /// answer (every part) to its LOCK-INFO-REQ. The coordinator's term
    /// floor is above the member's term, so the round finishes in one pass.
    pub fn round(&mut self) -> (LockNode, Vec<LockMsg>) {
        let now = Duration::from_millis(2);
        let mut coord = LockNode::with_term_floor(self.coord_id, Config::lan(1), 100);
        coord.handle_view(now, self.view.clone());
        let mut answer = Vec::new();
        while let Some(t) = coord.poll_transmit() {
            if t.to == self.member_id
                && let LockMsg::LockInfoReq(req) = t.msg
            {
                answer = whole_answer(&mut self.member, self.coord_id, now, req);
            }
        }
        while coord.poll_event().is_some() {}
        (coord, answer)
    }
}

/// Every part of `member`'s answer to `req`: a member sends one window of
/// parts per ask, so it is asked again, with the parts already in, until
/// nothing new comes (as the coordinator would, one window per round trip).
fn whole_answer(
    member: &mut LockNode,
    coord_id: NodeId,
    now: Duration,
    mut req: LockInfoReq,
) -> Vec<LockMsg> {
    let mut parts = Vec::new();
    loop {
        member.handle_message(now, coord_id, LockMsg::LockInfoReq(req.clone()));
        let before = parts.len();
        while let Some(t) = member.poll_transmit() {
            if t.to == coord_id
                && let LockMsg::LockInfoRsp(rsp) = &t.msg
            {
                req.have.push(rsp.part);
                parts.push(t.msg);
            }
        }
        if parts.len() == before {
            return parts;
        }
    }
}

/// Feeds `member`'s answer to the coordinator; returns it serving.
pub fn reconcile(member: NodeId, mut coord: LockNode, answer: Vec<LockMsg>) -> LockNode {
    let now = Duration::from_millis(3);
    for msg in answer {
        coord.handle_message(now, member, msg);
    }
    assert!(coord.is_serving(), "the coordinator did not finish its round");
    while coord.poll_transmit().is_some() {}
    coord
}

/// Several members holding many locks each (distinct names), and the
/// coordinator that takes over when they merge: the million-lock harness.
pub struct ManyMembers {
    /// The members, each with the locks it took while it coordinated alone.
    pub members: Vec<ReconcileFixture>,
    /// The merged view: the coordinator first, then every member.
    pub view: View,
}

impl ManyMembers {
    /// `count` members holding `locks` locks each (each member built for
    /// real: a node holding many locks is slow to build, quadratic in its
    /// locks; see [`ManyMembers::echoed`]).
    pub fn new(count: usize, locks: usize) -> ManyMembers {
        let coord_id = node(7001, 1);
        let ids: Vec<NodeId> = (0..count).map(|m| node(7002 + m as u16, 2 + m as u64)).collect();
        let mut members_view = vec![coord_id];
        members_view.extend(&ids);
        let view = View { id: 2, members: members_view, merge: true, gossiped_term: 0 };
        let members = ids
            .iter()
            .enumerate()
            .map(|(m, id)| {
                let names =
                    (0..locks).map(|i| LockName::new(format!("m{m}/jobs/batch-{i:06}")).expect("valid"));
                ReconcileFixture::holding(*id, 2 + m as u16, coord_id, view.clone(), names)
            })
            .collect();
        ManyMembers { members, view }
    }

    /// `count` members in the view, of which only the first is built (it
    /// takes `locks` locks); the others answer a round with a copy of its
    /// answer under names of their own (see [`ManyMembers::round`]).
    pub fn echoed(count: usize, locks: usize) -> ManyMembers {
        let mut many = ManyMembers::new(1, locks);
        let extra = (1..count).map(|m| node(7002 + m as u16, 2 + m as u64));
        many.view.members.extend(extra);
        for member in &mut many.members {
            member.member.handle_view(Duration::from_millis(1), many.view.clone());
            drain(&mut member.member);
        }
        many
    }

    /// A fresh coordinator that has started its round, and every member's
    /// answer (every part, member by member). Members of the view that were
    /// not built answer with the first member's parts, each lock renamed
    /// `<member index>/<name>`.
    pub fn round(&mut self) -> (LockNode, Vec<(NodeId, LockMsg)>) {
        let now = Duration::from_millis(2);
        let coord_id = self.view.members[0];
        let mut coord = LockNode::with_term_floor(coord_id, Config::lan(1), 100);
        coord.handle_view(now, self.view.clone());
        let mut answers = Vec::new();
        while let Some(t) = coord.poll_transmit() {
            let Some(member) = self.members.iter_mut().find(|m| m.member_id == t.to) else { continue };
            let LockMsg::LockInfoReq(req) = t.msg else { continue };
            let parts = whole_answer(&mut member.member, coord_id, now, req);
            answers.extend(parts.into_iter().map(|part| (member.member_id, part)));
        }
        while coord.poll_event().is_some() {}
        let built: Vec<NodeId> = self.members.iter().map(|m| m.member_id).collect();
        let first: Vec<LockMsg> =
            answers.iter().filter(|(from, _)| Some(from) == built.first()).map(|(_, m)| m.clone()).collect();
        for (m, id) in self.view.members.iter().enumerate().skip(1) {
            if built.contains(id) {
                continue;
            }
            for msg in &first {
                let LockMsg::LockInfoRsp(rsp) = msg else { continue };
                let mut rsp = rsp.clone();
                for held in &mut rsp.held {
                    held.name = LockName::new(format!("{m}/{}", held.name.as_str())).expect("valid name");
                }
                answers.push((*id, LockMsg::LockInfoRsp(rsp)));
            }
        }
        (coord, answers)
    }
}

/// Feeds every member's answer to the coordinator; returns it serving.
pub fn reconcile_all(mut coord: LockNode, answers: Vec<(NodeId, LockMsg)>) -> LockNode {
    let now = Duration::from_millis(3);
    for (member, msg) in answers {
        coord.handle_message(now, member, msg);
    }
    assert!(coord.is_serving(), "the coordinator did not finish its round");
    while coord.poll_transmit().is_some() {}
    coord
}
