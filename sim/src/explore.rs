//! Many seeds: run them (in parallel where it helps), summarise, and name the command that
//! replays each failure.

use std::fmt::Write as _;

use crate::scenario::{Options, Outcome, run};

/// Runs `seeds` with `template`'s settings (its `seed` is replaced), on `jobs` threads.
pub fn explore(seeds: std::ops::Range<u64>, template: &Options, jobs: usize) -> Vec<Outcome> {
    let seeds: Vec<u64> = seeds.collect();
    let jobs = jobs.clamp(1, 64).min(seeds.len().max(1));
    let chunks: Vec<Vec<u64>> = (0..jobs)
        .map(|j| seeds.iter().copied().skip(j).step_by(jobs).collect())
        .collect();
    let mut outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|seed| {
                            run(&Options {
                                seed,
                                ..template.clone()
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    outcomes.sort_by_key(|o| o.seed);
    outcomes
}

/// The command that replays one seed.
pub fn replay_command(outcome: &Outcome, template: &Options) -> String {
    let mut cmd = format!(
        "cargo run -p switchyard-sim --release -- run --seed {}",
        outcome.seed
    );
    if let Some(bug) = template.bug {
        let _ = write!(cmd, " --plant {bug:?}");
    }
    cmd
}

/// Quantile `q` (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The summary table.
pub fn summary(outcomes: &[Outcome], template: &Options, wall_s: f64) -> String {
    let mut out = String::new();
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    let mut conv: Vec<u64> = outcomes.iter().filter_map(|o| o.convergence_ms).collect();
    conv.sort_unstable();
    let simulated_s: f64 = outcomes
        .iter()
        .map(|o| o.simulated_ms as f64 / 1000.0)
        .sum();
    let _ = writeln!(out, "seeds run            {}", outcomes.len());
    let _ = writeln!(out, "with violations      {}", failed.len());
    let _ = writeln!(
        out,
        "acknowledged changes {}",
        outcomes.iter().map(|o| o.acknowledged).sum::<usize>()
    );
    for kind in crate::faults::Faults::KINDS {
        let n = outcomes
            .iter()
            .filter(|o| o.faults.names().contains(&kind))
            .count();
        let _ = writeln!(out, "  fault {kind:<16} in {n} seeds");
    }
    let q = |p| quantile(&conv, p).map_or("-".to_owned(), |v| format!("{v} ms"));
    let _ = writeln!(
        out,
        "convergence after heal: p50 {}  p90 {}  p99 {}  max {}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    if wall_s > 0.0 {
        let _ = writeln!(
            out,
            "simulated {simulated_s:.0} s in {wall_s:.1} s wall: {:.1} simulated s per wall s",
            simulated_s / wall_s
        );
    }
    for o in failed.iter().take(20) {
        let _ = writeln!(out, "FAIL seed {}: {}", o.seed, o.violations[0]);
        let _ = writeln!(out, "  replay: {}", replay_command(o, template));
    }
    out
}
