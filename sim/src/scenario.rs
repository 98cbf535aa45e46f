//! One simulated run: a cluster, a workload, a fault schedule drawn from the seed, and the
//! invariant checkers. [`run`] is deterministic: the same [`Options`] give the same
//! [`Outcome`], trace hash included.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::bus::MemoryBus;
use switchyard::config::RegistryConfig;
use switchyard::{Config, Node, Seams};
use switchyard_core::planted::{self, Bug};
use tokio_util::sync::CancellationToken;

use crate::broker::{BROKER_HOST, BrokerFaults, SimBus, broker_host};
use crate::faults::{Action, Episode, Faults, hostile_bursts, schedule, steps};
use crate::hostile::{self, Hostile};
use crate::witness::{ServedLog, Stalls};
use crate::{
    CONTROL_PORT, PUBLIC_PORT, SERVICE_PORT, SimClock, SimListener, witnessed_service_host,
};
use switchyard_core::InstanceKey;
use switchyard_core::event::EventBounds;

/// Simulated epoch: fixed, so wall-clock stamps are the same in every run of a seed.
const EPOCH_S: u64 = 1_800_000_000;
/// The service whose instances are real sample-service hosts.
pub const SAMPLE: &str = "sample";
/// Every gateway's `upstream.timeout_ms`; the routing checker's tolerance derives from it.
pub const UPSTREAM_TIMEOUT_MS: u64 = 2_000;
/// Every gateway's `registry.lease_max_ms` and the sample instances' lease: short, so that
/// tombstones are collected (delete markers written after this plus the drift bound, and
/// applied) many times within a run, during the faults as well as after.
pub const LEASE_MAX_MS: u64 = 6_000;
/// Every gateway's `registry.clock_drift_max_ms`: above the largest skew between two
/// gateways (±800 ms each), so no honest record is quarantined.
const CLOCK_DRIFT_MAX_MS: u64 = 2_000;
/// Every gateway's `registry.housekeeping_interval_ms`.
const HOUSEKEEPING_INTERVAL_MS: u64 = 1_000;
/// The most violations the routing checker describes in one run (it counts them all).
const ROUTING_VIOLATIONS_SHOWN: usize = 5;
/// The largest skew of a gateway's wall clock, either way, when `clock_skew` is on.
const CLOCK_SKEW_MS_MAX: i64 = 800;
/// A second generator for draws added after the first eight fault kinds (see `Faults::swarm`).
const LATER_DRAWS: u64 = 0x4057_11e5;
/// XORed into the seed for the fifth generator: the `drains` kind and its episodes.
const DRAIN_DRAWS: u64 = 0x00d2_a125;
/// XORed into the seed for the sixth generator: shortages of file descriptors.
const SHORTAGE_DRAWS: u64 = 0x005a_0127_ed00;

mod balancing;
mod checks;
mod clock;
mod corners;
mod fronts;
/// The subscriptions' check, public for its unit tests (`sim/tests/explore/units.rs`).
pub use fronts::{scrapes, subscriptions};
pub mod liveness;
mod probing;
mod readiness;
pub mod reference;
mod routing;
mod workload;

pub use balancing::{BalancingCounts, Links};
pub use fronts::FrontCounts;
pub use routing::RoutingCounts;

use checks::{
    Leases, Live, Reported, check_acknowledged, check_clock_within_drift, check_hostile_absent,
    check_no_phantoms, check_not_pinned, check_quarantine_counts, check_readable, converged,
    digests, reference, trace_hash,
};
pub use workload::GHOST;
use workload::{Ack, GHOST_IDS, GHOST_LEASE_MS};

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub seed: u64,
    pub gateways: usize,
    pub services: usize,
    /// Which faults this run may inject; `None`: drawn from the seed (swarm testing).
    pub faults: Option<Faults>,
    /// Faults happen in [1 s, fault_ms); then everything heals.
    pub fault_ms: u64,
    /// How long after the heal the cluster has to converge.
    pub settle_ms: u64,
    pub bug: Option<Bug>,
    /// An explicit fault schedule (proptest); `None`: drawn from the seed.
    pub episodes: Option<Vec<Episode>>,
    /// The lease the sample instances register with (they renew every third of it).
    pub lease_ms: u64,
    /// Simulated time one turmoil step advances every host by (see docs/simulation.md,
    /// "Speed"): the granularity of message delivery between hosts.
    pub tick_ms: u64,
    /// Liveness mode: after the heal the cluster must converge and serve every live service
    /// within `liveness::BOUND_MS` (see `scenario/liveness.rs`).
    pub liveness: bool,
    /// Time slept on the machine's clock after every step, as a loaded machine stretches a
    /// run: a seed whose trace changes with it depends on the machine's clock somewhere
    /// (the determinism test replays with it). Zero by default.
    pub wall_drag: Duration,
}

