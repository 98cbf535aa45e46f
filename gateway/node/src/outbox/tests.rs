use std::sync::Arc;

use switchyard_core::Stamp;
use switchyard_core::event::EventKind;

use super::*;
use crate::bus::{GatedBus, MemoryBus};

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
