//! One gateway node: its state, the registration operations, and [`run`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use axum::serve::Listener;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard_core::balance::{HealthPolicy, InstanceHealth, RetryPolicy};
use switchyard_core::event::{Event, EventKind};
use switchyard_core::planted::{self, Bug};
use switchyard_core::registry::{Applied, Entry, EntryState, Removal};
use switchyard_core::translate::Limits;
use switchyard_core::{GatewayError, Hlc, InstanceKey, Registry, names};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Record};
use crate::config::Config;
use crate::metrics::{ChangeOp, Metrics};
use crate::otlp::Exporter;
use crate::outbox::{Delivery, Outbox, Ticket};
use crate::seams::Seams;
use crate::{control, public, replicate, serve, upstream};

/// A registration as the control listener receives it, before validation.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub service: String,
    pub instance_id: String,
    pub addr: String,
    pub metadata: BTreeMap<String, String>,
    /// 0: the configured default.
    pub lease_ms: u64,
}

/// The outcome of a deregistration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deregistered {
    /// Whether the instance was live here before.
    pub existed: bool,
    pub delivery: Delivery,
    /// The tombstone's stamp.
    pub stamp: switchyard_core::Stamp,
}

// Served as JSON at `GET /v1/cluster` and as the GraphQL `Node` object; the doc comments
// below are the schema's descriptions.
/// This gateway node as it sees itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, async_graphql::SimpleObject)]
#[graphql(name = "Node")]
pub struct NodeStatus {
    pub node_id: String,
    /// Caught up with the bus and not shutting down: load balancers may send traffic.
    pub ready: bool,
    pub shutting_down: bool,
    /// The next bus offset this node will read.
    pub bus_position: u64,
    /// The high-water mark seen at start, which readiness waits for.
    pub catch_up_target: u64,
    pub registry_entries: usize,
    /// The registry digest in hex: equal on every node that holds the same registry.
    pub registry_digest: String,
    pub events_applied: u64,
    pub events_rejected: u64,
    /// Registry changes accepted here that the bus has not acknowledged yet.
    pub outbox_pending: usize,
}

/// Registry changes held for each [`Node::watch`] subscriber before it lags behind.
pub const CHANGES_BUFFERED_MAX: usize = 1024;

