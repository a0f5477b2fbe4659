//! Node tags unique in a view.
//!
//! A fencing token is `term | tag | seq`, the tag being its coordinator's:
//! two coordinators with one tag and one term would issue identical tokens.
//! Default tags are a 16-bit hash of the address, which collide often
//! (about 3% of 64-member clusters have a pair). So a collision resolves
//! itself: when an older member (smaller [`NodeId`]) of a view has this
//! node's tag, this node takes the first tag, counting up from a hash of
//! its own id, that no member of the view has. The oldest member of a
//! view (its coordinator) never changes its tag, and a node changes only
//! for an older one, so tags settle as views do; a node never coordinates
//! under a tag an older member of its view has, because it changes before
//! the lock machine sees the view.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use swimlock_membership::View;
use swimlock_wire::NodeId;

/// The tag `me` should change to in `view` when an older member has its
/// tag `mine`; `None` when `mine` is fine.
pub fn replacement(me: NodeId, mine: u16, view: &View) -> Option<u16> {
    if !view.members.iter().any(|m| m.id < me && m.tag == mine) {
        return None;
    }
    let taken: BTreeSet<u16> = view.members.iter().filter(|m| m.id != me).map(|m| m.tag).collect();
    Some(free_tag(me, &taken))
}

/// The first tag not in `taken`, counting up (wrapping) from a hash of
/// `me`: deterministic, and two nodes that must both move are unlikely to
/// pick the same one. `taken` always leaves one free unless it holds all
/// 65,536 tags.
pub fn free_tag(me: NodeId, taken: &BTreeSet<u16>) -> u16 {
    let start = hash16(me);
    (0..=u16::MAX).map(|i| start.wrapping_add(i)).find(|t| !taken.contains(t)).unwrap_or(start)
}

/// FNV-1a (64 bit) over the epoch and the address, folded to 16 bits.
fn hash16(id: NodeId) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut write = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    write(&id.epoch.to_le_bytes());
    match id.addr {
        SocketAddr::V4(a) => write(&a.ip().octets()),
        SocketAddr::V6(a) => write(&a.ip().octets()),
    }
    write(&id.addr.port().to_le_bytes());
    (h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48)) as u16
}

#[cfg(test)]
mod tests {
    use swimlock_membership::Member;

    use super::*;

    fn id(epoch: u64, port: u16) -> NodeId {
        NodeId { epoch, addr: SocketAddr::from(([10, 0, 0, 1], port)) }
    }

    fn view(members: &[(NodeId, u16)]) -> View {
        let mut members: Vec<Member> =
            members.iter().map(|&(id, tag)| Member { id, name: String::new(), tag }).collect();
        members.sort_by_key(|m| m.id);
        View { id: 1, members }
    }

    #[test]
    fn only_the_younger_of_two_with_one_tag_moves() {
        let (old, young) = (id(1, 1), id(2, 2));
        let v = view(&[(old, 7), (young, 7)]);
        assert_eq!(replacement(old, 7, &v), None);
        let new = replacement(young, 7, &v).expect("the younger moves");
        assert_ne!(new, 7);
        assert_eq!(replacement(young, new, &view(&[(old, 7), (young, new)])), None);
    }

    #[test]
    fn a_younger_member_with_my_tag_is_not_my_problem() {
        let v = view(&[(id(1, 1), 5), (id(2, 2), 9), (id(3, 3), 9)]);
        assert_eq!(replacement(id(2, 2), 9, &v), None);
        assert!(replacement(id(3, 3), 9, &v).is_some());
    }

    #[test]
    fn the_new_tag_is_free_in_the_view_and_deterministic() {
        let me = id(9, 9);
        let start = hash16(me);
        // Every tag from the hash up for a while is taken, mine included.
        let mut members: Vec<(NodeId, u16)> =
            (0..20).map(|i| (id(1, 100 + i), start.wrapping_add(i))).collect();
        members.push((me, start));
        let v = view(&members);
        let new = replacement(me, start, &v).unwrap();
        assert_eq!(new, start.wrapping_add(20));
        assert!(v.members.iter().all(|m| m.tag != new));
        assert_eq!(replacement(me, start, &v), Some(new), "one view, one choice");
    }

    #[test]
    fn probing_wraps_past_the_top() {
        let me = id(4, 4);
        let taken: BTreeSet<u16> = (0..=u16::MAX).filter(|&t| t != 3).collect();
        assert_eq!(free_tag(me, &taken), 3);
        assert_eq!(free_tag(me, &BTreeSet::new()), hash16(me));
    }

    #[test]
    fn different_ids_start_apart() {
        let starts: BTreeSet<u16> = (0..64).map(|i| hash16(id(1_000 + i, 7000))).collect();
        assert!(starts.len() >= 60, "{} distinct starts of 64", starts.len());
    }
}
