//! Sealing and opening, byte by byte: what opens, what does not, and why.

use std::collections::HashMap;

use swimlock_wire::frame::{OVERHEAD, SALT_LEN};

use super::*;

const CLUSTER: &str = "seal-test";

fn key(b: u8) -> Key {
    Key::from_bytes([b; KEY_LEN])
}

fn node(port: u16, epoch: u64) -> NodeId {
    NodeId { epoch, addr: SocketAddr::from(([10, 0, 0, 1], port)) }
}

fn sealed(me: NodeId, keyring: Keyring, salt: u8) -> Sealing {
    Sealing::new(me, CLUSTER, Security::Sealed { keyring, salt: [salt; SALT_LEN] })
}

/// A sender (node 1) and a receiver (node 2) sharing key 1.
fn pair() -> (Sealing, Sealing) {
    (sealed(node(1, 10), Keyring::new(key(1)), 1), sealed(node(2, 20), Keyring::new(key(1)), 2))
}

fn seal(s: &mut Sealing, to: NodeId, kind: Kind, body: &[u8]) -> Vec<u8> {
    s.seal(to, kind, |out| {
        out.extend_from_slice(body);
        Ok(())
    })
    .unwrap()
}

fn open(r: &mut Sealing, datagram: &[u8]) -> Result<(NodeId, Kind, Vec<u8>), DropReason> {
    let mut scratch = Vec::new();
    r.open(datagram, &mut scratch).map(|o| (o.from, o.kind, o.body.to_vec()))
}

#[test]
fn a_sealed_datagram_opens_at_its_receiver_only_once() {
    let (mut a, mut b) = pair();
    let d = seal(&mut a, node(2, 20), Kind::Lock, b"unlock orders");
    assert_eq!(d.len(), OVERHEAD + 13);
    assert!(!d.windows(6).any(|w| w == b"unlock"), "the body travels encrypted");
    assert_eq!(open(&mut b, &d), Ok((node(1, 10), Kind::Lock, b"unlock orders".to_vec())));
    assert_eq!(open(&mut b, &d), Err(DropReason::Replayed));
    // The next datagram has the next nonce and opens.
    let next = seal(&mut a, node(2, 20), Kind::Gossip, b"ping");
    assert_ne!(d[53..77], next[53..77], "nonces differ");
    assert_eq!(d[53..53 + SALT_LEN], next[53..53 + SALT_LEN], "one salt per process");
    assert_eq!(open(&mut b, &next).map(|o| o.1), Ok(Kind::Gossip));
}

#[test]
fn every_bit_flip_fails_to_open() {
    let (mut a, mut b) = pair();
    let d = seal(&mut a, node(2, 20), Kind::Lock, b"a lock frame of some length");
    let mut reasons: BTreeMap<DropReason, usize> = BTreeMap::new();
    for bit in 0..d.len() * 8 {
        let mut flipped = d.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let got = open(&mut b, &flipped).expect_err("a flipped datagram never opens");
        if bit / 8 >= ENVELOPE_LEN {
            assert_eq!(got, DropReason::Unauthenticated, "bit {bit}");
        }
        *reasons.entry(got).or_default() += 1;
    }
    // Flips in magic, version, suite, cluster id and address family are
    // refused before the tag is checked; key id flips name unknown keys.
    assert_eq!(reasons[&DropReason::UnknownKey], 32);
    // Checked before the tag: magic, version, suite, cluster id (14 bytes),
    // key id (4), address family (1) and IPv4 padding (12).
    assert!(reasons[&DropReason::Unauthenticated] >= (d.len() - 31) * 8, "{reasons:?}");
    assert_eq!(open(&mut b, &d).map(|o| o.0), Ok(node(1, 10)), "nothing was remembered");
}

#[test]
fn truncated_and_extended_datagrams_fail_to_open() {
    let (mut a, mut b) = pair();
    let d = seal(&mut a, node(2, 20), Kind::Lock, b"body");
    for len in 0..d.len() {
        assert!(open(&mut b, &d[..len]).is_err(), "prefix of {len} bytes");
    }
    let mut longer = d.clone();
    longer.push(0);
    assert_eq!(open(&mut b, &longer), Err(DropReason::Unauthenticated));
    assert!(open(&mut b, &d).is_ok());
}

#[test]
fn another_cluster_receiver_or_destination_epoch_fails() {
    let (mut a, _) = pair();
    let to = node(2, 20);
    let d = seal(&mut a, to, Kind::Lock, b"x");

    let mut other_cluster =
        Sealing::new(to, "another", Security::Sealed { keyring: Keyring::new(key(1)), salt: [2; SALT_LEN] });
    assert_eq!(open(&mut other_cluster, &d), Err(DropReason::ForeignCluster));
    // Same cluster id on the wire, another full name: the digest in the
    // associated data tells them apart.
    other_cluster.cluster = ClusterId::from_name(CLUSTER);
    assert_eq!(open(&mut other_cluster, &d), Err(DropReason::Unauthenticated));

    let mut other_address = sealed(node(3, 20), Keyring::new(key(1)), 3);
    assert_eq!(open(&mut other_address, &d), Err(DropReason::Unauthenticated));

    let mut restarted = sealed(node(2, 21), Keyring::new(key(1)), 4);
    assert_eq!(open(&mut restarted, &d), Err(DropReason::Misaddressed));

    let mut other_key = sealed(to, Keyring::new(key(9)), 5);
    assert_eq!(open(&mut other_key, &d), Err(DropReason::UnknownKey));
}

