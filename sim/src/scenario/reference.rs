//! The reference registry, folded from the log with a merge written here, apart from the
//! gateways' registry code (`switchyard_core::registry`). A bug in the shared merge (the
//! order it keeps, how a delete marker covers an entry) then makes the gateways differ from
//! the reference instead of agreeing with a reference that has the same bug.
//!
//! Only the codec is shared (`Event::decode`, and `Event::entry`, which maps an event's kind to
//! the state it produces): the reference must read what the gateways read.
//!
//! The order, stated here on its own: an entry is newer than another if its stamp is
//! (physical ms, then logical counter, then node id); at equal stamps (which honest nodes never
//! issue twice) a removal beats a live entry, an eviction beats a deregistration, and two live
//! entries compare by address, metadata and lease. A delete marker removes the entry held for
//! its key if that entry is the one the marker carries or older.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use switchyard::bus::Record;
use switchyard_core::event::Event;
use switchyard_core::registry::{Entry, EntryState, Removal};
use switchyard_core::{InstanceKey, Registry, Stamp};

/// What the log holds once folded: the entry of each key, and for each key the newest entry
/// a delete marker removed.
#[derive(Debug, Default, Clone)]
pub(super) struct Reference {
    pub entries: BTreeMap<InstanceKey, Entry>,
    pub collected: BTreeMap<InstanceKey, Entry>,
}

fn stamp_order(a: &Stamp, b: &Stamp) -> Ordering {
    (a.physical_ms, a.logical, a.node_id.as_str()).cmp(&(
        b.physical_ms,
        b.logical,
        b.node_id.as_str(),
    ))
}

fn state_rank(state: &EntryState) -> u8 {
    match state {
        EntryState::Alive { .. } => 0,
        EntryState::Removed(Removal::Deregistered) => 1,
        EntryState::Removed(Removal::Evicted) => 2,
    }
}

/// Which of two entries for one key the registry must keep (see the module's order).
pub fn newer(a: &Entry, b: &Entry) -> Ordering {
    stamp_order(&a.stamp, &b.stamp)
        .then_with(|| state_rank(&a.state).cmp(&state_rank(&b.state)))
        .then_with(|| match (&a.state, &b.state) {
            (
                EntryState::Alive {
                    addr: aa,
                    metadata: am,
                    lease_ms: al,
                },
                EntryState::Alive {
                    addr: ba,
                    metadata: bm,
                    lease_ms: bl,
                },
            ) => (aa, am, al).cmp(&(ba, bm, bl)),
            _ => Ordering::Equal,
        })
}

/// Folds `records` (the log, in offset order) leaving out the offsets in `quarantined`.
pub(super) fn fold(records: &[Record], quarantined: &BTreeSet<u64>) -> Reference {
    let mut out = Reference::default();
    for record in records {
        if quarantined.contains(&record.offset) {
            continue;
        }
        let Ok(event) = Event::decode(&record.payload) else {
            continue;
        };
        let entry = event.entry();
        if record.delete {
            if out
                .entries
                .get(&event.key)
                .is_some_and(|held| newer(held, &entry) != Ordering::Greater)
            {
                out.entries.remove(&event.key);
            }
            let newest = out
                .collected
                .entry(event.key)
                .or_insert_with(|| entry.clone());
            if newer(&entry, newest) == Ordering::Greater {
                *newest = entry;
            }
        } else {
            match out.entries.get_mut(&event.key) {
                Some(held) if newer(&entry, held) != Ordering::Greater => {}
                Some(held) => *held = entry,
                None => {
                    out.entries.insert(event.key, entry);
                }
            }
        }
    }
    out
}

impl Reference {
    /// The reference as a gateway registry, for its digest in the trace only (each key is
    /// inserted once, so no merge decides anything).
    pub fn as_registry(&self) -> Registry {
        let mut registry = Registry::new();
        for (key, entry) in &self.entries {
            registry.apply(key.clone(), entry.clone());
        }
        registry
    }

    /// The first difference between `registry` and the reference, or `None` if they hold the
    /// same entries.
    pub fn differs(&self, registry: &Registry) -> Option<String> {
        for (key, entry) in registry.entries() {
            match self.entries.get(key) {
                Some(want) if want == entry => {}
                Some(want) => {
                    return Some(format!(
                        "{}/{} is {} there and {} in the reference",
                        key.service,
                        key.instance_id,
                        describe(entry),
                        describe(want)
                    ));
                }
                None => {
                    return Some(format!(
                        "{}/{} is {} there and absent from the reference",
                        key.service,
                        key.instance_id,
                        describe(entry)
                    ));
                }
            }
        }
        let absent = self
            .entries
            .iter()
            .find(|(key, _)| registry.get(key).is_none())
            .map(|(key, want)| {
                format!(
                    "{}/{} is absent there and {} in the reference",
                    key.service,
                    key.instance_id,
                    describe(want)
                )
            });
        absent.or_else(|| self.index_differs(registry))
    }

