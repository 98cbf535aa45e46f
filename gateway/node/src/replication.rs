//! Replication: every node reads the whole bus from the beginning, its own events included,
//! and merges each into its registry. A node reports ready once it has read up to the
//! high-water mark it saw at start, so a new or restarted gateway takes traffic only with a
//! registry at least as new as the bus was when it came up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use switchyard_core::event::Event;
use switchyard_core::planted::{self, Bug};
use switchyard_core::registry::Applied;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Record};
use crate::seams::Backoff;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Records read per fetch.
pub const FETCH_RECORDS_MAX: usize = 512;
/// How long one fetch waits for new records before returning empty.
pub const FETCH_WAIT: Duration = Duration::from_millis(500);
/// The first and the longest wait between attempts while the bus fails.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The bus reader, its position and the node's readiness.
pub struct Replication {
    store: Arc<Store>,
    bus: Arc<dyn Bus>,
    telemetry: Arc<Telemetry>,
    shutting_down: AtomicBool,
    position: AtomicU64,
    catch_up_target: AtomicU64,
    /// The latest bus high-water mark this node has read, for the lag gauge.
    high_water: AtomicU64,
    events_applied: AtomicU64,
    events_rejected: AtomicU64,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("position", &self.position())
            .field("caught_up", &self.caught_up())
            .finish_non_exhaustive()
    }
}

impl Replication {
    pub fn new(store: Arc<Store>, bus: Arc<dyn Bus>, telemetry: Arc<Telemetry>) -> Self {
        Self {
            store,
            bus,
            telemetry,
            shutting_down: AtomicBool::new(false),
            position: AtomicU64::new(0),
            catch_up_target: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
            events_applied: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
        }
    }

    /// Caught up with the bus and not shutting down: load balancers may send traffic.
    pub fn is_ready(&self) -> bool {
        self.caught_up() && !self.shutting_down()
    }

    /// Whether the node has read the bus up to the mark it saw at start (kept by the store,
    /// which the registrar asks before it stamps a change).
    pub fn caught_up(&self) -> bool {
        self.store.caught_up()
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// From now on the node reports not ready, so load balancers stop sending it traffic.
    pub fn mark_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// The next bus offset this node will read.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// The high-water mark seen at start, which readiness waits for.
    pub fn catch_up_target(&self) -> u64 {
        self.catch_up_target.load(Ordering::Acquire)
    }

    /// The latest high-water mark read (never behind the position).
    pub fn high_water(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed).max(self.position())
    }

    /// Asks the bus for its high-water mark, waiting at most `wait`; if it does not answer
    /// in time, the last one read stands.
    pub async fn refresh_high_water(&self, wait: Duration) {
        if let Ok(Ok(hwm)) = tokio::time::timeout(wait, self.bus.high_water_mark()).await {
            self.high_water.fetch_max(hwm, Ordering::Relaxed);
        }
    }

    pub fn events_applied(&self) -> u64 {
        self.events_applied.load(Ordering::Relaxed)
    }

    pub fn events_rejected(&self) -> u64 {
        self.events_rejected.load(Ordering::Relaxed)
    }

    fn mark_caught_up(&self) {
        self.store.mark_caught_up();
    }

    /// Reads the bus until `stop`: first the high-water mark, then every record from the
    /// beginning. Every wait, retries included, ends at once when `stop` is cancelled.
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        let target = loop {
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.bus.high_water_mark() => result,
            };
            match result {
                Ok(hwm) => break hwm,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot read the bus high-water mark; not ready");
                    if !pause(&stop, delay).await {
                        return;
                    }
                }
            }
        };
        self.catch_up_target.store(target, Ordering::Release);
        tracing::info!(target, "catching up from the bus");
        let mut position = 0u64;
        let mut caught_up = target == 0 || planted::active(Bug::ReadyBeforeCatchUp);
        if caught_up {
            self.mark_caught_up();
            tracing::info!("bus is empty: ready");
        }
        backoff.reset();
        loop {
            let fetched = tokio::select! {
                () = stop.cancelled() => return,
                fetched = self.bus.fetch(position, FETCH_RECORDS_MAX, FETCH_WAIT) => fetched,
            };
            match fetched {
                Ok(records) => {
                    backoff.reset();
                    for record in &records {
                        self.apply_record(record);
                        position = record.offset + 1;
                    }
                    self.position.store(position, Ordering::Release);
                    if !caught_up && position >= target {
                        caught_up = true;
                        self.mark_caught_up();
                        tracing::info!(position, "caught up with the bus: ready");
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, position, retry_in_ms = delay.as_millis() as u64, "bus read failed");
                    if !pause(&stop, delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Applies one record read from the bus. A record that does not decode, or whose key does
    /// not match its event, is counted, logged and skipped: it cannot be applied, and stopping
    /// the whole replication for it would be worse.
    pub fn apply_record(&self, record: &Record) -> Option<Applied> {
        let event = match Event::decode(&record.payload) {
            Ok(event) if event.bus_key() == record.key => event,
            Ok(event) => {
                self.events_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(offset = record.offset, key = %record.key, event_key = %event.bus_key(), "skipping bus record whose key does not match its event");
                return None;
            }
            Err(error) => {
                self.events_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(offset = record.offset, key = %record.key, %error, "skipping bus record that is not a valid registry event");
                return None;
            }
        };
        let own = event.origin_node == self.store.node_id();
        if planted::active(Bug::SkipOwnEvents) && own {
            return None;
        }
        self.store.observe(&event.stamp);
        let applied = self.store.apply(&event);
        self.events_applied.fetch_add(1, Ordering::Relaxed);
        self.telemetry.metrics().event_applied(own);
        if applied != Applied::Unchanged {
            tracing::debug!(offset = record.offset, key = %record.key, kind = ?event.kind, origin = %event.origin_node, "applied registry event");
        }
        Some(applied)
    }
}

/// Waits `delay` unless `stop` comes first; returns whether to go on.
async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests;