/// The default step of simulated time; see [`Options::tick_ms`].
pub const TICK_MS: u64 = 5;

impl Options {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            gateways: 5,
            services: 2,
            faults: None,
            fault_ms: 60_000,
            settle_ms: 30_000,
            bug: None,
            episodes: None,
            lease_ms: LEASE_MAX_MS,
            tick_ms: TICK_MS,
            liveness: false,
            wall_drag: Duration::ZERO,
        }
    }
}

/// What one run found. Serialised (without the trace) as the result line of
/// `switchyard-sim run --json`, which `explore` reads from its child processes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub seed: u64,
    pub faults: Faults,
    pub violations: Vec<String>,
    /// Simulated time from the last heal until every gateway matched the reference.
    pub convergence_ms: Option<u64>,
    /// Liveness mode: simulated time from the heal until every gateway had answered a call of
    /// the sample service with 200.
    #[serde(default)]
    pub served_ms: Option<u64>,
    /// Liveness mode: simulated time from the heal until the log held no entry a gateway had
    /// stamped before the heal (every such entry collected, or replaced by a newer one).
    #[serde(default)]
    pub collected_ms: Option<u64>,
    pub simulated_ms: u64,
    pub acknowledged: usize,
    /// Delete markers on the log at the end: tombstones and expired entries collected.
    #[serde(default)]
    pub delete_markers: usize,
    /// What the routing checker judged.
    pub routing: RoutingCounts,
    /// Hostile records written into the broker's log (`hostile_records`), and how many of
    /// them the gateways had to apply (the rest they had to quarantine).
    pub hostile_records: usize,
    pub hostile_admissible: usize,
    /// What the checkers of the fronts and policies judged (`scenario/fronts.rs`).
    #[serde(default)]
    pub fronts: FrontCounts,
    /// What the balancing checks judged (`scenario/balancing.rs`).
    #[serde(default)]
    pub balancing: BalancingCounts,
    /// The most records one fetch from the broker returned in this run (drawn per seed).
    #[serde(default)]
    pub fetch_records_max: usize,
    /// Changes the clock's promise judged, and gateway incarnations judged at their first
    /// ready answer.
    #[serde(default)]
    pub clock_judged: usize,
    #[serde(default)]
    pub ready_judged: usize,
    /// Gateway incarnations up at the end whose event counts were judged against their
    /// position (`readiness.rs`).
    #[serde(default)]
    pub counts_judged: usize,
    /// Of those, the incarnations whose events applied by origin were judged against the log.
    #[serde(default)]
    pub origins_judged: usize,
    /// Graceful stops judged for their outbox's flush, and the 202 answers judged there.
    #[serde(default)]
    pub drains_judged: usize,
    #[serde(default)]
    pub drain_acks_judged: usize,
    /// Changes answered 202 whose gateway's pending count was judged while the log lacked
    /// them.
    #[serde(default)]
    pub pending_judged: usize,
    /// Changes sent to a gateway incarnation while it was catching up, and refused 503.
    #[serde(default)]
    pub catching_up_refused: usize,
    pub trace_hash: u64,
    #[serde(skip)]
    pub trace: Vec<String>,
}

type Shared<T> = Rc<RefCell<T>>;

fn gateway_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("gw-{i}")).collect()
}

/// Every gateway's `[registry]`: leases and the drift bound short enough that tombstones are
/// collected (delete markers written and applied) within a run, housekeeping every second;
/// with `short_retention`, any gateway collects any tombstone as early as the configuration
/// allows (the lease bound plus the drift bound).
fn registry_config(short_retention: bool) -> RegistryConfig {
    let default = Config::default().registry;
    RegistryConfig {
        lease_max_ms: LEASE_MAX_MS,
        lease_default_ms: LEASE_MAX_MS,
        clock_drift_max_ms: CLOCK_DRIFT_MAX_MS,
        housekeeping_interval_ms: HOUSEKEEPING_INTERVAL_MS,
        tombstone_retention_ms: if short_retention {
            LEASE_MAX_MS + CLOCK_DRIFT_MAX_MS
        } else {
            default.tombstone_retention_ms
        },
        ..default
    }
}

pub fn run(options: &Options) -> Outcome {
    align_task_ids();
    planted::plant(options.bug);
    let outcome = simulate(options);
    planted::plant(None);
    outcome
}

/// How many lists a current-thread tokio runtime keeps its tasks in (tokio 1.x: four times
/// the worker count, rounded up to a power of two; one worker here). A task goes to list
/// `id % TASK_LISTS`.
const TASK_LISTS: u64 = 4;

