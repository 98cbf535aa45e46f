//! How connections to instances are opened (the [`Dialer`]: the connector seam, the address
//! policy, the connect timeout, a shared fresh failure), tonic's lazy channel for the
//! gateway's own clients, and the classification of a failed call into the gateway's errors.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use switchyard_core::{GatewayError, InstanceKey};
use tonic::transport::{Channel, Endpoint};

use switchyard_core::address::Forbidden;

use super::unary::CallError;
use crate::address::{AddressRefused, Addresses};
use crate::seams::{Connector, Io};

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

/// HTTP/2 pings on a connection to an instance while calls are open on it, so a half-open
/// connection is found and closed (its calls fail as resets) instead of holding calls until
/// their deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// How often to ping.
    pub interval: Duration,
    /// How long to wait for the ping's acknowledgement.
    pub timeout: Duration,
}

/// The HTTP/2 settings of a connection to an instance that operators choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    /// Keep-alive pings, or none.
    pub keep_alive: Option<KeepAlive>,
}

/// How connections to one instance address are opened: through the connector seam and, for
/// instances, the address policy, within the connect timeout, a fresh failure shared by every
/// connect that begins while it is fresh ([`FAILURE_SHARED_FOR`]).
#[derive(Clone)]
pub struct Dialer {
    connector: Arc<dyn Connector>,
    connect_timeout: Duration,
    failure_shared_for: Duration,
    policed: Option<Policed>,
    last_failure: Arc<Mutex<Option<LastFailure>>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("connect_timeout", &self.connect_timeout)
            .field("failure_shared_for", &self.failure_shared_for)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Every connection made through the address policy when `policed` is given (each
    /// connection resolves the host again and dials only admitted addresses).
    pub fn new(
        connector: Arc<dyn Connector>,
        connect_timeout: Duration,
        failure_shared_for: Duration,
        policed: Option<Policed>,
    ) -> Self {
        Self {
            connector,
            connect_timeout,
            failure_shared_for,
            policed,
            last_failure: Arc::default(),
        }
    }

    /// Opens a connection to `authority` (`host:port`) and sets it up with `then` (a TLS or
    /// an HTTP/2 handshake), all within the connect timeout. Fails at once, undialed, while
    /// the last failure is fresh; records this one's failure unless it is the gateway's own
    /// shortage or the address policy's refusal, which say nothing about the instance.
    pub async fn open<T, F, Fut>(&self, authority: &str, then: F) -> Result<T, ConnectFailed>
    where
        F: FnOnce(Box<dyn Io>) -> Fut,
        Fut: Future<Output = std::io::Result<T>>,
    {
        if let Some(shared) = shared_failure(&self.last_failure, self.failure_shared_for) {
            return Err(ConnectFailed {
                authority: authority.to_owned(),
                source: shared,
                not_dialed: true,
            });
        }
        let dial = async {
            let io = match &self.policed {
                Some(p) => {
                    p.addresses
                        .connect(&*self.connector, authority, &*p.on_refused)
                        .await
                }
                None => self.connector.connect(authority).await,
            }?;
            then(io).await
        };
        let result = match tokio::time::timeout(self.connect_timeout, dial).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection within {} ms",
                    self.connect_timeout.as_millis()
                ),
            )),
        };
        let mut last = self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(connection) => {
                *last = None;
                Ok(connection)
            }
            Err(source) => {
                let failed = ConnectFailed::dialed(authority.to_owned(), source);
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
}

/// A channel to `addr` that connects on first use and reconnects after failures, through
/// `connector`, with no address policy and no pings: for the gateway's own clients (a demo's
/// or a simulation's registrations to a control listener), not for instances (those are
/// called by [`super::unary`]).
pub fn lazy_channel(
    connector: Arc<dyn Connector>,
    addr: &str,
    connect_timeout: Duration,
    reset_stream_hold: Duration,
) -> Result<Channel, GatewayError> {
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| GatewayError::Internal {
            detail: format!("address {addr:?}: {e}"),
        })?
        .http2_reset_stream_duration(reset_stream_hold);
    let dialer = Dialer::new(connector, connect_timeout, FAILURE_SHARED_FOR, None);
    let connect = tower::service_fn(move |uri: http::Uri| {
        let dialer = dialer.clone();
        async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            dialer
                .open(&authority, |io| async move { Ok(TokioIo::new(io)) })
                .await
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
/// Requests waiting on a connection being opened share its fate: the waiting requests take
/// their turn to connect one after the other (an instance's client and tonic's channel
/// alike), and without this each would dial anew, so the n-th would wait n connect timeouts
/// and each would dial an instance that the first failure had just ejected. Within this
/// span the waiting requests fail at once instead, as connect failures the forwarder retries
/// on another instance (like a connection pool that fails its pending requests when their
/// connection fails, or a gRPC subchannel in transient failure). The waiting requests take
/// their turn right after the failure, so the span need not be long; for
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

/// The gateway's error for a call to instance `key` at `addr` that failed with `error`.
pub fn classify(
    error: &CallError,
    key: &InstanceKey,
    addr: &str,
    limits: AttemptLimits,
) -> GatewayError {
    let service = key.service.clone();
    let on_instance = |what: &str| format!("instance {} at {addr}: {what}", key.instance_id);
    match error {
        CallError::Connect(failed) => {
            // The gateway's own shortage: refused as overloaded, neither ejecting nor
            // evicting the instance, and not retried (another instance would meet the same
            // shortage).
            if failed.is_local() {
                return GatewayError::Overloaded {
                    what: format!("its own resources ({failed})"),
                };
            }
            let detail = match failed.refused_by_policy() {
                Some(class) => on_instance(&format!(
                    "every address it resolves to is refused by the address policy ({})",
                    class.label()
                )),
                None => on_instance(&failed.to_string()),
            };
            GatewayError::UpstreamConnect { service, detail }
        }
        CallError::TooLarge => too_large(key, limits),
        CallError::TimedOut => GatewayError::UpstreamTimeout {
            service,
            timeout_ms: limits.timeout_ms,
        },
        // Not the instance's doing: refused as overloaded, neither ejecting nor retried.
        CallError::Full(what) => GatewayError::Overloaded { what: what.clone() },
        // The connection broke (the instance died, or reset it) or the stream was reset:
        // not the service's answer.
        CallError::Transport(what) => GatewayError::UpstreamReset {
            service,
            detail: on_instance(what),
        },
        // A gateway on the way refused the call as a loop; the refusal travels back as the
        // same refusal (see `switchyard_core::hops::LOOP_GRPC_MESSAGE`).
        CallError::Status { code, message }
            if *code == switchyard_core::status::code::FAILED_PRECONDITION
                && message == switchyard_core::hops::LOOP_GRPC_MESSAGE =>
        {
            GatewayError::LoopDetected {
                reason: format!(
                    "instance {} at {addr} is a gateway that refused the call as a loop",
                    key.instance_id
                ),
            }
        }
        CallError::Status { code, message } => GatewayError::UpstreamStatus {
            service,
            grpc_code: *code,
            message: message.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn status_of(source: io::Error) -> CallError {
        CallError::Connect(ConnectFailed::dialed("127.0.0.1:9".into(), source))
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
