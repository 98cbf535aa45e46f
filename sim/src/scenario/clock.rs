//! The clock's promise: a change made through a gateway after that gateway has applied another
//! change (its own or one read from the bus) carries a greater stamp.
//!
//! Each gateway incarnation's change feed (`Node::watch`, a subscription of its own beside the
//! routing checker's) is drained after every step; the checker keeps, per gateway, the
//! greatest stamp applied so far and the simulated time of the step after which it was known.
//! Every change the client made (any answer that carries a stamp) is then judged against the
//! greatest stamp its gateway had applied in a step that ended before the request was sent.
//! A new incarnation starts from nothing (it catches up before it stamps anything). A feed
//! that falls behind skips changes, which can only make the check more lenient.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use switchyard_core::Stamp;
use switchyard_core::event::Event;
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::checks::{Live, Reported};
use super::workload::Ack;

/// The most violations described (all are counted).
const SHOWN_MAX: usize = 5;

fn stamp_cmp(a: &Stamp, b: &Stamp) -> Ordering {
    (a.physical_ms, a.logical, a.node_id.as_str()).cmp(&(
        b.physical_ms,
        b.logical,
        b.node_id.as_str(),
    ))
}

#[derive(Default)]
pub(super) struct ClockPromise {
    feeds: BTreeMap<String, broadcast::Receiver<Event>>,
    /// Per gateway: from which step end (ms) on which stamp was the greatest applied, in time
    /// order; `None` from the start of an incarnation.
    greatest: BTreeMap<String, Vec<(u64, Option<Stamp>)>>,
}

impl ClockPromise {
    /// A gateway incarnation started in the step that began at `now_ms`.
    pub fn started(&mut self, name: &str, feed: broadcast::Receiver<Event>, now_ms: u64) {
        self.feeds.insert(name.to_owned(), feed);
        self.greatest
            .entry(name.to_owned())
            .or_default()
            .push((now_ms, None));
    }

    /// Reads every feed after a step that ended at `at_ms`.
    pub fn drain(&mut self, at_ms: u64) {
        for (name, feed) in &mut self.feeds {
            let history = self.greatest.entry(name.clone()).or_default();
            let mut greatest = history.last().and_then(|(_, s)| s.clone());
            let before = greatest.clone();
            loop {
                match feed.try_recv() {
                    Ok(event) => {
                        if greatest
                            .as_ref()
                            .is_none_or(|g| stamp_cmp(&event.stamp, g) == Ordering::Greater)
                        {
                            greatest = Some(event.stamp);
                        }
                    }
                    Err(TryRecvError::Lagged(_)) => {}
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if greatest != before {
                history.push((at_ms, greatest));
            }
        }
    }

    /// Judges the lead each gateway that is up reports against the greatest stamp it has
    /// applied (known after the last step): the clock has moved past that stamp, so it runs at
    /// least `stamp.physical_ms - wall` ahead. A gauge stuck at 0 while the gateway follows a
    /// clock that runs ahead breaks this.
    pub fn check_lead(
        &self,
        live: &Live<'_>,
        reported: &mut Reported,
        violations: &mut Vec<String>,
    ) {
        for (name, node, wall) in live.each() {
            let Some(greatest) = self
                .greatest
                .get(name)
                .and_then(|history| history.last())
                .and_then(|(_, s)| s.as_ref())
            else {
                continue;
            };
            let shown_ms = greatest.physical_ms.saturating_sub(wall);
            let reported_ms = node.hlc_ahead_of_ms(wall);
            if reported_ms < shown_ms {
                reported.once("lead", name, violations, || {
                    format!(
                        "{name} reports its clock {reported_ms} ms ahead of its wall clock at {} ms, but it applied {}.{}@{}, {shown_ms} ms ahead: the reported lead is wrong",
                        live.now_ms, greatest.physical_ms, greatest.logical, greatest.node_id
                    )
                });
            }
        }
    }

    /// Judges every change the client made; returns how many were judged.
    pub fn check(&self, acks: &[Ack], violations: &mut Vec<String>) -> usize {
        let mut judged = 0;
        let mut broken = 0;
        for ack in acks {
            let Some(stamp) = &ack.stamp else { continue };
            let Some(history) = self.greatest.get(&ack.gateway) else {
                continue;
            };
            // The last step that ended before the request was sent.
            let seen = history
                .iter()
                .rev()
                .find(|(at_ms, _)| *at_ms < ack.sent_ms)
                .and_then(|(at_ms, s)| Some((*at_ms, s.as_ref()?)));
            judged += 1;
            let Some((at_ms, seen)) = seen else { continue };
            if stamp_cmp(stamp, seen) != Ordering::Greater {
                broken += 1;
                if broken <= SHOWN_MAX {
                    violations.push(format!(
                        "{} stamped a {} of {}/{} sent at {} ms with {}.{}@{}, not after {}.{}@{}, which it had applied by {at_ms} ms: the clock's promise is broken",
                        ack.gateway,
                        ack.op.name(),
                        ack.key.service,
                        ack.key.instance_id,
                        ack.sent_ms,
                        stamp.physical_ms,
                        stamp.logical,
                        stamp.node_id,
                        seen.physical_ms,
                        seen.logical,
                        seen.node_id
                    ));
                }
            }
        }
        if broken > SHOWN_MAX {
            violations.push(format!("{broken} changes in all broke the clock's promise"));
        }
        judged
    }
}
