//! Replication stops at once when asked, whatever its retry loop is waiting for; it applies
//! records in bounded runs, in topic order, and fetches more at once while catching up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::event::{Event, EventKind};
use switchyard_core::{InstanceKey, Registry, Stamp};
use tokio_util::sync::CancellationToken;

use super::{
    APPLY_RUN_MAX, CATCH_UP_FETCH_RECORDS_MAX, DECODE_AHEAD_MIN, FETCH_RECORDS_MAX, Replication,
    Runs,
};
use crate::bus::{Bus, BusError, GatedBus, MemoryBus, Record};
use crate::config::Config;
use crate::seams::{Clock, SystemClock};
use crate::store::Store;
use crate::sync::BoxFuture;
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

/// A registration of `service/id` stamped at `ms` by `gw-a`, as a bus record at `offset`.
fn registration(offset: u64, id: &str, ms: u64) -> (Event, Record) {
    let event = Event {
        kind: EventKind::Register,
        key: InstanceKey::new("orders", id),
        addr: "http://127.0.0.1:7001".into(),
        metadata: Default::default(),
        lease_ms: 1_000,
        stamp: Stamp::new(ms, 0, "gw-a"),
        origin_node: "gw-a".into(),
    };
    let record = Record {
        offset,
        key: event.bus_key(),
        payload: Bytes::from(event.encode()),
        delete: false,
    };
    (event, record)
}

/// A delete marker for the entry `event` produces.
fn marker(offset: u64, event: &Event) -> Record {
    Record {
        offset,
        key: event.bus_key(),
        payload: Bytes::from(event.encode()),
        delete: true,
    }
}

#[test]
fn records_are_applied_in_runs_of_at_most_the_bound() {
    let replication = replication(GatedBus::new(MemoryBus::new()));
    let now = SystemClock.now_ms();
    let n = 3 * APPLY_RUN_MAX + 10;
    // Stamped just behind the wall clock, all admissible.
    let (events, records): (Vec<_>, Vec<_>) = (0..n)
        .map(|i| registration(i as u64, &format!("i-{i}"), now - 1_000 + i as u64))
        .unzip();
    let runs = replication.apply_records(&records);
    assert_eq!(
        runs,
        Runs {
            runs: 4,
            events: n,
            own: 0,
            changed: n
        }
    );
    // The metrics count what the call did.
    let metrics = replication.telemetry.metrics();
    assert_eq!(metrics.runs_and_changes(), (4, n as u64));
    assert_eq!(metrics.events_applied_by_origin(), (0, n as u64));
    let mut reference = Registry::new();
    for e in &events {
        reference.apply_event(e);
    }
    let store = &replication.store;
    assert_eq!(store.registry().digest(), reference.digest());
    assert_eq!(*store.registry(), reference);
    assert_eq!(replication.events_applied(), n as u64);
    // The clock has observed the greatest stamp of every run: a local stamp is greater.
    assert!(store.tick() > events.last().unwrap().stamp);
    // Read again (a redelivery), nothing changes.
    let again = replication.apply_records(&records);
    assert_eq!((again.events, again.changed), (n, 0));
    assert_eq!(
        metrics.runs_and_changes(),
        (8, n as u64),
        "a redelivery changes nothing"
    );
    assert_eq!(metrics.events_applied_by_origin(), (0, 2 * n as u64));
}

#[test]
fn a_delete_marker_is_applied_in_its_place_among_the_events() {
    // Stamped two hours ago, so a marker for it is not early (leases of at most an hour).
    let old = SystemClock.now_ms() - 2 * 3_600_000;
    let (a, reg_a) = registration(0, "a", old);
    let (_, reg_b) = registration(2, "b", old);
    // Registration, its marker, another registration: the marker removes the first.
    let first = replication(GatedBus::new(MemoryBus::new()));
    let runs = first.apply_records(&[reg_a.clone(), marker(1, &a), reg_b.clone()]);
    assert_eq!(runs.runs, 2, "the marker ends a run");
    assert!(first.store.registry().get(&a.key).is_none());
    assert_eq!(first.store.registry().len(), 1);
    // The marker first: it finds nothing to remove, and the registration after it stays.
    let second = replication(GatedBus::new(MemoryBus::new()));
    second.apply_records(&[marker(0, &a), reg_a, reg_b]);
    assert_eq!(second.store.registry().len(), 2);
}

