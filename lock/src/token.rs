//! Issuing fencing tokens.

use swimlock_wire::Token;

/// Issues the tokens (and waiting tickets) of one coordinator term.
///
/// Tokens are `term:23 | tag:16 | seq:24` (see [`Token`]). A coordinator
/// starts a term above every term it learned in reconciliation, so its
/// tokens exceed every token granted before on the members it reconciled
/// with; the tag keeps two coordinators of a split brain apart even if they
/// pick the same term. The issuer never moves to another term by itself:
/// when the sequence part runs out it issues nothing more, and the
/// coordinator starts a new round, so that every member records the next
/// term before a token carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIssuer {
    term: u32,
    tag: u16,
    next_seq: u32,
}

impl TokenIssuer {
    /// An issuer for `term` (at most [`Token::MAX_TERM`]), tagged with the
    /// coordinator's `tag`.
    pub fn new(term: u32, tag: u16) -> TokenIssuer {
        TokenIssuer { term: term.min(Token::MAX_TERM), tag, next_seq: 1 }
    }

    /// The term after `seen`, kept within what a token can carry.
    pub fn next_term(seen: u32) -> u32 {
        seen.saturating_add(1).min(Token::MAX_TERM)
    }

    /// The term of the next token.
    pub fn term(&self) -> u32 {
        self.term
    }

    /// The next token, strictly larger than every token issued before;
    /// `None` once the term's sequence numbers are used up.
    pub fn issue(&mut self) -> Option<Token> {
        if self.next_seq > Token::MAX_SEQ {
            return None;
        }
        let token = Token::new(self.term, self.tag, self.next_seq);
        self.next_seq += 1;
        Some(token)
    }

    /// Whether every sequence number of the term was issued.
    pub fn exhausted(&self) -> bool {
        self.next_seq > Token::MAX_SEQ
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_term_issues_nothing_instead_of_moving_on() {
        let mut issuer = TokenIssuer::new(3, 9);
        issuer.next_seq = Token::MAX_SEQ;
        let last = issuer.issue().expect("the last sequence number");
        assert_eq!((last.term(), last.seq()), (3, Token::MAX_SEQ));
        assert!(issuer.exhausted());
        assert_eq!(issuer.issue(), None);
        assert_eq!(issuer.term(), 3);
    }

    #[test]
    fn terms_never_wrap_past_what_a_token_carries() {
        assert_eq!(TokenIssuer::next_term(u32::MAX), Token::MAX_TERM);
        let mut issuer = TokenIssuer::new(u32::MAX, 1);
        assert_eq!(issuer.issue().unwrap().term(), Token::MAX_TERM);
    }

    #[test]
    fn two_coordinators_with_one_term_never_share_a_token() {
        let mut a = TokenIssuer::new(7, 1);
        let mut b = TokenIssuer::new(7, 2);
        let ta: Vec<Token> = (0..100).map(|_| a.issue().unwrap()).collect();
        let tb: Vec<Token> = (0..100).map(|_| b.issue().unwrap()).collect();
        assert!(ta.iter().all(|t| !tb.contains(t)));
    }
}
