use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;

fn c(in_flight: u32, ejected: bool, tried: bool) -> Candidate {
    Candidate {
        in_flight,
        ejected,
        tried,
        full: false,
    }
}

fn full(ejected: bool) -> Candidate {
    Candidate {
        full: true,
        ..c(0, ejected, false)
    }
}

#[test]
fn a_full_instance_is_never_picked_even_when_the_rest_are_ejected() {
    let mut rng = SmallRng::seed_from_u64(5);
    for _ in 0..100 {
        assert_eq!(pick(&[full(false), c(9, false, false)], &mut rng), Some(1));
        assert_eq!(pick(&[full(false), c(9, true, false)], &mut rng), Some(1));
        assert_eq!(pick(&[c(0, true, false), full(true)], &mut rng), Some(0));
    }
    assert_eq!(pick(&[full(false), full(true)], &mut rng), None);
}

#[test]
fn prefers_fewer_in_flight_and_skips_ejected_and_tried() {
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..100 {
        // With two healthy candidates both are compared, so the idle one always wins.
        assert_eq!(
            pick(&[c(5, false, false), c(0, false, false)], &mut rng),
            Some(1)
        );
        assert_eq!(
            pick(
                &[c(0, true, false), c(9, false, false), c(0, false, true)],
                &mut rng
            ),
            Some(1)
        );
    }
    assert_eq!(pick(&[c(0, false, true)], &mut rng), None);
    assert_eq!(pick(&[], &mut rng), None);
}

#[test]
fn spreads_load_over_equal_candidates() {
    let mut rng = SmallRng::seed_from_u64(1);
    let cands = [c(0, false, false); 4];
    let mut hits = [0u32; 4];
    for _ in 0..4_000 {
        hits[pick(&cands, &mut rng).unwrap()] += 1;
    }
    assert!(hits.iter().all(|&h| h > 700), "uneven: {hits:?}");
}

#[test]
fn all_ejected_still_gets_a_try() {
    let mut rng = SmallRng::seed_from_u64(3);
    assert!(pick(&[c(0, true, false), c(0, true, false)], &mut rng).is_some());
}

#[test]
fn ejection_grows_is_bounded_and_ends() {
    let policy = HealthPolicy {
        failures_to_eject: 2,
        ejection_base_ms: 100,
        ejection_max_ms: 250,
        timeouts_to_eject: 0,
    };
    let mut h = InstanceHealth::default();
    assert!(!h.on_failure(0, &policy));
    assert!(h.on_failure(0, &policy));
    assert_eq!(h.ejected_until_ms, 100);
    assert!(h.is_ejected(99) && !h.is_ejected(100));
    // Failures while ejected do not extend the ejection.
    assert!(!h.on_failure(50, &policy) && !h.on_failure(60, &policy));
    assert_eq!(h.ejected_until_ms, 100);
    h.on_failure(100, &policy);
    assert!(h.on_failure(100, &policy));
    assert_eq!(h.ejected_until_ms, 300);
    h.on_failure(300, &policy);
    assert!(h.on_failure(300, &policy));
    assert_eq!(h.ejected_until_ms, 550, "capped at 250 ms");
    h.on_success();
    assert_eq!(h, InstanceHealth::default());
}

#[test]
fn retries_only_connect_failures_within_the_bound() {
    let p = RetryPolicy { attempts_max: 2 };
    let connect = GatewayError::UpstreamConnect {
        service: "s".into(),
        detail: "refused".into(),
    };
    assert!(p.should_retry(&connect, 1));
    assert!(!p.should_retry(&connect, 2));
    let status = GatewayError::UpstreamStatus {
        service: "s".into(),
        grpc_code: 14,
        message: String::new(),
    };
    assert!(!p.should_retry(&status, 1));
}

