//! Who a request or a registry change comes from, once a policy has established it.
//!
//! Nothing sets an identity yet: the request pipeline and the registrar carry an empty slot
//! that authentication policies fill, and that observers (logs, audit) read.

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// Whom the credential names (a JWT `sub`, a certificate's SAN).
    pub subject: String,
    /// Which credential proved it (a JWT `jti`, a certificate's fingerprint); never the
    /// credential itself.
    pub credential_id: String,
}
