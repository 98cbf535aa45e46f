//! The registry: a last-writer-wins map from `(service, instance_id)` to an entry that is
//! either a live instance or a tombstone, each stamped by a hybrid logical clock.
//!
//! Entries are totally ordered (stamp first, then content, so even two entries with equal
//! stamps compare), and applying an entry keeps the greater one. Merge is therefore
//! commutative, associative and idempotent: gateways that have seen the same events hold the
//! same registry, whatever the order, duplication or redelivery of those events.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;

use sha2::{Digest as _, Sha256};

use crate::Stamp;
use crate::event::Event;
use crate::metadata::Metadata;
use crate::planted::{self, Bug};

#[cfg(test)]
mod tests;

/// Identifies one instance of one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub service: String,
    pub instance_id: String,
}

impl InstanceKey {
    pub fn new(service: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            instance_id: instance_id.into(),
        }
    }

    pub fn bus_key(&self) -> String {
        format!("{}/{}", self.service, self.instance_id)
    }

    /// Whether `bus_key` is this key's [`InstanceKey::bus_key`], without building it.
    pub fn is_bus_key(&self, bus_key: &str) -> bool {
        bus_key
            .strip_prefix(self.service.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|id| id == self.instance_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Removal {
    Deregistered,
    Evicted,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryState {
    Alive {
        addr: String,
        metadata: Metadata,
        lease_ms: u64,
    },
    Removed(Removal),
}

/// One registry entry. The derived order compares the stamp first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub stamp: Stamp,
    pub state: EntryState,
}

impl Entry {
    /// When the lease of a live entry runs out, in Unix milliseconds; `None` for tombstones.
    pub fn expires_ms(&self) -> Option<u64> {
        match &self.state {
            EntryState::Alive { lease_ms, .. } => {
                Some(self.stamp.physical_ms.saturating_add(*lease_ms))
            }
            EntryState::Removed(_) => None,
        }
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_ms().is_some_and(|e| now_ms < e)
    }
}

/// What applying an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The key was new.
    Inserted,
    /// The entry replaced an older one.
    Replaced,
    /// The registry already held this entry or a greater one; nothing changed.
    Unchanged,
}

/// A live instance, as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveInstance<'a> {
    pub key: &'a InstanceKey,
    pub addr: &'a str,
    pub metadata: &'a Metadata,
    pub lease_ms: u64,
    pub expires_ms: u64,
    pub stamp: &'a Stamp,
}

/// The answer to "where can a request for this service go?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// No instance of the service was ever registered, or all were deregistered.
    Unknown,
    /// The service is known but none of its instances is live (leases ran out or evicted).
    NoLive,
    /// The live instances, in instance-id order.
    Live(Vec<LiveInstance<'a>>),
}

/// The map, with what is derived from it kept up to date on every change, so that reading it
/// costs nothing however large the registry: the number of entries per service and the digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    entries: BTreeMap<MapKey, Held>,
    /// Entries held per service (tombstones and expired leases included); a service with
    /// none has no key here.
    per_service: BTreeMap<String, usize>,
    /// The sum modulo 2^128 of [`entry_hash`] over the entries: independent of their order,
    /// and updated by subtracting the old entry's hash and adding the new one's.
    digest: u128,
}

/// An instance key as the map orders it: in [`InstanceKey`]'s order, with the first 16 bytes of
/// each name kept beside it as a number, so that most comparisons in a search of the map read
/// no name. A search compares the sought key with a dozen keys or more, each of whose names
/// lies elsewhere on the heap; at a million entries, reading them was a quarter of the time to
/// apply an event (docs/benchmarks.md, "Registry scale").
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapKey {
    service_prefix: u128,
    instance_prefix: u128,
    key: InstanceKey,
}

impl MapKey {
    fn new(key: InstanceKey) -> Self {
        Self {
            service_prefix: prefix(&key.service),
            instance_prefix: prefix(&key.instance_id),
            key,
        }
    }
}

/// The first 16 bytes of `name`, padded with zero bytes, read as a big-endian number: if
/// `prefix(a) < prefix(b)` then `a < b`, so names whose prefixes differ compare as their
/// prefixes do.
fn prefix(name: &str) -> u128 {
    let bytes = name.as_bytes();
    let mut first = [0u8; 16];
    let n = bytes.len().min(16);
    first[..n].copy_from_slice(&bytes[..n]);
    u128::from_be_bytes(first)
}

