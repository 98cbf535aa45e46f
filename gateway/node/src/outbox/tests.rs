use std::sync::Arc;

use switchyard_core::Stamp;
use switchyard_core::event::EventKind;

use super::*;
use crate::bus::{GatedBus, MemoryBus};
use crate::sync::lock;

fn event(instance: &str, ms: u64) -> Event {
    Event {
        kind: EventKind::Register,
        key: InstanceKey::new("s", instance),
        addr: "http://h:1".into(),
        metadata: Default::default(),
        lease_ms: 1_000,
        stamp: Stamp::new(ms, 0, "n"),
        origin_node: "n".into(),
    }
}

#[tokio::test]
async fn publishes_at_once_when_the_bus_is_up() {
    let bus = GatedBus::new(MemoryBus::new());
    let outbox = Arc::new(Outbox::new(10));
    let stop = CancellationToken::new();
    let runner = {
        let (outbox, bus, stop) = (outbox.clone(), bus.clone(), stop.clone());
        tokio::spawn(async move { outbox.run(&bus, stop).await })
    };
    let delivery = outbox
        .submit(event("a", 1), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(delivery, Delivery::Published);
    assert_eq!(bus.high_water_mark().await.unwrap(), 1);
    assert!(outbox.is_empty());
    stop.cancel();
    runner.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn holds_changes_while_the_bus_is_down_and_delivers_them_after() {
    let bus = GatedBus::new(MemoryBus::new());
    bus.set_closed(true);
    let outbox = Arc::new(Outbox::new(2));
    let stop = CancellationToken::new();
    let runner = {
        let (outbox, bus, stop) = (outbox.clone(), bus.clone(), stop.clone());
        tokio::spawn(async move { outbox.run(&bus, stop).await })
    };
    let wait = Duration::from_millis(100);
    assert_eq!(
        outbox.submit(event("a", 1), wait).await.unwrap(),
        Delivery::Queued
    );
    assert_eq!(
        outbox.submit(event("b", 2), wait).await.unwrap(),
        Delivery::Queued
    );
    // A newer change to a queued instance replaces it in place: no new slot needed.
    assert_eq!(
        outbox.submit(event("a", 3), wait).await.unwrap(),
        Delivery::Queued
    );
    assert_eq!(outbox.len(), 2);
    // A third instance exceeds the bound and is refused, not dropped silently.
    let refused = outbox.submit(event("c", 4), wait).await.unwrap_err();
    assert_eq!(refused.code(), "bus_unavailable");
    assert!(
        refused.to_string().contains("outbox_events_max"),
        "{refused}"
    );

    bus.set_closed(false);
    let delivered = outbox
        .submit(event("b", 5), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(delivered, Delivery::Published);
    let records = bus.fetch(0, 10, Duration::ZERO).await.unwrap();
    let events: Vec<Event> = records
        .iter()
        .map(|r| Event::decode(&r.payload).unwrap())
        .collect();
    let published: Vec<(String, u64)> = events
        .iter()
        .map(|e| (e.key.instance_id.clone(), e.stamp.physical_ms))
        .collect();
    assert_eq!(
        published,
        [("a".to_owned(), 3), ("b".to_owned(), 5)],
        "newest change per instance, in queue order"
    );
    assert!(outbox.is_empty());
    stop.cancel();
    runner.await.unwrap();
}

/// Everything logged while the guard lives, on this thread (the tests run on one).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0)).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn a_flush_publishes_what_is_queued_once_the_bus_is_back_before_the_deadline() {
    let bus = GatedBus::new(MemoryBus::new());
    bus.set_closed(true);
    let outbox = Outbox::new(10);
    let _queued = outbox.enqueue(event("a", 1)).unwrap();
    let opener = {
        let bus = bus.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            bus.set_closed(false);
        })
    };
    let lost = outbox
        .flush(&bus, Instant::now() + Duration::from_secs(5))
        .await;
    assert!(lost.is_empty(), "{lost:?}");
    assert!(outbox.is_empty());
    assert_eq!(bus.high_water_mark().await.unwrap(), 1);
    opener.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_flush_ends_at_its_deadline_and_names_what_it_could_not_publish() {
    let logs = Captured::default();
    let _guard = logs.install();
    let bus = GatedBus::new(MemoryBus::new());
    bus.set_closed(true);
    let outbox = Outbox::new(10);
    let mut tombstone = event("gone", 1);
    tombstone.kind = EventKind::Deregister;
    let _queued = outbox.enqueue(tombstone).unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3);
    // The outer timeout only turns a flush that ignores its deadline into a failure, not a hang.
    let lost = tokio::time::timeout(Duration::from_secs(60), outbox.flush(&bus, deadline))
        .await
        .expect("the flush outlived its deadline by a minute");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "the flush ended at its deadline, retries included"
    );
    assert_eq!(lost, [("s/gone".to_owned(), EventKind::Deregister)]);
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("s/gone") && text.contains("Deregister"),
        "{text}"
    );
    // Still queued: what a stopped node held is visible in its status.
    assert_eq!(outbox.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn callers_that_give_up_leave_nothing_behind_and_those_waiting_share_one_publication() {
    let bus = GatedBus::new(MemoryBus::new());
    bus.set_closed(true);
    let outbox = Arc::new(Outbox::new(10));
    let key = InstanceKey::new("s", "a");
    // A client retrying while the bus is down: each attempt waits, gives up, and tries again.
    for ms in 1..=1_000 {
        let delivery = outbox
            .submit(event("a", ms), Duration::from_millis(1))
            .await
            .unwrap();
        assert_eq!(delivery, Delivery::Queued);
    }
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        outbox.waiters(&key),
        0,
        "every caller that gave up left a waiter behind"
    );
    // Three callers still waiting: one publication wakes them all.
    let waiting: Vec<Ticket> = (0..3)
        .map(|i| outbox.enqueue(event("a", 2_000 + i)).unwrap())
        .collect();
    assert_eq!(outbox.waiters(&key), 3);
    let stop = CancellationToken::new();
    let runner = {
        let (outbox, bus, stop) = (outbox.clone(), bus.clone(), stop.clone());
        tokio::spawn(async move { outbox.run(&bus, stop).await })
    };
    bus.set_closed(false);
    for ticket in waiting {
        assert_eq!(
            ticket.wait(Duration::from_secs(10)).await,
            Delivery::Published
        );
    }
    assert_eq!(
        bus.high_water_mark().await.unwrap(),
        1,
        "one event, the newest"
    );
    stop.cancel();
    runner.await.unwrap();
}
