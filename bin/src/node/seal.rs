//! Sealed datagrams: every datagram a node sends is encrypted and
//! authenticated with XChaCha20-Poly1305 under the cluster key, and every
//! datagram it receives is opened (or dropped) before anything decodes it.
//!
//! Sans-I/O like the rest of the core: the per-process salt comes in
//! through [`Security::Sealed`] (from the OS CSPRNG in the agent, from the
//! run's seed in the simulator); nothing here reads randomness or a clock.
//!
//! # Nonces
//! A nonce is the process's 16-byte random salt followed by a 64-bit
//! counter that grows by one per datagram. One process is one nonce
//! stream, so no nonce repeats under a key by construction, whatever the
//! clocks or epochs do; two processes collide only if their 128-bit salts
//! do.
//!
//! # What is authenticated
//! The whole clear envelope (magic, version, suite, cluster id, key id,
//! sender, destination epoch, nonce; see [`swimlock_wire::frame`]) is
//! associated data, and so are the receiver's advertised address and a
//! SHA-256 digest of the full cluster name. A datagram therefore opens only
//! at the process it was sealed for (its address and, unless it is gossip
//! to a seed placeholder, its epoch), in the cluster it was sealed for.
//!
//! # Replays
//! [`ReplayTable`] keeps, per sender address, the sender's newest epoch,
//! its salt and a [`ReplayWindow`] over its counter (8,192 bits, as
//! WireGuard and RFC 6479): a counter seen before, or more than
//! [`REPLAY_WINDOW`] below the highest seen, or below the first one heard,
//! is `replayed`; so is anything from an older epoch than the newest seen
//! at that address, or from the same epoch with another salt (another
//! process claiming the identity). A newer epoch (a restart) starts a fresh
//! window. Freshness is checked before the destination, so an old datagram
//! replayed to a restarted receiver that has heard from the sender since is
//! `replayed` too (and `misaddressed` otherwise: its destination epoch is
//! authenticated).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use swimlock_wire::frame::{
    self, ADDR_LEN, ENVELOPE_LEN, Envelope, Kind, MAX_DATAGRAM, NONCE_LEN, SALT_LEN, Suite, TAG_LEN,
};
use swimlock_wire::{ClusterId, NodeId, WireError};
use zeroize::Zeroize;

pub use swimlock_wire::admin::KEY_LEN;

/// Counters accepted below the highest seen from a sender (the ring holds
/// 8,192 bits; the word being filled is not part of the window).
pub const REPLAY_WINDOW: u64 = WINDOW_BITS - 64;
/// Senders (addresses) whose replay state is kept; beyond it the least
/// recently heard is forgotten (counted in [`ReplayTable::evictions`]).
pub const MAX_REPLAY_PEERS: usize = 65_536;

const WINDOW_BITS: u64 = 8_192;
const WINDOW_WORDS: usize = (WINDOW_BITS / 64) as usize;
/// Associated data: envelope, receiver address, cluster name digest.
const AD_LEN: usize = ENVELOPE_LEN + ADDR_LEN + 32;

/// A cluster key: 32 random bytes. `Debug` shows its id, never its bytes;
/// the bytes are wiped when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// A key from its base64 form (standard alphabet, padded), as
    /// `swimlock keygen` prints it.
    pub fn from_base64(text: &str) -> Result<Key, KeyError> {
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim().as_bytes())
            .map_err(|_| KeyError::NotBase64)?;
        let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice())
            .map(Key)
            .map_err(|_| KeyError::Length { len: bytes.len() });
        bytes.zeroize();
        key
    }

    /// The base64 form. Only for showing a new key to its owner and for
    /// the keyring file: never log it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key's id: the first 4 bytes of a SHA-256 of the key (with a
    /// domain prefix), little-endian. Safe to show.
    pub fn id(&self) -> KeyId {
        let digest = Sha256::new().chain_update(b"swimlock key id\0").chain_update(self.0).finalize();
        KeyId(u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]))
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

/// Why a key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64 text.
    #[error("not a base64 key (make one with `swimlock keygen`)")]
    NotBase64,
    /// Not 32 bytes.
    #[error("a key is 32 bytes, this one is {len} (make one with `swimlock keygen`)")]
    Length {
        /// Bytes decoded.
        len: usize,
    },
}