/// Moves tokio's process-wide task-id counter so that the next task spawned gets an id
/// divisible by [`TASK_LISTS`].
///
/// Why: tokio numbers tasks from one process-wide counter, and when a runtime is dropped (a
/// turmoil host crashing) it drops its tasks list by list, so in an order that depends on
/// each task's id modulo [`TASK_LISTS`]. Dropping the tasks closes their sockets, and the
/// order of those closes decides the timing of requests the crash cuts. A second run of a
/// seed in the same process starts the counter elsewhere; unaligned, its crashes can drop
/// tasks in another order and its trace can differ by a few milliseconds. Aligned, a run
/// sees the same ids modulo [`TASK_LISTS`] wherever the counter stood, as long as no other
/// thread of the process spawns tasks while it runs (parallel runs interleave their ids:
/// `explore` therefore runs each seed in its own process). At most `TASK_LISTS` throwaway
/// tasks; if the id cannot be read, nothing is aligned. `sim/tests/in_process.rs` fails if
/// a tokio release changes how tasks are listed.
fn align_task_ids() {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    for _ in 0..TASK_LISTS {
        let handle = runtime.spawn(async {});
        let id: Option<u64> = handle.id().to_string().parse().ok();
        let _ = runtime.block_on(handle);
        if id.is_none_or(|id| id % TASK_LISTS == TASK_LISTS - 1) {
            return;
        }
    }
}

