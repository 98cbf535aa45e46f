//! A metrics scraper, as Prometheus would be: every 1-3 s during the fault window, `GET
//! /metrics` from a random gateway's control listener with an operator's credential, and the
//! checks of what the bus gauges of each answer promise (docs/operations.md):
//!
//! * `switchyard_bus_high_water`, the latest high-water mark the gateway read, is never behind
//!   `switchyard_bus_position` of the same answer, and `switchyard_bus_lag_events` is the
//!   difference;
//! * the high water is never beyond the log's own high-water mark when the answer arrives: a
//!   gateway cannot have seen a record that was not written yet;
//! * and never behind the log's mark when the scrape was sent, unless the broker or the
//!   gateway's link to it was disturbed meanwhile (judged at the end, [`check_fresh`]): each
//!   scrape asks the bus for its mark, waiting at most 1 s, and an undisturbed broker answers
//!   within a few hundred ms.
//!
//! Scrapes that a fault leaves unanswered are not judged. Its own generator: every other draw
//! stays as it was.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::bus::MemoryBus;

use super::super::balancing::Links;
use super::SharedLog;
use crate::CONTROL_PORT;
use crate::broker::BROKER_HOST;

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
    /// Answers whose high water was behind the log's mark when the scrape was sent, to be
    /// judged against the faults at the end.
    pub stale: Vec<Stale>,
}

/// An answer whose high water was behind the log's mark when its scrape was sent.
#[derive(Debug, Clone)]
pub struct Stale {
    pub gateway: String,
    /// When the scrape was sent and when its answer arrived, simulated ms.
    pub sent_ms: u64,
    pub answered_ms: u64,
    pub high_water: u64,
    /// The log's own mark when the scrape was sent.
    pub sent_mark: u64,
}

/// Simulated ms since the run began.
fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
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
        let (sent_ms, sent_mark) = (now_ms(), super::super::readiness::high_water(&bus));
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
        let at_ms = now_ms();
        let scrapes = &mut log.borrow_mut().scrapes;
        judge(scrapes, gw, at_ms, &text, log_mark);
        if let Some(high_water) = gauge(&text, "switchyard_bus_high_water")
            && high_water < sent_mark
        {
            scrapes.stale.push(Stale {
                gateway: gw.clone(),
                sent_ms,
                answered_ms: at_ms,
                high_water,
                sent_mark,
            });
        }
    }
}

/// The value of an unlabelled gauge in a metrics text.
pub fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Judges one answer of `gw`'s `/metrics` (its text) received at `at_ms`, when the log's
/// own high-water mark was `log_mark`.
pub fn judge(log: &mut ScrapeLog, gw: &str, at_ms: u64, text: &str, log_mark: u64) {
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

/// The check at the end of a run, with the faults it had: a high water behind the log's mark
/// when the scrape was sent, from a gateway whose link to the broker (and the broker) stayed
/// undisturbed from then until the answer, is wrong.
pub fn check_fresh(log: &ScrapeLog, links: &Links, violations: &mut Vec<String>) {
    let wrong: Vec<&Stale> = log
        .stale
        .iter()
        .filter(|s| links.quiet(&s.gateway, BROKER_HOST, s.sent_ms, s.answered_ms))
        .collect();
    violations.extend(wrong.iter().take(SHOWN_MAX).map(|s| {
        format!(
            "{}'s /metrics sent at {} ms and answered at {} ms reports a bus high water of {}, behind the log's mark {} when it was sent, though the broker and its link to it were undisturbed",
            s.gateway, s.sent_ms, s.answered_ms, s.high_water, s.sent_mark
        )
    }));
    if wrong.len() > SHOWN_MAX {
        violations.push(format!(
            "{} more /metrics answers reported a stale bus high water",
            wrong.len() - SHOWN_MAX
        ));
    }
}
