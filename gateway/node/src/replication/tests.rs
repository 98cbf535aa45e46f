//! Replication stops at once when asked, whatever its retry loop is waiting for.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Replication;
use crate::bus::{GatedBus, MemoryBus};
use crate::config::Config;
use crate::seams::SystemClock;
use crate::store::Store;
use crate::telemetry::Telemetry;

fn replication(bus: GatedBus<MemoryBus>) -> Arc<Replication> {
    let store = Arc::new(Store::new("gw-test".into(), Arc::new(SystemClock)));
    let telemetry = Arc::new(Telemetry::new(&Config::default(), "gw-test"));
    let config = Config::default();
    Arc::new(Replication::new(
        &config.registry,
        store,
        Arc::new(bus),
        telemetry,
    ))
}

/// Runs replication against `bus` for 30 s of (paused, auto-advancing) time, long enough for
/// its backoff to reach the 5 s bound, then stops it; returns how much time the stop took.
async fn stop_after_failures(bus: GatedBus<MemoryBus>) -> Duration {
    let replication = replication(bus);
    let stop = CancellationToken::new();
    let task = {
        let (replication, stop) = (replication.clone(), stop.clone());
        tokio::spawn(async move { replication.run(stop).await })
    };
    tokio::time::sleep(Duration::from_secs(30)).await;
    let asked = tokio::time::Instant::now();
    stop.cancel();
    task.await.unwrap();
    asked.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_bus_that_never_answers_its_high_water_mark_does_not_hold_shutdown() {
    let bus = GatedBus::new(MemoryBus::new());
    bus.set_closed(true);
    let took = stop_after_failures(bus).await;
    assert_eq!(took, Duration::ZERO, "the stop waited out a retry pause");
}

#[tokio::test(start_paused = true)]
async fn a_bus_whose_reads_fail_does_not_hold_shutdown() {
    let bus = GatedBus::new(MemoryBus::new());
    let replication = replication(bus.clone());
    let stop = CancellationToken::new();
    let task = {
        let (replication, stop) = (replication.clone(), stop.clone());
        tokio::spawn(async move { replication.run(stop).await })
    };
    // The bus is empty: ready at once, then reading; now every read fails.
    while !replication.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bus.set_closed(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let asked = tokio::time::Instant::now();
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        asked.elapsed(),
        Duration::ZERO,
        "the stop waited out a retry pause"
    );
}

/// A bus that hands out one record per fetch and, every other fetch, starts two records
/// before the offset asked for (a redelivery, as Kafka may after a rebalance or a retry). It
/// keeps every offset it was asked to read from.
struct Redelivering {
    inner: MemoryBus,
    fetches: std::sync::Mutex<Vec<u64>>,
}

impl crate::bus::Bus for Redelivering {
    fn publish(
        &self,
        key: String,
        payload: bytes::Bytes,
    ) -> crate::sync::BoxFuture<'_, Result<u64, crate::bus::BusError>> {
        self.inner.publish(key, payload)
    }

    fn delete(
        &self,
        key: String,
        deletes: bytes::Bytes,
    ) -> crate::sync::BoxFuture<'_, Result<u64, crate::bus::BusError>> {
        self.inner.delete(key, deletes)
    }

    fn high_water_mark(&self) -> crate::sync::BoxFuture<'_, Result<u64, crate::bus::BusError>> {
        self.inner.high_water_mark()
    }

    fn fetch(
        &self,
        from: u64,
        _max: usize,
        wait: Duration,
    ) -> crate::sync::BoxFuture<'_, Result<Vec<crate::bus::Record>, crate::bus::BusError>> {
        let start = {
            let mut fetches = crate::sync::lock(&self.fetches);
            fetches.push(from);
            if fetches.len() % 2 == 0 {
                from.saturating_sub(2)
            } else {
                from
            }
        };
        Box::pin(async move {
            // As a network bus does, let other tasks run between fetches: a reader that never
            // gets past the redelivered records would otherwise hold the test's thread.
            tokio::task::yield_now().await;
            self.inner.fetch(start, 1, wait).await
        })
    }
}

/// Replication over a bus of [`Redelivering`] 8 records, until its position reaches the end
/// or 100 rounds pass: the positions it reported after each round, and the offsets it asked
/// to read from.
async fn read_with_redeliveries() -> (Vec<u64>, Vec<u64>, Arc<Replication>) {
    use crate::bus::Bus as _;
    use crate::seams::Clock as _;
    use switchyard_core::event::{Event, EventKind};
    use switchyard_core::{InstanceKey, Stamp};

    let inner = MemoryBus::new();
    let now_ms = SystemClock.now_ms();
    for i in 0..RECORDS {
        let event = Event {
            kind: EventKind::Register,
            key: InstanceKey::new("s", format!("i-{i}")),
            addr: "http://h:1".into(),
            metadata: Default::default(),
            lease_ms: 1_000,
            stamp: Stamp::new(now_ms, 0, "gw-other"),
            origin_node: "gw-other".into(),
        };
        inner
            .publish(event.bus_key(), bytes::Bytes::from(event.encode()))
            .await
            .unwrap();
    }
    let bus = Arc::new(Redelivering {
        inner,
        fetches: Default::default(),
    });
    let store = Arc::new(Store::new("gw-test".into(), Arc::new(SystemClock)));
    let config = Config::default();
    let telemetry = Arc::new(Telemetry::new(&config, "gw-test"));
    let replication = Arc::new(Replication::new(
        &config.registry,
        store,
        bus.clone(),
        telemetry,
    ));
    let stop = CancellationToken::new();
    let task = {
        let (replication, stop) = (replication.clone(), stop.clone());
        tokio::spawn(async move { replication.run(stop).await })
    };
    // Bounded: every fetch answers at once while records remain, so 100 rounds are plenty.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.push(replication.position());
        if replication.position() >= RECORDS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    task.await.unwrap();
    let fetches = crate::sync::lock(&bus.fetches).clone();
    (seen, fetches, replication)
}

const RECORDS: u64 = 8;

#[tokio::test(start_paused = true)]
async fn a_redelivered_record_never_moves_the_position_back() {
    let (seen, fetches, replication) = read_with_redeliveries().await;
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the reported position went back: {seen:?}"
    );
    assert!(
        fetches.windows(2).all(|w| w[0] <= w[1]),
        "replication asked for an offset below one it had passed: {fetches:?}"
    );
    assert_eq!(replication.position(), RECORDS, "fetches: {fetches:?}");
    assert!(replication.caught_up());
}

/// The test above fails without the fix: with the old assignment planted, the position goes
/// back (and replication never gets past the redelivered records).
#[cfg(feature = "planted-bugs")]
#[tokio::test(start_paused = true)]
async fn without_the_fix_the_position_goes_back() {
    use switchyard_core::planted::{self, Bug};
    planted::plant(Some(Bug::PositionBack));
    let (seen, fetches, _) = read_with_redeliveries().await;
    planted::plant(None);
    assert!(
        seen.windows(2).any(|w| w[0] > w[1]) || fetches.windows(2).any(|w| w[0] > w[1]),
        "the planted bug should move the position back: {seen:?} {fetches:?}"
    );
}