fn simulate(options: &Options) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(options.seed);
    let mut later = SmallRng::seed_from_u64(options.seed ^ LATER_DRAWS);
    // The third generator: the fetch size for every run, the corner kinds when drawn.
    let mut corner_rng = SmallRng::seed_from_u64(options.seed ^ corners::CORNER_DRAWS);
    let fetch_records_max = corners::fetch_records_max(&mut corner_rng);
    // The fourth: the balancer's corner kinds and their episodes.
    let mut balance_rng = SmallRng::seed_from_u64(options.seed ^ probing::BALANCE_DRAWS);
    // The fifth: graceful stops.
    let mut drain_rng = SmallRng::seed_from_u64(options.seed ^ DRAIN_DRAWS);
    // The sixth: shortages of file descriptors.
    let mut shortage_rng = SmallRng::seed_from_u64(options.seed ^ SHORTAGE_DRAWS);
    let faults = options.faults.unwrap_or_else(|| {
        let mut faults = Faults::swarm(&mut rng, &mut later);
        faults.corners(&mut corner_rng);
        faults.balance_corners(&mut balance_rng);
        faults.drains(&mut drain_rng);
        faults.shortages(&mut shortage_rng);
        faults
    });
    let gateways = gateway_names(options.gateways);
    let services: Vec<String> = (1..=options.services).map(|i| format!("svc-{i}")).collect();
    let late = faults.late_join.then(|| gateways.last().cloned()).flatten();
    // Gateways present from the start; a late joiner is never a fault target.
    let present: Vec<String> = gateways
        .iter()
        .filter(|g| Some(*g) != late.as_ref())
        .cloned()
        .collect();
    let mut plan = match &options.episodes {
        Some(episodes) => steps(episodes, &present, &services, options.fault_ms),
        None => schedule(&mut rng, &faults, &present, &services, options.fault_ms),
    };
    let mut probes = Vec::new();
    // The windows of the shortages of file descriptors, for their check.
    let mut shortages = Vec::new();
    if options.episodes.is_none() {
        // Appended, then sorted stably: the other steps keep their order.
        plan.extend(hostile_bursts(&mut later, &faults, options.fault_ms));
        if faults.short_retention {
            let len_ms = registry_config(true).tombstone_retention_ms + 1_000;
            plan.extend(crate::faults::long_partition(
                &mut corner_rng,
                &present,
                len_ms,
                options.fault_ms,
            ));
        }
        let (steps, windows) = probing::draw(
            &mut balance_rng,
            &faults,
            &present,
            &services,
            options.fault_ms,
        );
        plan.extend(steps);
        probes = windows;
        if faults.drains {
            plan.extend(crate::faults::drain_steps(
                &mut drain_rng,
                &present,
                options.fault_ms,
            ));
        }
        if faults.shortages
            && let Some((steps, window)) =
                probing::shortage(&mut shortage_rng, &present, options.fault_ms)
        {
            plan.extend(steps);
            probes.push(window.clone());
            shortages.push(window);
        }
        plan.sort_by_key(|s| s.at_ms);
    }
    let trace: Shared<Vec<String>> = Rc::default();
    trace.borrow_mut().push(format!(
        "seed {} faults {} fetch batch {fetch_records_max}",
        options.seed,
        faults.names().join(",")
    ));

    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_millis(
            options.fault_ms + options.settle_ms + 5_000,
        ))
        .tick_duration(Duration::from_millis(options.tick_ms.clamp(1, 10)))
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_S))
        .rng_seed(options.seed)
        .build();

    let log = MemoryBus::new();
    let broker_faults = BrokerFaults {
        delay_ms_max: if faults.broker_delays { 50 } else { 0 },
        redeliver_probability: if faults.redelivery { 0.2 } else { 0.0 },
        fetch_records_max,
        lost_ack_probability: if faults.lost_acks {
            corners::LOST_ACK_PROBABILITY
        } else {
            0.0
        },
        deep_redeliver_probability: if faults.deep_redelivery {
            corners::DEEP_REDELIVER_PROBABILITY
        } else {
            0.0
        },
    };
    {
        let (log, seed) = (log.clone(), options.seed);
        sim.host(BROKER_HOST, move || {
            broker_host(log.clone(), broker_faults, seed)
        });
    }

    let nodes: Shared<BTreeMap<String, Arc<Node>>> = Rc::default();
    let skews: Shared<BTreeMap<String, i64>> = Rc::default();
    // Gateway incarnations started during the last step, with their change feeds.
    let started: Shared<Vec<Incarnation>> = Rc::default();
    let sinks: fronts::audit::SharedSinks = Rc::default();
    let connects = balancing::Connects::default();
    // Each gateway's current incarnation's shutdown token.
    let shutdowns: Shared<BTreeMap<String, CancellationToken>> = Rc::default();
    let mut add_gateway = |sim: &mut turmoil::Sim<'_>, name: &str, index: usize| {
        let skew_ms = if faults.clock_skew {
            rng.random_range(-CLOCK_SKEW_MS_MAX..=CLOCK_SKEW_MS_MAX)
        } else {
            0
        };
        skews.borrow_mut().insert(name.to_owned(), skew_ms);
        let short_retention = faults.short_retention;
        let (nodes, started, sinks) = (nodes.clone(), started.clone(), sinks.clone());
        let (connects, services) = (connects.clone(), services.clone());
        let shutdowns = shutdowns.clone();
        let (name_owned, seed) = (name.to_owned(), options.seed);
        // Each start of the host is an incarnation with a generator of its own, as a
        // production gateway seeded by the operating system has at each start: its request ids
        // never repeat an earlier incarnation's. The first keeps the seed it always had.
        let starts = Rc::new(std::cell::Cell::new(0u64));
        sim.host(name, move || {
            let (nodes, started, name) = (nodes.clone(), started.clone(), name_owned.clone());
            let (sinks, connects, services) = (sinks.clone(), connects.clone(), services.clone());
            let shutdowns = shutdowns.clone();
            let incarnation = starts.get();
            starts.set(incarnation + 1);
            async move {
                let config = Config {
                    node_id: name.clone(),
                    ..Config::default()
                };
                let mut config = config;
                config.bus.publish_wait_ms = 500;
                config.upstream.timeout_ms = UPSTREAM_TIMEOUT_MS;
                config.upstream.ejection_base_ms = balancing::EJECTION_MIN_MS;
                config.upstream.response_body_bytes_max = fronts::edges::RESPONSE_BODY_MAX;
                config.upstream.reset_stream_hold_ms = crate::RESET_STREAM_HOLD.as_millis() as u64;
                // Leases and the drift bound short enough that tombstones are collected (delete
                // markers written and applied) within a run.
                config.registry = registry_config(short_retention);
                fronts::audit::configure(&mut config);
                let started_ms = turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64);
                let sink = sinks.borrow_mut().sink_for(&name, started_ms);
                let seams = Seams {
                    connector: Arc::new(connects.connector(&name, incarnation, &services)),
                    clock: Arc::new(SimClock { skew_ms }),
                    bus: Arc::new(SimBus::default()),
                    seed: seed
                        .wrapping_add(index as u64)
                        .wrapping_add(incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                };
                let node = Node::builder(config, seams)
                    .authenticator(crate::authenticator())
                    .audit_sink(sink)
                    .build();
                sinks.borrow_mut().node_built(&name, node.clone());
                // Subscribed before the node applies anything.
                started.borrow_mut().push(Incarnation {
                    name: name.clone(),
                    skew_ms,
                    feed: node.watch(),
                    fronts_feed: node.watch(),
                    clock_feed: node.watch(),
                    node: node.clone(),
                });
                nodes.borrow_mut().insert(name, node.clone());
                let public = SimListener::bind(PUBLIC_PORT).await?;
                let control = SimListener::bind(CONTROL_PORT).await?;
                // The incarnation's shutdown, which a `drains` step asks for.
                let shutdown = CancellationToken::new();
                shutdowns
                    .borrow_mut()
                    .insert(node.id().to_owned(), shutdown.clone());
                node.serve(public, control, shutdown).await?;
                Ok(())
            }
        });
    };
    for (i, name) in gateways.iter().enumerate() {
        if Some(name) != late.as_ref() {
            add_gateway(&mut sim, name, i);
        }
    }
    let served = ServedLog::default();
    let stalls = Stalls::default();
    for (i, svc) in services.iter().enumerate() {
        let gw = present[i % present.len()].clone();
        let (svc, served, lease_ms) = (svc.clone(), served.clone(), options.lease_ms);
        let stalls = stalls.clone();
        sim.host(svc.clone(), move || {
            let (svc, gw, served) = (svc.clone(), gw.clone(), served.clone());
            let stalls = stalls.clone();
            async move {
                witnessed_service_host(SAMPLE, &svc, &svc, &gw, lease_ms, served, stalls).await
            }
        });
    }
    let mut routing = routing::Routing::new(EPOCH_S * 1_000, UPSTREAM_TIMEOUT_MS);
    let mut links = balancing::Links::default();
    let mut gateway_starts: BTreeMap<String, Vec<u64>> = BTreeMap::new();

    let acks: Shared<Vec<Ack>> = Rc::default();
    let front_log: fronts::SharedLog = Rc::default();
    let stop = Rc::new(std::cell::Cell::new(false));
    let served_at_ms: Rc<std::cell::Cell<Option<u64>>> = Rc::default();
    sim.client(
        "client",
        workload::client(workload::Client {
            acks: acks.clone(),
            trace: trace.clone(),
            stop: stop.clone(),
            gateways: gateways.clone(),
            late: late.clone(),
            seed: options.seed,
            fault_ms: options.fault_ms,
            fronts: front_log.clone(),
            bus: log.clone(),
            bursts: faults.bursts,
            services: services.clone(),
            probe: options.liveness.then(|| liveness::Probe {
                gateways: gateways.clone(),
                fault_ms: options.fault_ms,
                settle_ms: options.settle_ms,
                served_at_ms: served_at_ms.clone(),
            }),
            probes: probes.clone(),
        }),
    );
    let watched: fronts::subscriptions::SharedWatched = Rc::default();
    sim.client(
        "watcher",
        fronts::subscriptions::watcher(
            fronts::subscriptions::watched_gateways(options.seed, &gateways),
            watched.clone(),
            stop.clone(),
        ),
    );
    let mut feeds: Vec<fronts::subscriptions::Feed> = Vec::new();
    let outages = fronts::audit::outages(options.seed, &present, options.fault_ms);
    let mut next_outage = 0;

    let registry_config = registry_config(faults.short_retention);
    let leases = Leases {
        sample_ms: options.lease_ms,
        ghost_ms: GHOST_LEASE_MS,
        tolerance_ms: 2 * CLOCK_SKEW_MS_MAX.unsigned_abs() + 1 + 10,
    };
    let mut hostile_setting = hostile::Setting {
        now_ms: 0,
        bounds: EventBounds {
            clock_drift_max_ms: registry_config.clock_drift_max_ms,
            lease_max_ms: registry_config.lease_max_ms,
        },
        horizon_ms: options.fault_ms + options.settle_ms + 5_000 + CLOCK_SKEW_MS_MAX.unsigned_abs(),
        keys: services
            .iter()
            .map(|s| InstanceKey::new(SAMPLE, s.clone()))
            .chain((0..GHOST_IDS).map(|i| InstanceKey::new(GHOST, format!("g-{i}"))))
            .collect(),
        removable: (0..GHOST_IDS)
            .map(|i| InstanceKey::new(GHOST, format!("g-{i}")))
            .collect(),
        nodes: gateways.clone(),
        addrs: services
            .iter()
            .map(|s| format!("http://{s}:{SERVICE_PORT}"))
            .collect(),
    };
    // Hostile records written so far, by offset, and the offsets of those to quarantine.
    let mut hostile: Vec<(u64, Hostile)> = Vec::new();
    let mut quarantined: BTreeSet<u64> = BTreeSet::new();
    let mut reported = Reported::default();
    let mut clock = clock::ClockPromise::default();
    let mut readiness = readiness::Readiness::default();
    let mut pending = checks::PendingCheck::default();
    let mut references = checks::ReferenceCache::default();

    let mut violations = Vec::new();
    let mut next = 0;
    let mut down: BTreeSet<String> = BTreeSet::new();
    // Gateways whose shutdown was asked, and when, until they start again; the stops judged
    // for their outbox's flush, and the 202 answers judged there.
    let mut drained: BTreeMap<String, u64> = BTreeMap::new();
    let (mut drains_judged, mut drain_acks_judged) = (0usize, 0usize);
    let heal_ms = options.fault_ms;
    let deadline_ms = options.fault_ms + options.settle_ms;
    let mut healed = false;
    let mut convergence_ms = None;
    let mut last_check = 0u64;
    // Liveness mode: when the entries stamped before the heal were all gone from the log's
    // fold, and the first one left at the last look.
    let (mut collected_ms, mut last_collect_check) = (None, 0u64);
    let mut uncollected: Option<String> = None;
    loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        while next < plan.len() && plan[next].at_ms <= now_ms {
            let step = &plan[next];
            trace
                .borrow_mut()
                .push(format!("{:>6} ms fault {}", step.at_ms, step.action));
            if let Action::Hostile(seed) = step.action {
                hostile_setting.now_ms = EPOCH_S * 1_000 + now_ms;
                let written = write_hostile(&log, seed, &hostile_setting, &down, &trace);
                for (offset, record) in written {
                    if !record.kind.admissible() {
                        quarantined.insert(offset);
                    }
                    hostile.push((offset, record));
                }
            }
            if let Action::Drain(host) = &step.action
                && !down.contains(host)
            {
                if let Some(shutdown) = shutdowns.borrow().get(host) {
                    shutdown.cancel();
                }
                down.insert(host.clone());
                readiness.drain_asked(host, now_ms);
                drained.insert(host.clone(), now_ms);
            }
            if let Action::Restart(host) = &step.action
                && let Some(asked_ms) = drained.remove(host)
                && !sim.is_host_running(host.as_str())
                && let Some(&born_ms) = gateway_starts.get(host).and_then(|s| s.last())
            {
                drains_judged += 1;
                drain_acks_judged += checks::check_drain_flushed(
                    &checks::Drained {
                        gateway: host,
                        born_ms,
                        asked_ms,
                        now_ms,
                    },
                    &acks.borrow(),
                    &log,
                    &mut violations,
                );
            }
            apply(&mut sim, &step.action, &mut down, &stalls, &connects);
            links.apply(now_ms, &step.action);
            if let Action::Crash(host) = &step.action {
                routing.crashed(host, now_ms);
            }
            next += 1;
        }
        while let Some((at_ms, gw, out)) = outages.get(next_outage)
            && *at_ms <= now_ms
        {
            let what = if *out { "out" } else { "back" };
            trace
                .borrow_mut()
                .push(format!("{at_ms:>6} ms audit sink of {gw} {what}"));
            sinks.borrow_mut().set_out(gw, *out);
            next_outage += 1;
        }
        if let Some(name) = &late
            && !nodes.borrow().contains_key(name)
            && now_ms >= options.fault_ms / 2
        {
            trace
                .borrow_mut()
                .push(format!("{now_ms:>6} ms late join {name}"));
            add_gateway(&mut sim, name, gateways.len() - 1);
        }
        if !healed && now_ms >= heal_ms {
            healed = true;
            trace.borrow_mut().push(format!("{now_ms:>6} ms heal"));
            heal(&mut sim, &gateways, &services, &mut down);
            stalls.clear();
            connects.supply_all();
            links.heal(now_ms);
        }
        if now_ms >= last_check + 10 {
            last_check = now_ms;
            let (nodes_now, skews_now) = (nodes.borrow(), skews.borrow());
            let live = Live {
                nodes: &nodes_now,
                down: &down,
                skews: &skews_now,
                epoch_ms: EPOCH_S * 1_000,
                now_ms,
            };
            check_not_pinned(&live, &leases, &mut reported, &mut violations);
            check_clock_within_drift(
                &live,
                registry_config.clock_drift_max_ms,
                &mut reported,
                &mut violations,
            );
            check_hostile_absent(&live, &hostile, &mut reported, &mut violations);
            clock.check_lead(&live, &mut reported, &mut violations);
            pending.step(
                &acks.borrow(),
                &live,
                &gateway_starts,
                &log,
                &mut reported,
                &mut violations,
            );
            drop((nodes_now, skews_now));
            if healed
                && convergence_ms.is_none()
                && converged(
                    &nodes.borrow(),
                    references.get(&log, &quarantined),
                    &gateways,
                )
            {
                convergence_ms = Some(now_ms - heal_ms);
                trace.borrow_mut().push(format!("{now_ms:>6} ms converged"));
            }
            if options.liveness
                && healed
                && collected_ms.is_none()
                && now_ms >= last_collect_check + liveness::COLLECT_CHECK_EVERY_MS
            {
                last_collect_check = now_ms;
                let held = references.get(&log, &quarantined);
                uncollected = liveness::uncollected(held, &gateways, EPOCH_S * 1_000 + heal_ms);
                if uncollected.is_none() {
                    collected_ms = Some(now_ms - heal_ms);
                    trace.borrow_mut().push(format!("{now_ms:>6} ms collected"));
                }
            }
        }
        let done = convergence_ms.is_some()
            && (!options.liveness || (served_at_ms.get().is_some() && collected_ms.is_some()));
        if done || now_ms >= deadline_ms || violations.len() > 20 {
            break;
        }
        let floor = readiness::high_water(&log);
        if let Err(error) = sim.step() {
            violations.push(format!("simulation error at {now_ms} ms: {error}"));
            break;
        }
        if !options.wall_drag.is_zero() {
            std::thread::sleep(options.wall_drag);
        }
        let stepped_ms = sim.elapsed().as_millis() as u64;
        for inc in started.borrow_mut().drain(..) {
            gateway_starts
                .entry(inc.name.clone())
                .or_default()
                .push(now_ms);
            feeds.push(fronts::subscriptions::Feed::new(
                &inc.name,
                now_ms,
                inc.fronts_feed,
            ));
            readiness.started(&inc.name, inc.node.clone(), floor, now_ms);
            clock.started(&inc.name, inc.clock_feed, now_ms);
            routing.started(&inc.name, inc.skew_ms, inc.node, inc.feed, now_ms);
        }
        routing.drain(now_ms, stepped_ms);
        for feed in &mut feeds {
            feed.drain(stepped_ms);
        }
        clock.drain(stepped_ms);
        readiness.step(
            (now_ms, stepped_ms),
            &log,
            &quarantined,
            &down,
            &mut reported,
            &mut violations,
        );
    }
    stop.set(true);
    let simulated_ms = sim.elapsed().as_millis() as u64;
    // Not converging is a violation of its own, beside any other: other checkers may fire on
    // the way to a divergence this one alone states. Not judged when the run stopped before
    // its deadline (more than 20 violations, or a simulation error).
    if convergence_ms.is_none() && simulated_ms >= deadline_ms {
        violations.push(format!(
            "no convergence within {} ms after the heal: {}",
            options.settle_ms,
            digests(&nodes.borrow(), &log, &quarantined)
        ));
    }
    let served_ms = served_at_ms.get().map(|at| at.saturating_sub(heal_ms));
    if options.liveness {
        liveness::judge(convergence_ms, served_ms, &mut violations);
        liveness::judge_collection(collected_ms, uncollected.as_deref(), &mut violations);
    }
    let (counts_judged, origins_judged) =
        readiness.finish(&log, &quarantined, &down, &mut violations);
    let reference = reference(&log, &quarantined);
    let acks = acks.borrow();
    check_acknowledged(&reference, &acks, &mut violations);
    let catching_up_refused = checks::check_no_change_before_catch_up(
        &acks,
        &readiness.catch_ups,
        &skews.borrow(),
        EPOCH_S * 1_000,
        &mut violations,
    );
    let clock_judged = clock.check(&acks, &mut violations);
    check_no_phantoms(&reference, &services, &hostile, &mut violations);
    check_readable(&log, &quarantined, &mut violations);
    let hostile_offsets: BTreeSet<u64> = hostile.iter().map(|(offset, _)| *offset).collect();
    if !faults.short_retention {
        checks::check_markers_by_their_stamper(&log, &hostile_offsets, &mut violations);
    }
    check_quarantine_counts(
        &nodes.borrow(),
        &hostile,
        &log,
        &hostile_setting.bounds,
        &mut violations,
    );
    routing.finish(simulated_ms);
    let (served, unkept) = served.take();
    let routing_view = routing;
    let routing = routing_view.check(&served, ROUTING_VIOLATIONS_SHOWN, &mut violations);
    let fronts = fronts::check(
        &front_log.borrow(),
        &served,
        &sinks.borrow(),
        &watched.borrow(),
        &feeds,
        simulated_ms,
        &mut violations,
    );
    fronts::audit::check_renewals_audited_as_such(
        &sinks.borrow(),
        &skews.borrow(),
        EPOCH_S * 1_000,
        |gateway, instance, from, to| links.quiet(gateway, instance, from, to),
        &mut violations,
    );
    fronts::scrapes::check_fresh(&front_log.borrow().scrapes, &links, &mut violations);
    let (connect_log, connects_unkept) = connects.take();
    let evictions = balancing::evictions(
        &log.snapshot(),
        &hostile_offsets,
        SAMPLE,
        &skews.borrow(),
        EPOCH_S * 1_000,
    );
    let balancing = balancing::check(
        &balancing::Records {
            answered: &front_log.borrow().answered,
            evictions: &evictions,
            starts: &gateway_starts,
            served: &served,
            connects: &connect_log,
            routing: &routing_view,
            links: &links,
            instances: &services,
            shortages: &shortages,
            skews: &skews.borrow(),
            epoch_ms: EPOCH_S * 1_000,
        },
        &mut violations,
    );
    if connects_unkept > 0 {
        violations.push(format!(
            "{connects_unkept} connections to instances were not kept for the balancing checks"
        ));
    }
    if unkept > 0 {
        violations.push(format!(
            "{unkept} served requests were not kept for the routing checker"
        ));
    }

    let mut trace = trace.take();
    trace.push(format!(
        "final {}",
        digests(&nodes.borrow(), &log, &quarantined)
    ));
    trace.push(format!(
        "routing: {} requests checked, {} not judged, {} violations",
        routing.checked, routing.unjudged, routing.violations
    ));
    trace.push(format!("fronts: {fronts:?}"));
    trace.push(format!("balancing: {balancing:?}"));
    for v in &violations {
        trace.push(format!("violation {v}"));
    }
    let trace_hash = trace_hash(&trace);
    Outcome {
        seed: options.seed,
        faults,
        violations,
        convergence_ms,
        served_ms,
        collected_ms,
        simulated_ms,
        acknowledged: acks.iter().filter(|a| a.status == 200).count(),
        delete_markers: log.snapshot().iter().filter(|r| r.delete).count(),
        routing,
        hostile_records: hostile.len(),
        hostile_admissible: hostile.len() - quarantined.len(),
        fronts,
        balancing,
        fetch_records_max,
        clock_judged,
        ready_judged: readiness.judged,
        counts_judged,
        origins_judged,
        drains_judged,
        drain_acks_judged,
        pending_judged: pending.judged,
        catching_up_refused,
        trace_hash,
        trace,
    }
}