/// The id of a key, shown as 8 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Why a keyring change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// Another key in the ring has the same id.
    #[error("another key with id {0} is installed")]
    IdCollision(KeyId),
    /// The key is not in the ring.
    #[error("key {0} is not installed")]
    NotInstalled(KeyId),
    /// The primary key cannot be removed.
    #[error("key {0} is the primary key; `use` another key first")]
    Primary(KeyId),
}

/// The keys a node accepts, one of which (the primary) it sends with.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<KeyId, (Key, XChaCha20Poly1305)>,
    primary: KeyId,
}

impl Keyring {
    /// A ring of one key, the primary.
    pub fn new(primary: Key) -> Keyring {
        let id = primary.id();
        let cipher = XChaCha20Poly1305::new(primary.bytes().into());
        Keyring { keys: BTreeMap::from([(id, (primary, cipher))]), primary: id }
    }

    /// Adds `key` to the keys accepted. `Ok(false)` if it was there already.
    pub fn install(&mut self, key: Key) -> Result<bool, KeyringError> {
        let id = key.id();
        match self.keys.get(&id) {
            Some((have, _)) if *have == key => Ok(false),
            Some(_) => Err(KeyringError::IdCollision(id)),
            None => {
                let cipher = XChaCha20Poly1305::new(key.bytes().into());
                self.keys.insert(id, (key, cipher));
                Ok(true)
            }
        }
    }

    /// Sends with key `id` from now on. `Ok(false)` if it already was the
    /// primary.
    pub fn use_key(&mut self, id: KeyId) -> Result<bool, KeyringError> {
        if !self.keys.contains_key(&id) {
            return Err(KeyringError::NotInstalled(id));
        }
        let changed = self.primary != id;
        self.primary = id;
        Ok(changed)
    }

    /// Stops accepting key `id`. `Ok(false)` if it was not installed;
    /// refused for the primary.
    pub fn remove(&mut self, id: KeyId) -> Result<bool, KeyringError> {
        if id == self.primary {
            return Err(KeyringError::Primary(id));
        }
        Ok(self.keys.remove(&id).is_some())
    }

    /// The key datagrams are sealed with.
    pub fn primary(&self) -> KeyId {
        self.primary
    }

    /// Every accepted key id, ascending.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.keys().copied().collect()
    }

    /// Number of keys accepted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a ring holds at least its primary key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key, primary first (for the keyring file).
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        let primary = self.keys.get(&self.primary).map(|(k, _)| k);
        let rest = self.keys.iter().filter(|(id, _)| **id != self.primary).map(|(_, (k, _))| k);
        primary.into_iter().chain(rest)
    }

    /// Whether key `id` is accepted.
    pub fn contains(&self, id: KeyId) -> bool {
        self.keys.contains_key(&id)
    }

    fn cipher(&self, id: KeyId) -> Option<&XChaCha20Poly1305> {
        self.keys.get(&id).map(|(_, c)| c)
    }
}

impl PartialEq for Keyring {
    fn eq(&self, other: &Keyring) -> bool {
        self.primary == other.primary && self.keys().eq(other.keys())
    }
}

impl Eq for Keyring {}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("primary", &self.primary).field("keys", &self.ids()).finish()
    }
}

/// How a node protects its datagrams: part of its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// Explicitly insecure: plain frames out (still naming sender and
    /// destination), and only plain frames accepted. Anyone who can reach
    /// the port is a member.
    Insecure,
    /// Sealed under the keyring's primary key; any key of the ring opens.
    Sealed {
        /// The keys.
        keyring: Keyring,
        /// Fresh for every process: the start of every nonce it uses.
        salt: [u8; SALT_LEN],
    },
}

/// Why an incoming datagram was dropped before any machine saw it. The
/// names are the `reason` label of `swimlock_datagrams_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Failed to open (forged, corrupted, sealed for another receiver or
    /// cluster), or plain where sealing is required.
    Unauthenticated,
    /// Opened, but seen before (or too old for the window, or from an
    /// older process at that address).
    Replayed,
    /// Sealed under a key this node does not hold (an insecure node holds
    /// none).
    UnknownKey,
    /// Does not decode: garbage, truncated, oversized, unknown version,
    /// suite or kind, or an authentic body that is malformed.
    Malformed,
    /// Of another cluster.
    ForeignCluster,
    /// For another process: an earlier identity at this address, or a
    /// placeholder epoch on a frame that is not gossip.
    Misaddressed,
    /// The body names another sender than the envelope proved.
    Spoofed,
}

