//! The built-in request policies, in the order they run. Each is a file of its own in
//! `pipeline/`; adding one is that file and one line here.

use std::sync::Arc;

use super::Policy;
use super::audit_required::AuditRequired;
use super::jwt::JwtPolicy;
use super::rate_limit::{Cluster, RateLimits};
use crate::audit::Auditor;
use crate::config::Config;
use crate::jwks::Jwks;
use crate::revocation::RevocationList;
use crate::seams::Clock;
use crate::telemetry::Telemetry;

/// What the built-in policies are made from besides the config: the owners the composition
/// root built for them.
pub struct Parts<'a> {
    pub telemetry: &'a Telemetry,
    /// The cluster mode of the rate limits, when a rule asks for it and a store is set.
    pub rate_limit_cluster: Option<Arc<Cluster>>,
    /// The keys of the JWT providers.
    pub jwks: Arc<Jwks>,
    /// The revoked public credentials; `None`: nothing is revoked.
    pub revocations: Option<Arc<dyn RevocationList>>,
    pub clock: Arc<dyn Clock>,
    /// The auditor, when `audit.enabled`.
    pub auditor: Option<Arc<Auditor>>,
}

impl std::fmt::Debug for Parts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("rate_limit_cluster", &self.rate_limit_cluster)
            .field("jwks", &self.jwks)
            .field("revocations", &self.revocations.is_some())
            .field("auditor", &self.auditor.is_some())
            .finish_non_exhaustive()
    }
}

/// The policies the configuration turns on, in order: required auditing first (a request
/// that cannot be audited is refused before it costs anything else, and whatever refuses it
/// later is audited), then authentication (the rate limits may key by the subject it
/// establishes), then the rate limits.
pub fn builtin(config: &Config, parts: Parts<'_>) -> Vec<Arc<dyn Policy>> {
    let mut policies: Vec<Arc<dyn Policy>> = Vec::new();
    if let Some(auditor) = parts.auditor.filter(|_| config.audit.any_required()) {
        policies.push(Arc::new(AuditRequired::new(auditor)));
    }
    let jwt = JwtPolicy::new(&config.jwt, parts.jwks, parts.revocations, parts.clock);
    policies.extend(jwt.map(|p| Arc::new(p) as Arc<dyn Policy>));
    let rate_limits = RateLimits::new(
        &config.rate_limits,
        parts.telemetry,
        parts.rate_limit_cluster,
    );
    policies.extend(rate_limits.map(|p| Arc::new(p) as Arc<dyn Policy>));
    policies
}