/// Writes the burst drawn from `seed` into the broker's log, unless the broker is down (a
/// producer cannot reach a broker that is not running); returns each record with its offset.
fn write_hostile(
    log: &MemoryBus,
    seed: u64,
    setting: &hostile::Setting,
    down: &BTreeSet<String>,
    trace: &Shared<Vec<String>>,
) -> Vec<(u64, Hostile)> {
    let mut trace = trace.borrow_mut();
    if down.contains(BROKER_HOST) {
        trace.push("        hostile burst not written: the broker is down".to_owned());
        return Vec::new();
    }
    let mut written = Vec::new();
    for record in hostile::burst(seed, setting) {
        match hostile::inject(log, &record) {
            Some(offset) => {
                trace.push(format!("        offset {offset}: {}", record.describe()));
                written.push((offset, record));
            }
            None => trace.push(format!("        not written: {}", record.describe())),
        }
    }
    written
}

/// A gateway node as it starts, subscribed to its registry changes.
struct Incarnation {
    name: String,
    skew_ms: i64,
    node: Arc<Node>,
    feed: tokio::sync::broadcast::Receiver<switchyard_core::event::Event>,
    /// A second subscription, for the `registryChanges` check (`fronts::subscriptions`).
    fronts_feed: tokio::sync::broadcast::Receiver<switchyard_core::event::Event>,
    /// A second subscription, for the clock's promise.
    clock_feed: tokio::sync::broadcast::Receiver<switchyard_core::event::Event>,
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    action: &Action,
    down: &mut BTreeSet<String>,
    stalls: &Stalls,
    connects: &balancing::Connects,
) {
    match action {
        Action::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
        Action::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
        Action::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
        Action::Release(a, b) => sim.release(a.as_str(), b.as_str()),
        Action::Crash(h) => {
            if down.insert(h.clone()) {
                sim.crash(h.as_str());
            }
        }
        Action::Restart(h) => {
            if down.remove(h) {
                sim.bounce(h.as_str());
            }
        }
        // Written into the log by the step loop, which keeps what the checkers need.
        Action::Hostile(_) => {}
        Action::Stall(h) => stalls.set(h, true),
        Action::Unstall(h) => stalls.set(h, false),
        // Asked by the step loop, which keeps the shutdown tokens; `Restart` starts it again.
        Action::Drain(_) => {}
        Action::Shortage(h) => connects.set_short(h, true),
        Action::Supply(h) => connects.set_short(h, false),
    }
}

/// Ends every fault: repairs every link and restarts every crashed host.
fn heal(
    sim: &mut turmoil::Sim<'_>,
    gateways: &[String],
    services: &[String],
    down: &mut BTreeSet<String>,
) {
    let mut hosts: Vec<&str> = vec![BROKER_HOST, "client"];
    hosts.extend(gateways.iter().map(String::as_str));
    hosts.extend(services.iter().map(String::as_str));
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            sim.repair(*a, *b);
            sim.release(*a, *b);
        }
    }
    for h in std::mem::take(down) {
        sim.bounce(h.as_str());
    }
}