pub struct Node {
    pub(crate) config: Config,
    id: String,
    pub(crate) seams: Seams,
    registry: RwLock<Registry>,
    hlc: Mutex<Hlc>,
    rng: Mutex<SmallRng>,
    pub(crate) balancer: Mutex<BTreeMap<InstanceKey, upstream::Slot>>,
    pub(crate) pool: Mutex<BTreeMap<String, tonic::transport::Channel>>,
    pub(crate) health_policy: HealthPolicy,
    pub(crate) retry_policy: RetryPolicy,
    outbox: Outbox,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    bus_position: AtomicU64,
    catch_up_target: AtomicU64,
    events_applied: AtomicU64,
    events_rejected: AtomicU64,
    changes: broadcast::Sender<Event>,
    pub(crate) metrics: Metrics,
    /// The latest bus high-water mark this node has read, for the lag gauge.
    high_water: AtomicU64,
    /// Where finished request spans go, when an OTLP endpoint is configured.
    pub(crate) exporter: Option<Exporter>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent
/// at each step, so a panic elsewhere must not take the gateway down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    pub fn new(config: Config, seams: Seams) -> Arc<Self> {
        let mut rng = SmallRng::seed_from_u64(seams.seed);
        let id = if config.node_id.is_empty() {
            format!("gw-{:08x}", rng.random::<u32>())
        } else {
            config.node_id.clone()
        };
        let u = &config.upstream;
        let health_policy = HealthPolicy {
            failures_to_eject: u.failures_to_eject,
            ejection_base_ms: u.ejection_base_ms,
            ejection_max_ms: u.ejection_max_ms,
        };
        let retry_policy = RetryPolicy {
            attempts_max: u.attempts_max,
        };
        let exporter = Exporter::new(&config.telemetry, &id);
        Arc::new(Self {
            outbox: Outbox::new(config.bus.outbox_events_max),
            hlc: Mutex::new(Hlc::new(id.clone())),
            id,
            config,
            seams,
            registry: RwLock::new(Registry::new()),
            rng: Mutex::new(rng),
            balancer: Mutex::new(BTreeMap::new()),
            pool: Mutex::new(BTreeMap::new()),
            health_policy,
            retry_policy,
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            bus_position: AtomicU64::new(0),
            catch_up_target: AtomicU64::new(0),
            events_applied: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            changes: broadcast::channel(CHANGES_BUFFERED_MAX).0,
            metrics: Metrics::default(),
            high_water: AtomicU64::new(0),
            exporter,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn now_ms(&self) -> u64 {
        self.seams.clock.now_ms()
    }

    pub(crate) fn bus(&self) -> &dyn Bus {
        &*self.seams.bus
    }

    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every registry change this node applies from now on, local or from the bus, in the
    /// order applied. A subscriber that falls [`CHANGES_BUFFERED_MAX`] changes behind gets
    /// `Lagged` and must re-read the registry.
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.changes.subscribe()
    }

    /// Applies an event and announces it to watchers if it changed the registry. The
    /// announcement is made under the write lock, so watchers see changes in applied order.
    fn apply(&self, event: &Event) -> Applied {
        let mut registry = self.registry_mut();
        let applied = registry.apply_event(event);
        if applied != Applied::Unchanged {
            // No watcher is not an error.
            let _ = self.changes.send(event.clone());
        }
        applied
    }

    /// The node's counters and histograms.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Everything `/metrics` serves: the counters and histograms, then gauges read now. The
    /// bus high-water mark is asked for with a bound; if the bus does not answer in time, the
    /// last one read stands.
    pub async fn render_metrics(&self) -> String {
        let hwm = tokio::time::timeout(METRICS_BUS_WAIT, self.bus().high_water_mark()).await;
        if let Ok(Ok(hwm)) = hwm {
            self.high_water.fetch_max(hwm, Ordering::Relaxed);
        }
        let now = self.now_ms();
        let (services, instances, entries) = {
            let registry = self.registry();
            let mut services = 0usize;
            let mut last_live_service: Option<&str> = None;
            let mut instances = 0usize;
            for (key, entry) in registry.entries() {
                if entry.is_live(now) {
                    instances += 1;
                    if last_live_service != Some(key.service.as_str()) {
                        services += 1;
                        last_live_service = Some(&key.service);
                    }
                }
            }
            (services, instances, registry.len())
        };
        let position = self.bus_position.load(Ordering::Acquire);
        let high_water = self.high_water.load(Ordering::Relaxed).max(position);
        let mut out = String::with_capacity(4096);
        self.metrics.encode(&mut out);
        use crate::metrics::gauge;
        gauge(
            &mut out,
            "switchyard_registry_services",
            "Services with at least one live instance.",
            services,
        );
        gauge(
            &mut out,
            "switchyard_registry_instances",
            "Live instances.",
            instances,
        );
        gauge(
            &mut out,
            "switchyard_registry_entries",
            "Registry entries, tombstones and expired leases included.",
            entries,
        );
        gauge(
            &mut out,
            "switchyard_bus_position",
            "The next bus offset this node will read.",
            position,
        );
        gauge(
            &mut out,
            "switchyard_bus_high_water",
            "The latest bus high-water mark this node has read.",
            high_water,
        );
        gauge(
            &mut out,
            "switchyard_bus_lag_events",
            "Bus records written but not yet applied here.",
            high_water - position,
        );
        gauge(
            &mut out,
            "switchyard_caught_up",
            "1 once the node has read the bus up to the mark it saw at start.",
            u8::from(self.ready.load(Ordering::Acquire)),
        );
        gauge(
            &mut out,
            "switchyard_ready",
            "1 while /readyz answers 200.",
            u8::from(self.is_ready()),
        );
        gauge(
            &mut out,
            "switchyard_outbox_events",
            "Registry changes accepted here that the bus has not acknowledged yet.",
            self.outbox.len(),
        );
        if let Some(exporter) = &self.exporter {
            exporter.encode_metrics(&mut out);
        }
        if let Some(rss) = crate::metrics::resident_memory_bytes() {
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory of the gateway process.",
                rss,
            );
        }
        out
    }

    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut SmallRng) -> T) -> T {
        f(&mut lock(&self.rng))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            body_bytes_max: self.config.public.body_bytes_max,
            header_bytes_max: self.config.public.header_bytes_max,
        }
    }

    /// A fresh request id: 32 hex digits from the node's seeded generator.
    pub fn new_request_id(&self) -> String {
        let n: u128 = self.with_rng(|r| r.random());
        format!("{n:032x}")
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutting_down.load(Ordering::Acquire)
    }

    pub fn status(&self) -> NodeStatus {
        let registry = self.registry();
        NodeStatus {
            node_id: self.id.clone(),
            ready: self.is_ready(),
            shutting_down: self.shutting_down.load(Ordering::Acquire),
            bus_position: self.bus_position.load(Ordering::Acquire),
            catch_up_target: self.catch_up_target.load(Ordering::Acquire),
            registry_entries: registry.len(),
            registry_digest: format!("{:016x}", registry.digest()),
            events_applied: self.events_applied.load(Ordering::Relaxed),
            events_rejected: self.events_rejected.load(Ordering::Relaxed),
            outbox_pending: self.outbox.len(),
        }
    }

    pub(crate) fn set_catch_up_target(&self, target: u64) {
        self.catch_up_target.store(target, Ordering::Release);
    }

    pub(crate) fn set_position(&self, position: u64) {
        self.bus_position.store(position, Ordering::Release);
    }

    pub(crate) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub(crate) fn mark_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Applies one record read from the bus. A record that does not decode, or whose key does
    /// not match its event, is counted, logged and skipped: it cannot be applied, and stopping
    /// the whole replication for it would be worse.
    pub(crate) fn apply_record(&self, record: &Record) -> Option<Applied> {
        let event = match Event::decode(&record.payload) {
            Ok(event) if event.bus_key() == record.key => event,
            Ok(event) => {
                self.events_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(offset = record.offset, key = %record.key, event_key = %event.bus_key(), "skipping bus record whose key does not match its event");
                return None;
            }
            Err(error) => {
                self.events_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(offset = record.offset, key = %record.key, %error, "skipping bus record that is not a valid registry event");
                return None;
            }
        };
        if planted::active(Bug::SkipOwnEvents) && event.origin_node == self.id {
            return None;
        }
        lock(&self.hlc).observe(&event.stamp, self.now_ms());
        let applied = self.apply(&event);
        self.events_applied.fetch_add(1, Ordering::Relaxed);
        self.metrics.event_applied(event.origin_node == self.id);
        if applied != Applied::Unchanged {
            tracing::debug!(offset = record.offset, key = %record.key, kind = ?event.kind, origin = %event.origin_node, "applied registry event");
        }
        Some(applied)
    }

    /// Registers (or renews) an instance: validates, applies locally at once, and queues the
    /// event for the bus; answers once the bus acknowledged it or `bus.publish_wait_ms` passed.
    pub async fn register(
        &self,
        reg: Registration,
        kind: EventKind,
    ) -> Result<(InstanceKey, Entry, Delivery), GatewayError> {
        names::validate_service(&reg.service)?;
        names::validate_instance_id(&reg.instance_id)?;
        names::validate_metadata(&reg.metadata)?;
        let addr = names::normalize_addr(&reg.addr)?;
        let r = &self.config.registry;
        let lease_ms = if reg.lease_ms == 0 {
            r.lease_default_ms
        } else {
            reg.lease_ms
        };
        if !(r.lease_min_ms..=r.lease_max_ms).contains(&lease_ms) {
            return Err(GatewayError::InvalidArgument {
                field: "lease_ms",
                reason: format!(
                    "{lease_ms} is outside {}..={}",
                    r.lease_min_ms, r.lease_max_ms
                ),
            });
        }
        let event = Event {
            kind,
            key: InstanceKey::new(reg.service, reg.instance_id),
            addr,
            metadata: reg.metadata,
            lease_ms,
            stamp: lock(&self.hlc).tick(self.now_ms()),
            origin_node: self.id.clone(),
        };
        let delivery = self.commit(&event).await?;
        self.metrics.change(ChangeOp::Register);
        Ok((event.key.clone(), event.entry(), delivery))
    }

    /// Deregisters an instance. Succeeds for unknown instances too (the tombstone still
    /// guards against a late registration event); reports whether the instance was live.
    pub async fn deregister(
        &self,
        service: &str,
        instance_id: &str,
    ) -> Result<Deregistered, GatewayError> {
        names::validate_service(service)?;
        names::validate_instance_id(instance_id)?;
        let key = InstanceKey::new(service, instance_id);
        let existed = self
            .registry()
            .get(&key)
            .is_some_and(|e| e.is_live(self.now_ms()));
        let tombstone = self.tombstone(key, EventKind::Deregister);
        let delivery = self.commit(&tombstone).await?;
        self.metrics.change(ChangeOp::Deregister);
        Ok(Deregistered {
            existed,
            delivery,
            stamp: tombstone.stamp,
        })
    }

    /// Publishes an eviction without waiting for the bus (the caller is a request in flight).
    pub(crate) fn evict(&self, key: &InstanceKey) -> Result<(), GatewayError> {
        self.enqueue_and_apply(&self.tombstone(key.clone(), EventKind::Evict))?;
        self.metrics.change(ChangeOp::Evict);
        Ok(())
    }

    fn tombstone(&self, key: InstanceKey, kind: EventKind) -> Event {
        Event {
            kind,
            key,
            addr: String::new(),
            metadata: BTreeMap::new(),
            lease_ms: 0,
            stamp: lock(&self.hlc).tick(self.now_ms()),
            origin_node: self.id.clone(),
        }
    }

    /// Queues a change for the bus, then applies it here. A change the full queue refuses is
    /// not applied either, so this node never holds what the bus will not get.
    fn enqueue_and_apply(&self, event: &Event) -> Result<Ticket, GatewayError> {
        let ticket = self.outbox.enqueue(event.clone()).inspect_err(|error| {
            tracing::warn!(key = %event.bus_key(), %error, "registry change refused");
        })?;
        self.apply(event);
        Ok(ticket)
    }

    /// Applies a change at once and waits up to `bus.publish_wait_ms` for the bus to take it.
    async fn commit(&self, event: &Event) -> Result<Delivery, GatewayError> {
        let ticket = self.enqueue_and_apply(event)?;
        let delivery = ticket
            .wait(Duration::from_millis(self.config.bus.publish_wait_ms))
            .await;
        tracing::info!(key = %event.bus_key(), kind = ?event.kind, addr = %event.addr, ?delivery, "registry change accepted");
        Ok(delivery)
    }

    /// Periodic upkeep: drop long-dead registry entries, and the upstream channels and
    /// balancer slots of instances the registry no longer lists as live.
    pub(crate) fn housekeeping(&self) {
        let now = self.now_ms();
        let cutoff = now.saturating_sub(self.config.registry.tombstone_retention_ms);
        let pruned = self.registry_mut().prune(cutoff);
        let (live_addrs, keys): (Vec<String>, Vec<InstanceKey>) = {
            let registry = self.registry();
            registry
                .entries()
                .filter_map(|(k, e)| match &e.state {
                    EntryState::Alive { addr, .. } if e.is_live(now) => {
                        Some((addr.clone(), k.clone()))
                    }
                    _ => None,
                })
                .unzip()
        };
        lock(&self.pool).retain(|addr, _| live_addrs.contains(addr));
        lock(&self.balancer).retain(|k, slot| keys.contains(k) || slot.in_flight > 0);
        if pruned > 0 {
            tracing::info!(pruned, "pruned old registry entries");
        }
    }

    /// The state of an entry as the control API shows it.
    pub fn entry_state(entry: &Entry, now_ms: u64) -> &'static str {
        match &entry.state {
            EntryState::Alive { .. } if entry.is_live(now_ms) => "live",
            EntryState::Alive { .. } => "expired",
            EntryState::Removed(Removal::Evicted) => "evicted",
            EntryState::Removed(Removal::Deregistered) => "deregistered",
        }
    }

    pub(crate) fn health_of(&self, key: &InstanceKey) -> InstanceHealth {
        lock(&self.balancer)
            .get(key)
            .map(|s| s.health)
            .unwrap_or_default()
    }
}