/// Compares two names whose prefixes are `a_prefix` and `b_prefix`. Equal prefixes and equal
/// lengths of at most 16 bytes mean equal names (the prefix holds the whole name, and the
/// length tells a name from the same name with zero bytes added); only otherwise are the
/// names read.
fn compare_names(a_prefix: u128, a: &str, b_prefix: u128, b: &str) -> Ordering {
    match a_prefix.cmp(&b_prefix) {
        Ordering::Equal if a.len() == b.len() && a.len() <= 16 => Ordering::Equal,
        Ordering::Equal => a.cmp(b),
        unequal => unequal,
    }
}

impl Ord for MapKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_names(
            self.service_prefix,
            &self.key.service,
            other.service_prefix,
            &other.key.service,
        )
        .then_with(|| {
            compare_names(
                self.instance_prefix,
                &self.key.instance_id,
                other.instance_prefix,
                &other.key.instance_id,
            )
        })
    }
}

/// Searches by an [`InstanceKey`] find what a search by its [`MapKey`] finds: the two orders
/// are the same.
impl std::borrow::Borrow<InstanceKey> for MapKey {
    fn borrow(&self) -> &InstanceKey {
        &self.key
    }
}

impl PartialOrd for MapKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// An entry as the map holds it: with its share of the digest, so that replacing or removing
/// it needs no second hash of the old entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    entry: Entry,
    hash: u128,
}

/// An entry that may be deleted from the bus for good, and its key: what
/// [`Registry::collectable`] finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collectable {
    pub key: InstanceKey,
    pub entry: Entry,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the greater of the held entry and `entry`.
    pub fn apply(&mut self, key: InstanceKey, entry: Entry) -> Applied {
        // One search of the map whatever happens; the key is moved in, never copied, and the
        // service name is copied only for the first entry of a service.
        match self.entries.entry(MapKey::new(key)) {
            btree_map::Entry::Vacant(slot) => {
                let hash = entry_hash(&slot.key().key, &entry);
                self.digest = self.digest.wrapping_add(hash);
                let service = &slot.key().key.service;
                match self.per_service.get_mut(service) {
                    Some(n) => *n += 1,
                    None => {
                        self.per_service.insert(service.clone(), 1);
                    }
                }
                slot.insert(Held { entry, hash });
                Applied::Inserted
            }
            btree_map::Entry::Occupied(mut slot)
                if entry > slot.get().entry
                    || planted::active(Bug::IncomingWins)
                    || (planted::active(Bug::RemovalAlwaysWins)
                        && matches!(entry.state, EntryState::Removed(_))
                        && matches!(slot.get().entry.state, EntryState::Alive { .. })) =>
            {
                let hash = entry_hash(&slot.key().key, &entry);
                let held = slot.get_mut();
                self.digest = self.digest.wrapping_sub(held.hash).wrapping_add(hash);
                *held = Held { entry, hash };
                Applied::Replaced
            }
            btree_map::Entry::Occupied(_) => Applied::Unchanged,
        }
    }

    /// Removes the entry held for `key` if it is `covered` or older: what a delete marker
    /// does. An entry newer than the one the marker was written for (the instance registered
    /// again meanwhile) stays. Returns whether an entry was removed.
    pub fn remove_covered(&mut self, key: &InstanceKey, covered: &Entry) -> bool {
        match self.entries.get(key) {
            Some(held) if held.entry <= *covered => {
                self.remove(key);
                true
            }
            _ => false,
        }
    }

    fn remove(&mut self, key: &InstanceKey) {
        let Some(held) = self.entries.remove(key) else {
            return;
        };
        self.digest = self.digest.wrapping_sub(held.hash);
        if let Some(n) = self.per_service.get_mut(&key.service) {
            *n -= 1;
            if *n == 0 {
                self.per_service.remove(&key.service);
            }
        }
    }

    pub fn apply_event(&mut self, event: &Event) -> Applied {
        self.apply(event.key.clone(), event.entry())
    }

    /// [`Registry::apply_event`] for an event the caller no longer needs: its names and
    /// content move into the registry instead of being copied.
    pub fn apply_owned(&mut self, event: Event) -> Applied {
        let (key, entry) = event.into_parts();
        self.apply(key, entry)
    }

    /// Folds another registry into this one.
    pub fn merge(&mut self, other: &Registry) {
        for (key, held) in &other.entries {
            self.apply(key.key.clone(), held.entry.clone());
        }
    }

    pub fn get(&self, key: &InstanceKey) -> Option<&Entry> {
        self.entries.get(key).map(|held| &held.entry)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = (&InstanceKey, &Entry)> {
        self.entries
            .iter()
            .map(|(key, held)| (&key.key, &held.entry))
    }

    /// The entries of one service, tombstones included, in instance-id order.
    pub fn service_entries<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = (&'a InstanceKey, &'a Entry)> + 'a {
        self.entries
            .range::<InstanceKey, _>(InstanceKey::new(service, "")..)
            .take_while(move |(k, _)| k.key.service == service)
            .map(|(key, held)| (&key.key, &held.entry))
    }

    /// The distinct service names that have at least one entry, in order.
    pub fn services(&self) -> Vec<&str> {
        self.per_service.keys().map(String::as_str).collect()
    }

    /// How many services have at least one entry.
    pub fn service_count(&self) -> usize {
        self.per_service.len()
    }

    /// Whether the registry holds an entry of `service`.
    pub fn knows_service(&self, service: &str) -> bool {
        self.per_service.contains_key(service)
    }

    /// How many entries `service` has, tombstones and expired leases included.
    pub fn entries_of(&self, service: &str) -> usize {
        self.per_service.get(service).copied().unwrap_or(0)
    }

    pub fn lookup<'a>(&'a self, service: &'a str, now_ms: u64) -> Lookup<'a> {
        let mut known = false;
        let mut live = Vec::new();
        for (key, entry) in self.service_entries(service) {
            match &entry.state {
                EntryState::Removed(Removal::Deregistered) => {}
                EntryState::Removed(Removal::Evicted) => known = true,
                EntryState::Alive {
                    addr,
                    metadata,
                    lease_ms,
                } => {
                    known = true;
                    // The one rule of liveness (`Entry::is_live`), as views, status and
                    // collection read it.
                    if entry.is_live(now_ms) || planted::active(Bug::RouteExpired) {
                        live.push(LiveInstance {
                            key,
                            addr,
                            metadata,
                            lease_ms: *lease_ms,
                            expires_ms: entry.stamp.physical_ms.saturating_add(*lease_ms),
                            stamp: &entry.stamp,
                        });
                    }
                }
            }
        }
        match (known, live.is_empty()) {
            (false, _) => Lookup::Unknown,
            (true, true) => Lookup::NoLive,
            (true, false) => Lookup::Live(live),
        }
    }

    /// Up to `limit` entries that may be deleted from the bus for good: not live at `now_ms`,
    /// and `due` by their stamp. The caller's `due` accepts a stamp only once no registration
    /// stamped earlier can still be live anywhere (now, less the longest lease and the clock
    /// drift bound). One pass over the entries, in key order; the registry is not changed.
    pub fn collectable(
        &self,
        now_ms: u64,
        limit: usize,
        due: impl Fn(&Stamp) -> bool,
    ) -> Vec<Collectable> {
        self.entries()
            .filter(|(_, entry)| !entry.is_live(now_ms) && due(&entry.stamp))
            .take(limit)
            .map(|(key, entry)| Collectable {
                key: key.clone(),
                entry: entry.clone(),
            })
            .collect()
    }

    /// A 128-bit digest of the entries: the sum modulo 2^128 of each entry's
    /// `entry_hash`. Two registries with the same entries have the same digest, whatever the
    /// order they were applied in. Kept up to date by every change, so reading it is free
    /// (docs/decisions/0023).
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// The digest as `/v1/cluster` and the simulation show it: 32 hex digits.
    pub fn digest_hex(&self) -> String {
        format!("{:032x}", self.digest)
    }
}

