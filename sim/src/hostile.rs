//! Hostile bus records: what a producer that can write to the topic, but is not a gateway, may
//! put there. The fault kind `hostile_records` writes bursts of them straight into the broker's
//! log (through [`Bus::publish`] on the log itself, not through a gateway), encoded with the
//! gateways' own codec ([`Event::encode`]), so that they look like the gateways' records in
//! every way the attack needs.
//!
//! A burst holds one record of each [`Kind`]. All but one must be quarantined by every gateway
//! that reads them: a stamp beyond the drift bound (and still beyond it at the end of the run),
//! a stamp at the top of the range, a lease beyond the lease bound, a payload that does not
//! decode, a payload whose key disagrees with the record's key. The last kind is admissible
//! and must be applied like any record: a removal of an instance the workload owns, stamped
//! now with the largest logical counter, so that a gateway that observes it must borrow the
//! next millisecond rather than wrap its clock. Two more kinds aim at the size bound
//! ([`EVENT_BYTES_MAX`]): a valid event padded with an unknown field to exactly the bound, which
//! must be applied, and one padded beyond it, which must be quarantined though every field of it
//! is valid. Targets are the run's real instance keys as well as fresh ones, and the forged
//! origins are the run's gateway ids as well as a stranger.

use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use prost::encoding::{encode_varint, encoded_len_varint};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use switchyard::bus::{Bus, MemoryBus};
use switchyard_core::event::{EVENT_BYTES_MAX, Event, EventBounds, EventKind};
use switchyard_core::{InstanceKey, Stamp};

/// The origin no gateway has.
pub const STRANGER: &str = "mallory";
/// A day in ms: how far beyond the bound a far-future stamp may go at most (beyond the least).
const DAY_MS: u64 = 24 * 3_600_000;

/// What a burst is drawn against.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The simulated wall clock when the burst is written, Unix ms, without any gateway's skew.
    pub now_ms: u64,
    /// The gateways' bounds on bus records (`registry.clock_drift_max_ms`, `lease_max_ms`).
    pub bounds: EventBounds,
    /// How much simulated time is left in the run at most, plus the largest clock skew: a
    /// stamp beyond the bound by more than this stays beyond it for every reader until the end.
    pub horizon_ms: u64,
    /// The run's instance keys (the sample instances and the workload's ghosts).
    pub keys: Vec<InstanceKey>,
    /// Keys whose admissible removal the run can absorb: instances the workload owns.
    pub removable: Vec<InstanceKey>,
    /// The run's gateway ids, to forge as origins.
    pub nodes: Vec<String>,
    /// Addresses of the run's instances, to point forged entries at.
    pub addrs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Stamped beyond the drift bound (by up to a day more than the run lasts).
    FarFuture,
    /// Stamped `u64::MAX` ms, logical 0 or `u32::MAX`.
    TopOfRange,
    /// Stamped now, with a lease beyond `lease_max_ms` (up to `u64::MAX`).
    HugeLease,
    /// Does not decode, or decodes to something invalid.
    Undecodable,
    /// An admissible event for a fresh instance, written under a real instance's key.
    KeyMismatch,
    /// Admissible: a removal stamped now with logical `u32::MAX`.
    TopLogical,
    /// Admissible: a registration of a `hostile` instance padded to exactly
    /// [`EVENT_BYTES_MAX`] bytes.
    AtBound,
    /// A valid, admissible registration padded beyond [`EVENT_BYTES_MAX`] (by 1 to 1,024 bytes).
    Oversized,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::FarFuture,
        Kind::TopOfRange,
        Kind::HugeLease,
        Kind::Undecodable,
        Kind::KeyMismatch,
        Kind::TopLogical,
        Kind::AtBound,
        Kind::Oversized,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::FarFuture => "far_future",
            Kind::TopOfRange => "top_of_range",
            Kind::HugeLease => "huge_lease",
            Kind::Undecodable => "undecodable",
            Kind::KeyMismatch => "key_mismatch",
            Kind::TopLogical => "top_logical",
            Kind::AtBound => "at_bound",
            Kind::Oversized => "oversized",
        }
    }

    /// Whether a gateway must apply a record of this kind (the others it must quarantine).
    pub fn admissible(self) -> bool {
        matches!(self, Kind::TopLogical | Kind::AtBound)
    }
}

