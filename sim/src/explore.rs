//! Many seeds: run them (in parallel where it helps), summarise, and name the command that
//! replays each failure.
//!
//! Each seed runs in a fresh process of the `switchyard-sim` binary (`run --seed N --json`),
//! never beside or after another seed in the same process: tokio numbers tasks from one
//! process-wide counter, and the order in which a crashed host's tasks are dropped follows
//! those numbers (see docs/simulation.md, "Determinism"). A fresh process starts the counter
//! at the same value every time, so every result `explore` reports is exactly what
//! `run --seed N` replays.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::scenario::{Options, Outcome};

/// The start of the machine-readable result line of `switchyard-sim run --json`; the rest of
/// the line is the [`Outcome`] as JSON (without the trace).
pub const RESULT_PREFIX: &str = "outcome-json ";

/// How long one child process may run before it is killed and its seed reported as failed.
/// A seed takes well under a second of wall time in release; the simulation bounds itself in
/// simulated time, so this only catches a wedged process.
const CHILD_WALL_MAX: Duration = Duration::from_secs(600);

/// The `switchyard-sim` arguments that replay `options`, starting with `run`.
pub fn run_args(options: &Options) -> Result<Vec<String>, String> {
    let defaults = Options::new(options.seed);
    if options.episodes.is_some() {
        return Err("an explicit fault schedule cannot be given on the command line".into());
    }
    if (options.gateways, options.services) != (defaults.gateways, defaults.services) {
        return Err(format!(
            "the command line runs {} gateways and {} services",
            defaults.gateways, defaults.services
        ));
    }
    let mut args = vec![
        "run".to_owned(),
        "--seed".to_owned(),
        options.seed.to_string(),
    ];
    if let Some(faults) = options.faults {
        let names = faults.names();
        args.push("--faults".into());
        args.push(if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        });
    }
    for (flag, value, default) in [
        ("--fault-ms", options.fault_ms, defaults.fault_ms),
        ("--settle-ms", options.settle_ms, defaults.settle_ms),
        ("--lease-ms", options.lease_ms, defaults.lease_ms),
        ("--tick-ms", options.tick_ms, defaults.tick_ms),
    ] {
        if value != default {
            args.push(flag.into());
            args.push(value.to_string());
        }
    }
    if options.liveness {
        args.push("--liveness".into());
    }
    if let Some(bug) = options.bug {
        args.push("--plant".into());
        args.push(format!("{bug:?}"));
    }
    Ok(args)
}

/// An outcome that records why a seed produced no result.
fn failed(seed: u64, why: String) -> Outcome {
    Outcome {
        seed,
        violations: vec![why],
        ..Outcome::default()
    }
}

/// Runs one seed in a fresh process of `exe` (the `switchyard-sim` binary) and reads its
/// result line. A process that fails to start, dies or prints no result is reported as a
/// violation of that seed.
pub fn run_in_child(exe: &Path, options: &Options) -> Outcome {
    let seed = options.seed;
    let args = match run_args(options) {
        Ok(args) => args,
        Err(why) => return failed(seed, why),
    };
    let mut child = match Command::new(exe)
        .args(&args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return failed(seed, format!("cannot start {}: {e}", exe.display())),
    };
    // Both pipes are drained while the child runs: its result line carries the violations,
    // which can quote hostile records' metadata and pass a pipe's buffer, and a child blocked
    // writing to a full pipe would never end.
    let (closed, stdout_closed) = mpsc::channel();
    let stdout = child.stdout.take().map(|pipe| drain(pipe, Some(closed)));
    let stderr = child.stderr.take().map(|pipe| drain(pipe, None));
    let started = wall_clock();
    // The child's stdout closes when it exits: that is waited for without polling (a 5 ms
    // poll cost each seed 2.5 ms of wall time on average, some 2 % of a 15 s seed), within
    // the bound. Then the child is reaped, which takes a moment at most; a child that closed
    // its stdout and kept running is polled for, within the same bound.
    let _ = stdout_closed.recv_timeout(CHILD_WALL_MAX);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < CHILD_WALL_MAX => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return failed(
                    seed,
                    format!("seed {seed} still running after {CHILD_WALL_MAX:?}: killed"),
                );
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return failed(seed, format!("waiting for seed {seed}: {e}"));
            }
        }
    };
    // The child has ended, so its pipes close and the readers finish.
    let joined = |reader: Option<std::thread::JoinHandle<String>>| {
        reader.and_then(|r| r.join().ok()).unwrap_or_default()
    };
    let (stdout, stderr) = (joined(stdout), joined(stderr));
    let result = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_PREFIX))
        .map(serde_json::from_str::<Outcome>);
    match result {
        Some(Ok(outcome)) if outcome.seed == seed => outcome,
        Some(Ok(outcome)) => failed(
            seed,
            format!("asked for seed {seed}, the child ran seed {}", outcome.seed),
        ),
        Some(Err(e)) => failed(seed, format!("seed {seed}: unreadable result line: {e}")),
        None => {
            let tail: String = stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            failed(
                seed,
                format!("seed {seed}: the child process ended ({status}) without a result: {tail}"),
            )
        }
    }
}

