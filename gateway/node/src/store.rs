//! The registry store: this node's registry, its hybrid logical clock, whether both have caught
//! up with the bus, and the feed of the changes applied to it. Every change, local or read from the bus, goes through
//! [`Store::apply`], which announces it to watchers under the write lock, so watchers see the
//! changes in the order they were applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use switchyard_core::event::Event;
use switchyard_core::registry::{Applied, Entry};
use switchyard_core::{Hlc, InstanceKey, Registry, Stamp};
use tokio::sync::broadcast;

use crate::seams::Clock;
use crate::sync::{lock, read, write};

/// Registry changes held for each [`Store::watch`] subscriber before it lags behind.
pub const CHANGES_BUFFERED_MAX: usize = 1024;

/// One node's registry, clock and change feed.
pub struct Store {
    node_id: String,
    clock: Arc<dyn Clock>,
    registry: RwLock<Registry>,
    hlc: Mutex<Hlc>,
    changes: broadcast::Sender<Event>,
    /// Set once replication has read the bus up to the mark it saw at start.
    caught_up: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new(node_id: String, clock: Arc<dyn Clock>) -> Self {
        Self {
            hlc: Mutex::new(Hlc::new(node_id.clone())),
            node_id,
            clock,
            registry: RwLock::new(Registry::new()),
            changes: broadcast::channel(CHANGES_BUFFERED_MAX).0,
            caught_up: AtomicBool::new(false),
        }
    }

    /// The id of the node this store belongs to: the origin of its own events.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Wall time, Unix ms, from the clock seam.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The registry, for reading. Hold the guard briefly: changes wait for it.
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        read(&self.registry)
    }

    /// Every registry change this node applies from now on, local or from the bus, in the
    /// order applied. A subscriber that falls [`CHANGES_BUFFERED_MAX`] changes behind gets
    /// `Lagged` and must re-read the registry.
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.changes.subscribe()
    }

    /// Applies an event and announces it to watchers if it changed the registry.
    pub fn apply(&self, event: &Event) -> Applied {
        let mut registry = write(&self.registry);
        let applied = registry.apply_event(event);
        if applied != Applied::Unchanged {
            // No watcher is not an error.
            let _ = self.changes.send(event.clone());
        }
        applied
    }

    /// Applies `events` in order under one hold of the write lock, announcing each change to
    /// watchers; returns how many changed the registry. The caller bounds how many it passes
    /// (readers wait for the lock meanwhile). With no watcher, each event's names and content
    /// move into the registry instead of being copied. A watcher that subscribes meanwhile
    /// either finds a change in the registry when it reads it (after this returns) or in its
    /// feed, as with [`Store::apply`].
    pub fn apply_all(&self, events: impl IntoIterator<Item = Event>) -> usize {
        let mut registry = write(&self.registry);
        let watched = self.changes.receiver_count() > 0;
        let mut changed = 0;
        for event in events {
            let applied = if watched {
                let applied = registry.apply_event(&event);
                if applied != Applied::Unchanged {
                    // No watcher left is not an error.
                    let _ = self.changes.send(event);
                }
                applied
            } else {
                registry.apply_owned(event)
            };
            if applied != Applied::Unchanged {
                changed += 1;
            }
        }
        changed
    }

    /// A new stamp for a change made here, greater than every stamp seen.
    pub fn tick(&self) -> Stamp {
        lock(&self.hlc).tick(self.now_ms())
    }

    /// Moves the clock past a stamp read from the bus. The caller has checked that the stamp
    /// is admissible ([`switchyard_core::event::Event::admissible`]).
    pub fn observe(&self, stamp: &Stamp) {
        lock(&self.hlc).observe(stamp, self.now_ms());
    }

    /// Whether the registry and the clock have seen the bus up to the mark it had when this
    /// node started. Before that, a stamp from [`Store::tick`] may be older than a record
    /// already on the bus for the same instance, so a change made here could lose to it.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Set by replication once it has read up to its catch-up target; never unset.
    pub fn mark_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
    }

    /// How far the clock runs ahead of `wall_ms`, in ms. With [`Store::now_ms`], the gauge
    /// `switchyard_hlc_ahead_ms`; the simulation's checkers pass the wall time they computed.
    pub fn hlc_ahead_of_ms(&self, wall_ms: u64) -> u64 {
        lock(&self.hlc).ahead_of_ms(wall_ms)
    }

    /// Removes the entry held for `key` if a delete marker for `covered` covers it (it is
    /// `covered` or older); returns whether it did. Not announced to watchers: the entry was
    /// not routable, and no view changes.
    pub fn remove_covered(&self, key: &InstanceKey, covered: &Entry) -> bool {
        write(&self.registry).remove_covered(key, covered)
    }
}