#[test]
fn a_placeholder_destination_is_for_gossip_only() {
    let (mut a, mut b) = pair();
    let placeholder = node(2, 0);
    let gossip = seal(&mut a, placeholder, Kind::Gossip, b"announce");
    assert_eq!(open(&mut b, &gossip).map(|o| o.1), Ok(Kind::Gossip));
    for kind in [Kind::Lock, Kind::Admin] {
        let d = seal(&mut a, placeholder, kind, b"x");
        assert_eq!(open(&mut b, &d), Err(DropReason::Misaddressed), "{kind:?}");
    }
}

#[test]
fn plain_and_sealed_nodes_do_not_mix() {
    let (mut a, mut b) = pair();
    let mut plain_a = Sealing::new(node(1, 10), CLUSTER, Security::Insecure);
    let mut plain_b = Sealing::new(node(2, 20), CLUSTER, Security::Insecure);
    let plain = seal(&mut plain_a, node(2, 20), Kind::Lock, b"hello");
    assert_eq!(plain.len(), frame::HEADER_LEN + 5);
    assert_eq!(open(&mut b, &plain), Err(DropReason::Unauthenticated));
    assert_eq!(open(&mut plain_b, &plain), Ok((node(1, 10), Kind::Lock, b"hello".to_vec())));
    let sealed = seal(&mut a, node(2, 20), Kind::Lock, b"hello");
    assert_eq!(open(&mut plain_b, &sealed), Err(DropReason::UnknownKey));
    assert_eq!(open(&mut plain_b, &plain[..ENVELOPE_LEN]), Err(DropReason::Malformed));
    // Insecure mode still drops what is for another process.
    let stale = seal(&mut plain_a, node(2, 19), Kind::Lock, b"x");
    assert_eq!(open(&mut plain_b, &stale), Err(DropReason::Misaddressed));
}

#[test]
fn garbage_and_foreign_envelopes_are_malformed_or_foreign() {
    let (_, mut b) = pair();
    assert_eq!(open(&mut b, b""), Err(DropReason::Malformed));
    assert_eq!(open(&mut b, &[0xff; 200]), Err(DropReason::Malformed));
    assert_eq!(open(&mut b, &vec![0; MAX_DATAGRAM + 1]), Err(DropReason::Malformed));
    let mut foreign = Sealing::new(node(1, 10), "elsewhere", Security::Insecure);
    let d = seal(&mut foreign, node(2, 20), Kind::Lock, b"x");
    assert_eq!(open(&mut b, &d), Err(DropReason::ForeignCluster));
}

#[test]
fn window_edges_duplicates_too_old_and_reordered() {
    let mut w = ReplayWindow::new(100);
    assert!(!w.accept(100), "duplicate");
    assert!(!w.accept(99) && !w.accept(0), "below the first counter heard");
    assert!(w.accept(105) && w.accept(101) && w.accept(104), "reordered, once each");
    assert!(!w.accept(101) && !w.accept(105));
    let top = 100_000;
    assert!(w.accept(top), "a jump ahead");
    assert!(!w.accept(top - REPLAY_WINDOW), "just too old");
    assert!(w.accept(top - REPLAY_WINDOW + 1), "the oldest still inside");
    assert!(!w.accept(top - REPLAY_WINDOW + 1));
    // Reordered within the window: every counter of a shuffled run once.
    let mut w = ReplayWindow::new(0);
    let mut order: Vec<u64> = (1..=5_000).collect();
    order.reverse();
    order.rotate_left(1_234);
    for &n in &order {
        assert!(w.accept(n), "{n}");
    }
    for &n in &order {
        assert!(!w.accept(n), "{n} again");
    }
    // Sliding by less than a ring clears only the words passed over.
    let mut w = ReplayWindow::new(10);
    assert!(w.accept(10 + 64 * 3 + 5));
    assert!(!w.accept(10), "kept");
    assert!(w.accept(11), "never seen");
    // Sliding by more than the ring forgets everything older.
    assert!(w.accept(u64::MAX / 2));
    assert!(!w.accept(10) && !w.accept(11) && !w.accept(u64::MAX / 2));
    assert!(w.accept(u64::MAX / 2 - 1));
}

