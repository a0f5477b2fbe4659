//! Issuing fencing tokens.

use swimlock_wire::Token;

/// Issues the tokens (and waiting tickets) of one coordinator term.
///
/// Tokens are `term:24 | tag:16 | seq:24` (see [`Token`]). A coordinator
/// starts a term above every term it learned in reconciliation, so its
/// tokens exceed every token granted before on the members it reconciled
/// with; the tag keeps two coordinators of a split brain apart even if they
/// pick the same term. When the sequence part runs out, the issuer moves to
/// the next term, which keeps every later token larger.
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

    /// Moves to a term above `seen` if the issuer is not already above it.
    pub fn raise_above(&mut self, seen: u32) {
        if seen >= self.term {
            self.term = Self::next_term(seen);
            self.next_seq = 1;
        }
    }

    /// The next token; strictly larger than every token issued before.
    pub fn issue(&mut self) -> Token {
        if self.next_seq > Token::MAX_SEQ {
            self.term = (self.term + 1).min(Token::MAX_TERM);
            self.next_seq = 1;
        }
        let token = Token::new(self.term, self.tag, self.next_seq);
        self.next_seq += 1;
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_strictly_increase_across_sequence_overflow() {
        let mut issuer = TokenIssuer::new(3, 9);
        issuer.next_seq = Token::MAX_SEQ;
        let a = issuer.issue();
        let b = issuer.issue();
        assert!(b > a);
        assert_eq!(b.term(), 4);
    }

    #[test]
    fn terms_never_wrap_past_what_a_token_carries() {
        assert_eq!(TokenIssuer::next_term(u32::MAX), Token::MAX_TERM);
        let mut issuer = TokenIssuer::new(u32::MAX, 1);
        assert_eq!(issuer.issue().term(), Token::MAX_TERM);
        issuer.raise_above(u32::MAX);
        assert_eq!(issuer.term(), Token::MAX_TERM);
    }

    #[test]
    fn raise_above_moves_past_a_learned_term_only() {
        let mut issuer = TokenIssuer::new(5, 1);
        issuer.raise_above(2);
        assert_eq!(issuer.term(), 5);
        issuer.raise_above(5);
        assert_eq!(issuer.term(), 6);
    }

    #[test]
    fn two_coordinators_with_one_term_never_share_a_token() {
        let mut a = TokenIssuer::new(7, 1);
        let mut b = TokenIssuer::new(7, 2);
        let ta: Vec<Token> = (0..100).map(|_| a.issue()).collect();
        let tb: Vec<Token> = (0..100).map(|_| b.issue()).collect();
        assert!(ta.iter().all(|t| !tb.contains(t)));
    }
}