/// What [`entry_hash`] hashes first, so that no other use of SHA-256 in the gateway can
/// produce an entry's share by accident, and a change to the encoding below changes the name.
const ENTRY_HASH_DOMAIN: &[u8] = b"switchyard registry entry v2\0";

/// One entry's share of the digest: the first 128 bits of SHA-256 over its key and content,
/// every field length-prefixed or fixed-width, read as a little-endian number.
fn entry_hash(key: &InstanceKey, entry: &Entry) -> u128 {
    let mut h = EntryHasher(Sha256::new());
    h.0.update(ENTRY_HASH_DOMAIN);
    h.str(&key.service);
    h.str(&key.instance_id);
    h.u64(entry.stamp.physical_ms);
    h.u64(u64::from(entry.stamp.logical));
    h.str(&entry.stamp.node_id);
    match &entry.state {
        EntryState::Alive {
            addr,
            metadata,
            lease_ms,
        } => {
            h.u64(0);
            h.str(addr);
            h.u64(*lease_ms);
            h.u64(metadata.len() as u64);
            for (k, v) in metadata {
                h.str(k);
                h.str(v);
            }
        }
        EntryState::Removed(Removal::Deregistered) => h.u64(1),
        EntryState::Removed(Removal::Evicted) => h.u64(2),
    }
    let out = h.0.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_le_bytes(first)
}

/// Feeds fields to SHA-256 so that no two different sequences of fields give the same bytes.
struct EntryHasher(Sha256);

impl EntryHasher {
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }

    /// Length-prefixed, so that ("ab", "c") and ("a", "bc") hash differently.
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
    }
}
