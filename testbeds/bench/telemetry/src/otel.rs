//! The same span through the OpenTelemetry SDK: tracer -> span with the same attributes ->
//! end -> BatchSpanProcessor (its own worker thread) -> an exporter that only counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};

use crate::hand::Finished;

/// Drops every batch; acks to the bench each time another `ack_every` spans have arrived.
#[derive(Debug)]
pub struct CountingExporter {
    pub received: Arc<AtomicU64>,
    pub ack: SyncSender<()>,
    pub ack_every: u64,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        drop(batch);
        let before = self.received.fetch_add(n, Ordering::Relaxed);
        for _ in (before / self.ack_every)..((before + n) / self.ack_every) {
            let _ = self.ack.send(());
        }
        Ok(())
    }
}

pub fn provider(exporter: CountingExporter, queued_max: usize) -> (SdkTracerProvider, SdkTracer) {
    let bsp = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(queued_max)
                .with_max_export_batch_size(512)
                .with_scheduled_delay(Duration::from_secs(1))
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder().with_span_processor(bsp).build();
    let tracer = provider.tracer("switchyard");
    (provider, tracer)
}

/// The remote parent's context, when the client sent a `traceparent` (the gateway would
/// build it from the parsed header; the SDK then keeps its trace id).
pub fn parent_context(f: &Finished<'_>) -> Context {
    match f.span.parent_id {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(f.span.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.to_be_bytes()),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    }
}

/// One request's span: the same name, kind, times and five attributes as otlp::export.
pub fn export(tracer: &SdkTracer, f: Finished<'_>) {
    let parent = parent_context(&f);
    let start = UNIX_EPOCH + Duration::from_millis(f.start_unix_ms);
    let mut span = tracer
        .span_builder(format!("{} /{}", f.method, f.service))
        .with_kind(SpanKind::Server)
        .with_start_time(start)
        .with_attributes([
            KeyValue::new("http.request.method", f.method.to_owned()),
            KeyValue::new("url.path", f.path.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(f.status)),
            KeyValue::new("switchyard.service", f.service.to_owned()),
            KeyValue::new("switchyard.request_id", f.request_id.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    if f.status >= 500 {
        span.set_status(Status::error(""));
    }
    span.end_with_timestamp(start + f.elapsed);
}

#[allow(dead_code)]
fn _now() -> SystemTime {
    SystemTime::now()
}
