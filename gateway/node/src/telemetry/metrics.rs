//! Prometheus metrics, served as text at `GET /metrics` on the control listener.
//!
//! Counters, histograms and the in-flight gauges are `prometheus-client` metrics in one
//! registry, written by the crate's Prometheus text (0.0.4) encoder. The crate keeps a family's
//! series in a hash map and leaves out a family that has no series yet, so [`Metrics::encode`]
//! sorts each family's series by their labels and writes the `# HELP` and `# TYPE` lines of an
//! empty family itself: families come in a fixed order, every family is announced from the
//! start (the Grafana dashboard's test looks for each), and two scrapes of the same state are
//! byte-equal. Gauges (registry size, bus position and lag, readiness, outbox, memory) are read
//! from the node when scraped and written after these with [`gauge`].
//!
//! A service name is interned once as an `Arc<str>`, so counting a request in a series that
//! exists takes read locks and reference counts, and no allocation. Each thread also keeps
//! handles on the request series it counted last ([`SERIES_CACHED_MAX`] of them), so that a
//! request usually finds its counter and histogram without hashing its labels twice; a
//! generation that [`Metrics::forget_service`] advances drops those handles. The in-flight
//! gauges are held directly and are lock-free.
//!
//! Label cardinality is bounded: `service` is a service the registry knows (or `""`), `method`
//! one of eight values, `status` a valid HTTP status. The registry's own size is bounded by
//! `registry.services_max`, and once a service has no entry left (its tombstones collected),
//! housekeeping drops its series with [`Metrics::forget_service`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use switchyard_core::GatewayError;
use switchyard_core::address::Forbidden;
use switchyard_core::event::Inadmissible;

#[cfg(test)]
mod tests;

/// Which front a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Front {
    /// A REST request, forwarded to one service.
    Rest = 0,
    /// An HTTP request to `/graphql` (a WebSocket once, when upgraded).
    Graphql = 1,
    /// One `call` field of a GraphQL operation, forwarded to one service.
    GraphqlCall = 2,
}

impl Front {
    const ALL: [Front; 3] = [Front::Rest, Front::Graphql, Front::GraphqlCall];

    pub fn label(self) -> &'static str {
        match self {
            Front::Rest => "rest",
            Front::Graphql => "graphql",
            Front::GraphqlCall => "graphql_call",
        }
    }
}

impl EncodeLabelValue for Front {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.label())
    }
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// The `method` label: an index into [`METHODS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MethodLabel(u8);

impl MethodLabel {
    fn of(method: &Method) -> Self {
        Self(match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::PATCH => 4,
            Method::DELETE => 5,
            Method::OPTIONS => 6,
            _ => 7,
        })
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(METHODS[usize::from(self.0)])
    }
}

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Kinds of upstream failure, the `kind` label of `switchyard_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    /// No connection to the instance could be made.
    ConnectFailed = 0,
    /// The instance did not answer within the deadline.
    Timeout = 1,
    /// No live, non-ejected instance was left to try.
    Unavailable = 2,
    /// The instance answered something the gateway cannot turn into HTTP.
    BadResponse = 3,
    /// The instance answered a gRPC error status.
    Status = 4,
    /// The connection broke during the call.
    Reset = 5,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 6] = [
        Self::ConnectFailed,
        Self::Timeout,
        Self::Unavailable,
        Self::BadResponse,
        Self::Status,
        Self::Reset,
    ];
}

const UPSTREAM_KINDS: [&str; 6] = [
    "connect_failed",
    "timeout",
    "unavailable",
    "bad_response",
    "status",
    "reset",
];

impl UpstreamErrorKind {
    /// The kind of an upstream error, or `None` for an error that is not the upstream's.
    pub fn of(error: &GatewayError) -> Option<Self> {
        match error {
            GatewayError::UpstreamConnect { .. } => Some(Self::ConnectFailed),
            GatewayError::UpstreamTimeout { .. } => Some(Self::Timeout),
            GatewayError::NoLiveInstance { .. } => Some(Self::Unavailable),
            GatewayError::BadUpstreamResponse { .. } => Some(Self::BadResponse),
            GatewayError::UpstreamStatus { .. } => Some(Self::Status),
            GatewayError::UpstreamReset { .. } => Some(Self::Reset),
            _ => None,
        }
    }
}

impl EncodeLabelValue for UpstreamErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(UPSTREAM_KINDS[*self as usize])
    }
}

/// A registry change made through this node, for `switchyard_registry_changes_total`.
#[derive(Debug, Clone, Copy)]
pub enum ChangeOp {
    Register = 0,
    Deregister = 1,
    Evict = 2,
    /// A delete marker published for an entry no longer needed (see `replication`).
    Collect = 3,
}

const CHANGE_OPS: [&str; 4] = ["register", "deregister", "evict", "collect"];

/// Why a bus record was quarantined (read, not applied), for
/// `switchyard_bus_events_quarantined_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineReason {
    /// Its stamp is further ahead of this node's wall clock than `registry.clock_drift_max_ms`.
    StampAhead = 0,
    /// A live instance's lease outside `1..=registry.lease_max_ms`.
    LeaseOutOfBounds = 1,
    /// Not a valid registry event.
    Undecodable = 2,
    /// The record's key is not its event's `service/instance_id`.
    KeyMismatch = 3,
    /// A delete marker for an entry that may still be live (stamped less than
    /// `registry.lease_max_ms` ago): only an entry no older registration can outlive may go.
    MarkerEarly = 4,
}

