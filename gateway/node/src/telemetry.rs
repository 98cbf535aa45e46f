//! Telemetry: what the node counts, logs and exports about the requests it handles.
//!
//! * [`metrics`]: Prometheus counters and histograms, and their text encoding.
//! * [`otlp`]: the optional export of request spans over OTLP/HTTP.
//!
//! [`Telemetry::request_finished`] is the one place a finished request (REST, or a GraphQL
//! `call`) is observed: the access log line, the request metrics and the span export.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Method;
use switchyard_core::GatewayError;
use switchyard_core::identity::Identity;
use switchyard_core::trace::{Span, TraceId};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub mod metrics;
pub mod otlp;

pub use metrics::{
    AddressStage, ChangeOp, EjectionReason, Front, ListenerLabel, Metrics, QuarantineReason,
    UpstreamErrorKind, WebSocketRefusal,
};

/// Writes the metrics of an owner that keeps its own counters (Redis, revocations), in the
/// Prometheus text format, when `/metrics` is scraped.
pub type ScrapedMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The node's metrics, span exporter and access-log switch.
pub struct Telemetry {
    metrics: Metrics,
    exporter: Option<otlp::Exporter>,
    access_log: bool,
    scraped: RwLock<Vec<ScrapedMetrics>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("metrics", &self.metrics)
            .field("exporter", &self.exporter)
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

/// What is known of a request when it finishes.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub front: Front,
    pub request_id: &'a str,
    /// The gateway's span; `None` for a GraphQL call refused before it had one.
    pub span: Option<&'a Span>,
    pub method: &'a Method,
    /// The request path, at most 256 characters.
    pub path: &'a str,
    /// The metrics label and the span's service: a service the registry knows, or `""`.
    pub service: &'a str,
    /// The service the request named, as sent (at most 256 characters), for the log line.
    pub named_service: &'a str,
    pub status: u16,
    /// The gateway's error, when the answer is one.
    pub error: Option<&'a GatewayError>,
    /// Who sent it, when an authentication policy established it.
    pub identity: Option<&'a Identity>,
    /// Wall-clock start, Unix ms.
    pub start_unix_ms: u64,
    pub elapsed: Duration,
}

impl Telemetry {
    pub fn new(config: &Config, node_id: &str) -> Self {
        Self {
            metrics: Metrics::default(),
            exporter: otlp::Exporter::new(&config.telemetry, node_id),
            access_log: config.log.access,
            scraped: RwLock::new(Vec::new()),
        }
    }

    /// Adds an owner's metrics to every scrape, after the node's own.
    pub fn add_scraped(&self, encode: ScrapedMetrics) {
        crate::sync::write(&self.scraped).push(encode);
    }

    /// Writes the metrics added with [`Telemetry::add_scraped`], in the order they were added.
    pub fn encode_scraped(&self, out: &mut String) {
        for encode in crate::sync::read(&self.scraped).iter() {
            encode(out);
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn exporter(&self) -> Option<&otlp::Exporter> {
        self.exporter.as_ref()
    }

    /// Sends queued spans until `stop`, when an exporter is configured.
    pub async fn run(&self, stop: CancellationToken) {
        if let Some(exporter) = &self.exporter {
            exporter.run(stop).await;
        }
    }

    /// Observes a finished request: logs it, counts it and exports its span.
    pub fn request_finished(&self, f: &Finished<'_>) {
        let (request_id, method, path, front, status, service) = (
            f.request_id,
            f.method,
            f.path,
            f.front.label(),
            f.status,
            f.named_service,
        );
        let trace_id = f.span.map_or(TraceId(0), Span::trace_id);
        // The verified subject and credential id, never the credential itself.
        let (subject, credential) = f
            .identity
            .map_or(("", ""), |i| (i.subject.as_str(), i.credential_id.as_str()));
        if let Some(error) = f.error {
            let code = error.code();
            if error.http_status() >= 500 {
                tracing::warn!(%request_id, %trace_id, front, %service, %method, %path, %code, %error, subject, credential, "request failed");
            } else {
                tracing::info!(%request_id, %trace_id, front, %service, %method, %path, %code, %error, subject, credential, "request refused");
            }
        }
        self.metrics
            .request(f.front, f.service, method, status, f.elapsed);
        let elapsed_us = f.elapsed.as_micros() as u64;
        if self.access_log {
            tracing::info!(%request_id, %trace_id, front, %service, %method, %path, status, elapsed_us, subject, credential, "request done");
        } else {
            tracing::debug!(%request_id, %trace_id, front, %service, %method, %path, status, elapsed_us, subject, credential, "request done");
        }
        if let Some(span) = f.span {
            otlp::export(
                self.exporter.as_ref(),
                otlp::Finished {
                    span: *span,
                    method: method.as_str(),
                    path,
                    service: f.service,
                    status,
                    request_id,
                    start_unix_ms: f.start_unix_ms,
                    elapsed: f.elapsed,
                },
            );
        }
    }
}
