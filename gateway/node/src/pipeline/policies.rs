//! The built-in request policies, in the order they run. Each is a file of its own in
//! `pipeline/`; adding one is that file and one line here.

use std::sync::Arc;

use super::Policy;
use super::jwt::JwtPolicy;
use crate::config::Config;
use crate::jwks::Jwks;
use crate::revocation::RevocationList;
use crate::seams::Clock;

/// The owners the built-in policies draw on, built by the composition root.
#[derive(Clone)]
pub struct Owners {
    /// The keys of the JWT providers.
    pub jwks: Arc<Jwks>,
    /// The revoked public credentials; `None`: nothing is revoked.
    pub revocations: Option<Arc<dyn RevocationList>>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("jwks", &self.jwks)
            .field("revocations", &self.revocations.is_some())
            .finish_non_exhaustive()
    }
}

/// The policies the configuration turns on, in order.
pub fn builtin(config: &Config, owners: &Owners) -> Vec<Arc<dyn Policy>> {
    let mut policies: Vec<Arc<dyn Policy>> = Vec::new();
    let jwt = JwtPolicy::new(
        &config.jwt,
        owners.jwks.clone(),
        owners.revocations.clone(),
        owners.clock.clone(),
    );
    policies.extend(jwt.map(|p| Arc::new(p) as Arc<dyn Policy>));
    policies
}
