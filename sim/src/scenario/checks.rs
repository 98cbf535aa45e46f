//! The invariant checkers and the reference they compare with.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use std::cmp::Ordering;
use switchyard::Node;
use switchyard::bus::{MemoryBus, Record};
use switchyard::telemetry::QuarantineReason;

use switchyard_core::event::{Event, EventBounds};
use switchyard_core::registry::Entry;
use switchyard_core::{InstanceKey, Stamp};

use super::SAMPLE;
use super::reference::{Reference, describe};
use super::workload::{Ack, GHOST, GHOST_IDS};
use crate::hostile::{Hostile, quarantine_reason};

/// The reference: everything on the log but the records the run wrote there as hostile ones
/// that a gateway must quarantine (`quarantined`, by offset), folded with the simulation's own
/// merge (`reference.rs`), not the gateways' registry code: events applied, delete markers
/// removing what they cover. It does not ask the gateways' own admissibility check either: it
/// knows which records were hostile because it wrote them, so a gateway that admits one, or
/// quarantines an honest one, diverges from it.
pub(super) fn reference(log: &MemoryBus, quarantined: &BTreeSet<u64>) -> Reference {
    super::reference::fold(&log.snapshot(), quarantined)
}

/// [`reference`], folded again only when the log or the quarantined offsets changed. The log
/// changes only by appends (compaction runs within them) and the quarantined offsets only
/// grow, so the log's next offset and their number name what a fold would give. The
/// convergence check asks at every check after the heal until the cluster converges, and a
/// fold of the whole log each time was a tenth of a run's CPU.
#[derive(Default)]
pub(super) struct ReferenceCache {
    folded: Option<((u64, usize), Reference)>,
}

impl ReferenceCache {
    pub(super) fn get(&mut self, log: &MemoryBus, quarantined: &BTreeSet<u64>) -> &Reference {
        let key = (log.next_offset(), quarantined.len());
        if self.folded.as_ref().is_some_and(|(k, _)| *k != key) {
            self.folded = None;
        }
        &self
            .folded
            .get_or_insert_with(|| (key, reference(log, quarantined)))
            .1
    }
}

pub(super) fn converged(
    nodes: &BTreeMap<String, Arc<Node>>,
    want: &Reference,
    gateways: &[String],
) -> bool {
    gateways.iter().all(|g| {
        nodes.get(g).is_some_and(|n| {
            let s = n.status();
            s.ready && s.outbox_pending == 0 && want.differs(&n.registry()).is_none()
        })
    })
}

/// The reference's digest and each gateway's, then the first difference of each gateway from
/// the reference entry by entry.
pub(super) fn digests(
    nodes: &BTreeMap<String, Arc<Node>>,
    log: &MemoryBus,
    quarantined: &BTreeSet<u64>,
) -> String {
    let reference = reference(log, quarantined);
    let mut out = format!("reference={}", reference.as_registry().digest_hex());
    for (name, node) in nodes {
        out.push_str(&format!(" {name}={}", node.registry().digest_hex()));
    }
    for (name, node) in nodes {
        if let Some(difference) = reference.differs(&node.registry()) {
            out.push_str(&format!(
                "; {name} differs from the independent reference: {difference}"
            ));
        }
    }
    out
}

/// No acknowledged change is lost, strictly: for every change answered 200 (on the bus), the
/// reference holds that very change (its stamp and the state it asked for) or an entry with a
/// strictly greater stamp, or a delete marker removed such an entry (the change ran its course
/// and was collected). An entry with the change's own stamp but another state is a change that
/// lost to an equal stamp, and is reported: a change is only ever covered by a later one, and a
/// deregistered instance cannot come back from an older event.
pub(super) fn check_acknowledged(
    reference: &Reference,
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
        let holds = |entry: &Entry| match stamp_cmp(&entry.stamp, stamp) {
            Ordering::Greater => true,
            Ordering::Equal => ack.op.matches(&entry.state),
            Ordering::Less => false,
        };
        if reference.collected.get(&ack.key).is_some_and(holds) {
            continue;
        }
        match reference.entries.get(&ack.key) {
            Some(entry) if holds(entry) => {}
            Some(entry) => violations.push(format!(
                "acknowledged {} of {}/{} at {}.{}@{} (via {} at {} ms) lost: the log ends with it {}",
                ack.op.name(),
                ack.key.service,
                ack.key.instance_id,
                stamp.physical_ms,
                stamp.logical,
                stamp.node_id,
                ack.gateway,
                ack.sent_ms,
                describe(entry)
            )),
            None => violations.push(format!(
                "acknowledged {} of {}/{} at {stamp:?} is not on the log",
                ack.op.name(),
                ack.key.service,
                ack.key.instance_id
            )),
        }
    }
}