impl DropReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Replayed => "replayed",
            DropReason::UnknownKey => "unknown_key",
            DropReason::Malformed => "malformed",
            DropReason::ForeignCluster => "foreign_cluster",
            DropReason::Misaddressed => "misaddressed",
            DropReason::Spoofed => "spoofed",
        }
    }
}

/// An opened datagram: its proven sender, its kind and its body.
#[derive(Debug)]
pub struct Opened<'a> {
    /// The sender the envelope proves (in insecure mode: claims).
    pub from: NodeId,
    /// What the body holds.
    pub kind: Kind,
    /// The body.
    pub body: &'a [u8],
}

/// The datagram protection of one node: seals what it sends, opens what
/// it receives.
#[derive(Debug)]
pub struct Sealing {
    me: NodeId,
    cluster: ClusterId,
    /// SHA-256 of the full cluster name, bound as associated data.
    cluster_digest: [u8; 32],
    mode: Mode,
    /// The sender and destination epoch of the last authentic datagram
    /// dropped as misaddressed: a newer epoch is a twin that took this
    /// address, an older one a member that knew an earlier process here.
    misaddressed: Option<(NodeId, u64)>,
}

#[derive(Debug)]
enum Mode {
    Plain,
    Sealed { keyring: Keyring, salt: [u8; SALT_LEN], counter: u64, replay: ReplayTable },
}

impl Sealing {
    /// The sender and the destination epoch of the last datagram
    /// [`Sealing::open`] dropped as misaddressed, taken once.
    pub fn take_misaddressed(&mut self) -> Option<(NodeId, u64)> {
        self.misaddressed.take()
    }

    /// Protection for node `me` of the cluster named `cluster`.
    pub fn new(me: NodeId, cluster: &str, security: Security) -> Sealing {
        let cluster_digest =
            Sha256::new().chain_update(b"swimlock cluster\0").chain_update(cluster.as_bytes()).finalize();
        let mode = match security {
            Security::Insecure => Mode::Plain,
            Security::Sealed { keyring, salt } => {
                Mode::Sealed { keyring, salt, counter: 0, replay: ReplayTable::new(MAX_REPLAY_PEERS) }
            }
        };
        Sealing {
            me,
            cluster: ClusterId::from_name(cluster),
            cluster_digest: cluster_digest.into(),
            mode,
            misaddressed: None,
        }
    }

    /// The keyring, unless insecure.
    pub fn keyring(&self) -> Option<&Keyring> {
        match &self.mode {
            Mode::Plain => None,
            Mode::Sealed { keyring, .. } => Some(keyring),
        }
    }

    /// The keyring to change, unless insecure.
    pub fn keyring_mut(&mut self) -> Option<&mut Keyring> {
        match &mut self.mode {
            Mode::Plain => None,
            Mode::Sealed { keyring, .. } => Some(keyring),
        }
    }

    /// Senders forgotten by the replay table because it was full.
    pub fn replay_evictions(&self) -> u64 {
        match &self.mode {
            Mode::Plain => 0,
            Mode::Sealed { replay, .. } => replay.evictions(),
        }
    }

