//! Channels to instances and the reading of what tonic reports: a lazy channel per instance
//! address through the connector seam, and the classification of a failed call into the
//! gateway's errors.

use std::error::Error as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use switchyard_core::{GatewayError, InstanceKey};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use switchyard_core::address::Forbidden;

use crate::address::{AddressRefused, Addresses};
use crate::seams::Connector;

/// Marks a failure to open a connection, so it can be told apart from an rpc that failed
/// after the request was sent (which is never retried).
#[derive(Debug, thiserror::Error)]
#[error("connect to {authority} failed: {source}")]
pub struct ConnectFailed {
    authority: String,
    source: std::io::Error,
    /// Not dialed: a connection to the same address had failed just before (see
    /// [`FAILURE_SHARED_FOR`]); `source` tells that failure.
    not_dialed: bool,
}

impl ConnectFailed {
    fn dialed(authority: String, source: std::io::Error) -> Self {
        Self {
            authority,
            source,
            not_dialed: false,
        }
    }

    /// Whether no connection was dialed: the failure is one shared with a connect that had
    /// just failed.
    pub fn not_dialed(&self) -> bool {
        self.not_dialed
    }

    /// Whether the connect failed for want of this host's own resources.
    pub fn is_local(&self) -> bool {
        is_local_resource(&self.source)
    }

    /// Why the address policy refused the connection, if it did.
    pub fn refused_by_policy(&self) -> Option<Forbidden> {
        self.source
            .get_ref()
            .and_then(|e| e.downcast_ref::<AddressRefused>())
            .map(|refused| refused.class)
    }
}

/// The address policy a channel dials through, and what to tell of each address it refuses.
#[derive(Clone)]
pub struct Policed {
    pub addresses: Arc<Addresses>,
    pub on_refused: Arc<dyn Fn(Forbidden) + Send + Sync>,
}

impl std::fmt::Debug for Policed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policed").finish_non_exhaustive()
    }
}

/// Linux's numbers for the errors that tell of this host's own shortage
/// (`asm-generic/errno-base.h` and `errno.h`); the crate does not depend on `libc`.
mod errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENOBUFS: i32 = 105;
}

/// Whether a connect error is the gateway's own: out of file descriptors (EMFILE, ENFILE),
/// buffers or memory (ENOBUFS, ENOMEM), or local addresses and ports (EADDRNOTAVAIL). Such an
/// error says nothing about the instance, so it must neither eject nor evict it.
pub fn is_local_resource(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::AddrNotAvailable | ErrorKind::OutOfMemory
    ) {
        return true;
    }
    // The numbers are Linux's; elsewhere they mean other things.
    cfg!(target_os = "linux")
        && matches!(
            error.raw_os_error(),
            Some(
                errno::ENOMEM
                    | errno::ENFILE
                    | errno::EMFILE
                    | errno::EADDRNOTAVAIL
                    | errno::ENOBUFS
            )
        )
}

/// HTTP/2 pings on a connection to an instance, so a half-open connection is found and
/// closed (its calls fail as resets) instead of holding calls until their deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// How long the connection may go without a frame before a ping.
    pub interval: Duration,
    /// How long to wait for the ping's acknowledgement.
    pub timeout: Duration,
}

/// The HTTP/2 settings of a channel that the gateway chooses rather than h2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    /// Keep-alive pings, or none.
    pub keep_alive: Option<KeepAlive>,
    /// How long a stream this side reset stays remembered (at most 50 per connection), so
    /// the peer's late frames on it are dropped quietly (`upstream.reset_stream_hold_ms`).
    pub reset_stream_hold: Duration,
}

/// A channel to `addr` that connects on first use and reconnects after failures, through
/// `connector`, with no address policy and no pings: for the gateway's own clients (a demo's
/// or a simulation's registrations to a control listener), not for instances.
pub fn lazy_channel(
    connector: Arc<dyn Connector>,
    addr: &str,
    connect_timeout: Duration,
    reset_stream_hold: Duration,
) -> Result<Channel, GatewayError> {
    let http2 = Http2 {
        keep_alive: None,
        reset_stream_hold,
    };
    upstream_channel(
        connector,
        addr,
        connect_timeout,
        FAILURE_SHARED_FOR,
        http2,
        None,
        None,
    )
}

