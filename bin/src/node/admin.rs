//! Cluster-wide keyring commands (`swimlock keyring list|install|use|remove`).
//!
//! The node a command is given to applies it to itself and sends it, sealed,
//! to every other member of its view, repeating the request (100 ms, then
//! doubling up to 1 s) until each member answers or the command's timeout
//! passes. Every operation is idempotent, so a repeat is harmless.
//!
//! `use` and `remove` first ask every member for its keyring (a check
//! round) and change nothing anywhere unless it is safe: `use K` only when
//! every member holds K (a member without it could no longer open what the
//! others send, and would look dead), `remove K` only when no member sends
//! with K. `install` and `list` need no check.
//!
//! A member that changes its keyring reports
//! [`NodeEvent::KeyringChanged`] and holds its answer until the driver has
//! saved the keyring and called [`Node::keyring_saved`]: an answer means
//! the change survives a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use swimlock_wire::NodeId;
use swimlock_wire::admin::{AdminMsg, KeyringOp, KeyringResult, decode_admin, encode_admin};
use swimlock_wire::frame::Kind;

use super::seal::{DropReason, Key, KeyId, Keyring};
use super::{Node, NodeEvent};

/// First retransmission delay of a keyring request.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Cap of the retransmission backoff.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The outcome of a keyring command across the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringReport {
    /// The command's id, as [`Node::keyring_command`] returned it.
    pub id: u64,
    /// What was asked.
    pub op: KeyringOp,
    /// Each member's last answer (this node's included): its keys after
    /// the command, or why it refused. In a refused command, the answers
    /// of the check round.
    pub answers: BTreeMap<NodeId, KeyringResult>,
    /// Members that did not answer before the timeout.
    pub missing: Vec<NodeId>,
    /// Set when the command was refused as a whole; then nothing changed.
    pub refused: Option<String>,
}

/// Keyring commands in flight and answers held until the keyring is saved.
#[derive(Debug, Default)]
pub(crate) struct Admin {
    next_command: u64,
    next_wire_id: u64,
    commands: BTreeMap<u64, Command>,
    /// Keyring snapshots reported and not saved yet.
    unsaved: u32,
    /// Whether a save reported since the last release failed, and why.
    save_error: Option<String>,
    held: Vec<Held>,
}

#[derive(Debug)]
enum Held {
    /// An answer to a member's request.
    Remote { to: NodeId, id: u64, result: KeyringResult },
    /// This node's own answer to one of its commands.
    Local { command: u64, result: KeyringResult },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Every member lists its keys; nothing changes yet.
    Check,
    /// Every member applies the operation.
    Apply,
}

#[derive(Debug)]
struct Command {
    op: KeyringOp,
    stage: Stage,
    /// The id the current stage's requests carry.
    wire_id: u64,
    timeout: Duration,
    deadline: Duration,
    targets: BTreeMap<NodeId, Target>,
    /// This node's answer in the current stage.
    local: Option<KeyringResult>,
}

#[derive(Debug)]
struct Target {
    next_send: Duration,
    backoff: Duration,
    answer: Option<KeyringResult>,
}

/// The keys of `ring` as an answer.
fn listing(ring: &Keyring) -> KeyringResult {
    KeyringResult::Keys { keys: ring.ids().into_iter().map(|k| k.0).collect(), primary: ring.primary().0 }
}

/// Applies `op` to `ring`: whether it changed, and the answer.
fn apply(ring: &mut Keyring, op: &KeyringOp) -> (bool, KeyringResult) {
    let changed = match op {
        KeyringOp::List => Ok(false),
        KeyringOp::Install { key } => ring.install(Key::from_bytes(*key)),
        KeyringOp::Use { key_id } => ring.use_key(KeyId(*key_id)),
        KeyringOp::Remove { key_id } => ring.remove(KeyId(*key_id)),
    };
    match changed {
        Ok(changed) => (changed, listing(ring)),
        Err(e) => (false, KeyringResult::Refused { reason: e.to_string() }),
    }
}

