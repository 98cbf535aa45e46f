//! The faults a run may inject, and the schedule drawn from the seed.
//!
//! Swarm testing: each run switches a random subset of fault kinds on, so that some runs
//! stress one mechanism hard and others combine several; a failure is easier to read when
//! only a few kinds were on.

use std::fmt;

use rand::Rng;
use rand::rngs::SmallRng;

use crate::broker::BROKER_HOST;

/// Which kinds of fault a run injects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Faults {
    /// Partitions and held messages between any two hosts.
    pub partitions: bool,
    pub gateway_crashes: bool,
    pub service_crashes: bool,
    /// The broker crashes and restarts; acknowledged writes survive.
    pub broker_crashes: bool,
    /// The broker delays each answer by up to 50 ms.
    pub broker_delays: bool,
    /// The broker sometimes redelivers records already read.
    pub redelivery: bool,
    /// Gateways' wall clocks differ by up to ±800 ms.
    pub clock_skew: bool,
    /// The last gateway joins halfway through the fault window.
    pub late_join: bool,
    /// Records written straight into the broker's log by someone who is not a gateway: stamps
    /// beyond the drift bound or at the top of the range, leases beyond the bound, payloads that
    /// do not decode, keys that disagree with their payload (see [`crate::hostile`]).
    pub hostile_records: bool,
    /// The broker appends a record and then loses its acknowledgement (the producer retries,
    /// and the log holds the record twice). Drawn, like the kinds below, from a third
    /// generator ([`Faults::corners`]).
    #[serde(default)]
    pub lost_acks: bool,
    /// Some fetches start again far back (at the log's first offset), so records older than
    /// tombstones already collected are read again.
    #[serde(default)]
    pub deep_redelivery: bool,
    /// The client sends several changes to one key at once: through one gateway, through
    /// several (within the clock skew), and deregistrations of sample instances racing their
    /// renewals.
    #[serde(default)]
    pub bursts: bool,
    /// Tombstones are collected by any gateway after `registry.tombstone_retention_ms` at its
    /// lowest (the lease bound plus the drift bound), and one gateway is cut off from the
    /// broker for longer than that.
    #[serde(default)]
    pub short_retention: bool,
    /// A sample instance stalls for a while: it takes every request and answers none before
    /// the gateway's deadline, while a prober sends calls through one gateway. Drawn, like
    /// `cutoffs`, from a fourth generator ([`Faults::balance_corners`]).
    #[serde(default)]
    pub stalls: bool,
    /// One gateway is cut off from every sample instance for longer than the eviction wait,
    /// while a prober sends calls through it.
    #[serde(default)]
    pub cutoffs: bool,
    /// A gateway is stopped gracefully (its shutdown asked, as an orchestrator does before a
    /// rolling restart) and started again 2-4 s later. Drawn from a fifth generator
    /// ([`Faults::drains`]).
    #[serde(default)]
    pub drains: bool,
    /// A gateway restarts short of its own resources: for 8-10 s every connection it opens to
    /// an instance fails with EMFILE (out of file descriptors), while a prober sends calls
    /// through it. Drawn from a sixth generator ([`Faults::shortages`]).
    #[serde(default)]
    pub shortages: bool,
}

impl Faults {
    pub const KINDS: [&'static str; 17] = [
        "partitions",
        "gateway_crashes",
        "service_crashes",
        "broker_crashes",
        "broker_delays",
        "redelivery",
        "clock_skew",
        "late_join",
        "hostile_records",
        "lost_acks",
        "deep_redelivery",
        "bursts",
        "short_retention",
        "stalls",
        "cutoffs",
        "drains",
        "shortages",
    ];

    fn flags(&self) -> [bool; 17] {
        [
            self.partitions,
            self.gateway_crashes,
            self.service_crashes,
            self.broker_crashes,
            self.broker_delays,
            self.redelivery,
            self.clock_skew,
            self.late_join,
            self.hostile_records,
            self.lost_acks,
            self.deep_redelivery,
            self.bursts,
            self.short_retention,
            self.stalls,
            self.cutoffs,
            self.drains,
            self.shortages,
        ]
    }

    pub fn all() -> Self {
        Self::from_flags([true; 17])
    }

    fn from_flags(f: [bool; 17]) -> Self {
        Self {
            partitions: f[0],
            gateway_crashes: f[1],
            service_crashes: f[2],
            broker_crashes: f[3],
            broker_delays: f[4],
            redelivery: f[5],
            clock_skew: f[6],
            late_join: f[7],
            hostile_records: f[8],
            lost_acks: f[9],
            deep_redelivery: f[10],
            bursts: f[11],
            short_retention: f[12],
            stalls: f[13],
            cutoffs: f[14],
            drains: f[15],
            shortages: f[16],
        }
    }

