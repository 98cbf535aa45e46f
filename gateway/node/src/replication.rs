//! Replication: every node reads the whole bus from the beginning, its own events included,
//! and merges each into its registry. A node reports ready once it has read up to the
//! high-water mark it saw at start, so a new or restarted gateway takes traffic only with a
//! registry at least as new as the bus was when it came up.
//!
//! A record is applied only if it decodes, its key matches its event, and it is admissible
//! (its stamp at most `registry.clock_drift_max_ms` ahead of this node's wall clock, a live
//! instance's lease at most `registry.lease_max_ms`). Any other record is quarantined: the
//! clock does not observe it, the registry does not apply it, and it is counted and logged
//! with its offset, key and origin so an operator can replace it (docs/operations.md).
//!
//! **Tombstones end.** A removal is an ordinary record, so that it wins over every older
//! registration whatever the order they are read in. Once no older registration can still be
//! live anywhere — its stamp is more than `registry.lease_max_ms` plus
//! `registry.clock_drift_max_ms` in the past — the entry is no longer needed, and
//! [`Replication::collect`] writes a delete marker for its key (a Kafka record with a null
//! value, which compaction keeps for the topic's delete retention and then drops with every
//! older record of the key). The node that stamped the entry writes the marker; any node does
//! after `registry.tombstone_retention_ms` (the stamping node may be gone for good). A marker
//! carries the entry it deletes, and readers remove their entry only if it is that one or
//! older: an instance registered again meanwhile stays. A marker for an entry stamped less than
//! `registry.lease_max_ms` ago (by the reader's clock) is quarantined, so no marker, however
//! written, removes an entry whose older registrations could still be live. Under a churn of
//! fresh instance ids, the topic holds a key for at most the lease bound, the drift bound and
//! the delete retention after the instance's last change (docs/decisions/0014).
//!
//! The node's own records are checked like anyone's. Their `origin_node` is a field any
//! writer to the topic can set, so exempting it would let a hostile record past the bound by
//! naming its reader. An honest own record fails the check only if this node's wall clock
//! stepped back by more than the bound since it was stamped: while the node runs, that
//! change was already applied here when it was made, so quarantining its echo loses nothing;
//! after a restart it is skipped like any stale-clock record, the warning says it is this
//! node's own, and the instance's next renewal (stamped from the corrected clock) wins once
//! the wall clock passes the old stamp.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::event::{Event, EventBounds, EventError, Inadmissible};
use switchyard_core::planted::{self, Bug};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Record};
use crate::config::RegistryConfig;
use crate::seams::Backoff;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::{ChangeOp, QuarantineReason};

