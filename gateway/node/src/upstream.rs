//! Calling a service: pick a live instance, call `ForwardingService.Send` on its pooled
//! channel within the deadline, record the outcome for passive health, and retry on another
//! instance only when the request never reached a service.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use switchyard_core::balance::{self, Candidate, InstanceHealth};
use switchyard_core::registry::Lookup;
use switchyard_core::{GatewayError, InstanceKey};
use switchyard_proto::forwarding::forwarding_service_client::ForwardingServiceClient;
use switchyard_proto::forwarding::{ForwardingReq, ForwardingResp};
use tonic::transport::{Channel, Endpoint};

use crate::metrics::UpstreamErrorKind;
use crate::node::{Node, lock};
use crate::seams::Connector;

/// The balancer's record of one instance.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot {
    pub health: InstanceHealth,
    pub in_flight: u32,
    /// Since when every attempt to connect has failed; `None` after any answer.
    pub failing_since_ms: Option<u64>,
    /// Evictions by this gateway without an answer between them; each doubles the wait.
    pub evictions: u32,
}

impl Slot {
    /// Whether this instance has been unreachable long enough to evict, given the policy.
    fn evictable(&self, now_ms: u64, after_ms: u64, after_max_ms: u64) -> bool {
        let wait = after_ms
            .saturating_mul(1 << self.evictions.min(16))
            .min(after_max_ms);
        self.failing_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since) >= wait)
    }
}

/// The instance [`Node::choose`] picked.
struct Choice {
    key: InstanceKey,
    addr: String,
    /// Whether another instance not yet tried remains, so that a retry could follow.
    others_untried: bool,
}

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

/// Decrements an instance's in-flight count when the attempt ends, however it ends.
struct InFlight<'a> {
    node: &'a Node,
    key: InstanceKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(slot) = lock(&self.node.balancer).get_mut(&self.key) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }
}

impl Node {
    /// Sends `req` to an instance of `req.service` and returns its answer.
    pub async fn forward(&self, req: ForwardingReq) -> Result<ForwardingResp, GatewayError> {
        let service = req.service.clone();
        let result = self.forward_with_retries(req, &service).await;
        if let Err(GatewayError::NoLiveInstance { .. }) = &result {
            self.metrics
                .upstream_error(&service, UpstreamErrorKind::Unavailable);
        }
        result
    }

    async fn forward_with_retries(
        &self,
        req: ForwardingReq,
        service: &str,
    ) -> Result<ForwardingResp, GatewayError> {
        let timeout_ms = self.config.upstream.timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut req = Some(req);
        let mut tried = BTreeSet::new();
        let mut last_error = None;
        for attempt in 1.. {
            let Some(choice) = self.choose(service, &tried)? else {
                break;
            };
            // A retry needs the request again. When no retry can follow this attempt (the
            // last allowed, or no other instance left), send the request itself: a copy
            // costs an allocation per string and header.
            let last = attempt >= self.retry_policy.attempts_max || !choice.others_untried;
            let to_send = if last { req.take() } else { req.clone() };
            let Some(to_send) = to_send else {
                break;
            };
            let Choice { key, addr, .. } = choice;
            let result = self.attempt(&key, &addr, to_send, deadline).await;
            self.record(&key, &result);
            if let Err(error) = &result
                && let Some(kind) = UpstreamErrorKind::of(error)
            {
                self.metrics.upstream_error(service, kind);
            }
            if matches!(result, Err(GatewayError::UpstreamConnect { .. })) {
                self.evict_if_all_unreachable(service);
            }
            match result {
                Ok(resp) => return Ok(resp),
                Err(error) if !last && self.retry_policy.should_retry(&error, attempt) => {
                    tracing::debug!(service = %service, instance = %key.instance_id, %error, attempt, "retrying on another instance");
                    tried.insert(key);
                    self.metrics.retry(service);
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| GatewayError::NoLiveInstance {
            service: service.to_owned(),
        }))
    }

    /// Picks an instance not yet tried, or `None` when all were tried. Routing reads the
    /// registry at this moment, so an instance removed from it gets no new request from the
    /// moment the removal is applied.
    fn choose(
        &self,
        service: &str,
        tried: &BTreeSet<InstanceKey>,
    ) -> Result<Option<Choice>, GatewayError> {
        let now = self.now_ms();
        let registry = self.registry();
        let live = match registry.lookup(service, now) {
            Lookup::Unknown => {
                return Err(GatewayError::ServiceNotFound {
                    service: service.to_owned(),
                });
            }
            Lookup::NoLive => {
                return Err(GatewayError::NoLiveInstance {
                    service: service.to_owned(),
                });
            }
            Lookup::Live(live) => live,
        };
        let mut balancer = lock(&self.balancer);
        let candidates: Vec<Candidate> = live
            .iter()
            .map(|inst| {
                let slot = balancer.get(inst.key).copied().unwrap_or_default();
                Candidate {
                    in_flight: slot.in_flight,
                    ejected: slot.health.is_ejected(now),
                    tried: tried.contains(inst.key),
                }
            })
            .collect();
        let Some(i) = self.with_rng(|rng| balance::pick(&candidates, rng)) else {
            return Ok(None);
        };
        let chosen = live[i];
        match balancer.get_mut(chosen.key) {
            Some(slot) => slot.in_flight += 1,
            None => balancer.entry(chosen.key.clone()).or_default().in_flight += 1,
        }
        Ok(Some(Choice {
            key: chosen.key.clone(),
            addr: chosen.addr.to_owned(),
            others_untried: candidates.iter().filter(|c| !c.tried).count() > 1,
        }))
    }

    fn channel(&self, addr: &str) -> Result<Channel, GatewayError> {
        let mut pool = lock(&self.pool);
        if let Some(channel) = pool.get(addr) {
            return Ok(channel.clone());
        }
        let channel = lazy_channel(
            self.seams.connector.clone(),
            addr,
            Duration::from_millis(self.config.upstream.connect_timeout_ms),
        )?;
        pool.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    async fn attempt(
        &self,
        key: &InstanceKey,
        addr: &str,
        req: ForwardingReq,
        deadline: tokio::time::Instant,
    ) -> Result<ForwardingResp, GatewayError> {
        let _in_flight = InFlight {
            node: self,
            key: key.clone(),
        };
        let service = &key.service;
        let timeout_ms = self.config.upstream.timeout_ms;
        let mut client = ForwardingServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(self.config.upstream.response_body_bytes_max + 64 * 1024)
            .max_encoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(req);
        request.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout_at(deadline, client.send(request)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout {
                service: service.clone(),
                timeout_ms,
            }),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) if caused_by::<ConnectFailed>(&status) => {
                Err(GatewayError::UpstreamConnect {
                    service: service.clone(),
                    detail: format!(
                        "instance {} at {addr}: {}",
                        key.instance_id,
                        status.message()
                    ),
                })
            }
            Ok(Err(status)) if caused_by::<tonic::TimeoutExpired>(&status) => {
                Err(GatewayError::UpstreamTimeout {
                    service: service.clone(),
                    timeout_ms,
                })
            }
            // tonic refuses a response past the decoding limit with a status of its own
            // making; that is the service answering too much, not the service failing the
            // call with OUT_OF_RANGE. A test pins tonic's wording.
            Ok(Err(status))
                if status.code() == tonic::Code::OutOfRange
                    && status.message().starts_with(TONIC_DECODE_LIMIT_MESSAGE) =>
            {
                Err(GatewayError::BadUpstreamResponse {
                    service: service.clone(),
                    reason: format!(
                        "the response is larger than upstream.response_body_bytes_max ({} bytes)",
                        self.config.upstream.response_body_bytes_max
                    ),
                })
            }
            // A status the transport made because the connection broke (the instance died,
            // or reset the connection) is not the service's answer.
            Ok(Err(status))
                if caused_by::<hyper::Error>(&status) || caused_by::<std::io::Error>(&status) =>
            {
                Err(GatewayError::UpstreamReset {
                    service: service.clone(),
                    detail: format!(
                        "instance {} at {addr}: {}",
                        key.instance_id,
                        status.message()
                    ),
                })
            }
            Ok(Err(status)) => Err(GatewayError::UpstreamStatus {
                service: service.clone(),
                grpc_code: status.code() as i32,
                message: status.message().to_owned(),
            }),
        }
    }

