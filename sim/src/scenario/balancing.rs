//! The balancer's promises, judged from outside (`switchyard_core::balance`): which instance a
//! gateway tries, and when it tries another.
//!
//! * **At most once.** A gateway retries only attempts that never reached a service (a
//!   connection that could not be opened): a timeout, a broken connection or a service's error
//!   may have reached it, and sending the request again could run it twice. So no request id is
//!   received twice by the instances, wherever they are. The witnesses record every request
//!   they receive with its id ([`crate::witness`]).
//! * **A failure means no instance could be reached.** A call that a gateway answers with
//!   `upstream_connect_failed` or `no_live_instance` must have had no instance that gateway
//!   could reach: when one attempt cannot connect, the gateway tries an instance not yet tried
//!   (up to `upstream.attempts_max`, 3, above the two sample instances), ejected ones too when
//!   nothing else is left. The check blames the gateway only when some instance was routable
//!   there for the whole call (the routing checker's intervals, lease and skew included) and
//!   nothing disturbed that instance or its link to the gateway from [`QUIET_MS`] before the
//!   call until its answer: no partition, no held messages, no crash or restart ([`Links`]).
//!   The quiet time outlasts a connection that died during an earlier fault and is found dead
//!   only by keep-alive (10 s interval, 5 s timeout), so an attempt on it cannot fail.
//!
//! Both judge the gateway's code that decides: the balancer's pick among the untried
//! instances, the retry rule, and the passive health that orders them.

use std::collections::{BTreeMap, BTreeSet};

use super::fronts::Answered;
use super::routing::Routing;
use crate::faults::Action;
use crate::witness::Served;

/// How long an instance and its link to a gateway must have been left alone before a call for
/// the gateway to be blamed for not reaching it: keep-alive's interval and timeout (15 s, the
/// longest a dead connection can look alive) and 5 s more.
pub const QUIET_MS: u64 = 20_000;

/// The error codes of a call no instance answered because none could be reached.
const UNREACHED: [&str; 2] = ["upstream_connect_failed", "no_live_instance"];

/// The most violations of each check described in one run (all are counted).
const SHOWN_MAX: usize = 5;

/// What the balancing checks judged in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalancingCounts {
    /// Requests the instances received, by distinct request id.
    pub delivered: usize,
    /// Request ids received more than once.
    pub duplicated: usize,
    /// Calls answered `upstream_connect_failed` or `no_live_instance`.
    pub unreached: usize,
    /// Of those, calls for which some instance was routable and left alone throughout, so the
    /// gateway had one to reach.
    pub unreached_wrongly: usize,
}

/// When each host and each link between two hosts was disturbed: cut, held, or (a host)
/// crashed, from the step that began it to the one that ended it.
#[derive(Debug, Default)]
pub struct Links {
    /// Open disturbances: what, and since when.
    open: BTreeMap<Touch, u64>,
    /// Closed ones: [from, to] in simulated ms.
    closed: BTreeMap<Touch, Vec<(u64, u64)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Touch {
    Cut(String, String),
    Held(String, String),
    Down(String),
}

/// A disturbance of the link between `a` and `b`, whichever way round they are named.
fn link(kind: fn(String, String) -> Touch, a: &str, b: &str) -> Touch {
    if a <= b {
        kind(a.to_owned(), b.to_owned())
    } else {
        kind(b.to_owned(), a.to_owned())
    }
}

impl Links {
    /// A fault step applied at `at_ms`.
    pub fn apply(&mut self, at_ms: u64, action: &Action) {
        match action {
            Action::Partition(a, b) => self.begin(link(Touch::Cut, a, b), at_ms),
            Action::Repair(a, b) => self.end(&link(Touch::Cut, a, b), at_ms),
            Action::Hold(a, b) => self.begin(link(Touch::Held, a, b), at_ms),
            Action::Release(a, b) => self.end(&link(Touch::Held, a, b), at_ms),
            Action::Crash(h) => self.begin(Touch::Down(h.clone()), at_ms),
            Action::Restart(h) => self.end(&Touch::Down(h.clone()), at_ms),
            Action::Hostile(_) => {}
        }
    }

    /// Every link repaired and every host restarted at `at_ms` (the heal, and the run's end).
    pub fn heal(&mut self, at_ms: u64) {
        for (touch, since) in std::mem::take(&mut self.open) {
            self.closed.entry(touch).or_default().push((since, at_ms));
        }
    }

    fn begin(&mut self, touch: Touch, at_ms: u64) {
        self.open.entry(touch).or_insert(at_ms);
    }

