//! The routing checker: a gateway forwards only to instances its registry lists.
//!
//! Two records meet after the run:
//!
//! * **What each gateway listed.** For every gateway incarnation the run subscribes to
//!   [`Node::watch`], the feed of every change the node applies to its registry (local or from
//!   the bus, in applied order), and drains it after each simulation step. From it, it keeps
//!   the intervals of simulated time during which each instance of the sample service was
//!   routable there: held as a live entry, and its lease not run out by that gateway's own
//!   clock (routing compares `stamp.physical_ms + lease_ms` with the gateway's clock, so the
//!   same is done here, skew included). A removal (deregistration, eviction) ends an interval
//!   when it is applied; lease expiry ends it at the moment the gateway's clock passes the
//!   lease, which is a computation, not an event; a crash ends every interval of that gateway,
//!   and a restarted gateway starts with an empty registry.
//! * **What each instance served.** The instances are witnesses ([`crate::witness`]): each
//!   records the gateway that sent every request it receives (`ForwardingReq.gateway_node`,
//!   part of the protocol), the request's `deadline_unix_ms` and the simulated time of arrival.
//!
//! A request is legal if the instance was routable at the gateway at some moment in which the
//! gateway could have chosen it. The gateway sets `deadline_unix_ms` to its clock plus
//! `upstream.timeout_ms` just before it starts forwarding, so it began at `deadline -
//! timeout`, converted to simulated time with its skew. It chooses an instance after that,
//! for the first attempt or a retry, and never after the deadline; and the request reaches
//! the instance after it was chosen. So the window is `[deadline - timeout, min(deadline,
//! arrival)]`: the tolerance for a request in flight while an entry changes is at most the
//! upstream timeout, and in practice the request's own latency. Held or delayed messages do
//! not widen it, because the window is anchored on when the gateway started, not on when the
//! request arrived. Changes are seen at the granularity of one step (1 ms): an interval starts
//! at the beginning of the step in which its change was applied and ends at the end of the
//! step in which the next one was, which only widens it; `SLACK_MS` covers millisecond
//! rounding. Both make the checker lenient, never stricter than the registry: it cannot blame
//! a gateway for a request it routed correctly.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard::Node;
use switchyard_core::InstanceKey;
use switchyard_core::event::Event;
use switchyard_core::registry::{Entry, EntryState};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::TryRecvError;

use super::SAMPLE;
use crate::witness::Served;

/// Rounding of simulated milliseconds on either side of a window.
const SLACK_MS: u64 = 2;

/// What the checker found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoutingCounts {
    /// Requests served by an instance and checked against the gateway's registry.
    pub checked: usize,
    /// Requests whose window overlaps a moment when the checker lost track of a gateway's
    /// feed (it fell behind); not judged.
    pub unjudged: usize,
    pub violations: usize,
}

/// Every gateway's view of the sample service over the run.
#[derive(Default)]
pub(super) struct Routing {
    epoch_ms: u64,
    timeout_ms: u64,
    gateways: BTreeMap<String, View>,
    /// Removed instances that came back (see the module's documentation).
    resurrections: Vec<String>,
}

#[derive(Default)]
struct View {
    skew_ms: i64,
    node: Option<Arc<Node>>,
    feed: Option<Receiver<Event>>,
    /// The entry held for each sample instance, and since when (simulated ms).
    held: BTreeMap<String, (u64, Entry)>,
    /// Closed intervals [from, to] of simulated ms during which an instance was routable.
    routable: BTreeMap<String, Vec<(u64, u64)>>,
    /// Intervals during which changes were missed (the feed fell behind).
    blind: Vec<(u64, u64)>,
    /// The newest entry this incarnation applied for each key, of every service.
    newest: BTreeMap<InstanceKey, Entry>,
}

impl View {
    /// The routable part of holding `entry` from `since` to `until`.
    fn close(&mut self, instance: &str, since: u64, entry: &Entry, until: u64, epoch_ms: u64) {
        let EntryState::Alive { .. } = entry.state else {
            return;
        };
        let Some(expires_ms) = entry.expires_ms() else {
            return;
        };
        // The gateway's clock reads epoch + simulated time + skew; the lease runs out at the
        // simulated time when it reads `expires_ms`.
        let expires_sim = i128::from(expires_ms) - i128::from(epoch_ms) - i128::from(self.skew_ms);
        let end = i128::from(until).min(expires_sim);
        if end > i128::from(since) {
            self.routable
                .entry(instance.to_owned())
                .or_default()
                .push((since, end as u64));
        }
    }