    /// What the registry says of itself beside its entries (their number, its services and
    /// each service's count, which listings, metrics and the entry quota read) against the
    /// reference's entries, once the entries agree.
    fn index_differs(&self, registry: &Registry) -> Option<String> {
        let mut per_service: BTreeMap<&str, usize> = BTreeMap::new();
        for key in self.entries.keys() {
            *per_service.entry(&key.service).or_default() += 1;
        }
        let services: Vec<&str> = per_service.keys().copied().collect();
        let listed = registry.entries().count();
        if registry.len() != self.entries.len() || listed != self.entries.len() {
            return Some(format!(
                "it counts {} entries and lists {listed}, and holds {}",
                registry.len(),
                self.entries.len()
            ));
        }
        if registry.services() != services || registry.service_count() != services.len() {
            return Some(format!(
                "its services are {:?} ({} counted), the entries' {services:?}",
                registry.services(),
                registry.service_count()
            ));
        }
        // A name no service can have (names are never empty): the quota on services and the
        // clean-up of per-service metrics ask the registry about services it does not hold.
        if registry.knows_service("") || registry.entries_of("") != 0 {
            return Some("it claims a service it holds no entry of".to_string());
        }
        let counted = per_service.into_iter().find(|&(service, n)| {
            registry.entries_of(service) != n || !registry.knows_service(service)
        });
        if let Some((service, n)) = counted {
            return Some(format!(
                "it counts {} entries of {service}, which has {n}",
                registry.entries_of(service)
            ));
        }
        let want = spec_digest(self.entries.iter());
        let (hex, value) = (registry.digest_hex(), format!("{:032x}", registry.digest()));
        (hex != want || value != want)
            .then(|| format!("its digest is {hex} (as a number {value}), its entries' {want}"))
    }
}

/// The registry digest of `entries` as docs/ARCHITECTURE.md states it, computed here apart from
/// the gateway's code: the sum modulo 2^128 of each entry's share, the first 16 bytes
/// (read little-endian) of SHA-256 over a domain name, then the key and the content, each
/// number as 8 little-endian bytes and each string as its length so written, then its bytes.
/// Operators and the console compare gateways by this value (docs/operations.md), so it must be
/// this function of the entries and nothing else: not zero, not a count, not blind to a field.
pub(super) fn spec_digest<'a>(
    entries: impl Iterator<Item = (&'a InstanceKey, &'a Entry)>,
) -> String {
    fn num(h: &mut Sha256, v: u64) {
        h.update(v.to_le_bytes());
    }
    fn text(h: &mut Sha256, s: &str) {
        num(h, s.len() as u64);
        h.update(s.as_bytes());
    }
    let mut sum = 0u128;
    for (key, entry) in entries {
        let mut h = Sha256::new();
        h.update(b"switchyard registry entry v2\0");
        text(&mut h, &key.service);
        text(&mut h, &key.instance_id);
        num(&mut h, entry.stamp.physical_ms);
        num(&mut h, u64::from(entry.stamp.logical));
        text(&mut h, &entry.stamp.node_id);
        match &entry.state {
            EntryState::Alive {
                addr,
                metadata,
                lease_ms,
            } => {
                num(&mut h, 0);
                text(&mut h, addr);
                num(&mut h, *lease_ms);
                num(&mut h, metadata.len() as u64);
                for (k, v) in metadata {
                    text(&mut h, k);
                    text(&mut h, v);
                }
            }
            EntryState::Removed(Removal::Deregistered) => num(&mut h, 1),
            EntryState::Removed(Removal::Evicted) => num(&mut h, 2),
        }
        let out = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&out[..16]);
        sum = sum.wrapping_add(u128::from_le_bytes(first));
    }
    format!("{sum:032x}")
}

/// An entry in a sentence: `live at 1800000001234.0@gw-1`.
pub(super) fn describe(entry: &Entry) -> String {
    let state = match &entry.state {
        EntryState::Alive { .. } => "live",
        EntryState::Removed(Removal::Deregistered) => "deregistered",
        EntryState::Removed(Removal::Evicted) => "evicted",
    };
    format!(
        "{state} at {}.{}@{}",
        entry.stamp.physical_ms, entry.stamp.logical, entry.stamp.node_id
    )
}
