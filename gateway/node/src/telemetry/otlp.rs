//! An optional exporter of request spans over OTLP/HTTP with JSON encoding (`POST
//! <collector>/v1/traces`), the OpenTelemetry protocol every collector accepts.
//!
//! Spans are queued without waiting: when the queue is full a span is dropped and counted, so a
//! slow or absent collector never slows a request. A background task sends them in batches,
//! each bounded in size and time; a failed batch is counted and dropped, not retried, because
//! a trace that arrives late is worth less than a gateway that stays light.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::header as metric_header;
use crate::config::TelemetryConfig;
use crate::sync::lock;

/// Spans sent in one request at most.
pub const BATCH_SPANS_MAX: usize = 512;

/// One finished request, as the gateway's span of it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub span: switchyard_core::trace::Span,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub method: String,
    pub path: String,
    pub service: String,
    pub status: u16,
    pub request_id: String,
}

/// What the gateway knows of a request when it finishes, for its span.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub span: switchyard_core::trace::Span,
    pub method: &'a str,
    pub path: &'a str,
    pub service: &'a str,
    pub status: u16,
    pub request_id: &'a str,
    /// Wall-clock start, in ms since the Unix epoch.
    pub start_unix_ms: u64,
    pub elapsed: Duration,
}

/// Queues the span of a finished request on `exporter`, if there is one and the trace is
/// sampled.
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

/// The queue of spans and the task that sends them.
#[derive(Debug)]
pub struct Exporter {
    url: http::Uri,
    node_id: String,
    service_name: String,
    interval: Duration,
    timeout: Duration,
    tx: mpsc::Sender<SpanRecord>,
    rx: Mutex<Option<mpsc::Receiver<SpanRecord>>>,
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Exporter {
    /// An exporter for `config`, or `None` when no endpoint is configured. The URL was
    /// checked by the config's validation.
    pub fn new(config: &TelemetryConfig, node_id: &str) -> Option<Self> {
        if config.otlp_traces_url.is_empty() {
            return None;
        }
        let url = config.otlp_traces_url.parse().ok()?;
        let (tx, rx) = mpsc::channel(config.spans_queued_max);
        Some(Self {
            url,
            node_id: node_id.to_owned(),
            service_name: config.service_name.clone(),
            interval: Duration::from_millis(config.export_interval_ms),
            timeout: Duration::from_millis(config.export_timeout_ms),
            tx,
            rx: Mutex::new(Some(rx)),
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Queues a span, or drops and counts it when the queue is full.
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends queued spans until `stop`, then sends what is left once and returns.
    pub async fn run(&self, stop: CancellationToken) {
        let Some(mut rx) = lock(&self.rx).take() else {
            return;
        };
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut batch = Vec::with_capacity(BATCH_SPANS_MAX);
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                n = rx.recv_many(&mut batch, BATCH_SPANS_MAX) => n == 0,
            };
            if !stopping {
                // Let a batch fill for up to one interval before sending it.
                let deadline = tokio::time::sleep(self.interval);
                tokio::pin!(deadline);
                while batch.len() < BATCH_SPANS_MAX {
                    let room = BATCH_SPANS_MAX - batch.len();
                    tokio::select! {
                        () = &mut deadline => break,
                        () = stop.cancelled() => break,
                        n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                    }
                }
            } else {
                while batch.len() < BATCH_SPANS_MAX {
                    match rx.try_recv() {
                        Ok(span) => batch.push(span),
                        Err(_) => break,
                    }
                }
            }
            if !batch.is_empty() {
                self.send(&client, &batch).await;
                batch.clear();
            }
            if stopping || stop.is_cancelled() {
                return;
            }
        }
    }

    async fn send(&self, client: &Client<HttpConnector, Full<Bytes>>, batch: &[SpanRecord]) {
        let body = encode_batch(&self.service_name, &self.node_id, batch);
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            self.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            return;
        };
        let outcome = tokio::time::timeout(self.timeout, async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            // Read the answer so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("collector answered {status}"))
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                self.exported
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                self.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(url = %self.url, %error, spans = batch.len(), "span export failed");
            }
            Err(_) => {
                self.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(url = %self.url, timeout_ms = self.timeout.as_millis() as u64, spans = batch.len(), "span export timed out");
            }
        }
    }

    /// The exporter's own counters, for `/metrics`.
    pub fn encode_metrics(&self, out: &mut String) {
        metric_header(
            out,
            "switchyard_trace_spans_total",
            "counter",
            "Request spans by outcome of their export over OTLP.",
        );
        for (outcome, n) in [
            ("exported", &self.exported),
            ("dropped", &self.dropped),
            ("failed", &self.failed),
        ] {
            let _ = writeln!(
                out,
                "switchyard_trace_spans_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// OTLP span kind `SPAN_KIND_SERVER`.
const SPAN_KIND_SERVER: u8 = 2;
/// OTLP status code `STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u8 = 2;

/// The OTLP/JSON `ExportTraceServiceRequest` for `batch`. Ids are hex, 64-bit integers are
/// strings, as the OTLP JSON mapping requires.
pub fn encode_batch(service_name: &str, node_id: &str, batch: &[SpanRecord]) -> Vec<u8> {
    let attr =
        |key: &str, value: serde_json::Value| serde_json::json!({"key": key, "value": value});
    let spans: Vec<serde_json::Value> = batch
        .iter()
        .map(|r| {
            let mut span = serde_json::json!({
                "traceId": r.span.trace_id_hex(),
                "spanId": r.span.span_id_hex(),
                "name": r.name,
                "kind": SPAN_KIND_SERVER,
                "startTimeUnixNano": r.start_unix_ns.to_string(),
                "endTimeUnixNano": r.end_unix_ns.to_string(),
                "attributes": [
                    attr("http.request.method", serde_json::json!({"stringValue": r.method})),
                    attr("url.path", serde_json::json!({"stringValue": r.path})),
                    attr("http.response.status_code", serde_json::json!({"intValue": r.status.to_string()})),
                    attr("switchyard.service", serde_json::json!({"stringValue": r.service})),
                    attr("switchyard.request_id", serde_json::json!({"stringValue": r.request_id})),
                ],
            });
            if let Some(parent) = r.span.parent_id {
                span["parentSpanId"] = serde_json::json!(format!("{parent:016x}"));
            }
            if r.status >= 500 {
                span["status"] = serde_json::json!({"code": STATUS_CODE_ERROR});
            }
            span
        })
        .collect();
    let request = serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                attr("service.name", serde_json::json!({"stringValue": service_name})),
                attr("service.instance.id", serde_json::json!({"stringValue": node_id})),
            ]},
            "scopeSpans": [{
                "scope": {"name": "switchyard", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&request).unwrap_or_default()
}