/// How long a scrape waits for the bus's high-water mark.
const METRICS_BUS_WAIT: Duration = Duration::from_secs(1);

/// How often [`Node::housekeeping`] runs.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Runs a node on the two listeners until `shutdown` is cancelled, then drains and returns.
/// The listeners, the connector, the clock, the bus and the seed all come from outside, so the
/// same code runs on tokio in production and on turmoil in the simulation.
pub async fn run<P, C>(
    config: Config,
    seams: Seams,
    public_listener: P,
    control_listener: C,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    P: Listener<Addr = SocketAddr>,
    C: Listener<Addr = SocketAddr>,
{
    Node::new(config, seams)
        .serve(public_listener, control_listener, shutdown)
        .await
}

impl Node {
    /// Serves this node; see [`run`].
    pub async fn serve<P, C>(
        self: Arc<Self>,
        public_listener: P,
        control_listener: C,
        shutdown: CancellationToken,
    ) -> io::Result<()>
    where
        P: Listener<Addr = SocketAddr>,
        C: Listener<Addr = SocketAddr>,
    {
        let node = self;
        let drain = Duration::from_millis(node.config.shutdown.drain_timeout_ms);
        tracing::info!(
            node_id = %node.id(),
            public = ?public_listener.local_addr().ok(),
            control = ?control_listener.local_addr().ok(),
            "gateway node starting"
        );
        let tasks = CancellationToken::new();
        let replication = tokio::spawn(replicate::run(node.clone(), tasks.clone()));
        let upkeep = tokio::spawn(housekeeping_loop(node.clone(), tasks.clone()));
        let publisher = {
            let (node, stop) = (node.clone(), tasks.clone());
            tokio::spawn(async move { node.outbox.run(node.bus(), stop).await })
        };
        let exporter = {
            let (node, stop) = (node.clone(), tasks.clone());
            tokio::spawn(async move {
                if let Some(exporter) = &node.exporter {
                    exporter.run(stop).await;
                }
            })
        };
        let watcher = {
            let (node, shutdown) = (node.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                node.mark_shutting_down();
                tracing::info!("shutdown requested: draining in-flight requests");
            })
        };
        let result = tokio::try_join!(
            serve::serve(
                public_listener,
                public::router(node.clone()),
                shutdown.clone(),
                drain
            ),
            serve::serve(
                control_listener,
                control::router(node.clone()),
                shutdown.clone(),
                drain
            ),
        );
        tasks.cancel();
        shutdown.cancel();
        let _ = tokio::join!(replication, upkeep, publisher, watcher, exporter);
        tracing::info!(node_id = %node.id(), "gateway node stopped");
        result.map(|_| ())
    }
}

async fn housekeeping_loop(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => node.housekeeping(),
        }
    }
}
