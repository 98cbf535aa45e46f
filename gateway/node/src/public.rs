//! The public listener: REST forwarding at `/{service}/{path}`, the GraphQL front at
//! `/graphql`, `/healthz` and `/readyz`. `public.rest` and `public.graphql` turn each front
//! on or off; with the GraphQL front on, `/graphql` is its path, not a service's.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use switchyard_core::GatewayError;
use switchyard_core::trace::{self, Span};
use switchyard_core::translate::{self, ForwardContext, RequestHead, X_REQUEST_ID};

use crate::graphql::{self, Front};
use crate::metrics::{self, UpstreamErrorKind};
use crate::node::Node;
use crate::otlp;
use crate::seams::ClientAddr;

pub fn router(node: Arc<Node>) -> Router {
    let fronts = &node.config().public;
    let (rest, graphql) = (fronts.rest, fronts.graphql);
    let base = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let base = if rest {
        base.fallback(forward)
    } else {
        base.fallback(route_not_found)
    };
    let router = base.with_state(node.clone());
    if graphql {
        router.merge(graphql::router(node, Front::Public))
    } else {
        router
    }
}

/// The answer to every path when REST forwarding is off.
pub(crate) async fn route_not_found(uri: http::Uri) -> Response {
    error_response(
        &GatewayError::RouteNotFound {
            path: uri.path().chars().take(256).collect(),
        },
        None,
    )
}

/// Liveness: the process serves HTTP.
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// Readiness: caught up with the bus and not shutting down. Load balancers send traffic only
/// to ready gateways.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let status = node.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": status.ready,
        "shutting_down": status.shutting_down,
        "node_id": status.node_id,
        "bus_position": status.bus_position,
        "catch_up_target": status.catch_up_target,
    });
    json_response(code, serde_json::to_vec(&body).unwrap_or_default())
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The JSON error response for `error`; every gateway error leaves through here.
pub fn error_response(error: &GatewayError, request_id: Option<&str>) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, error.to_json(request_id))
}

async fn forward(
    State(node): State<Arc<Node>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    request: Request,
) -> Response {
    let _in_flight = node.metrics().in_flight(metrics::Front::Rest);
    let request_id = translate::client_request_id(request.headers())
        .map(str::to_owned)
        .unwrap_or_else(|| node.new_request_id());
    let method = request.method().clone();
    let path: String = request.uri().path().chars().take(256).collect();
    let incoming = request
        .headers()
        .get(translate::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    let span = node.with_rng(|rng| Span::start(incoming, rng));
    let trace_id = span.trace_id();
    let started = tokio::time::Instant::now();
    let start_unix_ms = node.now_ms();
    let mut response = match handle(&node, client, &request_id, &span, request).await {
        Ok(response) => response.map(Body::from),
        Err(error) => {
            let level_warn = error.http_status() >= 500;
            if level_warn {
                tracing::warn!(%request_id, %trace_id, %method, %path, code = %error.code(), %error, "request failed");
            } else {
                tracing::info!(%request_id, %trace_id, %method, %path, code = %error.code(), %error, "request refused");
            }
            error_response(&error, Some(&request_id))
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let service = known_service(&node, &path);
    node.metrics()
        .request(metrics::Front::Rest, service, &method, status, elapsed);
    let elapsed_us = elapsed.as_micros() as u64;
    if node.config().log.access {
        tracing::info!(%request_id, %trace_id, %method, %path, status, elapsed_us, "request done");
    } else {
        tracing::debug!(%request_id, %trace_id, %method, %path, status, elapsed_us, "request done");
    }
    otlp::export(
        node.exporter.as_ref(),
        otlp::Finished {
            span,
            method: method.as_str(),
            path: &path,
            service,
            status,
            request_id: &request_id,
            start_unix_ms,
            elapsed,
        },
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }
    response
}

/// The service a path routes to if the registry knows it, else `""`: the label under which a
/// request is counted, bounded by the registry so that random paths cannot grow the metrics.
fn known_service<'p>(node: &Node, path: &'p str) -> &'p str {
    match translate::route(path) {
        Ok((service, _)) if node.registry().service_entries(service).next().is_some() => service,
        _ => "",
    }
}

async fn handle(
    node: &Node,
    client: std::net::SocketAddr,
    request_id: &str,
    span: &Span,
    request: Request,
) -> Result<http::Response<Bytes>, GatewayError> {
    let (parts, body) = request.into_parts();
    let head = RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
    };
    let limits = node.limits();
    translate::check_head(&head, &limits)?;
    // Refuse a bad route before reading a body that would be thrown away.
    let (service, _) = translate::route(parts.uri.path())?;
    let service = service.to_owned();
    let body = read_body(body, limits.body_bytes_max).await?;
    let deadline_unix_ms = node.now_ms() + node.config().upstream.timeout_ms;
    let ctx = ForwardContext {
        scheme: "http",
        client_addr: Some(client),
        gateway_node: node.id(),
        request_id,
        deadline_unix_ms,
    };
    let mut forwarding_req = translate::to_forwarding_req(&head, body, &ctx)?;
    trace::set_parent(&mut forwarding_req, span);
    let forwarding_resp = node.forward(forwarding_req).await?;
    translate::to_http_response(forwarding_resp).map_err(|reason| {
        node.metrics()
            .upstream_error(&service, UpstreamErrorKind::BadResponse);
        GatewayError::BadUpstreamResponse { service, reason }
    })
}

/// Reads the whole body, refusing it with 413 once it passes the limit.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::BodyTooLarge { limit_bytes: limit })
        }
        Err(error) => Err(GatewayError::InvalidArgument {
            field: "body",
            reason: format!("could not be read: {error}"),
        }),
    }
}
