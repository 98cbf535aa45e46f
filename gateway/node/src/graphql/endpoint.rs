//! The HTTP side of the GraphQL front, at `/graphql`:
//!
//! * `POST` with a JSON body `{"query", "operationName", "variables"}` runs one operation and
//!   answers 200 with `{"data", "errors"}`, whatever the fields' fates (each failure is in
//!   `errors` with its code and status). A request refused before it is parsed (a body too
//!   large, not JSON, a batch) answers with the status REST would give and the same shape.
//! * `GET` with a WebSocket upgrade speaks `graphql-transport-ws` (and the older
//!   `graphql-ws`): subscriptions, and queries and mutations under the same rules as `POST`.
//!   An upgrade is refused with 503 when the listener has `graphql.websockets_max` sockets
//!   open, and with 429 when the client's address has `graphql.websockets_per_client_max`;
//!   an open socket is served within its own bounds by [`super::websocket`].
//! * `GET` without an upgrade serves the GraphiQL page when `graphql.graphiql` is on.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource, WebSocketProtocols};
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use switchyard_core::GatewayError;
use switchyard_core::translate::{self, Limits, X_REQUEST_ID_NAME};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::websocket::{self, ClientSockets, Counted, SocketLimits};
use super::{Backend, Carrier, Front, SwitchyardSchema, refusal_body, schema};
use crate::respond::{add_error_headers, read_body};
use crate::seams::ClientAddr;
use crate::serve::Shutdown;
use crate::telemetry::{Front as MetricsFront, ListenerLabel, WebSocketRefusal};
use crate::tls::PeerCertificate;

/// Where the front is served, on whichever listener.
pub const GRAPHQL_PATH: &str = "/graphql";

struct Endpoint {
    backend: Arc<Backend>,
    schema: SwitchyardSchema,
    /// One permit per open WebSocket (`graphql.websockets_max`).
    websockets: Arc<Semaphore>,
    /// Open WebSockets per client address (`graphql.websockets_per_client_max`).
    clients: Arc<ClientSockets>,
    listener: ListenerLabel,
}

/// The `/graphql` routes for one listener.
pub fn router(backend: Arc<Backend>, front: Front) -> Router {
    let endpoint = Endpoint {
        schema: schema(backend.clone(), front),
        websockets: Arc::new(Semaphore::new(backend.config.websockets_max)),
        clients: ClientSockets::new(backend.config.websockets_per_client_max),
        listener: match front {
            Front::Public => ListenerLabel::Public,
            Front::Control => ListenerLabel::Control,
        },
        backend,
    };
    let counted = endpoint.backend.clone();
    Router::new()
        .route(GRAPHQL_PATH, get(get_graphql).post(post_graphql))
        .with_state(Arc::new(endpoint))
        .layer(axum::middleware::from_fn_with_state(counted, count))
}

/// Counts each HTTP request to `/graphql` (a WebSocket once, when it is upgraded) under
/// `front="graphql"`. The calls inside a query are counted by the upstream path, per service.
async fn count(
    axum::extract::State(backend): axum::extract::State<Arc<Backend>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let metrics = backend.telemetry.metrics();
    let _in_flight = metrics.in_flight(MetricsFront::Graphql);
    let method = request.method().clone();
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    metrics.request(
        MetricsFront::Graphql,
        "",
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The request id this request goes by: the client's if plausible, else a fresh one.
fn request_id(backend: &Backend, headers: &HeaderMap) -> String {
    translate::client_request_id(headers)
        .map(str::to_owned)
        .unwrap_or_else(|| backend.pipeline.new_request_id())
}

fn json(status: StatusCode, body: Vec<u8>, request_id: &str) -> Response {
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(X_REQUEST_ID_NAME, v);
    }
    response
}

fn refuse(error: &GatewayError, request_id: &str) -> Response {
    tracing::info!(%request_id, code = %error.code(), %error, "graphql request refused");
    answer_refusal(error, request_id)
}

/// A WebSocket refused for a bound. Logged at `debug` only: a flood of upgrades would flood
/// the log too, and each is counted in `switchyard_graphql_websocket_refusals_total`.
fn refuse_websocket(
    endpoint: &Endpoint,
    reason: WebSocketRefusal,
    error: &GatewayError,
    request_id: &str,
) -> Response {
    endpoint
        .backend
        .telemetry
        .metrics()
        .websocket_refusal(endpoint.listener, reason);
    tracing::debug!(%request_id, reason = reason.label(), %error, "graphql websocket refused");
    answer_refusal(error, request_id)
}

fn answer_refusal(error: &GatewayError, request_id: &str) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(status, refusal_body(error, request_id), request_id);
    add_error_headers(response.headers_mut(), error);
    response
}

/// Whether the body is declared JSON. Requiring it keeps a browser from sending an operation
/// across sites without a CORS preflight (a form can post only other types).
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

