//! Auditing: a record of every forwarded request and every registry change, published on
//! audit topics of their own, with no endpoint exposed (docs/operations.md, "Auditing";
//! docs/decisions/0021).
//!
//! ```text
//! pipeline.finish ──RequestFacts──► Auditor::request ─┐ sample, redact, encode
//! registrar ──────RegistryFacts──► Auditor::registry ─┤
//!                                                     ▼
//!                      bounded queue (records, bytes) ── full: drop, `queue_full`
//!                                                     │
//!                      Auditor::run ── batches ──► AuditSink::deliver ── per-record results
//! ```
//!
//! Nothing that handles a request waits on the sink: [`Auditor::offer`] either queues a
//! record or drops it and counts why. The drain task hands batches to the sink; on stop it
//! flushes what is queued within [`FLUSH_TIMEOUT`] and counts the rest as `shutdown`.
//!
//! * [`sink`]: the audit sink seam — where encoded records go: Kafka in production, memory
//!   in tests and the simulation ([`sink::MemorySink`]).
//! * [`record`]: the facts handed in, each service's rules, the records built from them.
//! * [`redact`]: what of a query, headers and bodies a record may keep.
//! * `kafka` (with the `kafka` feature): the sink in production, a producer onto the two
//!   audit topics (`kafka::KafkaSink`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use switchyard_core::planted::{self, Bug};
use switchyard_proto::audit::RegistryAction;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{AuditConfig, AuditMode};
use crate::sync::lock;

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod record;
pub mod redact;
pub mod sink;

pub use record::{RegistryFacts, RequestFacts, RequestNotes, ServiceRules};
pub use sink::{AuditSink, DropReason, MemorySink, Outgoing, Stream};

/// How long the drain task goes on delivering after it is told to stop.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The least time between two log lines about drops of one reason.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

const STREAMS: [Stream; 2] = [Stream::Requests, Stream::Registry];

/// The auditor: sampling, redaction, the bounded queue, the drain task, the counters.
pub struct Auditor {
    node_id: String,
    default: ServiceRules,
    services: BTreeMap<String, ServiceRules>,
    registry_renewals: bool,
    record_bytes_max: usize,
    batch_records_max: usize,
    queue_records_max: usize,
    queue_bytes_max: usize,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    /// Set once the drain task has stopped: later records are dropped as `shutdown`.
    closed: AtomicBool,
    sink: Arc<dyn AuditSink>,
    counters: Counters,
    drop_log: Mutex<[DropLog; 5]>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Queue {
    records: VecDeque<Outgoing>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: [AtomicU64; 2],
    dropped: [[AtomicU64; 5]; 2],
    sampled_out: AtomicU64,
    refused: AtomicU64,
}

/// Drops of one reason not yet logged, and when the last line was written.
#[derive(Debug, Default, Clone, Copy)]
struct DropLog {
    last: Option<Instant>,
    unlogged: u64,
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Requests => 0,
        Stream::Registry => 1,
    }
}

fn reason_index(reason: DropReason) -> usize {
    DropReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or_default()
}

impl Auditor {
    pub fn new(config: &AuditConfig, node_id: &str, sink: Arc<dyn AuditSink>) -> Self {
        Self {
            node_id: node_id.to_owned(),
            default: ServiceRules::new(&config.default),
            services: config
                .service_policies()
                .iter()
                .map(|(service, policy)| (service.clone(), ServiceRules::new(policy)))
                .collect(),
            registry_renewals: config.registry_renewals,
            record_bytes_max: config.record_bytes_max,
            batch_records_max: config.batch_records_max.max(1),
            queue_records_max: config.queue_records_max,
            queue_bytes_max: config.queue_bytes_max,
            queue: Mutex::new(Queue::default()),
            wake: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            sink,
            counters: Counters::default(),
            drop_log: Mutex::new([DropLog::default(); 5]),
        }
    }

    /// The sink the auditor delivers to (its `run` is the node's to spawn).
    pub fn sink(&self) -> &Arc<dyn AuditSink> {
        &self.sink
    }

    /// The rules of `service`'s requests.
    pub fn rules(&self, service: &str) -> &ServiceRules {
        self.services.get(service).unwrap_or(&self.default)
    }

    /// Whether `service`'s requests are refused while they cannot be audited.
    pub fn required(&self, service: &str) -> bool {
        self.rules(service).mode == AuditMode::Required
    }