#[test]
fn older_epochs_and_other_salts_are_replays_newer_epochs_start_over() {
    let mut t = ReplayTable::new(16);
    let a = node(1, 10);
    assert!(t.accept(a, [1; SALT_LEN], 5_000));
    assert!(!t.accept(a, [9; SALT_LEN], 6_000), "same epoch, another salt");
    assert!(!t.accept(NodeId { epoch: 9, ..a }, [9; SALT_LEN], 0), "older epoch");
    let restarted = NodeId { epoch: 11, ..a };
    assert!(t.accept(restarted, [2; SALT_LEN], 0), "a restart starts a fresh window");
    assert!(!t.accept(a, [1; SALT_LEN], 5_001), "the old process is over");
    assert!(!t.accept(restarted, [2; SALT_LEN], 0));
    assert!(t.accept(restarted, [2; SALT_LEN], 1));
    assert_eq!(t.len(), 1);
}

#[test]
fn the_replay_table_is_bounded_and_forgets_the_least_recent() {
    let mut t = ReplayTable::new(3);
    for port in 1..=3 {
        assert!(t.accept(node(port, 1), [0; SALT_LEN], 0));
    }
    assert!(t.accept(node(1, 1), [0; SALT_LEN], 1), "node 1 heard again");
    assert!(t.accept(node(4, 1), [0; SALT_LEN], 0));
    assert_eq!((t.len(), t.evictions()), (3, 1));
    // Node 2 was forgotten (its replay opens again); node 1 was not.
    assert!(!t.accept(node(1, 1), [0; SALT_LEN], 1));
    assert!(t.accept(node(2, 1), [0; SALT_LEN], 0));
}

#[test]
fn keys_of_the_ring_are_all_accepted_during_a_rotation() {
    let (mut a, mut b) = pair();
    let mut c = sealed(node(3, 30), Keyring::new(key(1)), 3);
    for s in [&mut a, &mut b, &mut c] {
        assert_eq!(s.keyring_mut().unwrap().install(key(2)), Ok(true));
        assert_eq!(s.keyring_mut().unwrap().install(key(2)), Ok(false), "idempotent");
    }
    // `a` sends with the new key, `c` still with the old: both open at b.
    a.keyring_mut().unwrap().use_key(key(2).id()).unwrap();
    let new = seal(&mut a, node(2, 20), Kind::Lock, b"new");
    let old = seal(&mut c, node(2, 20), Kind::Lock, b"old");
    assert_eq!(Envelope::peek_key_id(&new), Some(key(2).id().0));
    assert_eq!(Envelope::peek_key_id(&old), Some(key(1).id().0));
    assert!(open(&mut b, &new).is_ok() && open(&mut b, &old).is_ok());
    // Once b removed the old key, what is sealed with it no longer opens.
    let b_ring = b.keyring_mut().unwrap();
    assert_eq!(b_ring.remove(key(1).id()), Err(KeyringError::Primary(key(1).id())));
    b_ring.use_key(key(2).id()).unwrap();
    assert_eq!(b_ring.remove(key(1).id()), Ok(true));
    assert_eq!(b_ring.remove(key(1).id()), Ok(false));
    let old = seal(&mut c, node(2, 20), Kind::Lock, b"old");
    assert_eq!(open(&mut b, &old), Err(DropReason::UnknownKey));
    assert_eq!(b.keyring().unwrap().ids(), vec![key(2).id()]);
}

#[test]
fn keyring_refuses_two_keys_with_one_id_and_unknown_keys() {
    // Find two keys whose 32-bit ids collide (a birthday search).
    let mut seen: HashMap<KeyId, u64> = HashMap::new();
    let bytes = |i: u64| {
        let mut b = [0u8; KEY_LEN];
        b[..8].copy_from_slice(&i.to_le_bytes());
        Key::from_bytes(b)
    };
    let (first, second) =
        (0u64..).find_map(|i| seen.insert(bytes(i).id(), i).map(|j| (j, i))).expect("a collision exists");
    let mut ring = Keyring::new(bytes(first));
    let id = bytes(first).id();
    assert_eq!(ring.install(bytes(second)), Err(KeyringError::IdCollision(id)));
    assert_eq!(ring.use_key(KeyId(id.0 ^ 1)), Err(KeyringError::NotInstalled(KeyId(id.0 ^ 1))));
    assert_eq!(ring.len(), 1);
}

#[test]
fn keys_read_and_show_as_base64_and_never_in_debug() {
    let k = key(0xAB);
    let text = k.to_base64();
    assert_eq!(text.len(), 44);
    assert_eq!(Key::from_base64(&format!(" {text}\n")), Ok(k.clone()));
    assert_eq!(Key::from_base64("not base64!"), Err(KeyError::NotBase64));
    assert_eq!(Key::from_base64("AAAA"), Err(KeyError::Length { len: 3 }));
    let mut ring = Keyring::new(k.clone());
    ring.install(key(0xCD)).unwrap();
    let shown = format!("{k:?} {ring:?} {:?}", Security::Sealed { keyring: ring.clone(), salt: [0; 16] });
    assert!(!shown.contains(&text) && !shown.contains("171") && !shown.contains("ab, "), "{shown}");
    assert!(shown.contains(&k.id().to_string()));
    let keys: Vec<KeyId> = ring.keys().map(Key::id).collect();
    assert_eq!(keys[0], k.id(), "primary first");
}