const QUARANTINE_REASONS: [&str; 5] = [
    "stamp_ahead",
    "lease_out_of_bounds",
    "undecodable",
    "key_mismatch",
    "marker_early",
];

impl QuarantineReason {
    pub const ALL: [QuarantineReason; QUARANTINE_REASONS.len()] = [
        QuarantineReason::StampAhead,
        QuarantineReason::LeaseOutOfBounds,
        QuarantineReason::Undecodable,
        QuarantineReason::KeyMismatch,
        QuarantineReason::MarkerEarly,
    ];

    /// The metric's label, which the quarantine's log line carries too.
    pub fn label(self) -> &'static str {
        QUARANTINE_REASONS[self as usize]
    }
}

/// The one place that names why a decoded record is inadmissible, for the metric and the log.
impl From<&Inadmissible> for QuarantineReason {
    fn from(why: &Inadmissible) -> Self {
        match why {
            Inadmissible::StampAhead(_) => QuarantineReason::StampAhead,
            Inadmissible::LeaseOutOfBounds { .. } => QuarantineReason::LeaseOutOfBounds,
        }
    }
}

/// The listeners, for `switchyard_listener_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerLabel {
    Public = 0,
    Control = 1,
}

const LISTENERS: [&str; 2] = ["public", "control"];

/// Why a listener refused a client, as `serve::Refusal::label` names it. A reason not listed
/// here is not counted (a test keeps the two lists the same).
pub const REFUSAL_REASONS: [&str; 4] = [
    "connections_max",
    "header_timeout",
    "body_timeout",
    "tls_handshake",
];

/// Why the GraphQL front refused or closed a WebSocket, or refused an operation on one, for
/// Why a control credential was refused, as `auth::Refusal::label` names it, for
/// `switchyard_control_auth_refusals_total`. A reason not listed here is not counted (a test
/// keeps the two lists the same).
pub const CONTROL_AUTH_REFUSALS: [&str; 8] = [
    "missing",
    "malformed",
    "unknown_key",
    "bad_signature",
    "wrong_audience",
    "expired",
    "not_yet_valid",
    "not_permitted",
];

/// What became of a changed key file, for `switchyard_control_key_reloads_total`.
const KEY_RELOAD_OUTCOMES: [&str; 2] = ["applied", "rejected"];

/// `switchyard_graphql_websocket_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebSocketRefusal {
    /// The listener has `graphql.websockets_max` sockets open (503 on the upgrade).
    WebsocketsMax = 0,
    /// The client's address has `graphql.websockets_per_client_max` sockets open (429).
    PerClientMax = 1,
    /// No `connection_init` within `graphql.websocket_init_timeout_ms` (closed, 4408).
    InitTimeout = 2,
    /// `graphql.websocket_operations_max` operations running on the socket (an `error`
    /// message for the operation; the socket goes on).
    OperationsMax = 3,
}

const WEBSOCKET_REFUSALS: [&str; 4] = [
    "websockets_max",
    "websockets_per_client_max",
    "init_timeout",
    "operations_max",
];

impl WebSocketRefusal {
    pub const ALL: [WebSocketRefusal; 4] = [
        Self::WebsocketsMax,
        Self::PerClientMax,
        Self::InitTimeout,
        Self::OperationsMax,
    ];

    pub fn label(self) -> &'static str {
        WEBSOCKET_REFUSALS[self as usize]
    }
}

/// Why passive health ejected an instance, for `switchyard_upstream_ejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionReason {
    /// Consecutive connect failures.
    ConnectFailed = 0,
    /// A connection broke during a call.
    Reset = 1,
    /// Consecutive timeouts (`upstream.timeouts_to_eject`).
    Timeout = 2,
}

const EJECTION_REASONS: [&str; 3] = ["connect_failed", "reset", "timeout"];

