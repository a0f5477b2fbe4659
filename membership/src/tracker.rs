//! Turns foca's stream of member changes into debounced views, and tells a
//! merge from a join.
//!
//! Rule: a `MemberUp` of a key this node saw go down, or this node's own
//! `Rejoin`, makes the next installed view a merge. An unknown key is a join
//! (a restarted process has a new epoch, hence a new key). A rename that
//! keeps the key changes nothing, unless it changes the member's tag: then
//! a plain view with the new tag is installed. A view is installed once the
//! live set has been unchanged for `view_settle` (or has been changing for
//! `view_max_delay`), so a heal cascade yields one merge view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use foca::OwnedNotification;
use swimlock_wire::NodeId;

use crate::identity::Ident;
use crate::view::{Event, Member, View};

/// Cap on remembered down keys; beyond it the oldest epochs are forgotten.
/// Restarts replace keys (one live process per address), so this is only a
/// guard against unbounded growth from address churn.
const MAX_DOWN_SEEN: usize = 4096;

/// What a view shows of a member besides its key: name and tag.
type Shown = (String, u16);

#[derive(Debug)]
pub(crate) struct ViewTracker {
    me: NodeId,
    mine: Shown,
    installed: View,
    next_view_id: u64,
    /// Latest live set (including this node), as foca reports it.
    live: BTreeMap<NodeId, Shown>,
    /// When `live` last changed.
    changed_at: Duration,
    /// Since when `live` has differed from `installed` (or a rejoin waits).
    unsettled_since: Option<Duration>,
    /// Keys this node has seen go down and not come back yet.
    down_seen: BTreeSet<NodeId>,
    /// A down key came back since the last install.
    returned: bool,
    /// This node rejoined since the last install.
    rejoined: bool,
}

impl ViewTracker {
    pub(crate) fn new(me: NodeId, my_name: String, my_tag: u16) -> ViewTracker {
        let mine = (my_name, my_tag);
        let alone = BTreeMap::from([(me, mine.clone())]);
        ViewTracker {
            me,
            installed: View { id: 0, members: to_members(&alone) },
            mine,
            next_view_id: 1,
            live: alone,
            changed_at: Duration::ZERO,
            unsettled_since: None,
            down_seen: BTreeSet::new(),
            returned: false,
            rejoined: false,
        }
    }

    pub(crate) fn installed(&self) -> &View {
        &self.installed
    }

    /// This node's tag changed: shown at once in the installed view (the
    /// caller acted on it already), so it does not make a new view here.
    pub(crate) fn set_my_tag(&mut self, tag: u16) {
        self.mine.1 = tag;
        self.live.insert(self.me, self.mine.clone());
        for m in self.installed.members.iter_mut().filter(|m| m.id == self.me) {
            m.tag = tag;
        }
    }

    /// This node renewed its identity after being declared down: the next
    /// view is a merge, installed once the renewal cascade has settled.
    pub(crate) fn on_rejoin(&mut self, now: Duration) {
        self.rejoined = true;
        self.changed_at = now;
    }

    /// Installs the first view (this node alone) and returns it.
    pub(crate) fn install_initial(&mut self) -> Event {
        let view = self.next_view(to_members(&self.live));
        self.installed = view.clone();
        Event::View(view)
    }

    /// Records what a foca notification says about merges. Returns true when
    /// it is a sign of a merge (a down member returned, or we rejoined).
    pub(crate) fn on_notification(&mut self, now: Duration, note: &OwnedNotification<Ident>) -> bool {
        match note {
            OwnedNotification::MemberUp(id) => {
                let returned = self.down_seen.remove(&id.key());
                self.returned |= returned;
                // An older process at this address can never come back.
                self.down_seen.retain(|k| k.addr != id.addr || k.epoch > id.epoch);
                returned
            }
            OwnedNotification::MemberDown(id) => {
                self.down_seen.insert(id.key());
                if self.down_seen.len() > MAX_DOWN_SEEN {
                    let oldest = *self.down_seen.first().expect("set is larger than the cap");
                    self.down_seen.remove(&oldest);
                }
                false
            }
            OwnedNotification::Rejoin(_) => {
                // Not sent by foca any more (the membership layer renews,
                // see `on_rejoin`); kept for completeness.
                self.on_rejoin(now);
                true
            }
            _ => false,
        }
    }

    /// Feeds the current live set (without this node).
    pub(crate) fn observe<'a>(&mut self, now: Duration, others: impl Iterator<Item = &'a Ident>) {
        let mut live: BTreeMap<NodeId, Shown> = others.map(|i| (i.key(), (i.name.clone(), i.tag))).collect();
        live.insert(self.me, self.mine.clone());
        if !same_keys_and_tags(&live, &self.live) {
            self.changed_at = now;
        }
        self.live = live;
        let tags_differ = !self.live.values().map(|s| s.1).eq(self.installed.members.iter().map(|m| m.tag));
        let differs = !self.live.keys().copied().eq(self.installed.ids()) || tags_differ || self.rejoined;
        self.unsettled_since = match (differs, self.unsettled_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
        };
        if !differs {
            // A member that went down and came back between two installs
            // changed nothing anyone acted on.
            self.returned = false;
        }
    }

    /// When the pending view (if any) will be installed.
    pub(crate) fn deadline(&self, settle: Duration, max_delay: Duration) -> Option<Duration> {
        let since = self.unsettled_since?;
        Some((self.changed_at + settle).min(since + max_delay))
    }

    /// Installs the pending view if it is due.
    pub(crate) fn poll(&mut self, now: Duration, settle: Duration, max_delay: Duration) -> Option<Event> {
        if now < self.deadline(settle, max_delay)? {
            return None;
        }
        let previous = std::mem::replace(&mut self.installed, View { id: 0, members: vec![] });
        let view = self.next_view(to_members(&self.live));
        let merge = self.returned || self.rejoined;
        let event = if merge {
            Event::Merge { subgroups: self.subgroups(&previous, &view), view: view.clone() }
        } else {
            Event::View(view.clone())
        };
        self.installed = view;
        self.unsettled_since = None;
        self.returned = false;
        self.rejoined = false;
        Some(event)
    }

    /// Best knowledge of who was apart: those who stayed in this node's
    /// view versus those who came in; if nobody came in, this node rejoined
    /// alone, so it is this node versus the rest.
    fn subgroups(&self, previous: &View, view: &View) -> Vec<Vec<NodeId>> {
        let (stayed, came): (Vec<NodeId>, Vec<NodeId>) = view.ids().partition(|id| previous.contains(*id));
        let mut groups = if came.is_empty() {
            let (me, rest) = view.ids().partition(|id| *id == self.me);
            vec![me, rest]
        } else {
            vec![stayed, came]
        };
        groups.retain(|g| !g.is_empty());
        groups.sort();
        groups
    }

    fn next_view(&mut self, members: Vec<Member>) -> View {
        let id = self.next_view_id;
        self.next_view_id += 1;
        View { id, members }
    }
}

fn same_keys_and_tags(a: &BTreeMap<NodeId, Shown>, b: &BTreeMap<NodeId, Shown>) -> bool {
    a.iter().map(|(k, s)| (k, s.1)).eq(b.iter().map(|(k, s)| (k, s.1)))
}

fn to_members(live: &BTreeMap<NodeId, Shown>) -> Vec<Member> {
    live.iter().map(|(id, (name, tag))| Member { id: *id, name: name.clone(), tag: *tag }).collect()
}