/// Stamps compared field by field, apart from the core's derived order.
fn stamp_cmp(a: &Stamp, b: &Stamp) -> Ordering {
    (a.physical_ms, a.logical, a.node_id.as_str()).cmp(&(
        b.physical_ms,
        b.logical,
        b.node_id.as_str(),
    ))
}

/// Outside `short_retention` a gateway collects only the entries it stamped itself: another
/// gateway's tombstone waits for `registry.tombstone_retention_ms` (a day, far beyond a run)
/// before anyone may delete it, in case its writer's change is still on its way. So every
/// delete marker on the log, hostile records aside, names as its writer (the event's origin)
/// the node that stamped the entry it covers.
pub(super) fn check_markers_by_their_stamper(
    log: &MemoryBus,
    hostile: &BTreeSet<u64>,
    violations: &mut Vec<String>,
) {
    let foreign: Vec<String> = log
        .snapshot()
        .iter()
        .filter(|r| r.delete && !hostile.contains(&r.offset))
        .filter_map(|r| Event::decode(&r.payload).ok().map(|e| (r.offset, e)))
        .filter(|(_, e)| e.origin_node != e.stamp.node_id)
        .map(|(offset, e)| {
            format!(
                "offset {offset}: {} wrote a delete marker for {}/{} stamped by {}",
                e.origin_node, e.key.service, e.key.instance_id, e.stamp.node_id
            )
        })
        .collect();
    if let Some(first) = foreign.first() {
        violations.push(format!(
            "{} delete markers for entries another gateway stamped, before the tombstone retention (a day) had passed; the first: {first}",
            foreign.len()
        ));
    }
}

/// Every record the gateways must apply can be read: each record of the final log that the
/// run did not write as one to quarantine decodes (the honest records, the largest
/// registrations among them, and the hostile records written to be applied, one of them exactly
/// at the size bound). The reference skips a record it cannot read, as a gateway does; without
/// this check a codec that refused valid records would leave both agreeing on a registry
/// without them.
pub(super) fn check_readable(
    log: &MemoryBus,
    quarantined: &BTreeSet<u64>,
    violations: &mut Vec<String>,
) {
    let unreadable: Vec<String> = log
        .snapshot()
        .iter()
        .filter(|r| !quarantined.contains(&r.offset))
        .filter_map(|r| {
            Event::decode(&r.payload).err().map(|e| {
                format!(
                    "offset {} ({}, {} bytes): {e}",
                    r.offset,
                    r.key,
                    r.payload.len()
                )
            })
        })
        .collect();
    if let Some(first) = unreadable.first() {
        violations.push(format!(
            "{} records that must be applied do not decode; the first: {first}",
            unreadable.len()
        ));
    }
}

/// Each gateway counts what it quarantined under the right reason: for every reason of
/// `switchyard_bus_events_quarantined_total`, the count of this incarnation (which read the log
/// from its start up to its position) lies between the hostile records of that reason below
/// its position that are still in the log (it read them all) and those ever written there
/// (compaction may have dropped some before it read them). Honest records are never
/// quarantined, so reasons no hostile record has count zero.
pub(super) fn check_quarantine_counts(
    nodes: &BTreeMap<String, Arc<Node>>,
    hostile: &[(u64, Hostile)],
    log: &MemoryBus,
    bounds: &EventBounds,
    violations: &mut Vec<String>,
) {
    let kept: BTreeSet<u64> = log.snapshot().iter().map(|r| r.offset).collect();
    for (name, node) in nodes {
        let position = node.readiness().bus_position;
        for reason in QuarantineReason::ALL {
            let label = reason.label();
            let (mut least, mut most) = (0u64, 0u64);
            for (offset, record) in hostile {
                if *offset < position && quarantine_reason(record, bounds) == Some(label) {
                    most += 1;
                    least += u64::from(kept.contains(offset));
                }
            }
            let counted = node.metrics().events_quarantined(reason);
            if !(least..=most).contains(&counted) {
                violations.push(format!(
                    "{name} counts {counted} records quarantined as {label}; the hostile records of that reason below its position {position}: {least} still in the log, {most} written"
                ));
            }
        }
    }
}

