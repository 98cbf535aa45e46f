//! Rate limits on the public front: the `[[rate_limits]]` rules as one request policy.
//!
//! Each rule selects requests (services, a path prefix, methods) and keeps one token bucket
//! per key: the client's address (IPv6 by prefix), the authenticated subject, the service, or
//! a header's value. Every rule that selects a request takes one token from its bucket, in
//! the order of the config; the first that has none refuses the request with 429
//! `rate_limited` and `Retry-After` (the rules after it are not asked). The answer, admitted
//! or refused, carries `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-
//! headers) for each rule asked, computed from the count that decided.
//!
//! * [`gcra`]: the bucket arithmetic and the bounded table of this gateway's buckets.
//! * [`cluster`]: the cluster mode: the count in a shared store, the live-gateway count, and
//!   the fall-back to this gateway's share when the store cannot answer.
//! * [`redis_store`]: that store in Redis, on the gateway's Redis client (a Lua script).
//!
//! The choices are recorded in docs/decisions/0020-rate-limits.md.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use switchyard_core::GatewayError;
use switchyard_proto::forwarding::ForwardingReq;

use super::{Policy, RequestContext};
use crate::config::{RateLimitKey, RateLimitMode, RateLimitRule};
use crate::sync::{BoxFuture, lock};
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::RateLimitSeries;

pub mod cluster;
pub mod gcra;
pub mod redis_store;

pub use cluster::{Cluster, CounterStore, StoreError};
use gcra::{Buckets, Decision, Shape};
pub use redis_store::RedisStore;

/// The longest key value (a subject or a header's value) kept as it is; a longer one is kept
/// as its SHA-256, so a bucket's key is at most this long whatever the client sends.
pub const KEY_VALUE_BYTES_MAX: usize = 128;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `[[rate_limits]]` rules, as a request policy.
pub struct RateLimits {
    rules: Vec<Rule>,
    /// Where this gateway's bucket clock starts.
    origin: tokio::time::Instant,
    /// The cluster mode, when a rule asks for it.
    cluster: Option<Arc<Cluster>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.rules.iter().map(|r| &*r.name).collect();
        f.debug_struct("RateLimits")
            .field("rules", &names)
            .finish_non_exhaustive()
    }
}

struct Rule {
    name: Arc<str>,
    config: RateLimitRule,
    shape: Shape,
    /// This rule's member of `RateLimit-Policy`.
    policy_item: String,
    buckets: Mutex<Buckets>,
    series: RateLimitSeries,
}

impl RateLimits {
    /// The policy for `rules`; `None` when there are none. Cluster-mode rules need
    /// `cluster`: without one they count locally (and the start-up log says so).
    pub fn new(
        rules: &[RateLimitRule],
        telemetry: &Telemetry,
        cluster: Option<Arc<Cluster>>,
    ) -> Option<Self> {
        if rules.is_empty() {
            return None;
        }
        let rules = rules
            .iter()
            .map(|config| {
                let shape = Shape::new(config.rate, config.per.micros(), config.burst());
                Rule {
                    name: Arc::from(config.name.as_str()),
                    policy_item: policy_item(&config.name, shape),
                    shape,
                    buckets: Mutex::new(Buckets::new(config.buckets_max)),
                    series: telemetry.metrics().rate_limit_series(&config.name),
                    config: config.clone(),
                }
            })
            .collect();
        Some(Self {
            rules,
            origin: tokio::time::Instant::now(),
            cluster,
        })
    }

    /// Microseconds on this gateway's bucket clock.
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Checks `rule` for `key` on this gateway, with `shape` (the rule's, or its share).
    fn check_local(&self, rule: &Rule, key: &str, shape: Shape) -> Decision {
        let now = self.now_us();
        let mut buckets = lock(&rule.buckets);
        let decision = buckets.check(key, shape, now);
        rule.series
            .buckets
            .set(i64::try_from(buckets.len()).unwrap_or(i64::MAX));
        decision
    }

    /// Checks one rule: in Redis for a cluster-mode rule while it answers, else here.
    /// Returns the decision and the shape it was made with.
    async fn check_rule(&self, rule: &Rule, key: &str) -> (Decision, Shape) {
        if let (RateLimitMode::Cluster, Some(cluster)) = (rule.config.mode, &self.cluster) {
            match cluster.check(&rule.name, key, rule.shape).await {
                Some(decision) => return (decision, rule.shape),
                None => {
                    rule.series.fallbacks.inc();
                    let share = rule.shape.divided(cluster.live_gateways());
                    return (self.check_local(rule, key, share), share);
                }
            }
        }
        (self.check_local(rule, key, rule.shape), rule.shape)
    }

    async fn police(
        &self,
        ctx: &mut RequestContext,
        req: &ForwardingReq,
    ) -> Result<(), GatewayError> {
        // The two headers' values, built as the rules are checked: one item per rule, ", "
        // between items.
        let mut policies = String::new();
        let mut states = String::new();
        let mut refusal = None;
        for rule in self.rules.iter().filter(|r| r.selects(req)) {
            let key = rule.key(ctx, req);
            let (decision, shape) = self.check_rule(rule, &key).await;
            if !policies.is_empty() {
                policies.push_str(", ");
                states.push_str(", ");
            }
            if shape == rule.shape {
                policies.push_str(&rule.policy_item);
            } else {
                policies.push_str(&policy_item(&rule.name, shape));
            }
            let _ = write!(
                states,
                "\"{}\";r={};t={}",
                rule.name,
                decision.remaining,
                decision.reset_s()
            );
            if decision.admitted {
                rule.series.admitted.inc();
            } else {
                rule.series.limited.inc();
                refusal = Some(GatewayError::RateLimited {
                    retry_after_s: decision.retry_after_s(),
                });
                break;
            }
        }
        if !policies.is_empty() {
            for (name, items) in [(RATELIMIT_POLICY, policies), (RATELIMIT, states)] {
                // Rule names are checked tokens, so the value is always a valid header.
                if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(items)) {
                    ctx.add_response_header(name, value);
                }
            }
        }
        refusal.map_or(Ok(()), Err)
    }
}

