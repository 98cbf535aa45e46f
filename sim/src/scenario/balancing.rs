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
//! * **An instance that cannot be reached is left alone for a while.** A connection to an
//!   instance that cannot be opened ejects it (`upstream.failures_to_eject` = 1) for at least
//!   `upstream.ejection_base_ms` ([`EJECTION_MIN_MS`] here): while another instance is fit to try, no new request
//!   goes to it. Seen from outside, through the gateways' connector ([`Connects`], which logs
//!   every connection a gateway incarnation opens to an instance, and how it ended): after a
//!   failed connection from a gateway to an instance, the same incarnation opens no other to
//!   it from [`GRACE_MS`] later until the ejection's end, if some other instance was routable
//!   there and left alone throughout (as above) and no connection of that gateway to it had
//!   failed in the longest ejection before. The grace covers requests that chose the
//!   instance before the failure and connect just after it.
//!
//! * **Only what cannot be reached is evicted.** A gateway evicts the instances of a service
//!   cluster-wide only when every one of them has failed every connection for the eviction
//!   wait since its last answer. So every instance it evicts was disturbed for it (its link
//!   to the gateway, or itself) at some moment of that incarnation's life before the
//!   eviction, and one of each batch, the one whose failed connection set it off, within
//!   [`EVICTION_TRIGGER_MS`] of it. The evictions are read from the log (the gateway's own
//!   stamp dates each, its skew taken off).
//!
//! * **A hung instance is ejected**, **evictions wait**, and **a gateway cut off evicts**: the
//!   checks of the `stalls` and `cutoffs` fault kinds ([`check_timeouts`],
//!   [`check_eviction_waits`], [`check_cutoffs`]; `scenario::probing` makes the episodes).
//!
//! All of them judge the gateway's code that decides: the balancer's pick among the untried
//! instances, the retry rule, the passive health that orders them, and eviction.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use switchyard::seams::{BoxFuture, Connector, Io};

use super::fronts::Answered;
use super::routing::Routing;
use crate::broker::BROKER_HOST;
use crate::faults::Action;
use crate::witness::Served;
use crate::{SERVICE_PORT, SimConnector};

/// How long an instance and its link to a gateway must have been left alone before a call for
/// the gateway to be blamed for not reaching it: keep-alive's interval and timeout (15 s, the
/// longest a dead connection can look alive) and 5 s more.
pub const QUIET_MS: u64 = 20_000;

/// After a failed connection, how long requests that chose the instance before it may still
/// open one.
pub const GRACE_MS: u64 = 100;
/// The shortest ejection (`upstream.ejection_base_ms`, which the simulation sets: 3 s, three
/// times the default, so that a run's calls fall into ejections often enough to judge them)
/// and the longest (`upstream.ejection_max_ms`, the default).
pub const EJECTION_MIN_MS: u64 = 3_000;
const EJECTION_MAX_MS: u64 = 30_000;
/// How long before an eviction the failed connection that set it off may have begun: the
/// connection timeout (1 s) and the upstream timeout (2 s) of the attempt it ended.
pub const EVICTION_TRIGGER_MS: u64 = 3_000;
/// Evictions a gateway writes within this many ms of each other are one batch.
const BATCH_MS: u64 = 50;
/// The most connections logged in one run (a run opens a few hundred).
const CONNECTS_MAX: usize = 100_000;

/// Linux's number for "too many open files" (`asm-generic/errno-base.h`).
const EMFILE: i32 = 24;

/// The error codes of a call no instance answered because none could be reached.
const UNREACHED: [&str; 2] = ["upstream_connect_failed", "no_live_instance"];

/// The most violations of each check described in one run (all are counted).
const SHOWN_MAX: usize = 5;