/// Why a gateway quarantines a record, as its metric `switchyard_bus_events_quarantined_total`
/// labels it, stated here apart from the gateway's code: the payload must decode (within the
/// size bound), then its key must be its event's, then a live instance's lease must be within
/// `1..=lease_max_ms`, then its stamp within the drift bound. `None`: it must be applied.
pub fn quarantine_reason(record: &Hostile, bounds: &EventBounds) -> Option<&'static str> {
    match record.kind {
        Kind::TopLogical | Kind::AtBound => None,
        Kind::Undecodable | Kind::Oversized => Some("undecodable"),
        Kind::KeyMismatch => Some("key_mismatch"),
        Kind::HugeLease => Some("lease_out_of_bounds"),
        Kind::FarFuture | Kind::TopOfRange => match &record.event {
            Some(e)
                if matches!(e.kind, EventKind::Register | EventKind::Renew)
                    && !(1..=bounds.lease_max_ms).contains(&e.lease_ms) =>
            {
                Some("lease_out_of_bounds")
            }
            _ => Some("stamp_ahead"),
        },
    }
}

/// One hostile record.
#[derive(Debug, Clone)]
pub struct Hostile {
    pub kind: Kind,
    /// The key it is written under.
    pub key: String,
    pub payload: Bytes,
    /// What the payload means, if it is a valid event (the same bytes encode it).
    pub event: Option<Event>,
}

impl Hostile {
    /// One line for the trace.
    pub fn describe(&self) -> String {
        let Some(e) = &self.event else {
            return format!(
                "{} under {} ({} bytes)",
                self.kind.name(),
                self.key,
                self.payload.len()
            );
        };
        let carrying = if e.bus_key() == self.key {
            String::new()
        } else {
            format!(" carrying {}", e.bus_key())
        };
        format!(
            "{} under {}{carrying}: {:?} stamp {}.{}@{} lease {}",
            self.kind.name(),
            self.key,
            e.kind,
            e.stamp.physical_ms,
            e.stamp.logical,
            e.stamp.node_id,
            e.lease_ms
        )
    }
}

/// The records of the burst drawn from `seed`: one of each [`Kind`], in that order.
pub fn burst(seed: u64, setting: &Setting) -> Vec<Hostile> {
    let mut rng = SmallRng::seed_from_u64(seed);
    Kind::ALL
        .into_iter()
        .map(|kind| record(kind, &mut rng, setting))
        .collect()
}

