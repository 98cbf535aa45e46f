//! Liveness mode (`--liveness`): after the heal, the cluster must converge and serve every live
//! service through every gateway within [`BOUND_MS`] of simulated time.
//!
//! A prober in the client waits for the heal, then every 100 ms calls the sample service
//! through each gateway that has not yet answered 200, until all have. The run goes on after
//! convergence until then (or the settle time ends). The time from the heal to the last first
//! 200 is the run's `served_ms`; `explore --liveness` reports its quantiles, and those of the
//! convergence time, per fault kind.
//!
//! Collection is judged the same way: every entry a gateway stamped before the heal is, within
//! the bound, gone from the log's fold, because the gateway that stamped it wrote a delete
//! marker for it (it is no longer live: a removal, or a lease that ran out) or because a newer
//! change replaced it (a renewal). Safety alone cannot see a gateway that never collects: the
//! tombstones it keeps break no invariant. The time from the heal until none is left is the
//! run's `collected_ms`. An entry stamped before the heal is due by the heal plus
//! `registry.lease_max_ms` plus `registry.clock_drift_max_ms` (8 s in the simulation), plus
//! a round of housekeeping (1 s) and the clock skew; the run goes on until then.

use std::cell::Cell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use super::reference::{Reference, describe};
use super::{Outcome, SAMPLE};
use crate::PUBLIC_PORT;
use crate::faults::Faults;

/// How long after the heal the cluster has to converge and to serve every live service through
/// every gateway: half the default settle time, about four times the slowest convergence
/// measured in 300 seeds before this mode existed (3.2 s), so that it flags a cluster that
/// recovers only by luck or by a long timeout, not one that is merely slow.
pub const BOUND_MS: u64 = 15_000;
/// Pause between two rounds of probes.
const PROBE_EVERY_MS: u64 = 100;
/// How often, in simulated time, the log is folded to see whether collection is done.
pub const COLLECT_CHECK_EVERY_MS: u64 = 250;

#[derive(Debug)]
pub struct Probe {
    pub gateways: Vec<String>,
    pub fault_ms: u64,
    pub settle_ms: u64,
    /// Set to the simulated time at which the last gateway first answered 200.
    pub served_at_ms: Rc<Cell<Option<u64>>>,
}

/// The prober (see the module's documentation); a bounded number of rounds.
pub async fn probe(p: Option<Probe>) {
    let Some(p) = p else { return };
    tokio::time::sleep(Duration::from_millis(p.fault_ms)).await;
    let mut waiting: Vec<String> = p.gateways.clone();
    for _ in 0..p.settle_ms / PROBE_EVERY_MS {
        let mut still = Vec::new();
        for gw in waiting {
            let path = format!("/{SAMPLE}/hello");
            match crate::http_get(&gw, PUBLIC_PORT, &path).await {
                Ok((200, _)) => {}
                _ => still.push(gw),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            p.served_at_ms.set(Some(super::workload::sim_now_ms()));
            return;
        }
        tokio::time::sleep(Duration::from_millis(PROBE_EVERY_MS)).await;
    }
}

/// The violations of a liveness run: no convergence or no service within the bound.
pub fn judge(convergence_ms: Option<u64>, served_ms: Option<u64>, violations: &mut Vec<String>) {
    for (what, ms) in [
        ("converge", convergence_ms),
        ("serve every live service through every gateway", served_ms),
    ] {
        match ms {
            Some(ms) if ms <= BOUND_MS => {}
            Some(ms) => violations.push(format!(
                "liveness: the cluster took {ms} ms after the heal to {what}, beyond the bound of {BOUND_MS} ms"
            )),
            None => violations.push(format!(
                "liveness: the cluster did not {what} after the heal (bound {BOUND_MS} ms)"
            )),
        }
    }
}

/// The first entry of `held` (the log's fold) that a gateway of the run stamped at or before
/// `heal_epoch_ms`, described, or `None` when there is none left. Entries of origins that
/// are not the run's gateways (a stranger's forged records) are left out: a gateway collects
/// another's entries only after the tombstone retention, a day, outside `short_retention`.
pub(super) fn uncollected(
    held: &Reference,
    gateways: &[String],
    heal_epoch_ms: u64,
) -> Option<String> {
    held.entries
        .iter()
        .find(|(_, entry)| {
            entry.stamp.physical_ms <= heal_epoch_ms && gateways.contains(&entry.stamp.node_id)
        })
        .map(|(key, entry)| format!("{}/{} {}", key.service, key.instance_id, describe(entry)))
}

/// The violation of a liveness run whose entries stamped before the heal were not all
/// collected (or replaced) within the bound.
pub fn judge_collection(
    collected_ms: Option<u64>,
    uncollected: Option<&str>,
    violations: &mut Vec<String>,
) {
    match collected_ms {
        Some(ms) if ms <= BOUND_MS => {}
        Some(ms) => violations.push(format!(
            "liveness: the entries stamped before the heal were collected {ms} ms after it, beyond the bound of {BOUND_MS} ms"
        )),
        None => violations.push(format!(
            "liveness: an entry stamped before the heal was neither collected nor replaced after it (bound {BOUND_MS} ms): {}",
            uncollected.unwrap_or("none named")
        )),
    }
}

fn quantiles(mut values: Vec<u64>) -> String {
    if values.is_empty() {
        return "no run".into();
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {} ms  p90 {} ms  p99 {} ms  max {} ms  ({} runs)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        values.len()
    )
}

/// Per fault kind, over the runs that injected it: the quantiles of the time from the heal to
/// convergence, to serving through every gateway, and to collection.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut out = format!("liveness (bound {BOUND_MS} ms after the heal)\n");
    let mut rows: Vec<(&str, Vec<&Outcome>)> = vec![("any", outcomes.iter().collect())];
    for kind in Faults::KINDS {
        rows.push((
            kind,
            outcomes
                .iter()
                .filter(|o| o.faults.names().contains(&kind))
                .collect(),
        ));
    }
    for (kind, runs) in rows {
        let converged = runs.iter().filter_map(|o| o.convergence_ms).collect();
        let served = runs.iter().filter_map(|o| o.served_ms).collect();
        let collected = runs.iter().filter_map(|o| o.collected_ms).collect();
        let _ = writeln!(out, "  {kind:<16} converge {}", quantiles(converged));
        let _ = writeln!(out, "  {:<16} serve    {}", "", quantiles(served));
        let _ = writeln!(out, "  {:<16} collect  {}", "", quantiles(collected));
    }
    out
}
