//! The `registry` target: what arrives from the bus, and replicas converging.
//!
//! The first input byte picks the mode. Even: the rest is a raw bus record for
//! `Event::decode`, which must never panic, and an event it accepts must be valid and survive
//! encoding and decoding unchanged. Odd: the rest is a sequence of valid events over a small
//! key space with few stamps (so that the same key and even the same stamp recur), applied to
//! replicas in different orders, with duplicates and through merges; every replica must end
//! with the same entries and digest, and that must be, per key, the greatest entry sent.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use switchyard_core::event::{Event, EventKind};
use switchyard_core::metadata::Metadata;
use switchyard_core::registry::{Applied, Entry};
use switchyard_core::{InstanceKey, Registry, Stamp};

const SERVICES: &[&str] = &["a", "b"];
const INSTANCES: &[&str] = &["1", "2"];
const NODES: &[&str] = &["n1", "n2", "n3"];
const ADDRS: &[&str] = &[
    "http://127.0.0.1:7001",
    "http://127.0.0.1:7002",
    "http://[::1]:7001",
];
const LEASES_MS: &[u64] = &[1, 1_000, 30_000];

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

/// The fuzz entry point.
pub fn check(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check_decode(rest);
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(rest)) {
        check_convergence(&input);
    }
}

/// What `data` decodes to, for triage.
pub fn describe(data: &[u8]) -> String {
    let Some((mode, rest)) = data.split_first() else {
        return "empty input".into();
    };
    if mode & 1 == 0 {
        use prost::Message;
        format!(
            "raw record => {:#?}\n=> {:#?}",
            switchyard_proto::registry::RegistryEvent::decode(rest),
            Event::decode(rest)
        )
    } else {
        match Input::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(input) => {
                let events: Vec<Event> = input.events.iter().map(EventIn::build).collect();
                format!("{input:#?}\n=> {events:#?}")
            }
            Err(e) => format!("not an input: {e}"),
        }
    }
}

/// The naming rule for services and instances, written out apart from `names`.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A bus record: decoding never panics; an accepted event is valid and round-trips.
pub fn check_decode(bytes: &[u8]) {
    let Ok(event) = Event::decode(bytes) else {
        return;
    };
    assert!(
        is_name(&event.key.service),
        "service {:?}",
        event.key.service
    );
    assert!(
        is_name(&event.key.instance_id),
        "instance id {:?}",
        event.key.instance_id
    );
    assert!(!event.stamp.node_id.is_empty(), "stamp without a node id");
    match event.kind {
        EventKind::Register | EventKind::Renew => {
            assert!(event.lease_ms > 0, "live event with a zero lease");
            assert!(event.addr.starts_with("http://"), "addr {:?}", event.addr);
        }
        EventKind::Deregister | EventKind::Evict => {
            assert!(
                event.addr.is_empty() && event.metadata.is_empty() && event.lease_ms == 0,
                "tombstone carries instance data: {event:?}"
            );
        }
    }
    let again = Event::decode(&event.encode()).expect("a re-encoded event must decode");
    assert_eq!(again, event, "event changed through encode and decode");

    let mut registry = Registry::new();
    assert_eq!(registry.apply_event(&event), Applied::Inserted);
    let digest = registry.digest();
    assert_eq!(registry.apply_event(&event), Applied::Unchanged);
    assert_eq!(registry.digest(), digest, "re-applying changed the digest");
    assert_eq!(registry.get(&event.key), Some(&event.entry()));
}

/// One event over the small key and stamp space.
#[derive(Debug, Arbitrary)]
struct EventIn {
    kind: u8,
    service: u8,
    instance: u8,
    addr: u8,
    metadata: u8,
    lease: u8,
    physical_ms: u8,
    logical: u8,
    node: u8,
}

/// A sequence of events and the order, duplicates and merge split the replicas see.
#[derive(Debug, Arbitrary)]
pub struct Input {
    events: Vec<EventIn>,
    /// Per delivery: how many extra copies, and the priority each copy sorts by.
    schedule: Vec<u8>,
}