fn record(kind: Kind, rng: &mut SmallRng, s: &Setting) -> Hostile {
    let now = s.now_ms;
    let origin = pick_origin(rng, s);
    let key = pick_key(rng, s);
    match kind {
        Kind::FarFuture => {
            let beyond = s.bounds.clock_drift_max_ms + s.horizon_ms + 1;
            let ms = now + beyond + rng.random_range(0..=DAY_MS);
            let stamp = Stamp::new(ms, rng.random(), origin.clone());
            encoded(kind, event(rng, s, key, stamp, origin), None)
        }
        Kind::TopOfRange => {
            let logical = *[0, u32::MAX].choose(rng).unwrap_or(&u32::MAX);
            let stamp = Stamp::new(u64::MAX, logical, origin.clone());
            encoded(kind, event(rng, s, key, stamp, origin), None)
        }
        Kind::HugeLease => {
            let max = s.bounds.lease_max_ms;
            let lease_ms = match rng.random_range(0..3) {
                0 => max + 1,
                1 => rng.random_range(max + 1..=u64::MAX),
                _ => u64::MAX,
            };
            let stamp = Stamp::new(now, rng.random_range(1..1_000), origin.clone());
            let ev = Event {
                lease_ms,
                ..alive(rng, s, key, stamp, origin)
            };
            encoded(kind, ev, None)
        }
        Kind::Undecodable => undecodable(rng, s, key, origin),
        Kind::KeyMismatch => {
            // Always under a real key: a fresh instance never has one.
            let under = s
                .keys
                .choose(rng)
                .map_or_else(|| "hostile/elsewhere".to_owned(), InstanceKey::bus_key);
            let fresh = fresh_key(rng, s);
            let stamp = Stamp::new(now, rng.random_range(1..1_000), origin.clone());
            encoded(kind, alive(rng, s, fresh, stamp, origin), Some(under))
        }
        Kind::TopLogical => {
            let key = s.removable.choose(rng).cloned().unwrap_or(key);
            let stamp = Stamp::new(now, u32::MAX, origin.clone());
            let ev = Event {
                kind: EventKind::Deregister,
                addr: String::new(),
                lease_ms: 0,
                ..alive(rng, s, key, stamp, origin)
            };
            encoded(kind, ev, None)
        }
        Kind::AtBound | Kind::Oversized => {
            let key = InstanceKey::new("hostile", format!("b-{}", rng.random_range(0..4)));
            let stamp = Stamp::new(now, rng.random_range(1..1_000), origin.clone());
            let ev = Event {
                lease_ms: s.bounds.lease_max_ms.min(10_000),
                ..alive(rng, s, key, stamp, origin)
            };
            let len = if kind == Kind::AtBound {
                EVENT_BYTES_MAX
            } else {
                EVENT_BYTES_MAX + rng.random_range(1..=1_024)
            };
            let mut hostile = encoded(kind, ev, None);
            hostile.payload = Bytes::from(padded(&hostile.payload, len));
            hostile
        }
    }
}

/// Field 1000 of a `RegistryEvent`, length-delimited: a field no version of the schema has,
/// which the decoder skips.
const PAD_TAG: [u8; 2] = [0xc2, 0x3e];
/// Field 1001, a varint of value 0: three bytes, for the lengths one padding field cannot make
/// (where the field's length would need one more byte of varint than the room leaves).
const PAD_SHIM: [u8; 3] = [0xc8, 0x3e, 0x00];

/// `encoded` with unknown fields appended, `len` bytes in all; `len` must leave room for a
/// field's tag and length (else the result is longer than `len`).
pub fn padded(encoded: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(encoded);
    let mut room = len.saturating_sub(encoded.len() + PAD_TAG.len());
    // The filler that fills the room exactly with its length's varint, if there is one.
    let fits = |room: usize| {
        (1..=5)
            .map(|varint| room.saturating_sub(varint))
            .find(|&n| encoded_len_varint(n as u64) + n == room)
    };
    let filler = match fits(room) {
        Some(n) => n,
        None => {
            out.extend_from_slice(&PAD_SHIM);
            room = room.saturating_sub(PAD_SHIM.len());
            fits(room).unwrap_or(0)
        }
    };
    out.extend_from_slice(&PAD_TAG);
    encode_varint(filler as u64, &mut out);
    out.resize(out.len() + filler, b'p');
    out
}

fn encoded(kind: Kind, event: Event, under: Option<String>) -> Hostile {
    Hostile {
        kind,
        key: under.unwrap_or_else(|| event.bus_key()),
        payload: Bytes::from(event.encode()),
        event: Some(event),
    }
}

