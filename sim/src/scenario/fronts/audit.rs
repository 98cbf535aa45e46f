//! Auditing inside the simulation: every gateway incarnation audits into a memory sink of its
//! own (`Node::builder(..).audit_sink`), which a drawn schedule makes unavailable now and
//! then; at the end, every call the client saw answered must have been audited exactly once by
//! the incarnation that answered it, or its record's loss counted (decision 0021's rule: a
//! record is delivered, or dropped and counted by reason, never lost silently).
//!
//! A sink per incarnation, not per gateway: the records an incarnation queued and lost in its
//! crash are its own to count, and a request is judged against the incarnation that answered
//! it. (Each incarnation draws its request ids from a generator of its own, so ids do not
//! repeat across restarts; `scenario/balancing.rs` relies on that.)

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::Config;
use switchyard::Node;
use switchyard::audit::{DropReason, MemorySink, Stream};

use super::{AUDIT_DRAWS, Answered};

/// How many records a memory sink keeps: far above what a run audits (a few thousand), so
/// that the sink never forgets one the check looks for. A sink that reaches it fails the run
/// (`check`), rather than a record silently falling out.
const SINK_RECORDS_MAX: usize = 200_000;
/// The auditor's queue in the simulation: small, so that a sink outage fills it and records
/// are dropped as `queue_full` as well as `unavailable`.
const QUEUE_RECORDS_MAX: usize = 32;

/// Turns auditing on in a simulated gateway's config: every request recorded, a small queue.
pub fn configure(config: &mut Config) {
    config.audit.enabled = true;
    config.audit.queue_records_max = QUEUE_RECORDS_MAX;
    config.audit.default.sample_successes = 1.0;
}

/// One incarnation's sink and node, from the moment it started.
struct Audited {
    gateway: String,
    started_ms: u64,
    sink: MemorySink,
    node: Option<Arc<Node>>,
}

/// The sinks of every incarnation, and which gateways' sinks are out now.
#[derive(Default)]
pub struct Sinks {
    audited: Vec<Audited>,
    out: BTreeSet<String>,
}

pub type SharedSinks = Rc<RefCell<Sinks>>;

impl Sinks {
    /// A sink for an incarnation of `gateway` starting now; out if its gateway's sink is.
    pub fn sink_for(&mut self, gateway: &str, started_ms: u64) -> Arc<MemorySink> {
        let sink = MemorySink::new(SINK_RECORDS_MAX);
        sink.set_available(!self.out.contains(gateway));
        self.audited.push(Audited {
            gateway: gateway.to_owned(),
            started_ms,
            sink: sink.clone(),
            node: None,
        });
        Arc::new(sink)
    }

    /// The node of the incarnation of `gateway` started last, once it is built.
    pub fn node_built(&mut self, gateway: &str, node: Arc<Node>) {
        if let Some(a) = self.audited.iter_mut().rev().find(|a| a.gateway == gateway) {
            a.node = Some(node);
        }
    }

    /// Makes `gateway`'s current sink unavailable (`out`) or available again.
    pub fn set_out(&mut self, gateway: &str, out: bool) {
        if out {
            self.out.insert(gateway.to_owned());
        } else {
            self.out.remove(gateway);
        }
        if let Some(a) = self.audited.iter().rev().find(|a| a.gateway == gateway) {
            a.sink.set_available(!out);
        }
    }
}

/// Sink outages drawn for a run: `(at_ms, gateway, out)`, in time order. Half the seeds have
/// none; the others 1-3 outages of 0.2-3 s each on a random gateway in the fault window.
pub fn outages(seed: u64, gateways: &[String], fault_ms: u64) -> Vec<(u64, String, bool)> {
    let mut rng = SmallRng::seed_from_u64(seed ^ AUDIT_DRAWS);
    let mut steps = Vec::new();
    if gateways.is_empty() || fault_ms <= 1_000 || !rng.random_bool(0.5) {
        return steps;
    }
    for _ in 0..rng.random_range(1..=3) {
        let gw = gateways[rng.random_range(0..gateways.len())].clone();
        let at = rng.random_range(1_000..fault_ms);
        let len = rng.random_range(200..3_000);
        steps.push((at, gw.clone(), true));
        steps.push(((at + len).min(fault_ms), gw, false));
    }
    steps.sort_by_key(|(at, _, _)| *at);
    steps
}

