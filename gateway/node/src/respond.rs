//! HTTP answers shared by every front: JSON bodies, gateway errors (with the headers their
//! codes call for), bounded body reading, and the answer to a path no route serves.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use switchyard_core::GatewayError;

use crate::serve::BodyReadTimeout;

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

/// The JSON error response for `error`, with the message a public client may see (no
/// instance address, OS error or upstream message: [`GatewayError::public_message`]). Errors
/// that call for a header carry it (`WWW-Authenticate` on 401, `Retry-After` on 429).
pub fn error_response(error: &GatewayError, request_id: Option<&str>) -> Response {
    respond_with(error, error.to_json(request_id))
}

/// The JSON error response with the full message, for the control listener, whose callers
/// own the instances they register.
pub fn detailed_error_response(error: &GatewayError, request_id: Option<&str>) -> Response {
    respond_with(error, error.to_detailed_json(request_id))
}

fn respond_with(error: &GatewayError, body: Vec<u8>) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, body);
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

/// Reads the whole body, refusing it with 413 once it passes the limit, and with 408 once the
/// listener's `body_read_timeout_ms` passes (see [`BodyReadTimeout`]).
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::BodyTooLarge { limit_bytes: limit })
        }
        Err(error) => match find_cause::<BodyReadTimeout>(&*error) {
            Some(timeout) => Err(GatewayError::RequestTimeout {
                timeout_ms: timeout.timeout_ms,
            }),
            None => Err(GatewayError::InvalidArgument {
                field: "body",
                reason: format!("could not be read: {error}"),
            }),
        },
    }
}

/// The first error of type `E` in `error`'s chain of causes.
fn find_cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        cause = error.source();
    }
    None
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
