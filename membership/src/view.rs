//! What the membership layer reports: views and merge views.

use swimlock_wire::NodeId;

/// One member of a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's key: start stamp and address. Stable while the process
    /// lives, even when foca renews its gossip identity.
    pub id: NodeId,
    /// Display name the member chose (at most 64 bytes).
    pub name: String,
    /// The member's node tag, the coordinator part of the fencing tokens
    /// it grants. Gossiped with its identity; a change (see
    /// [`Membership::set_tag`](crate::Membership::set_tag)) installs a new
    /// view on every node.
    pub tag: u16,
}

/// An installed view: the live members as this node sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Local view number: grows by one per installed view on this node.
    /// Different nodes number differently; compare views with
    /// [`View::digest`].
    pub id: u64,
    /// The members, oldest first (sorted by [`NodeId`]); always contains
    /// this node.
    pub members: Vec<Member>,
}

impl View {
    /// The oldest member, which coordinates (`None` only for an empty view,
    /// which this crate never installs).
    pub fn coordinator(&self) -> Option<&Member> {
        self.members.first()
    }

    /// FNV-1a (64 bit) over the member ids in view order: equal on every
    /// node that has the same members, whatever the local view ids.
    ///
    /// Per member it hashes the epoch (8 bytes little endian), an address
    /// family byte (4 or 6), the IP octets and the port (2 bytes little
    /// endian). Names and tags are not hashed.
    pub fn digest(&self) -> u64 {
        swimlock_wire::view_digest(self.members.iter().map(|m| &m.id))
    }

    /// The member ids, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|m| m.id)
    }

    /// Whether `id` is a member of this view.
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.binary_search_by(|m| m.id.cmp(&id)).is_ok()
    }
}

/// A change of the installed view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The member set changed by joins and departures only.
    View(View),
    /// Members that were apart came back (members this node had seen go
    /// down returned, or this node itself was declared down and rejoined).
    /// The lock layer must reconcile. The view may have the same members as
    /// the previous one (a paused node that rejoined).
    Merge {
        /// The new view.
        view: View,
        /// The groups that were apart, as this node best knows them: the
        /// members that stayed with this node versus those that came back
        /// (or, when only this node rejoined, this node versus the others).
        /// Each sorted oldest first; groups ordered by their oldest member.
        subgroups: Vec<Vec<NodeId>>,
    },
}

impl Event {
    /// The view this event installs.
    pub fn view(&self) -> &View {
        match self {
            Event::View(v) | Event::Merge { view: v, .. } => v,
        }
    }

    /// Whether this is a merge view.
    pub fn is_merge(&self) -> bool {
        matches!(self, Event::Merge { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn member(epoch: u64, port: u16) -> Member {
        Member {
            id: NodeId { epoch, addr: SocketAddr::from(([10, 0, 0, 1], port)) },
            name: format!("n{port}"),
            tag: port,
        }
    }

    #[test]
    fn digest_depends_on_ids_only() {
        let a = View { id: 1, members: vec![member(1, 1), member(2, 2)] };
        let mut b = a.clone();
        b.id = 9;
        b.members[0].name = "other".into();
        b.members[0].tag = 99;
        assert_eq!(a.digest(), b.digest());
        let c = View { id: 1, members: vec![member(1, 1), member(3, 2)] };
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.coordinator().unwrap().id, member(1, 1).id);
        assert!(a.contains(member(2, 2).id));
        assert!(!a.contains(member(3, 2).id));
    }
}