/// Where the address policy refused an address, for `switchyard_address_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressStage {
    /// A registration's address.
    Register = 0,
    /// An address a connection to an instance would have gone to.
    Connect = 1,
}

const ADDRESS_STAGES: [&str; 2] = ["register", "connect"];

/// The `origin` of an applied bus event: [this node's own, other nodes'].
const ORIGINS: [&str; 2] = ["local", "remote"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    front: Front,
    service: Arc<str>,
    method: MethodLabel,
    status: u16,
}

/// The request series a thread keeps handles on, at most (per thread that counts requests:
/// the runtime's workers, or the per-core layout's threads). Most gateways see a few services
/// answer a few statuses; past this many combinations the oldest handle is replaced.
pub const SERIES_CACHED_MAX: usize = 32;

/// Gives each [`Metrics`] the `id` its threads' caches are keyed by.
static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SERIES_CACHE: RefCell<SeriesCache> = RefCell::default();
}

/// A request series' counter and histogram.
struct Series {
    requests: Counter,
    latency: Histogram,
}

/// A thread's handles on the request series it counted last, of one [`Metrics`] at one
/// generation of its series.
#[derive(Default)]
struct SeriesCache {
    /// The `Metrics` (its `id`) and the generation the handles are of.
    owner: (u64, u64),
    entries: Vec<(Front, MethodLabel, u16, Arc<str>, Series)>,
    /// The entry replaced next when the cache is full.
    next_replaced: usize,
}

impl SeriesCache {
    /// The cached handles on these labels' series, or `make`'s, cached. Handles of another
    /// owner are dropped first.
    fn series(
        &mut self,
        owner: (u64, u64),
        front: Front,
        service: &str,
        method: MethodLabel,
        status: u16,
        make: impl FnOnce() -> (Arc<str>, Series),
    ) -> &Series {
        if self.owner != owner {
            self.owner = owner;
            self.entries.clear();
            self.next_replaced = 0;
        }
        let found = self.entries.iter().position(|(f, m, s, name, _)| {
            *s == status && *m == method && *f == front && **name == *service
        });
        let i = match found {
            Some(i) => i,
            None => {
                let (name, series) = make();
                let entry = (front, method, status, name, series);
                if self.entries.len() < SERIES_CACHED_MAX {
                    self.entries.push(entry);
                    self.entries.len() - 1
                } else {
                    let i = self.next_replaced;
                    self.entries[i] = entry;
                    self.next_replaced = (i + 1) % SERIES_CACHED_MAX;
                    i
                }
            }
        };
        &self.entries[i].4
    }
}

/// Advances a generation when dropped (also when what it guards panics).
struct AdvanceOnDrop<'a>(&'a AtomicU64);

