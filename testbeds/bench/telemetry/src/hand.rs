//! The hand-written telemetry, copied from gateway/node/src/metrics.rs and otlp.rs
//! (the request path only: `Metrics::request`, the in-flight guard, `encode` of the
//! request series, and `otlp::export` + `Exporter::record`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use http::Method;
use tokio::sync::mpsc;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Front {
    Rest = 0,
    Graphql = 1,
}

impl Front {
    const ALL: [Front; 2] = [Front::Rest, Front::Graphql];
    fn label(self) -> &'static str {
        match self {
            Front::Rest => "rest",
            Front::Graphql => "graphql",
        }
    }
}

const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"];

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

pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const UPSTREAM_KINDS: usize = 6;

#[derive(Debug, Default)]
struct Histogram {
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

#[derive(Debug, Default)]
struct ServiceSeries {
    requests: Mutex<BTreeMap<(Front, u8, u16), u64>>,
    latency: [Histogram; 2],
    #[allow(dead_code)]
    upstream_errors: [AtomicU64; UPSTREAM_KINDS],
    #[allow(dead_code)]
    retries: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    services: RwLock<BTreeMap<String, Arc<ServiceSeries>>>,
    in_flight: [AtomicI64; 2],
}

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
        if let Some(s) = self.services.read().unwrap_or_else(|e| e.into_inner()).get(service) {
            return s.clone();
        }
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_owned())
            .or_default()
            .clone()
    }

    pub fn in_flight(&self, front: Front) -> InFlightGuard<'_> {
        let gauge = &self.in_flight[front as usize];
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { gauge }
    }

    pub fn request(&self, front: Front, service: &str, method: &Method, status: u16, elapsed: Duration) {
        let series = self.series(service);
        *lock(&series.requests)
            .entry((front, method_index(method), status))
            .or_default() += 1;
        series.latency[front as usize].observe(elapsed);
    }

    /// The request series of `encode` (requests, duration histogram, in-flight), verbatim.
    pub fn encode(&self, out: &mut String) {
        let services: Vec<(String, Arc<ServiceSeries>)> = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        header(out, "switchyard_http_requests_total", "counter",
            "HTTP requests answered, by front, service, method and status.");
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
        header(out, "switchyard_http_request_duration_seconds", "histogram",
            "Time from request head to response head, by front and service.");
        for (name, series) in &services {
            for front in Front::ALL {
                let h = &series.latency[front as usize];
                let counts: Vec<u64> = h.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("front=\"{}\",service=\"{}\"", front.label(), escape(name));
                let mut cumulative = 0;
                for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
                    cumulative += counts[i];
                    let _ = writeln!(out, "switchyard_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
                }
                let _ = writeln!(out, "switchyard_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}");
                let sum_s = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
                let _ = writeln!(out, "switchyard_http_request_duration_seconds_sum{{{labels}}} {sum_s}");
                let _ = writeln!(out, "switchyard_http_request_duration_seconds_count{{{labels}}} {total}");
            }
        }
        header(out, "switchyard_http_requests_in_flight", "gauge", "Requests being handled, by front.");
        for front in Front::ALL {
            let n = self.in_flight[front as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "switchyard_http_requests_in_flight{{front=\"{}\"}} {n}", front.label());
        }
    }
}

pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

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

// ---- otlp.rs: the request path of span export ----

/// switchyard_core::trace::Span, the fields only.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub flags: u8,
}

impl Span {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct SpanRecord {
    pub span: Span,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub method: String,
    pub path: String,
    pub service: String,
    pub status: u16,
    pub request_id: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub span: Span,
    pub method: &'a str,
    pub path: &'a str,
    pub service: &'a str,
    pub status: u16,
    pub request_id: &'a str,
    pub start_unix_ms: u64,
    pub elapsed: Duration,
}

pub fn export(exporter: Option<&Exporter>, finished: Finished<'_>) {
    let Some(exporter) = exporter else {
        return;
    };
    if !finished.span.sampled() {
        return;
    }
    let start_unix_ns = finished.start_unix_ms.saturating_mul(1_000_000);
    let elapsed_ns = u64::try_from(finished.elapsed.as_nanos()).unwrap_or(u64::MAX);
    exporter.record(SpanRecord {
        span: finished.span,
        name: format!("{} /{}", finished.method, finished.service),
        start_unix_ns,
        end_unix_ns: start_unix_ns.saturating_add(elapsed_ns),
        method: finished.method.to_owned(),
        path: finished.path.to_owned(),
        service: finished.service.to_owned(),
        status: finished.status,
        request_id: finished.request_id.to_owned(),
    });
}

/// The queue side of otlp::Exporter (the sending task is replaced by a drain in main.rs).
#[derive(Debug)]
pub struct Exporter {
    pub tx: mpsc::Sender<SpanRecord>,
    pub dropped: AtomicU64,
}

impl Exporter {
    pub fn new(queued_max: usize) -> (Self, mpsc::Receiver<SpanRecord>) {
        let (tx, rx) = mpsc::channel(queued_max);
        (Self { tx, dropped: AtomicU64::new(0) }, rx)
    }

    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
