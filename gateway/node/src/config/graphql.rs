//! The `[graphql]` section: what the GraphQL front allows and the bounds it enforces.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlConfig {
    /// Whether `__schema` and `__type` are answered. Off in production by default: the schema
    /// is published in `docs/schema.graphql`, and introspection helps probing more than use.
    pub introspection: bool,
    /// Whether `GET /graphql` serves the GraphiQL page (it loads scripts from a CDN).
    pub graphiql: bool,
    /// Deepest selection nesting an operation may have.
    pub depth_max: usize,
    /// Largest complexity (one per selected field) an operation may have.
    pub complexity_max: usize,
    /// Most `call` fields one operation may hold, aliases and fragments counted; an operation
    /// with more is refused before any runs, so one request fans out to a bounded number of
    /// services.
    pub calls_max: usize,
    /// Whether `register` and `deregister` are served on the public listener too. Off: they are
    /// served on the control listener only, like the REST registration.
    pub mutations_on_public: bool,
    /// Whether registry queries and subscriptions on the public listener show instances'
    /// addresses and metadata. Off: clients see services, instance ids and states, never
    /// where an instance listens (the control listener shows all to a `read` credential).
    pub registry_details_on_public: bool,
    /// Largest GraphQL request body (and WebSocket message).
    pub body_bytes_max: usize,
    /// Most WebSocket connections open at once per listener; more are refused with 503.
    pub websockets_max: usize,
    /// Most WebSocket connections open at once from one client address per listener (an
    /// IPv4 address, or an IPv6 /64, which one client usually holds whole); more are refused
    /// with 429 before the upgrade. The address is the peer the listener sees: behind a load
    /// balancer that is the balancer's, so raise this to `websockets_max` there and bound
    /// clients at the balancer.
    pub websockets_per_client_max: usize,
    /// How long a new WebSocket may take to send `connection_init`; one that has not is
    /// closed with code 4408, so a socket that never speaks holds its permit this long at most.
    pub websocket_init_timeout_ms: u64,
    /// Most operations (subscriptions, queries, mutations) running at once on one WebSocket;
    /// one more is answered with an `error` message for its id, and the others go on.
    pub websocket_operations_max: usize,
    /// Browser origins (`scheme://host[:port]`) allowed to open a WebSocket besides the
    /// gateway's own. A browser always sends `Origin`; an upgrade from any other origin is
    /// refused, so a page elsewhere cannot ride a user's network access to the control port
    /// (cross-site WebSocket hijacking). Clients that send no `Origin` are not browsers and
    /// are not affected.
    pub websocket_origins: Vec<String>,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        Self {
            introspection: false,
            graphiql: false,
            depth_max: 16,
            complexity_max: 1_000,
            calls_max: 16,
            mutations_on_public: false,
            registry_details_on_public: false,
            body_bytes_max: 1024 * 1024,
            websockets_max: 1_024,
            websockets_per_client_max: 64,
            websocket_init_timeout_ms: 3_000,
            websocket_operations_max: 100,
            websocket_origins: Vec::new(),
        }
    }
}

/// Upper bound on `graphql.calls_max`: beyond it one request could pin too many upstream
/// connections at once.
pub const CALLS_MAX_LIMIT: usize = 256;

/// Upper bound on `graphql.websocket_init_timeout_ms`: a socket that has not said hello in a
/// minute is not a client worth a permit.
pub const WEBSOCKET_INIT_TIMEOUT_MS_LIMIT: u64 = 60_000;

impl GraphqlConfig {
    /// Checks the section's values. Returns the key at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("graphql.depth_max", self.depth_max),
            ("graphql.complexity_max", self.complexity_max),
            ("graphql.calls_max", self.calls_max),
            ("graphql.body_bytes_max", self.body_bytes_max),
            ("graphql.websockets_max", self.websockets_max),
            (
                "graphql.websockets_per_client_max",
                self.websockets_per_client_max,
            ),
            (
                "graphql.websocket_operations_max",
                self.websocket_operations_max,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, "must be greater than 0".to_owned()));
            }
        }
        if let Some(bad) = self
            .websocket_origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/'))
        {
            return Err((
                "graphql.websocket_origins",
                format!("{bad:?} is not an origin like \"https://console.example.com\""),
            ));
        }
        if !(1..=WEBSOCKET_INIT_TIMEOUT_MS_LIMIT).contains(&self.websocket_init_timeout_ms) {
            return Err((
                "graphql.websocket_init_timeout_ms",
                format!("must lie between 1 and {WEBSOCKET_INIT_TIMEOUT_MS_LIMIT}"),
            ));
        }
        if self.calls_max > CALLS_MAX_LIMIT {
            return Err((
                "graphql.calls_max",
                format!("must be at most {CALLS_MAX_LIMIT}"),
            ));
        }
        Ok(())
    }
}