impl Drop for AdvanceOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LatencyLabels {
    front: Front,
    service: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FrontLabels {
    front: Front,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamErrorLabels {
    service: Arc<str>,
    kind: UpstreamErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabels {
    service: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerOutcomeLabels {
    listener: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AddressLabels {
    stage: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleOutcomeLabels {
    rule: Arc<str>,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabels {
    rule: Arc<str>,
}

/// The reasons a rate-limit call to Redis failed, as counted.
pub const RATE_LIMIT_REDIS_ERRORS: [&str; 3] = ["unavailable", "breaker_open", "bad_reply"];

/// One rate-limit rule's series, created once when the rule is built (rules are bounded by
/// config, so the `rule` label is too).
#[derive(Debug, Clone, Default)]
pub struct RateLimitSeries {
    pub admitted: Counter,
    pub limited: Counter,
    /// Decisions made by the local fall-back because Redis could not answer.
    pub fallbacks: Counter,
    /// Buckets this gateway holds for the rule.
    pub buckets: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

type LatencyHistogram = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

/// A family as announced by its `# HELP` and `# TYPE` lines, for when it has no series.
#[derive(Debug)]
struct FamilyHead {
    /// The name as exposed (a counter's with the `_total` the encoder appends).
    name: String,
    metric_type: MetricType,
    /// As registered, without a final full stop: the registry appends one.
    help: &'static str,
}

/// The node's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The families in the order they are registered, which is the order they are written.
    families: Vec<FamilyHead>,
    /// Every service name seen, so a request's labels share one allocation per service.
    services: RwLock<BTreeSet<Arc<str>>>,
    /// Which `Metrics` a thread's [`SeriesCache`] holds handles of.
    id: u64,
    /// Advanced when series are removed: handles cached before then are dropped.
    series_generation: AtomicU64,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, LatencyHistogram>,
    in_flight: [Gauge; Front::ALL.len()],
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    events_applied: [Counter; ORIGINS.len()],
    events_changed: Counter,
    apply_runs: Counter,
    events_quarantined: [Counter; QUARANTINE_REASONS.len()],
    changes: [Counter; CHANGE_OPS.len()],
    evictions: Counter,
    collected: Counter,
    quota_refusals: Counter,
    refusals: [[Counter; REFUSAL_REASONS.len()]; LISTENERS.len()],
    ejections: [Counter; EJECTION_REASONS.len()],
    address_refusals: [[Counter; Forbidden::ALL.len()]; ADDRESS_STAGES.len()],
    websocket_refusals: [[Counter; WEBSOCKET_REFUSALS.len()]; LISTENERS.len()],
    control_auth_refusals: [Counter; CONTROL_AUTH_REFUSALS.len()],
    key_reloads: [Counter; KEY_RELOAD_OUTCOMES.len()],
    control_keys: Gauge,
    tls_reloads: [[Counter; KEY_RELOAD_OUTCOMES.len()]; LISTENERS.len()],
    rate_limit_decisions: Family<RuleOutcomeLabels, Counter>,
    rate_limit_fallbacks: Family<RuleLabels, Counter>,
    rate_limit_buckets: Family<RuleLabels, Gauge>,
    rate_limit_redis_errors: [Counter; RATE_LIMIT_REDIS_ERRORS.len()],
    rate_limit_live_gateways: Gauge,
}

/// Keeps a front's in-flight gauge raised while alive.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    gauge: &'a Gauge,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics, all at zero, with the series of fixed label sets already present.
    pub fn new() -> Self {
        let in_flight_family = Family::<FrontLabels, Gauge>::default();
        let in_flight =
            Front::ALL.map(|front| in_flight_family.get_or_create_owned(&FrontLabels { front }));
        let events_family = Family::<OriginLabels, Counter>::default();
        let events_applied =
            ORIGINS.map(|origin| events_family.get_or_create_owned(&OriginLabels { origin }));
        let quarantined_family = Family::<ReasonLabels, Counter>::default();
        let events_quarantined = QUARANTINE_REASONS
            .map(|reason| quarantined_family.get_or_create_owned(&ReasonLabels { reason }));
        let changes_family = Family::<OpLabels, Counter>::default();
        let changes = CHANGE_OPS.map(|op| changes_family.get_or_create_owned(&OpLabels { op }));
        let refusals_family = Family::<RefusalLabels, Counter>::default();
        let refusals = LISTENERS.map(|listener| {
            REFUSAL_REASONS.map(|reason| {
                refusals_family.get_or_create_owned(&RefusalLabels { listener, reason })
            })
        });
        let websocket_refusals_family = Family::<RefusalLabels, Counter>::default();
        let websocket_refusals = LISTENERS.map(|listener| {
            WEBSOCKET_REFUSALS.map(|reason| {
                websocket_refusals_family.get_or_create_owned(&RefusalLabels { listener, reason })
            })
        });
        let address_family = Family::<AddressLabels, Counter>::default();
        let address_refusals = ADDRESS_STAGES.map(|stage| {
            Forbidden::ALL.map(|class| {
                address_family.get_or_create_owned(&AddressLabels {
                    stage,
                    reason: class.label(),
                })
            })
        });
        let auth_refusals_family = Family::<ReasonLabels, Counter>::default();
        let control_auth_refusals = CONTROL_AUTH_REFUSALS
            .map(|reason| auth_refusals_family.get_or_create_owned(&ReasonLabels { reason }));
        let key_reloads_family = Family::<OutcomeLabels, Counter>::default();
        let key_reloads = KEY_RELOAD_OUTCOMES
            .map(|outcome| key_reloads_family.get_or_create_owned(&OutcomeLabels { outcome }));
        let tls_reloads_family = Family::<ListenerOutcomeLabels, Counter>::default();
        let tls_reloads = LISTENERS.map(|listener| {
            KEY_RELOAD_OUTCOMES.map(|outcome| {
                tls_reloads_family.get_or_create_owned(&ListenerOutcomeLabels { listener, outcome })
            })
        });
        let redis_errors_family = Family::<ReasonLabels, Counter>::default();
        let rate_limit_redis_errors = RATE_LIMIT_REDIS_ERRORS
            .map(|reason| redis_errors_family.get_or_create_owned(&ReasonLabels { reason }));
        let ejections_family = Family::<ReasonLabels, Counter>::default();
        let ejections = EJECTION_REASONS
            .map(|reason| ejections_family.get_or_create_owned(&ReasonLabels { reason }));
        let mut m = Self {
            registry: Registry::default(),
            families: Vec::new(),
            services: RwLock::default(),
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
            series_generation: AtomicU64::new(0),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as LatencyHistogram),
            in_flight,
            upstream_errors: Family::default(),
            retries: Family::default(),
            events_applied,
            events_changed: Counter::default(),
            apply_runs: Counter::default(),
            events_quarantined,
            changes,
            evictions: Counter::default(),
            collected: Counter::default(),
            quota_refusals: Counter::default(),
            refusals,
            ejections,
            address_refusals,
            websocket_refusals,
            control_auth_refusals,
            key_reloads,
            control_keys: Gauge::default(),
            tls_reloads,
            rate_limit_decisions: Family::default(),
            rate_limit_fallbacks: Family::default(),
            rate_limit_buckets: Family::default(),
            rate_limit_redis_errors,
            rate_limit_live_gateways: Gauge::default(),
        };
        // Counters are registered without `_total`, which the encoder appends; help texts
        // without their full stop, which the registry appends.
        m.register(
            "switchyard_http_requests",
            "HTTP requests answered, by front, service, method and status",
            m.requests.clone(),
        );
        m.register(
            "switchyard_http_request_duration_seconds",
            "Time from request head to response head, by front and service",
            m.latency.clone(),
        );
        m.register(
            "switchyard_http_requests_in_flight",
            "Requests being handled, by front",
            in_flight_family,
        );
        m.register(
            "switchyard_upstream_errors",
            "Failed attempts to call a service, by kind",
            m.upstream_errors.clone(),
        );
        m.register(
            "switchyard_upstream_retries",
            "Calls retried on another instance",
            m.retries.clone(),
        );
        m.register(
            "switchyard_bus_events_applied",
            "Registry events read from the bus and applied, by origin",
            events_family,
        );
        m.register(
            "switchyard_bus_events_changed",
            "Registry events read from the bus that changed the registry (the rest were duplicates, redeliveries or older than the entry held)",
            m.events_changed.clone(),
        );
        m.register(
            "switchyard_bus_apply_runs",
            "Runs of bus events applied, each under one hold of the registry's write lock",
            m.apply_runs.clone(),
        );
        m.register(
            "switchyard_bus_events_quarantined",
            "Bus records read and not applied, by reason",
            quarantined_family,
        );
        m.register(
            "switchyard_registry_changes",
            "Registry changes made through this node, by operation",
            changes_family,
        );
        m.register(
            "switchyard_evictions",
            "Services this node evicted because none of their instances could be reached",
            m.evictions.clone(),
        );
        m.register(
            "switchyard_registry_entries_collected",
            "Registry entries removed for good by a delete marker read from the bus",
            m.collected.clone(),
        );
        m.register(
            "switchyard_registry_quota_refusals",
            "Registry changes refused because a service or instance quota was reached",
            m.quota_refusals.clone(),
        );
        m.register(
            "switchyard_listener_refusals",
            "Clients a listener refused, by listener and reason",
            refusals_family,
        );
        m.register(
            "switchyard_address_refusals",
            "Instance addresses the address policy refused, by stage (register, connect) and reason",
            address_family,
        );
        m.register(
            "switchyard_control_auth_refusals",
            "Control listener requests refused for their credential, by reason",
            auth_refusals_family,
        );
        m.register(
            "switchyard_control_key_reloads",
            "Changes of the control key file, put in force or refused",
            key_reloads_family,
        );
        m.register(
            "switchyard_tls_reloads",
            "Changes of a listener's certificate, key or client CA files, put in force or refused",
            tls_reloads_family,
        );
        m.register(
            "switchyard_control_keys",
            "Public keys that verify control credentials",
            m.control_keys.clone(),
        );
        m.register(
            "switchyard_upstream_ejections",
            "Instances this node ejected from balancing for a while, by reason",
            ejections_family,
        );
        m.register(
            "switchyard_graphql_websocket_refusals",
            "GraphQL WebSockets refused or closed, and operations refused on one, by listener and reason",
            websocket_refusals_family,
        );
        m.register(
            "switchyard_rate_limit_requests",
            "Requests a rate-limit rule decided on, by rule and outcome (admitted, limited)",
            m.rate_limit_decisions.clone(),
        );
        m.register(
            "switchyard_rate_limit_fallbacks",
            "Cluster-mode rate-limit decisions made locally because Redis could not answer, by rule",
            m.rate_limit_fallbacks.clone(),
        );
        m.register(
            "switchyard_rate_limit_redis_errors",
            "Rate-limit calls to Redis that failed, by reason",
            redis_errors_family,
        );
        m.register(
            "switchyard_rate_limit_buckets",
            "Rate-limit buckets this gateway holds, by rule",
            m.rate_limit_buckets.clone(),
        );
        m.register(
            "switchyard_rate_limit_live_gateways",
            "Live gateways as last counted in Redis, which divide a cluster-mode limit when Redis is down",
            m.rate_limit_live_gateways.clone(),
        );
        m
    }

    /// The series of one rate-limit rule, created at zero.
    pub fn rate_limit_series(&self, rule: &str) -> RateLimitSeries {
        let rule: Arc<str> = Arc::from(rule);
        let decision = |outcome| {
            self.rate_limit_decisions
                .get_or_create_owned(&RuleOutcomeLabels {
                    rule: rule.clone(),
                    outcome,
                })
        };
        RateLimitSeries {
            admitted: decision("admitted"),
            limited: decision("limited"),
            fallbacks: self
                .rate_limit_fallbacks
                .get_or_create_owned(&RuleLabels { rule: rule.clone() }),
            buckets: self
                .rate_limit_buckets
                .get_or_create_owned(&RuleLabels { rule }),
        }
    }

    /// A rate-limit call to Redis that failed for `reason` (one of
    /// [`RATE_LIMIT_REDIS_ERRORS`]).
    pub fn rate_limit_redis_error(&self, reason: &str) {
        if let Some(i) = RATE_LIMIT_REDIS_ERRORS.iter().position(|r| *r == reason) {
            self.rate_limit_redis_errors[i].inc();
        }
    }

    /// Rate-limit calls to Redis failed so far for `reason` (for tests).
    pub fn rate_limit_redis_errors_of(&self, reason: &str) -> u64 {
        RATE_LIMIT_REDIS_ERRORS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.rate_limit_redis_errors[i].get())
    }

    /// The live gateways last counted in Redis.
    pub fn set_rate_limit_live_gateways(&self, live: u32) {
        self.rate_limit_live_gateways.set(i64::from(live));
    }

    fn register(&mut self, name: &'static str, help: &'static str, metric: impl Metric) {
        let metric_type = metric.metric_type();
        self.registry.register(name, help, metric);
        let name = match metric_type {
            MetricType::Counter => format!("{name}_total"),
            _ => name.to_owned(),
        };
        self.families.push(FamilyHead {
            name,
            metric_type,
            help,
        });
    }

    /// The shared label value for `service`, interned on first sight.
    fn service(&self, name: &str) -> Arc<str> {
        if let Some(s) = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return s.clone();
        }
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = services.get(name) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(name);
        services.insert(s.clone());
        s
    }

    /// Counts a request in flight on `front` until the guard drops.
    pub fn in_flight(&self, front: Front) -> InFlightGuard<'_> {
        let gauge = &self.in_flight[front as usize];
        gauge.inc();
        InFlightGuard { gauge }
    }

    /// Records a finished request. `service` must be one the registry knows, or `""`.
    pub fn request(
        &self,
        front: Front,
        service: &str,
        method: &Method,
        status: u16,
        elapsed: Duration,
    ) {
        let method = MethodLabel::of(method);
        let seconds = elapsed.as_secs_f64();
        let owner = (self.id, self.series_generation.load(Ordering::Acquire));
        let counted = SERIES_CACHE.try_with(|cache| {
            // Not borrowed already: nothing below calls back into the cache.
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return false;
            };
            let series = cache.series(owner, front, service, method, status, || {
                self.series(front, service, method, status)
            });
            series.requests.inc();
            series.latency.observe(seconds);
            true
        });
        if counted != Ok(true) {
            // The thread is ending: counted without its cache.
            let (_, series) = self.series(front, service, method, status);
            series.requests.inc();
            series.latency.observe(seconds);
        }
    }

    /// Handles on the request series of these labels, created if they do not exist, and
    /// the service's shared name.
    fn series(
        &self,
        front: Front,
        service: &str,
        method: MethodLabel,
        status: u16,
    ) -> (Arc<str>, Series) {
        let service = self.service(service);
        let series = Series {
            requests: self.requests.get_or_create_owned(&RequestLabels {
                front,
                service: service.clone(),
                method,
                status,
            }),
            latency: self.latency.get_or_create_owned(&LatencyLabels {
                front,
                service: service.clone(),
            }),
        };
        (service, series)
    }

    pub fn upstream_error(&self, service: &str, kind: UpstreamErrorKind) {
        let service = self.service(service);
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels { service, kind })
            .inc();
    }

