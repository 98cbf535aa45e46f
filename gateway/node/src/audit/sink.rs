//! The audit sink seam: what the auditor needs of the place records go, and nothing more.
//!
//! The auditor above it owns the bounded queue, sampling, redaction and the drop counters;
//! a sink delivers batches of encoded records and says whether it can deliver now.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::sync::BoxFuture;

/// Which audit topic a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Forwarded requests; keyed by request id.
    Requests,
    /// Registry changes; keyed by `service/instance_id`.
    Registry,
}

impl Stream {
    pub fn label(self) -> &'static str {
        match self {
            Stream::Requests => "requests",
            Stream::Registry => "registry",
        }
    }
}

/// One encoded `switchyard.audit.v1.AuditRecord` on its way to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub stream: Stream,
    pub key: String,
    pub payload: Bytes,
}

/// Why a record was not delivered: the label of `switchyard_audit_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The auditor's queue was full.
    QueueFull,
    /// The sink could not take the record (no broker reachable, topic missing).
    Unavailable,
    /// The sink took the record and could not deliver it within its delivery timeout.
    DeliveryFailed,
    /// The record was larger than the sink accepts.
    TooLarge,
    /// The gateway stopped before the record was delivered.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::Unavailable,
        DropReason::DeliveryFailed,
        DropReason::TooLarge,
        DropReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Unavailable => "unavailable",
            DropReason::DeliveryFailed => "delivery_failed",
            DropReason::TooLarge => "too_large",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Where audit records go.
pub trait AuditSink: Send + Sync + 'static {
    /// Delivers a batch: resolves once every record is acknowledged or has failed, with one
    /// result per record, in the batch's order. The sink bounds the wait (its delivery
    /// timeout); a record not acknowledged by then is `Err(DeliveryFailed)`.
    fn deliver(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), DropReason>>>;

    /// Whether the sink can deliver now, as far as it knows: `false` from a failure it saw
    /// until it has seen the way clear again. Services in `required` audit mode are refused
    /// while it is `false`.
    fn available(&self) -> bool;

    /// The sink's own background work (reconnection probes), until `stop`.
    fn run(&self, stop: CancellationToken) -> BoxFuture<'_, ()> {
        Box::pin(async move { stop.cancelled().await })
    }
}

/// A sink in memory, for tests and the simulation: keeps the last `capacity` records it was
/// given, and can be switched unavailable (every delivery then fails with `Unavailable`).
#[derive(Debug, Clone)]
pub struct MemorySink {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Debug)]
struct MemoryState {
    records: std::collections::VecDeque<Outgoing>,
    capacity: usize,
    available: bool,
}

impl MemorySink {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemoryState {
                records: std::collections::VecDeque::new(),
                capacity,
                available: true,
            })),
        }
    }

    /// The records delivered so far (the last `capacity` of them), oldest first.
    pub fn records(&self) -> Vec<Outgoing> {
        crate::sync::lock(&self.inner)
            .records
            .iter()
            .cloned()
            .collect()
    }

    /// Makes every later delivery succeed (`true`) or fail as `Unavailable` (`false`).
    pub fn set_available(&self, available: bool) {
        crate::sync::lock(&self.inner).available = available;
    }
}

impl AuditSink for MemorySink {
    fn deliver(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), DropReason>>> {
        let mut state = crate::sync::lock(&self.inner);
        let results = if state.available {
            let n = batch.len();
            for record in batch {
                if state.records.len() == state.capacity {
                    state.records.pop_front();
                }
                state.records.push_back(record);
            }
            vec![Ok(()); n]
        } else {
            vec![Err(DropReason::Unavailable); batch.len()]
        };
        Box::pin(async move { results })
    }

    fn available(&self) -> bool {
        crate::sync::lock(&self.inner).available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str) -> Outgoing {
        Outgoing {
            stream: Stream::Requests,
            key: key.to_owned(),
            payload: Bytes::from_static(b"x"),
        }
    }

    #[tokio::test]
    async fn the_memory_sink_keeps_its_last_records_and_fails_when_unavailable() {
        let sink = MemorySink::new(2);
        let results = sink
            .deliver(vec![record("a"), record("b"), record("c")])
            .await;
        assert_eq!(results, vec![Ok(()); 3]);
        let keys: Vec<_> = sink.records().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, ["b", "c"]);
        sink.set_available(false);
        assert!(!sink.available());
        let results = sink.deliver(vec![record("d")]).await;
        assert_eq!(results, vec![Err(DropReason::Unavailable)]);
        assert_eq!(sink.records().len(), 2);
    }
}
