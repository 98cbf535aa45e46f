//! Readiness and the replication position, read after every simulation step (the only moments
//! they can change), from what `/readyz` answers (`Node::readiness`).
//!
//! * **Ready means caught up**, at every step: a gateway that answers ready has read the log up
//!   to the catch-up target it reports.
//! * **Ready is judged against the log as it stood** at the step in which `/readyz` first
//!   answers 200 for a gateway incarnation. Its position must have reached the log's high-water
//!   mark as it was before the step in which the incarnation started (the node reads the mark
//!   after it starts, so its own target is at least that), and its registry must hold, for
//!   every key the log below that mark folds to (with the simulation's own merge), that entry
//!   or a newer one; or hold nothing for the key while a delete marker on the log covers it.
//!   A gateway whose own target is short agrees with itself and passes the first check alone.
//! * **The position never moves back**: the offset a gateway incarnation reports as its next
//!   read never decreases (a redelivered record must not set it to an earlier offset).
//! * **The reported catch-up target** of a ready incarnation is at least the log's high-water
//!   mark before it started, and at the end each incarnation up counts every record it read
//!   once, as applied or rejected ([`Readiness::finish`]).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use switchyard::Node;
use switchyard::bus::MemoryBus;
use switchyard::replication::APPLY_RUN_MAX;
use switchyard_core::event::Event;

use super::checks::Reported;
use super::reference::{describe, fold, newer};

struct Watched {
    name: String,
    /// Index of this incarnation in [`Readiness::catch_ups`].
    index: usize,
    node: Arc<Node>,
    /// The log's high-water mark before the step in which this incarnation started.
    floor: u64,
    ready_seen: bool,
    last_position: u64,
    /// When its shutdown was asked (the `drains` fault kind), if it was.
    drain_asked_ms: Option<u64>,
}

/// The live gateway incarnations, newest per name.
#[derive(Default)]
pub(super) struct Readiness {
    watched: Vec<Watched>,
    /// Incarnations judged at their first ready answer.
    pub judged: usize,
    /// Every incarnation, in the order they started, with how long it was seen not caught up.
    pub catch_ups: Vec<CatchUp>,
}

/// One gateway incarnation's catch-up as the steps saw it. In the simulation a gateway is
/// ready exactly when it has caught up (no JWT providers, no shutdown), so `/readyz`'s answer
/// tells when the registrar begins to accept changes.
#[derive(Debug, Clone)]
pub(super) struct CatchUp {
    pub name: String,
    /// The simulated ms at which the step it started in began.
    pub born_ms: u64,
    /// The start of the last step after which it was not ready, before its first ready
    /// answer: until then it had not caught up, so it had to refuse every change. (The start,
    /// not the end: a host's clock may read either during the step.)
    pub not_caught_up_at_ms: Option<u64>,
}

/// The log's high-water mark now (the in-memory log answers at once).
pub(super) fn high_water(log: &MemoryBus) -> u64 {
    use switchyard::bus::Bus as _;
    let mut future = std::pin::pin!(log.high_water_mark());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(hwm)) => hwm,
        _ => log.snapshot().last().map_or(0, |r| r.offset + 1),
    }
}

impl Readiness {
    /// A gateway incarnation started during the step that began with the log at `floor`.
    /// Also notes when it started: `born_ms`.
    pub fn started(&mut self, name: &str, node: Arc<Node>, floor: u64, born_ms: u64) {
        self.watched.retain(|w| w.name != name);
        self.catch_ups.push(CatchUp {
            name: name.to_owned(),
            born_ms,
            not_caught_up_at_ms: None,
        });
        self.watched.push(Watched {
            name: name.to_owned(),
            index: self.catch_ups.len() - 1,
            node,
            floor,
            ready_seen: false,
            last_position: 0,
            drain_asked_ms: None,
        });
    }

    /// The shutdown of `name`'s incarnation was asked at `at_ms`: from the next step until it
    /// starts again, it must report not ready and shutting down.
    pub fn drain_asked(&mut self, name: &str, at_ms: u64) {
        if let Some(w) = self.watched.iter_mut().find(|w| w.name == name) {
            w.drain_asked_ms = Some(at_ms);
        }
    }

