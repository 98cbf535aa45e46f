//! The test command of the mutation study (`sim/mutants.sh`, docs/simulation.md "Mutation
//! study"): the simulation, not any unit test, judges each mutant.
//!
//! cargo-mutants builds the tree with one mutation in the gateway's code and runs
//! `cargo test -p switchyard-sim --test mutation`; this test then runs seeds of the
//! simulation, each in a fresh process of the (mutated) `switchyard-sim` binary, and fails at
//! the first seed with a violation, naming it and the command that replays it. So a mutant is
//! caught when some seed of the profile breaks an invariant, or the gateway panics, and missed
//! when every seed passes.
//!
//! `cargo test` does not run it (`test = false` in sim/Cargo.toml): the suite's own explore
//! test already runs more seeds of the same scenarios. The profile, from the environment:
//!
//! * `SIM_MUTANTS_SEEDS` (default `0..50`): seeds with the suite's defaults (6 s leases).
//! * `SIM_MUTANTS_SHORT_LEASE_SEEDS` (default `0..10`): seeds with 1 s leases for the sample
//!   instances, as the suite runs 30 (lease expiry then happens during the faults).
//! * `SIM_MUTANTS_LIVENESS_SEEDS` (default `0..5`): seeds in liveness mode, with the suite's
//!   15 s fault window: after the heal every gateway must serve the sample service within the
//!   bound (a gateway that routes nothing breaks no safety invariant; this is what sees it).
//! * `SIM_MUTANTS_JOBS` (default 2, at most 8): seeds run at once.
//! * `SIM_MUTANTS_PLANT`: a planted bug (`--plant` of `switchyard-sim`), to show that the
//!   command fails when the simulation finds something.

use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use switchyard_core::planted::Bug;
use switchyard_sim::explore::{replay_command, run_in_child};
use switchyard_sim::scenario::{Options, Outcome};

/// The liveness seeds' fault window, the suite's (sim/tests/explore/main.rs).
const LIVENESS_FAULT_MS: u64 = 15_000;

/// At most this many seeds in one set: a profile is meant to be fast.
const SEEDS_MAX: u64 = 10_000;
const JOBS_MAX: usize = 8;
const SHORT_LEASE_MS: u64 = 1_000;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard-sim"))
}

fn range_from_env(name: &str, default: Range<u64>) -> Range<u64> {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    let parsed = text.split_once("..").and_then(|(a, b)| {
        let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
        (a <= b && b - a <= SEEDS_MAX).then_some(a..b)
    });
    parsed.unwrap_or_else(|| {
        panic!("{name}={text:?}: expected A..B with A <= B and at most {SEEDS_MAX} seeds")
    })
}

fn jobs_from_env() -> usize {
    match std::env::var("SIM_MUTANTS_JOBS") {
        Err(_) => 2,
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=JOBS_MAX).contains(&n) => n,
            _ => panic!("SIM_MUTANTS_JOBS={text:?}: expected 1..={JOBS_MAX}"),
        },
    }
}

fn plant_from_env() -> Option<Bug> {
    let text = std::env::var("SIM_MUTANTS_PLANT").ok()?;
    let bug = Bug::ALL
        .into_iter()
        .find(|b| format!("{b:?}").eq_ignore_ascii_case(text.trim()));
    Some(bug.unwrap_or_else(|| panic!("SIM_MUTANTS_PLANT={text:?}: known {:?}", Bug::ALL)))
}

/// Runs every case on `jobs` threads, each case in a fresh process, and stops handing out
/// cases once one has failed (a caught mutant needs no more seeds). Returns the first failure
/// in case order among those run, and how many cases ran.
fn first_failure(cases: &[Options], jobs: usize) -> (Option<(Options, Outcome)>, usize) {
    let next = AtomicUsize::new(0);
    let ran = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let outcome = run_in_child(exe(), case);
                    ran.fetch_add(1, Ordering::Relaxed);
                    if !outcome.violations.is_empty() {
                        stop.store(true, Ordering::Relaxed);
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, outcome));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|(i, _)| *i);
    let first = failures
        .into_iter()
        .next()
        .map(|(i, outcome)| (cases[i].clone(), outcome));
    (first, ran.into_inner())
}

#[test]
fn the_simulation_passes_the_mutation_profile() {
    let seeds = range_from_env("SIM_MUTANTS_SEEDS", 0..50);
    let short = range_from_env("SIM_MUTANTS_SHORT_LEASE_SEEDS", 0..10);
    let liveness = range_from_env("SIM_MUTANTS_LIVENESS_SEEDS", 0..5);
    let jobs = jobs_from_env();
    let bug = plant_from_env();
    let long_cases = seeds.map(|seed| Options {
        bug,
        ..Options::new(seed)
    });
    let short_cases = short.map(|seed| Options {
        bug,
        lease_ms: SHORT_LEASE_MS,
        ..Options::new(seed)
    });
    let liveness_cases = liveness.map(|seed| Options {
        bug,
        liveness: true,
        fault_ms: LIVENESS_FAULT_MS,
        ..Options::new(seed)
    });
    let cases: Vec<Options> = long_cases
        .chain(short_cases)
        .chain(liveness_cases)
        .collect();
    assert!(!cases.is_empty(), "the profile holds no seed");
    let (failure, ran) = first_failure(&cases, jobs);
    println!("mutation profile: {ran} of {} cases run", cases.len());
    if let Some((case, outcome)) = failure {
        panic!(
            "seed {} (lease {} ms): {}\nreplay: {}",
            outcome.seed,
            case.lease_ms,
            outcome.violations.join("\n  "),
            replay_command(&outcome, &case)
        );
    }
}