/// Timeouts in a row that eject an instance (`upstream.timeouts_to_eject`, the default).
const TIMEOUTS_TO_EJECT: usize = 3;
/// How long after an instance received a request its answer may take to reach the gateway
/// (the simulated network's latency is at most 100 ms), and so how late a request chosen
/// before an ejection may still arrive.
const ANSWER_MS: u64 = 200;
/// The eviction wait (`upstream.evict_after_ms`, the default); each eviction in a row doubles
/// it.
pub const EVICT_AFTER_MS: u64 = 5_000;
/// How much later than the moment it was written an eviction's date, read from its stamp, may
/// be: a gateway's clock runs at its peers' highest stamp when that is ahead of its own, and
/// the clocks differ by twice the largest skew at most (±800 ms).
const STAMP_LATE_MS: u64 = 1_700;
/// The shortest stretch of a gateway cut off from every instance judged by the cutoff check:
/// the eviction wait, a connection attempt (1 s) on each side, and a margin.
const CUTOFF_JUDGED_MS: u64 = 8_000;

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
    /// Connections from gateways to instances that failed, and of those, the ones after which
    /// another instance was fit to try throughout the ejection (judged).
    pub connects_failed: usize,
    pub ejections_judged: usize,
    /// Connections opened to an instance during its ejection while another was fit.
    pub ejections_broken: usize,
    /// Evictions of sample instances on the log, and those of instances not disturbed for
    /// the gateway that evicted them.
    #[serde(default)]
    pub evictions: usize,
    #[serde(default)]
    pub evictions_wrong: usize,
    /// Three timeouts in a row from one gateway on a stalled instance, after which another
    /// instance was fit to try throughout the ejection (judged); and of those, the ones after
    /// which the gateway sent the stalled instance a request within the ejection.
    #[serde(default)]
    pub timeouts_judged: usize,
    #[serde(default)]
    pub timeouts_broken: usize,
    /// Evictions dated before every connection to the instance had failed for the eviction
    /// wait, or (a repeated eviction) for twice the wait after the one before.
    #[serde(default)]
    pub evictions_early: usize,
    /// Stretches in which a gateway was cut off from every instance long enough that it had
    /// to evict (judged), and of those, the ones without an eviction by it.
    #[serde(default)]
    pub cutoffs_judged: usize,
    #[serde(default)]
    pub cutoffs_unevicted: usize,
    /// Calls a gateway answered within a shortage of its own file descriptors, those answered
    /// `overloaded`, and the answers and evictions that blamed an instance for it.
    #[serde(default)]
    pub shortage_calls: usize,
    #[serde(default)]
    pub shortage_overloaded: usize,
    #[serde(default)]
    pub shortage_blamed: usize,
}

/// One eviction a gateway wrote: which gateway, which instance, when (simulated ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub gateway: String,
    pub instance: String,
    pub at_ms: u64,
}

/// The evictions of `service`'s instances among `records` (leaving out `hostile` offsets),
/// each dated by its stamp on the clock of the gateway that wrote it.
pub fn evictions(
    records: &[switchyard::bus::Record],
    hostile: &BTreeSet<u64>,
    service: &str,
    skews: &BTreeMap<String, i64>,
    epoch_ms: u64,
) -> Vec<Eviction> {
    use switchyard_core::registry::{EntryState, Removal};
    let mut out = Vec::new();
    for r in records
        .iter()
        .filter(|r| !r.delete && !hostile.contains(&r.offset))
    {
        let Ok(event) = switchyard_core::event::Event::decode(&r.payload) else {
            continue;
        };
        let entry = event.entry();
        let (EntryState::Removed(Removal::Evicted), true) =
            (&entry.state, event.key.service == service)
        else {
            continue;
        };
        let Some(&skew) = skews.get(&entry.stamp.node_id) else {
            continue;
        };
        let at = i128::from(entry.stamp.physical_ms) - i128::from(epoch_ms) - i128::from(skew);
        let eviction = Eviction {
            gateway: entry.stamp.node_id.clone(),
            instance: event.key.instance_id.clone(),
            at_ms: u64::try_from(at.max(0)).unwrap_or(0),
        };
        // A duplicate record (a producer's retry) is the same eviction.
        if !out.contains(&eviction) {
            out.push(eviction);
        }
    }
    out
}

/// One connection a gateway incarnation began to open to a sample instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub gateway: String,
    pub incarnation: u64,
    pub instance: String,
    pub started_ms: u64,
    /// When it ended, and whether it opened; a connection given up (its timeout) ends failed
    /// when it is dropped. `None`: still pending at the end of the run.
    pub ended: Option<(u64, bool)>,
}

/// Every connection the gateways began to open to sample instances, shared by their
/// connectors.
#[derive(Debug, Clone, Default)]
pub struct Connects {
    inner: Arc<Mutex<ConnectsInner>>,
}

#[derive(Debug, Default)]
struct ConnectsInner {
    log: Vec<Connect>,
    unkept: usize,
    /// The address each sample instance's name resolved to.
    hosts: BTreeMap<SocketAddr, String>,
    /// Gateways short of file descriptors now (the `shortages` fault kind).
    short: BTreeSet<String>,
}

impl Connects {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log and how many connections were not kept.
    pub fn take(&self) -> (Vec<Connect>, usize) {
        let mut inner = self.lock();
        (std::mem::take(&mut inner.log), inner.unkept)
    }

    /// Starts or ends a gateway's shortage of file descriptors: while it lasts, every
    /// connection the gateway opens to an instance fails at once with EMFILE, as `connect(2)`
    /// does in a process out of descriptors, and is not logged (nothing left the host).
    pub fn set_short(&self, gateway: &str, short: bool) {
        let mut inner = self.lock();
        if short {
            inner.short.insert(gateway.to_owned());
        } else {
            inner.short.remove(gateway);
        }
    }

