//! The bus seam: an append-only, keyed, compacting log that every gateway reads in full.
//!
//! The trait is what the node needs of Kafka and nothing more: publish a keyed record, read
//! records from an offset, and know the high-water mark. Catch-up, readiness, retries and
//! merge live in [`crate::replication`], above the trait. [`MemoryBus`] is the embedded default
//! for a single gateway and for tests; `kafka::KafkaBus` (the `kafka` feature, on by default) is the production bus.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::sync::BoxFuture;

#[cfg(feature = "kafka")]
pub mod kafka;

/// One record read from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub key: String,
    pub payload: Bytes,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus rejected the record: {0}")]
    Rejected(String),
}

pub trait Bus: Send + Sync + 'static {
    /// Appends a record; resolves once the bus has acknowledged it, with its offset.
    fn publish(&self, key: String, payload: Bytes) -> BoxFuture<'_, Result<u64, BusError>>;

    /// The offset the next record will get: everything below it has been written.
    fn high_water_mark(&self) -> BoxFuture<'_, Result<u64, BusError>>;

    /// Up to `max` records with offsets at or above `from`, in offset order. Waits up to `wait`
    /// for one to arrive when there is none yet, then returns what it has (maybe nothing).
    /// Offsets may have gaps where compaction removed records.
    fn fetch(
        &self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BusError>>;
}

/// An in-process bus: a log in memory, compacted by key once it holds more than twice as
/// many records as keys (so renewals do not grow it without bound).
#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    inner: Arc<MemoryLog>,
}

#[derive(Debug, Default)]
struct MemoryLog {
    state: Mutex<LogState>,
    appended: Notify,
}

#[derive(Debug, Default)]
struct LogState {
    records: Vec<Record>,
    next_offset: u64,
    latest_by_key: BTreeMap<String, u64>,
}

/// Compaction is not worth it below this many records.
const COMPACT_RECORDS_MIN: usize = 1024;

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records the log holds now (after compaction).
    pub fn len(&self) -> usize {
        self.inner.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record the log holds now, in offset order (for checkers and tests).
    pub fn snapshot(&self) -> Vec<Record> {
        self.inner.lock().records.clone()
    }
}

impl MemoryLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        // A poisoned lock means a panic while appending; the log itself is still consistent
        // (each append is a single push), so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LogState {
    fn append(&mut self, key: String, payload: Bytes) -> u64 {
        let offset = self.next_offset;
        self.next_offset += 1;
        self.latest_by_key.insert(key.clone(), offset);
        self.records.push(Record {
            offset,
            key,
            payload,
        });
        if self.records.len() > COMPACT_RECORDS_MIN.max(2 * self.latest_by_key.len()) {
            let latest = &self.latest_by_key;
            self.records
                .retain(|r| latest.get(&r.key) == Some(&r.offset));
        }
        offset
    }

    fn read(&self, from: u64, max: usize) -> Vec<Record> {
        let start = self.records.partition_point(|r| r.offset < from);
        self.records[start..].iter().take(max).cloned().collect()
    }
}

impl Bus for MemoryBus {
    fn publish(&self, key: String, payload: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        let offset = self.inner.lock().append(key, payload);
        self.inner.appended.notify_waiters();
        Box::pin(async move { Ok(offset) })
    }

    fn high_water_mark(&self) -> BoxFuture<'_, Result<u64, BusError>> {
        let hwm = self.inner.lock().next_offset;
        Box::pin(async move { Ok(hwm) })
    }

    fn fetch(
        &self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                // Register interest before looking, so an append between the look and the
                // wait is not missed.
                let appended = self.inner.appended.notified();
                let records = self.inner.lock().read(from, max);
                if !records.is_empty() {
                    return Ok(records);
                }
                if tokio::time::timeout_at(deadline, appended).await.is_err() {
                    return Ok(Vec::new());
                }
            }
        })
    }
}

/// A bus that can be switched off: while closed, every call fails as an unreachable broker
/// would. For tests and fault drills; it forwards to `inner` otherwise.
#[derive(Debug, Clone)]
pub struct GatedBus<B> {
    inner: B,
    closed: Arc<AtomicBool>,
}

impl<B: Bus> GatedBus<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_closed(&self, closed: bool) {
        self.closed.store(closed, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(BusError::Unavailable("the bus is switched off".into()))
        } else {
            Ok(())
        }
    }
}

impl<B: Bus> Bus for GatedBus<B> {
    fn publish(&self, key: String, payload: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        match self.check() {
            Ok(()) => self.inner.publish(key, payload),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn high_water_mark(&self) -> BoxFuture<'_, Result<u64, BusError>> {
        match self.check() {
            Ok(()) => self.inner.high_water_mark(),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn fetch(
        &self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        match self.check() {
            Ok(()) => self.inner.fetch(from, max, wait),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_from_an_offset_and_waits_for_new_records() {
        let bus = MemoryBus::new();
        assert_eq!(bus.high_water_mark().await.unwrap(), 0);
        bus.publish("a".into(), Bytes::from_static(b"1"))
            .await
            .unwrap();
        bus.publish("b".into(), Bytes::from_static(b"2"))
            .await
            .unwrap();
        assert_eq!(bus.high_water_mark().await.unwrap(), 2);
        let got = bus.fetch(1, 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, "b");

        let reader = bus.clone();
        let waiting =
            tokio::spawn(async move { reader.fetch(2, 10, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        bus.publish("c".into(), Bytes::from_static(b"3"))
            .await
            .unwrap();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got[0].offset, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_fetch_returns_after_the_wait() {
        let bus = MemoryBus::new();
        let got = bus.fetch(0, 10, Duration::from_millis(50)).await.unwrap();
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn compaction_keeps_the_latest_record_of_each_key() {
        let bus = MemoryBus::new();
        for i in 0..3000u32 {
            let key = format!("k{}", i % 10);
            bus.publish(key, Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .unwrap();
        }
        assert!(
            bus.len() <= COMPACT_RECORDS_MIN + 1,
            "log holds {}",
            bus.len()
        );
        assert_eq!(bus.high_water_mark().await.unwrap(), 3000);
        let all = bus.fetch(0, usize::MAX, Duration::ZERO).await.unwrap();
        let last_k3 = all.iter().rev().find(|r| r.key == "k3").unwrap();
        assert_eq!(last_k3.payload.as_ref(), 2993u32.to_be_bytes());
        assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
    }
}
