//! The bus seam: an append-only, keyed, compacting log that every gateway reads in full.
//!
//! The trait is what the node needs of Kafka and nothing more: publish a keyed record or a
//! delete marker, read records from an offset, and know the high-water mark. Catch-up, readiness, retries and
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
    /// A registry event; for a delete marker, the encoded entry the marker deletes.
    pub payload: Bytes,
    /// A delete marker: compaction keeps it for the topic's delete retention, then drops the
    /// key altogether (on Kafka, a record whose value is null; `payload` travels in a header).
    pub delete: bool,
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

    /// Appends a delete marker for `key`, carrying `deletes` (the encoded entry it deletes);
    /// resolves once the bus has acknowledged it, with its offset.
    fn delete(&self, key: String, deletes: Bytes) -> BoxFuture<'_, Result<u64, BusError>>;

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
/// many records as keys (so renewals do not grow it without bound). Like Kafka's log cleaner,
/// compaction keeps the latest record of each key, and drops a key whose latest record is a
/// delete marker older than the delete retention.
#[derive(Debug, Clone)]
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
    /// When each delete marker still in the log was appended, by offset.
    markers: BTreeMap<u64, tokio::time::Instant>,
    /// How long compaction keeps a delete marker (Kafka's `delete.retention.ms`).
    delete_retention: Duration,
}

/// How long the in-memory bus keeps delete markers unless told otherwise: Kafka's default
/// `delete.retention.ms`.
pub const MEMORY_DELETE_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Compaction is not worth it below this many records.
const COMPACT_RECORDS_MIN: usize = 1024;

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::with_delete_retention(MEMORY_DELETE_RETENTION)
    }

    /// A bus whose compaction drops delete markers once they are `retention` old.
    pub fn with_delete_retention(retention: Duration) -> Self {
        Self {
            inner: Arc::new(MemoryLog {
                state: Mutex::new(LogState {
                    delete_retention: retention,
                    ..LogState::default()
                }),
                appended: Notify::new(),
            }),
        }
    }

    /// How many distinct keys the log holds now (after compaction; a key whose latest record
    /// is a delete marker counts until the marker is dropped).
    pub fn keys(&self) -> usize {
        self.inner.lock().latest_by_key.len()
    }

    /// How many records the log holds now (after compaction).
    pub fn len(&self) -> usize {
        self.inner.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The offset the next record will get: the log's high water mark, without a future.
    /// The log changes only by appends (compaction runs within them), so this names what it
    /// holds.
    pub fn next_offset(&self) -> u64 {
        self.inner.lock().next_offset
    }

    /// Every record the log holds now, in offset order (for checkers and tests).
    pub fn snapshot(&self) -> Vec<Record> {
        self.inner.lock().records.clone()
    }

    /// The records the log holds now from offset `from` on, in offset order (for checkers
    /// that read the log as it grows, without copying what they have read).
    pub fn records_from(&self, from: u64) -> Vec<Record> {
        self.inner.lock().read(from, usize::MAX)
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
    fn append(&mut self, key: String, payload: Bytes, delete: bool) -> u64 {
        let offset = self.next_offset;
        self.next_offset += 1;
        self.latest_by_key.insert(key.clone(), offset);
        if delete {
            self.markers.insert(offset, tokio::time::Instant::now());
        }
        self.records.push(Record {
            offset,
            key,
            payload,
            delete,
        });
        if self.records.len() > COMPACT_RECORDS_MIN.max(2 * self.latest_by_key.len()) {
            self.compact();
        }
        offset
    }

    /// Keeps the latest record of each key, and drops the keys whose latest record is a
    /// delete marker past its retention.
    fn compact(&mut self) {
        let retention = self.delete_retention;
        // Markers are appended in offset order, so the ones past their retention come first.
        let first_kept = self
            .markers
            .iter()
            .find(|(_, at)| at.elapsed() < retention)
            .map(|(offset, _)| *offset);
        let kept = match first_kept {
            Some(offset) => self.markers.split_off(&offset),
            None => BTreeMap::new(),
        };
        let expired = std::mem::replace(&mut self.markers, kept);
        self.latest_by_key
            .retain(|_, latest| !expired.contains_key(latest));
        let latest = &self.latest_by_key;
        self.records
            .retain(|r| latest.get(&r.key) == Some(&r.offset));
        let kept = &self.records;
        self.markers
            .retain(|offset, _| kept.binary_search_by_key(offset, |r| r.offset).is_ok());
    }

    fn read(&self, from: u64, max: usize) -> Vec<Record> {
        let start = self.records.partition_point(|r| r.offset < from);
        self.records[start..].iter().take(max).cloned().collect()
    }
}

impl Bus for MemoryBus {
    fn publish(&self, key: String, payload: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        let offset = self.inner.lock().append(key, payload, false);
        self.inner.appended.notify_waiters();
        Box::pin(async move { Ok(offset) })
    }

    fn delete(&self, key: String, deletes: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        let offset = self.inner.lock().append(key, deletes, true);
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

    fn delete(&self, key: String, deletes: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        match self.check() {
            Ok(()) => self.inner.delete(key, deletes),
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

    #[tokio::test(start_paused = true)]
    async fn compaction_drops_a_deleted_key_once_its_marker_is_past_retention() {
        let bus = MemoryBus::with_delete_retention(Duration::from_secs(60));
        bus.publish("gone".into(), Bytes::from_static(b"e"))
            .await
            .unwrap();
        bus.delete("gone".into(), Bytes::from_static(b"m"))
            .await
            .unwrap();
        let churn = |n: u32| {
            let bus = bus.clone();
            async move {
                for i in 0..n {
                    bus.publish(format!("k{}", i % 10), Bytes::new())
                        .await
                        .unwrap();
                }
            }
        };
        churn(3000).await;
        // Within the retention the marker stays, and it is what a reader of the key sees last.
        let all = bus.fetch(0, usize::MAX, Duration::ZERO).await.unwrap();
        let gone: Vec<_> = all.iter().filter(|r| r.key == "gone").collect();
        assert_eq!(gone.len(), 1);
        assert!(gone[0].delete);
        assert_eq!(gone[0].payload.as_ref(), b"m");
        assert_eq!(bus.keys(), 11);
        tokio::time::advance(Duration::from_secs(61)).await;
        churn(3000).await;
        let all = bus.fetch(0, usize::MAX, Duration::ZERO).await.unwrap();
        assert!(all.iter().all(|r| r.key != "gone"));
        assert_eq!(bus.keys(), 10);
    }
}
