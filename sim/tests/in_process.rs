//! Determinism inside one process. A test binary of its own: tests in one binary run on
//! parallel threads, and a simulation is reproducible in-process only while no other thread
//! spawns tokio tasks (see `align_task_ids` in `sim/src/scenario.rs`).

use std::path::Path;

use switchyard_sim::explore::run_in_child;
use switchyard_sim::faults::Faults;
use switchyard_sim::scenario::{Options, run};

/// Seeds that crash gateways, run twice in this process (with tokio's task-id counter moved
/// between the runs), give the same outcome and trace as each other and as a replay in a
/// fresh process.
#[test]
fn the_same_seed_gives_the_same_trace_twice_in_one_process() {
    let mut crashes_gateways = 0;
    for seed in [0, 1, 2, 4, 5, 20] {
        let options = Options {
            faults: Some(Faults::all()),
            ..Options::new(seed)
        };
        let first = run(&options);
        // Move the process-wide task-id counter by 1 to 3, as other work in a process would.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime");
        for _ in 0..=seed % 3 {
            let task = runtime.spawn(async {});
            runtime.block_on(task).expect("an empty task completes");
        }
        let second = run(&options);
        assert!(first.trace.len() > 20, "a trace worth comparing");
        assert_eq!(
            first.trace, second.trace,
            "seed {seed} ran differently the second time"
        );
        assert_eq!(first, second, "seed {seed}");
        let replayed = run_in_child(Path::new(env!("CARGO_BIN_EXE_switchyard-sim")), &options);
        assert_eq!(
            (replayed.trace_hash, &replayed.violations),
            (first.trace_hash, &first.violations),
            "seed {seed}: the replay in a fresh process differs"
        );
        crashes_gateways += usize::from(first.trace.iter().any(|l| l.contains("crash gw-")));
    }
    assert!(
        crashes_gateways >= 3,
        "most of these seeds should crash a gateway"
    );
}
