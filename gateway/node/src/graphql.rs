//! The GraphQL front: the services and the registry, queried as a graph, at `/graphql`.
//!
//! It is served on the public listener when `public.graphql` is on, and on the control
//! listener always (as REST registration is). The two differ only in whether mutations run:
//! on the control listener always, on the public one only with `graphql.mutations_on_public`.
//!
//! * [`query`]: `call` (one request forwarded through the same translator, routing, balancing
//!   and retries as REST) and the registry and node views.
//! * [`mutation`]: `register` and `deregister`, and the `registryChanges` subscription.
//! * [`types`]: the object types, built from the core's types.
//! * [`gate`]: the checks made on each operation before any field runs (`calls_max`,
//!   mutations, introspection), and the error codes on every answer.
//! * [`endpoint`]: the axum handlers: `POST /graphql`, the GraphiQL page, and GraphQL over
//!   WebSocket (`graphql-transport-ws`, and the older `graphql-ws`) on `GET /graphql`.
//! * [`websocket`]: one upgraded socket, served within its bounds (the `connection_init`
//!   timeout, operations at once), and the count of open sockets per client address.
//!
//! Every error a client sees carries `extensions.code`, the same stable code REST puts in its
//! JSON errors ([`GatewayError::code`]), and `extensions.status`, the HTTP status REST would
//! have answered.

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::{ErrorExtensionValues, Pos, Schema, ServerError};
use http::{HeaderMap, Method, Uri, Version};
use switchyard_core::GatewayError;
use switchyard_core::translate::{Limits, RequestHead};

use crate::config::GraphqlConfig;
use crate::pipeline::Pipeline;
use crate::registrar::Registrar;
use crate::status::Status;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::tls::PeerCertificate;

pub mod endpoint;
pub mod gate;
pub mod mutation;
pub mod query;
pub mod types;
pub mod websocket;

pub use endpoint::router;

/// The schema both listeners serve.
pub type SwitchyardSchema = Schema<query::Query, mutation::Mutation, mutation::Subscription>;

/// Which listener a schema serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Public,
    Control,
}

/// What the GraphQL front works with: the request pipeline for calls, the registrar for
/// mutations, the store's change feed for subscriptions, and the status for views.
#[derive(Debug)]
pub struct Backend {
    pub pipeline: Arc<Pipeline>,
    pub registrar: Arc<Registrar>,
    pub status: Arc<Status>,
    pub store: Arc<Store>,
    pub telemetry: Arc<Telemetry>,
    pub config: GraphqlConfig,
    /// The limits a call is held to: REST's (`public.body_bytes_max`, `header_bytes_max`).
    pub call_limits: Limits,
}

/// The schema for one listener, with the backend and the configured limits.
pub fn schema(backend: Arc<Backend>, front: Front) -> SwitchyardSchema {
    let g = &backend.config;
    let rules = gate::Rules {
        calls_max: g.calls_max,
        mutations: front == Front::Control || g.mutations_on_public,
        introspection: g.introspection,
    };
    let mut builder = Schema::build(query::Query, mutation::Mutation, mutation::Subscription)
        .limit_depth(g.depth_max)
        .limit_complexity(g.complexity_max)
        .extension(gate::Gate(rules));
    if !g.introspection {
        builder = builder.disable_introspection();
    }
    builder.data(backend).data(front).finish()
}

/// The schema in SDL, as committed in `docs/schema.graphql` (`switchyard graphql-schema`).
pub fn sdl() -> String {
    Schema::build(query::Query, mutation::Mutation, mutation::Subscription)
        .finish()
        .sdl()
}

/// The HTTP request that carried an operation (for WebSockets, the upgrade request). Calls
/// inherit from it what a REST request would have contributed itself.
#[derive(Debug, Clone)]
pub struct Carrier {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub client: SocketAddr,
    /// The client certificate the listener verified, if any.
    pub peer: Option<Arc<PeerCertificate>>,
}

impl Carrier {
    pub fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            uri: &self.uri,
            version: self.version,
            headers: &self.headers,
        }
    }
}

/// The extensions every gateway error carries: `code`, `status` and, when the error belongs
/// to one forwarded request, `requestId`.
fn extensions(error: &GatewayError, request_id: Option<&str>) -> ErrorExtensionValues {
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", error.code());
    ext.set("status", i32::from(error.http_status()));
    if let Some(id) = request_id {
        ext.set("requestId", id);
    }
    for (name, value) in header_extensions(error) {
        if let Ok(value) = async_graphql::Value::from_json(value) {
            ext.set(name, value);
        }
    }
    ext
}

