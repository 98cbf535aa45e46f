//! Forwarding: pick a live instance, call `ForwardingService.Send` on its pooled channel
//! within the deadline, record the outcome for passive health, retry on another instance
//! only when the request never reached a service, and evict a service cluster-wide once every
//! instance of it has been unreachable for long enough.
//!
//! * [`channel`]: the lazy channel per instance address, and how a failed call is classified.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::balance::{
    self, AttemptOutcome, Candidate, EvictionPolicy, HealthPolicy, InstanceHealth, RetryPolicy,
    Slot,
};
use switchyard_core::registry::{EntryState, LiveInstance, Lookup};
use switchyard_core::{GatewayError, InstanceKey};
use switchyard_proto::forwarding::ForwardingResp;

use crate::address::Addresses;
use crate::config::UpstreamConfig;
use crate::registrar::Registrar;
use crate::seams::Connector;
use crate::store::Store;
use crate::sync::{SharedRng, lock};
use crate::telemetry::{AddressStage, EjectionReason, Telemetry, UpstreamErrorKind};
use crate::tls;

/// How many instances of a service are weighed without allocating the candidates' vector.
const CANDIDATES_ON_STACK: usize = 16;

/// The most a valid `ForwardingResp` adds to its body's bytes, so that the decoding limit
/// (`upstream.response_body_bytes_max` plus this) refuses no response that keeps the rules of
/// `translate::to_http_response`: headers of at most 64 KiB counted as name + value + 4 each,
/// at most 256 of them, each with up to 8 bytes more of protobuf tags and lengths, and the
/// status and the body's own tag and length.
const RESPONSE_ENVELOPE_BYTES_MAX: usize = switchyard_core::translate::RESPONSE_HEADER_BYTES_MAX
    + switchyard_core::translate::RESPONSE_HEADERS_MAX * 8
    + 32;

pub mod channel;
pub mod unary;

pub use channel::{FAILURE_SHARED_FOR, lazy_channel};
pub use unary::Outgoing;
use unary::{CallError, Upstream};

/// A failed attempt: the error, and what it tells of the instance.
struct Failed {
    error: GatewayError,
    outcome: AttemptOutcome,
}

impl From<GatewayError> for Failed {
    fn from(error: GatewayError) -> Self {
        Self {
            outcome: AttemptOutcome::of(Err(&error)),
            error,
        }
    }
}

/// The instance [`Forwarder::choose`] picked.
struct Choice {
    key: InstanceKey,
    addr: String,
    /// Whether another instance not yet tried remains, so that a retry could follow.
    others_untried: bool,
}

/// A service's answer, and the instance that gave it.
#[derive(Debug)]
pub struct Answered {
    pub resp: ForwardingResp,
    pub instance: InstanceKey,
}

/// The balancer, the channel pool and the attempts.
pub struct Forwarder {
    store: Arc<Store>,
    registrar: Arc<Registrar>,
    telemetry: Arc<Telemetry>,
    rng: Arc<SharedRng>,
    connector: Arc<dyn Connector>,
    addresses: Arc<Addresses>,
    config: UpstreamConfig,
    /// TLS to `https://` instances (`upstream.tls`), when configured and readable.
    tls: Option<Arc<rustls::ClientConfig>>,
    health_policy: HealthPolicy,
    retry_policy: RetryPolicy,
    eviction_policy: EvictionPolicy,
    balancer: Mutex<BTreeMap<InstanceKey, Slot>>,
    /// The client of each instance address, with its connection.
    pool: Mutex<BTreeMap<String, Arc<Upstream>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("retry_policy", &self.retry_policy)
            .finish_non_exhaustive()
    }
}

/// Decrements an instance's in-flight count when the attempt ends, however it ends.
struct InFlight<'a> {
    forwarder: &'a Forwarder,
    key: &'a InstanceKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(slot) = lock(&self.forwarder.balancer).get_mut(self.key) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }
}

