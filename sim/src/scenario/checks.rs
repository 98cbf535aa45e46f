//! The invariant checkers and the reference they compare with.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use switchyard::Node;
use switchyard::bus::MemoryBus;
use switchyard_core::event::Event;
use switchyard_core::planted::{self, Bug};
use switchyard_core::registry::Entry;
use switchyard_core::{InstanceKey, Registry};

use super::SAMPLE;
use super::workload::{Ack, GHOST, GHOST_IDS};
use crate::hostile::Hostile;

/// The registry folded from everything on the log but the records the run wrote there as
/// hostile ones that a gateway must quarantine (`quarantined`, by offset), with the correct
/// merge (a planted bug is lifted while the reference is computed): events applied, delete
/// markers removing what they cover. The reference does not ask the gateways' own
/// admissibility check: it knows which records were hostile because it wrote them, so a
/// gateway that admits one, or quarantines an honest one, diverges from it.
pub(super) fn reference(log: &MemoryBus, quarantined: &BTreeSet<u64>) -> Registry {
    fold(log, quarantined).0
}

/// For each key, the newest entry a delete marker on the log removed.
pub(super) fn collected(
    log: &MemoryBus,
    quarantined: &BTreeSet<u64>,
) -> BTreeMap<InstanceKey, Entry> {
    fold(log, quarantined).1
}

fn fold(log: &MemoryBus, quarantined: &BTreeSet<u64>) -> (Registry, BTreeMap<InstanceKey, Entry>) {
    let planted_bug = Bug::ALL.into_iter().find(|b| planted::active(*b));
    planted::plant(None);
    let mut registry = Registry::new();
    let mut collected: BTreeMap<InstanceKey, Entry> = BTreeMap::new();
    for record in log.snapshot() {
        if quarantined.contains(&record.offset) {
            continue;
        }
        let Ok(event) = Event::decode(&record.payload) else {
            continue;
        };
        if record.delete {
            let covered = event.entry();
            registry.remove_covered(&event.key, &covered);
            let newest = collected
                .entry(event.key)
                .or_insert_with(|| covered.clone());
            if covered > *newest {
                *newest = covered;
            }
        } else {
            registry.apply_event(&event);
        }
    }
    planted::plant(planted_bug);
    (registry, collected)
}

/// A gateway that reports ready must have read the bus up to the target it saw at start.
pub(super) fn check_ready_implies_caught_up(
    nodes: &BTreeMap<String, Arc<Node>>,
    down: &BTreeSet<String>,
    now_ms: u64,
    violations: &mut Vec<String>,
) {
    for (name, node) in nodes {
        if down.contains(name) {
            continue;
        }
        let s = node.status();
        if s.ready && s.bus_position < s.catch_up_target {
            violations.push(format!(
                "{name} reported ready at {now_ms} ms at bus position {} before its catch-up target {}",
                s.bus_position, s.catch_up_target
            ));
        }
    }
}

pub(super) fn converged(
    nodes: &BTreeMap<String, Arc<Node>>,
    log: &MemoryBus,
    quarantined: &BTreeSet<u64>,
    gateways: &[String],
) -> bool {
    let want = reference(log, quarantined).digest();
    gateways.iter().all(|g| {
        nodes.get(g).is_some_and(|n| {
            let s = n.status();
            s.ready && s.outbox_pending == 0 && n.registry().digest() == want
        })
    })
}

pub(super) fn digests(
    nodes: &BTreeMap<String, Arc<Node>>,
    log: &MemoryBus,
    quarantined: &BTreeSet<u64>,
) -> String {
    let mut out = format!("reference={}", reference(log, quarantined).digest_hex());
    for (name, node) in nodes {
        out.push_str(&format!(" {name}={}", node.registry().digest_hex()));
    }
    out
}

/// No acknowledged change is lost: for every change answered 200 (on the bus), the
/// reference holds an entry for that instance at least as new, or a delete marker removed one
/// at least as new (the change ran its course and was collected). A registration can be
/// covered only by a later change, and a deregistration cannot be undone by an older
/// registration.
pub(super) fn check_acknowledged(
    reference: &Registry,
    collected: &BTreeMap<InstanceKey, Entry>,
    acks: &[Ack],
    violations: &mut Vec<String>,
) {
    for ack in acks.iter().filter(|a| a.status == 200) {
        let Some(stamp) = &ack.stamp else {
            violations.push(format!(
                "acknowledged change of {:?} carried no stamp",
                ack.key
            ));
            continue;
        };
        if collected.get(&ack.key).is_some_and(|e| e.stamp >= *stamp) {
            continue;
        }
        match reference.get(&ack.key) {
            Some(entry) if entry.stamp >= *stamp => {}
            Some(entry) => violations.push(format!(
                "acknowledged change of {}/{} at {stamp:?} lost: the log ends at {:?}",
                ack.key.service, ack.key.instance_id, entry.stamp
            )),
            None => violations.push(format!(
                "acknowledged change of {}/{} at {stamp:?} is not on the log",
                ack.key.service, ack.key.instance_id
            )),
        }
    }
}

/// Nothing appears that no one registered.
pub(super) fn check_no_phantoms(
    reference: &Registry,
    services: &[String],
    violations: &mut Vec<String>,
) {
    let ghosts: BTreeSet<String> = (0..GHOST_IDS).map(|i| format!("g-{i}")).collect();
    for (key, _) in reference.entries() {
        let known = (key.service == GHOST && ghosts.contains(&key.instance_id))
            || (key.service == SAMPLE && services.contains(&key.instance_id));
        if !known {
            violations.push(format!(
                "{}/{} was never registered",
                key.service, key.instance_id
            ));
        }
    }
}