/// [`lazy_channel`] with HTTP/2 keep-alive pings when `http2` has them, every
/// connection made through the address policy when `policed` is given (each connection
/// resolves the host again and dials only admitted addresses), and TLS over the connection
/// (ALPN h2, the certificate checked against the address's host) when `tls` is given. Pings are sent only while
/// calls are open: servers built on grpc-go and grpc-java by default close a connection that
/// is pinged often with no call on it (`too_many_pings`).
pub fn upstream_channel(
    connector: Arc<dyn Connector>,
    addr: &str,
    connect_timeout: Duration,
    failure_shared_for: Duration,
    http2: Http2,
    policed: Option<Policed>,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, GatewayError> {
    let mut endpoint =
        Endpoint::from_shared(addr.to_owned()).map_err(|e| GatewayError::Internal {
            detail: format!("instance address {addr:?}: {e}"),
        })?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| GatewayError::Internal {
                detail: format!("TLS to {addr:?}: {e}"),
            })?;
    }
    endpoint = endpoint.http2_reset_stream_duration(http2.reset_stream_hold);
    if let Some(keep_alive) = http2.keep_alive {
        endpoint = endpoint
            .http2_keep_alive_interval(keep_alive.interval)
            .keep_alive_timeout(keep_alive.timeout)
            .keep_alive_while_idle(false);
    }
    let last_failure: Arc<Mutex<Option<LastFailure>>> = Arc::default();
    let connect = tower::service_fn(move |uri: http::Uri| {
        let (connector, policed) = (connector.clone(), policed.clone());
        let last_failure = last_failure.clone();
        async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            if let Some(shared) = shared_failure(&last_failure, failure_shared_for) {
                return Err(ConnectFailed {
                    authority,
                    source: shared,
                    not_dialed: true,
                });
            }
            let dial = async {
                match &policed {
                    Some(p) => {
                        p.addresses
                            .connect(&*connector, &authority, &*p.on_refused)
                            .await
                    }
                    None => connector.connect(&authority).await,
                }
            };
            let attempt = tokio::time::timeout(connect_timeout, dial);
            let result = match attempt.await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} ms", connect_timeout.as_millis()),
                )),
            };
            let mut last = last_failure.lock().unwrap_or_else(PoisonError::into_inner);
            match result {
                Ok(io) => {
                    *last = None;
                    Ok(TokioIo::new(io))
                }
                Err(source) => {
                    let failed = ConnectFailed::dialed(authority, source);
                    // The gateway's own shortage and the address policy's refusal say
                    // nothing about the instance: the next request dials, or asks the
                    // policy, again.
                    if !failed.is_local() && failed.refused_by_policy().is_none() {
                        *last = Some(LastFailure {
                            at: tokio::time::Instant::now(),
                            kind: failed.source.kind(),
                            message: failed.source.to_string(),
                        });
                    }
                    Err(failed)
                }
            }
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// The failure a connect beginning now shares, if the channel's last connection failed
/// less than `shared_for` ago.
fn shared_failure(
    last: &Mutex<Option<LastFailure>>,
    shared_for: Duration,
) -> Option<std::io::Error> {
    let last = last.lock().unwrap_or_else(PoisonError::into_inner);
    let failure = last.as_ref()?;
    let since = failure.at.elapsed();
    (since < shared_for).then(|| {
        std::io::Error::new(
            failure.kind,
            format!(
                "not dialed: the connection opened for the requests waiting on it failed {} ms ago ({})",
                since.as_millis(),
                failure.message
            ),
        )
    })
}

/// How long after a failed connection to an instance the channel fails every further connect
/// at once, with that failure, instead of dialing again.
///
/// Requests waiting on a channel whose connection is being opened share its fate: when it
/// fails, tonic's channel (a buffer in front of a reconnecting service) takes the waiting
/// requests one after the other and dials anew for each, so the n-th waits n connect
/// timeouts and each dials an instance that the first failure had just ejected. Within this
/// span the waiting requests fail at once instead, as connect failures the forwarder retries
/// on another instance (like a connection pool that fails its pending requests when their
/// connection fails, or a gRPC subchannel in transient failure). The queue drains within the
/// same wake of the channel's task as the failure, so the span need not be long; for
/// instances it is also never longer than the ejection (`upstream.ejection_base_ms`, 1 s by
/// default), so a request sent to an ejected instance because every other one is ejected
/// too is refused undialed only while the failure is that fresh.
pub const FAILURE_SHARED_FOR: Duration = Duration::from_millis(50);

/// The last failed connection of a channel: when, and what failed.
#[derive(Debug)]
struct LastFailure {
    at: tokio::time::Instant,
    kind: std::io::ErrorKind,
    message: String,
}

/// How tonic's own refusal of an oversized message begins.
const TONIC_DECODE_LIMIT_MESSAGE: &str = "Error, decoded message length too large";

