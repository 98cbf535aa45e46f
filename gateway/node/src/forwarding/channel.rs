//! Channels to instances and the reading of what tonic reports: a lazy channel per instance
//! address through the connector seam, and the classification of a failed call into the
//! gateway's errors.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use switchyard_core::{GatewayError, InstanceKey};
use tonic::transport::{Channel, Endpoint};

use crate::seams::Connector;

/// Marks a failure to open a connection, so it can be told apart from an rpc that failed
/// after the request was sent (which is never retried).
#[derive(Debug, thiserror::Error)]
#[error("connect to {authority} failed: {source}")]
pub struct ConnectFailed {
    authority: String,
    source: std::io::Error,
}

/// A channel to `addr` that connects on first use and reconnects after failures, through
/// `connector`. One per instance address, reused by every request.
pub fn lazy_channel(
    connector: Arc<dyn Connector>,
    addr: &str,
    connect_timeout: Duration,
) -> Result<Channel, GatewayError> {
    let endpoint = Endpoint::from_shared(addr.to_owned()).map_err(|e| GatewayError::Internal {
        detail: format!("instance address {addr:?}: {e}"),
    })?;
    let connect = tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let attempt = tokio::time::timeout(connect_timeout, connector.connect(&authority));
            let result = match attempt.await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} ms", connect_timeout.as_millis()),
                )),
            };
            result
                .map(TokioIo::new)
                .map_err(|source| ConnectFailed { authority, source })
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// How tonic's own refusal of an oversized message begins.
const TONIC_DECODE_LIMIT_MESSAGE: &str = "Error, decoded message length too large";

/// Whether an error of type `E` is among the causes of `status`: tells a status made on this
/// side (a failed connect, tonic's own enforcement of the grpc-timeout) from one a service
/// sent.
fn caused_by<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut cause = status.source();
    while let Some(err) = cause {
        if err.is::<E>() {
            return true;
        }
        cause = err.source();
    }
    false
}

/// What the limits of one attempt were, for the errors that name them.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimits {
    pub timeout_ms: u64,
    pub response_body_bytes_max: usize,
}

/// The gateway's error for a call to instance `key` at `addr` that ended in `status`.
pub fn classify(
    status: &tonic::Status,
    key: &InstanceKey,
    addr: &str,
    limits: AttemptLimits,
) -> GatewayError {
    let service = key.service.clone();
    let on_instance = || {
        format!(
            "instance {} at {addr}: {}",
            key.instance_id,
            status.message()
        )
    };
    if caused_by::<ConnectFailed>(status) {
        return GatewayError::UpstreamConnect {
            service,
            detail: on_instance(),
        };
    }
    if caused_by::<tonic::TimeoutExpired>(status) {
        return GatewayError::UpstreamTimeout {
            service,
            timeout_ms: limits.timeout_ms,
        };
    }
    // tonic refuses a response past the decoding limit with a status of its own making; that
    // is the service answering too much, not the service failing the call with OUT_OF_RANGE.
    // A test pins tonic's wording.
    if status.code() == tonic::Code::OutOfRange
        && status.message().starts_with(TONIC_DECODE_LIMIT_MESSAGE)
    {
        return GatewayError::BadUpstreamResponse {
            service,
            reason: format!(
                "the response is larger than upstream.response_body_bytes_max ({} bytes)",
                limits.response_body_bytes_max
            ),
        };
    }
    // A status the transport made because the connection broke (the instance died, or reset
    // the connection) is not the service's answer.
    if caused_by::<hyper::Error>(status) || caused_by::<std::io::Error>(status) {
        return GatewayError::UpstreamReset {
            service,
            detail: on_instance(),
        };
    }
    GatewayError::UpstreamStatus {
        service,
        grpc_code: status.code() as i32,
        message: status.message().to_owned(),
    }
}