/// A registration, or (one time in three) a removal, which would bar the instance if applied.
fn event(rng: &mut SmallRng, s: &Setting, key: InstanceKey, stamp: Stamp, origin: String) -> Event {
    let ev = alive(rng, s, key, stamp, origin);
    match rng.random_range(0..6) {
        0 => Event {
            kind: EventKind::Deregister,
            addr: String::new(),
            lease_ms: 0,
            ..ev
        },
        1 => Event {
            kind: EventKind::Evict,
            addr: String::new(),
            lease_ms: 0,
            ..ev
        },
        _ => ev,
    }
}

/// A live instance at one of the run's addresses, with an ordinary lease.
fn alive(rng: &mut SmallRng, s: &Setting, key: InstanceKey, stamp: Stamp, origin: String) -> Event {
    let addr = s
        .addrs
        .choose(rng)
        .cloned()
        .unwrap_or_else(|| "http://nowhere:1".to_owned());
    Event {
        kind: if rng.random_bool(0.5) {
            EventKind::Register
        } else {
            EventKind::Renew
        },
        key,
        addr,
        metadata: Default::default(),
        lease_ms: 10_000,
        stamp,
        origin_node: origin,
    }
}

/// A payload that is no valid event: bytes that are no protobuf, a valid event cut short, an
/// empty payload, one byte over the size bound, or an event that breaks a rule the codec
/// checks (no origin node in the stamp, a zero lease, a name or address it refuses).
fn undecodable(rng: &mut SmallRng, s: &Setting, key: InstanceKey, origin: String) -> Hostile {
    let under = key.bus_key();
    let stamp = Stamp::new(s.now_ms, rng.random_range(1..1_000), origin.clone());
    let good = alive(rng, s, key, stamp, origin);
    let payload: Vec<u8> = match rng.random_range(0..7) {
        0 => vec![0xff; rng.random_range(1..64)],
        1 => {
            let bytes = good.encode();
            bytes[..bytes.len() / 2].to_vec()
        }
        2 => Vec::new(),
        3 => vec![0; EVENT_BYTES_MAX + 1],
        4 => Event {
            stamp: Stamp::new(s.now_ms, 0, ""),
            ..good
        }
        .encode(),
        5 => Event {
            lease_ms: 0,
            ..good
        }
        .encode(),
        _ => Event {
            key: InstanceKey::new("no/such name", "../x"),
            addr: "ftp://somewhere/else".into(),
            ..good
        }
        .encode(),
    };
    Hostile {
        kind: Kind::Undecodable,
        key: under,
        payload: Bytes::from(payload),
        event: None,
    }
}

/// A real key two times in three, else a fresh one.
fn pick_key(rng: &mut SmallRng, s: &Setting) -> InstanceKey {
    match s.keys.choose(rng) {
        Some(key) if rng.random_range(0..3) < 2 => key.clone(),
        _ => fresh_key(rng, s),
    }
}

/// An instance no one registered: of a real service, or of a service of its own.
fn fresh_key(rng: &mut SmallRng, s: &Setting) -> InstanceKey {
    let id = format!("h-{}", rng.random_range(0..4));
    match s.keys.choose(rng) {
        Some(real) if rng.random_bool(0.5) => InstanceKey::new(real.service.clone(), id),
        _ => InstanceKey::new("hostile", id),
    }
}

/// A gateway's id two times in three, else a stranger's.
fn pick_origin(rng: &mut SmallRng, s: &Setting) -> String {
    match s.nodes.choose(rng) {
        Some(node) if rng.random_range(0..3) < 2 => node.clone(),
        _ => STRANGER.to_owned(),
    }
}

/// Writes `record` into `log` through [`Bus::publish`]; returns its offset. The in-memory log
/// appends when `publish` is called, so the future is ready at its first poll; `None` if a log
/// ever answers later than that, so the caller can say the record was not written.
pub fn inject(log: &MemoryBus, record: &Hostile) -> Option<u64> {
    let mut publish = log.publish(record.key.clone(), record.payload.clone());
    match publish
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(Ok(offset)) => Some(offset),
        Poll::Ready(Err(_)) | Poll::Pending => None,
    }
}
