//! The publish outbox: registry changes wait here until the bus acknowledges them.
//!
//! A change is applied locally at once and queued; one publisher task publishes the queue in
//! order, retrying with a bounded backoff while the bus is unreachable. The queue holds at most
//! one event per instance (a newer change to a queued instance replaces the older one in
//! place, since only the newest can win anyway), and at most `events_max` instances; past that
//! a change is refused with a clear error rather than dropped silently.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::event::Event;
use switchyard_core::{GatewayError, InstanceKey};
use tokio::sync::{Notify, oneshot};
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
pub struct Ticket(oneshot::Receiver<()>);

impl Ticket {
    pub async fn wait(self, wait: Duration) -> Delivery {
        match tokio::time::timeout(wait, self.0).await {
            Ok(Ok(())) => Delivery::Published,
            // The publisher stopped (shutdown) or the wait ran out: the change stays queued.
            Ok(Err(_)) | Err(_) => Delivery::Queued,
        }
    }
}

#[derive(Debug)]
struct Pending {
    event: Event,
    waiters: Vec<oneshot::Sender<()>>,
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
        let (tx, rx) = oneshot::channel();
        {
            let mut q = lock(&self.queue);
            let full = q.order.len() >= self.events_max;
            if let Some(pending) = q.pending.get_mut(&event.key) {
                if event.entry() > pending.event.entry() {
                    pending.event = event;
                }
                pending.waiters.push(tx);
            } else if full {
                return Err(GatewayError::BusUnavailable {
                    detail: format!(
                        "{} registry changes are already waiting for the bus (bus.outbox_events_max); try again later",
                        q.order.len()
                    ),
                });
            } else {
                q.order.push_back(event.key.clone());
                q.pending.insert(
                    event.key.clone(),
                    Pending {
                        event,
                        waiters: vec![tx],
                    },
                );
            }
        }
        self.queued.notify_one();
        Ok(Ticket(rx))
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
            for waiter in pending.waiters {
                let _ = waiter.send(());
            }
        }
    }

    /// Publishes queued events in order until `stop`, retrying each until the bus takes it.
    pub async fn run(&self, bus: &dyn Bus, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let Some(event) = self.front() else {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.queued.notified() => continue,
                }
            };
            let publish = bus.publish(event.bus_key(), Bytes::from(event.encode()));
            let result = tokio::select! {
                () = stop.cancelled() => return,
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
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