/// Nothing appears that no one registered: every entry is a sample instance, a ghost, or the
/// instance of a hostile record written to be applied.
pub(super) fn check_no_phantoms(
    reference: &Reference,
    services: &[String],
    hostile: &[(u64, Hostile)],
    violations: &mut Vec<String>,
) {
    let ghosts: BTreeSet<String> = (0..GHOST_IDS).map(|i| format!("g-{i}")).collect();
    let admitted: BTreeSet<&InstanceKey> = hostile
        .iter()
        .filter(|(_, record)| record.kind.admissible())
        .filter_map(|(_, record)| record.event.as_ref().map(|e| &e.key))
        .collect();
    for key in reference.entries.keys() {
        let known = (key.service == GHOST && ghosts.contains(&key.instance_id))
            || (key.service == SAMPLE && services.contains(&key.instance_id))
            || admitted.contains(key);
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
    pub(super) fn each(&self) -> impl Iterator<Item = (&String, &Arc<Node>, u64)> {
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
    pub(super) fn once(
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

/// The outbox's count, as `/v1/cluster` (`outbox_pending`) and the metrics report it: a change
/// a gateway answered 202 (accepted, not yet on the log) waits in that gateway's outbox until
/// the log holds it, so while the incarnation that answered is up and the log holds neither it
/// nor a later change to its key, that gateway reports at least one change pending. Judged at
/// every check step from the moment the answer is seen; an incarnation that crashed since lost
/// its outbox, and is not judged. The log is read as it grows, each record decoded once: a
/// change counts as on the log from the moment an event of its key at or after its stamp was
/// appended, whether compaction keeps that record or not.
#[derive(Default)]
pub(super) struct PendingCheck {
    /// Acknowledgements read so far.
    seen: usize,
    /// The next log offset to read.
    read_to: u64,
    /// The greatest stamp of each key among the registry events read from the log.
    greatest: BTreeMap<InstanceKey, Stamp>,
    /// 202 answers whose change the log did not hold yet: the ack, and the start of the
    /// incarnation that answered.
    waiting: Vec<(Ack, u64)>,
    /// 202 answers judged at least once.
    pub judged: usize,
    judged_keys: BTreeSet<(String, String, Stamp)>,
}

impl PendingCheck {
    pub(super) fn step(
        &mut self,
        acks: &[Ack],
        live: &Live<'_>,
        starts: &BTreeMap<String, Vec<u64>>,
        log: &MemoryBus,
        reported: &mut Reported,
        violations: &mut Vec<String>,
    ) {
        let born_of = |gw: &str| starts.get(gw).and_then(|s| s.last().copied());
        for ack in acks.iter().skip(self.seen) {
            if let (202, Some(_), Some(born)) = (ack.status, &ack.stamp, born_of(&ack.gateway))
                && born <= ack.sent_ms
            {
                self.waiting.push((ack.clone(), born));
            }
        }
        self.seen = acks.len();
        for record in log.records_from(self.read_to) {
            self.read_to = record.offset + 1;
            if record.delete {
                continue;
            }
            if let Ok(event) = Event::decode(&record.payload) {
                let stamp = event.stamp;
                match self.greatest.get_mut(&event.key) {
                    Some(held) if *held >= stamp => {}
                    Some(held) => *held = stamp,
                    None => {
                        self.greatest.insert(event.key, stamp);
                    }
                }
            }
        }
        if self.waiting.is_empty() {
            return;
        }
        let greatest = &self.greatest;
        self.waiting.retain(|(ack, born)| {
            let on_log = ack
                .stamp
                .as_ref()
                .is_some_and(|s| greatest.get(&ack.key).is_some_and(|held| held >= s));
            !on_log && !live.down.contains(&ack.gateway) && born_of(&ack.gateway) == Some(*born)
        });
        for (ack, _) in &self.waiting {
            let Some(node) = live.nodes.get(&ack.gateway) else {
                continue;
            };
            let stamp = ack.stamp.clone().unwrap_or_default();
            let key = format!("{}/{}", ack.key.service, ack.key.instance_id);
            if self
                .judged_keys
                .insert((ack.gateway.clone(), key.clone(), stamp.clone()))
            {
                self.judged += 1;
            }
            if node.registrar().pending() == 0 {
                reported.once("pending", &ack.gateway, violations, || {
                    format!(
                        "at {} ms {} reports no change pending, though it answered 202 to a {:?} of {key} (stamp {}.{}.{}) and the log holds neither it nor a later change to that key",
                        live.now_ms,
                        ack.gateway,
                        ack.op,
                        stamp.physical_ms,
                        stamp.logical,
                        stamp.node_id
                    )
                });
            }
        }
    }
}

/// Whether `records` hold the change `ack` answered, or a later change to its key.
fn on_log(records: &[Record], ack: &Ack) -> bool {
    records.iter().filter(|r| !r.delete).any(|r| {
        Event::decode(&r.payload).is_ok_and(|e| {
            e.key == ack.key && ack.stamp.as_ref().is_some_and(|s| e.entry().stamp >= *s)
        })
    })
}

/// A gateway incarnation stopped gracefully (the `drains` kind) between `asked_ms` and
/// `now_ms`, started at `born_ms`.
pub(super) struct Drained<'a> {
    pub gateway: &'a str,
    pub born_ms: u64,
    pub asked_ms: u64,
    pub now_ms: u64,
}

/// A graceful stop flushes the outbox: every change the incarnation answered 202 (accepted,
/// not yet on the log) is on the log when it has stopped, or a later change to its key is.
/// The caller judges only an incarnation that stopped by itself before it was started again:
/// its flush retries until the queue is empty or the drain timeout (10 s) has passed since its
/// shutdown was asked, and a restart comes 2-4 s after, so one that stopped had emptied its
/// queue (unless the flush gave up early). Returns the 202 answers judged.
pub(super) fn check_drain_flushed(
    d: &Drained<'_>,
    acks: &[Ack],
    log: &MemoryBus,
    violations: &mut Vec<String>,
) -> usize {
    let held: Vec<&Ack> = acks
        .iter()
        .filter(|a| {
            a.status == 202
                && a.stamp.is_some()
                && a.gateway == d.gateway
                && d.born_ms <= a.sent_ms
                && a.sent_ms <= d.now_ms
        })
        .collect();
    if held.is_empty() {
        return 0;
    }
    let records = log.snapshot();
    for ack in &held {
        if !on_log(&records, ack) {
            violations.push(format!(
                "{} stopped gracefully (asked at {} ms) without publishing a {:?} of {}/{} it answered 202 at {} ms: the log holds neither it nor a later change to that key at {} ms",
                d.gateway,
                d.asked_ms,
                ack.op,
                ack.key.service,
                ack.key.instance_id,
                ack.sent_ms,
                d.now_ms
            ));
        }
    }
    held.len()
}

/// No change accepted before catch-up: a gateway that has not read the log up to the mark it
/// saw at start refuses every change (503 `not_ready`), since a change it stamped could lose
/// to an older one already on the log. Each change answered 200 or 202 was stamped by the
/// gateway that took it; its stamp, less that gateway's skew, is never earlier than the moment
/// it was taken (a clock runs at its wall time or ahead). So a change sent to an incarnation
/// whose stamp is dated no later than the start of a step after which that incarnation was
/// seen not ready (not caught up, in the simulation) was accepted before it caught up. Returns
/// how many changes were sent to an incarnation while it was catching up and refused 503.
pub(super) fn check_no_change_before_catch_up(
    acks: &[Ack],
    catch_ups: &[super::readiness::CatchUp],
    skews: &BTreeMap<String, i64>,
    epoch_ms: u64,
    violations: &mut Vec<String>,
) -> usize {
    let refused = acks
        .iter()
        .filter(|a| {
            a.status == 503
                && catch_ups.iter().any(|c| {
                    c.name == a.gateway
                        && c.born_ms <= a.sent_ms
                        && c.not_caught_up_at_ms
                            .is_some_and(|until| a.sent_ms <= until)
                })
        })
        .count();
    let mut shown = 0;
    for ack in acks.iter().filter(|a| matches!(a.status, 200 | 202)) {
        let Some(stamp) = ack.stamp.as_ref().filter(|s| s.node_id == ack.gateway) else {
            continue;
        };
        let skew = skews.get(&ack.gateway).copied().unwrap_or(0);
        let at = i128::from(stamp.physical_ms) - i128::from(epoch_ms) - i128::from(skew);
        let Ok(at) = u64::try_from(at) else {
            continue;
        };
        // The incarnation the change was sent to: the stamp may be dated up to the clocks'
        // spread after the change was taken, past a restart, so it does not tell.
        let Some(incarnation) = catch_ups
            .iter()
            .rfind(|c| c.name == ack.gateway && c.born_ms <= ack.sent_ms)
        else {
            continue;
        };
        if let Some(until) = incarnation.not_caught_up_at_ms
            && at <= until
        {
            shown += 1;
            if shown <= 5 {
                violations.push(format!(
                    "{} accepted a {:?} of {}/{} (answered {}, stamped at {at} ms) before it caught up: the incarnation that started at {} ms was not ready at {until} ms",
                    ack.gateway,
                    ack.op,
                    ack.key.service,
                    ack.key.instance_id,
                    ack.status,
                    incarnation.born_ms
                ));
            }
        }
    }
    refused
}
