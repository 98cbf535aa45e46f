//! Hostile bus records: a record stamped far in the future, at the top of the stamp range, with
//! a lease beyond the longest, that does not decode or whose key lies, is quarantined. It moves
//! no clock, changes no entry, and is counted in `/metrics`; later local changes are stamped
//! near the wall clock and win as usual.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use switchyard::bus::{Bus, MemoryBus};
use switchyard::seams::{Clock, SystemClock};
use switchyard_core::event::{Event, EventKind};
use switchyard_core::{InstanceKey, Stamp};

use crate::harness::{Gateway, Instance, eventually, http};
use crate::telemetry::{sample, scrape};

const DAY_MS: u64 = 24 * 3_600_000;
/// Sorts after any gateway's id, so a stamp from it wins a tie on time.
const HOSTILE_NODE: &str = "~hostile";

fn event(
    kind: EventKind,
    instance_id: &str,
    physical_ms: u64,
    logical: u32,
    lease_ms: u64,
) -> Event {
    let alive = matches!(kind, EventKind::Register | EventKind::Renew);
    Event {
        kind,
        key: InstanceKey::new("orders", instance_id),
        addr: if alive {
            "http://127.0.0.1:9".into()
        } else {
            String::new()
        },
        metadata: Default::default(),
        lease_ms: if alive { lease_ms } else { 0 },
        stamp: Stamp::new(physical_ms, logical, HOSTILE_NODE),
        origin_node: HOSTILE_NODE.into(),
    }
}

async fn publish(bus: &MemoryBus, event: &Event) {
    bus.publish(event.bus_key(), Bytes::from(event.encode()))
        .await
        .unwrap();
}

fn quarantined(metrics: &str, reason: &str) -> f64 {
    let series = format!("switchyard_bus_events_quarantined_total{{reason=\"{reason}\"}}");
    sample(metrics, &series).unwrap_or_else(|| panic!("no {series}:\n{metrics}"))
}

/// The stamp of the latest record on the bus for `orders/{instance_id}` written by `node`.
fn stamp_on_bus(bus: &MemoryBus, instance_id: &str, node: &str) -> Stamp {
    bus.snapshot()
        .iter()
        .rev()
        .filter(|r| r.key == format!("orders/{instance_id}"))
        .map(|r| Event::decode(&r.payload).unwrap())
        .find(|e| e.origin_node == node)
        .unwrap_or_else(|| panic!("no record of orders/{instance_id} from {node}"))
        .stamp
}

#[tokio::test]
async fn records_stamped_far_ahead_are_quarantined_and_move_no_clock() {
    let bus = MemoryBus::new();
    let now = SystemClock.now_ms();
    // Already on the topic when the gateway starts, as after a restart: read at catch-up.
    publish(
        &bus,
        &event(EventKind::Register, "ahead", now + 10 * DAY_MS, 0, 10_000),
    )
    .await;
    // A removal at the top of the range would bar `o-1` for ever, and tick the clock into
    // overflow if observed.
    publish(
        &bus,
        &event(EventKind::Deregister, "o-1", u64::MAX, u32::MAX, 0),
    )
    .await;
    bus.publish("orders/junk".into(), Bytes::from_static(&[0xff, 0xff]))
        .await
        .unwrap();
    let liar = event(EventKind::Register, "liar", now, 0, 10_000);
    bus.publish("orders/other".into(), Bytes::from(liar.encode()))
        .await
        .unwrap();

    let gw = Gateway::start_on(bus.clone(), |c| c.node_id = "gw-a".into()).await;
    let status = gw.status().await;
    assert_eq!(status["events_rejected"], 4, "{status}");
    assert_eq!(status["events_applied"], 0, "{status}");
    assert_eq!(status["registry_entries"], 0, "{status}");

    // And one read while running.
    publish(
        &bus,
        &event(EventKind::Renew, "ahead", now + DAY_MS, 5, 10_000),
    )
    .await;
    eventually(Duration::from_secs(5), || async {
        gw.status().await["events_rejected"] == 5
    })
    .await;

    let metrics = scrape(&gw).await;
    assert_eq!(quarantined(&metrics, "stamp_ahead"), 3.0);
    assert_eq!(quarantined(&metrics, "undecodable"), 1.0);
    assert_eq!(quarantined(&metrics, "key_mismatch"), 1.0);
    assert_eq!(quarantined(&metrics, "lease_out_of_bounds"), 0.0);
    let ahead = sample(&metrics, "switchyard_hlc_ahead_ms").expect("switchyard_hlc_ahead_ms");
    assert!(
        ahead < 1_000.0,
        "the clock followed a hostile stamp: {ahead} ms ahead"
    );

    // A local registration is stamped near the wall clock, wins, and is routable.
    let inst = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &inst.addr, 10_000).await;
    let stamp = stamp_on_bus(&bus, "o-1", "gw-a");
    let wall = SystemClock.now_ms();
    assert!(
        stamp.physical_ms <= wall + 1_000,
        "stamped {} ms ahead of the wall clock",
        stamp.physical_ms.saturating_sub(wall)
    );
    let (status, _, _) = http("GET", &format!("{}/orders/hello", gw.public_url())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.status().await["registry_entries"], 1);
}

#[tokio::test]
async fn a_record_whose_lease_is_out_of_bounds_is_quarantined() {
    let bus = MemoryBus::new();
    let now = SystemClock.now_ms();
    let lease_max_ms = 60_000;
    publish(
        &bus,
        &event(EventKind::Register, "long", now, 0, lease_max_ms + 1),
    )
    .await;
    publish(&bus, &event(EventKind::Renew, "huge", now, 0, u64::MAX)).await;
    // Within the bound: applied as usual.
    publish(
        &bus,
        &event(EventKind::Register, "fine", now, 0, lease_max_ms),
    )
    .await;

    let gw = Gateway::start_on(bus.clone(), |c| {
        c.node_id = "gw-a".into();
        c.registry.lease_max_ms = lease_max_ms;
        c.registry.lease_default_ms = 10_000;
    })
    .await;
    let status = gw.status().await;
    assert_eq!(status["events_rejected"], 2, "{status}");
    assert_eq!(status["events_applied"], 1, "{status}");
    assert_eq!(status["registry_entries"], 1, "{status}");
    let metrics = scrape(&gw).await;
    assert_eq!(quarantined(&metrics, "lease_out_of_bounds"), 2.0);
    assert_eq!(quarantined(&metrics, "stamp_ahead"), 0.0);
}
