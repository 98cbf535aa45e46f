//! HTTP answers shared by every front: JSON bodies, gateway errors (with the headers their
//! codes call for), bounded body reading, and the answer to a path no route serves.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use switchyard_core::GatewayError;

/// A JSON response.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
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

/// The JSON error response for `error`; every gateway error leaves through here. Errors that
/// call for a header carry it (`WWW-Authenticate` on 401, `Retry-After` on 429).
pub fn error_response(error: &GatewayError, request_id: Option<&str>) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, error.to_json(request_id));
    add_error_headers(response.headers_mut(), error);
    response
}

/// Adds the headers `error` calls for.
pub fn add_error_headers(headers: &mut http::HeaderMap, error: &GatewayError) {
    for (name, value) in error.response_headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// Reads the whole body, refusing it with 413 once it passes the limit.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
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

/// The answer to a path no route serves.
pub async fn route_not_found(uri: http::Uri) -> Response {
    error_response(
        &GatewayError::RouteNotFound {
            path: uri.path().chars().take(256).collect(),
        },
        None,
    )
}
