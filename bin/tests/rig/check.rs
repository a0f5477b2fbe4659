//! The checker: judges a run from its history and the rig's list of
//! changes alone (never the product's lock table).
//!
//! A hold is what a client believed: from the grant it received until it
//! decided to unlock or was told the lock is lost. A holder whose host was
//! paused and that was told `Lost` afterwards stopped at the pause (its
//! lease ran out while it could not act; what it writes after waking is the
//! fenced register's business).
//!
//! Checked:
//! - majority mode: no two holds of one name overlap;
//! - available mode: two holds overlap only if the network separated their
//!   nodes, and the overlap ends within [`RESOLVE`] of the sides meeting
//!   again in one view (the rig marks when it saw that; at most
//!   [`MERGE_BOUND`] after the separation ended). Holds still overlapping
//!   then must have been resolved by the merge: all but one told `Lost`;
//! - grants of one name carry distinct tokens that increase in grant order
//!   (available mode: except across a separation); a re-entry returns the
//!   hold's token;
//! - the register's accepted tokens never decrease, and are equal only for
//!   writes of one holder;
//! - no acknowledged write is lost: every accepted write builds on the
//!   value the previous accepted write left (available mode: except across
//!   a separation of the two writers' nodes);
//! - every request is answered within [`ANSWER_BOUND`] after its own wait
//!   and after every fault that overlapped it;
//! - every `Lost` names a reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::history::{Event, OpKind, Outcome, What};
use super::net::{Change, Mode};

/// How long after a partition ends two holders may still overlap: the
/// sides meet, merge their views and reconcile within this bound.
pub const MERGE_BOUND: Duration = Duration::from_secs(5);

/// How long after the rig saw one view again two holders may still
/// overlap: the merge's reconciliation and the DUPLICATE-LOCK to the loser.
pub const RESOLVE: Duration = Duration::from_millis(1500);

/// How long a request may stay unanswered beyond its own wait and the
/// last fault that overlapped it.
pub const ANSWER_BOUND: Duration = Duration::from_secs(10);

/// One client's hold of one name.
#[derive(Clone, Debug)]
struct Hold {
    worker: usize,
    node: usize,
    name: String,
    token: u64,
    start: Duration,
    end: Duration,
    /// The hold ended with a `Lost` notice (its cause).
    lost: Option<String>,
}

impl Hold {
    fn describe(&self) -> String {
        let how = match &self.lost {
            Some(cause) => format!("told Lost({cause})"),
            None => "released".to_string(),
        };
        format!(
            "w{}@n{} token {} held {:.3}s..{:.3}s, {how}",
            self.worker,
            self.node,
            self.token,
            self.start.as_secs_f64(),
            self.end.as_secs_f64()
        )
    }
}

/// The verdict and the figures of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// What broke, one message each; empty when the run passed.
    pub violations: Vec<String>,
    /// Lock requests sent (re-entries included).
    pub ops: usize,
    /// Holds (first grants).
    pub holds: usize,
    /// Overlapping holds excused by a partition (available mode).
    pub excused_overlaps: usize,
    /// Of those, the ones that ended with a `Lost` notice.
    pub excused_ended_lost: usize,
    /// `Lost` notices by cause.
    pub lost: BTreeMap<String, usize>,
    /// Register writes accepted.
    pub writes_accepted: usize,
    /// Register writes rejected (a stale token).
    pub writes_rejected: usize,
    /// Accepted writes that overwrote one they never saw, excused by a
    /// partition (available mode).
    pub excused_lost_writes: usize,
}

impl Report {
    /// Number of `Lost` notices.
    pub fn lost_total(&self) -> usize {
        self.lost.values().sum()
    }
}

/// The network and the processes over time, from the rig's changes.
struct Timeline<'a> {
    changes: &'a [(Duration, Change)],
    end: Duration,
}