    /// Ends every shortage (the heal).
    pub fn supply_all(&self) {
        self.lock().short.clear();
    }

    /// The connector of one gateway incarnation: the simulation's, logging every connection
    /// to an instance of `instances`.
    pub fn connector(&self, gateway: &str, incarnation: u64, instances: &[String]) -> Recording {
        Recording {
            gateway: gateway.to_owned(),
            incarnation,
            instances: instances.to_vec(),
            log: self.clone(),
        }
    }
}

fn sim_now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// A gateway's connector in the simulation ([`SimConnector`]) that logs in [`Connects`].
pub struct Recording {
    gateway: String,
    incarnation: u64,
    instances: Vec<String>,
    log: Connects,
}

/// Marks its connection ended when dropped, failed unless it opened.
struct Ending {
    log: Connects,
    index: Option<usize>,
    opened: bool,
}

impl Drop for Ending {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            let mut inner = self.log.lock();
            if let Some(c) = inner.log.get_mut(i) {
                c.ended.get_or_insert((sim_now_ms(), self.opened));
            }
        }
    }
}

impl Connector for Recording {
    fn connect(&self, authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let index = {
            let mut inner = self.log.lock();
            let instance = authority
                .parse::<SocketAddr>()
                .ok()
                .and_then(|addr| inner.hosts.get(&addr).cloned());
            if instance.is_some() && inner.short.contains(&self.gateway) {
                return Box::pin(async { Err(io::Error::from_raw_os_error(EMFILE)) });
            }
            match instance {
                Some(_) if inner.log.len() >= CONNECTS_MAX => {
                    inner.unkept += 1;
                    None
                }
                Some(instance) => {
                    inner.log.push(Connect {
                        gateway: self.gateway.clone(),
                        incarnation: self.incarnation,
                        instance,
                        started_ms: sim_now_ms(),
                        ended: None,
                    });
                    Some(inner.log.len() - 1)
                }
                None => None,
            }
        };
        let mut ending = Ending {
            log: self.log.clone(),
            index,
            opened: false,
        };
        let connect = SimConnector.connect(authority);
        Box::pin(async move {
            let result = connect.await;
            ending.opened = result.is_ok();
            drop(ending);
            result
        })
    }

    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let resolve = SimConnector.resolve(host, port);
        let watched = (port == SERVICE_PORT && self.instances.iter().any(|i| i == host))
            .then(|| (host.to_owned(), self.log.clone()));
        Box::pin(async move {
            let addrs = resolve.await?;
            if let Some((host, log)) = watched {
                let mut inner = log.lock();
                for addr in &addrs {
                    inner.hosts.insert(*addr, host.clone());
                }
            }
            Ok(addrs)
        })
    }
}

/// When each host and each link between two hosts was disturbed: cut, held, or (a host)
/// crashed or stalled, from the step that began it to the one that ended it. A stall is not a
/// disturbance of the network: [`Links::quiet`] leaves it out, [`Links::stalled`] asks.
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
    Stalled(String),
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
            Action::Crash(h) | Action::Drain(h) => self.begin(Touch::Down(h.clone()), at_ms),
            Action::Restart(h) => self.end(&Touch::Down(h.clone()), at_ms),
            Action::Stall(h) => self.begin(Touch::Stalled(h.clone()), at_ms),
            Action::Unstall(h) => self.end(&Touch::Stalled(h.clone()), at_ms),
            // A gateway's own shortage disturbs no instance and no link: nothing it does
            // during one is excused by it.
            Action::Hostile(_) | Action::Shortage(_) | Action::Supply(_) => {}
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
        .all(|touch| self.untouched(touch, from, to))
    }

    /// Whether `host` was stalled at some moment of [from, to].
    pub fn stalled(&self, host: &str, from: u64, to: u64) -> bool {
        !self.untouched(&Touch::Stalled(host.to_owned()), from, to)
    }

    fn untouched(&self, touch: &Touch, from: u64, to: u64) -> bool {
        self.closed
            .get(touch)
            .is_none_or(|spans| spans.iter().all(|&(x, y)| y < from || to < x))
            && self.open.get(touch).is_none_or(|&since| to < since)
    }

    /// The stretches of [from, to] during which `gateway` was cut off from every one of
    /// `instances` (partitions only: held messages arrive later), each at least `min_ms`
    /// long.
    pub fn cut_off(&self, gateway: &str, instances: &[String], min_ms: u64) -> Vec<(u64, u64)> {
        let mut common: Option<Vec<(u64, u64)>> = None;
        for instance in instances {
            let touch = link(Touch::Cut, gateway, instance);
            let mut spans: Vec<(u64, u64)> = self.closed.get(&touch).cloned().unwrap_or_default();
            if let Some(&since) = self.open.get(&touch) {
                spans.push((since, u64::MAX));
            }
            common = Some(match common {
                None => spans,
                Some(before) => before
                    .iter()
                    .flat_map(|&(a, b)| {
                        spans.iter().filter_map(move |&(x, y)| {
                            let (from, to) = (a.max(x), b.min(y));
                            (from < to).then_some((from, to))
                        })
                    })
                    .collect(),
            });
        }
        let mut out: Vec<(u64, u64)> = common
            .unwrap_or_default()
            .into_iter()
            .filter(|&(a, b)| b - a >= min_ms)
            .collect();
        out.sort_unstable();
        out
    }
}