    /// A datagram of `kind` for `to` (epoch 0: a seed placeholder), whose
    /// body `write_body` appends. Fails only if the body does not encode or
    /// the datagram would exceed [`MAX_DATAGRAM`].
    pub fn seal(
        &mut self,
        to: NodeId,
        kind: Kind,
        write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
    ) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(frame::TARGET_DATAGRAM);
        let mut envelope = frame::plain_envelope(self.cluster, self.me, to.epoch);
        if let Mode::Sealed { keyring, salt, counter, .. } = &self.mode {
            envelope.suite = Suite::Sealed;
            envelope.key_id = keyring.primary().0;
            envelope.nonce[..SALT_LEN].copy_from_slice(salt);
            envelope.nonce[SALT_LEN..].copy_from_slice(&counter.to_le_bytes());
        }
        envelope.write(&mut out);
        out.push(kind as u8);
        write_body(&mut out)?;
        let len = out.len() + if envelope.suite == Suite::Sealed { TAG_LEN } else { 0 };
        if len > MAX_DATAGRAM {
            return Err(WireError::TooLarge { len });
        }
        if let Mode::Sealed { keyring, counter, .. } = &mut self.mode {
            let cipher = keyring.cipher(keyring.primary()).ok_or(WireError::Encode)?;
            let ad = associated_data(&out[..ENVELOPE_LEN], to.addr, &self.cluster_digest);
            let nonce = XNonce::from(envelope.nonce);
            let tag = cipher
                .encrypt_inout_detached(&nonce, &ad, (&mut out[ENVELOPE_LEN..]).into())
                .map_err(|_| WireError::Encode)?;
            out.extend_from_slice(&tag);
            // 2^64 datagrams outlast any process; saturating keeps the
            // arithmetic total.
            *counter = counter.saturating_add(1);
        }
        Ok(out)
    }

    /// Opens `datagram` (using `scratch` for the plaintext) and checks its
    /// destination and freshness. What fails is dropped for the reason
    /// returned, before anything decodes its body.
    pub fn open<'a>(
        &mut self,
        datagram: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<Opened<'a>, DropReason> {
        let (envelope, rest) = Envelope::read(datagram, self.cluster).map_err(|e| match e {
            WireError::ForeignCluster => DropReason::ForeignCluster,
            _ => DropReason::Malformed,
        })?;
        let payload: &[u8] = match (&self.mode, envelope.suite) {
            (Mode::Plain, Suite::Plain) => rest,
            (Mode::Plain, Suite::Sealed) => return Err(DropReason::UnknownKey),
            (Mode::Sealed { .. }, Suite::Plain) => return Err(DropReason::Unauthenticated),
            (Mode::Sealed { keyring, .. }, Suite::Sealed) => {
                let cipher = keyring.cipher(KeyId(envelope.key_id)).ok_or(DropReason::UnknownKey)?;
                let Some(cut) = rest.len().checked_sub(TAG_LEN) else {
                    return Err(DropReason::Unauthenticated);
                };
                let (ciphertext, tag) = rest.split_at(cut);
                let tag = Tag::try_from(tag).map_err(|_| DropReason::Unauthenticated)?;
                scratch.clear();
                scratch.extend_from_slice(ciphertext);
                let ad = associated_data(&datagram[..ENVELOPE_LEN], self.me.addr, &self.cluster_digest);
                cipher
                    .decrypt_inout_detached(
                        &XNonce::from(envelope.nonce),
                        &ad,
                        scratch.as_mut_slice().into(),
                        &tag,
                    )
                    .map_err(|_| DropReason::Unauthenticated)?;
                scratch.as_slice()
            }
        };
        let (kind, body) = frame::split_payload(payload).map_err(|_| DropReason::Malformed)?;
        // Freshness first: an authentic datagram is remembered even if it
        // turns out to be for an earlier process here, so that its replay
        // to this process counts as what it is.
        if let Mode::Sealed { replay, .. } = &mut self.mode {
            let (salt, counter) = split_nonce(&envelope.nonce);
            if !replay.accept(envelope.from, salt, counter) {
                return Err(DropReason::Replayed);
            }
        }
        let placeholder = envelope.to_epoch == 0 && kind == Kind::Gossip;
        if envelope.to_epoch != self.me.epoch && !placeholder {
            self.misaddressed = Some((envelope.from, envelope.to_epoch));
            return Err(DropReason::Misaddressed);
        }
        Ok(Opened { from: envelope.from, kind, body })
    }
}

fn associated_data(envelope: &[u8], receiver: SocketAddr, cluster_digest: &[u8; 32]) -> [u8; AD_LEN] {
    let mut ad = [0u8; AD_LEN];
    ad[..ENVELOPE_LEN].copy_from_slice(envelope);
    ad[ENVELOPE_LEN..ENVELOPE_LEN + ADDR_LEN].copy_from_slice(&frame::encode_addr(receiver));
    ad[ENVELOPE_LEN + ADDR_LEN..].copy_from_slice(cluster_digest);
    ad
}