impl Forwarder {
    pub fn new(
        config: &UpstreamConfig,
        store: Arc<Store>,
        registrar: Arc<Registrar>,
        telemetry: Arc<Telemetry>,
        rng: Arc<SharedRng>,
        connector: Arc<dyn Connector>,
        addresses: Arc<Addresses>,
    ) -> Self {
        let tls = tls::upstream_client(&config.tls).unwrap_or_else(|error| {
            tracing::error!(%error, "upstream.tls not loaded: calls to https instances will fail");
            None
        });
        Self {
            store,
            registrar,
            telemetry,
            rng,
            connector,
            addresses,
            tls,
            health_policy: HealthPolicy {
                failures_to_eject: config.failures_to_eject,
                ejection_base_ms: config.ejection_base_ms,
                ejection_max_ms: config.ejection_max_ms,
                timeouts_to_eject: config.timeouts_to_eject,
            },
            retry_policy: RetryPolicy {
                attempts_max: config.attempts_max,
            },
            eviction_policy: EvictionPolicy {
                after_ms: config.evict_after_ms,
                after_max_ms: config.evict_after_max_ms,
            },
            config: config.clone(),
            balancer: Mutex::new(BTreeMap::new()),
            pool: Mutex::new(BTreeMap::new()),
        }
    }

    /// How long all attempts of one request may take together.
    pub fn timeout_ms(&self) -> u64 {
        self.config.timeout_ms
    }

    /// The most proxies a request may have passed before it arrives (`upstream.hops_max`).
    pub fn hops_max(&self) -> usize {
        self.config.hops_max as usize
    }

    /// The passive-health record of an instance.
    pub fn health_of(&self, key: &InstanceKey) -> InstanceHealth {
        lock(&self.balancer)
            .get(key)
            .map(|s| s.health)
            .unwrap_or_default()
    }

    /// Sends `call` to an instance of `service` and returns its answer and the instance that
    /// gave it, every attempt within `deadline`.
    pub async fn forward(
        &self,
        service: &str,
        call: &Outgoing,
        deadline: tokio::time::Instant,
    ) -> Result<Answered, GatewayError> {
        let result = self.forward_with_retries(call, service, deadline).await;
        if let Err(GatewayError::NoLiveInstance { .. }) = &result {
            self.telemetry
                .metrics()
                .upstream_error(service, UpstreamErrorKind::Unavailable);
        }
        result
    }