    pub fn retry(&self, service: &str) {
        let service = self.service(service);
        self.retries.get_or_create(&ServiceLabels { service }).inc();
    }

    /// Counts `own` events of this node's and `others` of other nodes', applied from the bus.
    pub fn events_applied(&self, own: u64, others: u64) {
        if own > 0 {
            self.events_applied[0].inc_by(own);
        }
        if others > 0 {
            self.events_applied[1].inc_by(others);
        }
    }

    pub fn event_quarantined(&self, reason: QuarantineReason) {
        self.events_quarantined[reason as usize].inc();
    }

    /// Counts what one call of the replication's apply did: `runs` write-lock holds, in which
    /// `changed` events changed the registry.
    pub fn events_changed(&self, runs: u64, changed: u64) {
        if runs > 0 {
            self.apply_runs.inc_by(runs);
        }
        if changed > 0 {
            self.events_changed.inc_by(changed);
        }
    }

    /// Runs applied and events that changed the registry since this node started, as
    /// `switchyard_bus_apply_runs_total` and `switchyard_bus_events_changed_total` count them
    /// (for a harness reading the node).
    pub fn runs_and_changes(&self) -> (u64, u64) {
        (self.apply_runs.get(), self.events_changed.get())
    }

    /// Bus records quarantined for `reason` since this node started.
    pub fn events_quarantined(&self, reason: QuarantineReason) -> u64 {
        self.events_quarantined[reason as usize].get()
    }

