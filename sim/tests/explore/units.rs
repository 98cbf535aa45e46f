//! Unit tests of the simulation's own machinery (hostile records, the progress line, the
//! reference model's order, the broker's wire encoding), kept in this binary rather than in
//! the library: a library with tests is compiled a second time, in release, for its test
//! harness (about 30 s of CI's simulation stage).

mod hostile {
    use switchyard::bus::MemoryBus;
    use switchyard_core::InstanceKey;
    use switchyard_core::event::{Event, EventBounds};
    use switchyard_sim::hostile::*;

    fn setting() -> Setting {
        Setting {
            now_ms: 1_800_000_010_000,
            bounds: EventBounds {
                clock_drift_max_ms: 60_000,
                lease_max_ms: 3_600_000,
            },
            horizon_ms: 60_000,
            keys: vec![
                InstanceKey::new("sample", "svc-1"),
                InstanceKey::new("ghost", "g-0"),
            ],
            removable: vec![InstanceKey::new("ghost", "g-0")],
            nodes: vec!["gw-1".into(), "gw-2".into()],
            addrs: vec!["http://svc-1:7000".into()],
        }
    }

    /// Every record is what its kind says, for a reader at any moment until the horizon: the
    /// quarantined kinds fail to decode, disagree with their key or are inadmissible; the
    /// admissible kind passes every check.
    #[test]
    fn each_record_is_what_its_kind_says_until_the_horizon() {
        let s = setting();
        for seed in 0..200 {
            let records = burst(seed, &s);
            assert_eq!(records.len(), Kind::ALL.len());
            for r in records {
                for reader_ms in [s.now_ms - 800, s.now_ms + s.horizon_ms] {
                    let decoded = Event::decode(&r.payload);
                    let applied = decoded.as_ref().is_ok_and(|e| {
                        e.bus_key() == r.key && e.admissible(reader_ms, &s.bounds).is_ok()
                    });
                    assert_eq!(
                        applied,
                        r.kind.admissible(),
                        "seed {seed}: {}",
                        r.describe()
                    );
                    match (&r.event, decoded) {
                        (Some(event), Ok(decoded)) => assert_eq!(*event, decoded),
                        (None, Err(_)) => {}
                        (event, decoded) => panic!("seed {seed}: {event:?} vs {decoded:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn bursts_target_real_and_fresh_keys_and_forge_origins() {
        let s = setting();
        let records: Vec<Hostile> = (0..50).flat_map(|seed| burst(seed, &s)).collect();
        let events: Vec<&Event> = records.iter().filter_map(|r| r.event.as_ref()).collect();
        assert!(events.iter().any(|e| s.keys.contains(&e.key)));
        assert!(events.iter().any(|e| !s.keys.contains(&e.key)));
        assert!(events.iter().any(|e| e.stamp.node_id == "gw-1"));
        assert!(events.iter().any(|e| e.stamp.node_id == STRANGER));
        assert!(
            events
                .iter()
                .any(|e| (e.stamp.physical_ms, e.stamp.logical) == (u64::MAX, u32::MAX))
        );
        assert!(events.iter().any(|e| e.lease_ms == u64::MAX));
    }

    #[test]
    fn a_record_is_written_into_the_log() {
        let log = MemoryBus::new();
        let r = &burst(1, &setting())[0];
        assert_eq!(inject(&log, r), Some(0));
        assert_eq!(inject(&log, r), Some(1));
        assert_eq!(log.snapshot()[1].payload, r.payload);
    }
}

mod progress {
    use std::time::Duration;
    use switchyard_sim::progress::*;
    use switchyard_sim::scenario::Outcome;

    #[test]
    fn progress_is_drawn_only_at_a_terminal_outside_ci() {
        assert!(wanted(true, None));
        assert!(!wanted(false, None));
        assert!(!wanted(true, Some(std::ffi::OsStr::new("true"))));
        assert!(!wanted(true, Some(std::ffi::OsStr::new(""))));
    }

    #[test]
    fn the_line_counts_seeds_violations_and_speed() {
        let mut counts = Counts {
            total: 10,
            ..Counts::default()
        };
        counts.add(&Outcome {
            simulated_ms: 60_000,
            ..Outcome::default()
        });
        counts.add(&Outcome {
            simulated_ms: 40_000,
            violations: vec!["lost".into()],
            ..Outcome::default()
        });
        assert_eq!(
            counts.line(Duration::from_millis(500)),
            "2/10 seeds, 1 with violations, 200 simulated s per wall s, 0.5 s"
        );
        assert_eq!(
            counts.line(Duration::ZERO),
            "2/10 seeds, 1 with violations, - simulated s per wall s, 0.0 s"
        );
    }
}

mod reference {
    use std::cmp::Ordering;
    use std::collections::BTreeMap;
    use switchyard_core::Stamp;
    use switchyard_core::registry::{Entry, EntryState, Removal};
    use switchyard_sim::scenario::reference::newer;

    fn alive(ms: u64, node: &str) -> Entry {
        Entry {
            stamp: Stamp::new(ms, 0, node),
            state: EntryState::Alive {
                addr: "a".into(),
                metadata: BTreeMap::new(),
                lease_ms: 1,
            },
        }
    }

    fn removed(ms: u64, node: &str) -> Entry {
        Entry {
            stamp: Stamp::new(ms, 0, node),
            state: EntryState::Removed(Removal::Deregistered),
        }
    }

    #[test]
    fn the_order_is_stamp_then_removal() {
        assert_eq!(newer(&alive(2, "a"), &removed(1, "z")), Ordering::Greater);
        assert_eq!(newer(&alive(1, "b"), &alive(1, "a")), Ordering::Greater);
        assert_eq!(newer(&removed(1, "a"), &alive(1, "a")), Ordering::Greater);
        assert_eq!(newer(&alive(1, "a"), &alive(1, "a")), Ordering::Equal);
    }
}

mod broker {
    use switchyard_sim::broker::{hex, unhex};

    #[test]
    fn hex_round_trips_every_byte_and_refuses_what_is_not_hex() {
        let all: Vec<u8> = (0..=255).collect();
        let encoded = hex(&all);
        assert_eq!(&encoded[..8], "00010203");
        assert_eq!(&encoded[encoded.len() - 4..], "feff");
        assert_eq!(unhex(&encoded), Some(all));
        assert_eq!(unhex("ABcd"), Some(vec![0xab, 0xcd]));
        assert_eq!(unhex(""), Some(vec![]));
        for bad in ["a", "abc", "0g", "+f", " 1", "é0"] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
    }
}