/// The run's records, for [`check`].
pub(super) struct Records<'a> {
    pub answered: &'a [Answered],
    pub evictions: &'a [Eviction],
    /// When each gateway incarnation started (simulated ms), in order, by gateway.
    pub starts: &'a BTreeMap<String, Vec<u64>>,
    pub served: &'a [Served],
    pub connects: &'a [Connect],
    pub routing: &'a Routing,
    pub links: &'a Links,
    /// The sample service's instance ids (and host names).
    pub instances: &'a [String],
    /// The shortages of file descriptors: each restarted gateway's window in one.
    pub shortages: &'a [super::probing::Window],
    /// Each gateway's clock skew, and the simulated epoch, to read the deadlines the gateways
    /// wrote into their requests on the simulation's clock.
    pub skews: &'a BTreeMap<String, i64>,
    pub epoch_ms: u64,
}

/// Runs the four checks at the end of a run.
pub(super) fn check(records: &Records<'_>, violations: &mut Vec<String>) -> BalancingCounts {
    let Records {
        answered,
        evictions,
        starts,
        served,
        connects,
        routing,
        links,
        instances,
        ..
    } = *records;
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
        if counts.unreached_wrongly <= SHOWN_MAX {
            violations.push(format!(
                "{} answered a {:?} call {} (sent at {} ms, answered at {} ms, request id {:?}) while {reachable:?} was routable there throughout and neither it nor its link to {} was disturbed from {from} ms on",
                a.gateway, a.front, a.code, a.sent_ms, a.at_ms, a.request_id, a.gateway
            ));
        }
    }
    check_ejections(connects, routing, links, instances, &mut counts, violations);
    check_evictions(evictions, starts, links, &mut counts, violations);
    check_timeouts(records, &mut counts, violations);
    check_eviction_waits(records, &mut counts, violations);
    check_cutoffs(records, &mut counts, violations);
    check_shortages(records, &mut counts, violations);
    counts
}

/// A gateway short of its own resources blames no instance: every call it answers within a
/// shortage of file descriptors (sent after its restart, answered before the shortage ended)
/// is answered otherwise than `upstream_connect_failed`, the answer when an instance cannot
/// be reached (the promise is `overloaded`, 503), and it evicts nothing in that time (an
/// eviction dated within it, later than the stamp's lateness after its start, so not one
/// the incarnation before wrote).
fn check_shortages(
    records: &Records<'_>,
    counts: &mut BalancingCounts,
    violations: &mut Vec<String>,
) {
    let Records {
        answered,
        evictions,
        shortages,
        ..
    } = *records;
    for w in shortages {
        for a in answered
            .iter()
            .filter(|a| a.gateway == w.gateway && w.from_ms <= a.sent_ms && a.at_ms <= w.to_ms)
        {
            counts.shortage_calls += 1;
            if a.code == "overloaded" {
                counts.shortage_overloaded += 1;
            }
            if a.code == "upstream_connect_failed" {
                counts.shortage_blamed += 1;
                if counts.shortage_blamed <= SHOWN_MAX {
                    violations.push(format!(
                        "{} answered a {:?} call upstream_connect_failed (sent at {} ms, answered at {} ms, request id {:?}) while every connection it opened failed for want of its own file descriptors ({} to {} ms): the shortage is the gateway's, not an instance's",
                        a.gateway, a.front, a.sent_ms, a.at_ms, a.request_id, w.from_ms, w.to_ms
                    ));
                }
            }
        }
        for e in evictions.iter().filter(|e| {
            e.gateway == w.gateway && w.from_ms + STAMP_LATE_MS <= e.at_ms && e.at_ms <= w.to_ms
        }) {
            counts.shortage_blamed += 1;
            if counts.shortage_blamed <= SHOWN_MAX {
                violations.push(format!(
                    "{} evicted {} at {} ms while every connection it opened failed for want of its own file descriptors ({} to {} ms)",
                    e.gateway, e.instance, e.at_ms, w.from_ms, w.to_ms
                ));
            }
        }
    }
}

