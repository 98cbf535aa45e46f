//! A metrics scraper, as Prometheus would be: every 1-3 s during the fault window, `GET
//! /metrics` from a random gateway's control listener with an operator's credential, and the
//! checks of what the bus gauges of each answer promise (docs/operations.md):
//!
//! * `switchyard_bus_high_water`, the latest high-water mark the gateway read, is never behind
//!   `switchyard_bus_position` of the same answer, and `switchyard_bus_lag_events` is the
//!   difference;
//! * the high water is never beyond the log's own high-water mark when the answer arrives: a
//!   gateway cannot have seen a record that was not written yet.
//!
//! Scrapes that a fault leaves unanswered are not judged. Its own generator: every other draw
//! stays as it was.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::bus::MemoryBus;

use super::SharedLog;
use crate::CONTROL_PORT;

/// XORed into the seed for the scraper's generator.
pub const SCRAPE_DRAWS: u64 = 0x005c_7a9e_5eed;
/// The most violations described in one run (all are counted).
const SHOWN_MAX: usize = 5;

/// What the scraper saw.
#[derive(Debug, Default)]
pub struct ScrapeLog {
    /// Answers with the three bus gauges, judged.
    pub judged: usize,
    /// Answers that broke a promise, described.
    pub wrong: Vec<String>,
}

/// Scrapes until the fault window ends; keeps what it judged in `log`.
pub async fn scraper(
    gateways: Vec<String>,
    bus: MemoryBus,
    seed: u64,
    fault_ms: u64,
    log: SharedLog,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ SCRAPE_DRAWS);
    let operator = crate::credential("operator", &["*"]);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(fault_ms) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        let gw = &gateways[rng.random_range(0..gateways.len())];
        let Ok((200, body)) = crate::http_send_as(
            gw,
            CONTROL_PORT,
            "GET",
            "/metrics",
            Vec::new(),
            Some(&operator),
        )
        .await
        else {
            continue;
        };
        let log_mark = super::super::readiness::high_water(&bus);
        let text = String::from_utf8_lossy(&body);
        let at_ms = started.elapsed().as_millis() as u64;
        judge(&mut log.borrow_mut().scrapes, gw, at_ms, &text, log_mark);
    }
}

/// The value of an unlabelled gauge in a metrics text.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn judge(log: &mut ScrapeLog, gw: &str, at_ms: u64, text: &str, log_mark: u64) {
    let (Some(position), Some(high_water), Some(lag)) = (
        gauge(text, "switchyard_bus_position"),
        gauge(text, "switchyard_bus_high_water"),
        gauge(text, "switchyard_bus_lag_events"),
    ) else {
        log.wrong.push(format!(
            "{gw}'s /metrics at {at_ms} ms lacks one of the bus gauges (position, high water, lag)"
        ));
        return;
    };
    log.judged += 1;
    let wrong = if high_water < position {
        Some(format!(
            "reports a bus high water of {high_water}, behind its position {position}"
        ))
    } else if high_water > log_mark {
        Some(format!(
            "reports a bus high water of {high_water}, beyond the log's own mark {log_mark}"
        ))
    } else if lag != high_water - position {
        Some(format!(
            "reports a bus lag of {lag} events at position {position} and high water {high_water}"
        ))
    } else {
        None
    };
    if let Some(what) = wrong {
        log.wrong
            .push(format!("{gw}'s /metrics at {at_ms} ms {what}"));
    }
}

/// The check at the end of a run: the answers [`judge`] found wrong. Returns the answers
/// judged.
pub fn check(log: &ScrapeLog, violations: &mut Vec<String>) -> usize {
    violations.extend(log.wrong.iter().take(SHOWN_MAX).cloned());
    if log.wrong.len() > SHOWN_MAX {
        violations.push(format!(
            "{} more /metrics answers broke the bus gauges' promise",
            log.wrong.len() - SHOWN_MAX
        ));
    }
    log.judged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_by_their_whole_name() {
        let text = "# HELP switchyard_bus_position_x x\nswitchyard_bus_position_x 9\nswitchyard_bus_position 4\n";
        assert_eq!(gauge(text, "switchyard_bus_position"), Some(4));
        assert_eq!(gauge(text, "switchyard_bus_high_water"), None);
    }

    #[test]
    fn a_high_water_behind_the_position_or_beyond_the_log_is_wrong() {
        let text = |p, h, l| {
            format!(
                "switchyard_bus_position {p}\nswitchyard_bus_high_water {h}\nswitchyard_bus_lag_events {l}\n"
            )
        };
        let mut log = ScrapeLog::default();
        judge(&mut log, "gw-0", 1, &text(4, 6, 2), 6);
        assert_eq!((log.judged, log.wrong.len()), (1, 0));
        judge(&mut log, "gw-0", 2, &text(4, 1, 0), 6);
        judge(&mut log, "gw-0", 3, &text(4, 7, 3), 6);
        judge(&mut log, "gw-0", 4, &text(4, 6, 1), 6);
        assert_eq!((log.judged, log.wrong.len()), (4, 3), "{:?}", log.wrong);
    }
}
