//! Prometheus metrics, served as text at `GET /metrics` on the control listener.
//!
//! Counters and histograms are atomics, found per service through a map that is written only
//! when a service is first seen, so the request path takes a read lock and no allocation.
//! Gauges (registry size, bus position and lag, readiness, outbox, memory) are read from the
//! node when scraped. Output is sorted, so two scrapes of the same state are byte-equal.
//!
//! Label cardinality is bounded: `service` is a service the registry knows (or `""`), `method`
//! one of eight values, `status` a valid HTTP status.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::Method;
use switchyard_core::GatewayError;

use crate::sync::lock;

/// Which front a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

fn method_index(method: &Method) -> u8 {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Kinds of upstream failure, the `kind` label of `switchyard_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Everything counted for one service (or for `""`, requests that named no known service).
#[derive(Debug, Default)]
struct ServiceSeries {
    /// (front, method index, status) → count. A mutex held for one map update.
    requests: Mutex<BTreeMap<(Front, u8, u16), u64>>,
    latency: [Histogram; Front::ALL.len()],
    upstream_errors: [AtomicU64; UPSTREAM_KINDS.len()],
    retries: AtomicU64,
}

/// The node's counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    services: RwLock<BTreeMap<String, Arc<ServiceSeries>>>,
    in_flight: [AtomicI64; Front::ALL.len()],
    /// Events applied from the bus: [this node's own, other nodes'].
    events_applied: [AtomicU64; 2],
    /// Changes made through this node: [register, deregister, evict].
    changes: [AtomicU64; 3],
    evictions: AtomicU64,
}

/// A registry change made through this node, for `switchyard_registry_changes_total`.
#[derive(Debug, Clone, Copy)]
pub enum ChangeOp {
    Register = 0,
    Deregister = 1,
    Evict = 2,
}

/// Keeps a front's in-flight gauge raised while alive.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    gauge: &'a AtomicI64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    fn series(&self, service: &str) -> Arc<ServiceSeries> {
        if let Some(s) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
        {
            return s.clone();
        }
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_owned())
            .or_default()
            .clone()
    }

    /// Counts a request in flight on `front` until the guard drops.
    pub fn in_flight(&self, front: Front) -> InFlightGuard<'_> {
        let gauge = &self.in_flight[front as usize];
        gauge.fetch_add(1, Ordering::Relaxed);
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
        let series = self.series(service);
        *lock(&series.requests)
            .entry((front, method_index(method), status))
            .or_default() += 1;
        series.latency[front as usize].observe(elapsed);
    }

    pub fn upstream_error(&self, service: &str, kind: UpstreamErrorKind) {
        self.series(service).upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retry(&self, service: &str) {
        self.series(service).retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn event_applied(&self, own: bool) {
        self.events_applied[usize::from(!own)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn change(&self, op: ChangeOp) {
        self.changes[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    /// The request count for one label set (for tests and the GraphQL view).
    pub fn requests_of(&self, front: Front, service: &str, status: u16) -> u64 {
        let Some(series) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
        else {
            return 0;
        };
        lock(&series.requests)
            .iter()
            .filter(|((f, _, s), _)| *f == front && *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// Writes the counters and histograms in the Prometheus text format.
    pub fn encode(&self, out: &mut String) {
        let services: Vec<(String, Arc<ServiceSeries>)> = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();

        header(
            out,
            "switchyard_http_requests_total",
            "counter",
            "HTTP requests answered, by front, service, method and status.",
        );
        for (name, series) in &services {
            let requests = lock(&series.requests).clone();
            for ((front, method, status), n) in requests {
                let _ = writeln!(
                    out,
                    "switchyard_http_requests_total{{front=\"{}\",service=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                    front.label(),
                    escape(name),
                    METHODS[usize::from(method)],
                );
            }
        }

        header(
            out,
            "switchyard_http_request_duration_seconds",
            "histogram",
            "Time from request head to response head, by front and service.",
        );
        for (name, series) in &services {
            for front in Front::ALL {
                let h = &series.latency[front as usize];
                let counts: Vec<u64> = h
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("front=\"{}\",service=\"{}\"", front.label(), escape(name));
                let mut cumulative = 0;
                for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
                    cumulative += counts[i];
                    let _ = writeln!(
                        out,
                        "switchyard_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "switchyard_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}"
                );
                let sum_s = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "switchyard_http_request_duration_seconds_sum{{{labels}}} {sum_s}"
                );
                let _ = writeln!(
                    out,
                    "switchyard_http_request_duration_seconds_count{{{labels}}} {total}"
                );
            }
        }

        header(
            out,
            "switchyard_http_requests_in_flight",
            "gauge",
            "Requests being handled, by front.",
        );
        for front in Front::ALL {
            let n = self.in_flight[front as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "switchyard_http_requests_in_flight{{front=\"{}\"}} {n}",
                front.label()
            );
        }

        header(
            out,
            "switchyard_upstream_errors_total",
            "counter",
            "Failed attempts to call a service, by kind.",
        );
        for (name, series) in &services {
            for (i, kind) in UPSTREAM_KINDS.iter().enumerate() {
                let n = series.upstream_errors[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "switchyard_upstream_errors_total{{service=\"{}\",kind=\"{kind}\"}} {n}",
                        escape(name)
                    );
                }
            }
        }

        header(
            out,
            "switchyard_upstream_retries_total",
            "counter",
            "Calls retried on another instance.",
        );
        for (name, series) in &services {
            let n = series.retries.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "switchyard_upstream_retries_total{{service=\"{}\"}} {n}",
                    escape(name)
                );
            }
        }

        header(
            out,
            "switchyard_bus_events_applied_total",
            "counter",
            "Registry events read from the bus and applied, by origin.",
        );
        for (i, origin) in ["local", "remote"].iter().enumerate() {
            let n = self.events_applied[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "switchyard_bus_events_applied_total{{origin=\"{origin}\"}} {n}"
            );
        }

        header(
            out,
            "switchyard_registry_changes_total",
            "counter",
            "Registry changes made through this node, by operation.",
        );
        for (i, op) in ["register", "deregister", "evict"].iter().enumerate() {
            let n = self.changes[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "switchyard_registry_changes_total{{op=\"{op}\"}} {n}");
        }

        header(
            out,
            "switchyard_evictions_total",
            "counter",
            "Services this node evicted because none of their instances could be reached.",
        );
        let _ = writeln!(
            out,
            "switchyard_evictions_total {}",
            self.evictions.load(Ordering::Relaxed)
        );
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

/// Escapes a label value (backslash, double quote, newline), as the text format requires.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The resident set size of this process, from `/proc/self/status`, where there is one.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_counted_under_its_labels_and_latency_bucket() {
        let m = Metrics::default();
        m.request(
            Front::Rest,
            "sample",
            &Method::GET,
            200,
            Duration::from_micros(700),
        );
        m.request(
            Front::Rest,
            "sample",
            &Method::GET,
            200,
            Duration::from_millis(30),
        );
        m.request(
            Front::Rest,
            "",
            &Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::ZERO,
        );
        let mut out = String::new();
        m.encode(&mut out);
        assert!(out.contains("switchyard_http_requests_total{front=\"rest\",service=\"sample\",method=\"GET\",status=\"200\"} 2\n"), "{out}");
        assert!(out.contains("switchyard_http_requests_total{front=\"rest\",service=\"\",method=\"OTHER\",status=\"404\"} 1\n"), "{out}");
        // 700 µs falls in the 1 ms bucket, not the 0.5 ms one; 30 ms in the 50 ms one.
        assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"0.0005\"} 0\n"), "{out}");
        assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"0.025\"} 1\n"), "{out}");
        assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("switchyard_http_request_duration_seconds_count{front=\"rest\",service=\"sample\"} 2\n"), "{out}");
        assert!(out.contains("switchyard_http_request_duration_seconds_sum{front=\"rest\",service=\"sample\"} 0.0307\n"), "{out}");
        assert_eq!(m.requests_of(Front::Rest, "sample", 200), 2);
    }

    #[test]
    fn in_flight_falls_back_when_the_guard_drops() {
        let m = Metrics::default();
        let g = m.in_flight(Front::Graphql);
        let mut out = String::new();
        m.encode(&mut out);
        assert!(out.contains("switchyard_http_requests_in_flight{front=\"graphql\"} 1\n"));
        drop(g);
        out.clear();
        m.encode(&mut out);
        assert!(out.contains("switchyard_http_requests_in_flight{front=\"graphql\"} 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn upstream_errors_are_classified() {
        let m = Metrics::default();
        let e = GatewayError::UpstreamTimeout {
            service: "s".into(),
            timeout_ms: 1,
        };
        m.upstream_error("s", UpstreamErrorKind::of(&e).unwrap());
        assert_eq!(
            UpstreamErrorKind::of(&GatewayError::ServiceNotFound {
                service: "s".into()
            }),
            None
        );
        let mut out = String::new();
        m.encode(&mut out);
        assert!(
            out.contains("switchyard_upstream_errors_total{service=\"s\",kind=\"timeout\"} 1\n"),
            "{out}"
        );
    }
}
