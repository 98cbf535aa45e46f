//! Which requests need a token: `[[jwt.routes]]` compiled per service.
//!
//! A service with no route is open. A service with routes needs a token on every request,
//! with the requirements of the most specific route that covers it (the longest `path_prefix`;
//! on a tie, one that names methods; then the first written), unless that route is
//! `public = true`. A request no route covers needs a token of any provider, nothing more.
//!
//! Paths are matched after percent-decoding, so `/%61dmin` is `/admin`. A path whose meaning a
//! service could read differently from the gateway — an encoded `/` or `\`, a `.` or `..`
//! segment, an empty segment — is refused on a service with routes: otherwise `/public/../admin`
//! could match a public prefix and reach `/admin`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::config::{JwtConfig, JwtRoute};

/// What a route asks of a token.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Indexes of the providers whose tokens it takes; empty: every provider.
    pub providers: Vec<usize>,
    pub scopes: Vec<String>,
    pub claims: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Route {
    prefix: Vec<u8>,
    methods: Vec<String>,
    public: bool,
    rule: Rule,
}

/// What a request needs.
#[derive(Debug)]
pub enum Requirement<'a> {
    Open,
    Token(&'a Rule),
    /// The path is ambiguous on a service with routes.
    AmbiguousPath,
}

/// The routes of every service.
#[derive(Debug, Default)]
pub struct Routes {
    by_service: BTreeMap<String, Vec<Route>>,
    any_token: Rule,
}

impl Routes {
    pub fn new(config: &JwtConfig) -> Self {
        let mut by_service: BTreeMap<String, Vec<Route>> = BTreeMap::new();
        for r in &config.routes {
            by_service
                .entry(r.service.clone())
                .or_default()
                .push(compile(config, r));
        }
        Self {
            by_service,
            any_token: Rule::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    /// What a request for `service` with `method` and (still percent-encoded) `path` needs.
    pub fn requirement(&self, service: &str, method: &str, path: &str) -> Requirement<'_> {
        let Some(routes) = self.by_service.get(service) else {
            return Requirement::Open;
        };
        let Some(path) = decoded(path) else {
            return Requirement::AmbiguousPath;
        };
        let best = routes
            .iter()
            .filter(|r| covers(&r.prefix, &path))
            .filter(|r| r.methods.is_empty() || r.methods.iter().any(|m| m == method))
            // max_by_key keeps the last of equals; reversing keeps the first written.
            .rev()
            .max_by_key(|r| (r.prefix.len(), !r.methods.is_empty()));
        match best {
            Some(r) if r.public => Requirement::Open,
            Some(r) => Requirement::Token(&r.rule),
            None => Requirement::Token(&self.any_token),
        }
    }
}

fn compile(config: &JwtConfig, r: &JwtRoute) -> Route {
    let providers = r
        .providers
        .iter()
        .filter_map(|name| config.providers.iter().position(|p| &p.name == name))
        .collect();
    Route {
        prefix: r.path_prefix.trim_end_matches('/').as_bytes().to_vec(),
        methods: r.methods.clone(),
        public: r.public,
        rule: Rule {
            providers,
            scopes: r.scopes.clone(),
            claims: r.claims.clone(),
        },
    }
}

/// Whether `prefix` (no trailing `/`) covers `path`: equal, or a whole-segment prefix.
fn covers(prefix: &[u8], path: &[u8]) -> bool {
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

/// The path percent-decoded, or `None` if it is ambiguous; borrowed when it has no escape.
fn decoded(path: &str) -> Option<Cow<'_, [u8]>> {
    let bytes = path.as_bytes();
    let out = if bytes.contains(&b'%') {
        Cow::Owned(unescaped(bytes)?)
    } else if bytes.contains(&b'\\') {
        return None;
    } else {
        Cow::Borrowed(bytes)
    };
    // Every segment after the leading `/` must be non-empty and not `.` or `..`; a trailing
    // `/` is allowed.
    let body = out.strip_prefix(b"/")?;
    let body = body.strip_suffix(b"/").unwrap_or(body);
    if !body.is_empty()
        && body
            .split(|&b| b == b'/')
            .any(|s| s.is_empty() || s == b"." || s == b"..")
    {
        return None;
    }
    Some(out)
}

/// `bytes` with every `%XX` decoded, or `None` for a bad escape, an encoded `/`, `\` or `%`,
/// or a `\`.
fn unescaped(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if value == b'/' || value == b'\\' || value == b'%' {
                return None;
            }
            out.push(value);
            i += 3;
        } else {
            if b == b'\\' {
                return None;
            }
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtProvider;

    fn routes(list: Vec<JwtRoute>) -> Routes {
        let config = JwtConfig {
            providers: vec![JwtProvider {
                name: "p".into(),
                ..JwtProvider::default()
            }],
            routes: list,
            ..JwtConfig::default()
        };
        Routes::new(&config)
    }

    fn route(prefix: &str, methods: &[&str], public: bool, scope: &str) -> JwtRoute {
        JwtRoute {
            service: "svc".into(),
            path_prefix: prefix.into(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            public,
            scopes: if scope.is_empty() {
                vec![]
            } else {
                vec![scope.into()]
            },
            ..JwtRoute::default()
        }
    }

    fn scope_of(r: Requirement<'_>) -> String {
        match r {
            Requirement::Open => "open".into(),
            Requirement::AmbiguousPath => "ambiguous".into(),
            Requirement::Token(rule) => rule.scopes.first().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn the_most_specific_route_decides() {
        let r = routes(vec![
            route("", &[], false, "base"),
            route("/public", &[], true, ""),
            route("/admin", &[], false, "admin"),
            route("/admin", &["DELETE"], false, "admin-delete"),
        ]);
        let need = |m: &str, p: &str| scope_of(r.requirement("svc", m, p));
        assert_eq!(need("GET", "/x"), "base");
        assert_eq!(need("GET", "/public"), "open");
        assert_eq!(need("GET", "/public/a"), "open");
        assert_eq!(need("GET", "/publicity"), "base");
        assert_eq!(need("GET", "/admin/users"), "admin");
        assert_eq!(need("DELETE", "/admin/users"), "admin-delete");
        assert_eq!(need("GET", "/%61dmin"), "admin");
        assert_eq!(scope_of(r.requirement("other", "GET", "/admin")), "open");
    }

    #[test]
    fn ambiguous_paths_are_refused_on_a_service_with_routes() {
        let r = routes(vec![route("/public", &[], true, "")]);
        for p in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public%2fadmin",
            "/public//x",
            "/./x",
            "/a\\b",
            "/bad%zz",
        ] {
            assert_eq!(scope_of(r.requirement("svc", "GET", p)), "ambiguous", "{p}");
        }
        // Not a route's business elsewhere: the service without routes is open.
        assert_eq!(scope_of(r.requirement("svc2", "GET", "/a/../b")), "open");
        // A service with routes but no route covering the path: a token of any provider.
        assert_eq!(scope_of(r.requirement("svc", "GET", "/other/")), "");
    }
}
