//! Tombstones that end, and quotas: a removed instance's entry is deleted from the bus with a
//! delete marker once no older registration can be live, and then from every registry; the
//! topic's keys stay bounded under a churn of fresh instance ids; a marker that comes too early
//! or names an older entry removes nothing; services and instances are counted against quotas;
//! a removed service's metric series go.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use switchyard::bus::{Bus, MemoryBus};
use switchyard::config::Config;
use switchyard::seams::{Clock, SystemClock};
use switchyard_core::event::{Event, EventKind};
use switchyard_core::{InstanceKey, Stamp};

use crate::harness::{Gateway, Instance, eventually, http, http_with};
use crate::telemetry::{sample, scrape};

/// `registry.lease_max_ms` here: with the drift bound, a tombstone ends 2 s after it is made.
const LEASE_MAX_MS: u64 = 1_000;
const DRIFT_MS: u64 = 1_000;

fn short_horizon(c: &mut Config) {
    c.node_id = "gw-a".into();
    c.registry.lease_min_ms = 100;
    c.registry.lease_default_ms = LEASE_MAX_MS;
    c.registry.lease_max_ms = LEASE_MAX_MS;
    c.registry.clock_drift_max_ms = DRIFT_MS;
    c.registry.housekeeping_interval_ms = 100;
}

fn event(kind: EventKind, service: &str, id: &str, physical_ms: u64, node: &str) -> Event {
    let alive = matches!(kind, EventKind::Register | EventKind::Renew);
    Event {
        kind,
        key: InstanceKey::new(service, id),
        addr: if alive {
            "http://127.0.0.1:9".into()
        } else {
            String::new()
        },
        metadata: Default::default(),
        lease_ms: if alive { LEASE_MAX_MS } else { 0 },
        stamp: Stamp::new(physical_ms, 0, node),
        origin_node: node.into(),
    }
}

fn counter(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("no {series}:\n{metrics}"))
}