async fn post_graphql(
    State(endpoint): State<Arc<Endpoint>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    request: Request,
) -> Response {
    let backend = &endpoint.backend;
    let request_id = request_id(backend, request.headers());
    let (parts, body) = request.into_parts();
    let carrier = Carrier {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        peer: parts.extensions.get::<Arc<PeerCertificate>>().cloned(),
        headers: parts.headers,
        client,
    };
    let limits = Limits {
        body_bytes_max: backend.config.body_bytes_max,
        header_bytes_max: backend.call_limits.header_bytes_max,
    };
    if let Err(error) = translate::check_head(&carrier.head(), &limits) {
        return refuse(&error, &request_id);
    }
    if !declares_json(&carrier.headers) {
        let error = GatewayError::InvalidArgument {
            field: "content-type",
            reason: "a GraphQL request is application/json".to_owned(),
        };
        return refuse(&error, &request_id);
    }
    let bytes = match read_body(body, limits.body_bytes_max).await {
        Ok(bytes) => bytes,
        Err(error) => return refuse(&error, &request_id),
    };
    // One operation per request, so `graphql.calls_max` bounds what one request fans out to.
    // (Checked before parsing: serde would also read a JSON array as the request's fields.)
    let parsed = if bytes.trim_ascii_start().starts_with(b"[") {
        Err("batches are not accepted: send one operation per request".to_owned())
    } else {
        serde_json::from_slice::<async_graphql::Request>(&bytes)
            .map_err(|e| format!("expected {{\"query\": \"...\", \"variables\": {{...}}}}: {e}"))
    };
    let operation = match parsed {
        Ok(operation) => operation,
        Err(reason) => {
            let error = GatewayError::InvalidArgument {
                field: "body",
                reason,
            };
            return refuse(&error, &request_id);
        }
    };
    let started = tokio::time::Instant::now();
    let response = endpoint.schema.execute(operation.data(carrier)).await;
    tracing::debug!(%request_id, errors = response.errors.len(), elapsed_us = started.elapsed().as_micros() as u64, "graphql request done");
    let body = serde_json::to_vec(&response).unwrap_or_else(|e| {
        let error = GatewayError::Internal {
            detail: format!("cannot serialise the response: {e}"),
        };
        refusal_body(&error, &request_id)
    });
    json(StatusCode::OK, body, &request_id)
}

/// Whether a WebSocket upgrade may proceed given its `Origin`: none (not a browser), the
/// gateway's own (the origin's authority equals the `Host` the browser addressed), or one
/// listed in `graphql.websocket_origins`.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// The protocol of a WebSocket upgrade: the first the client offers that is served. The same
/// one is named in the handshake and spoken, whatever order the client lists them in.
fn websocket_protocol(headers: &HeaderMap) -> Option<WebSocketProtocols> {
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?
        .split(',')
        .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn get_graphql(
    State(endpoint): State<Arc<Endpoint>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    request: Request,
) -> Response {
    let backend = &endpoint.backend;
    let request_id = request_id(backend, request.headers());
    let (mut parts, _) = request.into_parts();
    if is_websocket(&parts.headers)
        && !origin_allowed(&parts.headers, &backend.config.websocket_origins)
    {
        let error = GatewayError::NotAllowed {
            what: "a WebSocket from another origin; allow it in graphql.websocket_origins"
                .to_owned(),
        };
        return refuse(&error, &request_id);
    }
    if !is_websocket(&parts.headers) {
        if backend.config.graphiql {
            return Html(
                GraphiQLSource::build()
                    .endpoint(GRAPHQL_PATH)
                    .subscription_endpoint(GRAPHQL_PATH)
                    .title("Switchyard GraphQL")
                    .finish(),
            )
            .into_response();
        }
        let error = GatewayError::NotAllowed {
            what: "GET /graphql serves the GraphiQL page only when graphql.graphiql is on; \
                   send operations with POST, or subscribe over a WebSocket"
                .to_owned(),
        };
        return refuse(&error, &request_id);
    }
    let Some(protocol) = websocket_protocol(&parts.headers) else {
        let error = GatewayError::InvalidArgument {
            field: "sec-websocket-protocol",
            reason: format!("expected one of {ALL_WEBSOCKET_PROTOCOLS:?}"),
        };
        return refuse(&error, &request_id);
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // The client's own bound first: a client at it is told so (429) even when the listener
    // is full too, and is not counted against the listener.
    let Some(client_slot) = endpoint.clients.try_acquire(client.ip()) else {
        // The sockets a client holds end when it closes them, at no time the gateway knows.
        let error = GatewayError::RateLimited { retry_after_s: 1 };
        return refuse_websocket(
            &endpoint,
            WebSocketRefusal::PerClientMax,
            &error,
            &request_id,
        );
    };
    let Ok(permit) = endpoint.websockets.clone().try_acquire_owned() else {
        let error = GatewayError::Overloaded {
            what: format!(
                "{} open WebSockets (graphql.websockets_max)",
                backend.config.websockets_max
            ),
        };
        return refuse_websocket(
            &endpoint,
            WebSocketRefusal::WebsocketsMax,
            &error,
            &request_id,
        );
    };
    // Draining waits for requests, not for upgraded connections: end this one on shutdown.
    let shutdown = parts
        .extensions
        .get::<Shutdown>()
        .map(|s| s.0.clone())
        .unwrap_or_else(CancellationToken::new);
    let carrier = Carrier {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        peer: parts.extensions.get::<Arc<PeerCertificate>>().cloned(),
        headers: parts.headers,
        client,
    };
    let schema = endpoint.schema.clone();
    let message_bytes_max = backend.config.body_bytes_max;
    let limits = SocketLimits {
        init_timeout: Duration::from_millis(backend.config.websocket_init_timeout_ms),
        operations_max: backend.config.websocket_operations_max,
    };
    let counted = Counted {
        telemetry: backend.telemetry.clone(),
        listener: endpoint.listener,
    };
    upgrade
        .protocols([protocol.sec_websocket_protocol()])
        .max_message_size(message_bytes_max)
        .max_frame_size(message_bytes_max)
        .on_upgrade(move |socket| async move {
            let _held = (permit, client_slot);
            websocket::serve(socket, schema, protocol, carrier, limits, counted, shutdown).await;
        })
}