impl Timeline<'_> {
    /// Network states as `(from, to, blocked, loss)`.
    fn nets(&self) -> Vec<(Duration, Duration, &Vec<std::collections::BTreeSet<usize>>, u8)> {
        let nets: Vec<(Duration, &Change)> = self
            .changes
            .iter()
            .filter(|(_, c)| matches!(c, Change::Net { .. }))
            .map(|(t, c)| (*t, c))
            .collect();
        let mut out = Vec::new();
        for (k, (t, c)) in nets.iter().enumerate() {
            let Change::Net { blocked, loss } = c else { unreachable!() };
            let to = nets.get(k + 1).map_or(self.end, |n| n.0);
            out.push((*t, to, blocked, *loss));
        }
        out
    }

    /// Intervals in which the network separated `a` and `b` (either way).
    fn separations(&self, a: usize, b: usize) -> Vec<(Duration, Duration)> {
        self.nets()
            .into_iter()
            .filter(|(_, _, blocked, _)| blocked[a].contains(&b) || blocked[b].contains(&a))
            .map(|(from, to, _, _)| (from, to))
            .collect()
    }

    /// When a separation that ended at `end` was resolved: the first time
    /// the rig saw one view after it, or `end` + [`MERGE_BOUND`]; plus
    /// [`RESOLVE`].
    fn resolved(&self, end: Duration) -> Duration {
        let seen =
            self.changes.iter().find(|(t, c)| *t >= end && matches!(c, Change::OneView)).map(|(t, _)| *t);
        seen.unwrap_or(end + MERGE_BOUND).min(end + MERGE_BOUND) + RESOLVE
    }

    /// Intervals in which node `i`'s agent was stopped (paused).
    fn pauses(&self, i: usize) -> Vec<(Duration, Duration)> {
        let mut out = Vec::new();
        let mut since = None;
        for (t, c) in self.changes {
            match c {
                Change::Pause(j) if *j == i => since = Some(*t),
                Change::Resume(j) | Change::Kill(j) | Change::Stop(j) if *j == i => {
                    if let Some(s) = since.take() {
                        out.push((s, *t));
                    }
                }
                _ => {}
            }
        }
        out.extend(since.map(|s| (s, self.end)));
        out
    }

    /// Every interval in which some fault was in force: a partition, loss,
    /// a paused, killed or stopped agent.
    fn faults(&self) -> Vec<(Duration, Duration)> {
        let mut out: Vec<(Duration, Duration)> = self
            .nets()
            .into_iter()
            .filter(|(_, _, blocked, loss)| *loss > 0 || blocked.iter().any(|b| !b.is_empty()))
            .map(|(from, to, _, _)| (from, to))
            .collect();
        let mut down: BTreeMap<usize, Duration> = BTreeMap::new();
        for (t, c) in self.changes {
            match c {
                Change::Pause(i) | Change::Kill(i) | Change::Stop(i) => {
                    down.entry(*i).or_insert(*t);
                }
                Change::Resume(i) | Change::Start(i) => {
                    if let Some(s) = down.remove(i) {
                        out.push((s, *t));
                    }
                }
                Change::Net { .. } | Change::OneView => {}
            }
        }
        out.extend(down.into_values().map(|s| (s, self.end)));
        out
    }

    /// The rig's changes from `from` to `to`, one per line.
    fn around(&self, from: Duration, to: Duration) -> String {
        let mut text = String::new();
        let before = self.changes.iter().rev().find(|(t, c)| *t < from && matches!(c, Change::Net { .. }));
        let within = self.changes.iter().filter(|(t, _)| *t >= from && *t <= to);
        for (t, c) in before.into_iter().chain(within) {
            let _ = writeln!(text, "    {:.3}s {}", t.as_secs_f64(), describe(c));
        }
        text
    }
}

/// One change in words.
pub fn describe(change: &Change) -> String {
    match change {
        Change::Net { blocked, loss } => {
            let cuts: Vec<String> = blocked
                .iter()
                .enumerate()
                .filter(|(_, b)| !b.is_empty())
                .map(|(dst, b)| {
                    let srcs: Vec<String> = b.iter().map(|s| format!("n{s}")).collect();
                    format!("n{dst} drops {}", srcs.join(","))
                })
                .collect();
            let cuts = if cuts.is_empty() { "no partition".to_string() } else { cuts.join("; ") };
            format!("network: {cuts}; loss {loss}%")
        }
        Change::Pause(i) => format!("n{i} paused (SIGSTOP)"),
        Change::Resume(i) => format!("n{i} resumed (SIGCONT)"),
        Change::Kill(i) => format!("n{i} killed (SIGKILL)"),
        Change::Stop(i) => format!("n{i} stopped (SIGTERM)"),
        Change::Start(i) => format!("n{i} started"),
        Change::OneView => "every live node seen in one view".to_string(),
    }
}