    /// Whether a record offered now would be delivered, as far as the auditor can tell: the
    /// sink says it can deliver, and the queue is at most three quarters full (records and
    /// bytes).
    pub fn can_audit(&self) -> bool {
        if !self.sink.available() {
            return false;
        }
        let queue = lock(&self.queue);
        queue.records.len() * 4 <= self.queue_records_max * 3
            && queue.bytes * 4 <= self.queue_bytes_max * 3
    }

    /// Counts a request refused because it could not be audited.
    pub fn count_refused(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a finished request: errors always, successes as the service's sampling says.
    pub fn request(&self, facts: RequestFacts<'_>) {
        let rules = self.rules(facts.service);
        if !facts.is_error() && !rules.keeps_success(facts.request_id) {
            self.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = facts.request_id.to_owned();
        let record = facts.into_record(&self.node_id, rules);
        self.offer(Outgoing {
            stream: Stream::Requests,
            key,
            payload: Bytes::from(record.encode_to_vec()),
        });
    }

    /// Records a registry change or refusal; an applied renewal only with
    /// `registry_renewals` (a refused one always: it is what an audit is for).
    pub fn registry(&self, facts: RegistryFacts<'_>) {
        let applied = facts.error_code.is_none();
        if facts.action == RegistryAction::Renew && applied && !self.registry_renewals {
            return;
        }
        let key = facts.key();
        let record = facts.into_record(&self.node_id);
        self.offer(Outgoing {
            stream: Stream::Registry,
            key,
            payload: Bytes::from(record.encode_to_vec()),
        });
    }

    /// Queues an encoded record for the sink, or drops it and counts why. Never waits
    /// beyond the queue's lock, which is held only to push or pop.
    pub fn offer(&self, record: Outgoing) -> bool {
        let stream = record.stream;
        let size = record.payload.len() + record.key.len();
        let refused = if self.closed.load(Ordering::Acquire) {
            Some(DropReason::Shutdown)
        } else if size > self.record_bytes_max {
            Some(DropReason::TooLarge)
        } else {
            let mut queue = lock(&self.queue);
            if queue.records.len() >= self.queue_records_max
                || queue.bytes + size > self.queue_bytes_max
            {
                Some(DropReason::QueueFull)
            } else {
                queue.bytes += size;
                queue.records.push_back(record);
                None
            }
        };
        match refused {
            None => {
                self.wake.notify_one();
                true
            }
            Some(reason) => {
                self.dropped(stream, reason, 1);
                false
            }
        }
    }

    /// Records queued now.
    pub fn queued(&self) -> usize {
        lock(&self.queue).records.len()
    }

    /// Delivered records of `stream`.
    pub fn delivered(&self, stream: Stream) -> u64 {
        self.counters.delivered[stream_index(stream)].load(Ordering::Relaxed)
    }

    /// Dropped records of `stream` for `reason`.
    pub fn dropped_count(&self, stream: Stream, reason: DropReason) -> u64 {
        self.counters.dropped[stream_index(stream)][reason_index(reason)].load(Ordering::Relaxed)
    }

    /// Successful requests left out by sampling.
    pub fn sampled_out(&self) -> u64 {
        self.counters.sampled_out.load(Ordering::Relaxed)
    }

    /// Requests refused because they could not be audited.
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    fn dropped(&self, stream: Stream, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.counters.dropped[stream_index(stream)][reason_index(reason)]
            .fetch_add(n, Ordering::Relaxed);
        let now = Instant::now();
        let mut logs = lock(&self.drop_log);
        let log = &mut logs[reason_index(reason)];
        log.unlogged += n;
        if log
            .last
            .is_none_or(|last| now.duration_since(last) >= DROP_LOG_INTERVAL)
        {
            tracing::warn!(
                reason = reason.label(),
                dropped = log.unlogged,
                "audit records dropped (counted in switchyard_audit_dropped_total)"
            );
            log.last = Some(now);
            log.unlogged = 0;
        }
    }

    /// Takes up to `batch_records_max` records off the queue.
    fn take_batch(&self) -> Vec<Outgoing> {
        let mut queue = lock(&self.queue);
        let n = queue.records.len().min(self.batch_records_max);
        let batch: Vec<Outgoing> = queue.records.drain(..n).collect();
        let bytes: usize = batch.iter().map(|r| r.payload.len() + r.key.len()).sum();
        queue.bytes = queue.bytes.saturating_sub(bytes);
        batch
    }

    /// Hands queued records to the sink in batches until `stop`; then flushes within
    /// [`FLUSH_TIMEOUT`] and counts what is left as `shutdown`.
    pub async fn run(&self, stop: CancellationToken) {
        let mut flush_until: Option<Instant> = None;
        loop {
            if flush_until.is_none() && stop.is_cancelled() {
                flush_until = Some(Instant::now() + FLUSH_TIMEOUT);
            }
            if flush_until.is_some_and(|until| Instant::now() >= until) {
                break;
            }
            let batch = self.take_batch();
            if batch.is_empty() {
                if flush_until.is_some() {
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = self.wake.notified() => {}
                }
                continue;
            }
            let streams: Vec<Stream> = batch.iter().map(|r| r.stream).collect();
            let delivery = self.sink.deliver(batch);
            tokio::pin!(delivery);
            let results = match flush_until {
                Some(until) => tokio::time::timeout_at(until, &mut delivery).await.ok(),
                None => tokio::select! {
                    results = &mut delivery => Some(results),
                    () = stop.cancelled() => {
                        let until = Instant::now() + FLUSH_TIMEOUT;
                        flush_until = Some(until);
                        tokio::time::timeout_at(until, &mut delivery).await.ok()
                    }
                },
            };
            self.count(&streams, results);
        }
        self.closed.store(true, Ordering::Release);
        let left = self.take_all();
        let mut by_stream = [0u64; 2];
        for record in &left {
            by_stream[stream_index(record.stream)] += 1;
        }
        for stream in STREAMS {
            self.dropped(
                stream,
                DropReason::Shutdown,
                by_stream[stream_index(stream)],
            );
        }
    }

    fn take_all(&self) -> Vec<Outgoing> {
        let mut queue = lock(&self.queue);
        queue.bytes = 0;
        queue.records.drain(..).collect()
    }

    /// Counts a batch's results; `None` (the flush ran out of time) counts every record as
    /// `shutdown`, and a record the sink gave no result for as `delivery_failed`.
    fn count(&self, streams: &[Stream], results: Option<Vec<Result<(), DropReason>>>) {
        let mut delivered = [0u64; 2];
        let mut dropped = [[0u64; 5]; 2];
        for (i, stream) in streams.iter().enumerate() {
            let result = match &results {
                None => Err(DropReason::Shutdown),
                Some(results) => results
                    .get(i)
                    .copied()
                    .unwrap_or(Err(DropReason::DeliveryFailed)),
            };
            match result {
                Ok(()) => delivered[stream_index(*stream)] += 1,
                Err(_) if planted::active(Bug::AuditDropUncounted) => {}
                Err(reason) => dropped[stream_index(*stream)][reason_index(reason)] += 1,
            }
        }
        for stream in STREAMS {
            let s = stream_index(stream);
            self.counters.delivered[s].fetch_add(delivered[s], Ordering::Relaxed);
            for reason in DropReason::ALL {
                self.dropped(stream, reason, dropped[s][reason_index(reason)]);
            }
        }
    }

    /// Writes the auditor's metrics in the Prometheus text format.
    pub fn encode_metrics(&self, out: &mut String) {
        let name = "switchyard_audit_records_total";
        header(
            out,
            name,
            "counter",
            "Audit records the sink delivered, by stream.",
        );
        for stream in STREAMS {
            let _ = writeln!(
                out,
                "{name}{{stream=\"{}\"}} {}",
                stream.label(),
                self.delivered(stream)
            );
        }
        let name = "switchyard_audit_dropped_total";
        header(
            out,
            name,
            "counter",
            "Audit records not delivered, by stream and reason (queue_full, unavailable, delivery_failed, too_large, shutdown).",
        );
        for stream in STREAMS {
            for reason in DropReason::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{stream=\"{}\",reason=\"{}\"}} {}",
                    stream.label(),
                    reason.label(),
                    self.dropped_count(stream, reason)
                );
            }
        }
        simple(
            out,
            "switchyard_audit_sampled_out_total",
            "counter",
            "Successful requests not recorded because of sampling (audit sample_successes).",
            self.sampled_out(),
        );
        simple(
            out,
            "switchyard_audit_queue_records",
            "gauge",
            "Audit records queued for the sink.",
            self.queued() as u64,
        );
        simple(
            out,
            "switchyard_audit_sink_available",
            "gauge",
            "1 while the audit sink says it can deliver.",
            u64::from(self.sink.available()),
        );
        simple(
            out,
            "switchyard_audit_refused_total",
            "counter",
            "Requests refused with audit_unavailable (services in required audit mode).",
            self.refused(),
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn simple(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests;
