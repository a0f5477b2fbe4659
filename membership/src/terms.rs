//! The highest coordinator term any member has recorded, spread with the
//! gossip as a foca custom broadcast.
//!
//! A coordinator takes a term above every term it knows; the lock layer
//! learns terms from its reconciliation rounds, but a member that recorded
//! a term and then pauses, or leaves, before it answers a round would take
//! its term with it. Riding on gossip, the term reaches every member while
//! the two can still talk at all. Only the highest term is kept and
//! disseminated: a higher one replaces a lower one in the backlog, so the
//! broadcast costs four bytes no matter how many terms pass.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use foca::{BroadcastHandler, Invalidates};

use crate::identity::Ident;

/// The handler foca calls with every term broadcast it receives.
#[derive(Debug, Default)]
pub(crate) struct TermGossip {
    /// Shared with [`crate::Membership`], which cannot reach the handler
    /// inside foca otherwise.
    highest: Arc<AtomicU32>,
}

impl TermGossip {
    pub(crate) fn new(highest: Arc<AtomicU32>) -> TermGossip {
        TermGossip { highest }
    }
}

/// One key for every term broadcast: a newer one always replaces the older
/// one in foca's backlog (it is only sent when higher).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TermKey;

impl Invalidates for TermKey {
    fn invalidates(&self, _other: &Self) -> bool {
        true
    }
}

/// A term broadcast that is not four bytes.
#[derive(Debug)]
pub(crate) struct BadTerm;

impl fmt::Display for BadTerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a term broadcast must be 4 bytes")
    }
}

impl std::error::Error for BadTerm {}

impl BroadcastHandler<Ident> for TermGossip {
    type Key = TermKey;
    type Error = BadTerm;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&Ident>) -> Result<Option<TermKey>, BadTerm> {
        let term = u32::from_le_bytes(data.try_into().map_err(|_| BadTerm)?);
        // Pass on what is news only, or it would circulate for ever.
        let known = self.highest.fetch_max(term, Ordering::Relaxed);
        Ok((term > known).then_some(TermKey))
    }
}

/// The wire form of a term broadcast.
pub(crate) fn encode(term: u32) -> [u8; 4] {
    term.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_higher_term_is_passed_on() {
        let highest = Arc::new(AtomicU32::new(0));
        let mut h = TermGossip::new(highest.clone());
        assert_eq!(h.receive_item(&encode(5), None).unwrap(), Some(TermKey));
        assert_eq!(h.receive_item(&encode(5), None).unwrap(), None, "not news");
        assert_eq!(h.receive_item(&encode(3), None).unwrap(), None, "older");
        assert_eq!(highest.load(Ordering::Relaxed), 5);
        assert!(h.receive_item(&[1, 2, 3], None).is_err());
    }
}
