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

/// The registry folded from everything on the log, with the correct merge (a planted bug is
/// lifted while the reference is computed): events applied, delete markers removing what
/// they cover.
pub(super) fn reference(log: &MemoryBus) -> Registry {
    fold(log).0
}

/// For each key, the newest entry a delete marker on the log removed.
pub(super) fn collected(log: &MemoryBus) -> BTreeMap<InstanceKey, Entry> {
    fold(log).1
}

fn fold(log: &MemoryBus) -> (Registry, BTreeMap<InstanceKey, Entry>) {
    let planted_bug = Bug::ALL.into_iter().find(|b| planted::active(*b));
    planted::plant(None);
    let mut registry = Registry::new();
    let mut collected: BTreeMap<InstanceKey, Entry> = BTreeMap::new();
    for record in log.snapshot() {
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
    gateways: &[String],
) -> bool {
    let want = reference(log).digest();
    gateways.iter().all(|g| {
        nodes.get(g).is_some_and(|n| {
            let s = n.status();
            s.ready && s.outbox_pending == 0 && n.registry().digest() == want
        })
    })
}

pub(super) fn digests(nodes: &BTreeMap<String, Arc<Node>>, log: &MemoryBus) -> String {
    let mut out = format!("reference={:016x}", reference(log).digest());
    for (name, node) in nodes {
        out.push_str(&format!(" {name}={:016x}", node.registry().digest()));
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
