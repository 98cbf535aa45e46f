//! The JWT check of the public front (`[jwt]`): on every request, REST or GraphQL `call`, it
//! strips the headers that carry forwarded claims (a client cannot forge them); on a request a
//! route protects, it verifies the bearer token, checks the revocation list, the route's
//! scopes and claims, records the caller's identity, and forwards the allowed claims as
//! headers.
//!
//! * [`routes`]: which requests need a token, and what of it.
//! * [`verify`]: one token against the providers' keys, on the node's clock.
//! * [`cache`]: verified tokens, by SHA-256, bounded in entries and bytes.
//!
//! The token a request carries is the `Authorization` header of the forwarded request: for a
//! GraphQL `call`, the call's own `headers` (the carrying HTTP request's `Authorization` is
//! not inherited by calls; see `translate/call.rs`).
//!
//! Answers: no token or a bad one → 401 `unauthenticated` with `WWW-Authenticate: Bearer
//! realm=…` (and `error="invalid_token"` for a bad one, RFC 6750); a revoked one → 401 too;
//! a missing scope → 403 `forbidden` with `error="insufficient_scope"`; a claim that differs →
//! 403 `forbidden`; the provider's keys unavailable, or the revocation list unable to vouch
//! for a `fail_closed` provider's token → 503 `not_ready`.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchyard_core::GatewayError;
use switchyard_core::identity::Identity;
use switchyard_proto::forwarding::{ForwardingReq, Header};

use super::{Policy, RequestContext};
use crate::config::{JwtConfig, RevocationFailMode};
use crate::jwks::{Jwks, JwtStats};
use crate::revocation::{Revocation, RevocationList, TokenFacts};
use crate::seams::Clock;
use crate::sync::BoxFuture;

pub mod cache;
pub mod routes;
pub mod verify;

use cache::{Cache, TokenHash};
use routes::{Requirement, Routes, Rule};
use verify::{Refused, Verified};

/// Longest forwarded claim value, in bytes; a longer one is not forwarded.
pub const FORWARDED_VALUE_BYTES_MAX: usize = 4 * 1024;

/// The JWT check.
pub struct JwtPolicy {
    routes: Routes,
    jwks: Arc<Jwks>,
    cache: Option<Cache>,
    revocations: Option<Arc<dyn RevocationList>>,
    clock: Arc<dyn Clock>,
    /// Claim → header, in config order.
    forward: Vec<(String, String)>,
    forward_authorization: bool,
    realm: String,
    leeway_s: u64,
    token_bytes_max: usize,
}