/// The eviction promise (see the module's documentation).
fn check_evictions(
    evictions: &[Eviction],
    starts: &BTreeMap<String, Vec<u64>>,
    links: &Links,
    counts: &mut BalancingCounts,
    violations: &mut Vec<String>,
) {
    counts.evictions = evictions.len();
    let mut wrong = |violation: String, counts: &mut BalancingCounts| {
        counts.evictions_wrong += 1;
        if counts.evictions_wrong <= SHOWN_MAX {
            violations.push(violation);
        }
    };
    for e in evictions {
        // The incarnation that wrote it started at the latest start before it.
        let born = starts
            .get(&e.gateway)
            .and_then(|s| s.iter().copied().filter(|&at| at <= e.at_ms).max())
            .unwrap_or(0);
        if links.quiet(&e.gateway, &e.instance, born, e.at_ms) {
            wrong(
                format!(
                    "{} evicted {} at {} ms, though neither it nor its link to {} was disturbed since that gateway started at {born} ms",
                    e.gateway, e.instance, e.at_ms, e.gateway
                ),
                counts,
            );
        }
    }
    // Batches: one gateway's evictions close together; one of each must have been set off.
    let mut done = vec![false; evictions.len()];
    for i in 0..evictions.len() {
        if done[i] {
            continue;
        }
        let first = &evictions[i];
        let batch: Vec<usize> = (i..evictions.len())
            .filter(|&j| {
                evictions[j].gateway == first.gateway
                    && evictions[j].at_ms.abs_diff(first.at_ms) <= BATCH_MS
            })
            .collect();
        for &j in &batch {
            done[j] = true;
        }
        let set_off = batch.iter().any(|&j| {
            let e = &evictions[j];
            !links.quiet(
                &e.gateway,
                &e.instance,
                e.at_ms.saturating_sub(EVICTION_TRIGGER_MS),
                e.at_ms + BATCH_MS,
            )
        });
        if !set_off {
            let names: Vec<&str> = batch
                .iter()
                .map(|&j| evictions[j].instance.as_str())
                .collect();
            wrong(
                format!(
                    "{} evicted {names:?} at {} ms, though none of them nor their links to it was disturbed in the {EVICTION_TRIGGER_MS} ms before",
                    first.gateway, first.at_ms
                ),
                counts,
            );
        }
    }
}

/// The ejection promise (see the module's documentation).
fn check_ejections(
    connects: &[Connect],
    routing: &Routing,
    links: &Links,
    instances: &[String],
    counts: &mut BalancingCounts,
    violations: &mut Vec<String>,
) {
    // Each incarnation's connections to each instance, in the order they began.
    let mut by: BTreeMap<(&str, u64, &str), Vec<&Connect>> = BTreeMap::new();
    for c in connects {
        by.entry((&c.gateway, c.incarnation, &c.instance))
            .or_default()
            .push(c);
    }
    let failed_at = |c: &Connect| match c.ended {
        Some((at, false)) => Some(at),
        _ => None,
    };
    for (&(gateway, incarnation, instance), list) in &by {
        let failures: Vec<u64> = list.iter().filter_map(|c| failed_at(c)).collect();
        for &failed in &failures {
            counts.connects_failed += 1;
            // Judged only if the instance was not ejected already: a failure during an
            // ejection neither counts nor extends it, so that one may end sooner. Not after
            // another failure within the longest ejection, nor after a stall (its timeouts
            // may have ejected it).
            if failures
                .iter()
                .any(|&at| at < failed && failed <= at + EJECTION_MAX_MS)
                || links.stalled(instance, failed.saturating_sub(EJECTION_MAX_MS), failed)
            {
                continue;
            }
            let (from, to) = (failed + GRACE_MS, failed + EJECTION_MIN_MS - GRACE_MS);
            // Another instance fit to try throughout: routable, left alone, and none of this
            // incarnation's connections to it failed within the longest ejection before.
            let fit = instances
                .iter()
                .filter(|&other| other != instance)
                .find(|&other| {
                    routing.routable_throughout(gateway, other, failed, to)
                        && links.quiet(gateway, other, failed.saturating_sub(QUIET_MS), to)
                        // A stalled instance may be ejected for its timeouts.
                        && !links.stalled(other, failed.saturating_sub(EJECTION_MAX_MS), to)
                        && by
                            .get(&(gateway, incarnation, other.as_str()))
                            .is_none_or(|l| {
                                l.iter()
                                    .filter_map(|c| failed_at(c))
                                    .all(|at| at + EJECTION_MAX_MS < failed || at > to)
                            })
                });
            let Some(other) = fit else {
                continue;
            };
            counts.ejections_judged += 1;
            // A connection within the ejection breaks it only while the instance stayed in
            // the gateway's registry: once its lease ran out there, the gateway forgets what
            // it knew of it (housekeeping drops the record), and a renewal brings it back as
            // new.
            let Some(broken) = list.iter().find(|c| {
                from < c.started_ms
                    && c.started_ms < to
                    && routing.routable_throughout(gateway, instance, failed, c.started_ms)
            }) else {
                continue;
            };
            counts.ejections_broken += 1;
            if counts.ejections_broken <= SHOWN_MAX {
                violations.push(format!(
                    "{gateway} (incarnation {incarnation}) could not connect to {instance} at {failed} ms, and connected to it again at {} ms, within the ejection ({EJECTION_MIN_MS} ms at least), while {other} was routable there and fit to try",
                    broken.started_ms
                ));
            }
        }
    }
}

