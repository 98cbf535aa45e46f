//! A service call stated as data, as the GraphQL `call` field states it, translated by the
//! same rules as a REST request.
//!
//! A call names the service, method, path, query, headers and body separately. The functions
//! here build from it the HTTP head that a REST client would have sent for the same request
//! (`/{service}{path}?{query}`), check it against the same limits, and hand it to
//! [`to_forwarding_req`]; so hop-by-hop removal, `X-Forwarded-*`, the request id and
//! `traceparent` follow one set of rules whichever front a request came through. The HTTP
//! request that carried the GraphQL operation (the *carrier*) contributes what a REST request
//! would have contributed itself: the client address, the HTTP version, the authority, and the
//! forwarding and tracing headers in [`INHERITED_HEADERS`].

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Uri};
use switchyard_proto::forwarding::ForwardingReq;

use super::{
    ForwardContext, Limits, RequestHead, X_REQUEST_ID, check_head, connection_tokens,
    plausible_request_id, to_forwarding_req,
};
use crate::{GatewayError, names};

#[cfg(test)]
mod tests;

/// Headers of the carrier that every call inherits unless it sets the same header itself.
/// They describe the client's connection and trace, which are the same for every call in one
/// operation; credentials and content headers are not among them, so a call carries only the
/// credentials its author gave it.
pub const INHERITED_HEADERS: [&str; 8] = [
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "traceparent",
    "tracestate",
    "baggage",
];

/// Longest argument quoted back in an error message.
const QUOTED_CHARS_MAX: usize = 64;

/// One call as a GraphQL client states it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub service: &'a str,
    /// Taken as sent (HTTP methods are case-sensitive).
    pub method: &'a str,
    /// The path below the service, starting with `/`, percent-encoded as the client wants it.
    pub path: &'a str,
    /// The query string without `?`; empty for none.
    pub query: &'a str,
    /// In order, duplicates allowed; names are case-insensitive.
    pub headers: &'a [(String, String)],
    pub body: Bytes,
}

fn invalid(field: &'static str, reason: String) -> GatewayError {
    GatewayError::InvalidArgument { field, reason }
}

fn quoted(s: &str) -> String {
    let short: String = s.chars().take(QUOTED_CHARS_MAX).collect();
    format!("{short:?}")
}

/// The call's own `x-request-id` if it is a plausible id; otherwise the caller makes one.
pub fn call_request_id<'a>(call: &Call<'a>) -> Option<&'a str> {
    call.headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(X_REQUEST_ID))
        .map(|(_, value)| value.as_str())
        .filter(|id| plausible_request_id(id))
}

/// The URI the REST request for this call would have had: origin-form, or absolute-form with
/// the carrier's scheme and authority when the carrier had them (HTTP/2 carries the authority
/// in the URI, not in a `Host` header).
fn call_uri(call: &Call<'_>, carrier: &Uri) -> Result<Uri, GatewayError> {
    if !call.path.starts_with('/') {
        return Err(invalid(
            "path",
            format!("{} must start with '/'", quoted(call.path)),
        ));
    }
    if call.path.contains(['?', '#']) || PathAndQuery::try_from(call.path).is_err() {
        return Err(invalid(
            "path",
            format!(
                "{} is not a URI path (percent-encode it; the query goes in `query`)",
                quoted(call.path)
            ),
        ));
    }
    let mut target = format!("/{}{}", call.service, call.path);
    if !call.query.is_empty() {
        target.push('?');
        target.push_str(call.query);
    }
    let bad_query = || {
        invalid(
            "query",
            format!(
                "{} is not a URI query string (percent-encode it, without '?')",
                quoted(call.query)
            ),
        )
    };
    if call.query.contains('#') {
        return Err(bad_query());
    }
    let path_and_query = PathAndQuery::try_from(target).map_err(|_| bad_query())?;
    let uri = match carrier.authority() {
        Some(authority) => Uri::builder()
            .scheme(carrier.scheme().cloned().unwrap_or(Scheme::HTTP))
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build(),
        None => Uri::builder().path_and_query(path_and_query).build(),
    };
    uri.map_err(|_| bad_query())
}

/// The call's headers, then the inherited carrier headers it did not set itself.
fn call_headers(call: &Call<'_>, carrier: &HeaderMap) -> Result<HeaderMap, GatewayError> {
    let mut headers = HeaderMap::with_capacity(call.headers.len() + INHERITED_HEADERS.len());
    for (name, value) in call.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                "headers",
                format!("{} is not a valid HTTP field name", quoted(name)),
            )
        })?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            invalid(
                "headers",
                format!("the value of {name} is not a valid HTTP field value"),
            )
        })?;
        headers.append(name, value);
    }
    // A header the carrier's own Connection header names was meant for the hop to this gateway.
    let carrier_hop = connection_tokens(carrier);
    for name in INHERITED_HEADERS {
        // `headers` holds only the call's own headers until this loop appends.
        if headers.contains_key(name) || carrier_hop.iter().any(|t| t == name) {
            continue;
        }
        for value in carrier.get_all(name) {
            headers.append(HeaderName::from_static(name), value.clone());
        }
    }
    Ok(headers)
}

/// Builds the `ForwardingReq` for one call carried by the HTTP request `carrier`, under the
/// same limits and rules as a REST request to `/{service}{path}?{query}` with the call's
/// headers and body. An invalid service name is refused like an unroutable REST path
/// (`service_not_found`): no such service can be registered.
pub fn call_to_forwarding_req(
    call: Call<'_>,
    carrier: &RequestHead<'_>,
    limits: &Limits,
    ctx: &ForwardContext<'_>,
) -> Result<ForwardingReq, GatewayError> {
    let method = Method::from_bytes(call.method.as_bytes()).map_err(|_| {
        invalid(
            "method",
            format!("{} is not an HTTP method", quoted(call.method)),
        )
    })?;
    if names::validate_service(call.service).is_err() {
        return Err(GatewayError::ServiceNotFound {
            service: call.service.chars().take(256).collect(),
        });
    }
    let uri = call_uri(&call, carrier.uri)?;
    let headers = call_headers(&call, carrier.headers)?;
    let head = RequestHead {
        method: &method,
        uri: &uri,
        version: carrier.version,
        headers: &headers,
    };
    check_head(&head, limits)?;
    if call.body.len() > limits.body_bytes_max {
        return Err(GatewayError::BodyTooLarge {
            limit_bytes: limits.body_bytes_max,
        });
    }
    to_forwarding_req(&head, call.body, ctx)
}

/// A response body as JSON, when the response says it is JSON (`application/json` or a
/// `+json` type) and it parses, or, whatever it says, when the body is a JSON object or array.
/// `None` otherwise: a body that is not JSON is still available as text.
pub fn body_json(headers: &HeaderMap, body: &[u8]) -> Option<serde_json::Value> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v.split(';').next().unwrap_or_default().trim();
            mime.eq_ignore_ascii_case("application/json")
                || mime.to_ascii_lowercase().ends_with("+json")
        })
        .unwrap_or(false);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if declared || matches!(first, Some(b'{' | b'[')) {
        serde_json::from_slice(body).ok()
    } else {
        None
    }
}