    /// Each kind on with probability one half. The first eight kinds draw from `rng`, the
    /// kinds added since from `later` (a second generator seeded from the run's seed), so
    /// adding a kind left the draw of the others, and every later draw from `rng`, unchanged:
    /// a seed that does not switch a later kind on runs as it did before that kind existed.
    pub fn swarm(rng: &mut SmallRng, later: &mut SmallRng) -> Self {
        let mut flags: [bool; 17] = std::array::from_fn(|_| false);
        for flag in &mut flags[..8] {
            *flag = rng.random_bool(0.5);
        }
        for flag in &mut flags[8..9] {
            *flag = later.random_bool(0.5);
        }
        Self::from_flags(flags)
    }

    /// Switches each of the corner kinds (`lost_acks` and after) on with probability one
    /// half, drawn from `corners`, a third generator seeded from the run's seed: `swarm` and
    /// every draw from its two generators stay as they were before these kinds existed.
    pub fn corners(&mut self, corners: &mut SmallRng) {
        self.lost_acks = corners.random_bool(0.5);
        self.deep_redelivery = corners.random_bool(0.5);
        self.bursts = corners.random_bool(0.5);
        self.short_retention = corners.random_bool(0.5);
    }

    /// Switches `stalls` and `cutoffs` on, each with probability one half, drawn from
    /// `balance`, a fourth generator: every earlier draw stays as it was.
    pub fn balance_corners(&mut self, balance: &mut SmallRng) {
        self.stalls = balance.random_bool(0.5);
        self.cutoffs = balance.random_bool(0.5);
    }

    /// Switches `drains` on with probability one half, drawn from `drains`, a fifth
    /// generator: every earlier draw stays as it was.
    pub fn drains(&mut self, drains: &mut SmallRng) {
        self.drains = drains.random_bool(0.5);
    }

    /// Switches `shortages` on with probability one half, drawn from `shortages`, a sixth
    /// generator: every earlier draw stays as it was.
    pub fn shortages(&mut self, shortages: &mut SmallRng) {
        self.shortages = shortages.random_bool(0.5);
    }

    pub fn names(&self) -> Vec<&'static str> {
        Self::KINDS
            .into_iter()
            .zip(self.flags())
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }

    /// Parses a comma-separated list of kinds, `all` or `none`.
    pub fn parse(list: &str) -> Result<Self, String> {
        match list {
            "all" => return Ok(Self::all()),
            "none" | "" => return Ok(Self::default()),
            _ => {}
        }
        let mut flags = [false; 17];
        for name in list.split(',') {
            let i = Self::KINDS
                .iter()
                .position(|k| *k == name.trim())
                .ok_or_else(|| {
                    format!("unknown fault {name:?}; known: {}", Self::KINDS.join(", "))
                })?;
            flags[i] = true;
        }
        Ok(Self::from_flags(flags))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Partition(String, String),
    Repair(String, String),
    Hold(String, String),
    Release(String, String),
    Crash(String),
    Restart(String),
    /// A burst of hostile records written into the broker's log, drawn from this seed.
    Hostile(u64),
    /// A sample instance takes requests and answers none in time, until `Unstall`.
    Stall(String),
    Unstall(String),
    /// A gateway's shutdown is asked: it stops accepting, reports not ready, finishes what it
    /// holds, flushes its outbox and stops; `Restart` starts it again.
    Drain(String),
    /// Every connection a gateway opens to an instance fails with EMFILE, until `Supply`.
    Shortage(String),
    Supply(String),
}

/// One or two graceful stops (one per [`EPISODE_WINDOW_MS`] started, at most two) of a
/// gateway present from the start, each followed by its restart 2-4 s later, within
/// `[1000, fault_ms)`; half of them with the gateway cut off from the broker just before.
pub fn drain_steps(drains: &mut SmallRng, gateways: &[String], fault_ms: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    if gateways.is_empty() || fault_ms <= 5_000 {
        return steps;
    }
    let most = fault_ms.div_ceil(EPISODE_WINDOW_MS).clamp(1, 2);
    for _ in 0..drains.random_range(1..=most) {
        let gateway = gateways[drains.random_range(0..gateways.len())].clone();
        let at_ms = drains.random_range(1_000..fault_ms - 4_000);
        let back_ms = at_ms + drains.random_range(2_000..4_000);
        // Half the time the gateway has been cut off from the broker for 1-2 s when its
        // shutdown is asked, and gets it back 0.2-1 s later: changes it answered 202 meanwhile
        // wait in its outbox, which the stop must flush.
        if drains.random_bool(0.5) {
            let cut_ms = at_ms
                .saturating_sub(drains.random_range(1_000..2_000))
                .max(500);
            let repair_ms = at_ms + drains.random_range(200..1_000);
            steps.push(Step {
                at_ms: cut_ms,
                action: Action::Partition(gateway.clone(), BROKER_HOST.to_owned()),
            });
            steps.push(Step {
                at_ms: repair_ms,
                action: Action::Repair(gateway.clone(), BROKER_HOST.to_owned()),
            });
        }
        steps.push(Step {
            at_ms,
            action: Action::Drain(gateway.clone()),
        });
        steps.push(Step {
            at_ms: back_ms,
            action: Action::Restart(gateway),
        });
    }
    steps
}