/// A batch large enough to be decoded ahead on a second thread gives what the same records
/// give read in batches too small for it: the same registry, the same counts of applied and
/// quarantined records, whatever lies among them (bad payloads, keys that are not their
/// event's, leases out of bounds, delete markers, several changes to one key).
#[test]
fn a_batch_decoded_ahead_is_applied_as_small_batches_are() {
    let now = SystemClock.now_ms();
    let old = now - 2 * 3_600_000;
    let n = 3 * DECODE_AHEAD_MIN + 7;
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let offset = i as u64;
            // Forty keys, each changed many times, so later records replace earlier ones.
            let id = format!("i-{}", i % 40);
            match i % 11 {
                0 => Record {
                    offset,
                    key: format!("orders/{id}"),
                    payload: Bytes::from_static(b"\xff not an event"),
                    delete: false,
                },
                1 => Record {
                    key: "orders/someone-else".into(),
                    ..registration(offset, &id, now - 500).1
                },
                2 => {
                    let (mut event, _) = registration(offset, &id, now - 400);
                    event.lease_ms = u64::MAX;
                    Record {
                        offset,
                        key: event.bus_key(),
                        payload: Bytes::from(event.encode()),
                        delete: false,
                    }
                }
                3 => marker(offset, &registration(offset, &id, old).0),
                _ => registration(offset, &id, now - 5_000 + (i as u64 % 977)).1,
            }
        })
        .collect();
    let whole = replication(GatedBus::new(MemoryBus::new()));
    let at_once = whole.apply_records(&records);
    let pieces = replication(GatedBus::new(MemoryBus::new()));
    let (mut events, mut changed) = (0, 0);
    for chunk in records.chunks(DECODE_AHEAD_MIN / 10) {
        let runs = pieces.apply_records(chunk);
        events += runs.events;
        changed += runs.changed;
    }
    assert_eq!((at_once.events, at_once.changed), (events, changed));
    assert_eq!(*whole.store.registry(), *pieces.store.registry());
    assert_eq!(whole.events_applied(), pieces.events_applied());
    assert_eq!(whole.events_rejected(), pieces.events_rejected());
    // Three kinds of bad record, each 1 in 11, were quarantined; the rest applied or were
    // markers.
    let bad = (0..n).filter(|i| matches!(i % 11, 0..=2)).count() as u64;
    assert_eq!(whole.events_rejected(), bad);
    let markers = (0..n).filter(|i| i % 11 == 3).count() as u64;
    assert_eq!(whole.events_applied(), n as u64 - bad - markers);
    assert_eq!(whole.store.registry().len(), 40);
}

/// A [`MemoryBus`] that keeps every fetch it was asked for (the offset and the number of
/// records) and lets a test rewrite where each fetch starts and how much it reads.
struct Watched {
    inner: MemoryBus,
    fetches: Mutex<Vec<(u64, usize)>>,
    /// Given the fetch's number (from 1), the offset asked for and the records asked for:
    /// the offset and records the inner bus is asked for.
    rewrite: fn(usize, u64, usize) -> (u64, usize),
}

impl Watched {
    fn new(inner: MemoryBus, rewrite: fn(usize, u64, usize) -> (u64, usize)) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fetches: Mutex::default(),
            rewrite,
        })
    }

    fn fetches(&self) -> Vec<(u64, usize)> {
        crate::sync::lock(&self.fetches).clone()
    }
}

impl Bus for Watched {
    fn publish(&self, key: String, payload: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        self.inner.publish(key, payload)
    }