    fn close_all(&mut self, until: u64, epoch_ms: u64) {
        for (instance, (since, entry)) in std::mem::take(&mut self.held) {
            self.close(&instance, since, &entry, until, epoch_ms);
        }
    }

    fn set(&mut self, instance: &str, entry: Entry, since: u64, now: u64, epoch_ms: u64) {
        if let Some((old_since, old)) = self.held.remove(instance) {
            self.close(instance, old_since, &old, now, epoch_ms);
        }
        self.held.insert(instance.to_owned(), (since, entry));
    }

    /// Reads the held entries from the node's registry itself (after the feed fell behind).
    fn resync(&mut self, since: u64, now: u64, epoch_ms: u64) {
        let Some(node) = self.node.clone() else {
            return;
        };
        let entries: Vec<(String, Entry)> = node
            .registry()
            .service_entries(SAMPLE)
            .map(|(k, e)| (k.instance_id.clone(), e.clone()))
            .collect();
        self.close_all(now, epoch_ms);
        for (instance, entry) in entries {
            self.held.insert(instance, (since, entry));
        }
    }

    /// Whether `instance` was routable at some moment in [from, to] (call after `finish`).
    fn listed(&self, instance: &str, from: u64, to: u64) -> bool {
        self.routable.get(instance).is_some_and(|intervals| {
            intervals
                .iter()
                .any(|&(a, b)| a <= to + SLACK_MS && from <= b + SLACK_MS)
        })
    }

    /// Whether `instance` was routable at every moment of [from, to], with the rounding of
    /// the intervals' ends taken against it (call after `finish`).
    fn covered(&self, instance: &str, from: u64, to: u64) -> bool {
        let Some(intervals) = self.routable.get(instance) else {
            return false;
        };
        let mut spans = intervals.clone();
        spans.sort_unstable();
        // The intervals start up to a step early and end up to a step late: shrink the claim.
        let mut reached = from.saturating_sub(SLACK_MS);
        let end = to + SLACK_MS;
        for (a, b) in spans {
            if a > reached {
                break;
            }
            reached = reached.max(b);
            if reached >= end {
                return true;
            }
        }
        false
    }

    fn blind_during(&self, from: u64, to: u64) -> bool {
        self.blind.iter().any(|&(a, b)| a <= to && from <= b)
    }
}

impl Routing {
    pub(super) fn new(epoch_ms: u64, timeout_ms: u64) -> Self {
        Self {
            epoch_ms,
            timeout_ms,
            gateways: BTreeMap::new(),
            resurrections: Vec::new(),
        }
    }

    /// A gateway incarnation started (first start, restart or late join) during the step that
    /// began at `since`; `feed` was subscribed before it applied anything.
    pub(super) fn started(
        &mut self,
        name: &str,
        skew_ms: i64,
        node: Arc<Node>,
        feed: Receiver<Event>,
        since: u64,
    ) {
        let epoch_ms = self.epoch_ms;
        let view = self.gateways.entry(name.to_owned()).or_default();
        view.close_all(since, epoch_ms);
        view.skew_ms = skew_ms;
        view.node = Some(node);
        view.feed = Some(feed);
        view.newest.clear();
    }

    /// A gateway crashed at `now`: it routes nothing until it starts again.
    pub(super) fn crashed(&mut self, name: &str, now: u64) {
        let epoch_ms = self.epoch_ms;
        if let Some(view) = self.gateways.get_mut(name) {
            view.close_all(now, epoch_ms);
            view.node = None;
            view.feed = None;
        }
    }

