//! Unit tests of the simulation's own machinery (hostile records, the progress line, the
//! reference model's order, the broker's wire encoding, the balancer checks' record of links,
//! the scraper's reading of gauges), kept in this binary rather than in
//! the library: a library with tests is compiled a second time, in release, for its test
//! harness (about 30 s of CI's simulation stage).

mod hostile {
    use switchyard::bus::MemoryBus;
    use switchyard_core::InstanceKey;
    use switchyard_core::event::{EVENT_BYTES_MAX, Event, EventBounds, EventError, Inadmissible};
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
                        (Some(_), Err(EventError::TooLarge(n)))
                            if r.kind == Kind::Oversized && n == r.payload.len() => {}
                        (event, decoded) => panic!("seed {seed}: {event:?} vs {decoded:?}"),
                    }
                }
            }
        }
    }

    /// The reason the simulation expects for each record is the one the gateway's checks give,
    /// in their order (decode, key, admissibility), for a reader at any moment until the horizon.
    #[test]
    fn the_expected_reason_is_the_first_check_a_record_fails() {
        let s = setting();
        let short_leases = Setting {
            bounds: EventBounds {
                lease_max_ms: 6_000,
                ..s.bounds
            },
            ..setting()
        };
        let mut reasons = std::collections::BTreeSet::new();
        for s in [s, short_leases] {
            for seed in 0..200 {
                for r in burst(seed, &s) {
                    let reader_ms = s.now_ms + s.horizon_ms;
                    let got = match Event::decode(&r.payload) {
                        Err(_) => Some("undecodable"),
                        Ok(e) if e.bus_key() != r.key => Some("key_mismatch"),
                        Ok(e) => match e.admissible(reader_ms, &s.bounds) {
                            Err(Inadmissible::LeaseOutOfBounds { .. }) => {
                                Some("lease_out_of_bounds")
                            }
                            Err(Inadmissible::StampAhead(_)) => Some("stamp_ahead"),
                            Ok(()) => None,
                        },
                    };
                    assert_eq!(
                        quarantine_reason(&r, &s.bounds),
                        got,
                        "seed {seed}: {}",
                        r.describe()
                    );
                    reasons.insert(got);
                }
            }
        }
        assert_eq!(reasons.len(), 5, "every reason and admissible: {reasons:?}");
    }

    /// The records around the size bound are exactly at it, or beyond it by 1 to 1,024 bytes.
    #[test]
    fn records_at_the_size_bound_are_sized_to_the_byte() {
        let s = setting();
        let mut over = std::collections::BTreeSet::new();
        for seed in 0..200 {
            for r in burst(seed, &s) {
                match r.kind {
                    Kind::AtBound => assert_eq!(r.payload.len(), EVENT_BYTES_MAX),
                    Kind::Oversized => {
                        assert!(
                            (EVENT_BYTES_MAX + 1..=EVENT_BYTES_MAX + 1_024)
                                .contains(&r.payload.len()),
                            "{}",
                            r.payload.len()
                        );
                        over.insert(r.payload.len() - EVENT_BYTES_MAX);
                    }
                    _ => {}
                }
            }
        }
        assert!(over.contains(&1) || over.len() > 100, "{over:?}");
    }

    /// Padding reaches every length it is asked for, across the widths of the length's varint,
    /// and the padded bytes decode to the same event.
    #[test]
    fn padding_is_exact_and_skipped_by_the_decoder() {
        let r = burst(3, &setting())
            .into_iter()
            .find(|r| r.kind == Kind::TopLogical)
            .expect("a burst has one of each kind");
        let event = r.event.expect("an admissible record carries its event");
        let encoded = event.encode();
        let base = encoded.len() + 3;
        for len in (base..base + 300).chain([16_500, 16_386, 16_387, 16_388, EVENT_BYTES_MAX]) {
            let bytes = padded(&encoded, len);
            assert_eq!(bytes.len(), len);
            assert_eq!(Event::decode(&bytes).as_ref(), Ok(&event), "{len}");
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
    use switchyard_core::Stamp;
    use switchyard_core::registry::{Entry, EntryState, Removal};
    use switchyard_sim::scenario::reference::newer;

    fn alive(ms: u64, node: &str) -> Entry {
        Entry {
            stamp: Stamp::new(ms, 0, node),
            state: EntryState::Alive {
                addr: "a".into(),
                metadata: Default::default(),
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
    use bytes::{Bytes, BytesMut};
    use switchyard::bus::Record;
    use switchyard_sim::broker::wire;

    fn record(offset: u64, key: &str, payload: &[u8], delete: bool) -> Record {
        Record {
            offset,
            key: key.into(),
            payload: Bytes::copy_from_slice(payload),
            delete,
        }
    }

    fn framed(records: &[Record]) -> Bytes {
        let mut out = BytesMut::new();
        for r in records {
            wire::put(&mut out, r).expect("framed");
        }
        out.freeze()
    }

    #[test]
    fn records_round_trip_the_wire_with_every_byte_and_an_empty_payload() {
        let all: Vec<u8> = (0..=255).collect();
        let records = vec![
            record(0, "sample/svc-1", &all, false),
            record(7, "", b"", true),
            record(u64::MAX, "caf\u{e9}/\u{1F600}", b"\x00\xff", false),
        ];
        let body = framed(&records);
        assert_eq!(
            body.len(),
            records.iter().map(wire::framed_len).sum::<usize>()
        );
        assert_eq!(wire::records(body.clone(), 3), Ok(records.clone()));
        assert_eq!(wire::records(Bytes::new(), 0), Ok(vec![]));
        // More records than asked for is an error, not a truncation.
        assert_eq!(
            wire::records(body, 2),
            Err("more than 2 records".to_owned())
        );
    }

    #[test]
    fn a_bad_frame_is_refused_whole_and_named() {
        let good = framed(&[record(1, "k", b"payload", false)]);
        // Every cut of a good frame is refused.
        for cut in 1..good.len() {
            let err = wire::records(good.slice(..cut), 8).expect_err("a cut frame");
            assert!(err.contains("record 0: frame cut short"), "{cut}: {err}");
        }
        // A second frame cut short names the second record, and the first is not returned.
        let mut two = BytesMut::from(&good[..]);
        two.extend_from_slice(&good[..good.len() - 1]);
        assert_eq!(
            wire::records(two.freeze(), 8),
            Err("record 1: frame cut short".to_owned())
        );
        // A length past the end, a flag other than 0 or 1, a key that is not UTF-8.
        let mut long = BytesMut::from(&good[..]);
        long[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(wire::records(long.freeze(), 8).is_err());
        let mut flag = BytesMut::from(&good[..]);
        flag[8] = 2;
        assert_eq!(
            wire::records(flag.freeze(), 8),
            Err("record 0: delete flag 2".to_owned())
        );
        let mut key = BytesMut::from(&good[..]);
        key[13] = 0xff;
        assert_eq!(
            wire::records(key.freeze(), 8),
            Err("record 0: the key is not UTF-8".to_owned())
        );
    }
}

mod subscriptions {
    use switchyard_core::event::{Event, EventKind};
    use switchyard_core::{InstanceKey, Stamp};
    use switchyard_sim::scenario::subscriptions::{Change, Feed, Session, Watched, check};
    use tokio::sync::broadcast;

    fn event(id: &str, ms: u64) -> Event {
        Event {
            kind: EventKind::Register,
            key: InstanceKey::new("ghost", id),
            addr: "http://nowhere:1".into(),
            metadata: Default::default(),
            lease_ms: 6_000,
            stamp: Stamp::new(ms, 0, "gw-1"),
            origin_node: "gw-1".into(),
        }
    }

    fn change(id: &str, ms: u64) -> Change {
        Change {
            service: "ghost".into(),
            instance_id: id.into(),
            stamp: (ms, 0, "gw-1".into()),
        }
    }

    /// The incarnation's feed: `g-1`@100 applied at 200 ms and again at 1,200 ms (a
    /// duplicate record read after a delete marker collected the first), `g-2`@150 between,
    /// `g-3`@1,100 after.
    fn feed() -> Feed {
        let (tx, rx) = broadcast::channel(16);
        let mut feed = Feed::new("gw-1", 0, rx);
        for (e, at) in [
            (event("g-1", 100), 200),
            (event("g-2", 150), 300),
            (event("g-1", 100), 1_200),
            (event("g-3", 1_100), 1_250),
        ] {
            tx.send(e).expect("the feed's receiver is open");
            feed.drain(at);
        }
        feed
    }

    fn judge(opened_ms: u64, seen: Vec<Change>) -> Vec<String> {
        let watched = Watched {
            sessions: vec![Session {
                gateway: "gw-1".into(),
                opened_ms,
                seen,
                end: None,
            }],
            seen_total: 0,
        };
        let mut violations = Vec::new();
        check(&watched, &[feed()], 1_400, &mut violations);
        violations
    }

    /// Nightly seed 3764: a session opened after the first application of a change that the
    /// gateway applied twice starts at the second; matching the first reported a gap.
    #[test]
    fn a_change_applied_twice_is_matched_where_the_session_could_see_it() {
        let seen = vec![change("g-1", 100), change("g-3", 1_100)];
        assert_eq!(judge(1_000, seen), Vec::<String>::new());
    }

    #[test]
    fn a_skipped_change_is_a_gap_and_a_change_from_before_the_session_is_not_its() {
        let skipped = judge(100, vec![change("g-1", 100), change("g-1", 100)]);
        assert!(skipped[0].contains("silent gap"), "{skipped:?}");
        let before = judge(350, vec![change("g-2", 150)]);
        assert!(
            before[0].contains("never applied after the session opened"),
            "{before:?}"
        );
        let missed = judge(1_000, vec![change("g-1", 100)]);
        assert!(missed[0].contains("never received ghost/g-3"), "{missed:?}");
    }
}

mod links {
    use switchyard_sim::faults::Action;
    use switchyard_sim::scenario::Links;

    fn s(x: &str) -> String {
        x.to_owned()
    }

    #[test]
    fn a_link_is_quiet_only_outside_its_disturbances_either_way_round() {
        let mut links = Links::default();
        links.apply(1_000, &Action::Partition(s("svc-1"), s("gw-1")));
        links.apply(2_000, &Action::Repair(s("gw-1"), s("svc-1")));
        links.apply(5_000, &Action::Crash(s("svc-2")));
        links.apply(9_000, &Action::Hold(s("gw-2"), s("svc-1")));
        assert!(!links.quiet("gw-1", "svc-1", 0, 1_000));
        assert!(!links.quiet("gw-1", "svc-1", 1_500, 1_600));
        assert!(links.quiet("gw-1", "svc-1", 2_001, 8_999));
        // Another gateway's link to the same instance is another link.
        assert!(links.quiet("gw-3", "svc-1", 0, 8_999));
        // A host still down, or a link still held, is disturbed from then on.
        assert!(!links.quiet("gw-1", "svc-2", 4_000, 60_000));
        assert!(links.quiet("gw-1", "svc-2", 0, 4_999));
        assert!(!links.quiet("gw-2", "svc-1", 9_000, 9_001));
        links.heal(15_000);
        assert!(links.quiet("gw-1", "svc-2", 15_001, 60_000));
        assert!(!links.quiet("gw-2", "svc-1", 14_000, 20_000));
    }

    #[test]
    fn a_stall_is_not_a_network_disturbance_and_cutoffs_need_every_link_cut() {
        let mut links = Links::default();
        links.apply(1_000, &Action::Stall(s("svc-1")));
        links.apply(4_000, &Action::Unstall(s("svc-1")));
        assert!(links.quiet("gw-1", "svc-1", 0, 10_000));
        assert!(links.stalled("svc-1", 3_999, 5_000));
        assert!(!links.stalled("svc-1", 4_001, 5_000));
        assert!(!links.stalled("svc-2", 0, 5_000));

        let instances = [s("svc-1"), s("svc-2")];
        links.apply(10_000, &Action::Partition(s("gw-1"), s("svc-1")));
        links.apply(12_000, &Action::Partition(s("svc-2"), s("gw-1")));
        links.apply(20_000, &Action::Repair(s("gw-1"), s("svc-2")));
        links.apply(30_000, &Action::Partition(s("gw-1"), s("svc-2")));
        // Both cut from 12 s to 20 s, and from 30 s on (until the heal at 45 s).
        assert_eq!(
            links.cut_off("gw-1", &instances, 1_000),
            vec![(12_000, 20_000), (30_000, u64::MAX)]
        );
        links.heal(45_000);
        assert_eq!(
            links.cut_off("gw-1", &instances, 8_000),
            vec![(12_000, 20_000), (30_000, 45_000)]
        );
        assert_eq!(
            links.cut_off("gw-1", &instances, 9_000),
            vec![(30_000, 45_000)]
        );
        assert!(links.cut_off("gw-2", &instances, 0).is_empty());
    }
}

mod scrapes {
    use switchyard_sim::scenario::scrapes::{ScrapeLog, gauge, judge};

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
