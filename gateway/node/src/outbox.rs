//! The publish outbox: registry changes wait here until the bus acknowledges them.
//!
//! A change is applied locally at once and queued; one publisher task publishes the queue in
//! order, retrying with a bounded backoff while the bus is unreachable. The queue holds at most
//! one event per instance (a newer change to a queued instance replaces the older one in
//! place, since only the newest can win anyway), and at most `events_max` instances; past that
//! a change is refused with a clear error rather than dropped silently.
//!
//! Every caller waiting on a queued instance waits on the same signal (one `watch` per queued
//! instance, whatever the number of callers), so the queue's memory is bounded by
//! `events_max`, not by how often a change is retried while the bus is down.
//!
//! At shutdown [`Outbox::flush`] keeps publishing until the queue is empty or the deadline
//! passes; what it could not publish is logged, one line per instance.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::event::{Event, EventKind};
use switchyard_core::{GatewayError, InstanceKey};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::seams::Backoff;
use crate::sync::lock;

#[cfg(test)]
mod tests;

/// Whether a queued change reached the bus before the caller stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The bus acknowledged the event.
    Published,
    /// Still queued; it will be published once the bus is back.
    Queued,
}

/// A queued change; [`Ticket::wait`] tells whether the bus took it in time.
#[derive(Debug)]
pub struct Ticket(watch::Receiver<bool>);

impl Ticket {
    pub async fn wait(mut self, wait: Duration) -> Delivery {
        match tokio::time::timeout(wait, self.0.wait_for(|published| *published)).await {
            Ok(Ok(_)) => Delivery::Published,
            // The queue dropped the change (never, today) or the wait ran out: it stays queued.
            Ok(Err(_)) | Err(_) => Delivery::Queued,
        }
    }
}

#[derive(Debug)]
struct Pending {
    event: Event,
    /// Set to `true` once an event at least as new as every waiter's change is published;
    /// each waiter holds a receiver, so giving up (dropping the ticket) frees its share.
    published: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Queue {
    order: VecDeque<InstanceKey>,
    pending: BTreeMap<InstanceKey, Pending>,
}

#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    queued: Notify,
    events_max: usize,
}

impl Outbox {
    pub fn new(events_max: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            queued: Notify::new(),
            events_max,
        }
    }

    /// How many instances have a change waiting to be published.
    pub fn len(&self) -> usize {
        lock(&self.queue).order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `event` and waits up to `wait` for the bus to acknowledge it.
    pub async fn submit(&self, event: Event, wait: Duration) -> Result<Delivery, GatewayError> {
        Ok(self.enqueue(event)?.wait(wait).await)
    }

    /// Queues `event` now, or refuses it when the queue is full. Synchronous, so a caller can
    /// apply the change only once it is known to be queued.
    pub fn enqueue(&self, event: Event) -> Result<Ticket, GatewayError> {
        let ticket = {
            let mut q = lock(&self.queue);
            let full = q.order.len() >= self.events_max;
            if let Some(pending) = q.pending.get_mut(&event.key) {
                if event.entry() > pending.event.entry() {
                    pending.event = event;
                }
                Ticket(pending.published.subscribe())
            } else if full {
                return Err(GatewayError::BusUnavailable {
                    detail: format!(
                        "{} registry changes are already waiting for the bus (bus.outbox_events_max); try again later",
                        q.order.len()
                    ),
                });
            } else {
                let (published, rx) = watch::channel(false);
                q.order.push_back(event.key.clone());
                q.pending
                    .insert(event.key.clone(), Pending { event, published });
                Ticket(rx)
            }
        };
        self.queued.notify_one();
        Ok(ticket)
    }

    /// How many tickets wait on `key`'s queued change (for tests of the bound).
    #[cfg(test)]
    fn waiters(&self, key: &InstanceKey) -> usize {
        lock(&self.queue)
            .pending
            .get(key)
            .map_or(0, |p| p.published.receiver_count())
    }
    /// The oldest queued event, without removing it.
    fn front(&self) -> Option<Event> {
        let q = lock(&self.queue);
        let key = q.order.front()?;
        q.pending.get(key).map(|p| p.event.clone())
    }

    /// Removes the front event if it is still `published` (a newer change to the same instance
    /// that arrived meanwhile stays queued), and wakes the waiters it satisfied.
    fn acknowledge(&self, published: &Event) {
        let mut q = lock(&self.queue);
        let Some(key) = q.order.front().cloned() else {
            return;
        };
        let Some(pending) = q.pending.get_mut(&key) else {
            return;
        };
        if pending.event != *published {
            return;
        }
        if let Some(pending) = q.pending.remove(&key) {
            q.order.pop_front();
            // No waiter left is not an error.
            let _ = pending.published.send(true);
        }
    }

    /// Publishes queued events in order until `stop`, retrying each until the bus takes it.
    pub async fn run(&self, bus: &dyn Bus, stop: CancellationToken) {
        self.publish(bus, Until::Stopped(stop)).await;
    }

    /// At shutdown: publishes what is queued until the queue is empty or `deadline` passes,
    /// retries included, and returns what is left, each logged at warn with its key and kind.
    /// Changes queued while it runs (a request the drain left open) are published too.
    pub async fn flush(&self, bus: &dyn Bus, deadline: Instant) -> Vec<(String, EventKind)> {
        let queued = self.len();
        self.publish(bus, Until::EmptyOr(deadline)).await;
        let lost: Vec<(String, EventKind)> = {
            let q = lock(&self.queue);
            q.order
                .iter()
                .filter_map(|key| q.pending.get(key))
                .map(|p| (p.event.bus_key(), p.event.kind))
                .collect()
        };
        for (key, kind) in &lost {
            tracing::warn!(%key, ?kind, "registry change not published before shutdown: lost");
        }
        if lost.is_empty() {
            tracing::info!(published = queued, "outbox flushed");
        } else {
            tracing::warn!(
                lost = lost.len(),
                "shutdown: registry changes the bus did not take within the drain timeout are lost"
            );
        }
        lost
    }

    /// The publish loop: the front of the queue, in order, with a bounded backoff between
    /// failed attempts; every wait ends when `until` says so.
    async fn publish(&self, bus: &dyn Bus, until: Until) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        let end = until.ended();
        tokio::pin!(end);
        loop {
            let Some(event) = self.front() else {
                if matches!(until, Until::EmptyOr(_)) {
                    return;
                }
                tokio::select! {
                    () = &mut end => return,
                    () = self.queued.notified() => continue,
                }
            };
            let publish = bus.publish(event.bus_key(), Bytes::from(event.encode()));
            let result = tokio::select! {
                () = &mut end => return,
                result = publish => result,
            };
            match result {
                Ok(offset) => {
                    backoff.reset();
                    tracing::debug!(key = %event.bus_key(), offset, "registry event published");
                    self.acknowledge(&event);
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, queued = self.len(), retry_in_ms = delay.as_millis() as u64, "cannot publish registry event; will retry");
                    tokio::select! {
                        () = &mut end => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// The first and the longest wait between publish attempts while the bus fails.
const RETRY_BASE: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// When the publish loop ends.
enum Until {
    /// When the token is cancelled; waits for new changes meanwhile.
    Stopped(CancellationToken),
    /// When the queue is empty, or at the deadline, whichever comes first.
    EmptyOr(Instant),
}

impl Until {
    /// Resolves when the loop must end, whatever it is waiting for.
    async fn ended(&self) {
        match self {
            Self::Stopped(stop) => stop.cancelled().await,
            Self::EmptyOr(deadline) => tokio::time::sleep_until(*deadline).await,
        }
    }
}
