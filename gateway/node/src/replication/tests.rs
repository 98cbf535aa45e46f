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