impl EventIn {
    fn build(&self) -> Event {
        let kind = match self.kind % 4 {
            0 => EventKind::Register,
            1 => EventKind::Renew,
            2 => EventKind::Deregister,
            _ => EventKind::Evict,
        };
        let alive = matches!(kind, EventKind::Register | EventKind::Renew);
        let metadata: Metadata = match self.metadata % 4 {
            0 => Metadata::new(),
            1 => [("zone".into(), "a".into())].into(),
            2 => [("zone".into(), "b".into())].into(),
            _ => [("zone".into(), "a".into()), ("x".into(), String::new())].into(),
        };
        let node = pick(NODES, self.node);
        Event {
            kind,
            key: InstanceKey::new(pick(SERVICES, self.service), pick(INSTANCES, self.instance)),
            addr: if alive {
                pick(ADDRS, self.addr).into()
            } else {
                String::new()
            },
            metadata: if alive { metadata } else { Metadata::new() },
            lease_ms: if alive {
                pick(LEASES_MS, self.lease)
            } else {
                0
            },
            stamp: Stamp::new(
                u64::from(self.physical_ms % 4),
                u32::from(self.logical % 3),
                node,
            ),
            origin_node: node.into(),
        }
    }
}

fn replica<'a>(events: impl IntoIterator<Item = &'a Event>) -> Registry {
    let mut r = Registry::new();
    for e in events {
        r.apply_event(e);
    }
    r
}

fn entries(r: &Registry) -> Vec<(InstanceKey, Entry)> {
    r.entries().map(|(k, e)| (k.clone(), e.clone())).collect()
}

/// Replicas that saw the same events, in any order, with duplicates or through merges, agree.
pub fn check_convergence(input: &Input) {
    // Every event goes through the codec first, as it would through the bus.
    let events: Vec<Event> = input
        .events
        .iter()
        .map(|e| {
            let event = e.build();
            let decoded = Event::decode(&event.encode()).expect("a valid event must decode");
            assert_eq!(decoded, event, "a valid event changed through the codec");
            decoded
        })
        .collect();
    let mut schedule = input.schedule.iter().copied().cycle();
    let mut next = || {
        if input.schedule.is_empty() {
            0
        } else {
            schedule.next().unwrap_or(0)
        }
    };

    // The expected state: per key, the greatest entry sent (decision 0005: stamp, then content).
    let mut expected: BTreeMap<InstanceKey, Entry> = BTreeMap::new();
    for e in &events {
        let entry = e.entry();
        let slot = expected
            .entry(e.key.clone())
            .or_insert_with(|| entry.clone());
        if entry > *slot {
            *slot = entry;
        }
    }
    let expected: Vec<(InstanceKey, Entry)> = expected.into_iter().collect();

    let forward = replica(&events);
    let backward = replica(events.iter().rev());
    // An interleaving with redelivery: each event 1 to 3 times, copies sorted by a priority.
    let mut deliveries: Vec<(u8, usize)> = Vec::new();
    for i in 0..events.len() {
        for _ in 0..=(next() % 3) {
            deliveries.push((next(), i));
        }
    }
    deliveries.sort();
    let shuffled = replica(deliveries.iter().map(|(_, i)| &events[*i]));
    // Two partial replicas, each event in one or both, merged both ways.
    let (mut left, mut right) = (Registry::new(), Registry::new());
    for e in &events {
        let side = next() % 3;
        if side != 1 {
            left.apply_event(e);
        }
        if side != 0 {
            right.apply_event(e);
        }
    }
    let mut left_right = left.clone();
    left_right.merge(&right);
    let mut right_left = right.clone();
    right_left.merge(&left);
    let mut twice = forward.clone();
    twice.merge(&forward);

    assert_eq!(
        entries(&forward),
        expected,
        "forward order kept the wrong entries"
    );
    let digest = forward.digest();
    for (name, r) in [
        ("backward", &backward),
        ("shuffled with duplicates", &shuffled),
        ("left.merge(right)", &left_right),
        ("right.merge(left)", &right_left),
        ("self-merge", &twice),
    ] {
        assert_eq!(r, &forward, "{name} replica differs from the forward one");
        assert_eq!(r.digest(), digest, "{name} replica has another digest");
    }
}