fn upstream(kind: &str) -> GatewayError {
    let service = "s".to_owned();
    match kind {
        "connect" => GatewayError::UpstreamConnect {
            service,
            detail: "refused".into(),
        },
        "reset" => GatewayError::UpstreamReset {
            service,
            detail: "reset".into(),
        },
        "timeout" => GatewayError::UpstreamTimeout {
            service,
            timeout_ms: 10,
        },
        "status" => GatewayError::UpstreamStatus {
            service,
            grpc_code: 14,
            message: String::new(),
        },
        _ => GatewayError::BadUpstreamResponse {
            service,
            reason: "garbled".into(),
        },
    }
}

#[test]
fn outcomes_of_results() {
    assert_eq!(AttemptOutcome::of(Ok(())), AttemptOutcome::Answered);
    assert_eq!(
        AttemptOutcome::of(Err(&upstream("connect"))),
        AttemptOutcome::ConnectFailed
    );
    assert_eq!(
        AttemptOutcome::of(Err(&upstream("reset"))),
        AttemptOutcome::Reset
    );
    assert_eq!(
        AttemptOutcome::of(Err(&upstream("timeout"))),
        AttemptOutcome::TimedOut
    );
    // A status the service sent, or a response it garbled, proves it reachable.
    assert_eq!(
        AttemptOutcome::of(Err(&upstream("status"))),
        AttemptOutcome::Answered
    );
    assert_eq!(
        AttemptOutcome::of(Err(&upstream("bad"))),
        AttemptOutcome::Answered
    );
}

#[test]
fn connect_failures_start_the_eviction_clock_and_an_answer_clears_it() {
    let policy = HealthPolicy::default();
    let mut slot = Slot::default();
    assert!(slot.record(AttemptOutcome::ConnectFailed, 100, &policy));
    assert_eq!(slot.failing_since_ms, Some(100));
    assert!(slot.health.is_ejected(100));
    // A later failure keeps the first moment of failing.
    assert!(!slot.record(AttemptOutcome::ConnectFailed, 200, &policy));
    assert_eq!(slot.failing_since_ms, Some(100));
    slot.on_evicted(300);
    assert_eq!((slot.evictions, slot.failing_since_ms), (1, Some(300)));
    let before = slot;
    // Past the ejection, so the timeout counts.
    assert!(!slot.record(AttemptOutcome::TimedOut, 1_200, &policy));
    assert!(!slot.record(AttemptOutcome::Local, 1_200, &policy));
    assert!(!slot.record(AttemptOutcome::NotDialed, 1_200, &policy));
    assert_eq!(
        slot,
        Slot {
            health: InstanceHealth {
                consecutive_timeouts: 1,
                ..before.health
            },
            ..before
        },
        "a timeout only counts towards its own ejection; a local failure or one not dialed changes nothing"
    );
    slot.in_flight = 2;
    assert!(!slot.record(AttemptOutcome::Answered, 1_300, &policy));
    assert_eq!(
        slot,
        Slot {
            in_flight: 2,
            ..Slot::default()
        }
    );
}

#[test]
fn a_broken_connection_ejects_but_does_not_start_the_eviction_clock() {
    let policy = HealthPolicy::default();
    let mut slot = Slot::default();
    assert!(slot.record(AttemptOutcome::Reset, 100, &policy));
    assert!(slot.health.is_ejected(100));
    assert_eq!(slot.failing_since_ms, None);
}

#[test]
fn the_eviction_wait_doubles_is_capped_and_can_be_off() {
    let policy = EvictionPolicy {
        after_ms: 1_000,
        after_max_ms: 5_000,
    };
    assert!(policy.enabled());
    let waits: Vec<u64> = (0..5).map(|n| policy.wait_ms(n)).collect();
    assert_eq!(waits, [1_000, 2_000, 4_000, 5_000, 5_000]);
    let uncapped = EvictionPolicy {
        after_ms: 1,
        after_max_ms: u64::MAX,
    };
    assert_eq!(uncapped.wait_ms(16), 1 << 16);
    assert_eq!(uncapped.wait_ms(u32::MAX), 1 << 16, "the shift is capped");

    let mut slot = Slot {
        failing_since_ms: Some(10_000),
        evictions: 1,
        health: InstanceHealth {
            ejected_until_ms: 30_000,
            ..InstanceHealth::default()
        },
        ..Slot::default()
    };
    assert!(!slot.evictable(11_999, &policy));
    assert!(slot.evictable(12_000, &policy));
    assert!(
        !slot.evictable(30_000, &policy),
        "its ejection over and not tried since, it has not been shown unreachable since"
    );
    assert!(
        !Slot::default().evictable(u64::MAX, &policy),
        "never failed"
    );
    let off = EvictionPolicy {
        after_ms: 0,
        after_max_ms: 5_000,
    };
    assert!(!off.enabled());
    assert!(!slot.evictable(u64::MAX, &off));
    slot.on_evicted(20_000);
    assert!(!slot.evictable(23_999, &policy) && slot.evictable(24_000, &policy));
}

