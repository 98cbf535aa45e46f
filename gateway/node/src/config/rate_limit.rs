//! The `[[rate_limits]]` rules and the `[rate_limit_cluster]` section: which requests are
//! limited, by what key, how fast, and how the cluster-wide mode counts live gateways.

use serde::Deserialize;

/// One rate-limit rule: the requests it selects, the key their buckets are kept by, and the
/// rate and burst of each bucket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// The rule's name (required): 1 to 64 ASCII letters, digits, `-` or `_`, unique. It is
    /// the policy's name in `RateLimit-Policy` and `RateLimit`, the `rule` label of the
    /// metrics, and part of the cluster mode's Redis keys.
    pub name: String,
    /// The services the rule applies to; empty (the default): every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Only requests whose path within the service starts with this; empty (the default):
    /// every path.
    #[serde(default)]
    pub path_prefix: String,
    /// Only these methods (upper case); empty (the default): every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// What one bucket is kept for: `"client_address"` (the default), `"subject"`,
    /// `"service"` or `"header"`.
    #[serde(default)]
    pub key: RateLimitKey,
    /// The request header whose value is the key, with `key = "header"` (lower case).
    #[serde(default)]
    pub header: String,
    /// With a client-address key, IPv6 clients are counted by this prefix of their address
    /// (default 64: one client usually holds a whole /64). IPv4 clients by their address.
    #[serde(default = "default_ipv6_prefix_bits")]
    pub ipv6_prefix_bits: u8,
    /// Requests admitted per `per`, on average (required, at least 1).
    pub rate: u64,
    /// `"second"` (the default) or `"minute"`.
    #[serde(default)]
    pub per: RatePer,
    /// Requests admitted at once from a full bucket; 0 (the default) means `rate`.
    #[serde(default)]
    pub burst: u64,
    /// `"local"` (the default): each gateway counts alone, so a client spread over N
    /// gateways gets up to N times the rate. `"cluster"`: the count is kept in Redis and
    /// shared by every gateway.
    #[serde(default)]
    pub mode: RateLimitMode,
    /// Buckets kept at once for this rule on this gateway (default 100,000). Past it the
    /// bucket nearest to full is dropped (a full one carries no information), so a client
    /// rotating keys cannot grow memory, nor free its own bucket from its limit.
    #[serde(default = "default_buckets_max")]
    pub buckets_max: usize,
}

/// What a rule's buckets are kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// The client's address as the public listener sees it (IPv6 by prefix).
    #[default]
    ClientAddress,
    /// The authenticated subject (a JWT `sub`); a request without one is counted by its
    /// client address.
    Subject,
    /// The service: one bucket for all its callers.
    Service,
    /// The value of a request header; a request without it is counted by its client address.
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RatePer {
    #[default]
    Second,
    Minute,
}

impl RatePer {
    pub fn micros(self) -> u64 {
        match self {
            Self::Second => 1_000_000,
            Self::Minute => 60_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitMode {
    #[default]
    Local,
    Cluster,
}

/// How gateways using cluster-mode rules find how many of them are live, for the fall-back
/// when Redis cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitClusterConfig {
    /// How often each gateway renews its heartbeat in Redis and reads the live count.
    pub heartbeat_interval_ms: u64,
    /// How long a heartbeat counts: a gateway silent this long is no longer live.
    pub heartbeat_ttl_ms: u64,
    /// The most gateways counted; a larger count is taken as this many.
    pub gateways_max: u32,
    /// The live count a gateway assumes until its first heartbeat reaches Redis.
    pub gateways_initial: u32,
}

impl Default for RateLimitClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 1_000,
            heartbeat_ttl_ms: 3_000,
            gateways_max: 1_024,
            gateways_initial: 1,
        }
    }
}

fn default_ipv6_prefix_bits() -> u8 {
    64
}

fn default_buckets_max() -> usize {
    100_000
}

/// The most rules a configuration may hold.
pub const RULES_MAX: usize = 64;
/// The largest rate a rule may have, in requests per second (`rate` per minute counts as
/// `rate / 60`): the cluster mode's clock has microsecond steps.
pub const RATE_PER_SECOND_MAX: u64 = 1_000_000;
/// The largest `burst`.
pub const BURST_MAX: u64 = 1_000_000;
/// The largest `buckets_max`.
pub const BUCKETS_MAX_LIMIT: usize = 10_000_000;