    /// Takes every change applied during the step from `since` to `now`.
    pub(super) fn drain(&mut self, since: u64, now: u64) {
        let epoch_ms = self.epoch_ms;
        for (name, view) in &mut self.gateways {
            let mut lagged = false;
            let mut changes = Vec::new();
            let clock_ms =
                (i128::from(epoch_ms) + i128::from(now) + i128::from(view.skew_ms)).max(0) as u64;
            if let Some(feed) = view.feed.as_mut() {
                loop {
                    match feed.try_recv() {
                        Ok(event) => {
                            let entry = event.entry();
                            match view.newest.get(&event.key) {
                                Some(newest) if entry < *newest => {
                                    if entry.is_live(clock_ms) && self.resurrections.len() < 20 {
                                        self.resurrections.push(format!(
                                            "{name} applied {} at {:?}, live until {:?}, at {now} ms after it had held the newer {:?}: a removed instance came back",
                                            event.bus_key(),
                                            entry.stamp,
                                            entry.expires_ms(),
                                            newest
                                        ));
                                    }
                                }
                                _ => {
                                    view.newest.insert(event.key.clone(), entry);
                                }
                            }
                            if event.key.service == SAMPLE {
                                changes.push(event);
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => lagged = true,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
            }
            if lagged {
                view.blind.push((since, now));
                view.resync(since, now, epoch_ms);
                continue;
            }
            for event in changes {
                view.set(&event.key.instance_id, event.entry(), since, now, epoch_ms);
            }
        }
    }

    /// The run ended at `now`.
    pub(super) fn finish(&mut self, now: u64) {
        let epoch_ms = self.epoch_ms;
        for view in self.gateways.values_mut() {
            view.close_all(now, epoch_ms);
        }
    }

    /// Whether `gateway` held `instance` of the sample service as routable at every moment of
    /// [from, to], with nothing of its feed missed meanwhile (call after `finish`).
    pub(super) fn routable_throughout(
        &self,
        gateway: &str,
        instance: &str,
        from: u64,
        to: u64,
    ) -> bool {
        self.gateways
            .get(gateway)
            .is_some_and(|view| !view.blind_during(from, to) && view.covered(instance, from, to))
    }

    /// Judges every served request; pushes a sentence per violation (at most `max`).
    pub(super) fn check(
        &self,
        served: &[Served],
        max: usize,
        violations: &mut Vec<String>,
    ) -> RoutingCounts {
        let mut counts = RoutingCounts::default();
        violations.extend(self.resurrections.iter().cloned());
        for s in served {
            let Some(view) = self.gateways.get(&s.gateway_node) else {
                counts.violations += 1;
                if counts.violations <= max {
                    violations.push(format!(
                        "{} received a request at {} ms from {:?}, which is no gateway",
                        s.instance_id, s.received_ms, s.gateway_node
                    ));
                }
                continue;
            };
            // When the gateway began forwarding, in simulated ms: its clock then read
            // `deadline - timeout`.
            let began = i128::from(s.deadline_unix_ms)
                - i128::from(self.timeout_ms)
                - i128::from(self.epoch_ms)
                - i128::from(view.skew_ms);
            let from = u64::try_from(began.max(0)).unwrap_or(0);
            let to = s.received_ms.min(from.saturating_add(self.timeout_ms));
            if began < 0 || from > s.received_ms + SLACK_MS {
                counts.violations += 1;
                if counts.violations <= max {
                    violations.push(format!(
                        "{} received a request from {} at {} ms stamped with a deadline ({}) that does not fit it",
                        s.instance_id, s.gateway_node, s.received_ms, s.deadline_unix_ms
                    ));
                }
                continue;
            }
            if view.blind_during(from, to) {
                counts.unjudged += 1;
                continue;
            }
            counts.checked += 1;
            if !view.listed(&s.instance_id, from, to) {
                counts.violations += 1;
                if counts.violations <= max {
                    violations.push(format!(
                        "{} forwarded a request to {SAMPLE}/{} (began {from} ms, received {} ms) while its registry did not list that instance as routable; it was routable there during {:?}",
                        s.gateway_node,
                        s.instance_id,
                        s.received_ms,
                        view.routable.get(&s.instance_id).map(|v| nearby(v, from)).unwrap_or_default()
                    ));
                }
            }
        }
        counts
    }
}

/// The intervals closest to `at` (at most two before and two after), for a readable message.
fn nearby(intervals: &[(u64, u64)], at: u64) -> Vec<(u64, u64)> {
    let i = intervals.partition_point(|&(a, _)| a <= at);
    intervals[i.saturating_sub(2)..(i + 2).min(intervals.len())].to_vec()
}