impl Node {
    /// Adds `key` to this node's own keyring as an accepted key, not sent
    /// with (a configuration reload with a new key file; `swimlock keyring
    /// use` then makes it the primary everywhere). Emits
    /// [`NodeEvent::KeyringChanged`] when it was new; `Ok(false)` if it was
    /// there already.
    pub fn install_key(&mut self, key: Key) -> Result<bool, String> {
        let Some(ring) = self.sealing.keyring_mut() else {
            return Err("insecure mode has no keyring".into());
        };
        let changed = ring.install(key).map_err(|e| e.to_string())?;
        if changed {
            let snapshot = ring.clone();
            self.report_change(snapshot);
        }
        Ok(changed)
    }

    /// Starts a keyring command across the current view; its outcome
    /// arrives as [`NodeEvent::Keyring`] with the returned id, within about
    /// `timeout` (twice that for `use` and `remove`, which check first).
    /// Refused at once in insecure mode.
    pub fn keyring_command(
        &mut self,
        now: Duration,
        op: KeyringOp,
        timeout: Duration,
    ) -> Result<u64, String> {
        let Some(ring) = self.sealing.keyring() else {
            return Err("this agent runs insecure (--insecure): it has no keyring".to_string());
        };
        let precheck = match &op {
            KeyringOp::Use { key_id } if !ring.contains(KeyId(*key_id)) => {
                Some(format!("key {} is not installed on this node; install it first", KeyId(*key_id)))
            }
            KeyringOp::Remove { key_id } if ring.primary() == KeyId(*key_id) => Some(format!(
                "key {} is the primary key on this node; `use` another key first",
                KeyId(*key_id)
            )),
            _ => None,
        };
        self.admin.next_command += 1;
        let id = self.admin.next_command;
        if let Some(reason) = precheck {
            let answers = BTreeMap::from([(self.me, listing(ring))]);
            let report = KeyringReport { id, op, answers, missing: Vec::new(), refused: Some(reason) };
            self.events.push_back(NodeEvent::Keyring(report));
            return Ok(id);
        }
        let me = self.me;
        let targets = self.membership.view().ids().filter(|m| *m != me).collect::<Vec<_>>();
        let stage = match op {
            KeyringOp::Use { .. } | KeyringOp::Remove { .. } if !targets.is_empty() => Stage::Check,
            _ => Stage::Apply,
        };
        let command = Command {
            op,
            stage,
            wire_id: 0,
            timeout,
            deadline: now,
            targets: targets.into_iter().map(|t| (t, Target::new(now))).collect(),
            local: None,
        };
        self.admin.commands.insert(id, command);
        self.begin_stage(now, id, stage);
        self.after_input(now);
        Ok(id)
    }

    /// The driver saved the keyring of the oldest unsaved
    /// [`NodeEvent::KeyringChanged`] (or failed to). Answers held for it
    /// go out once every reported keyring is saved.
    pub fn keyring_saved(&mut self, now: Duration, result: Result<(), String>) {
        if let Err(e) = result {
            self.admin.save_error = Some(e);
        }
        self.admin.unsaved = self.admin.unsaved.saturating_sub(1);
        if self.admin.unsaved == 0 {
            let error = self.admin.save_error.take();
            for held in std::mem::take(&mut self.admin.held) {
                let (Held::Remote { result, .. } | Held::Local { result, .. }) = &held;
                let result = match (&error, result) {
                    (Some(e), KeyringResult::Keys { .. }) => KeyringResult::Refused {
                        reason: format!("changed in memory, but the keyring could not be saved: {e}"),
                    },
                    (_, r) => r.clone(),
                };
                match held {
                    Held::Remote { to, id, .. } => self.send_admin(to, &AdminMsg::KeyringRsp { id, result }),
                    Held::Local { command, .. } => {
                        if let Some(c) = self.admin.commands.get_mut(&command) {
                            c.local = Some(result);
                        }
                    }
                }
            }
            let ids: Vec<u64> = self.admin.commands.keys().copied().collect();
            for id in ids {
                self.advance_command(now, id);
            }
        }
        self.after_input(now);
    }