/// Cuts one gateway present from the start off the broker for `len_ms` (longer than the
/// tombstone retention under `short_retention`), starting at 1 s; drawn from `corners`.
pub fn long_partition(
    corners: &mut SmallRng,
    gateways: &[String],
    len_ms: u64,
    fault_ms: u64,
) -> Vec<Step> {
    if gateways.is_empty() || fault_ms <= 1_500 {
        return Vec::new();
    }
    let episode = Episode {
        at_ms: 1_000,
        len_ms,
        kind: EpisodeKind::GatewayBroker {
            gateway: corners.random_range(0..gateways.len()),
        },
    };
    steps(&[episode], gateways, &[], fault_ms)
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Partition(a, b) => write!(f, "partition {a} | {b}"),
            Self::Repair(a, b) => write!(f, "repair {a} | {b}"),
            Self::Hold(a, b) => write!(f, "hold {a} | {b}"),
            Self::Release(a, b) => write!(f, "release {a} | {b}"),
            Self::Crash(h) => write!(f, "crash {h}"),
            Self::Restart(h) => write!(f, "restart {h}"),
            Self::Hostile(seed) => write!(f, "hostile records (burst {seed:016x})"),
            Self::Stall(h) => write!(f, "stall {h}"),
            Self::Unstall(h) => write!(f, "unstall {h}"),
            Self::Drain(h) => write!(f, "drain {h}"),
            Self::Shortage(h) => write!(f, "shortage of file descriptors on {h}"),
            Self::Supply(h) => write!(f, "file descriptors back on {h}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_ms: u64,
    pub action: Action,
}

/// One fault episode as data: it starts at `at_ms`, lasts `len_ms`, and targets hosts by
/// index (taken modulo the number of candidates). Proptest generates these directly, so that a
/// failing schedule shrinks episode by episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub at_ms: u64,
    pub len_ms: u64,
    pub kind: EpisodeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeKind {
    /// A gateway cut off from the broker.
    GatewayBroker {
        gateway: usize,
    },
    /// Any two hosts cut off from each other.
    Partition {
        a: usize,
        b: usize,
    },
    /// Messages between two hosts held, then released.
    Hold {
        a: usize,
        b: usize,
    },
    CrashGateway {
        gateway: usize,
    },
    CrashService {
        service: usize,
    },
    CrashBroker,
    /// A burst of hostile records at the episode's start (it has no end).
    Hostile {
        seed: u64,
    },
}

/// The steps of `episodes`, sorted by time, clipped to `[0, fault_ms)`.
pub fn steps(
    episodes: &[Episode],
    gateways: &[String],
    services: &[String],
    fault_ms: u64,
) -> Vec<Step> {
    let mut hosts: Vec<String> = vec![BROKER_HOST.to_owned(), "client".to_owned()];
    hosts.extend(gateways.iter().cloned());
    hosts.extend(services.iter().cloned());
    let at = |list: &[String], i: usize| list.get(i % list.len().max(1)).cloned();
    let mut out = Vec::new();
    for e in episodes {
        let start_ms = e.at_ms.min(fault_ms.saturating_sub(1));
        let end_ms = (e.at_ms + e.len_ms).min(fault_ms.saturating_sub(1));
        let pair = |a: usize, b: usize| {
            let a = at(&hosts, a)?;
            let b = at(&hosts, b)?;
            (a != b).then_some((a, b))
        };
        let (start, end) = match e.kind {
            EpisodeKind::Hostile { seed } => {
                out.push(Step {
                    at_ms: start_ms,
                    action: Action::Hostile(seed),
                });
                continue;
            }
            EpisodeKind::GatewayBroker { gateway } => {
                let Some(g) = at(gateways, gateway) else {
                    continue;
                };
                (
                    Action::Partition(g.clone(), BROKER_HOST.to_owned()),
                    Action::Repair(g, BROKER_HOST.to_owned()),
                )
            }
            EpisodeKind::Partition { a, b } => {
                let Some((a, b)) = pair(a, b) else { continue };
                (
                    Action::Partition(a.clone(), b.clone()),
                    Action::Repair(a, b),
                )
            }
            EpisodeKind::Hold { a, b } => {
                let Some((a, b)) = pair(a, b) else { continue };
                (Action::Hold(a.clone(), b.clone()), Action::Release(a, b))
            }
            EpisodeKind::CrashGateway { gateway } => {
                let Some(g) = at(gateways, gateway) else {
                    continue;
                };
                (Action::Crash(g.clone()), Action::Restart(g))
            }
            EpisodeKind::CrashService { service } => {
                let Some(s) = at(services, service) else {
                    continue;
                };
                (Action::Crash(s.clone()), Action::Restart(s))
            }
            EpisodeKind::CrashBroker => (
                Action::Crash(BROKER_HOST.to_owned()),
                Action::Restart(BROKER_HOST.to_owned()),
            ),
        };
        out.push(Step {
            at_ms: start_ms,
            action: start,
        });
        out.push(Step {
            at_ms: end_ms,
            action: end,
        });
    }
    out.sort_by_key(|s| s.at_ms);
    out
}

/// The stretch of fault window that draws 2 to 8 episodes.
pub const EPISODE_WINDOW_MS: u64 = 15_000;

/// Draws 2 to 8 episodes of the enabled kinds per [`EPISODE_WINDOW_MS`] (started) of
/// `[1000, fault_ms)`, at most 16 such stretches. Hosts that join late
/// are never targets (they do not exist yet when most faults happen); `gateways` holds only
/// those present from the start. Half the partitions cut a gateway off the broker: the
/// partition the registry's replication has to survive most often in production.
pub fn schedule(
    rng: &mut SmallRng,
    faults: &Faults,
    gateways: &[String],
    services: &[String],
    fault_ms: u64,
) -> Vec<Step> {
    let mut kinds: Vec<u8> = Vec::new();
    if faults.partitions {
        kinds.push(0);
    }
    if faults.gateway_crashes {
        kinds.push(1);
    }
    if faults.service_crashes && !services.is_empty() {
        kinds.push(2);
    }
    if faults.broker_crashes {
        kinds.push(3);
    }
    if kinds.is_empty() || fault_ms <= 1_500 {
        return Vec::new();
    }
    let hosts = 2 + gateways.len() + services.len();
    // 2 to 8 episodes per 15 s of fault window, so a longer window is as busy as a short one.
    let per_window = fault_ms.div_ceil(EPISODE_WINDOW_MS).clamp(1, 16);
    let episodes: Vec<Episode> = (0..rng.random_range(2 * per_window..=8 * per_window))
        .map(|_| {
            let at_ms = rng.random_range(1_000..fault_ms - 500);
            let len_ms = rng.random_range(200..4_000);
            let kind = match kinds[rng.random_range(0..kinds.len())] {
                0 if rng.random_bool(0.5) => EpisodeKind::GatewayBroker {
                    gateway: rng.random_range(0..gateways.len()),
                },
                0 => {
                    let (a, b) = (rng.random_range(0..hosts), rng.random_range(0..hosts));
                    if rng.random_bool(0.3) {
                        EpisodeKind::Hold { a, b }
                    } else {
                        EpisodeKind::Partition { a, b }
                    }
                }
                1 => EpisodeKind::CrashGateway {
                    gateway: rng.random_range(0..gateways.len()),
                },
                2 => EpisodeKind::CrashService {
                    service: rng.random_range(0..services.len()),
                },
                _ => EpisodeKind::CrashBroker,
            };
            Episode {
                at_ms,
                len_ms,
                kind,
            }
        })
        .collect();
    steps(&episodes, gateways, services, fault_ms)
}

/// The most bursts of hostile records one run draws.
pub const HOSTILE_BURSTS_MAX: u64 = 3;

/// Draws 1 to [`HOSTILE_BURSTS_MAX`] bursts of hostile records within `[1000, fault_ms)`, from
/// `later` (see [`Faults::swarm`]), if the kind is on.
pub fn hostile_bursts(later: &mut SmallRng, faults: &Faults, fault_ms: u64) -> Vec<Step> {
    if !faults.hostile_records || fault_ms <= 1_500 {
        return Vec::new();
    }
    let episodes: Vec<Episode> = (0..later.random_range(1..=HOSTILE_BURSTS_MAX))
        .map(|_| Episode {
            at_ms: later.random_range(1_000..fault_ms - 500),
            len_ms: 0,
            kind: EpisodeKind::Hostile {
                seed: later.random(),
            },
        })
        .collect();
    steps(&episodes, &[], &[], fault_ms)
}
