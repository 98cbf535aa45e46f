//! Draws and workloads that reach the corners, each from a generator of its own seeded from
//! the run's seed, so that every other draw stays as it was:
//!
//! * the broker's fetch size (1 to 512 records, small ones favoured), drawn for every run;
//! * the corner fault kinds (`Faults::corners`) and what they do: lost acknowledgements and
//!   deep redeliveries (in the broker), short tombstone retention with one gateway cut off from
//!   the broker for longer than it, and bursts of changes to one key.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::GHOST;
use super::workload::{Ack, GHOST_IDS, Op, change, sim_now_ms};

/// XORed into the seed for the generator of the fetch size and the corner kinds.
pub(super) const CORNER_DRAWS: u64 = 0xc0_14e5_5eed;
/// XORed into the seed for the generator of the bursts.
const BURST_DRAWS: u64 = 0xb0_b5;
/// The largest fetch size drawn: the gateways' own `FETCH_RECORDS_MAX`.
pub const FETCH_RECORDS_MAX: usize = 512;
/// Probabilities of the broker's corner faults when their kind is on.
pub const LOST_ACK_PROBABILITY: f64 = 0.2;
pub const DEEP_REDELIVER_PROBABILITY: f64 = 0.05;

/// The most records one fetch returns in this run (redelivered ones included, so a
/// redelivery can fill a whole fetch with records the reader had passed): a power of two from 2 to 512 drawn uniformly, then
/// a size from 2 up to it, so one run in nine reads two records at a time and half read at
/// most 16. Not 1: a reader that takes one record per round trip, with broker delays, reads
/// about as fast as five gateways and two instances on 1 s leases write, and then never
/// catches up within the settle time; that is a property of the load, not a fault the
/// simulation should report. The position's promise with one record per fetch is unit-tested
/// (`replication::tests::a_redelivered_record_never_moves_the_position_back`).
pub fn fetch_records_max(corners: &mut SmallRng) -> usize {
    let exponent = corners.random_range(1..=FETCH_RECORDS_MAX.ilog2());
    corners.random_range(2..=(1usize << exponent))
}

/// What the burst workload needs.
pub struct Bursts {
    pub on: bool,
    pub acks: Rc<RefCell<Vec<Ack>>>,
    pub trace: Rc<RefCell<Vec<String>>>,
    pub gateways: Vec<String>,
    pub late: Option<String>,
    pub services: Vec<String>,
    pub seed: u64,
    pub fault_ms: u64,
}

/// Every 300-1500 ms of the fault window, one of:
///
/// * three changes to one ghost instance sent at once through one gateway (the same
///   millisecond on one node: its clock must count them apart);
/// * three changes to one ghost instance sent at once through three gateways (the same
///   millisecond on several nodes, within the clock skew: the stamps, not the arrival order,
///   decide);
/// * a deregistration of a sample instance through a random gateway, racing the instance's own
///   renewals (a renewal after it brings the instance back; one before it loses).
///
/// Every answer is recorded like the main workload's, so the strict lost-change check and the
/// clock's promise judge them.
pub async fn bursts(b: Bursts) {
    if !b.on {
        return;
    }
    let mut rng = SmallRng::seed_from_u64(b.seed ^ BURST_DRAWS);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(b.fault_ms) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        let half_way = started.elapsed() > Duration::from_millis(b.fault_ms / 2);
        let candidates: Vec<&String> = b
            .gateways
            .iter()
            .filter(|g| Some(*g) != b.late.as_ref() || half_way)
            .collect();
        let pick = |rng: &mut SmallRng| candidates[rng.random_range(0..candidates.len())].clone();
        let op = |rng: &mut SmallRng| {
            if rng.random_bool(0.5) {
                Op::Register
            } else {
                Op::Deregister
            }
        };
        let roll = rng.random_range(0..10);
        let at_ms = sim_now_ms();
        let lines = if roll < 8 || b.services.is_empty() {
            let id = format!("g-{}", rng.random_range(0..GHOST_IDS));
            let one = roll < 4;
            let first = pick(&mut rng);
            let gws = [
                first.clone(),
                if one { first.clone() } else { pick(&mut rng) },
                if one { first } else { pick(&mut rng) },
            ];
            let ops = [op(&mut rng), op(&mut rng), op(&mut rng)];
            let acks = &b.acks;
            let (x, y, z) = tokio::join!(
                change(acks, &gws[0], ops[0], GHOST, &id),
                change(acks, &gws[1], ops[1], GHOST, &id),
                change(acks, &gws[2], ops[2], GHOST, &id),
            );
            vec![x, y, z]
        } else {
            let svc = b.services[rng.random_range(0..b.services.len())].clone();
            let gw = pick(&mut rng);
            vec![change(&b.acks, &gw, Op::Deregister, super::SAMPLE, &svc).await]
        };
        let mut trace = b.trace.borrow_mut();
        for line in lines {
            trace.push(format!("{at_ms:>6} ms burst {line}"));
        }
    }
}