    /// An admin frame from `from` (proven by the envelope).
    pub(super) fn on_admin(&mut self, now: Duration, from: NodeId, body: &[u8]) {
        match decode_admin(body) {
            Ok(AdminMsg::KeyringReq { id, op }) => self.on_keyring_req(from, id, &op),
            Ok(AdminMsg::KeyringRsp { id, result }) => self.on_keyring_rsp(now, from, id, result),
            Err(_) => self.count_drop(DropReason::Malformed),
        }
    }

    /// Retransmits unanswered requests and ends commands whose time is up.
    pub(super) fn admin_timeout(&mut self, now: Duration) {
        let ids: Vec<u64> = self.admin.commands.keys().copied().collect();
        for id in ids {
            let mut resend = Vec::new();
            if let Some(c) = self.admin.commands.get_mut(&id) {
                if now < c.deadline {
                    for (to, t) in c.targets.iter_mut().filter(|(_, t)| t.answer.is_none()) {
                        if t.next_send <= now {
                            resend.push(*to);
                            t.next_send = now + t.backoff;
                            t.backoff = (t.backoff * 2).min(RETRY_MAX);
                        }
                    }
                }
                let msg = AdminMsg::KeyringReq { id: c.wire_id, op: c.op.clone() };
                for to in resend {
                    self.send_admin(to, &msg);
                }
            }
            self.advance_command(now, id);
        }
    }

    /// The earliest deadline of the keyring commands.
    pub(super) fn admin_deadline(&self) -> Option<Duration> {
        self.admin
            .commands
            .values()
            .flat_map(|c| {
                let sends =
                    c.targets.values().filter(|t| t.answer.is_none()).map(|t| t.next_send.min(c.deadline));
                std::iter::once(c.deadline).chain(sends)
            })
            .min()
    }

    fn on_keyring_req(&mut self, from: NodeId, id: u64, op: &KeyringOp) {
        let Some(ring) = self.sealing.keyring_mut() else {
            let reason = "insecure mode has no keyring".to_string();
            self.send_admin(from, &AdminMsg::KeyringRsp { id, result: KeyringResult::Refused { reason } });
            return;
        };
        let (changed, result) = apply(ring, op);
        if changed {
            let snapshot = ring.clone();
            self.report_change(snapshot);
        }
        if self.admin.unsaved > 0 {
            self.admin.held.push(Held::Remote { to: from, id, result });
        } else {
            self.send_admin(from, &AdminMsg::KeyringRsp { id, result });
        }
    }

    fn on_keyring_rsp(&mut self, now: Duration, from: NodeId, id: u64, result: KeyringResult) {
        let Some((&command, c)) = self.admin.commands.iter_mut().find(|(_, c)| c.wire_id == id) else {
            return;
        };
        if let Some(t) = c.targets.get_mut(&from)
            && t.answer.is_none()
        {
            t.answer = Some(result);
            self.advance_command(now, command);
        }
    }

    fn report_change(&mut self, snapshot: Keyring) {
        self.admin.unsaved += 1;
        self.events.push_back(NodeEvent::KeyringChanged(snapshot));
    }

