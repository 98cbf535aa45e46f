//! The same request-path metrics on prometheus-client: a Family<_, Counter> for requests,
//! a Family<_, Histogram> for latency, an in-flight Gauge per front.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::hand::{Front, LATENCY_BUCKETS_S};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FrontLabel {
    rest,
    graphql,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum MethodLabel {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    OTHER,
}

fn front_label(f: Front) -> FrontLabel {
    match f {
        Front::Rest => FrontLabel::rest,
        Front::Graphql => FrontLabel::graphql,
    }
}

fn method_label(m: &Method) -> MethodLabel {
    match *m {
        Method::GET => MethodLabel::GET,
        Method::HEAD => MethodLabel::HEAD,
        Method::POST => MethodLabel::POST,
        Method::PUT => MethodLabel::PUT,
        Method::PATCH => MethodLabel::PATCH,
        Method::DELETE => MethodLabel::DELETE,
        Method::OPTIONS => MethodLabel::OPTIONS,
        _ => MethodLabel::OTHER,
    }
}

/// Label sets with an owned `String` service: what one writes first (one allocation per
/// family per request to build the key).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub front: FrontLabel,
    pub service: String,
    pub method: MethodLabel,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub front: FrontLabel,
    pub service: String,
}

/// Label sets with a shared `Arc<str>` service, as if the caller already held one (the
/// registry's name): no allocation per request, a refcount instead.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabelsArc {
    pub front: FrontLabel,
    pub service: Arc<str>,
    pub method: MethodLabel,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabelsArc {
    pub front: FrontLabel,
    pub service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontLabels {
    pub front: FrontLabel,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

type HistCtor = fn() -> Histogram;

pub struct PromMetrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, HistCtor>,
    requests_arc: Family<RequestLabelsArc, Counter>,
    latency_arc: Family<LatencyLabelsArc, Histogram, HistCtor>,
    in_flight: [Gauge; 2],
}

pub struct GaugeGuard<'a>(&'a Gauge);
impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl PromMetrics {
    /// `arc`: register the Arc<str>-keyed families instead of the String-keyed ones.
    pub fn new(arc: bool) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, HistCtor>::new_with_constructor(latency_histogram as HistCtor);
        let requests_arc = Family::<RequestLabelsArc, Counter>::default();
        let latency_arc = Family::<LatencyLabelsArc, Histogram, HistCtor>::new_with_constructor(latency_histogram as HistCtor);
        let in_flight_family = Family::<FrontLabels, Gauge>::default();
        // get_or_create returns a read guard: take each clone in its own statement, else the
        // first guard is still held when the second needs the write lock (a deadlock).
        let rest = in_flight_family.get_or_create_owned(&FrontLabels { front: FrontLabel::rest });
        let graphql = in_flight_family.get_or_create_owned(&FrontLabels { front: FrontLabel::graphql });
        let in_flight = [rest, graphql];
        // Counters are registered without `_total`: the encoder appends it.
        if arc {
            registry.register("switchyard_http_requests", "HTTP requests answered, by front, service, method and status.", requests_arc.clone());
            registry.register("switchyard_http_request_duration_seconds", "Time from request head to response head, by front and service.", latency_arc.clone());
        } else {
            registry.register("switchyard_http_requests", "HTTP requests answered, by front, service, method and status.", requests.clone());
            registry.register("switchyard_http_request_duration_seconds", "Time from request head to response head, by front and service.", latency.clone());
        }
        registry.register("switchyard_http_requests_in_flight", "Requests being handled, by front.", in_flight_family);
        Self { registry, requests, latency, requests_arc, latency_arc, in_flight }
    }

    pub fn in_flight(&self, front: Front) -> GaugeGuard<'_> {
        let g = &self.in_flight[front as usize];
        g.inc();
        GaugeGuard(g)
    }

    pub fn request(&self, front: Front, service: &str, method: &Method, status: u16, elapsed: Duration) {
        let front = front_label(front);
        self.requests
            .get_or_create(&RequestLabels { front, service: service.to_owned(), method: method_label(method), status })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { front, service: service.to_owned() })
            .observe(elapsed.as_secs_f64());
    }

    pub fn request_arc(&self, front: Front, service: &Arc<str>, method: &Method, status: u16, elapsed: Duration) {
        let front = front_label(front);
        self.requests_arc
            .get_or_create(&RequestLabelsArc { front, service: service.clone(), method: method_label(method), status })
            .inc();
        self.latency_arc
            .get_or_create(&LatencyLabelsArc { front, service: service.clone() })
            .observe(elapsed.as_secs_f64());
    }
}