/// What the audit check counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditCounts {
    /// Answered calls looked for.
    pub answered: usize,
    /// Of them, found audited once.
    pub audited: usize,
    /// Not found, within the incarnation's counted drops (and records still queued).
    pub missing_counted: usize,
    /// Drops the auditors counted, any reason, requests stream.
    pub dropped: u64,
    /// Registry records delivered (changes asked of a gateway, applied or refused, and its
    /// evictions), each checked for its form ([`check_registry_records`]).
    #[serde(default)]
    pub registry_records: usize,
}

/// Every answered call audited exactly once by the incarnation that answered it, or missing
/// within what that incarnation counted as dropped (or still held queued when it crashed or
/// the run ended); no request id audited twice by one incarnation.
pub fn check(sinks: &Sinks, answered: &[Answered], violations: &mut Vec<String>) -> AuditCounts {
    let mut counts = AuditCounts::default();
    // Each incarnation's request records by request id.
    let mut held: Vec<BTreeMap<String, usize>> = Vec::new();
    for a in &sinks.audited {
        let records = a.sink.records();
        if records.len() >= SINK_RECORDS_MAX {
            violations.push(format!(
                "the audit sink of {} (started {} ms) reached its bound of {SINK_RECORDS_MAX} records: the audit check cannot judge it",
                a.gateway, a.started_ms
            ));
        }
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        for r in records.into_iter().filter(|r| r.stream == Stream::Requests) {
            *by_id.entry(r.key).or_default() += 1;
        }
        for (id, n) in by_id.iter().filter(|(_, n)| **n > 1) {
            violations.push(format!(
                "{} (started {} ms) audited request {id:?} {n} times",
                a.gateway, a.started_ms
            ));
        }
        held.push(by_id);
    }
    counts.registry_records = check_registry_records(sinks, violations);
    let mut missing = vec![0u64; sinks.audited.len()];
    for call in answered.iter().filter(|c| !c.request_id.is_empty()) {
        counts.answered += 1;
        // The incarnation that answered: the last of its gateway started by then.
        let Some(i) = sinks
            .audited
            .iter()
            .rposition(|a| a.gateway == call.gateway && a.started_ms <= call.at_ms)
        else {
            violations.push(format!(
                "{} answered request {:?} at {} ms before it started",
                call.gateway, call.request_id, call.at_ms
            ));
            continue;
        };
        match held[i].get(&call.request_id) {
            Some(_) => counts.audited += 1,
            None => missing[i] += 1,
        }
    }
    for (i, a) in sinks.audited.iter().enumerate() {
        let (dropped, queued) =
            a.node
                .as_ref()
                .and_then(|n| n.auditor())
                .map_or((0, 0), |auditor| {
                    let dropped: u64 = DropReason::ALL
                        .into_iter()
                        .map(|r| auditor.dropped_count(Stream::Requests, r))
                        .sum();
                    (dropped, auditor.queued() as u64)
                });
        counts.dropped += dropped;
        if missing[i] > dropped + queued {
            violations.push(format!(
                "{} (started {} ms) answered {} requests it never audited, but counted only {dropped} dropped and holds {queued} queued: audit records lost silently",
                a.gateway, a.started_ms, missing[i]
            ));
        } else {
            counts.missing_counted += missing[i] as usize;
        }
    }
    counts
}

/// The fronts a registry record may name, by `via`.
const VIAS: [&str; 4] = ["rest", "grpc", "graphql", "gateway"];

/// The most malformed registry records described in one run (any one fails it).
const REGISTRY_SHOWN_MAX: usize = 5;

