//! The cluster mode: one count per rule and key for the whole cluster, kept in a store
//! (Redis) that checks and updates it atomically on its own clock, so that every gateway sees
//! the same count and reports the same numbers. A bucket is named by the rule and the key
//! value (`<rule>:<key>`), never by the gateway.
//!
//! When the store cannot answer (down, slow past the client's timeout, its breaker open), the
//! gateway decides alone with its share of the limit: the rate and the burst divided by the
//! live gateways. Each gateway renews a heartbeat in the store every
//! `rate_limit_cluster.heartbeat_interval_ms` and reads how many heartbeats are live; while the
//! store is down it keeps the last count. So during an outage the cluster admits at most the
//! limit times (gateways live now / gateways counted last): the limit itself when none joined,
//! more when gateways were added during the outage (each new one counts with
//! `gateways_initial` until it first reaches the store).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::gcra::{Decision, Shape};
use crate::config::RateLimitClusterConfig;
use crate::sync::BoxFuture;
use crate::telemetry::Telemetry;

/// Why the store did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unreachable or did not answer in time: {0}")]
    Unavailable(String),
    #[error("the store's breaker is open")]
    BreakerOpen,
    #[error("the store's reply is not understood: {0}")]
    BadReply(String),
}

impl StoreError {
    /// The `reason` label of `switchyard_rate_limit_redis_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::BreakerOpen => "breaker_open",
            Self::BadReply(_) => "bad_reply",
        }
    }
}

/// What the cluster mode needs of its store. An implementation bounds every call in time.
pub trait CounterStore: Send + Sync + 'static {
    /// Checks one request against the bucket `bucket` (`<rule>:<key>`, which the store may
    /// prefix) of `shape`, atomically, on the store's clock, and keeps the bucket's new state. Returns whether the request is admitted and
    /// how far ahead of now the bucket's TAT then is, in microseconds (see
    /// [`Decision::from_ahead`]).
    fn check<'a>(
        &'a self,
        bucket: &'a str,
        shape: Shape,
    ) -> BoxFuture<'a, Result<(bool, u64), StoreError>>;

    /// Renews `node`'s heartbeat for `ttl_ms` and returns how many gateways' heartbeats are
    /// live, this one's included.
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// The cluster mode's state on one gateway: its store and the live-gateway count.
pub struct Cluster {
    store: Arc<dyn CounterStore>,
    config: RateLimitClusterConfig,
    node_id: String,
    live: AtomicU32,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .field("live", &self.live_gateways())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(
        store: Arc<dyn CounterStore>,
        config: RateLimitClusterConfig,
        node_id: &str,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let live = config.gateways_initial.clamp(1, config.gateways_max);
        telemetry.metrics().set_rate_limit_live_gateways(live);
        Self {
            store,
            config,
            node_id: node_id.to_owned(),
            live: AtomicU32::new(live),
            telemetry,
        }
    }

    /// The live gateways as last counted (or `gateways_initial` before the first count).
    pub fn live_gateways(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// The store's decision on one request of `key` under `rule`, or `None` when the store
    /// did not answer (counted by reason).
    pub async fn check(&self, rule: &str, key: &str, shape: Shape) -> Option<Decision> {
        let bucket = format!("{rule}:{key}");
        match self.store.check(&bucket, shape).await {
            Ok((admitted, ahead_us)) => Some(Decision::from_ahead(shape, admitted, ahead_us)),
            Err(error) => {
                tracing::debug!(%error, rule, "rate limit decided locally: the store did not answer");
                self.telemetry
                    .metrics()
                    .rate_limit_redis_error(error.label());
                None
            }
        }
    }

    /// Renews this gateway's heartbeat once and takes the live count; on failure the last
    /// count stays.
    pub async fn beat(&self) {
        let ttl = self.config.heartbeat_ttl_ms;
        match self.store.heartbeat(&self.node_id, ttl).await {
            Ok(count) => {
                let max = self.config.gateways_max;
                let live = u32::try_from(count).unwrap_or(max).clamp(1, max);
                if live != self.live.swap(live, Ordering::Relaxed) {
                    tracing::info!(live, "rate limits: live gateways counted");
                }
                self.telemetry.metrics().set_rate_limit_live_gateways(live);
            }
            Err(error) => {
                tracing::debug!(%error, live = self.live_gateways(), "rate-limit heartbeat failed; the last live count stays");
                self.telemetry
                    .metrics()
                    .rate_limit_redis_error(error.label());
            }
        }
    }

    /// Beats every `heartbeat_interval_ms` until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.beat() => {}
            }
        }
    }
}

impl std::fmt::Debug for dyn CounterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterStore")
    }
}