impl Policy for RateLimits {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn check<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut ForwardingReq,
    ) -> BoxFuture<'a, Result<(), GatewayError>> {
        Box::pin(self.police(ctx, req))
    }
}

impl Rule {
    /// Whether this rule applies to `req`: its service, its path (percent-decoded, so an
    /// encoded letter does not slip past a prefix) and its method.
    fn selects(&self, req: &ForwardingReq) -> bool {
        let c = &self.config;
        (c.services.is_empty() || c.services.contains(&req.service))
            && (c.methods.is_empty() || c.methods.contains(&req.method))
            && (c.path_prefix.is_empty()
                || percent_decode(&req.path).starts_with(c.path_prefix.as_bytes()))
    }

    /// The key of `req`'s bucket under this rule, prefixed by its kind so that a subject
    /// never shares a bucket with an address that reads the same.
    fn key(&self, ctx: &RequestContext, req: &ForwardingReq) -> String {
        let c = &self.config;
        let address = || address_key(ctx.client_addr().ip(), c.ipv6_prefix_bits);
        match c.key {
            RateLimitKey::ClientAddress => address(),
            RateLimitKey::Subject => match ctx.identity() {
                Some(identity) if !identity.subject.is_empty() => {
                    bounded("sub:", identity.subject.as_bytes())
                }
                _ => address(),
            },
            RateLimitKey::Service => bounded("svc:", req.service.as_bytes()),
            RateLimitKey::Header => req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(&c.header))
                .map_or_else(address, |h| bounded("hdr:", &h.value)),
        }
    }
}

/// `"name";q=<burst>;w=<seconds to fill>`.
fn policy_item(name: &str, shape: Shape) -> String {
    format!("\"{name}\";q={};w={}", shape.quota(), shape.window_s())
}

/// The key of a client address: an IPv4 address (also mapped into IPv6) as it is, an IPv6
/// address cut to its first `prefix_bits`.
fn address_key(ip: IpAddr, prefix_bits: u8) -> String {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u32::from(prefix_bits.clamp(1, 128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            let prefix = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            format!("ip:{prefix}/{bits}")
        }
        v4 => format!("ip:{v4}"),
    }
}

/// `kind` and a key value: the value as it is when short and printable, else as
/// `sha256:<hex>`.
fn bounded(kind: &str, value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) if s.len() <= KEY_VALUE_BYTES_MAX && !s.chars().any(char::is_control) => {
            let mut out = String::with_capacity(kind.len() + s.len());
            out.push_str(kind);
            out.push_str(s);
            out
        }
        _ => {
            let digest = Sha256::digest(value);
            let mut out = String::with_capacity(kind.len() + 7 + 64);
            out.push_str(kind);
            out.push_str("sha256:");
            for b in digest {
                let _ = write!(out, "{b:02x}");
            }
            out
        }
    }
}

/// `path` with every `%XX` escape decoded (an invalid one kept as it is).
fn percent_decode(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_cut_ipv6_to_the_prefix() {
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(address_key(v6, 64), "ip:2001:db8:1:2::/64");
        assert_eq!(address_key(v6, 128), "ip:2001:db8:1:2:3:4:5:6/128");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(address_key(mapped, 64), "ip:10.1.2.3");
    }

    #[test]
    fn long_or_odd_values_are_hashed() {
        assert_eq!(bounded("", b"alice"), "alice");
        assert_eq!(bounded("sub:", b"alice"), "sub:alice");
        let long = bounded("", &[b'a'; KEY_VALUE_BYTES_MAX + 1]);
        assert!(long.starts_with("sha256:") && long.len() == 71, "{long}");
        assert!(bounded("", b"a\nb").starts_with("sha256:"));
        assert!(bounded("", &[0xff, 0xfe]).starts_with("sha256:"));
    }

    #[test]
    fn paths_are_decoded_before_the_prefix_is_compared() {
        assert_eq!(percent_decode("/%61dmin/x"), b"/admin/x");
        assert_eq!(percent_decode("/a%2"), b"/a%2");
        assert_eq!(percent_decode("/%zz"), b"/%zz");
    }
}