#[tokio::test]
async fn a_removed_instance_is_deleted_from_the_bus_after_the_lease_and_drift_bounds() {
    let bus = MemoryBus::new();
    let gw = Gateway::start_on(bus.clone(), short_horizon).await;
    let inst = Instance::start("gone", "g-1").await;
    gw.register("gone", "g-1", &inst.addr, LEASE_MAX_MS).await;
    let (status, _, _) = http("GET", &format!("{}/gone/hello", gw.public_url())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(scrape(&gw).await.contains("service=\"gone\""));
    let url = format!("{}/v1/services/gone/instances/g-1", gw.control_url());
    let (status, _, _) = http("DELETE", &url).await;
    assert_eq!(status, StatusCode::OK);
    let tombstone = bus
        .snapshot()
        .iter()
        .rev()
        .find(|r| r.key == "gone/g-1" && !r.delete)
        .map(|r| Event::decode(&r.payload).unwrap())
        .unwrap();
    assert_eq!(tombstone.kind, EventKind::Deregister);

    eventually(Duration::from_secs(20), || async {
        gw.status().await["registry_entries"] == 0
    })
    .await;
    // The marker came only once no older registration could be live anywhere.
    let marker = bus
        .snapshot()
        .into_iter()
        .find(|r| r.key == "gone/g-1" && r.delete)
        .expect("a delete marker for gone/g-1");
    let covered = Event::decode(&marker.payload).unwrap();
    assert_eq!(covered.entry(), tombstone.entry());
    let now = SystemClock.now_ms();
    assert!(
        now >= tombstone.stamp.physical_ms + LEASE_MAX_MS + DRIFT_MS,
        "collected {} ms after the deregistration, before the lease and drift bounds",
        now - tombstone.stamp.physical_ms
    );
    let metrics = scrape(&gw).await;
    assert!(
        counter(
            &metrics,
            "switchyard_registry_changes_total{op=\"collect\"}"
        ) >= 1.0
    );
    assert!(counter(&metrics, "switchyard_registry_entries_collected_total") >= 1.0);
    // The service is gone from the registry, and so are its metric series.
    eventually(Duration::from_secs(5), || async {
        !scrape(&gw).await.contains("service=\"gone\"")
    })
    .await;
    let (status, _, _) = http("GET", &format!("{}/gone/hello", gw.public_url())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn another_gateway_s_tombstone_is_deleted_after_the_retention() {
    const RETENTION_MS: u64 = 3_000;
    let bus = MemoryBus::new();
    let gw = Gateway::start_on(bus.clone(), |c| {
        short_horizon(c);
        c.registry.tombstone_retention_ms = RETENTION_MS;
    })
    .await;
    // Stamped by a gateway that is gone: nobody else writes its marker.
    let tomb = event(
        EventKind::Deregister,
        "s",
        "orphan",
        SystemClock.now_ms(),
        "gw-gone",
    );
    bus.publish(tomb.bus_key(), Bytes::from(tomb.encode()))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), || async {
        bus.snapshot().iter().any(|r| r.delete)
    })
    .await;
    let waited = SystemClock.now_ms() - tomb.stamp.physical_ms;
    assert!(
        waited >= RETENTION_MS,
        "deleted after {waited} ms, before registry.tombstone_retention_ms"
    );
    eventually(Duration::from_secs(5), || async {
        gw.status().await["registry_entries"] == 0
    })
    .await;
}

#[tokio::test]
async fn a_marker_too_early_or_for_an_older_entry_removes_nothing() {
    let bus = MemoryBus::new();
    let gw = Gateway::start_on(bus.clone(), |c| {
        short_horizon(c);
        // Nothing of this node's own is collected during the test.
        c.registry.housekeeping_interval_ms = 600_000;
    })
    .await;
    let now = SystemClock.now_ms();
    // A tombstone stamped now, and a hostile marker for it straight away.
    let tomb = event(EventKind::Deregister, "s", "early", now, "gw-x");
    bus.publish(tomb.bus_key(), Bytes::from(tomb.encode()))
        .await
        .unwrap();
    bus.delete(tomb.bus_key(), Bytes::from(tomb.encode()))
        .await
        .unwrap();
    // A live registration, and a marker for an older entry of the same key.
    let live = event(EventKind::Register, "s", "again", now, "gw-x");
    bus.publish(live.bus_key(), Bytes::from(live.encode()))
        .await
        .unwrap();
    let older = event(EventKind::Deregister, "s", "again", now - 60_000, "gw-x");
    bus.delete(older.bus_key(), Bytes::from(older.encode()))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), || async {
        gw.status().await["events_rejected"] == 1
    })
    .await;
    let metrics = scrape(&gw).await;
    assert_eq!(
        counter(
            &metrics,
            "switchyard_bus_events_quarantined_total{reason=\"marker_early\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(&metrics, "switchyard_registry_entries_collected_total"),
        0.0
    );
    let registry = gw.node.registry();
    assert!(registry.get(&InstanceKey::new("s", "early")).is_some());
    assert_eq!(
        registry.get(&InstanceKey::new("s", "again")),
        Some(&live.entry())
    );
}