impl std::fmt::Debug for JwtPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtPolicy")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl JwtPolicy {
    /// The check `[jwt]` describes, or `None` when it has nothing to do (no route and no
    /// forwarded claim).
    pub fn new(
        config: &JwtConfig,
        jwks: Arc<Jwks>,
        revocations: Option<Arc<dyn RevocationList>>,
        clock: Arc<dyn Clock>,
    ) -> Option<Self> {
        let routes = Routes::new(config);
        if routes.is_empty() && config.forward_claims.is_empty() {
            return None;
        }
        Some(Self {
            routes,
            jwks,
            cache: (config.cache_entries_max > 0)
                .then(|| Cache::new(config.cache_entries_max, config.cache_bytes_max)),
            revocations,
            clock,
            forward: config
                .forward_claims
                .iter()
                .map(|(c, h)| (c.clone(), h.clone()))
                .collect(),
            forward_authorization: config.forward_authorization,
            realm: config.realm.clone(),
            leeway_s: config.leeway_s,
            token_bytes_max: config.token_bytes_max,
        })
    }

    fn stats(&self) -> &JwtStats {
        self.jwks.stats()
    }

    fn unauthenticated(&self, refused: &Refused) -> GatewayError {
        self.stats().refusal(refused.reason);
        let challenge = if refused.reason == "missing" {
            format!(r#"Bearer realm="{}""#, self.realm)
        } else {
            format!(
                r#"Bearer realm="{}", error="invalid_token", error_description="{}""#,
                self.realm, refused.message
            )
        };
        GatewayError::Unauthenticated {
            reason: refused.message.to_owned(),
            challenge,
        }
    }

    fn unavailable(&self, reason: &'static str, detail: &str) -> GatewayError {
        self.stats().refusal(reason);
        GatewayError::NotReady {
            detail: detail.to_owned(),
        }
    }

    async fn check_request(
        &self,
        ctx: &mut RequestContext,
        req: &mut ForwardingReq,
    ) -> Result<(), GatewayError> {
        let forwarded = &self.forward;
        req.headers.retain(|h| {
            !forwarded
                .iter()
                .any(|(_, name)| name.eq_ignore_ascii_case(&h.name))
        });
        let rule = match self
            .routes
            .requirement(&req.service, &req.method, &req.path)
        {
            Requirement::Open => return Ok(()),
            Requirement::Token(rule) => rule,
            Requirement::AmbiguousPath => {
                self.stats().refusal("malformed");
                return Err(GatewayError::InvalidArgument {
                    field: "path",
                    reason: "a path with an encoded `/` or `\\`, or an empty, `.` or `..` segment, is refused on a service that needs a token".to_owned(),
                });
            }
        };
        let token = bearer(req).map_err(|r| self.unauthenticated(&r))?;
        if token.len() > self.token_bytes_max {
            return Err(self.unauthenticated(&Refused {
                reason: "too_large",
                message: "the token is too long",
            }));
        }
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        let verified = self.verified(token, &hash, rule).await?;
        // Verified: whoever it names is who sent it, for the logs of this request whatever
        // happens next.
        ctx.set_identity(Identity {
            subject: verified.subject.clone(),
            credential_id: verified.token_id.clone().unwrap_or_else(|| {
                let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }),
        });
        self.check_revocation(&verified)?;
        check_rule(rule, &verified, &self.realm).inspect_err(|e| {
            let reason = match e {
                GatewayError::InsufficientScope { .. } => "insufficient_scope",
                _ => "claim_mismatch",
            };
            self.stats().refusal(reason);
        })?;
        if !self.forward_authorization {
            req.headers
                .retain(|h| !h.name.eq_ignore_ascii_case("authorization"));
        }
        for (claim, name) in forwarded {
            if let Some(value) = verified.claims.get(claim).and_then(header_value) {
                req.headers.push(Header {
                    name: name.clone(),
                    value,
                });
            }
        }
        Ok(())
    }

    /// The token verified: from the cache when it holds it and it is still good, else checked
    /// now and remembered.
    async fn verified(
        &self,
        token: &str,
        hash: &TokenHash,
        rule: &Rule,
    ) -> Result<Arc<Verified>, GatewayError> {
        let now_s = self.clock.now_ms() / 1_000;
        let allowed = |p: usize| rule.providers.is_empty() || rule.providers.contains(&p);
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(hash) {
                let key_held = self
                    .jwks
                    .providers()
                    .get(hit.provider)
                    .and_then(|p| p.ring())
                    .is_some_and(|ring| {
                        hit.kid
                            .as_deref()
                            .is_none_or(|kid| ring.by_kid(kid).is_some())
                    });
                let fresh = verify::check_time(&hit, now_s, self.leeway_s).is_ok();
                if key_held && fresh && allowed(hit.provider) {
                    self.stats().cache_lookup(true);
                    return Ok(hit);
                }
                // Verified by a provider this route does not take: another provider with the
                // same issuer may, so the token is verified afresh (the entry stays).
                if !(key_held && fresh) {
                    let (entries, bytes) = cache.remove(hash);
                    self.stats().set_cache_size(entries, bytes);
                }
            }
            self.stats().cache_lookup(false);
        }
        let verified = verify::verify(&self.jwks, &rule.providers, token, now_s, self.leeway_s)
            .await
            .map_err(|r| match r.reason {
                "keys_unavailable" => self.unavailable(r.reason, r.message),
                _ => self.unauthenticated(&r),
            })?;
        let verified = Arc::new(verified);
        if let Some(cache) = &self.cache {
            let (entries, bytes) = cache.insert(*hash, verified.clone());
            self.stats().set_cache_size(entries, bytes);
        }
        Ok(verified)
    }

    fn check_revocation(&self, v: &Verified) -> Result<(), GatewayError> {
        let Some(list) = &self.revocations else {
            return Ok(());
        };
        let Some(provider) = self.jwks.providers().get(v.provider) else {
            return Ok(());
        };
        let facts = TokenFacts {
            provider: &provider.config.name,
            issuer: &v.issuer,
            subject: &v.subject,
            token_id: v.token_id.as_deref(),
            issued_at_s: v.issued_at_s,
            expires_at_s: v.expires_at_s,
        };
        match list.check(&facts) {
            Revocation::Clear => Ok(()),
            Revocation::Revoked => Err(self.unauthenticated(&Refused {
                reason: "revoked",
                message: "the token has been revoked",
            })),
            Revocation::Unknown => match provider.config.revocation_unavailable {
                RevocationFailMode::FailOpen => {
                    self.stats().revocation_admitted(v.provider);
                    Ok(())
                }
                RevocationFailMode::FailClosed => Err(self.unavailable(
                    "revocation_unavailable",
                    "the revocation list cannot vouch for the token",
                )),
            },
        }
    }
}