fn overlaps(a: (Duration, Duration), b: (Duration, Duration)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Judges the run that produced `events` under `changes`, which ended at
/// `end` on the rig's clock.
pub fn check(events: &[Event], changes: &[(Duration, Change)], mode: Mode, end: Duration) -> Report {
    let timeline = Timeline { changes, end };
    let mut report = Report::default();
    let holds = holds(events, &timeline, &mut report);
    report.holds = holds.len();
    let mut by_name: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in &holds {
        by_name.entry(&h.name).or_default().push(h);
    }
    for list in by_name.values_mut() {
        list.sort_by_key(|h| h.start);
        check_exclusion(list, &timeline, mode, &mut report);
        check_tokens(list, &timeline, mode, &mut report);
    }
    check_register(events, &mut report);
    check_lost_writes(events, &timeline, mode, &mut report);
    check_answers(events, &timeline, &mut report);
    report
}

/// Rebuilds the holds from the clients' events.
fn holds(events: &[Event], timeline: &Timeline, report: &mut Report) -> Vec<Hold> {
    let mut kinds: BTreeMap<u64, (OpKind, &str)> = BTreeMap::new();
    let mut open: BTreeMap<usize, Hold> = BTreeMap::new();
    let mut done = Vec::new();
    for e in events {
        match &e.what {
            What::Invoke { op, kind, name } => {
                report.ops += 1;
                kinds.insert(*op, (*kind, name));
            }
            What::Answer { op, outcome: Outcome::Granted { token, .. } } => {
                let Some(&(kind, name)) = kinds.get(op) else { continue };
                if kind == OpKind::Reenter {
                    match open.get(&e.worker) {
                        Some(h) if h.token == *token => {}
                        other => report.violations.push(format!(
                            "re-entry of w{}@n{} at {:.3}s returned token {token}, its hold is {:?}",
                            e.worker,
                            e.node,
                            e.t.as_secs_f64(),
                            other.map(Hold::describe)
                        )),
                    }
                    continue;
                }
                let name = name.to_string();
                let end = timeline.end;
                let hold =
                    Hold { worker: e.worker, node: e.node, name, token: *token, start: e.t, end, lost: None };
                if let Some(prev) = open.insert(e.worker, hold) {
                    done.push(prev);
                }
            }
            What::Lost { .. } | What::Release { .. } => {
                let lost = match &e.what {
                    What::Lost { cause, .. } => Some(cause.clone()),
                    _ => None,
                };
                if let What::Lost { name, token, cause } = &e.what {
                    if cause.is_empty() {
                        report.violations.push(format!("Lost without a reason: {name} token {token}"));
                    }
                    *report.lost.entry(cause.clone()).or_default() += 1;
                }
                if let Some(mut h) = open.remove(&e.worker) {
                    h.end = e.t;
                    h.lost = lost;
                    done.push(h);
                }
            }
            _ => {}
        }
    }
    done.extend(open.into_values());
    for h in &mut done {
        if h.lost.is_some()
            && let Some(p) = timeline.pauses(h.node).iter().find(|p| p.0 > h.start && p.0 < h.end)
        {
            h.end = p.0;
        }
    }
    done
}

fn check_exclusion(list: &[&Hold], timeline: &Timeline, mode: Mode, report: &mut Report) {
    for (k, a) in list.iter().enumerate() {
        for b in &list[k + 1..] {
            if b.start >= a.end {
                continue;
            }
            let (from, to) = (b.start.max(a.start), a.end.min(b.end));
            if !overlaps((a.start, a.end), (b.start, b.end)) {
                continue;
            }
            let excuse = mode == Mode::Available
                && timeline
                    .separations(a.node, b.node)
                    .iter()
                    .any(|s| from >= s.0 && to <= timeline.resolved(s.1));
            if excuse {
                report.excused_overlaps += 1;
                let first = if a.end <= b.end { a } else { b };
                report.excused_ended_lost += usize::from(first.lost.is_some());
                continue;
            }
            let last = timeline.separations(a.node, b.node).into_iter().rfind(|s| s.0 <= to);
            let why = match (mode, last) {
                (Mode::Majority, _) => "majority mode".to_string(),
                (Mode::Available, None) => {
                    "available mode, and the network never separated their nodes".to_string()
                }
                (Mode::Available, Some(s)) => format!(
                    "available mode: the network separated n{} and n{} from {:.3}s to {:.3}s, but the overlap \
                     lasted until {:.3}s, past the merge's bound {:.3}s",
                    a.node,
                    b.node,
                    s.0.as_secs_f64(),
                    s.1.as_secs_f64(),
                    to.as_secs_f64(),
                    timeline.resolved(s.1).as_secs_f64()
                ),
            };
            report.violations.push(format!(
                "two holders of {} at once for {:.0} ms ({why}):\n  {}\n  {}\n  the network and the processes around them:\n{}",
                a.name,
                (to - from).as_secs_f64() * 1000.0,
                a.describe(),
                b.describe(),
                timeline.around(from.saturating_sub(MERGE_BOUND), to + Duration::from_secs(1)),
            ));
        }
    }
}

fn check_tokens(list: &[&Hold], timeline: &Timeline, mode: Mode, report: &mut Report) {
    for (k, a) in list.iter().enumerate() {
        for b in &list[k + 1..] {
            if b.token == a.token {
                report.violations.push(format!(
                    "one token granted twice for {}:\n  {}\n  {}",
                    a.name,
                    a.describe(),
                    b.describe()
                ));
            } else if b.token < a.token {
                let excuse = mode == Mode::Available
                    && timeline.separations(a.node, b.node).iter().any(|s| {
                        overlaps((s.0, s.1 + MERGE_BOUND), (a.start.saturating_sub(MERGE_BOUND), b.start))
                    });
                if !excuse {
                    report.violations.push(format!(
                        "a later grant of {} carries a lower token:\n  {}\n  {}\n  around:\n{}",
                        a.name,
                        a.describe(),
                        b.describe(),
                        timeline.around(a.start.saturating_sub(MERGE_BOUND), b.start)
                    ));
                }
            }
        }
    }
}

fn check_register(events: &[Event], report: &mut Report) {
    let mut last: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    for e in events {
        let What::Write { name, token, accepted, .. } = &e.what else { continue };
        if !accepted {
            report.writes_rejected += 1;
            continue;
        }
        report.writes_accepted += 1;
        if let Some(&(prev, worker)) = last.get(name.as_str())
            && (*token < prev || (*token == prev && worker != e.worker))
        {
            report.violations.push(format!(
                "register {name}: accepted token {token} from w{} at {:.3}s after token {prev} from w{worker}",
                e.worker,
                e.t.as_secs_f64()
            ));
        }
        last.insert(name, (*token, e.worker));
    }
}

/// Replays the accepted writes of each name: a write built on another value
/// than the register held overwrote an acknowledged write it never saw.
fn check_lost_writes(events: &[Event], timeline: &Timeline, mode: Mode, report: &mut Report) {
    // Per name: the value, and the accepted write that left it.
    let mut state: BTreeMap<&str, (u64, Option<&Event>)> = BTreeMap::new();
    for e in events {
        let What::Write { name, token, based_on, accepted: true } = &e.what else { continue };
        let (value, last) = state.entry(name).or_insert((0, None));
        if *based_on != *value {
            let excuse = mode == Mode::Available
                && last.is_some_and(|p| {
                    timeline
                        .separations(p.node, e.node)
                        .iter()
                        .any(|s| overlaps((s.0, s.1 + MERGE_BOUND), (p.t.saturating_sub(MERGE_BOUND), e.t)))
                });
            if excuse {
                report.excused_lost_writes += 1;
            } else {
                let by = last.map_or("nobody".to_string(), |p| {
                    format!("w{}@n{} at {:.3}s", p.worker, p.node, p.t.as_secs_f64())
                });
                report.violations.push(format!(
                    "acknowledged write lost on {name}: w{}@n{} (token {token}) wrote {} at {:.3}s, built on {based_on}, \
                     over {value} written by {by}",
                    e.worker,
                    e.node,
                    based_on + 1,
                    e.t.as_secs_f64()
                ));
            }
        }
        *value = based_on + 1;
        *last = Some(e);
    }
}

fn check_answers(events: &[Event], timeline: &Timeline, report: &mut Report) {
    let faults = timeline.faults();
    let mut invoked: BTreeMap<u64, (Duration, OpKind, usize, usize)> = BTreeMap::new();
    let mut answered: BTreeMap<u64, Duration> = BTreeMap::new();
    for e in events {
        match &e.what {
            What::Invoke { op, kind, .. } => {
                invoked.insert(*op, (e.t, *kind, e.worker, e.node));
            }
            What::Answer { op, .. } => {
                answered.insert(*op, e.t);
            }
            _ => {}
        }
    }
    for (op, (t, kind, worker, node)) in invoked {
        let until = answered.get(&op).copied().unwrap_or(timeline.end);
        let last_fault =
            faults.iter().filter(|f| overlaps(**f, (t, until + Duration::from_millis(1)))).map(|f| f.1).max();
        let deadline = (t + kind.wait()).max(last_fault.unwrap_or_default()) + ANSWER_BOUND;
        if until > deadline {
            let state = if answered.contains_key(&op) { "answered" } else { "still unanswered" };
            report.violations.push(format!(
                "request {op} ({kind:?}) of w{worker}@n{node} sent at {:.3}s {state} at {:.3}s, after its bound {:.3}s",
                t.as_secs_f64(),
                until.as_secs_f64(),
                deadline.as_secs_f64()
            ));
        }
    }
}