    fn delete(&self, key: String, deletes: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        self.inner.delete(key, deletes)
    }

    fn high_water_mark(&self) -> BoxFuture<'_, Result<u64, BusError>> {
        self.inner.high_water_mark()
    }

    fn fetch(
        &self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        let (start, records) = {
            let mut fetches = crate::sync::lock(&self.fetches);
            fetches.push((from, max));
            (self.rewrite)(fetches.len(), from, max)
        };
        Box::pin(async move {
            // As a network bus does, let other tasks run between fetches: a reader that never
            // gets past redelivered records would otherwise hold the test's thread.
            tokio::task::yield_now().await;
            self.inner.fetch(start, records, wait).await
        })
    }
}

#[tokio::test(start_paused = true)]
async fn catch_up_fetches_more_records_at_once_within_its_bound() {
    let inner = MemoryBus::new();
    let now = SystemClock.now_ms();
    let n = CATCH_UP_FETCH_RECORDS_MAX + 1;
    for i in 0..n {
        let (_, record) = registration(0, &format!("i-{i}"), now - 1_000);
        inner.publish(record.key, record.payload).await.unwrap();
    }
    let bus = Watched::new(inner, |_, from, max| (from, max));
    let store = Arc::new(Store::new("gw-test".into(), Arc::new(SystemClock)));
    let config = Config::default();
    let telemetry = Arc::new(Telemetry::new(&config, "gw-test"));
    let replication = Arc::new(Replication::new(
        &config.registry,
        store.clone(),
        bus.clone(),
        telemetry,
    ));
    let stop = CancellationToken::new();
    let task = {
        let (replication, stop) = (replication.clone(), stop.clone());
        tokio::spawn(async move { replication.run(stop).await })
    };
    // Caught up after two fetches; the next one waits on the empty tail of the log. Bounded
    // in (paused) time, so a replication that stops fetching fails here instead of hanging.
    let third_fetch = tokio::time::timeout(Duration::from_secs(60), async {
        while bus.fetches().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert!(third_fetch.is_ok(), "fetches: {:?}", bus.fetches());
    assert!(replication.is_ready());
    assert_eq!(store.registry().len(), n);
    let asked: Vec<usize> = bus.fetches().iter().map(|&(_, max)| max).collect();
    assert_eq!(
        asked[..3],
        [
            CATCH_UP_FETCH_RECORDS_MAX,
            CATCH_UP_FETCH_RECORDS_MAX,
            FETCH_RECORDS_MAX
        ]
    );
}

/// Every other fetch starts two records before the offset asked for (a redelivery, as Kafka
/// may after a rebalance or a retry), and every fetch hands out one record.
fn redeliver(fetch: usize, from: u64, _max: usize) -> (u64, usize) {
    if fetch.is_multiple_of(2) {
        (from.saturating_sub(2), 1)
    } else {
        (from, 1)
    }
}

/// Replication over a bus of 8 records that [`redeliver`]s, until its position reaches the end
/// or 1,000 rounds pass: the positions it reported after each round, and the offsets it asked
/// to read from.
async fn read_with_redeliveries() -> (Vec<u64>, Vec<u64>, Arc<Replication>) {
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
    let bus = Watched::new(inner, redeliver);
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
    // Bounded in rounds, not in (paused) time: a replication stuck among redelivered records
    // never lets the runtime idle, so paused time would never advance to end a sleep. Each
    // round yields once; every fetch answers at once while records remain, so 1,000 rounds
    // are plenty for 8 records.
    let mut seen = Vec::new();
    for _ in 0..1_000 {
        seen.push(replication.position());
        if replication.position() >= RECORDS {
            break;
        }
        tokio::task::yield_now().await;
    }
    stop.cancel();
    task.await.unwrap();
    let fetches = bus.fetches().iter().map(|&(from, _)| from).collect();
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
    assert_eq!(
        replication.events_applied(),
        RECORDS,
        "a redelivered record below the position was applied again (fetches: {fetches:?})"
    );
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