    /// Reads every incarnation that is up after a step from `from_ms` to `now_ms`.
    pub fn step(
        &mut self,
        (from_ms, now_ms): (u64, u64),
        log: &MemoryBus,
        quarantined: &BTreeSet<u64>,
        down: &BTreeSet<String>,
        reported: &mut Reported,
        violations: &mut Vec<String>,
    ) {
        for w in &mut self.watched {
            if let Some(asked) = w.drain_asked_ms {
                // Stopping gracefully: not ready from the step after the one it was asked in,
                // so that load balancers stop sending it traffic while it drains.
                let r = w.node.readiness();
                if from_ms > asked && (r.ready || !r.shutting_down) {
                    let name = w.name.as_str();
                    reported.once("drain", name, violations, || {
                        format!(
                            "{name} was asked to shut down at {asked} ms and at {now_ms} ms still reported ready {} and shutting down {}",
                            r.ready, r.shutting_down
                        )
                    });
                }
                continue;
            }
            if down.contains(&w.name) {
                continue;
            }
            let r = w.node.readiness();
            let name = w.name.as_str();
            if r.bus_position < w.last_position {
                let last = w.last_position;
                reported.once("position", name, violations, || {
                    format!(
                        "{name}'s replication position went back from {last} to {} at {now_ms} ms",
                        r.bus_position
                    )
                });
            }
            w.last_position = r.bus_position;
            if r.ready && r.bus_position < r.catch_up_target {
                violations.push(format!(
                    "{name} reported ready at {now_ms} ms at bus position {} before its catch-up target {}",
                    r.bus_position, r.catch_up_target
                ));
            }
            // The target it reports is the mark it read after it started, so never below the
            // mark before that step.
            if r.ready && r.catch_up_target < w.floor {
                let (target, floor) = (r.catch_up_target, w.floor);
                reported.once("target", name, violations, || {
                    format!(
                        "{name} reported ready at {now_ms} ms with a catch-up target {target} below the log's high-water mark {floor} before it started"
                    )
                });
            }
            if !r.ready
                && !w.ready_seen
                && let Some(c) = self.catch_ups.get_mut(w.index)
            {
                c.not_caught_up_at_ms = Some(from_ms);
            }
            if r.ready && !w.ready_seen {
                w.ready_seen = true;
                self.judged += 1;
                if let Some(why) = judge_first_ready(w, r.bus_position, log, quarantined) {
                    violations.push(format!("{name} first answered ready at {now_ms} ms {why}"));
                }
            }
        }
    }
}