/// The headers REST would send with `error` (`WWW-Authenticate`, `Retry-After`), as
/// camel-cased extensions: `wwwAuthenticate` a string, `retryAfter` a number of seconds.
fn header_extensions(error: &GatewayError) -> Vec<(String, serde_json::Value)> {
    error
        .response_headers()
        .into_iter()
        .map(|(name, value)| {
            let value = match value.parse::<u64>() {
                Ok(seconds) if name == "retry-after" => serde_json::Value::from(seconds),
                _ => serde_json::Value::from(value),
            };
            (camel_case(name), value)
        })
        .collect()
}

/// `www-authenticate` → `wwwAuthenticate`.
fn camel_case(header: &str) -> String {
    let mut out = String::with_capacity(header.len());
    let mut upper = false;
    for c in header.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A gateway error as a resolver returns it.
pub fn field_error(error: &GatewayError, request_id: Option<&str>) -> async_graphql::Error {
    let mut e = async_graphql::Error::new(error.public_message());
    e.extensions = Some(extensions(error, request_id));
    e
}

/// Fails a nullable field the way the GraphQL spec asks: the field is null and the error,
/// with the field's path, is in `errors`. (Returning the error instead would make the library
/// leave the field out of `data`.)
pub fn null_with_error<T>(
    ctx: &async_graphql::Context<'_>,
    error: &GatewayError,
    request_id: Option<&str>,
) -> async_graphql::Result<Option<T>> {
    let error = field_error(error, request_id).into_server_error(ctx.item.pos);
    ctx.add_error(ctx.set_error_path(error));
    Ok(None)
}

/// Fails a `call` field like [`null_with_error`], with the headers the policies left for
/// the call's answer as extensions too, camel-cased like the error's own headers and with
/// their values as strings (`ratelimitPolicy`, `ratelimit`): a call has no response headers
/// of its own, and the carrying HTTP response answers many calls.
pub fn null_with_call_error<T>(
    ctx: &async_graphql::Context<'_>,
    error: &GatewayError,
    request_id: &str,
    headers: &[(http::HeaderName, http::HeaderValue)],
) -> async_graphql::Result<Option<T>> {
    let mut e = field_error(error, Some(request_id));
    if let Some(ext) = e.extensions.as_mut() {
        for (name, value) in headers {
            ext.set(
                camel_case(name.as_str()),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            );
        }
    }
    let error = e.into_server_error(ctx.item.pos);
    ctx.add_error(ctx.set_error_path(error));
    Ok(None)
}

/// A gateway error as a whole response's error (before any field ran).
pub fn server_error(error: &GatewayError, pos: Option<Pos>) -> ServerError {
    let mut e = ServerError::new(error.public_message(), pos);
    e.extensions = Some(extensions(error, None));
    e
}

/// The GraphQL JSON body for an error that refused a request before it was parsed.
pub fn refusal_body(error: &GatewayError, request_id: &str) -> Vec<u8> {
    let mut extensions = serde_json::json!({
        "code": error.code(),
        "status": error.http_status(),
        "requestId": request_id,
    });
    for (name, value) in header_extensions(error) {
        extensions[name] = value;
    }
    let body = serde_json::json!({
        "errors": [{ "message": error.public_message(), "extensions": extensions }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The backend from the schema's data; the schemas built by [`schema`] always hold it.
/// The backend, for a resolver that reads the registry or the node: on the control listener,
/// only for a caller the registrar lets read (`control.reads`).
pub(crate) fn reader<'a>(
    ctx: &async_graphql::Context<'a>,
) -> Result<&'a Arc<Backend>, async_graphql::Error> {
    let backend = backend(ctx)?;
    if ctx.data::<Front>().ok() == Some(&Front::Control) {
        let (headers, client, peer) = match ctx.data::<Carrier>() {
            Ok(carrier) => (
                carrier.headers.clone(),
                Some(carrier.client),
                carrier.peer.clone(),
            ),
            Err(_) => (HeaderMap::new(), None, None),
        };
        backend
            .registrar
            .authorize_read(&headers, peer.as_deref(), client)
            .map_err(|error| field_error(&error, None))?;
    }
    Ok(backend)
}

pub(crate) fn backend<'a>(
    ctx: &async_graphql::Context<'a>,
) -> Result<&'a Arc<Backend>, async_graphql::Error> {
    ctx.data::<Arc<Backend>>().map_err(|_| {
        field_error(
            &GatewayError::Internal {
                detail: "the GraphQL schema was built without its backend".to_owned(),
            },
            None,
        )
    })
}