/// The gateways as the continuous checks see them between two steps: the live incarnations,
/// with the wall clock each reads (simulated time, the epoch and its skew).
pub(super) struct Live<'a> {
    pub nodes: &'a BTreeMap<String, Arc<Node>>,
    pub down: &'a BTreeSet<String>,
    pub skews: &'a BTreeMap<String, i64>,
    pub epoch_ms: u64,
    pub now_ms: u64,
}

impl Live<'_> {
    /// Each gateway that is up, with its wall clock now (Unix ms).
    fn each(&self) -> impl Iterator<Item = (&String, &Arc<Node>, u64)> {
        self.nodes
            .iter()
            .filter(|(name, _)| !self.down.contains(*name))
            .map(|(name, node)| {
                let skew = self.skews.get(name).copied().unwrap_or(0);
                let wall = (self.epoch_ms + self.now_ms).saturating_add_signed(skew);
                (name, node, wall)
            })
    }
}

/// Reports a violation once per check and gateway: a broken bound is seen at every check
/// after it broke, and one sentence says it.
#[derive(Debug, Default)]
pub(super) struct Reported(BTreeSet<(&'static str, String)>);

impl Reported {
    fn once(
        &mut self,
        check: &'static str,
        gateway: &str,
        violations: &mut Vec<String>,
        say: impl FnOnce() -> String,
    ) {
        if self.0.insert((check, gateway.to_owned())) {
            violations.push(say());
        }
    }
}

/// What the pinning check allows: each service's lease (the longest its instances ask for)
/// and the run's tolerance.
pub(super) struct Leases {
    pub sample_ms: u64,
    pub ghost_ms: u64,
    /// How far an honest stamp can be ahead of a reader's clock: the spread of the gateways'
    /// clocks (twice the largest skew), plus the millisecond a clock borrows after a stamp
    /// with the largest logical counter, plus step rounding.
    pub tolerance_ms: u64,
}

impl Leases {
    fn of(&self, service: &str) -> Option<u64> {
        match service {
            SAMPLE => Some(self.sample_ms),
            GHOST => Some(self.ghost_ms),
            _ => None,
        }
    }
}

/// No entry is pinned: an instance routable at a gateway stays routable there for at most its
/// lease (plus the tolerance) unless renewed, so if its service stops renewing now, it is
/// unroutable within its lease, whatever the log holds. A stamp from the far future, a lease
/// beyond the bound, or a clock pushed ahead by either would keep an entry routable longer.
pub(super) fn check_not_pinned(
    live: &Live<'_>,
    leases: &Leases,
    reported: &mut Reported,
    violations: &mut Vec<String>,
) {
    for (name, node, wall) in live.each() {
        let registry = node.registry();
        for (key, entry) in registry.entries() {
            let (Some(lease_ms), Some(expires_ms)) = (leases.of(&key.service), entry.expires_ms())
            else {
                continue;
            };
            let left_ms = expires_ms.saturating_sub(wall);
            if left_ms > lease_ms + leases.tolerance_ms {
                reported.once("pinned", name, violations, || {
                    format!(
                        "{}/{} is pinned at {name}: at {} ms it stays routable for another {left_ms} ms (stamp {}.{}@{}), beyond its lease of {lease_ms} ms and the tolerance of {} ms",
                        key.service, key.instance_id, live.now_ms, entry.stamp.physical_ms,
                        entry.stamp.logical, entry.stamp.node_id, leases.tolerance_ms
                    )
                });
            }
        }
    }
}

/// No gateway's hybrid logical clock runs ahead of its own wall clock by more than the drift
/// bound: it only follows admissible stamps.
pub(super) fn check_clock_within_drift(
    live: &Live<'_>,
    drift_max_ms: u64,
    reported: &mut Reported,
    violations: &mut Vec<String>,
) {
    for (name, node, wall) in live.each() {
        let ahead_ms = node.hlc_ahead_of_ms(wall);
        if ahead_ms > drift_max_ms {
            reported.once("clock", name, violations, || {
                format!(
                    "{name}'s clock runs {ahead_ms} ms ahead of its wall clock at {} ms, beyond the drift bound of {drift_max_ms} ms",
                    live.now_ms
                )
            });
        }
    }
}

/// No hostile record a gateway must quarantine is ever in a gateway's registry: no entry
/// equal (stamp and state) to the event such a record carries.
pub(super) fn check_hostile_absent(
    live: &Live<'_>,
    hostile: &[(u64, Hostile)],
    reported: &mut Reported,
    violations: &mut Vec<String>,
) {
    for (name, node, _) in live.each() {
        let registry = node.registry();
        for (offset, record) in hostile {
            let Some(event) = record.event.as_ref().filter(|_| !record.kind.admissible()) else {
                continue;
            };
            let held = registry.get(&event.key);
            if held.is_some_and(|e| e.stamp == event.stamp && e.state == event.entry().state) {
                reported.once("hostile", name, violations, || {
                    format!(
                        "{name} holds a hostile record at {} ms: offset {offset}, {}",
                        live.now_ms,
                        record.describe()
                    )
                });
            }
        }
    }
}

pub(super) fn trace_hash(trace: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in trace {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}