impl Readiness {
    /// At the end of the run, for every incarnation up: the events it reports applied and
    /// rejected (`events_applied`, `events_rejected` of `/v1/cluster`) are the records it
    /// read, each once, so they are at most its position, and at least the registrations the
    /// log still holds below it (compaction only removes; a delete marker is counted only
    /// when quarantined). Its metric of events applied by origin
    /// (`switchyard_bus_events_applied_total{origin}`) adds up to the events applied, and,
    /// when it rejected exactly the hostile records it had to, splits them as the log does:
    /// own, the registrations below its position that it stamped (or that were forged in its
    /// name), and others'. Returns the incarnations judged, and those whose split was.
    pub fn finish(
        &self,
        log: &MemoryBus,
        quarantined: &BTreeSet<u64>,
        down: &BTreeSet<String>,
        violations: &mut Vec<String>,
    ) -> (usize, usize) {
        let records = log.snapshot();
        // Compaction may have removed records a gateway applied: only a whole log (every
        // offset from 0 on) judges the split by origin.
        let whole = records
            .iter()
            .enumerate()
            .all(|(i, r)| r.offset == i as u64);
        let (mut judged, mut split_judged) = (0, 0);
        for w in self.watched.iter().filter(|w| !down.contains(&w.name)) {
            judged += 1;
            let s = w.node.status();
            let counted = s.events_applied + s.events_rejected;
            let held = records
                .iter()
                .filter(|r| !r.delete && r.offset < s.bus_position)
                .count() as u64;
            if counted > s.bus_position || counted < held {
                violations.push(format!(
                    "{} reports {} events applied and {} rejected at bus position {}, where the log still holds {held} registry events below that position: each record read is counted once",
                    w.name, s.events_applied, s.events_rejected, s.bus_position
                ));
            }
            let (own, others) = w.node.metrics().events_applied_by_origin();
            if own + others != s.events_applied {
                violations.push(format!(
                    "{} counts {own} own and {others} others' events applied in its metrics, and {} applied in its status",
                    w.name, s.events_applied
                ));
                continue;
            }
            if let Some(why) = judge_changes(w, s.events_applied) {
                violations.push(format!("{} {why}", w.name));
            }
            let below = records.iter().filter(|r| r.offset < s.bus_position);
            let rejected = below
                .clone()
                .filter(|r| !r.delete && quarantined.contains(&r.offset))
                .count() as u64;
            if !whole || records.len() < s.bus_position as usize || rejected != s.events_rejected {
                continue;
            }
            split_judged += 1;
            let (mut own_on_log, mut others_on_log) = (0u64, 0u64);
            for e in below
                .filter(|r| !r.delete && !quarantined.contains(&r.offset))
                .filter_map(|r| Event::decode(&r.payload).ok())
            {
                if e.origin_node == w.name {
                    own_on_log += 1;
                } else {
                    others_on_log += 1;
                }
            }
            if (own, others) != (own_on_log, others_on_log) {
                violations.push(format!(
                    "{} counts {own} own and {others} others' events applied in its metrics; the log below its position {} holds {own_on_log} of its own and {others_on_log} of others",
                    w.name, s.bus_position
                ));
            }
        }
        (judged, split_judged)
    }
}

/// What is wrong with an incarnation's counts of runs and changes
/// (`switchyard_bus_apply_runs_total`, `switchyard_bus_events_changed_total`) beside the
/// `events` it applied, if anything. Every entry of its registry stamped by another gateway
/// was put there by an event read from the bus that changed the registry (a change made
/// through this gateway carries its own stamp), so such entries are at most the changes; the
/// changes are at most the events; each run holds at least one event and at most the run
/// bound.
fn judge_changes(w: &Watched, events: u64) -> Option<String> {
    let (runs, changed) = w.node.metrics().runs_and_changes();
    let foreign = w
        .node
        .registry()
        .entries()
        .filter(|(_, e)| e.stamp.node_id != w.name)
        .count() as u64;
    if changed > events || changed < foreign {
        Some(format!(
            "counts {changed} bus events that changed its registry, of {events} applied, and holds {foreign} entries stamped by other gateways: each came from a change"
        ))
    } else if runs > events || (events > 0 && runs.saturating_mul(APPLY_RUN_MAX as u64) < events) {
        Some(format!(
            "counts {runs} runs for {events} bus events applied, with at most {APPLY_RUN_MAX} events a run"
        ))
    } else {
        None
    }
}

/// What is wrong with an incarnation's registry at its first ready answer, if anything.
fn judge_first_ready(
    w: &Watched,
    position: u64,
    log: &MemoryBus,
    quarantined: &BTreeSet<u64>,
) -> Option<String> {
    if position < w.floor {
        return Some(format!(
            "at bus position {position}, below the log's high-water mark {} when it started",
            w.floor
        ));
    }
    let records = log.snapshot();
    let below: Vec<_> = records
        .iter()
        .filter(|r| r.offset < w.floor)
        .cloned()
        .collect();
    let want = fold(&below, quarantined);
    let collected = fold(&records, quarantined).collected;
    let registry = w.node.registry();
    for (key, entry) in &want.entries {
        let covered = match registry.get(key) {
            Some(held) => newer(held, entry) != Ordering::Less,
            None => collected
                .get(key)
                .is_some_and(|c| newer(c, entry) != Ordering::Less),
        };
        if !covered {
            return Some(format!(
                "without {}/{} {}, which the log held below the mark {} it started at (it holds {})",
                key.service,
                key.instance_id,
                describe(entry),
                w.floor,
                registry.get(key).map_or("nothing".to_owned(), describe)
            ));
        }
    }
    None
}
