//! The `[jwt]` section: JSON Web Token authentication on the public front. Providers say whose
//! tokens are taken and where their keys are; routes say which requests need one.
//!
//! ```toml
//! [jwt]
//! forward_claims = { sub = "x-auth-subject" }
//!
//! [[jwt.providers]]
//! name = "corp"
//! issuer = "https://id.example.com/"
//! audiences = ["orders-api"]
//! algorithms = ["RS256"]
//! jwks_url = "https://id.example.com/.well-known/jwks.json"
//! jwks_ca_file = "/etc/ssl/certs/ca-certificates.crt"
//!
//! [[jwt.routes]]
//! service = "orders"
//! path_prefix = "/admin"
//! scopes = ["orders:admin"]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Most providers one gateway takes tokens from.
pub const PROVIDERS_MAX: usize = 16;
/// Most routes in `[[jwt.routes]]`.
pub const ROUTES_MAX: usize = 1_024;
/// Most claims forwarded as headers.
pub const FORWARD_CLAIMS_MAX: usize = 16;
/// Most scopes or required claims one route names.
pub const ROUTE_REQUIREMENTS_MAX: usize = 32;
/// The largest `jwt.token_bytes_max`.
pub const TOKEN_BYTES_LIMIT: usize = 64 * 1024;
/// The largest `jwt.leeway_s`.
pub const LEEWAY_S_LIMIT: u64 = 300;
/// The largest `keys_max` of a provider.
pub const KEYS_LIMIT: usize = 256;
/// The largest `jwks_bytes_max` of a provider.
pub const JWKS_BYTES_LIMIT: usize = 4 * 1024 * 1024;
/// The smallest refresh interval and refetch cooldown a provider may ask for, in ms.
pub const REFRESH_MS_MIN: u64 = 100;
/// The longest fetch timeout, in ms.
pub const FETCH_TIMEOUT_MS_LIMIT: u64 = 60_000;

/// The algorithms a provider may pin: asymmetric signatures only. `none` and the HMAC family
/// (`HS256`, `HS384`, `HS512`) are refused, so a public key can never be used as a shared
/// secret.
pub const ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Whose tokens are taken. None: the public front is open (logged as a warning at start).
    pub providers: Vec<JwtProvider>,
    /// Which requests need a token. A service with at least one route needs a token on every
    /// request that no `public = true` route covers; a service without routes is open.
    pub routes: Vec<JwtRoute>,
    /// Claims forwarded to services as headers: claim name → header name. Headers of these
    /// names sent by the client are removed from every request, so they cannot be forged.
    pub forward_claims: BTreeMap<String, String>,
    /// Whether the `Authorization` header of a request whose token the gateway verified is
    /// passed on to the service. Off: the token stops at the gateway.
    pub forward_authorization: bool,
    /// The realm named in `WWW-Authenticate` challenges.
    pub realm: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_s: u64,
    /// Longest token taken, in bytes; longer ones are refused unread.
    pub token_bytes_max: usize,
    /// Verified tokens remembered (keyed by the token's SHA-256, until the token expires), so
    /// a client sending the same token again costs a hash, not a signature check. 0: off.
    pub cache_entries_max: usize,
    /// Memory the verified-token cache may hold, in bytes (claims included).
    pub cache_bytes_max: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            routes: Vec::new(),
            forward_claims: BTreeMap::new(),
            forward_authorization: false,
            realm: "switchyard".to_owned(),
            leeway_s: 60,
            token_bytes_max: 8 * 1024,
            cache_entries_max: 10_000,
            cache_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// What a provider does when the revocation list cannot vouch for a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationFailMode {
    /// Refuse: 503 `not_ready`.
    #[default]
    FailClosed,
    /// Admit, and count it.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtProvider {
    /// How routes and logs name it.
    pub name: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// Its tokens' `aud` must hold one of these.
    pub audiences: Vec<String>,
    /// The algorithms its tokens may be signed with (see [`ALGORITHMS`]).
    pub algorithms: Vec<String>,
    /// A JWKS document on disk (re-read every `refresh_interval_ms`).
    pub jwks_file: PathBuf,
    /// A JWKS document over `http://` or `https://`.
    pub jwks_url: String,
    /// The CA certificates (PEM) an `https://` `jwks_url` is verified against. Required for
    /// `https://`: there is no built-in trust store (give the system's bundle, e.g.
    /// `/etc/ssl/certs/ca-certificates.crt`, to trust public CAs).
    pub jwks_ca_file: PathBuf,
    /// How long fetched keys are fresh when the answer has no `Cache-Control: max-age`; also
    /// how often `jwks_file` is re-read.
    pub refresh_interval_ms: u64,
    /// Bounds on a `max-age` the provider announces.
    pub refresh_min_ms: u64,
    pub refresh_max_ms: u64,
    /// After a fetch starts, how long until a token with an unknown `kid` may start another.
    pub refetch_cooldown_ms: u64,
    /// How long keys are still used after they stopped being fresh while the provider cannot
    /// be reached; then they are dropped and its tokens are answered 503 `not_ready`.
    pub stale_max_ms: u64,
    /// One fetch (connect, TLS, request, body), at most.
    pub fetch_timeout_ms: u64,
    /// Largest JWKS document taken.
    pub jwks_bytes_max: usize,
    /// Most keys one JWKS document may hold; a document with more is refused.
    pub keys_max: usize,
    /// `fail_closed` (503 `not_ready`) or `fail_open` (admitted, counted) when the revocation
    /// list cannot vouch for a token.
    pub revocation_unavailable: RevocationFailMode,
}

