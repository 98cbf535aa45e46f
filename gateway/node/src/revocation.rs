//! Revoked public credentials: the list a verified token is checked against before its request
//! goes on.
//!
//! The check is a lookup in a local copy, never a network call: a request never waits on the
//! store that shares revocations between gateways. When the copy cannot be vouched for (the
//! store has been unreachable for longer than its bound), the answer is
//! [`Revocation::Unknown`] and the token's provider decides, failing open or closed.

/// What a verified token is known by, for the revocation check.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts<'a> {
    /// The name of the provider that verified it (`[[jwt.providers]] name`).
    pub provider: &'a str,
    /// Its `iss`.
    pub issuer: &'a str,
    /// Its `sub`.
    pub subject: &'a str,
    /// Its `jti`, if it has one.
    pub token_id: Option<&'a str>,
    /// Its `iat` in Unix seconds, if it has one: a subject's revocation covers the tokens
    /// issued before it.
    pub issued_at_s: Option<u64>,
    /// Its `exp` in Unix seconds.
    pub expires_at_s: u64,
}

/// The answer of a revocation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Not revoked, as far as a copy within its staleness bound knows.
    Clear,
    /// Revoked: its token id, or its subject for tokens issued before the revocation.
    Revoked,
    /// The copy is older than its bound; the provider's fail mode decides.
    Unknown,
}

/// A revocation list. Implementations answer from memory, without blocking.
pub trait RevocationList: Send + Sync + 'static {
    fn check(&self, token: &TokenFacts<'_>) -> Revocation;
}