/// Records read per fetch once caught up.
pub const FETCH_RECORDS_MAX: usize = 512;
/// Records read per fetch while catching up: the whole topic is read then, and fewer, larger
/// fetches cost fewer round trips. At the largest event accepted (64 KiB) a fetch holds at most
/// 128 MiB; a registration is about 110 B, so a fetch of them holds about 220 KiB.
pub const CATCH_UP_FETCH_RECORDS_MAX: usize = 2_048;
/// Events applied under one hold of the registry's write lock: routing reads wait for the lock
/// meanwhile, for about 100 µs at this bound.
pub const APPLY_RUN_MAX: usize = 256;
/// Batches of at least this many records are decoded ahead on a second thread
/// ([`Replication::apply_records`]); smaller ones, as read once caught up, on the calling one.
pub const DECODE_AHEAD_MIN: usize = 1_024;
/// Records decoded ahead per chunk, and chunks decoded ahead of the one being applied at most:
/// the memory held by decoding ahead is bounded by `(DECODED_CHUNKS_AHEAD + 2) * DECODE_CHUNK`
/// events.
const DECODE_CHUNK: usize = 256;
const DECODED_CHUNKS_AHEAD: usize = 2;
/// How long one fetch waits for new records before returning empty.
pub const FETCH_WAIT: Duration = Duration::from_millis(500);
/// The first and the longest wait between attempts while the bus fails.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Delete markers one [`Replication::collect`] round writes at most.
pub const COLLECT_PER_ROUND_MAX: usize = 1_000;
/// How long one delete marker may take to be acknowledged before the round stops.
const COLLECT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The bus reader, its position and the node's readiness.
pub struct Replication {
    store: Arc<Store>,
    bus: Arc<dyn Bus>,
    telemetry: Arc<Telemetry>,
    /// What a record must satisfy beyond decoding to be applied.
    bounds: EventBounds,
    /// How long an entry stamped by another node is kept before this node deletes it from the
    /// bus (`registry.tombstone_retention_ms`).
    others_after_ms: u64,
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
    pub fn new(
        registry: &RegistryConfig,
        store: Arc<Store>,
        bus: Arc<dyn Bus>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            store,
            bus,
            telemetry,
            bounds: EventBounds {
                clock_drift_max_ms: registry.clock_drift_max_ms,
                lease_max_ms: registry.lease_max_ms,
            },
            others_after_ms: registry.tombstone_retention_ms,
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

    /// Records read and not applied: undecodable, keyed wrongly or inadmissible.
    pub fn events_rejected(&self) -> u64 {
        self.events_rejected.load(Ordering::Relaxed)
    }

    /// Counts a record read and not applied.
    fn quarantine(&self, reason: QuarantineReason) {
        self.events_rejected.fetch_add(1, Ordering::Relaxed);
        self.telemetry.metrics().event_quarantined(reason);
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
                Ok(hwm) if planted::active(Bug::TargetShort) => break hwm.saturating_sub(1),
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
                fetched = self.bus.fetch(position, fetch_max(caught_up), FETCH_WAIT) => fetched,
            };
            match fetched {
                Ok(records) => {
                    backoff.reset();
                    // A fetch may start before the offset asked for (a redelivery). Records
                    // below the position were applied already, in order; applying them again
                    // would at best change nothing, and at worst bring back an entry whose
                    // removal was collected since (the tombstone is gone, the old
                    // registration is not).
                    let fresh = if planted::active(Bug::PositionBack) {
                        &records[..]
                    } else {
                        let first = records
                            .iter()
                            .position(|record| record.offset >= position)
                            .unwrap_or(records.len());
                        &records[first..]
                    };
                    self.apply_records(fresh);
                    if planted::active(Bug::PositionBack) {
                        if let Some(last) = records.last() {
                            position = last.offset.saturating_add(1);
                        }
                        self.position.store(position, Ordering::Release);
                    } else {
                        // Only forward: a redelivered record (a fetch that starts before the
                        // offset asked for) must not move the position back, or the node
                        // would report, and read from, an offset it had already passed.
                        if let Some(furthest) = records.iter().map(|record| record.offset).max() {
                            position = position.max(furthest.saturating_add(1));
                        }
                        self.position.fetch_max(position, Ordering::AcqRel);
                    }
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

    /// Applies records read from the bus, in their order. A record that does not decode,
    /// whose key does not match its event, or that is not admissible is quarantined (counted,
    /// logged and skipped): it cannot be applied, and stopping the whole replication for it
    /// would be worse. The events are applied in runs of at most [`APPLY_RUN_MAX`], each under
    /// one hold of the registry's write lock, after the clock has observed the greatest stamp
    /// of the run: later local stamps are then greater than every stamp of the run, as they
    /// would be had the clock observed each. A delete marker ends a run and is applied in its
    /// place. Admissibility is judged against the wall clock read once per call.
    ///
    /// A batch of at least [`DECODE_AHEAD_MIN`] records (catch-up reads 2,048 at a time) is
    /// decoded ahead on a second thread, in chunks of 256 records, while this one applies
    /// the chunks already decoded; both threads end before this returns. Decoding is a pure
    /// function of each record, and everything else (quarantine, the clock, the registry) is
    /// done here in the records' order, so the outcome does not depend on which thread
    /// decoded what or when.
    pub fn apply_records(&self, records: &[Record]) -> Runs {
        if records.len() < DECODE_AHEAD_MIN || !decode_ahead_possible() {
            return self.apply_decoded(
                records
                    .iter()
                    .map(|record| (record, Event::decode(&record.payload))),
            );
        }
        std::thread::scope(|scope| {
            let (chunks, decoded) = std::sync::mpsc::sync_channel(DECODED_CHUNKS_AHEAD);
            scope.spawn(move || {
                for chunk in records.chunks(DECODE_CHUNK) {
                    let events: Vec<_> = chunk
                        .iter()
                        .map(|record| Event::decode(&record.payload))
                        .collect();
                    // The receiver is gone only if this thread's caller panicked.
                    if chunks.send(events).is_err() {
                        return;
                    }
                }
            });
            self.apply_decoded(records.iter().zip(decoded.into_iter().flatten()))
        })
    }

    /// [`Replication::apply_records`] once each record's payload has been decoded.
    fn apply_decoded<'r>(
        &self,
        records: impl Iterator<Item = (&'r Record, Result<Event, EventError>)>,
    ) -> Runs {
        let now = self.store.now_ms();
        let mut runs = Runs::default();
        let mut run = Vec::with_capacity(records.size_hint().0.min(APPLY_RUN_MAX));
        for (record, decoded) in records {
            let Some(event) = self.admit_decoded(record, decoded) else {
                continue;
            };
            if record.delete {
                self.apply_run(&mut run, &mut runs);
                self.apply_marker(record, &event);
                continue;
            }
            if let Err(why) = event.admissible(now, &self.bounds)
                && !planted::active(Bug::QuarantineOff)
            {
                self.quarantine_inadmissible(record, &event, why);
                continue;
            }
            if planted::active(Bug::SkipOwnEvents) && event.origin_node == self.store.node_id() {
                continue;
            }
            run.push(event);
            if run.len() == APPLY_RUN_MAX {
                self.apply_run(&mut run, &mut runs);
            }
        }
        self.apply_run(&mut run, &mut runs);
        self.count(&runs);
        runs
    }

    /// Publishes what one call applied: the status's count of events applied and the metrics
    /// (`switchyard_bus_events_applied_total` by origin, `switchyard_bus_events_changed_total`,
    /// `switchyard_bus_apply_runs_total`).
    fn count(&self, runs: &Runs) {
        let (events, own) = (runs.events as u64, runs.own as u64);
        self.events_applied.fetch_add(events, Ordering::Relaxed);
        let metrics = self.telemetry.metrics();
        metrics.events_applied(own, events - own);
        metrics.events_changed(runs.runs as u64, runs.changed as u64);
    }

    /// Applies a run of admissible events (and empties it): the clock first, then the registry.
    fn apply_run(&self, run: &mut Vec<Event>, runs: &mut Runs) {
        let Some(greatest) = run.iter().map(|e| &e.stamp).max() else {
            return;
        };
        self.store.observe(greatest);
        let len = run.len();
        let own = run
            .iter()
            .filter(|e| e.origin_node == self.store.node_id())
            .count();
        let changed = self.store.apply_all(run.drain(..));
        tracing::debug!(events = len, changed, "applied registry events");
        runs.runs += 1;
        runs.events += len;
        runs.own += own;
        runs.changed += changed;
    }

    /// The event a record carries (for a delete marker, the event of the entry it deletes), or
    /// `None` after quarantining a record that does not decode or whose key is not its event's.
    fn admit_decoded(&self, record: &Record, decoded: Result<Event, EventError>) -> Option<Event> {
        match decoded {
            Ok(event)
                if event.key.is_bus_key(&record.key) || planted::active(Bug::QuarantineOff) =>
            {
                Some(event)
            }
            Ok(event) => {
                self.quarantine(QuarantineReason::KeyMismatch);
                tracing::warn!(offset = record.offset, key = %record.key, event_key = %event.bus_key(), origin = %event.origin_node, "quarantined bus record whose key does not match its event");
                None
            }
            Err(error) => {
                self.quarantine(QuarantineReason::Undecodable);
                tracing::warn!(offset = record.offset, key = %record.key, delete = record.delete, %error, "quarantined bus record that is not a valid registry event");
                None
            }
        }
    }

    fn quarantine_inadmissible(&self, record: &Record, event: &Event, why: Inadmissible) {
        let reason = QuarantineReason::from(&why);
        self.quarantine(reason);
        let own = event.origin_node == self.store.node_id();
        tracing::warn!(offset = record.offset, key = %record.key, origin = %event.origin_node, own, delete = record.delete, reason = reason.label(), error = %why, "quarantined bus record out of bounds; publish a replacement for its key to repair the topic");
    }

    /// Applies a delete marker: removes the entry held for its key if it is the one the marker
    /// was written for, or older. A marker for an entry that older registrations could still
    /// outlive is quarantined.
    fn apply_marker(&self, record: &Record, covered: &Event) {
        let now = self.store.now_ms();
        if let Err(why) = covered.admissible(now, &self.bounds) {
            self.quarantine_inadmissible(record, covered, why);
            return;
        }
        let early = covered
            .stamp
            .physical_ms
            .saturating_add(self.bounds.lease_max_ms)
            > now;
        if early && !planted::active(Bug::CollectEarly) {
            self.quarantine(QuarantineReason::MarkerEarly);
            tracing::warn!(offset = record.offset, key = %record.key, origin = %covered.origin_node, stamp_ms = covered.stamp.physical_ms, now_ms = now, "quarantined delete marker for an entry stamped less than registry.lease_max_ms ago");
            return;
        }
        if self.store.remove_covered(&covered.key, &covered.entry()) {
            self.telemetry.metrics().collected();
            tracing::debug!(offset = record.offset, key = %record.key, origin = %covered.origin_node, "delete marker applied: entry removed for good");
        }
    }

    /// Writes delete markers for up to [`COLLECT_PER_ROUND_MAX`] entries no longer needed
    /// (see the module's documentation); returns how many the bus acknowledged. Only once
    /// caught up (before that, a newer entry for the key may be unread) and not while
    /// shutting down. The registry is read once, under its read lock; the markers are written
    /// after it is released, one at a time, and the round stops at the first failure (the
    /// entries stay, and the next round tries again).
    pub async fn collect(&self) -> usize {
        if !self.caught_up() || self.shutting_down() {
            return 0;
        }
        let now = self.store.now_ms();
        let horizon = if planted::active(Bug::CollectEarly) {
            0
        } else {
            self.bounds
                .lease_max_ms
                .saturating_add(self.bounds.clock_drift_max_ms)
        };
        let own_by = now.saturating_sub(horizon);
        let anyone_by = now.saturating_sub(horizon.max(self.others_after_ms));
        let me = self.store.node_id();
        let due = self
            .store
            .registry()
            .collectable(now, COLLECT_PER_ROUND_MAX, |stamp| {
                stamp.physical_ms <= anyone_by
                    || (stamp.node_id == me && stamp.physical_ms <= own_by)
            });
        let mut written = 0;
        for c in due {
            let marker = Event::of_entry(c.key, c.entry, me.to_owned());
            let publish = self
                .bus
                .delete(marker.bus_key(), Bytes::from(marker.encode()));
            match tokio::time::timeout(COLLECT_PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(offset)) => {
                    written += 1;
                    self.telemetry.metrics().change(ChangeOp::Collect);
                    tracing::debug!(key = %marker.bus_key(), offset, "delete marker written");
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, key = %marker.bus_key(), "cannot write a delete marker; the next round tries again");
                    break;
                }
                Err(_) => {
                    tracing::warn!(key = %marker.bus_key(), "the bus did not acknowledge a delete marker in time; the next round tries again");
                    break;
                }
            }
        }
        if written > 0 {
            tracing::info!(
                written,
                "delete markers written for registry entries no longer needed"
            );
        }
        written
    }
}

/// What [`Replication::apply_records`] did with the records it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Runs {
    /// Runs applied, each under one hold of the registry's write lock.
    pub runs: usize,
    /// Events applied (admissible, whether they changed the registry or not).
    pub events: usize,
    /// Of those, events this node wrote (in an earlier life, or read back).
    pub own: usize,
    /// Events that changed the registry.
    pub changed: usize,
}

/// Whether a second thread can decode ahead: the process may run on more than one core.
fn decode_ahead_possible() -> bool {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from)) > 1
}

/// How many records one fetch asks for: more while catching up.
fn fetch_max(caught_up: bool) -> usize {
    if caught_up {
        FETCH_RECORDS_MAX
    } else {
        CATCH_UP_FETCH_RECORDS_MAX
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