impl RateLimitRule {
    /// `burst`, or `rate` when unset.
    pub fn burst(&self) -> u64 {
        if self.burst == 0 {
            self.rate
        } else {
            self.burst
        }
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let name = &self.name;
        let bad =
            |key: &'static str, message: String| Err((key, format!("rule {name:?}: {message}")));
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err((
                "rate_limits.name",
                format!("{name:?} must be 1 to 64 ASCII letters, digits, '-' or '_'"),
            ));
        }
        let per_second_max = match self.per {
            RatePer::Second => RATE_PER_SECOND_MAX,
            RatePer::Minute => RATE_PER_SECOND_MAX * 60,
        };
        if !(1..=per_second_max).contains(&self.rate) {
            return bad(
                "rate_limits.rate",
                format!("must lie between 1 and {per_second_max} per {:?}", self.per),
            );
        }
        if self.burst > BURST_MAX {
            return bad("rate_limits.burst", format!("must be at most {BURST_MAX}"));
        }
        if !(1..=BUCKETS_MAX_LIMIT).contains(&self.buckets_max) {
            return bad(
                "rate_limits.buckets_max",
                format!("must lie between 1 and {BUCKETS_MAX_LIMIT}"),
            );
        }
        if !(1..=128).contains(&self.ipv6_prefix_bits) {
            return bad(
                "rate_limits.ipv6_prefix_bits",
                "must lie between 1 and 128".to_owned(),
            );
        }
        match (self.key, self.header.is_empty()) {
            (RateLimitKey::Header, true) => {
                return bad(
                    "rate_limits.header",
                    "is required with key = \"header\"".to_owned(),
                );
            }
            (RateLimitKey::Header, false) => {
                let valid = http::HeaderName::from_bytes(self.header.as_bytes())
                    .is_ok_and(|h| h.as_str() == self.header);
                if !valid {
                    return bad(
                        "rate_limits.header",
                        format!("{:?} is not a lower-case header name", self.header),
                    );
                }
            }
            (_, false) => {
                return bad(
                    "rate_limits.header",
                    "is read only with key = \"header\"".to_owned(),
                );
            }
            (_, true) => {}
        }
        if let Some(m) = self
            .methods
            .iter()
            .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return bad(
                "rate_limits.methods",
                format!("{m:?} is not an upper-case method"),
            );
        }
        if !self.path_prefix.is_empty() && !self.path_prefix.starts_with('/') {
            return bad("rate_limits.path_prefix", "must start with '/'".to_owned());
        }
        if self.services.iter().any(String::is_empty) {
            return bad("rate_limits.services", "holds an empty name".to_owned());
        }
        Ok(())
    }
}

/// Checks the rules and the cluster section. Returns the key at fault.
pub fn validate(
    rules: &[RateLimitRule],
    cluster: &RateLimitClusterConfig,
) -> Result<(), (&'static str, String)> {
    if rules.len() > RULES_MAX {
        return Err(("rate_limits", format!("at most {RULES_MAX} rules")));
    }
    for (i, rule) in rules.iter().enumerate() {
        rule.validate()?;
        if rules[..i].iter().any(|r| r.name == rule.name) {
            return Err((
                "rate_limits.name",
                format!("{:?} names two rules", rule.name),
            ));
        }
    }
    if !(100..=60_000).contains(&cluster.heartbeat_interval_ms) {
        return Err((
            "rate_limit_cluster.heartbeat_interval_ms",
            "must lie between 100 and 60000".to_owned(),
        ));
    }
    if cluster.heartbeat_ttl_ms < cluster.heartbeat_interval_ms.saturating_mul(2)
        || cluster.heartbeat_ttl_ms > 600_000
    {
        return Err((
            "rate_limit_cluster.heartbeat_ttl_ms",
            "must be at least twice heartbeat_interval_ms, and at most 600000".to_owned(),
        ));
    }
    if !(1..=65_536).contains(&cluster.gateways_max) {
        return Err((
            "rate_limit_cluster.gateways_max",
            "must lie between 1 and 65536".to_owned(),
        ));
    }
    if !(1..=cluster.gateways_max).contains(&cluster.gateways_initial) {
        return Err((
            "rate_limit_cluster.gateways_initial",
            "must lie between 1 and gateways_max".to_owned(),
        ));
    }
    Ok(())
}