/// The incarnation of `gateway` alive at `at_ms`: its index (as the connector numbers it)
/// and when it started.
fn incarnation_at(
    starts: &BTreeMap<String, Vec<u64>>,
    gateway: &str,
    at_ms: u64,
) -> Option<(u64, u64)> {
    let list = starts.get(gateway)?;
    let index = list.iter().rposition(|&born| born <= at_ms)?;
    Some((index as u64, list[index]))
}

/// When the gateway that sent `s` gave up on it: the deadline it wrote into the request, on the
/// simulation's clock.
fn deadline_ms(s: &Served, skews: &BTreeMap<String, i64>, epoch_ms: u64) -> u64 {
    let skew = skews.get(&s.gateway_node).copied().unwrap_or(0);
    let at = i128::from(s.deadline_unix_ms) - i128::from(epoch_ms) - i128::from(skew);
    u64::try_from(at.max(0)).unwrap_or(0)
}

/// Whether the answer to `s` surely reached its gateway: the instance was not stalled, the
/// deadline was still ahead, and nothing disturbed the instance or its link to the gateway
/// while the answer travelled.
fn answered(s: &Served, links: &Links, skews: &BTreeMap<String, i64>, epoch_ms: u64) -> bool {
    !s.stalled
        && deadline_ms(s, skews, epoch_ms) > s.received_ms + ANSWER_MS
        && links.quiet(
            &s.gateway_node,
            &s.instance_id,
            s.received_ms,
            s.received_ms + ANSWER_MS,
        )
}

/// The end times of the failed connections of one gateway incarnation, by instance.
fn failures(connects: &[Connect]) -> BTreeMap<(&str, u64, &str), Vec<u64>> {
    let mut out: BTreeMap<(&str, u64, &str), Vec<u64>> = BTreeMap::new();
    for c in connects {
        if let Some((at, false)) = c.ended {
            out.entry((&c.gateway, c.incarnation, &c.instance))
                .or_default()
                .push(at);
        }
    }
    out
}

/// The failures of one gateway incarnation's connections to `instance`, from [`failures`].
fn failed_at<'a, 'k>(
    failed: &'a BTreeMap<(&'k str, u64, &'k str), Vec<u64>>,
    gateway: &'k str,
    incarnation: u64,
    instance: &'k str,
) -> &'a [u64] {
    failed
        .get(&(gateway, incarnation, instance))
        .map_or(&[], Vec::as_slice)
}