    fn end(&mut self, touch: &Touch, at_ms: u64) {
        if let Some(since) = self.open.remove(touch) {
            self.closed
                .entry(touch.clone())
                .or_default()
                .push((since, at_ms));
        }
    }

    /// Whether `host` and its link to `peer` were left alone during [from, to] (call after
    /// the run's [`Links::heal`]).
    pub fn quiet(&self, peer: &str, host: &str, from: u64, to: u64) -> bool {
        [
            link(Touch::Cut, peer, host),
            link(Touch::Held, peer, host),
            Touch::Down(host.to_owned()),
        ]
        .iter()
        .all(|touch| {
            self.closed
                .get(touch)
                .is_none_or(|spans| spans.iter().all(|&(x, y)| y < from || to < x))
                && self.open.get(touch).is_none_or(|&since| to < since)
        })
    }
}

/// Runs both checks at the end of a run; `instances` are the sample service's instance ids.
pub(super) fn check(
    answered: &[Answered],
    served: &[Served],
    routing: &Routing,
    links: &Links,
    instances: &[String],
    violations: &mut Vec<String>,
) -> BalancingCounts {
    let mut counts = BalancingCounts::default();
    let mut received: BTreeMap<&str, Vec<&Served>> = BTreeMap::new();
    for s in served.iter().filter(|s| !s.request_id.is_empty()) {
        received.entry(&s.request_id).or_default().push(s);
    }
    counts.delivered = received.len();
    for (id, copies) in received.iter().filter(|(_, c)| c.len() > 1) {
        counts.duplicated += 1;
        if counts.duplicated <= SHOWN_MAX {
            let where_: Vec<String> = copies
                .iter()
                .map(|s| {
                    format!(
                        "{} from {} at {} ms",
                        s.instance_id, s.gateway_node, s.received_ms
                    )
                })
                .collect();
            violations.push(format!(
                "request {id:?} was delivered {} times ({}): a gateway sent it again after an attempt that may have reached a service",
                copies.len(),
                where_.join(", ")
            ));
        }
    }
    let mut shown = 0;
    for a in answered
        .iter()
        .filter(|a| UNREACHED.contains(&a.code.as_str()))
    {
        counts.unreached += 1;
        let from = a.sent_ms.saturating_sub(QUIET_MS);
        let reachable: BTreeSet<&str> = instances
            .iter()
            .filter(|i| {
                routing.routable_throughout(&a.gateway, i, a.sent_ms, a.at_ms)
                    && links.quiet(&a.gateway, i, from, a.at_ms)
            })
            .map(String::as_str)
            .collect();
        if reachable.is_empty() {
            continue;
        }
        counts.unreached_wrongly += 1;
        shown += 1;
        if shown <= SHOWN_MAX {
            violations.push(format!(
                "{} answered a {:?} call {} (sent at {} ms, answered at {} ms, request id {:?}) while {reachable:?} was routable there throughout and neither it nor its link to {} was disturbed from {from} ms on",
                a.gateway, a.front, a.code, a.sent_ms, a.at_ms, a.request_id, a.gateway
            ));
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_owned()
    }

    #[test]
    fn a_link_is_quiet_only_outside_its_disturbances_either_way_round() {
        let mut links = Links::default();
        links.apply(1_000, &Action::Partition(s("svc-1"), s("gw-1")));
        links.apply(2_000, &Action::Repair(s("gw-1"), s("svc-1")));
        links.apply(5_000, &Action::Crash(s("svc-2")));
        links.apply(9_000, &Action::Hold(s("gw-2"), s("svc-1")));
        assert!(!links.quiet("gw-1", "svc-1", 0, 1_000));
        assert!(!links.quiet("gw-1", "svc-1", 1_500, 1_600));
        assert!(links.quiet("gw-1", "svc-1", 2_001, 8_999));
        // Another gateway's link to the same instance is another link.
        assert!(links.quiet("gw-3", "svc-1", 0, 8_999));
        // A host still down, or a link still held, is disturbed from then on.
        assert!(!links.quiet("gw-1", "svc-2", 4_000, 60_000));
        assert!(links.quiet("gw-1", "svc-2", 0, 4_999));
        assert!(!links.quiet("gw-2", "svc-1", 9_000, 9_001));
        links.heal(15_000);
        assert!(links.quiet("gw-1", "svc-2", 15_001, 60_000));
        assert!(!links.quiet("gw-2", "svc-1", 14_000, 20_000));
    }
}