/// Fresh instance ids, each registered and deregistered once, at a steady rate for 20 s: the
/// topic holds the keys of the last few seconds only, and a new gateway reads that many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_churn_of_fresh_ids_the_topic_keys_stay_bounded() {
    const IDS_PER_TICK: usize = 4;
    const TICKS: usize = 2_000; // every 10 ms: 400 ids/s for 20 s
    let bus = MemoryBus::with_delete_retention(Duration::from_millis(500));
    let gw = Gateway::start_on(bus.clone(), short_horizon).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut peak_keys = 0;
    for t in 0..TICKS {
        tick.tick().await;
        let now = SystemClock.now_ms();
        for i in 0..IDS_PER_TICK {
            let id = format!("pod-{t}-{i}");
            // Written as this gateway would have: its own entries, which it collects first.
            let reg = event(EventKind::Register, "churn", &id, now, "gw-a");
            let dereg = event(EventKind::Deregister, "churn", &id, now + 1, "gw-a");
            for e in [&reg, &dereg] {
                bus.publish(e.bus_key(), Bytes::from(e.encode()))
                    .await
                    .unwrap();
            }
        }
        peak_keys = peak_keys.max(bus.keys());
    }
    let total = TICKS * IDS_PER_TICK;
    // Within 2 s (the bounds) + 0.5 s (retention) + compaction's slack, about 1,400 keys at
    // this rate; without markers every one of the 8,000 stays.
    let bound = total / 2;
    println!(
        "churn: {total} fresh ids, peak {peak_keys} keys on the topic, {} at the end, {} records",
        bus.keys(),
        bus.len()
    );
    assert!(
        peak_keys <= bound,
        "the topic held {peak_keys} keys of {total}"
    );
    assert!(gw.status().await["registry_entries"].as_u64().unwrap() <= bound as u64);
    // A new gateway reads only what is left.
    let records = bus.len();
    assert!(records <= 1_024.max(2 * bound) + 1, "{records} records");
    let started = tokio::time::Instant::now();
    let late = Gateway::start_on(bus.clone(), |c| {
        short_horizon(c);
        c.node_id = "gw-late".into();
    })
    .await;
    let status = late.wait_ready().await;
    println!(
        "churn: a new gateway read {records} records and was ready in {:?} (its catch-up target: offset {})",
        started.elapsed(),
        status["catch_up_target"]
    );
    assert!(status["catch_up_target"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn services_and_instances_are_counted_against_quotas() {
    let gw = Gateway::start(|c| {
        c.registry.services_max = 2;
        c.registry.instances_per_service_max = 2;
        c.registry.entries_max = 3;
    })
    .await;
    let put = |service: &'static str, id: &'static str| {
        let url = format!("{}/v1/services/{service}/instances/{id}", gw.control_url());
        async move {
            let body = br#"{"addr":"127.0.0.1:9","lease_ms":10000}"#.to_vec();
            let (status, _, body) = http_with("PUT", &url, &[], body).await;
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let delete = |service: &'static str, id: &'static str| {
        let url = format!("{}/v1/services/{service}/instances/{id}", gw.control_url());
        async move {
            let (status, _, body) = http("DELETE", &url).await;
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(put("a", "1").await.0, StatusCode::OK);
    assert_eq!(put("a", "2").await.0, StatusCode::OK);
    // A third instance of `a`: past instances_per_service_max.
    let (status, body) = put("a", "3").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("quota_exceeded") && body.contains("instances_per_service_max"));
    // A deregistration of a key never seen writes a tombstone: it counts too.
    let (status, body) = delete("a", "never").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(put("b", "1").await.0, StatusCode::OK);
    // A third service: past services_max (and past entries_max, which is checked first).
    let (status, body) = put("c", "1").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("entries_max"), "{body}");
    // Changes to what is held always pass: renewals and removals.
    assert_eq!(put("a", "1").await.0, StatusCode::OK);
    assert_eq!(delete("a", "2").await.0, StatusCode::OK);
    assert_eq!(delete("b", "1").await.0, StatusCode::OK);
    let status = gw.status().await;
    assert_eq!(status["registry_entries"], 3, "{status}");
    let metrics = scrape(&gw).await;
    assert_eq!(
        counter(&metrics, "switchyard_registry_quota_refusals_total"),
        3.0
    );
}

#[tokio::test]
async fn a_new_service_past_services_max_is_refused() {
    let gw = Gateway::start(|c| c.registry.services_max = 1).await;
    gw.register("a", "1", "127.0.0.1:9", 10_000).await;
    let url = format!("{}/v1/services/b/instances/1", gw.control_url());
    let body = br#"{"addr":"127.0.0.1:9","lease_ms":10000}"#.to_vec();
    let (status, _, body) = http_with("PUT", &url, &[], body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&body).contains("services_max"));
    assert_eq!(gw.status().await["registry_entries"], 1);
}