/// The timeout-ejection promise: after [`TIMEOUTS_TO_EJECT`] timeouts in a row on an instance,
/// with no answer between them, a gateway sends it no request for the ejection
/// ([`EJECTION_MIN_MS`] at least) while another instance is fit to try.
///
/// Judged from the stalled instances' records: an answered request (or the start of a gateway
/// incarnation that had sent the instance nothing yet), then three requests received while
/// the instance was stalled (each timed out at the deadline its gateway wrote into it), from
/// one gateway incarnation; nothing else that could reach the instance's record in between (no
/// other timeout, no failed connection, no disturbance of the instance or its link). The
/// answer (or the start) cleared the instance's record, so the third timeout ejects it for
/// exactly the base length; no request of that incarnation may arrive from [`ANSWER_MS`]
/// after it until the ejection's end, if another instance was routable, left alone, not
/// stalled and not failing throughout.
fn check_timeouts(
    records: &Records<'_>,
    counts: &mut BalancingCounts,
    violations: &mut Vec<String>,
) {
    let Records {
        served,
        connects,
        routing,
        links,
        instances,
        starts,
        skews,
        epoch_ms,
        ..
    } = *records;
    let mut by: BTreeMap<(&str, u64, &str), Vec<&Served>> = BTreeMap::new();
    for s in served {
        if let Some((incarnation, _)) = incarnation_at(starts, &s.gateway_node, s.received_ms) {
            by.entry((&s.gateway_node, incarnation, &s.instance_id))
                .or_default()
                .push(s);
        }
    }
    let failed = failures(connects);
    for (&(gateway, incarnation, instance), list) in &by {
        let Some((_, born)) = incarnation_at(starts, gateway, list[0].received_ms) else {
            continue;
        };
        // Each run of three stalled requests, with what cleared the record before it: an
        // answer, or (the incarnation's first requests to the instance) the start.
        for i in 0..list.len().saturating_sub(TIMEOUTS_TO_EJECT - 1) {
            let stalled = &list[i..i + TIMEOUTS_TO_EJECT];
            let from = match i.checked_sub(1).map(|j| list[j]) {
                Some(answer) if answered(answer, links, skews, epoch_ms) => answer.received_ms,
                Some(_) => continue,
                None => born,
            };
            if !stalled.iter().all(|s| s.stalled) {
                continue;
            }
            let deadlines: Vec<u64> = stalled
                .iter()
                .map(|s| deadline_ms(s, skews, epoch_ms))
                .collect();
            let (Some(&first), Some(&third)) = (deadlines.iter().min(), deadlines.iter().max())
            else {
                continue;
            };
            let end = third + EJECTION_MIN_MS;
            if from + ANSWER_MS >= first {
                continue;
            }
            // No other timeout between the answer and the third one, and no request the
            // instance received unstalled before the third one's deadline: counted in the
            // order of their ends, its answer may have come between two of the three (a
            // request sent after the unstall answered before a stalled one's deadline), and
            // an answer clears the count (seed 2129 with --liveness, fault window 15 s).
            let others = list.iter().any(|s| {
                !stalled.iter().any(|t| std::ptr::eq(*t, *s))
                    && if s.stalled {
                        (from..=third).contains(&deadline_ms(s, skews, epoch_ms))
                    } else {
                        from < s.received_ms && s.received_ms <= third
                    }
            });
            // The instance stayed in the registry throughout, from the answer (or the first
            // stalled request, when nothing came before): else housekeeping drops its record,
            // ejection and all, and one that comes back starts afresh.
            let kept_from = if i == 0 { stalled[0].received_ms } else { from };
            if others
                || !routing.routable_throughout(gateway, instance, kept_from, end)
                || !links.quiet(gateway, instance, from, end)
                || failed_at(&failed, gateway, incarnation, instance)
                    .iter()
                    .any(|&at| from <= at + GRACE_MS && at <= end)
            {
                continue;
            }
            let fit = instances.iter().filter(|&o| o != instance).find(|&other| {
                routing.routable_throughout(gateway, other, third, end)
                    && links.quiet(gateway, other, third.saturating_sub(QUIET_MS), end)
                    && !links.stalled(other, third.saturating_sub(EJECTION_MAX_MS), end)
                    && failed_at(&failed, gateway, incarnation, other)
                        .iter()
                        .all(|&at| at + EJECTION_MAX_MS < third || at > end)
            });
            let Some(other) = fit else {
                continue;
            };
            counts.timeouts_judged += 1;
            let Some(broken) = list
                .iter()
                .find(|s| third + ANSWER_MS < s.received_ms && s.received_ms < end)
            else {
                continue;
            };
            counts.timeouts_broken += 1;
            if counts.timeouts_broken <= SHOWN_MAX {
                violations.push(format!(
                    "{gateway} (incarnation {incarnation}) timed out on {instance} {TIMEOUTS_TO_EJECT} times in a row (request ids {:?}, the last at {third} ms) after an answer at {from} ms, and sent it request {:?} at {} ms, within the ejection ({EJECTION_MIN_MS} ms), while {other} was routable there and fit to try",
                    stalled.iter().map(|s| s.request_id.as_str()).collect::<Vec<_>>(),
                    broken.request_id,
                    broken.received_ms
                ));
            }
        }
    }
}

