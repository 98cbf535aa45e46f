//! What the node reports about itself: its status (readiness, bus position, registry size
//! and digest), the gauges `/metrics` reads at scrape time, and the registry as views of its
//! instances. Each front renders these views its own way (JSON, protobuf, GraphQL); the views
//! themselves are the core's ([`InstanceView`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::InstanceKey;
use switchyard_core::registry::Entry;
use switchyard_core::view::{InstanceState, InstanceView};

use crate::forwarding::Forwarder;
use crate::jwks::Jwks;
use crate::registrar::Registrar;
use crate::replication::Replication;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::{gauge, resident_memory_bytes};

/// How long a scrape waits for the bus's high-water mark.
const METRICS_BUS_WAIT: Duration = Duration::from_secs(1);

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

/// What `/readyz` answers: cheap to read, the registry untouched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub shutting_down: bool,
    pub node_id: String,
    pub bus_position: u64,
    pub catch_up_target: u64,
    /// Why the node is not ready besides the bus: JWT providers without keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}

/// Reads the owners for status, gauges and registry views.
#[derive(Debug)]
pub struct Status {
    store: Arc<Store>,
    replication: Arc<Replication>,
    registrar: Arc<Registrar>,
    forwarder: Arc<Forwarder>,
    telemetry: Arc<Telemetry>,
    jwks: Arc<Jwks>,
}

impl Status {
    pub fn new(
        store: Arc<Store>,
        replication: Arc<Replication>,
        registrar: Arc<Registrar>,
        forwarder: Arc<Forwarder>,
        telemetry: Arc<Telemetry>,
        jwks: Arc<Jwks>,
    ) -> Self {
        Self {
            store,
            replication,
            registrar,
            forwarder,
            telemetry,
            jwks,
        }
    }

    /// Ready: caught up with the bus, not shutting down, and every JWT provider has keys.
    pub fn is_ready(&self) -> bool {
        self.replication.is_ready() && self.jwks.not_ready().is_empty()
    }

    pub fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    pub fn readiness(&self) -> Readiness {
        let r = &self.replication;
        let waiting_for = self.jwks.not_ready();
        Readiness {
            ready: r.is_ready() && waiting_for.is_empty(),
            shutting_down: r.shutting_down(),
            node_id: self.store.node_id().to_owned(),
            bus_position: r.position(),
            catch_up_target: r.catch_up_target(),
            waiting_for,
        }
    }

    pub fn node(&self) -> NodeStatus {
        let registry = self.store.registry();
        NodeStatus {
            node_id: self.store.node_id().to_owned(),
            ready: self.is_ready(),
            shutting_down: self.replication.shutting_down(),
            bus_position: self.replication.position(),
            catch_up_target: self.replication.catch_up_target(),
            registry_entries: registry.len(),
            registry_digest: registry.digest_hex(),
            events_applied: self.replication.events_applied(),
            events_rejected: self.replication.events_rejected(),
            outbox_pending: self.registrar.pending(),
        }
    }

    /// The view of one entry, with this node's passive health of the instance.
    pub fn view(&self, key: &InstanceKey, entry: &Entry, now_ms: u64) -> InstanceView {
        InstanceView::new(key, entry, &self.forwarder.health_of(key), now_ms)
    }

    /// The registry's services and their instances, in name order, deregistered instances
    /// (and services left with none) left out; only `only` if given.
    pub fn services(&self, only: Option<&str>) -> BTreeMap<String, Vec<InstanceView>> {
        self.views(only, |state| state != InstanceState::Deregistered)
    }

    /// Live instances only; only of `only` if given.
    pub fn live(&self, only: Option<&str>) -> Vec<InstanceView> {
        self.views(only, |state| state == InstanceState::Live)
            .into_values()
            .flatten()
            .collect()
    }

    fn views(
        &self,
        only: Option<&str>,
        keep: impl Fn(InstanceState) -> bool,
    ) -> BTreeMap<String, Vec<InstanceView>> {
        let now = self.store.now_ms();
        let registry = self.store.registry();
        let entries: Box<dyn Iterator<Item = _>> = match only {
            Some(service) => Box::new(registry.service_entries(service)),
            None => Box::new(registry.entries()),
        };
        let mut services: BTreeMap<String, Vec<InstanceView>> = BTreeMap::new();
        for (key, entry) in entries {
            if keep(InstanceState::of(entry, now)) {
                services
                    .entry(key.service.clone())
                    .or_default()
                    .push(self.view(key, entry, now));
            }
        }
        services
    }

    /// Everything `/metrics` serves: the counters and histograms, then gauges read now. The
    /// bus high-water mark is asked for with a bound; if the bus does not answer in time, the
    /// last one read stands.
    pub async fn render_metrics(&self) -> String {
        let r = &self.replication;
        r.refresh_high_water(METRICS_BUS_WAIT).await;
        let now = self.store.now_ms();
        let (services, instances, entries) = {
            let registry = self.store.registry();
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
        let (position, high_water) = (r.position(), r.high_water());
        let mut out = String::with_capacity(4096);
        self.telemetry.metrics().encode(&mut out);
        let gauges: [(&str, &str, u64); 10] = [
            (
                "switchyard_registry_services",
                "Services with at least one live instance.",
                services as u64,
            ),
            (
                "switchyard_registry_instances",
                "Live instances.",
                instances as u64,
            ),
            (
                "switchyard_registry_entries",
                "Registry entries, tombstones and expired leases included.",
                entries as u64,
            ),
            (
                "switchyard_bus_position",
                "The next bus offset this node will read.",
                position,
            ),
            (
                "switchyard_bus_high_water",
                "The latest bus high-water mark this node has read.",
                high_water,
            ),
            (
                "switchyard_bus_lag_events",
                "Bus records written but not yet applied here.",
                high_water - position,
            ),
            (
                "switchyard_caught_up",
                "1 once the node has read the bus up to the mark it saw at start.",
                u64::from(r.caught_up()),
            ),
            (
                "switchyard_ready",
                "1 while /readyz answers 200.",
                u64::from(self.is_ready()),
            ),
            (
                "switchyard_hlc_ahead_ms",
                "How far this node's hybrid logical clock runs ahead of its wall clock, in ms.",
                self.store.hlc_ahead_of_ms(self.store.now_ms()),
            ),
            (
                "switchyard_outbox_events",
                "Registry changes accepted here that the bus has not acknowledged yet.",
                self.registrar.pending() as u64,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(&mut out, name, help, value);
        }
        if let Some(exporter) = self.telemetry.exporter() {
            exporter.encode_metrics(&mut out);
        }
        self.telemetry.encode_scraped(&mut out);
        if self.jwks.configured() {
            self.jwks.stats().encode(&mut out);
        }
        if let Some(dropped) = crate::telemetry::metrics::log_lines_dropped() {
            crate::telemetry::metrics::counter(
                &mut out,
                "switchyard_log_lines_dropped_total",
                "Log lines dropped because the log's reader fell behind.",
                dropped,
            );
        }
        if let Some(rss) = resident_memory_bytes() {
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory of the gateway process.",
                rss,
            );
        }
        out
    }
}
