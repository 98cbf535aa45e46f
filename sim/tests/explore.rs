//! The simulation suite: many seeds of a three-gateway cluster under swarm-chosen faults, the
//! determinism check, proof that the checkers catch planted bugs, and proptest over explicit
//! fault schedules. CI runs it in release with `--cfg tokio_unstable` (see testbeds/test-all);
//! a debug `cargo test` runs fewer seeds. `SIM_SEEDS=N` overrides the count.

use proptest::prelude::*;
use switchyard_core::planted::Bug;
use switchyard_sim::explore::{explore, replay_command, summary};
use switchyard_sim::faults::{Episode, EpisodeKind, Faults};
use switchyard_sim::scenario::{Options, run};

fn seeds() -> u64 {
    let default = if cfg!(debug_assertions) { 12 } else { 300 };
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_registry_converges_under_faults_for_every_seed() {
    let template = Options::new(0);
    let outcomes = explore(0..seeds(), &template, 2);
    let report = summary(&outcomes, &template, 0.0);
    println!("{report}");
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    assert!(failed.is_empty(), "{report}");
    // Every fault kind was exercised by some seed, or the run proves less than it says.
    for kind in Faults::KINDS {
        assert!(
            outcomes.iter().any(|o| o.faults.names().contains(&kind)),
            "no seed injected {kind}"
        );
    }
}

/// A seed replays bit for bit: `switchyard-sim run --seed N`, in a fresh process each time
/// (as a user replays a failure), prints the same trace, hash included.
#[test]
fn the_same_seed_gives_the_same_trace_in_a_fresh_process() {
    let replay = |seed: u64| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-sim"))
            .args([
                "run",
                "--seed",
                &seed.to_string(),
                "--faults",
                "all",
                "--trace",
            ])
            .output()
            .expect("the switchyard-sim binary runs");
        assert!(
            out.status.success(),
            "seed {seed}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("the trace is UTF-8")
    };
    let mut crashes_gateways = false;
    for seed in [3, 20, 41] {
        let (a, b) = (replay(seed), replay(seed));
        assert!(a.lines().count() > 20, "a trace worth comparing:\n{a}");
        assert_eq!(a, b, "seed {seed} replayed differently");
        crashes_gateways |= a.contains("crash gw-");
    }
    assert!(crashes_gateways, "one of the seeds should crash a gateway");
}

/// Each planted bug must be found within the stated number of seeds (measured: found at seed
/// 0, 7 and 20 respectively; the bounds leave room for changes to the workload).
#[test]
fn the_checkers_find_each_planted_bug() {
    for (bug, within) in [
        (Bug::ReadyBeforeCatchUp, 10),
        (Bug::SkipOwnEvents, 30),
        (Bug::IncomingWins, 60),
    ] {
        let template = Options {
            bug: Some(bug),
            ..Options::new(0)
        };
        let found = (0..within).find_map(|seed| {
            let outcome = run(&Options {
                seed,
                ..template.clone()
            });
            (!outcome.violations.is_empty()).then_some(outcome)
        });
        let outcome = found.unwrap_or_else(|| panic!("{bug:?} not found within {within} seeds"));
        println!(
            "{bug:?}: found at seed {}: {}\n  replay: {}",
            outcome.seed,
            outcome.violations[0],
            replay_command(&outcome, &template)
        );
    }
}

fn episode() -> impl Strategy<Value = Episode> {
    let kind = prop_oneof![
        (0..3usize).prop_map(|gateway| EpisodeKind::GatewayBroker { gateway }),
        (0..7usize, 0..7usize).prop_map(|(a, b)| EpisodeKind::Partition { a, b }),
        (0..7usize, 0..7usize).prop_map(|(a, b)| EpisodeKind::Hold { a, b }),
        (0..3usize).prop_map(|gateway| EpisodeKind::CrashGateway { gateway }),
        (0..2usize).prop_map(|service| EpisodeKind::CrashService { service }),
        Just(EpisodeKind::CrashBroker),
    ];
    (1_000..9_000u64, 100..4_000u64, kind).prop_map(|(at_ms, len_ms, kind)| Episode {
        at_ms,
        len_ms,
        kind,
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(debug_assertions) { 4 } else { 24 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any schedule of episodes, with every other fault kind on: a failure shrinks to the
    /// fewest, shortest episodes that still break an invariant.
    #[test]
    fn any_fault_schedule_converges(seed in 0..1_000u64, episodes in prop::collection::vec(episode(), 0..8)) {
        let options = Options {
            faults: Some(Faults::all()),
            episodes: Some(episodes),
            fault_ms: 10_000,
            ..Options::new(seed)
        };
        let outcome = run(&options);
        prop_assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
    }
}