/// The eviction wait: a gateway evicts an instance only after every connection to it has
/// failed for [`EVICT_AFTER_MS`] since its last answer (since the incarnation started, if it
/// never answered), and evicts it again, with no answer between, only after twice that since
/// the eviction before. Each eviction's date may be late by [`STAMP_LATE_MS`] (never early),
/// so the first is judged by its date and the second by the distance between two dates less
/// that margin; an eviction with an answer within the margin before its date is not judged.
fn check_eviction_waits(
    records: &Records<'_>,
    counts: &mut BalancingCounts,
    violations: &mut Vec<String>,
) {
    let Records {
        evictions,
        served,
        connects,
        links,
        starts,
        skews,
        epoch_ms,
        ..
    } = *records;
    let failed = failures(connects);
    for e in evictions {
        let Some((incarnation, born)) = incarnation_at(starts, &e.gateway, e.at_ms) else {
            continue;
        };
        let answers: Vec<u64> = served
            .iter()
            .filter(|s| {
                s.gateway_node == e.gateway
                    && s.instance_id == e.instance
                    && s.received_ms >= born
                    && s.received_ms <= e.at_ms
                    && answered(s, links, skews, epoch_ms)
            })
            .map(|s| s.received_ms)
            .collect();
        if answers.iter().any(|&r| r + STAMP_LATE_MS >= e.at_ms) {
            continue;
        }
        let since = answers.iter().copied().max().unwrap_or(born).max(born);
        let before = evictions
            .iter()
            .filter(|p| {
                p.gateway == e.gateway
                    && p.instance == e.instance
                    && since <= p.at_ms
                    && p.at_ms < e.at_ms
            })
            .map(|p| p.at_ms)
            .max();
        let early = match before {
            Some(p) => (e.at_ms - p < 2 * EVICT_AFTER_MS - STAMP_LATE_MS).then(|| {
                format!(
                    "evicted it at {p} ms before, with no answer between, so it had to wait {} ms",
                    2 * EVICT_AFTER_MS
                )
            }),
            None => {
                let failing = failed
                    .get(&(e.gateway.as_str(), incarnation, e.instance.as_str()))
                    .is_some_and(|list| {
                        list.iter()
                            .any(|&at| since <= at && at + EVICT_AFTER_MS <= e.at_ms + BATCH_MS)
                    });
                (!failing).then(|| {
                    format!(
                        "no connection to it had failed from {since} ms (its last answer, or the gateway's start) until {EVICT_AFTER_MS} ms before"
                    )
                })
            }
        };
        if let Some(why) = early {
            counts.evictions_early += 1;
            if counts.evictions_early <= SHOWN_MAX {
                violations.push(format!(
                    "{} (incarnation {incarnation}) evicted {} at {} ms too early: it {why}",
                    e.gateway, e.instance, e.at_ms
                ));
            }
        }
    }
}

/// The eviction itself: a gateway cut off from every instance of the service, while it keeps
/// trying them, must evict them once every connection has failed for the wait. Judged for
/// each stretch of at least [`CUTOFF_JUDGED_MS`] in which the gateway was cut off from every
/// sample instance (any partition; the `cutoffs` fault kind makes them), if the gateway
/// reached the broker throughout its incarnation until then (its eviction must be written),
/// had evicted nothing before in that incarnation (the wait is the base one), and failed to
/// connect to every instance early enough that three more failed connections came after the
/// wait. Then an eviction by it must be dated within the stretch (or [`STAMP_LATE_MS`] after
/// it); if none is, and every instance stayed routable there throughout (no one else evicted
/// them and their leases held), the gateway did not evict when it had to.
fn check_cutoffs(
    records: &Records<'_>,
    counts: &mut BalancingCounts,
    violations: &mut Vec<String>,
) {
    let Records {
        evictions,
        connects,
        routing,
        links,
        instances,
        starts,
        ..
    } = *records;
    let failed = failures(connects);
    for gateway in starts.keys() {
        for (a, b) in links.cut_off(gateway, instances, CUTOFF_JUDGED_MS) {
            let Some((incarnation, born)) = incarnation_at(starts, gateway, a) else {
                continue;
            };
            let tail = b + STAMP_LATE_MS + 1_000;
            if !links.quiet(gateway, BROKER_HOST, born, tail)
                || !links.quiet(BROKER_HOST, gateway, born, tail)
                || evictions
                    .iter()
                    .any(|e| &e.gateway == gateway && born <= e.at_ms && e.at_ms < a)
            {
                continue;
            }
            let first: Option<Vec<u64>> = instances
                .iter()
                .map(|i| {
                    failed
                        .get(&(gateway.as_str(), incarnation, i.as_str()))
                        .and_then(|l| l.iter().copied().filter(|&at| a <= at && at <= b).min())
                })
                .collect();
            let Some(last_first) = first.and_then(|f| f.into_iter().max()) else {
                continue;
            };
            let after_wait = instances
                .iter()
                .filter_map(|i| failed.get(&(gateway.as_str(), incarnation, i.as_str())))
                .flatten()
                .filter(|&&at| last_first + EVICT_AFTER_MS + GRACE_MS <= at && at + 1_000 <= b)
                .count();
            if after_wait < 3 {
                continue;
            }
            if evictions
                .iter()
                .any(|e| &e.gateway == gateway && a <= e.at_ms && e.at_ms <= tail)
            {
                counts.cutoffs_judged += 1;
                continue;
            }
            if !instances
                .iter()
                .all(|i| routing.routable_throughout(gateway, i, a, b))
            {
                continue;
            }
            counts.cutoffs_judged += 1;
            counts.cutoffs_unevicted += 1;
            if counts.cutoffs_unevicted <= SHOWN_MAX {
                violations.push(format!(
                    "{gateway} (incarnation {incarnation}) was cut off from every instance from {a} ms to {b} ms; every connection to each had failed since {last_first} ms, {after_wait} more failed after the eviction wait ({EVICT_AFTER_MS} ms), and it evicted none, while they stayed routable there"
                ));
            }
        }
    }
}