impl Policy for JwtPolicy {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn check<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut ForwardingReq,
    ) -> BoxFuture<'a, Result<(), GatewayError>> {
        Box::pin(self.check_request(ctx, req))
    }
}

/// The token of the one `authorization: Bearer <token>` header.
fn bearer(req: &ForwardingReq) -> Result<&str, Refused> {
    let mut values = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"));
    let Some(header) = values.next() else {
        return Err(Refused {
            reason: "missing",
            message: "a bearer token is required",
        });
    };
    let malformed = Refused {
        reason: "malformed",
        message: "the authorization header is not one `Bearer <token>`",
    };
    if values.next().is_some() {
        return Err(malformed);
    }
    let value = std::str::from_utf8(&header.value).map_err(|_| malformed.clone())?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(malformed),
    }
}

/// The route's scopes and claims, checked against a verified token.
fn check_rule(rule: &Rule, v: &Verified, realm: &str) -> Result<(), GatewayError> {
    if !rule.scopes.is_empty() {
        check_scopes(rule, v, realm)?;
    }
    for (name, want) in &rule.claims {
        let matches = match v.claims.get(name) {
            Some(Value::String(s)) => s == want,
            Some(Value::Array(list)) => list.iter().any(|x| claim_text(x).as_deref() == Some(want)),
            Some(other) => claim_text(other).as_deref() == Some(want),
            None => false,
        };
        if !matches {
            return Err(GatewayError::Forbidden {
                reason: format!("the token's claim {name:?} does not allow this request"),
            });
        }
    }
    Ok(())
}

/// The route's scopes, all granted by the token's `scope` (or `scp`) claim.
fn check_scopes(rule: &Rule, v: &Verified, realm: &str) -> Result<(), GatewayError> {
    let granted: Vec<&str> = match (v.claims.get("scope"), v.claims.get("scp")) {
        (Some(Value::String(s)), _) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        (_, Some(Value::Array(list))) => list.iter().filter_map(Value::as_str).collect(),
        (_, Some(Value::String(s))) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        _ => Vec::new(),
    };
    if let Some(missing) = rule.scopes.iter().find(|s| !granted.contains(&s.as_str())) {
        let wanted = rule.scopes.join(" ");
        return Err(GatewayError::InsufficientScope {
            scope: missing.clone(),
            challenge: format!(
                r#"Bearer realm="{realm}", error="insufficient_scope", scope="{wanted}""#
            ),
        });
    }
    Ok(())
}

/// A scalar claim as text: strings as they are, numbers and booleans as JSON writes them.
fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim as a header value: a scalar as text, an array of scalars joined by spaces; nothing
/// for objects, control characters or values past [`FORWARDED_VALUE_BYTES_MAX`].
fn header_value(value: &Value) -> Option<Bytes> {
    let text = match value {
        Value::Array(list) => {
            let parts: Option<Vec<String>> = list.iter().map(claim_text).collect();
            parts?.join(" ")
        }
        other => claim_text(other)?,
    };
    // What a header value may hold (as `http::HeaderValue` checks it, without its copy),
    // less the control characters but tab.
    let ok = text.len() <= FORWARDED_VALUE_BYTES_MAX
        && text.bytes().all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t');
    ok.then(|| Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_values_are_bounded_and_clean() {
        assert_eq!(header_value(&Value::from("alice")).unwrap(), "alice");
        assert_eq!(
            header_value(&serde_json::json!(["a", "b", 3])).unwrap(),
            "a b 3"
        );
        assert!(header_value(&serde_json::json!({"x": 1})).is_none());
        assert!(header_value(&Value::from("a\r\nx-evil: 1")).is_none());
        assert!(header_value(&Value::from("a\u{7f}b")).is_none());
        assert_eq!(header_value(&Value::from("a\tb é")).unwrap(), "a\tb é");
        assert!(header_value(&Value::from("x".repeat(FORWARDED_VALUE_BYTES_MAX + 1))).is_none());
    }
}