    /// Registry events applied so far, this node's own and others', as
    /// `switchyard_bus_events_applied_total` counts them (for a harness reading the node).
    pub fn events_applied_by_origin(&self) -> (u64, u64) {
        (self.events_applied[0].get(), self.events_applied[1].get())
    }

    pub fn change(&self, op: ChangeOp) {
        self.changes[op as usize].inc();
    }

    pub fn eviction(&self) {
        self.evictions.inc();
    }

    pub fn collected(&self) {
        self.collected.inc();
    }

    pub fn quota_refusal(&self) {
        self.quota_refusals.inc();
    }

    /// The services that have series, `""` left out.
    pub fn services_seen(&self) -> Vec<Arc<str>> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    }

    /// Drops every series labelled with `service`, for a service the registry no longer
    /// holds. The families cannot be walked, so this removes each label set the service
    /// could have: 3 fronts × 8 methods × 900 statuses (all `http::StatusCode` admits), about
    /// 22,000 map lookups, once per
    /// removed service. A request still in flight for it may create a series again; the next
    /// housekeeping drops that one too.
    pub fn forget_service(&self, service: &str) {
        let Some(service) = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take(service)
        else {
            return;
        };
        // After the removals below, the threads' cached handles are of series no longer
        // registered; each thread drops them at its next request.
        let _advance = AdvanceOnDrop(&self.series_generation);
        for front in Front::ALL {
            self.latency.remove(&LatencyLabels {
                front,
                service: service.clone(),
            });
            for method in 0..METHODS.len() as u8 {
                for status in 100..=999u16 {
                    self.requests.remove(&RequestLabels {
                        front,
                        service: service.clone(),
                        method: MethodLabel(method),
                        status,
                    });
                }
            }
        }
        for kind in UpstreamErrorKind::ALL {
            self.upstream_errors.remove(&UpstreamErrorLabels {
                service: service.clone(),
                kind,
            });
        }
        self.retries.remove(&ServiceLabels { service });
    }

    /// Counts a client `listener` refused for `reason` (one of [`REFUSAL_REASONS`]).
    pub fn listener_refusal(&self, listener: ListenerLabel, reason: &str) {
        if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.refusals[listener as usize][i].inc();
        }
    }

    /// The refusals counted for one listener and reason (for tests).
    pub fn listener_refusals_of(&self, listener: ListenerLabel, reason: &str) -> u64 {
        REFUSAL_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.refusals[listener as usize][i].get())
    }

    /// Counts a WebSocket (or an operation on one) the GraphQL front on `listener` refused.
    pub fn websocket_refusal(&self, listener: ListenerLabel, reason: WebSocketRefusal) {
        self.websocket_refusals[listener as usize][reason as usize].inc();
    }

    /// The WebSocket refusals counted for one listener and reason (for tests).
    pub fn websocket_refusals_of(&self, listener: ListenerLabel, reason: WebSocketRefusal) -> u64 {
        self.websocket_refusals[listener as usize][reason as usize].get()
    }

    /// A control credential refused for `reason` (one of [`CONTROL_AUTH_REFUSALS`]).
    pub fn control_auth_refusal(&self, reason: &str) {
        if let Some(i) = CONTROL_AUTH_REFUSALS.iter().position(|r| *r == reason) {
            self.control_auth_refusals[i].inc();
        }
    }

    /// Control credentials refused so far for `reason` (for tests).
    pub fn control_auth_refusals_of(&self, reason: &str) -> u64 {
        CONTROL_AUTH_REFUSALS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.control_auth_refusals[i].get())
    }

    /// A changed key file put in force (`applied`, with its key count) or refused.
    pub fn key_reload(&self, applied: Option<usize>) {
        match applied {
            Some(keys) => {
                self.key_reloads[0].inc();
                self.control_keys
                    .set(i64::try_from(keys).unwrap_or(i64::MAX));
            }
            None => {
                self.key_reloads[1].inc();
            }
        }
    }

    /// A listener's changed TLS files put in force (`applied`) or refused.
    pub fn tls_reload(&self, listener: ListenerLabel, applied: bool) {
        self.tls_reloads[listener as usize][usize::from(!applied)].inc();
    }

    /// The number of control keys in force.
    pub fn set_control_keys(&self, keys: usize) {
        self.control_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    pub fn ejection(&self, reason: EjectionReason) {
        self.ejections[reason as usize].inc();
    }

    pub fn address_refusal(&self, stage: AddressStage, class: Forbidden) {
        self.address_refusals[stage as usize][class as usize].inc();
    }

    /// Address refusals so far at `stage`, every reason together (for tests).
    pub fn address_refusals_at(&self, stage: AddressStage) -> u64 {
        self.address_refusals[stage as usize]
            .iter()
            .map(Counter::get)
            .sum()
    }

    /// Ejections so far for `reason` (for tests).
    pub fn ejections_of(&self, reason: EjectionReason) -> u64 {
        self.ejections[reason as usize].get()
    }

    /// The request count for one label set, summed over methods (for tests and the GraphQL
    /// view).
    pub fn requests_of(&self, front: Front, service: &str, status: u16) -> u64 {
        let Some(service) = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(service)
            .cloned()
        else {
            return 0;
        };
        (0..METHODS.len() as u8)
            .filter_map(|method| {
                let labels = RequestLabels {
                    front,
                    service: service.clone(),
                    method: MethodLabel(method),
                    status,
                };
                self.requests.get(&labels).map(|c| c.get())
            })
            .sum()
    }

    /// Writes the counters and histograms in the Prometheus text format (0.0.4).
    pub fn encode(&self, out: &mut String) {
        let mut text = String::with_capacity(4096);
        // Writing to a `String` cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        let encoded = split_families(&text);
        for family in &self.families {
            match encoded.get(family.name.as_str()) {
                Some(lines) => write_sorted(out, &family.name, lines),
                None => header(
                    out,
                    &family.name,
                    family.metric_type.as_str(),
                    &format!("{}.", family.help),
                ),
            }
        }
    }
}

