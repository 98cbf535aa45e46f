//! Nothing acknowledged is lost at shutdown: the outbox is flushed within the drain timeout,
//! and what cannot be flushed is named. No change is made before the gateway caught up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use switchyard::bus::{Bus, GatedBus, MemoryBus};
use switchyard_core::event::{Event, EventKind};
use switchyard_core::{InstanceKey, Stamp};

use crate::expect_error_with;
use crate::harness::{Gateway, http, http_with};

/// Logs written while the guard lives, on this thread: the test's runtime and every task the
/// gateway spawns on it.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The events on `bus` for `instance` of `held`, in log order.
fn events_for(bus: &MemoryBus, instance: &str) -> Vec<Event> {
    bus.snapshot()
        .iter()
        .filter_map(|r| Event::decode(&r.payload).ok())
        .filter(|e| e.key == InstanceKey::new("held", instance))
        .collect()
}

/// A gateway on a bus that works until `close`, with an instance registered (200), then the
/// bus closed and the instance deregistered: answered 202, queued, not on the bus.
async fn deregistered_while_the_bus_is_down(
    drain_ms: u64,
) -> (Gateway, GatedBus<MemoryBus>, MemoryBus) {
    let log = MemoryBus::new();
    let gated = GatedBus::new(log.clone());
    let gw = Gateway::start_on(gated.clone(), |c| {
        c.bus.publish_wait_ms = 100;
        c.shutdown.drain_timeout_ms = drain_ms;
    })
    .await;
    gw.register("held", "h-1", "127.0.0.1:9", 60_000).await;
    gated.set_closed(true);
    let url = format!("{}/v1/services/held/instances/h-1", gw.control_url());
    let (status, _, body) = http("DELETE", &url).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    assert_eq!(gw.node.status().outbox_pending, 1);
    (gw, gated, log)
}

#[tokio::test]
async fn a_deregistration_queued_at_shutdown_is_published_when_the_bus_returns_in_time() {
    let (gw, gated, log) = deregistered_while_the_bus_is_down(5_000).await;
    let bus = gated.clone();
    let stopped = gw.stop();
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        bus.set_closed(false);
    });
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("shutdown is bounded by the drain timeout");
    opener.await.unwrap();
    let kinds: Vec<EventKind> = events_for(&log, "h-1").iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Register, EventKind::Deregister],
        "the deregistration answered 202 reached the bus during shutdown"
    );
}

#[tokio::test]
async fn a_bus_that_stays_down_holds_shutdown_no_longer_than_the_drain_timeout() {
    let logs = Logs::default();
    let _guard = logs.install();
    let drain = Duration::from_millis(1_000);
    let (gw, _gated, log) = deregistered_while_the_bus_is_down(drain.as_millis() as u64).await;
    let node = gw.node.clone();
    let asked = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), gw.stop())
        .await
        .expect("a bus that stays down held shutdown past the drain timeout");
    let took = asked.elapsed();
    assert!(
        took < drain + Duration::from_millis(500),
        "shutdown took {took:?} with a drain timeout of {drain:?}"
    );
    // The change is lost, and said so: counted in the stopped node's status, logged by key.
    assert_eq!(node.status().outbox_pending, 1);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("not published before shutdown"))
        .unwrap_or_else(|| panic!("no line names the lost change:\n{text}"));
    assert!(
        line.contains("WARN") && line.contains("held/h-1") && line.contains("Deregister"),
        "{line}"
    );
    assert_eq!(events_for(&log, "h-1").len(), 1, "only the registration");
}

#[tokio::test]
async fn changes_before_catch_up_are_refused_and_after_it_win_over_a_record_stamped_ahead() {
    // A gateway whose clock runs a minute ahead wrote this record before ours started.
    let log = MemoryBus::new();
    let ahead_ms = switchyard::seams::Clock::now_ms(&switchyard::seams::SystemClock) + 60_000;
    let ahead = Event {
        kind: EventKind::Register,
        key: InstanceKey::new("held", "h-1"),
        addr: "http://127.0.0.1:1".into(),
        metadata: Default::default(),
        lease_ms: 60_000,
        stamp: Stamp::new(ahead_ms, 0, "gw-ahead"),
        origin_node: "gw-ahead".into(),
    };
    log.publish(ahead.bus_key(), Bytes::from(ahead.encode()))
        .await
        .unwrap();
    let gated = GatedBus::new(log.clone());
    gated.set_closed(true);
    let gw = Gateway::start_unready(gated.clone(), |c| c.bus.publish_wait_ms = 100).await;

    // Not caught up: a registration stamped now would lose to the record ahead, so none is
    // made, whichever change it is.
    let url = format!("{}/v1/services/held/instances/h-1", gw.control_url());
    let body = br#"{"addr":"127.0.0.1:2","lease_ms":30000}"#.to_vec();
    expect_error_with("PUT", &url, &[], body.clone(), 503, "not_ready").await;
    expect_error_with("DELETE", &url, &[], Vec::new(), 503, "not_ready").await;
    assert_eq!(gw.node.status().outbox_pending, 0, "nothing was queued");

    // Caught up: the clock has seen the stamp ahead, so the registration is newer and wins.
    gated.set_closed(false);
    gw.wait_ready().await;
    let (status, _, reply) = http_with("PUT", &url, &[], body).await;
    assert_eq!(status, StatusCode::OK, "{reply:?}");
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert!(
        reply["stamp"]["physical_ms"].as_u64().unwrap() >= ahead_ms,
        "{reply}"
    );
    let (_, _, view) = http("GET", &format!("{}/v1/services/held", gw.control_url())).await;
    let view: Value = serde_json::from_slice(&view).unwrap();
    let addr = view["instances"][0]["addr"].as_str().unwrap_or_default();
    assert!(addr.ends_with("127.0.0.1:2"), "{view}");
}