/// `Node::record` as it read before the record moved here, kept as the reference the
/// move is checked against.
fn record_as_the_node_did(
    slot: &mut Slot,
    result: &Result<(), GatewayError>,
    now: u64,
    policy: &HealthPolicy,
) -> bool {
    match result {
        Err(GatewayError::UpstreamConnect { .. }) => {
            slot.failing_since_ms.get_or_insert(now);
            slot.health.on_failure(now, policy)
        }
        Err(GatewayError::UpstreamReset { .. }) => slot.health.on_failure(now, policy),
        Err(GatewayError::UpstreamTimeout { .. }) => false,
        Ok(_) | Err(_) => {
            slot.health.on_success();
            slot.failing_since_ms = None;
            slot.evictions = 0;
            false
        }
    }
}

proptest::proptest! {
    #[test]
    fn record_matches_the_node_it_came_from(
        steps in proptest::collection::vec((0usize..5, 0u64..5_000, proptest::bool::ANY), 0..40),
        failures_to_eject in 0u32..4,
        timeouts_to_eject in 0u32..4,
        with_timeouts in proptest::bool::ANY,
    ) {
        // With timeouts off, every outcome is recorded as before; with them on, every other
        // outcome is, as long as no timeout comes between.
        let timeouts_to_eject = if with_timeouts { 0 } else { timeouts_to_eject };
        let policy = HealthPolicy {
            failures_to_eject,
            ejection_base_ms: 100,
            ejection_max_ms: 1_000,
            timeouts_to_eject,
        };
        let kinds = if with_timeouts {
            &["connect", "reset", "timeout", "status", "ok"][..]
        } else {
            &["connect", "reset", "status", "ok", "ok"][..]
        };
        let (mut slot, mut reference) = (Slot::default(), Slot::default());
        let mut now = 0u64;
        for (kind, advance_ms, evict) in steps {
            now += advance_ms;
            let result = if kinds[kind] == "ok" { Ok(()) } else { Err(upstream(kinds[kind])) };
            let ejected = slot.record(AttemptOutcome::of(result.as_ref().map(|_| ())), now, &policy);
            let expected = record_as_the_node_did(&mut reference, &result, now, &policy);
            proptest::prop_assert_eq!(ejected, expected);
            if evict {
                slot.on_evicted(now);
                reference.evictions = reference.evictions.saturating_add(1);
                reference.failing_since_ms = Some(now);
            }
            proptest::prop_assert_eq!(slot, reference);
        }
    }

    #[test]
    fn timeouts_eject_after_the_bound_and_never_evict(
        steps in proptest::collection::vec((0usize..5, 0u64..500), 0..60),
        timeouts_to_eject in 0u32..5,
    ) {
        let policy = HealthPolicy {
            failures_to_eject: 1,
            ejection_base_ms: 100,
            ejection_max_ms: 1_000,
            timeouts_to_eject,
        };
        let mut slot = Slot::default();
        // The model: timeouts since the last answer or ejection, outside ejections.
        let mut counted = 0u32;
        let mut now = 0u64;
        for (kind, advance_ms) in steps {
            now += advance_ms;
            let was_ejected = slot.health.is_ejected(now);
            let outcome = [
                AttemptOutcome::TimedOut,
                AttemptOutcome::TimedOut,
                AttemptOutcome::Answered,
                AttemptOutcome::Local,
                AttemptOutcome::NotDialed,
            ][kind];
            let before = slot;
            let ejected = slot.record(outcome, now, &policy);
            proptest::prop_assert_eq!(slot.failing_since_ms, None, "timeouts never evict");
            match outcome {
                AttemptOutcome::TimedOut if timeouts_to_eject > 0 && !was_ejected => {
                    counted += 1;
                    proptest::prop_assert_eq!(ejected, counted == timeouts_to_eject);
                    if ejected {
                        counted = 0;
                        proptest::prop_assert!(slot.health.is_ejected(now));
                    }
                }
                AttemptOutcome::Answered => {
                    counted = 0;
                    proptest::prop_assert_eq!(slot, Slot::default());
                }
                _ => {
                    proptest::prop_assert!(!ejected);
                    proptest::prop_assert_eq!(slot, before);
                }
            }
            proptest::prop_assert_eq!(slot.health.consecutive_timeouts, counted);
        }
    }

    #[test]
    fn pick_never_picks_a_full_or_tried_instance(
        cands in proptest::collection::vec(
            (0u32..4, proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY),
            0..8,
        ),
        seed in proptest::num::u64::ANY,
    ) {
        let cands: Vec<Candidate> = cands
            .into_iter()
            .map(|(in_flight, ejected, tried, full)| Candidate { in_flight, ejected, tried, full })
            .collect();
        let mut rng = SmallRng::seed_from_u64(seed);
        let open = |c: &Candidate| !c.tried && !c.full;
        match pick(&cands, &mut rng) {
            Some(i) => {
                proptest::prop_assert!(open(&cands[i]));
                let healthy = cands.iter().any(|c| open(c) && !c.ejected);
                proptest::prop_assert!(!healthy || !cands[i].ejected);
            }
            None => proptest::prop_assert!(!cands.iter().any(open)),
        }
    }

    #[test]
    fn pick_chooses_as_the_pool_of_indices_does(
        cands in proptest::collection::vec(
            (0u32..4, proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY),
            0..12,
        ),
        seed in proptest::num::u64::ANY,
    ) {
        let cands: Vec<Candidate> = cands
            .into_iter()
            .map(|(in_flight, ejected, tried, full)| Candidate { in_flight, ejected, tried, full })
            .collect();
        // The same draws from the same generator choose the same instance.
        let picked = pick(&cands, &mut SmallRng::seed_from_u64(seed));
        proptest::prop_assert_eq!(picked, pick_by_pool(&cands, &mut SmallRng::seed_from_u64(seed)));
    }

    #[test]
    fn the_eviction_wait_never_shrinks_and_stays_bounded(
        after_ms in 0u64..1_000_000,
        after_max_ms in 0u64..100_000_000,
        evictions in 0u32..64,
    ) {
        let policy = EvictionPolicy { after_ms, after_max_ms };
        let wait = policy.wait_ms(evictions);
        proptest::prop_assert!(wait <= after_max_ms);
        proptest::prop_assert!(wait <= policy.wait_ms(evictions + 1));
        proptest::prop_assert!(wait >= after_ms.min(after_max_ms));
    }
}

/// [`pick`] as a vector of the pool's indices states it: the untried candidates with room,
/// the healthy ones among them if any; one of them if one, else the less loaded of two drawn.
fn pick_by_pool(candidates: &[Candidate], rng: &mut impl rand::Rng) -> Option<usize> {
    let untried: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].tried && !candidates[i].full)
        .collect();
    let healthy: Vec<usize> = untried
        .iter()
        .copied()
        .filter(|&i| !candidates[i].ejected)
        .collect();
    let pool = if healthy.is_empty() { untried } else { healthy };
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (pool[a], pool[b]);
            Some(if candidates[b].in_flight < candidates[a].in_flight {
                b
            } else {
                a
            })
        }
    }
}
