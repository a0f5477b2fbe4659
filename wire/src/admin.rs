//! Administration messages between members: cluster-wide keyring changes.
//!
//! They travel sealed like every other frame (kind
//! [`Kind::Admin`](crate::Kind::Admin)), so only a holder of a cluster key
//! can send one. A request is repeated until its answer arrives or the
//! asking node gives up; every operation is idempotent, so a repeat that
//! finds the change already made is answered the same way.

use serde::{Deserialize, Serialize};

use crate::WireError;

/// Length of a cluster key, in bytes.
pub const KEY_LEN: usize = 32;

/// One administration message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminMsg {
    /// Apply `op` to your keyring (or just list it) and answer.
    KeyringReq {
        /// Chosen by the asking node, echoed in the answer.
        id: u64,
        /// What to do.
        op: KeyringOp,
    },
    /// The answer to a [`AdminMsg::KeyringReq`].
    KeyringRsp {
        /// The request's id.
        id: u64,
        /// The member's keyring after the operation, or why it refused.
        result: KeyringResult,
    },
}

/// A keyring operation. Keys are named by their id except when installed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyringOp {
    /// Change nothing; report the keyring.
    List,
    /// Add this key to the keys accepted.
    Install {
        /// The key's bytes.
        key: [u8; KEY_LEN],
    },
    /// Send with this (installed) key from now on.
    Use {
        /// Its id.
        key_id: u32,
    },
    /// Stop accepting this key (refused while it is the primary).
    Remove {
        /// Its id.
        key_id: u32,
    },
}

/// Key bytes never go to logs: a `Debug` of an install shows no key.
impl std::fmt::Debug for KeyringOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyringOp::List => f.write_str("List"),
            KeyringOp::Install { .. } => f.write_str("Install { key: <redacted> }"),
            KeyringOp::Use { key_id } => write!(f, "Use {{ key_id: {key_id:08x} }}"),
            KeyringOp::Remove { key_id } => write!(f, "Remove {{ key_id: {key_id:08x} }}"),
        }
    }
}

/// A member's answer to a keyring operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyringResult {
    /// Done (or nothing to do): the ids of the keys now accepted, in
    /// ascending order, and the one used to send.
    Keys {
        /// Every accepted key id.
        keys: Vec<u32>,
        /// The primary key id.
        primary: u32,
    },
    /// Not done, and why (for a person).
    Refused {
        /// The reason.
        reason: String,
    },
}

/// Encodes an admin body.
pub fn encode_admin(msg: &AdminMsg, out: &mut Vec<u8>) -> Result<(), WireError> {
    let taken = std::mem::take(out);
    *out = postcard::to_extend(msg, taken).map_err(|_| WireError::Encode)?;
    Ok(())
}

/// Decodes an admin body. Bounded like [`decode_lock`](crate::frame::decode_lock):
/// every element takes at least one input byte.
pub fn decode_admin(body: &[u8]) -> Result<AdminMsg, WireError> {
    let (msg, rest) = postcard::take_from_bytes::<AdminMsg>(body).map_err(|_| WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_messages_round_trip_and_garbage_is_malformed() {
        let msgs = [
            AdminMsg::KeyringReq { id: 1, op: KeyringOp::Install { key: [7; KEY_LEN] } },
            AdminMsg::KeyringReq { id: 2, op: KeyringOp::Use { key_id: 9 } },
            AdminMsg::KeyringRsp { id: 2, result: KeyringResult::Keys { keys: vec![1, 9], primary: 9 } },
            AdminMsg::KeyringRsp { id: 3, result: KeyringResult::Refused { reason: "no".into() } },
        ];
        for msg in msgs {
            let mut out = Vec::new();
            encode_admin(&msg, &mut out).unwrap();
            assert_eq!(decode_admin(&out).unwrap(), msg);
            out.push(0);
            assert_eq!(decode_admin(&out), Err(WireError::TrailingBytes(1)));
        }
        assert_eq!(decode_admin(&[9, 9, 9]), Err(WireError::Malformed));
    }

    #[test]
    fn an_install_never_shows_its_key() {
        let op = KeyringOp::Install { key: [0xAB; KEY_LEN] };
        let text = format!("{op:?}");
        assert!(!text.contains("171") && !text.to_lowercase().contains("ab, "), "{text}");
    }
}