impl Default for JwtProvider {
    fn default() -> Self {
        Self {
            name: String::new(),
            issuer: String::new(),
            audiences: Vec::new(),
            algorithms: Vec::new(),
            jwks_file: PathBuf::new(),
            jwks_url: String::new(),
            jwks_ca_file: PathBuf::new(),
            refresh_interval_ms: 300_000,
            refresh_min_ms: 60_000,
            refresh_max_ms: 86_400_000,
            refetch_cooldown_ms: 10_000,
            stale_max_ms: 3_600_000,
            fetch_timeout_ms: 5_000,
            jwks_bytes_max: 256 * 1024,
            keys_max: 32,
            revocation_unavailable: RevocationFailMode::FailClosed,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtRoute {
    /// The service it covers (it need not be registered yet).
    pub service: String,
    /// The path below the service it covers (`/admin` covers `/admin` and `/admin/...`).
    /// Empty: every path.
    pub path_prefix: String,
    /// The methods it covers. Empty: every method.
    pub methods: Vec<String>,
    /// The providers whose tokens it takes. Empty: every provider.
    pub providers: Vec<String>,
    /// Scopes the token must grant (`scope`, space-separated, or `scp`, an array).
    pub scopes: Vec<String>,
    /// Claims the token must carry with exactly these values (strings; numbers and booleans
    /// compared by their JSON text; an array claim matches when it holds the value).
    pub claims: BTreeMap<String, String>,
    /// Open: no token needed.
    pub public: bool,
}

fn bad(key: &'static str, message: String) -> Result<(), (&'static str, String)> {
    Err((key, message))
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl JwtConfig {
    /// Checks the section. Returns the key at fault, the message naming the provider or route.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.providers.len() > PROVIDERS_MAX {
            return bad(
                "jwt.providers",
                format!("at most {PROVIDERS_MAX} providers"),
            );
        }
        if self.routes.len() > ROUTES_MAX {
            return bad("jwt.routes", format!("at most {ROUTES_MAX} routes"));
        }
        if self.realm.is_empty() || self.realm.bytes().any(|b| b == b'"' || b < 0x20) {
            return bad(
                "jwt.realm",
                "must be non-empty, without quotes or control characters".to_owned(),
            );
        }
        if self.leeway_s > LEEWAY_S_LIMIT {
            return bad("jwt.leeway_s", format!("must be at most {LEEWAY_S_LIMIT}"));
        }
        if !(256..=TOKEN_BYTES_LIMIT).contains(&self.token_bytes_max) {
            return bad(
                "jwt.token_bytes_max",
                format!("must lie between 256 and {TOKEN_BYTES_LIMIT}"),
            );
        }
        if self.cache_entries_max > 0 && self.cache_bytes_max == 0 {
            return bad(
                "jwt.cache_bytes_max",
                "must be greater than 0 while jwt.cache_entries_max is".to_owned(),
            );
        }
        if self.forward_claims.len() > FORWARD_CLAIMS_MAX {
            return bad(
                "jwt.forward_claims",
                format!("at most {FORWARD_CLAIMS_MAX} claims"),
            );
        }
        for (claim, header) in &self.forward_claims {
            if claim.is_empty() || !is_header_name(header) {
                return bad(
                    "jwt.forward_claims",
                    format!(
                        "{claim:?} = {header:?}: the header must be a lower-case name (letters, digits, `-`)"
                    ),
                );
            }
            if matches!(
                header.as_str(),
                "authorization" | "host" | "content-length" | "content-type" | "traceparent"
            ) || header.starts_with("x-forwarded-")
                || header.starts_with("grpc-")
            {
                return bad(
                    "jwt.forward_claims",
                    format!("{header:?} is a header the gateway or HTTP itself owns"),
                );
            }
        }
        for (i, p) in self.providers.iter().enumerate() {
            p.validate(i)?;
            if self.providers[..i].iter().any(|q| q.name == p.name) {
                return bad(
                    "jwt.providers",
                    format!("provider {:?} is named twice", p.name),
                );
            }
        }
        for route in &self.routes {
            self.validate_route(route)?;
        }
        Ok(())
    }

    fn validate_route(&self, r: &JwtRoute) -> Result<(), (&'static str, String)> {
        let name = format!("route for service {:?} {:?}", r.service, r.path_prefix);
        if switchyard_core::names::validate_service(&r.service).is_err() {
            return bad("jwt.routes", format!("{name}: not a service name"));
        }
        if !(r.path_prefix.is_empty()
            || (r.path_prefix.starts_with('/') && !r.path_prefix.contains(['?', '#', '%'])))
        {
            return bad(
                "jwt.routes",
                format!(
                    "{name}: path_prefix must be empty or start with `/`, without `?`, `#` or `%`"
                ),
            );
        }
        if r.methods
            .iter()
            .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return bad(
                "jwt.routes",
                format!("{name}: methods are upper-case names like \"GET\""),
            );
        }
        if let Some(unknown) = r
            .providers
            .iter()
            .find(|n| !self.providers.iter().any(|p| &&p.name == n))
        {
            return bad(
                "jwt.routes",
                format!("{name}: no provider is named {unknown:?}"),
            );
        }
        if r.scopes.len() + r.claims.len() > ROUTE_REQUIREMENTS_MAX {
            return bad(
                "jwt.routes",
                format!("{name}: at most {ROUTE_REQUIREMENTS_MAX} scopes and claims"),
            );
        }
        if r.public && !(r.scopes.is_empty() && r.claims.is_empty() && r.providers.is_empty()) {
            return bad(
                "jwt.routes",
                format!("{name}: a public route takes no scopes, claims or providers"),
            );
        }
        if !r.public && self.providers.is_empty() {
            return bad(
                "jwt.routes",
                format!("{name}: needs a token, but no [[jwt.providers]] is configured"),
            );
        }
        Ok(())
    }
}

impl JwtProvider {
    fn validate(&self, i: usize) -> Result<(), (&'static str, String)> {
        let name = if self.name.is_empty() {
            format!("provider {}", i + 1)
        } else {
            format!("provider {:?}", self.name)
        };
        let key = "jwt.providers";
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return bad(
                key,
                format!("{name}: name must be 1 to 64 letters, digits, `-`, `_` or `.`"),
            );
        }
        if self.issuer.is_empty() {
            return bad(key, format!("{name}: issuer is required"));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return bad(
                key,
                format!("{name}: audiences must name at least one audience"),
            );
        }
        if self.algorithms.is_empty() {
            return bad(
                key,
                format!("{name}: algorithms must pin at least one algorithm"),
            );
        }
        for alg in &self.algorithms {
            if alg.to_ascii_uppercase().starts_with("HS") {
                return bad(
                    key,
                    format!(
                        "{name}: {alg} is refused: HMAC algorithms use a shared secret, and a gateway holding public keys must never take one"
                    ),
                );
            }
            if !ALGORITHMS.contains(&alg.as_str()) {
                return bad(
                    key,
                    format!(
                        "{name}: algorithm {alg:?} is not one of {}",
                        ALGORITHMS.join(", ")
                    ),
                );
            }
        }
        match (
            self.jwks_file.as_os_str().is_empty(),
            self.jwks_url.is_empty(),
        ) {
            (true, true) => return bad(key, format!("{name}: give jwks_file or jwks_url")),
            (false, false) => {
                return bad(key, format!("{name}: give jwks_file or jwks_url, not both"));
            }
            (true, false) => {
                let https = self.jwks_url.starts_with("https://");
                if !(https || self.jwks_url.starts_with("http://"))
                    || self.jwks_url.parse::<http::Uri>().is_err()
                {
                    return bad(
                        key,
                        format!("{name}: jwks_url must be an http:// or https:// URL"),
                    );
                }
                if https && self.jwks_ca_file.as_os_str().is_empty() {
                    return bad(
                        key,
                        format!(
                            "{name}: an https:// jwks_url needs jwks_ca_file (e.g. /etc/ssl/certs/ca-certificates.crt)"
                        ),
                    );
                }
            }
            (false, true) => {}
        }
        if self.refresh_min_ms < REFRESH_MS_MIN
            || self.refresh_min_ms > self.refresh_max_ms
            || !(self.refresh_min_ms..=self.refresh_max_ms).contains(&self.refresh_interval_ms)
        {
            return bad(
                key,
                format!(
                    "{name}: need {REFRESH_MS_MIN} <= refresh_min_ms <= refresh_interval_ms <= refresh_max_ms"
                ),
            );
        }
        if self.refetch_cooldown_ms < REFRESH_MS_MIN {
            return bad(
                key,
                format!("{name}: refetch_cooldown_ms must be at least {REFRESH_MS_MIN}"),
            );
        }
        if !(1..=FETCH_TIMEOUT_MS_LIMIT).contains(&self.fetch_timeout_ms) {
            return bad(
                key,
                format!("{name}: fetch_timeout_ms must lie between 1 and {FETCH_TIMEOUT_MS_LIMIT}"),
            );
        }
        if !(1..=JWKS_BYTES_LIMIT).contains(&self.jwks_bytes_max) {
            return bad(
                key,
                format!("{name}: jwks_bytes_max must lie between 1 and {JWKS_BYTES_LIMIT}"),
            );
        }
        if !(1..=KEYS_LIMIT).contains(&self.keys_max) {
            return bad(
                key,
                format!("{name}: keys_max must lie between 1 and {KEYS_LIMIT}"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> JwtProvider {
        JwtProvider {
            name: "corp".into(),
            issuer: "https://id.example.com/".into(),
            audiences: vec!["api".into()],
            algorithms: vec!["RS256".into()],
            jwks_url: "http://127.0.0.1:9/jwks.json".into(),
            ..JwtProvider::default()
        }
    }

    fn refused(change: impl FnOnce(&mut JwtConfig)) -> String {
        let mut config = JwtConfig {
            providers: vec![provider()],
            routes: vec![JwtRoute {
                service: "orders".into(),
                ..JwtRoute::default()
            }],
            ..JwtConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        change(&mut config);
        let (key, message) = config.validate().unwrap_err();
        format!("{key}: {message}")
    }

    #[test]
    fn shared_secrets_and_none_are_refused_at_config_time() {
        for alg in ["HS256", "hs512", "none", "RS1"] {
            let error = refused(|c| c.providers[0].algorithms = vec![alg.into()]);
            assert!(
                error.starts_with("jwt.providers: provider \"corp\""),
                "{error}"
            );
        }
        assert!(
            refused(|c| c.providers[0].algorithms = vec!["HS256".into()]).contains("shared secret")
        );
    }

    #[test]
    fn sources_routes_and_forwarded_headers_are_checked() {
        type Change = Box<dyn FnOnce(&mut JwtConfig)>;
        let cases: [(&str, Change); 8] = [
            (
                "jwks_file or jwks_url",
                Box::new(|c| c.providers[0].jwks_url.clear()),
            ),
            (
                "not both",
                Box::new(|c| c.providers[0].jwks_file = "/k.json".into()),
            ),
            (
                "jwks_ca_file",
                Box::new(|c| c.providers[0].jwks_url = "https://id.example.com/k".into()),
            ),
            (
                "no provider is named",
                Box::new(|c| c.routes[0].providers = vec!["other".into()]),
            ),
            ("named twice", Box::new(|c| c.providers.push(provider()))),
            (
                "owns",
                Box::new(|c| {
                    c.forward_claims = [("sub".to_owned(), "authorization".to_owned())].into()
                }),
            ),
            (
                "public route takes no scopes",
                Box::new(|c| {
                    c.routes[0].public = true;
                    c.routes[0].scopes = vec!["x".into()];
                }),
            ),
            (
                "refresh_min_ms",
                Box::new(|c| c.providers[0].refresh_interval_ms = 10),
            ),
        ];
        for (want, change) in cases {
            let error = refused(change);
            assert!(error.contains(want), "{want}: {error}");
        }
        let error = refused(|c| c.providers.clear());
        assert!(error.contains("no [[jwt.providers]]"), "{error}");
    }
}
