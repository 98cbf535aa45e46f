//! Small shared pieces every owner uses: poison-tolerant locking, the node's one seeded
//! random generator, and the boxed future of the seam traits.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand::SeedableRng;
use rand::rngs::SmallRng;

/// A boxed, sendable future, as the seam traits and request policies return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent
/// at each step, so a panic elsewhere must not take the gateway down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads an `RwLock`, ignoring poisoning (see [`lock`]).
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Writes an `RwLock`, ignoring poisoning (see [`lock`]).
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The node's one random generator, seeded from the seams. Request ids, span ids and the
/// balancer's picks all draw from it in the order requests make them, so a simulation seed
/// replays the same draws.
#[derive(Debug)]
pub struct SharedRng(Mutex<SmallRng>);

impl SharedRng {
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(SmallRng::seed_from_u64(seed)))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut SmallRng) -> T) -> T {
        f(&mut lock(&self.0))
    }
}