    /// Passive health: connect failures and broken connections count towards ejection; any
    /// answer from the service (even an error status) proves it reachable. Only connect
    /// failures count towards eviction: a broken connection is followed by a reconnect, which
    /// tells whether the instance is gone.
    fn record(&self, key: &InstanceKey, result: &Result<ForwardingResp, GatewayError>) {
        let now = self.now_ms();
        let mut balancer = lock(&self.balancer);
        // Look up before inserting: `entry` would copy the key on every request.
        if !balancer.contains_key(key) {
            balancer.insert(key.clone(), Slot::default());
        }
        let Some(slot) = balancer.get_mut(key) else {
            return;
        };
        match result {
            Err(GatewayError::UpstreamConnect { .. }) => {
                slot.failing_since_ms.get_or_insert(now);
                if slot.health.on_failure(now, &self.health_policy) {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, until_ms = slot.health.ejected_until_ms, "instance ejected after connect failures");
                }
            }
            Err(GatewayError::UpstreamReset { .. }) => {
                if slot.health.on_failure(now, &self.health_policy) {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, until_ms = slot.health.ejected_until_ms, "instance ejected after its connection broke");
                }
            }
            Err(GatewayError::UpstreamTimeout { .. }) => {}
            Ok(_) | Err(_) => {
                slot.health.on_success();
                slot.failing_since_ms = None;
                slot.evictions = 0;
            }
        }
    }

    /// Evicts every live instance of `service`, cluster-wide, once all of them have been
    /// unreachable from here for the eviction wait. One reachable instance is enough to evict
    /// none: a single dead instance is only ejected locally and left to its lease, so a
    /// gateway that is cut off from part of the network cannot empty the registry for all.
    fn evict_if_all_unreachable(&self, service: &str) {
        let u = &self.config.upstream;
        if u.evict_after_ms == 0 {
            return;
        }
        let now = self.now_ms();
        let keys: Vec<InstanceKey> = {
            let registry = self.registry();
            let Lookup::Live(live) = registry.lookup(service, now) else {
                return;
            };
            let mut balancer = lock(&self.balancer);
            let all = live.iter().all(|inst| {
                balancer
                    .get(inst.key)
                    .is_some_and(|s| s.evictable(now, u.evict_after_ms, u.evict_after_max_ms))
            });
            if !all {
                return;
            }
            live.iter()
                .map(|inst| {
                    let slot = balancer.entry(inst.key.clone()).or_default();
                    slot.evictions = slot.evictions.saturating_add(1);
                    slot.failing_since_ms = Some(now);
                    inst.key.clone()
                })
                .collect()
        };
        self.metrics.eviction();
        for key in keys {
            match self.evict(&key) {
                Ok(()) => {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, "every instance unreachable: evicted cluster-wide")
                }
                Err(error) => {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, %error, "eviction not published")
                }
            }
        }
    }
}
