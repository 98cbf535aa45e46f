//! The breaker in front of Redis: a state machine driven by the caller's `now`, so it is tested
//! with plain instants and no server.
//!
//! Closed, it lets every call through and counts consecutive failures (errors and timeouts
//! alike); at `failures_max` it opens. Open, it refuses every call at once until the cool-down
//! has passed; then it lets exactly one call through as a probe. The probe's success closes
//! it; its failure opens it for another cool-down. A probe that never reports (its caller was
//! cancelled) is given up after `probe_timeout`, and the next call becomes the probe.

use std::time::Duration;

use tokio::time::Instant;

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Call,
    /// The one call after a cool-down that tests whether Redis is back.
    Probe,
    /// Open: fail at once.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing { since: Instant },
}

/// A consecutive-failure breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    failures_max: u32,
    cooldown: Duration,
    probe_timeout: Duration,
    state: State,
}

impl Breaker {
    /// A closed breaker that opens after `failures_max` consecutive failures (at least 1) for
    /// `cooldown`, and gives up on a probe that has not reported after `probe_timeout`.
    pub fn new(failures_max: u32, cooldown: Duration, probe_timeout: Duration) -> Self {
        Self {
            failures_max: failures_max.max(1),
            cooldown,
            probe_timeout,
            state: State::Closed { failures: 0 },
        }
    }

    /// Whether a call made at `now` may go to Redis.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Call,
            State::Open { until } if now < until => Admit::Refuse,
            State::Probing { since } if now < since + self.probe_timeout => Admit::Refuse,
            State::Open { .. } | State::Probing { .. } => {
                self.state = State::Probing { since: now };
                Admit::Probe
            }
        }
    }

    /// A call answered: the breaker closes, whatever its state.
    pub fn success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// A call failed or timed out at `now`. Returns whether this failure opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { failures } if failures + 1 < self.failures_max => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::Probing { .. } => {
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                true
            }
            // A call admitted before the breaker opened, failing late: the cool-down stands.
            State::Open { .. } => false,
        }
    }

    /// Whether calls go through (closed).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_millis(1_000);
    const PROBE: Duration = Duration::from_millis(100);

    fn breaker(failures_max: u32) -> Breaker {
        Breaker::new(failures_max, COOLDOWN, PROBE)
    }

    #[test]
    fn opens_after_the_stated_consecutive_failures_and_not_before() {
        let t0 = Instant::now();
        let mut b = breaker(3);
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert_eq!(b.admit(t0), Admit::Call);
        assert!(b.failure(t0), "the third consecutive failure opens it");
        assert_eq!(b.admit(t0), Admit::Refuse);
        assert!(!b.is_closed());
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = breaker(2);
        assert!(!b.failure(t0));
        b.success();
        assert!(
            !b.failure(t0),
            "one failure after a success is the first again"
        );
        assert_eq!(b.admit(t0), Admit::Call);
    }

    #[test]
    fn refuses_for_the_cooldown_then_lets_one_probe_through() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        assert!(b.failure(t0));
        assert_eq!(
            b.admit(t0 + COOLDOWN - Duration::from_millis(1)),
            Admit::Refuse
        );
        let t1 = t0 + COOLDOWN;
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::Refuse, "one probe at a time");
        b.success();
        assert_eq!(b.admit(t1), Admit::Call);
        assert!(b.is_closed());
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_cooldown() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.failure(t0);
        let t1 = t0 + COOLDOWN;
        assert_eq!(b.admit(t1), Admit::Probe);
        assert!(b.failure(t1));
        assert_eq!(b.admit(t1 + COOLDOWN / 2), Admit::Refuse);
        assert_eq!(b.admit(t1 + COOLDOWN), Admit::Probe);
    }

    #[test]
    fn a_probe_that_never_reports_is_given_up_after_its_timeout() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.failure(t0);
        let t1 = t0 + COOLDOWN;
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(
            b.admit(t1 + PROBE - Duration::from_millis(1)),
            Admit::Refuse
        );
        assert_eq!(b.admit(t1 + PROBE), Admit::Probe);
    }

    #[test]
    fn a_late_failure_does_not_extend_the_cooldown() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.failure(t0);
        assert!(!b.failure(t0 + COOLDOWN / 2));
        assert_eq!(b.admit(t0 + COOLDOWN), Admit::Probe);
    }
}
