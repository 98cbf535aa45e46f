//! The balancer's corner faults and the calls that exercise them, drawn from a generator of
//! their own (seeded from the run's seed), so that every other draw stays as it was:
//!
//! * `stalls`: a sample instance stalls for [`STALL_MS`]: it takes every request and answers
//!   none before the gateway's deadline ([`crate::witness::Stalls`]). A gateway that times out
//!   on it three times in a row must eject it, and must never send a timed-out request again.
//! * `cutoffs`: one gateway is cut off from every sample instance for [`CUTOFF_MS`], longer
//!   than the eviction wait (5 s): it must evict them, and not before the wait.
//! * `shortages` (from a generator of its own, [`shortage`]): one gateway restarts short of
//!   file descriptors for [`SHORTAGE_MS`], longer than the eviction wait: every connection it
//!   opens to an instance fails with EMFILE. The shortage is the gateway's, not the
//!   instances': it must answer its calls `overloaded` (503), never blame an instance
//!   (`upstream_connect_failed`), and evict nothing.
//!
//! The client's own calls go one at a time to a random gateway, about one every 0.3 s over
//! all of them, too few for one gateway to meet three timeouts in a stall. So during each
//! episode a prober sends a REST call through the episode's gateway every [`PROBE_EVERY_MS`],
//! without waiting for the answers. The checks are in `scenario::balancing`.

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

use super::SAMPLE;
use super::fronts::{CallFront, SharedLog, calls};
use crate::faults::{Action, EPISODE_WINDOW_MS, Faults, Step};

/// XORed into the seed for the generator of these kinds and their episodes.
pub(super) const BALANCE_DRAWS: u64 = 0xba1a_4ce5;
/// How long a stall lasts: long enough for three timeouts in a row through one gateway (each
/// 2 s, and the balancer steers away from an instance with requests in flight).
pub const STALL_MS: Range<u64> = 7_000..10_000;
/// How long the prober goes on after a stall: past the ejection that its last timeouts began
/// (3 s in the simulation).
pub const AFTER_STALL_MS: u64 = 3_500;
/// How long a cutoff lasts: longer than keep-alive (15 s), the eviction wait (5 s) and the
/// connection attempts that find it (1 s each).
pub const CUTOFF_MS: Range<u64> = 24_000..28_000;
/// How long a shortage of file descriptors lasts: longer than the eviction wait (5 s) and an
/// ejection (3 s) together, so that a gateway that took it for the instances' failure would
/// have ejected and evicted them.
pub const SHORTAGE_MS: Range<u64> = 8_000..10_000;

/// How often the prober calls during an episode.
pub const PROBE_EVERY_MS: u64 = 250;

/// One episode's calls: through `gateway`, from `from_ms` until `to_ms` (simulated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub gateway: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// The episodes of the kinds `faults` switches on, within `[1000, fault_ms)`: one or two
/// stalls (one per [`EPISODE_WINDOW_MS`] started, at most two) and one cutoff, each left out
/// when the window is too short for it. `gateways` are those present from the start;
/// `instances` the sample instances (host names).
pub fn draw(
    rng: &mut SmallRng,
    faults: &Faults,
    gateways: &[String],
    instances: &[String],
    fault_ms: u64,
) -> (Vec<Step>, Vec<Window>) {
    let (mut steps, mut windows) = (Vec::new(), Vec::new());
    if gateways.is_empty() || instances.is_empty() {
        return (steps, windows);
    }
    let most = fault_ms.div_ceil(EPISODE_WINDOW_MS).clamp(1, 2);
    if faults.stalls {
        for _ in 0..rng.random_range(1..=most) {
            let len_ms = rng.random_range(STALL_MS);
            let instance = instances[rng.random_range(0..instances.len())].clone();
            let gateway = gateways[rng.random_range(0..gateways.len())].clone();
            let latest = fault_ms.saturating_sub(len_ms + AFTER_STALL_MS + 500);
            if latest <= 1_000 {
                continue;
            }
            let at_ms = rng.random_range(1_000..latest);
            steps.push(Step {
                at_ms,
                action: Action::Stall(instance.clone()),
            });
            steps.push(Step {
                at_ms: at_ms + len_ms,
                action: Action::Unstall(instance),
            });
            windows.push(Window {
                gateway,
                from_ms: at_ms,
                to_ms: at_ms + len_ms + AFTER_STALL_MS,
            });
        }
    }
    if faults.cutoffs {
        let len_ms = rng.random_range(CUTOFF_MS);
        // Not a gateway an instance registers through (instance i renews through gateway i):
        // cut off from it, the instance could not renew, its lease would lapse everywhere,
        // and no eviction would be due.
        let others = gateways.get(instances.len()..).filter(|g| !g.is_empty());
        let pool = others.unwrap_or(gateways);
        let gateway = pool[rng.random_range(0..pool.len())].clone();
        let latest = fault_ms.saturating_sub(len_ms + 500);
        if latest > 1_000 {
            let at_ms = rng.random_range(1_000..latest);
            for instance in instances {
                steps.push(Step {
                    at_ms,
                    action: Action::Partition(gateway.clone(), instance.clone()),
                });
                steps.push(Step {
                    at_ms: at_ms + len_ms,
                    action: Action::Repair(gateway.clone(), instance.clone()),
                });
            }
            windows.push(Window {
                gateway,
                from_ms: at_ms,
                to_ms: at_ms + len_ms,
            });
        }
    }
    (steps, windows)
}