/// The most of a child's stdout or stderr kept; the rest is read and dropped, so the child
/// never blocks on a full pipe.
const CHILD_OUTPUT_MAX: usize = 64 << 20;

/// Reads `pipe` to its end on a thread of its own, keeping the first [`CHILD_OUTPUT_MAX`]
/// bytes; sends on `closed` when the pipe has ended.
fn drain(
    mut pipe: impl Read + Send + 'static,
    closed: Option<mpsc::Sender<()>>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 64 << 10];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let room = CHILD_OUTPUT_MAX.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(closed) = closed {
            let _ = closed.send(());
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // Wall time of the harness itself.
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}

/// Runs `seeds` with `template`'s settings (its `seed` is replaced), each in a fresh process
/// of `exe`, at most `jobs` at a time.
pub fn explore(
    seeds: std::ops::Range<u64>,
    template: &Options,
    jobs: usize,
    exe: &Path,
) -> Vec<Outcome> {
    explore_with(seeds, template, jobs, exe, &|_| {})
}

/// [`explore`], calling `seed_done` with each outcome as its seed finishes (from the thread
/// that ran it): what the progress line counts.
pub fn explore_with(
    seeds: std::ops::Range<u64>,
    template: &Options,
    jobs: usize,
    exe: &Path,
    seed_done: &(dyn Fn(&Outcome) + Sync),
) -> Vec<Outcome> {
    let seeds: Vec<u64> = seeds.collect();
    let jobs = jobs.clamp(1, 64).min(seeds.len().max(1));
    // Each job takes the next seed not yet taken, so that no core idles at the end while
    // another still has a share of long seeds queued.
    let (seeds, next) = (&seeds, &AtomicUsize::new(0));
    let mut outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let outcome = run_in_child(
                            exe,
                            &Options {
                                seed,
                                ..template.clone()
                            },
                        );
                        seed_done(&outcome);
                        outcomes.push(outcome);
                    }
                    outcomes
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

/// The first seed below `within` at which a run with `template` (its `bug` planted) reports
/// a violation containing `checker` (any violation when `checker` is empty), each seed in a
/// fresh process of `exe` as `explore` runs them: how the suites prove that a planted bug is
/// found, and by its own checker. The error says what the last seed reported.
pub fn find_planted(
    exe: &Path,
    template: &Options,
    within: u64,
    checker: &str,
) -> Result<Outcome, String> {
    let mut last = Vec::new();
    for seed in 0..within {
        let outcome = run_in_child(
            exe,
            &Options {
                seed,
                ..template.clone()
            },
        );
        if outcome.violations.iter().any(|v| v.contains(checker)) {
            return Ok(outcome);
        }
        last = outcome.violations;
    }
    Err(format!(
        "{:?} not found by {checker:?} within {within} seeds (the last seed reported {last:?})",
        template.bug
    ))
}