    async fn forward_with_retries(
        &self,
        call: &Outgoing,
        service: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Answered, GatewayError> {
        let mut tried = BTreeSet::new();
        let mut last_error = None;
        for attempt in 1.. {
            let Some(choice) = self.choose(service, &tried)? else {
                break;
            };
            // Every attempt sends the one encoded message.
            let last = attempt >= self.retry_policy.attempts_max || !choice.others_untried;
            let Choice { key, addr, .. } = choice;
            let result = self.attempt(&key, &addr, call, deadline).await;
            self.record(
                &key,
                match &result {
                    Ok(_) => AttemptOutcome::Answered,
                    Err(failed) => failed.outcome,
                },
            );
            let result = result.map_err(|failed| failed.error);
            if let Err(error) = &result
                && let Some(kind) = UpstreamErrorKind::of(error)
            {
                self.telemetry.metrics().upstream_error(service, kind);
            }
            if matches!(result, Err(GatewayError::UpstreamConnect { .. })) {
                self.evict_if_all_unreachable(service, &key);
            }
            match result {
                // The key was copied when the instance was chosen; it moves into the answer
                // instead of being dropped here, so reporting it costs nothing.
                Ok(resp) => {
                    return Ok(Answered {
                        resp,
                        instance: key,
                    });
                }
                Err(error) if !last && self.retry_policy.should_retry(&error, attempt) => {
                    tracing::debug!(service = %service, instance = %key.instance_id, %error, attempt, "retrying on another instance");
                    tried.insert(key);
                    self.telemetry.metrics().retry(service);
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
        let now = self.store.now_ms();
        let registry = self.store.registry();
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
        let in_flight_max = self.config.in_flight_per_instance_max;
        let candidate = |inst: &LiveInstance<'_>| {
            let slot = balancer.get(inst.key).copied().unwrap_or_default();
            Candidate {
                in_flight: slot.in_flight,
                ejected: slot.health.is_ejected(now),
                tried: tried.contains(inst.key),
                full: slot.in_flight >= in_flight_max,
            }
        };
        // A service's few instances are weighed on the stack; more, in a vector.
        let mut on_stack = [Candidate::default(); CANDIDATES_ON_STACK];
        let on_heap: Vec<Candidate>;
        let candidates: &[Candidate] = if live.len() <= CANDIDATES_ON_STACK {
            for (slot, inst) in on_stack.iter_mut().zip(&live) {
                *slot = candidate(inst);
            }
            &on_stack[..live.len()]
        } else {
            on_heap = live.iter().map(candidate).collect();
            &on_heap
        };
        let Some(i) = self.rng.with(|rng| balance::pick(candidates, rng)) else {
            // Every instance not yet tried is at its bound. On a first attempt that is the
            // answer; after a failed attempt, that failure is.
            if tried.is_empty() && candidates.iter().any(|c| c.full) {
                return Err(GatewayError::Overloaded {
                    what: format!(
                        "requests in flight to each instance of {service:?} (upstream.in_flight_per_instance_max = {in_flight_max})"
                    ),
                });
            }
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
            others_untried: candidates.iter().filter(|c| !c.tried && !c.full).count() > 1,
        }))
    }

    /// The client of the instance at `addr`, made on first use.
    fn upstream(&self, addr: &str) -> Result<Arc<Upstream>, GatewayError> {
        let mut pool = lock(&self.pool);
        if let Some(upstream) = pool.get(addr) {
            return Ok(upstream.clone());
        }
        let keep_alive = (self.config.keepalive_interval_ms != 0).then(|| channel::KeepAlive {
            interval: Duration::from_millis(self.config.keepalive_interval_ms),
            timeout: Duration::from_millis(self.config.keepalive_timeout_ms),
        });
        let telemetry = self.telemetry.clone();
        let policed = channel::Policed {
            addresses: self.addresses.clone(),
            on_refused: Arc::new(move |class| {
                telemetry
                    .metrics()
                    .address_refusal(AddressStage::Connect, class);
            }),
        };
        let http2 = channel::Http2 { keep_alive };
        let dialer = channel::Dialer::new(
            self.connector.clone(),
            Duration::from_millis(self.config.connect_timeout_ms),
            channel::FAILURE_SHARED_FOR.min(Duration::from_millis(self.config.ejection_base_ms)),
            Some(policed),
        );
        let upstream = Upstream::new(addr, dialer, http2, self.tls.clone())
            .map_err(|detail| GatewayError::Internal { detail })?;
        let upstream = Arc::new(upstream);
        pool.insert(addr.to_owned(), upstream.clone());
        Ok(upstream)
    }

    async fn attempt(
        &self,
        key: &InstanceKey,
        addr: &str,
        call: &Outgoing,
        deadline: tokio::time::Instant,
    ) -> Result<ForwardingResp, Failed> {
        let _in_flight = InFlight {
            forwarder: self,
            key,
        };
        let limits = channel::AttemptLimits {
            timeout_ms: self.config.timeout_ms,
            response_body_bytes_max: self.config.response_body_bytes_max,
        };
        let upstream = self.upstream(addr)?;
        let call_limits = unary::CallLimits {
            response_message_bytes_max: limits
                .response_body_bytes_max
                .saturating_add(RESPONSE_ENVELOPE_BYTES_MAX),
        };
        // The call ends itself at the deadline (`CallError::TimedOut`): one timer per
        // connection rather than one per call.
        match upstream.send(call, deadline, call_limits).await {
            Ok(resp) => {
                // The decoding limit leaves room for the headers; the body's own bound is
                // exact.
                if resp.body.len() > limits.response_body_bytes_max {
                    return Err(channel::too_large(key, limits).into());
                }
                Ok(resp)
            }
            Err(error) => {
                let not_dialed = matches!(&error, CallError::Connect(f) if f.not_dialed());
                let error = channel::classify(&error, key, addr, limits);
                Err(if not_dialed {
                    Failed {
                        error,
                        outcome: AttemptOutcome::NotDialed,
                    }
                } else {
                    error.into()
                })
            }
        }
    }

    /// Passive health (the rules are the core's: [`Slot::record`]).
    fn record(&self, key: &InstanceKey, outcome: AttemptOutcome) {
        let now = self.store.now_ms();
        let mut balancer = lock(&self.balancer);
        // Look up before inserting: `entry` would copy the key on every request.
        if !balancer.contains_key(key) {
            balancer.insert(key.clone(), Slot::default());
        }
        let Some(slot) = balancer.get_mut(key) else {
            return;
        };
        if slot.record(outcome, now, &self.health_policy) {
            let until_ms = slot.health.ejected_until_ms;
            let reason = match outcome {
                AttemptOutcome::Reset => {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, until_ms, "instance ejected after its connection broke");
                    EjectionReason::Reset
                }
                AttemptOutcome::TimedOut => {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, until_ms, "instance ejected after consecutive timeouts");
                    EjectionReason::Timeout
                }
                _ => {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, until_ms, "instance ejected after connect failures");
                    EjectionReason::ConnectFailed
                }
            };
            drop(balancer);
            self.telemetry.metrics().ejection(reason);
        }
    }

    /// Evicts every live instance of `service`, cluster-wide, once all of them have been
    /// unreachable from here for the eviction wait. One reachable instance is enough to evict
    /// none: a single dead instance is only ejected locally and left to its lease, so a
    /// gateway that is cut off from part of the network cannot empty the registry for all.
    ///
    /// Set off by `failed`, the instance whose connection just failed: nothing is evicted
    /// unless it is among the live instances, so an eviction always rests on a fresh failure
    /// of one of the instances it removes. (An instance whose lease ran out here during the
    /// attempt must not set off the eviction of the others on older evidence.)
    fn evict_if_all_unreachable(&self, service: &str, failed: &InstanceKey) {
        let policy = &self.eviction_policy;
        if !policy.enabled() {
            return;
        }
        let now = self.store.now_ms();
        let keys: Vec<InstanceKey> = {
            let registry = self.store.registry();
            let Lookup::Live(live) = registry.lookup(service, now) else {
                return;
            };
            if !live.iter().any(|inst| inst.key == failed) {
                return;
            }
            let mut balancer = lock(&self.balancer);
            let all = live.iter().all(|inst| {
                balancer
                    .get(inst.key)
                    .is_some_and(|s| s.evictable(now, policy))
            });
            if !all {
                return;
            }
            live.iter()
                .map(|inst| {
                    balancer
                        .entry(inst.key.clone())
                        .or_default()
                        .on_evicted(now);
                    inst.key.clone()
                })
                .collect()
        };
        self.telemetry.metrics().eviction();
        for key in keys {
            match self.registrar.evict(&key) {
                Ok(()) => {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, "every instance unreachable: evicted cluster-wide")
                }
                Err(error) => {
                    tracing::warn!(service = %key.service, instance = %key.instance_id, %error, "eviction not published")
                }
            }
        }
    }

    /// Drops the channels and balancer slots of instances the registry no longer lists as
    /// live. A slot stays while a request to it is in flight, and while this gateway's
    /// evictions of the instance count (no answer since) and the registry still holds the
    /// instance (its tombstone): a renewal that brings it back, still unreachable, must find
    /// the doubled wait, not start again at the base one. Bounded by the registry's entries.
    pub fn housekeeping(&self) {
        let now = self.store.now_ms();
        let registry = self.store.registry();
        let (live_addrs, keys): (BTreeSet<String>, BTreeSet<InstanceKey>) = registry
            .entries()
            .filter_map(|(k, e)| match &e.state {
                EntryState::Alive { addr, .. } if e.is_live(now) => Some((addr.clone(), k.clone())),
                _ => None,
            })
            .unzip();
        // The registry's guard is held across the balancer's lock, in the order
        // `evict_if_all_unreachable` takes them.
        lock(&self.balancer).retain(|k, slot| {
            keys.contains(k)
                || slot.in_flight > 0
                || (slot.evictions > 0 && registry.get(k).is_some())
        });
        drop(registry);
        lock(&self.pool).retain(|addr, _| live_addrs.contains(addr));
    }
}