/// The encoder's output by family name: each family's lines, its `# HELP` line first.
fn split_families(text: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut families: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or(rest);
            current = Some(name);
        }
        if let Some(name) = current {
            families.entry(name).or_default().push(line);
        }
    }
    families
}

/// Writes one family's lines with its series sorted by their labels. A series is one sample
/// line, or for a histogram its `_bucket` and `_sum` lines up to its `_count` line, which keep
/// their order; series are ordered by their last line, whose labels are the series' own.
fn write_sorted(out: &mut String, name: &str, lines: &[&str]) {
    let (heads, samples): (Vec<&str>, Vec<&str>) = lines.iter().partition(|l| l.starts_with('#'));
    let (bucket, sum) = (format!("{name}_bucket"), format!("{name}_sum"));
    let mut series: Vec<&[&str]> = Vec::new();
    let mut start = 0;
    for (i, line) in samples.iter().enumerate() {
        let sample = line.split(['{', ' ']).next().unwrap_or(line);
        if sample != bucket && sample != sum {
            series.push(&samples[start..=i]);
            start = i + 1;
        }
    }
    series.sort_by_key(|s| s.last().copied());
    for line in heads
        .into_iter()
        .chain(series.into_iter().flatten().copied())
    {
        out.push_str(line);
        out.push('\n');
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one gauge with its header.
pub fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Writes one process-wide counter with its `# HELP` and `# TYPE` lines.
pub fn counter(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Reads how many log lines the process dropped because its log writer fell behind; set once
/// by whoever installs the log writer (the `switchyard` binary), read at each scrape.
static LOG_LINES_DROPPED: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> =
    std::sync::OnceLock::new();

/// Sets where `switchyard_log_lines_dropped_total` comes from (the first call wins).
pub fn set_log_lines_dropped(read: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = LOG_LINES_DROPPED.set(Box::new(read));
}

/// The log lines dropped so far, if a log writer reports them.
pub fn log_lines_dropped() -> Option<u64> {
    LOG_LINES_DROPPED.get().map(|read| read())
}

/// The resident set size of this process, from `/proc/self/status`, where there is one.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
