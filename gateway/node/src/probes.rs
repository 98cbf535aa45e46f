//! `/healthz` and `/readyz`, served on both listeners.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use http::StatusCode;

use crate::respond::json_response;
use crate::status::Status;

/// The probes' paths.
pub const PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The probe routes.
pub fn router(status: Arc<Status>) -> Router {
    let [health, ready] = PATHS;
    Router::new()
        .route(health, get(healthz))
        .route(ready, get(readyz))
        .with_state(status)
}

/// Liveness: the process serves HTTP.
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// Readiness: caught up with the bus and not shutting down. Load balancers send traffic only
/// to ready gateways.
pub async fn readyz(State(status): State<Arc<Status>>) -> Response {
    let readiness = status.readiness();
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, serde_json::to_vec(&readiness).unwrap_or_default())
}
