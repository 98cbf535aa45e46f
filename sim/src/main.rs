//! `switchyard-sim`: run one seed, or explore many.
//!
//! ```text
//! cargo run -p switchyard-sim --release -- run --seed 7 --trace
//! cargo run -p switchyard-sim --release -- explore --seeds 0..500 --jobs 2
//! cargo run -p switchyard-sim --release -- explore --seeds 0..50 --plant SkipOwnEvents
//! ```
//! For bit-for-bit determinism build with `RUSTFLAGS="--cfg tokio_unstable"` (turmoil then
//! seeds tokio's own randomness from the seed), as testbeds/test-all does. `explore` runs
//! each seed in a fresh process of this program (`run --seed N --json`), so that every result
//! it reports replays exactly with `run --seed N`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_core::planted::Bug;
use switchyard_sim::explore::{RESULT_PREFIX, explore_with, replay_command, summary};
use switchyard_sim::faults::Faults;
use switchyard_sim::progress::{self, Progress};
use switchyard_sim::scenario::{LEASE_MAX_MS, Options, TICK_MS, run};

/// The gateway binary's allocator (the `switchyard` crate's default `mimalloc` feature), so that
/// the simulated gateways allocate as deployed ones do; it is also the cheaper of the two for the
/// many small blocks a run allocates (docs/simulation.md, "Speed").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-sim",
    about = "Deterministic simulation of a Switchyard cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Fault kinds to inject (comma-separated, `all` or `none`); default: drawn per seed.
    #[arg(long, value_parser = Faults::parse)]
    faults: Option<Faults>,
    /// Plant a known bug (IncomingWins, SkipOwnEvents, ReadyBeforeCatchUp, RouteExpired,
    /// CollectEarly, QuarantineOff, ScopeIgnored, FrontSkipsBus, CallOkOnError,
    /// AuditDropUncounted, SubscriptionGap, ObserveIgnored, TickRepeats, RemovalAlwaysWins,
    /// TargetShort, PositionBack).
    #[arg(long, value_parser = parse_bug)]
    plant: Option<Bug>,
    /// Simulated milliseconds of faults before the heal.
    #[arg(long, default_value_t = Options::new(0).fault_ms)]
    fault_ms: u64,
    /// Simulated milliseconds allowed for convergence after the heal.
    #[arg(long, default_value_t = Options::new(0).settle_ms)]
    settle_ms: u64,
    /// Simulated milliseconds per simulation step, 1..=10: the granularity of message
    /// delivery between hosts (a larger step runs faster and coarser).
    #[arg(long, default_value_t = TICK_MS, value_parser = clap::value_parser!(u64).range(1..=10))]
    tick_ms: u64,
    /// The lease the sample instances register with, in milliseconds (at least 1000, at
    /// most the gateways' `registry.lease_max_ms`, 6000).
    #[arg(long, default_value_t = LEASE_MAX_MS, value_parser = clap::value_parser!(u64).range(1_000..=LEASE_MAX_MS))]
    lease_ms: u64,
    /// Liveness mode: after the heal the cluster must converge and serve every live service
    /// within a bound; `explore` reports the bound's quantiles per fault kind.
    #[arg(long)]
    liveness: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed and report its outcome.
    Run {
        #[arg(long)]
        seed: u64,
        /// Print the trace (faults, client operations, convergence).
        #[arg(long)]
        trace: bool,
        /// Also print the outcome as one machine-readable line (`outcome-json {...}`), as
        /// `explore` reads it from the process it runs each seed in.
        #[arg(long)]
        json: bool,
        /// Sleep this many microseconds on the machine's clock after every step (at most
        /// 10000), as a loaded machine stretches a run: the trace must not change.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
        wall_drag_us: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Run a range of seeds, e.g. --seeds 0..500, and print a summary.
    Explore {
        #[arg(long, value_parser = parse_range)]
        seeds: std::ops::Range<u64>,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Also write the summary to this file (what the nightly run keeps).
        #[arg(long)]
        summary: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: Common,
    },
}

fn parse_bug(s: &str) -> Result<Bug, String> {
    Bug::ALL
        .into_iter()
        .find(|b| format!("{b:?}").eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown bug {s:?}; known: {:?}", Bug::ALL))
}

fn parse_range(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s.split_once("..").ok_or("expected A..B")?;
    let (a, b) = (
        a.parse::<u64>().map_err(|e| e.to_string())?,
        b.parse::<u64>().map_err(|e| e.to_string())?,
    );
    if a >= b {
        return Err("the range is empty".into());
    }
    Ok(a..b)
}

fn options(seed: u64, common: &Common) -> Options {
    Options {
        faults: common.faults,
        fault_ms: common.fault_ms,
        settle_ms: common.settle_ms,
        bug: common.plant,
        lease_ms: common.lease_ms,
        tick_ms: common.tick_ms,
        liveness: common.liveness,
        ..Options::new(seed)
    }
}

#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // Wall time of the harness itself.
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            seed,
            trace,
            json,
            wall_drag_us,
            common,
        } => {
            let opts = Options {
                wall_drag: std::time::Duration::from_micros(wall_drag_us),
                ..options(seed, &common)
            };
            let outcome = run(&opts);
            if trace {
                for line in &outcome.trace {
                    println!("{line}");
                }
            }
            println!(
                "seed {} faults [{}] acknowledged {} convergence {} trace {:016x}",
                outcome.seed,
                outcome.faults.names().join(","),
                outcome.acknowledged,
                outcome
                    .convergence_ms
                    .map_or("none".into(), |ms| format!("{ms} ms")),
                outcome.trace_hash
            );
            println!(
                "routing checker: {} requests checked, {} not judged, {} violations",
                outcome.routing.checked, outcome.routing.unjudged, outcome.routing.violations
            );
            if json {
                match serde_json::to_string(&outcome) {
                    Ok(line) => println!("{RESULT_PREFIX}{line}"),
                    Err(e) => {
                        eprintln!("cannot encode the outcome: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            if outcome.violations.is_empty() {
                return ExitCode::SUCCESS;
            }
            for v in &outcome.violations {
                println!("VIOLATION {v}");
            }
            println!("replay: {}", replay_command(&outcome, &opts));
            ExitCode::FAILURE
        }
        Command::Explore {
            seeds,
            jobs,
            summary: summary_file,
            common,
        } => {
            let template = options(0, &common);
            let started = wall_clock();
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => {
                    eprintln!("cannot find this program to run each seed in: {e}");
                    return ExitCode::from(2);
                }
            };
            let progress = Progress::new(seeds.clone().count(), progress::wanted_here());
            let outcomes = explore_with(seeds, &template, jobs, &exe, &|o| progress.seed_done(o));
            progress.finish();
            let mut report = summary(&outcomes, &template, started.elapsed().as_secs_f64());
            if template.liveness {
                report.push_str(&switchyard_sim::scenario::liveness::report(&outcomes).to_string());
            }
            print!("{report}");
            if let Some(path) = summary_file
                && let Err(e) = std::fs::write(&path, &report)
            {
                eprintln!("cannot write the summary to {}: {e}", path.display());
                return ExitCode::from(2);
            }
            if outcomes.iter().all(|o| o.violations.is_empty()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