/// Whether an error of type `E` is among the causes of `status`: tells a status made on this
/// side (a failed connect, tonic's own enforcement of the grpc-timeout) from one a service
/// sent.
fn caused_by<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    cause::<E>(status).is_some()
}

/// The first error of type `E` among the causes of `status`.
fn cause<E: std::error::Error + 'static>(status: &tonic::Status) -> Option<&E> {
    let mut cause = status.source();
    while let Some(err) = cause {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cause = err.source();
    }
    None
}

/// Whether `status` is a connect failure shared with one that had just failed, with no
/// connection dialed for it ([`FAILURE_SHARED_FOR`]).
pub fn not_dialed(status: &tonic::Status) -> bool {
    cause::<ConnectFailed>(status).is_some_and(ConnectFailed::not_dialed)
}

/// What the limits of one attempt were, for the errors that name them.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimits {
    pub timeout_ms: u64,
    pub response_body_bytes_max: usize,
}

/// The gateway's error for an answer of instance `key` whose body is larger than
/// `upstream.response_body_bytes_max`, whether the decoding limit refused the message or the
/// body was measured after it.
pub fn too_large(key: &InstanceKey, limits: AttemptLimits) -> GatewayError {
    GatewayError::BadUpstreamResponse {
        service: key.service.clone(),
        reason: format!(
            "the response is larger than upstream.response_body_bytes_max ({} bytes)",
            limits.response_body_bytes_max
        ),
    }
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
    if let Some(failed) = cause::<ConnectFailed>(status) {
        // The gateway's own shortage: refused as overloaded, neither ejecting nor evicting
        // the instance, and not retried (another instance would meet the same shortage).
        if failed.is_local() {
            return GatewayError::Overloaded {
                what: format!("its own resources ({failed})"),
            };
        }
        if let Some(class) = failed.refused_by_policy() {
            return GatewayError::UpstreamConnect {
                service,
                detail: format!(
                    "instance {} at {addr}: every address it resolves to is refused by the address policy ({})",
                    key.instance_id,
                    class.label()
                ),
            };
        }
        // A shared failure tells its own story (when the connection it shares failed);
        // tonic's message would only say the transport failed.
        let detail = if failed.not_dialed() {
            format!("instance {} at {addr}: {failed}", key.instance_id)
        } else {
            on_instance()
        };
        return GatewayError::UpstreamConnect { service, detail };
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
        return too_large(key, limits);
    }
    // A status the transport made because the connection broke (the instance died, or reset
    // the connection) is not the service's answer.
    if caused_by::<hyper::Error>(status) || caused_by::<std::io::Error>(status) {
        return GatewayError::UpstreamReset {
            service,
            detail: on_instance(),
        };
    }
    // A gateway on the way refused the call as a loop; the refusal travels back as the
    // same refusal (see `switchyard_core::hops::LOOP_GRPC_MESSAGE`).
    if status.code() == tonic::Code::FailedPrecondition
        && status.message() == switchyard_core::hops::LOOP_GRPC_MESSAGE
    {
        return GatewayError::LoopDetected {
            reason: format!(
                "instance {} at {addr} is a gateway that refused the call as a loop",
                key.instance_id
            ),
        };
    }
    GatewayError::UpstreamStatus {
        service,
        grpc_code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn status_of(source: io::Error) -> tonic::Status {
        tonic::Status::from_error(Box::new(ConnectFailed::dialed(
            "127.0.0.1:9".into(),
            source,
        )))
    }

    fn classified(source: io::Error) -> GatewayError {
        let key = InstanceKey {
            service: "s".into(),
            instance_id: "i".into(),
        };
        let limits = AttemptLimits {
            timeout_ms: 1,
            response_body_bytes_max: 1,
        };
        classify(&status_of(source), &key, "http://127.0.0.1:9", limits)
    }

    #[test]
    fn local_shortages_are_the_gateways_and_the_rest_the_instances() {
        // EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL on Linux.
        for errno in [24, 23, 105, 12, 99] {
            let error = io::Error::from_raw_os_error(errno);
            assert!(is_local_resource(&error), "{error}");
            let classified = classified(error);
            assert_eq!(classified.code(), "overloaded", "{classified}");
            assert!(!classified.retryable());
        }
        assert!(is_local_resource(&io::Error::from(
            io::ErrorKind::AddrNotAvailable
        )));
        // ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ECONNRESET, and the connect timeout.
        for errno in [111, 110, 113, 104] {
            let error = io::Error::from_raw_os_error(errno);
            assert!(!is_local_resource(&error), "{error}");
            assert_eq!(classified(error).code(), "upstream_connect_failed");
        }
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "no connection within 1 ms");
        assert!(!is_local_resource(&timeout));
    }
}
