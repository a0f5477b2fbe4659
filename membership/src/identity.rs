//! The identity foca gossips about: a renewable `(addr, epoch, bump, name,
//! tag)`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use swimlock_wire::NodeId;

/// Longest display name, in bytes. Keeps every header small and bounded.
pub const MAX_NAME_LEN: usize = 64;

/// foca's view of a member.
///
/// `epoch` is fixed for the life of the process; `bump` grows each time this
/// process renews its identity: when it rejoins after being declared down
/// (which is what lets a healed partition come back together without an
/// operator) and when it changes its tag. Application state is keyed by
/// [`Ident::key`] = `(epoch, addr)`, never by the whole identity, because
/// every node of a healed side renews.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawIdent")]
pub(crate) struct Ident {
    pub(crate) addr: SocketAddr,
    pub(crate) epoch: u64,
    pub(crate) bump: u64,
    pub(crate) name: String,
    /// The member's node tag (the coordinator part of its fencing tokens).
    pub(crate) tag: u16,
}

/// Wire form, checked before it becomes an [`Ident`].
#[derive(Deserialize)]
struct RawIdent {
    addr: SocketAddr,
    epoch: u64,
    bump: u64,
    name: String,
    tag: u16,
}

impl TryFrom<RawIdent> for Ident {
    type Error = &'static str;

    fn try_from(raw: RawIdent) -> Result<Self, Self::Error> {
        if raw.name.len() > MAX_NAME_LEN {
            return Err("member name longer than 64 bytes");
        }
        Ok(Ident { addr: raw.addr, epoch: raw.epoch, bump: raw.bump, name: raw.name, tag: raw.tag })
    }
}

impl Ident {
    pub(crate) fn new(me: NodeId, name: String, tag: u16) -> Ident {
        Ident { addr: me.addr, epoch: me.epoch, bump: 0, name, tag }
    }

    /// Stands for whatever process listens at a seed address. foca accepts
    /// an announce by address alone; epoch 0 is never a real member's.
    pub(crate) fn placeholder(addr: SocketAddr) -> Ident {
        Ident { addr, epoch: 0, bump: 0, name: String::new(), tag: 0 }
    }

    /// The key views and lock owners use: stable across renewals.
    pub(crate) fn key(&self) -> NodeId {
        NodeId { epoch: self.epoch, addr: self.addr }
    }

    /// Total order used to settle two identities claiming one address.
    fn rank(&self) -> (u64, u64, &str, u16) {
        (self.epoch, self.bump, &self.name, self.tag)
    }
}

impl foca::Identity for Ident {
    type Addr = SocketAddr;

    /// Never renews inside foca: a node that learns it was declared down
    /// goes `Defunct`, and [`Membership`](crate::Membership) renews it
    /// itself, at a bounded rate and past every identity it has seen at its
    /// address (see the crate docs, "One address, two identities"). foca's
    /// own renewal answered every "you are down" at once with a new identity
    /// and a gossip to three members, which a twin turned into a storm.
    fn renew(&self) -> Option<Self> {
        None
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    // A restarted process (larger epoch) beats the old one; within one
    // process the latest renewal wins. Name and tag only break exact ties so
    // the order stays strict, as foca requires.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(epoch: u64, bump: u64) -> Ident {
        Ident { addr: "10.0.0.1:7000".parse().unwrap(), epoch, bump, name: "n".into(), tag: 7 }
    }

    #[test]
    fn a_higher_bump_wins_and_keeps_the_key() {
        let a = id(5, 0);
        let b = id(5, 1);
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        assert_eq!(a.key(), b.key());
        assert_eq!(a.renew(), None, "renewals are the membership layer's");
    }

    #[test]
    fn restart_beats_any_renewal_of_the_old_process() {
        assert!(id(6, 0).win_addr_conflict(&id(5, 1000)));
        assert!(id(1, 0).win_addr_conflict(&Ident::placeholder(id(1, 0).addr)));
    }

    #[test]
    fn the_order_is_strict_even_on_equal_bumps() {
        let a = id(5, 3);
        let mut b = a.clone();
        b.tag = 8;
        assert!(b.win_addr_conflict(&a) != a.win_addr_conflict(&b));
    }

    #[test]
    fn long_names_are_rejected_on_decode_and_the_tag_travels() {
        let mut long = id(1, 0);
        long.name = "x".repeat(MAX_NAME_LEN + 1);
        let bytes = postcard::to_allocvec(&long).unwrap();
        assert!(postcard::from_bytes::<Ident>(&bytes).is_err());
        let ok = id(1, 0);
        let bytes = postcard::to_allocvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<Ident>(&bytes).unwrap(), ok);
        assert_eq!(postcard::from_bytes::<Ident>(&bytes).unwrap().tag, 7);
    }
}