    /// Starts `stage` of command `id`: a fresh request id, this node's own
    /// answer, and the requests to every member.
    fn begin_stage(&mut self, now: Duration, id: u64, stage: Stage) {
        self.admin.next_wire_id += 1;
        let wire_id = self.admin.next_wire_id;
        let Some(c) = self.admin.commands.get_mut(&id) else { return };
        c.stage = stage;
        c.wire_id = wire_id;
        c.deadline = now + c.timeout;
        c.local = None;
        for t in c.targets.values_mut() {
            *t = Target::new(now);
        }
        let op = if stage == Stage::Check { KeyringOp::List } else { c.op.clone() };
        let targets: Vec<NodeId> = c.targets.keys().copied().collect();
        if let Some(ring) = self.sealing.keyring_mut() {
            let (changed, result) = apply(ring, &op);
            if changed {
                let snapshot = ring.clone();
                self.report_change(snapshot);
            }
            if self.admin.unsaved > 0 {
                self.admin.held.push(Held::Local { command: id, result });
            } else if let Some(c) = self.admin.commands.get_mut(&id) {
                c.local = Some(result);
            }
        }
        let msg = AdminMsg::KeyringReq { id: wire_id, op };
        for to in targets {
            self.send_admin(to, &msg);
        }
        self.advance_command(now, id);
    }

    /// Moves command `id` on if its stage is complete (or out of time).
    fn advance_command(&mut self, now: Duration, id: u64) {
        let Some(c) = self.admin.commands.get(&id) else { return };
        let answered = c.local.is_some() && c.targets.values().all(|t| t.answer.is_some());
        if !answered && now < c.deadline {
            return;
        }
        let missing: Vec<NodeId> =
            c.targets.iter().filter(|(_, t)| t.answer.is_none()).map(|(n, _)| *n).collect();
        let mut answers: BTreeMap<NodeId, KeyringResult> =
            c.targets.iter().filter_map(|(n, t)| t.answer.clone().map(|a| (*n, a))).collect();
        if let Some(local) = &c.local {
            answers.insert(self.me, local.clone());
        }
        let refused = match c.stage {
            Stage::Apply => None,
            Stage::Check if !missing.is_empty() => {
                Some(format!("{} member(s) did not answer the check; nothing was changed", missing.len()))
            }
            Stage::Check => check(&c.op, &answers),
        };
        if c.stage == Stage::Check && refused.is_none() {
            self.begin_stage(now, id, Stage::Apply);
            return;
        }
        let Some(c) = self.admin.commands.remove(&id) else { return };
        let report = KeyringReport { id, op: c.op, answers, missing, refused };
        self.events.push_back(NodeEvent::Keyring(report));
    }

    fn send_admin(&mut self, to: NodeId, msg: &AdminMsg) {
        // An admin message is a few dozen bytes; it always fits.
        if let Ok(datagram) = self.sealing.seal(to, Kind::Admin, |out| encode_admin(msg, out)) {
            self.push_transmit(to.addr, datagram);
        }
    }
}

impl Target {
    fn new(now: Duration) -> Target {
        Target { next_send: now + RETRY_INITIAL, backoff: RETRY_INITIAL * 2, answer: None }
    }
}

/// Whether the check round allows `op`: `None` if it does, else why not.
fn check(op: &KeyringOp, answers: &BTreeMap<NodeId, KeyringResult>) -> Option<String> {
    let mut blocking = Vec::new();
    for (member, answer) in answers {
        let ok = match (op, answer) {
            (KeyringOp::Use { key_id }, KeyringResult::Keys { keys, .. }) => keys.contains(key_id),
            (KeyringOp::Remove { key_id }, KeyringResult::Keys { primary, .. }) => primary != key_id,
            (_, KeyringResult::Keys { .. }) => true,
            (_, KeyringResult::Refused { .. }) => false,
        };
        if !ok {
            blocking.push(member.to_string());
        }
    }
    if blocking.is_empty() {
        return None;
    }
    let why = match op {
        KeyringOp::Use { key_id } => format!("key {} is not installed on", KeyId(*key_id)),
        KeyringOp::Remove { key_id } => format!("key {} is still the primary key on", KeyId(*key_id)),
        _ => "refused by".to_string(),
    };
    Some(format!("{why} {}; nothing was changed", blocking.join(", ")))
}