/// Every registry record a sink received is well formed: it decodes; it names the front the
/// change came through (`rest`, `grpc`, `graphql`), or `gateway` for a change the gateway made
/// itself (an eviction is always one); and a change applied carries the stamp it was applied
/// with, written `physical.logical.node` with the node that wrote the record (a gateway stamps
/// the changes it takes), while a refused one carries an error code and no stamp. Returns how
/// many records were judged.
fn check_registry_records(sinks: &Sinks, violations: &mut Vec<String>) -> usize {
    use prost::Message;
    use switchyard_proto::audit::{AuditRecord, RegistryAction, audit_record::Kind};
    let mut judged = 0;
    let mut wrong = 0;
    for a in &sinks.audited {
        for r in a
            .sink
            .records()
            .into_iter()
            .filter(|r| r.stream == Stream::Registry)
        {
            judged += 1;
            let problem = match AuditRecord::decode(r.payload.as_ref()) {
                Err(e) => Some(format!("does not decode ({e})")),
                Ok(AuditRecord {
                    kind: Some(Kind::Registry(reg)),
                    gateway_node,
                    ..
                }) => {
                    let evict = reg.action == RegistryAction::Evict as i32;
                    let stamp_node = reg.stamp.splitn(3, '.').nth(2);
                    let stamp_ok = reg
                        .stamp
                        .splitn(3, '.')
                        .take(2)
                        .all(|n| n.parse::<u64>().is_ok())
                        && stamp_node == Some(gateway_node.as_str());
                    if !VIAS.contains(&reg.via.as_str()) {
                        Some(format!("names the front {:?}", reg.via))
                    } else if evict && reg.via != "gateway" {
                        Some(format!("is an eviction through {:?}", reg.via))
                    } else if reg.error_code.is_empty() && !stamp_ok {
                        Some(format!("was applied with the stamp {:?}", reg.stamp))
                    } else if !reg.error_code.is_empty() && !reg.stamp.is_empty() {
                        Some(format!(
                            "was refused ({}) but carries the stamp {:?}",
                            reg.error_code, reg.stamp
                        ))
                    } else {
                        None
                    }
                }
                Ok(other) => Some(format!("is not a registry record ({:?})", other.kind)),
            };
            if let Some(problem) = problem {
                wrong += 1;
                if wrong <= REGISTRY_SHOWN_MAX {
                    violations.push(format!(
                        "{} (started {} ms) audited a registry change ({}) that {problem}",
                        a.gateway, a.started_ms, r.key
                    ));
                }
            }
        }
    }
    judged
}

/// A renewal is audited as one, not as a registration. The sample instances register once and
/// then renew (gRPC `Renew`), registering again only after a call failed; with
/// `audit.registry_renewals` off (the default, which the simulation runs) a renewal leaves no
/// record, and a failed one leaves a refused `Renew` record if the gateway answered it. So two
/// applied registrations of one sample instance in one gateway incarnation's sink, with neither
/// a refused record of it nor a disturbance of it or its link to the gateway between them
/// (`undisturbed`: whether the instance and its link to the gateway were left alone during a
/// span of simulated ms), mean a renewal was audited as a registration. Returns how many
/// applied registrations of sample instances the sinks hold.
pub fn check_renewals_audited_as_such(
    sinks: &Sinks,
    skews: &BTreeMap<String, i64>,
    epoch_ms: u64,
    undisturbed: impl Fn(&str, &str, u64, u64) -> bool,
    violations: &mut Vec<String>,
) -> usize {
    use prost::Message;
    use switchyard_proto::audit::{AuditRecord, RegistryAction, audit_record::Kind};
    let mut judged = 0;
    for a in &sinks.audited {
        let skew = skews.get(&a.gateway).copied().unwrap_or(0);
        // Each sample instance's records in this sink, in order: (simulated ms, applied
        // registration, refused anything).
        let mut by_instance: BTreeMap<String, Vec<(u64, bool, bool)>> = BTreeMap::new();
        for r in a
            .sink
            .records()
            .into_iter()
            .filter(|r| r.stream == Stream::Registry)
        {
            let Ok(AuditRecord {
                kind: Some(Kind::Registry(reg)),
                time_unix_ms,
                ..
            }) = AuditRecord::decode(r.payload.as_ref())
            else {
                continue;
            };
            if reg.service != super::super::SAMPLE {
                continue;
            }
            let at = i128::from(time_unix_ms) - i128::from(epoch_ms) - i128::from(skew);
            let at = u64::try_from(at.max(0)).unwrap_or(0);
            let applied_registration =
                reg.action == RegistryAction::Register as i32 && reg.error_code.is_empty();
            judged += usize::from(applied_registration);
            by_instance.entry(reg.instance_id).or_default().push((
                at,
                applied_registration,
                !reg.error_code.is_empty(),
            ));
        }
        for (instance, records) in &by_instance {
            let registrations: Vec<(usize, u64)> = records
                .iter()
                .enumerate()
                .filter(|(_, r)| r.1)
                .map(|(i, r)| (i, r.0))
                .collect();
            for pair in registrations.windows(2) {
                let ((i, from), (j, to)) = (pair[0], pair[1]);
                if records[i + 1..j].iter().any(|r| r.2)
                    || !undisturbed(&a.gateway, instance, from, to)
                {
                    continue;
                }
                violations.push(format!(
                    "{} (started {} ms) audited registrations of {}/{instance} at {from} ms and {to} ms with nothing between that could have failed a renewal: a renewal was audited as a registration",
                    a.gateway,
                    a.started_ms,
                    super::super::SAMPLE
                ));
                break;
            }
        }
    }
    judged
}