/// One shortage of file descriptors, within `[1000, fault_ms)`: a gateway present from the
/// start crashes, restarts 200-500 ms later (so it holds no connection that was opened
/// before), and every connection it opens to an instance fails with EMFILE until the end of
/// the shortage; the window is the restarted gateway's part of it. `None` when the fault
/// window is too short.
pub fn shortage(
    rng: &mut SmallRng,
    gateways: &[String],
    fault_ms: u64,
) -> Option<(Vec<Step>, Window)> {
    let len_ms = rng.random_range(SHORTAGE_MS);
    let back_after_ms = rng.random_range(200..500);
    let latest = fault_ms.saturating_sub(len_ms + 500);
    if gateways.is_empty() || latest <= 1_000 {
        return None;
    }
    let gateway = gateways[rng.random_range(0..gateways.len())].clone();
    let at_ms = rng.random_range(1_000..latest);
    let steps = vec![
        Step {
            at_ms,
            action: Action::Shortage(gateway.clone()),
        },
        Step {
            at_ms,
            action: Action::Crash(gateway.clone()),
        },
        Step {
            at_ms: at_ms + back_after_ms,
            action: Action::Restart(gateway.clone()),
        },
        Step {
            at_ms: at_ms + len_ms,
            action: Action::Supply(gateway.clone()),
        },
    ];
    let window = Window {
        gateway,
        from_ms: at_ms + back_after_ms,
        to_ms: at_ms + len_ms,
    };
    Some((steps, window))
}

/// Sends a REST call to the sample service through each window's gateway every
/// [`PROBE_EVERY_MS`] while the window lasts, each in a task of its own (answers are logged
/// in `log` like the client's); returns when the last window has ended and its calls have
/// been answered or timed out (the client's 5 s bound).
pub async fn prober(windows: Vec<Window>, log: SharedLog, trace: Rc<RefCell<Vec<String>>>) {
    let Some(end_ms) = windows.iter().map(|w| w.to_ms).max() else {
        return;
    };
    let now_ms = || turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64);
    let mut calls = Vec::new();
    loop {
        let now = now_ms();
        if now >= end_ms {
            break;
        }
        for w in windows.iter().filter(|w| w.from_ms <= now && now < w.to_ms) {
            let (gateway, log, trace) = (w.gateway.clone(), log.clone(), trace.clone());
            calls.push(tokio::task::spawn_local(async move {
                let line = calls::call(CallFront::Rest, &gateway, SAMPLE, &log, now_ms).await;
                trace
                    .borrow_mut()
                    .push(format!("{now:>6} ms probe via {gateway}: {line}"));
            }));
        }
        tokio::time::sleep(Duration::from_millis(PROBE_EVERY_MS)).await;
    }
    for call in calls {
        let _ = call.await;
    }
}