/// The command that replays one seed.
pub fn replay_command(outcome: &Outcome, template: &Options) -> String {
    let options = Options {
        seed: outcome.seed,
        ..template.clone()
    };
    match run_args(&options) {
        Ok(args) => format!(
            "cargo run -p switchyard-sim --release -- {}",
            args.join(" ")
        ),
        Err(why) => format!(
            "seed {} (not replayable from the command line: {why})",
            outcome.seed
        ),
    }
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
    let _ = writeln!(
        out,
        "delete markers       {} (in {} seeds)",
        outcomes.iter().map(|o| o.delete_markers).sum::<usize>(),
        outcomes.iter().filter(|o| o.delete_markers > 0).count()
    );
    for kind in crate::faults::Faults::KINDS {
        let n = outcomes
            .iter()
            .filter(|o| o.faults.names().contains(&kind))
            .count();
        let _ = writeln!(out, "  fault {kind:<16} in {n} seeds");
    }
    let routing = |f: fn(&Outcome) -> usize| outcomes.iter().map(f).sum::<usize>();
    let _ = writeln!(
        out,
        "routing checker      {} requests checked, {} not judged, {} violations",
        routing(|o| o.routing.checked),
        routing(|o| o.routing.unjudged),
        routing(|o| o.routing.violations)
    );
    let _ = writeln!(
        out,
        "balancing checks     {} requests delivered ({} more than once), {} calls unreached ({} with an instance in reach)",
        routing(|o| o.balancing.delivered),
        routing(|o| o.balancing.duplicated),
        routing(|o| o.balancing.unreached),
        routing(|o| o.balancing.unreached_wrongly)
    );
    let _ = writeln!(
        out,
        "ejections            {} failed connections to instances, {} judged, {} broken",
        routing(|o| o.balancing.connects_failed),
        routing(|o| o.balancing.ejections_judged),
        routing(|o| o.balancing.ejections_broken)
    );
    let _ = writeln!(
        out,
        "evictions            {} of sample instances, {} of instances in reach, {} before the wait",
        routing(|o| o.balancing.evictions),
        routing(|o| o.balancing.evictions_wrong),
        routing(|o| o.balancing.evictions_early)
    );
    let _ = writeln!(
        out,
        "outbox               {} changes answered 202 judged against their gateway's pending count",
        routing(|o| o.pending_judged)
    );
    let _ = writeln!(
        out,
        "catch-up             {} changes sent to a gateway while it caught up, refused",
        routing(|o| o.catching_up_refused)
    );
    let _ = writeln!(
        out,
        "timeouts             {} runs of three on a stalled instance judged, {} followed by a request within the ejection",
        routing(|o| o.balancing.timeouts_judged),
        routing(|o| o.balancing.timeouts_broken)
    );
    let _ = writeln!(
        out,
        "cutoffs              {} gateways cut off from every instance judged, {} without an eviction",
        routing(|o| o.balancing.cutoffs_judged),
        routing(|o| o.balancing.cutoffs_unevicted)
    );
    let _ = writeln!(
        out,
        "shortages            {} calls through a gateway short of file descriptors judged, {} answered overloaded, {} answers or evictions that blamed an instance",
        routing(|o| o.balancing.shortage_calls),
        routing(|o| o.balancing.shortage_overloaded),
        routing(|o| o.balancing.shortage_blamed)
    );
    let _ = writeln!(
        out,
        "readiness            {} incarnations judged at their first ready answer, {} event counts judged at the end ({} split by origin)",
        routing(|o| o.ready_judged),
        routing(|o| o.counts_judged),
        routing(|o| o.origins_judged)
    );
    let _ = writeln!(
        out,
        "drains               {} graceful stops judged for their outbox's flush, {} changes answered 202 judged there",
        routing(|o| o.drains_judged),
        routing(|o| o.drain_acks_judged)
    );
    let _ = writeln!(
        out,
        "forwarding edges     {} edge calls answered, {} refused as loops, {} answers at the body bound passed whole, {} instances' statuses answered as theirs; via mark judged on {} requests",
        routing(|o| o.fronts.edges.answered),
        routing(|o| o.fronts.edges.loops_refused),
        routing(|o| o.fronts.edges.at_bound_whole),
        routing(|o| o.fronts.edges.statuses_kept),
        routing(|o| o.fronts.edges.via_judged)
    );
    let _ = writeln!(
        out,
        "metrics scrapes      {} /metrics answers' bus gauges judged",
        routing(|o| o.fronts.scrapes_judged)
    );
    let hostile = |f: fn(&Outcome) -> usize| outcomes.iter().map(f).sum::<usize>();
    let _ = writeln!(
        out,
        "hostile records      {} written, {} of them to apply, the rest to quarantine",
        hostile(|o| o.hostile_records),
        hostile(|o| o.hostile_admissible)
    );
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