fn split_nonce(nonce: &[u8; NONCE_LEN]) -> ([u8; SALT_LEN], u64) {
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&nonce[..SALT_LEN]);
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&nonce[SALT_LEN..]);
    (salt, u64::from_le_bytes(counter))
}

/// A sliding window over one sender's counters (RFC 6479): a ring of
/// 8,192 bits, one per counter, and the highest counter seen. Unlike RFC
/// 6479, counters below the first one heard are refused too: a receiver
/// that (re)starts knows nothing older, and a datagram sent before the
/// sender's first one here can only be a replay or a straggler, which the
/// protocols retransmit anyway.
#[derive(Clone)]
pub struct ReplayWindow {
    top: u64,
    first: u64,
    bits: Box<[u64; WINDOW_WORDS]>,
}

impl ReplayWindow {
    /// A window that has seen only `first`.
    pub fn new(first: u64) -> ReplayWindow {
        let mut w = ReplayWindow { top: first, first, bits: Box::new([0; WINDOW_WORDS]) };
        w.accept(first);
        w
    }

    /// Whether `n` is new (and then remembers it): false for a counter seen
    /// before, below the first one heard, or [`REPLAY_WINDOW`] or more below
    /// the highest seen.
    pub fn accept(&mut self, n: u64) -> bool {
        if n < self.first {
            return false;
        }
        if n > self.top {
            // Clear the words the window slides over (all of them at most).
            let (old, new) = (self.top / 64, n / 64);
            for w in (old + 1)..=new.min(old + WINDOW_WORDS as u64) {
                self.bits[(w % WINDOW_WORDS as u64) as usize] = 0;
            }
            self.top = n;
        } else if self.top - n >= REPLAY_WINDOW {
            return false;
        }
        let word = &mut self.bits[((n / 64) % WINDOW_WORDS as u64) as usize];
        let bit = 1u64 << (n % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        true
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow").field("top", &self.top).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
struct Sender {
    epoch: u64,
    salt: [u8; SALT_LEN],
    window: ReplayWindow,
    /// When it was last heard, on the table's own clock (for eviction).
    heard: u64,
}

/// Replay state per sender address, bounded: when full, the sender heard
/// least recently is forgotten.
#[derive(Clone, Debug)]
pub struct ReplayTable {
    senders: BTreeMap<SocketAddr, Sender>,
    capacity: usize,
    clock: u64,
    evictions: u64,
}

impl ReplayTable {
    /// A table for at most `capacity` senders.
    pub fn new(capacity: usize) -> ReplayTable {
        ReplayTable { senders: BTreeMap::new(), capacity: capacity.max(1), clock: 0, evictions: 0 }
    }

    /// Whether an authentic datagram from `from` with this nonce is fresh
    /// (and then remembers it). Call only after the datagram opened.
    pub fn accept(&mut self, from: NodeId, salt: [u8; SALT_LEN], counter: u64) -> bool {
        self.clock += 1;
        if let Some(s) = self.senders.get_mut(&from.addr) {
            if from.epoch < s.epoch || (from.epoch == s.epoch && salt != s.salt) {
                return false;
            }
            if from.epoch > s.epoch {
                // A restarted process at this address: a fresh window.
                *s =
                    Sender { epoch: from.epoch, salt, window: ReplayWindow::new(counter), heard: self.clock };
                return true;
            }
            s.heard = self.clock;
            return s.window.accept(counter);
        }
        if self.senders.len() >= self.capacity {
            // A full scan, only when a new sender finds the table full.
            if let Some(oldest) = self.senders.iter().min_by_key(|(_, s)| s.heard).map(|(a, _)| *a) {
                self.senders.remove(&oldest);
                self.evictions += 1;
            }
        }
        let sender =
            Sender { epoch: from.epoch, salt, window: ReplayWindow::new(counter), heard: self.clock };
        self.senders.insert(from.addr, sender);
        true
    }

    /// Senders forgotten because the table was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Senders remembered.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether no sender is remembered.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

#[cfg(test)]
#[path = "seal_tests.rs"]
mod tests;
