//! The client's workload: registry changes and calls through random gateways, every answer
//! recorded with its stamp.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard_core::names::{METADATA_BYTES_MAX, METADATA_ENTRIES_MAX};
use switchyard_core::registry::EntryState;
use switchyard_core::{InstanceKey, Stamp};

use super::fronts::calls;
use super::fronts::register::{self, Change, Front};
use super::fronts::{CallFront, FRONT_DRAWS, SharedLog};
use super::{LEASE_MAX_MS, SAMPLE};
use crate::{CONTROL_PORT, http_send, http_send_as, intruder_credentials};

/// The service the client registers and deregisters (addresses where nothing listens; the
/// client never sends requests to it).
pub const GHOST: &str = "ghost";
pub const GHOST_IDS: usize = 6;
/// The lease the client asks for its ghost instances.
pub const GHOST_LEASE_MS: u64 = LEASE_MAX_MS;

/// What the client saw of one registry change.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: InstanceKey,
    pub op: Op,
    pub status: u16,
    pub stamp: Option<Stamp>,
    /// The gateway it went through, and the simulated time it was sent at.
    pub gateway: String,
    pub sent_ms: u64,
}

/// The change a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Register,
    Deregister,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Register => "registration",
            Op::Deregister => "deregistration",
        }
    }

    /// Whether `state` is what this change produces.
    pub fn matches(self, state: &EntryState) -> bool {
        matches!(
            (self, state),
            (Op::Register, EntryState::Alive { .. }) | (Op::Deregister, EntryState::Removed(_))
        )
    }
}

/// Simulated time now, in ms, as a host sees it.
pub fn sim_now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// Registers (`Op::Register`, with the ghosts' lease and address) or deregisters one instance
/// of `service` through `gw`, and records the answer; returns the trace line.
pub async fn change(acks: &RefCell<Vec<Ack>>, gw: &str, op: Op, service: &str, id: &str) -> String {
    let path = format!("/v1/services/{service}/instances/{id}");
    let sent_ms = sim_now_ms();
    let reply = match op {
        Op::Register => {
            let body = format!(r#"{{"addr":"nowhere:1","lease_ms":{GHOST_LEASE_MS}}}"#);
            http_send(gw, CONTROL_PORT, "PUT", &path, body.into_bytes()).await
        }
        Op::Deregister => http_send(gw, CONTROL_PORT, "DELETE", &path, Vec::new()).await,
    };
    record_ack(acks, service, id, op, gw, sent_ms, reply)
}

pub struct Client {
    pub acks: Rc<RefCell<Vec<Ack>>>,
    pub trace: Rc<RefCell<Vec<String>>>,
    pub stop: Rc<Cell<bool>>,
    pub gateways: Vec<String>,
    /// A gateway that joins halfway through, and takes requests only from then on.
    pub late: Option<String>,
    pub seed: u64,
    pub fault_ms: u64,
    /// Where the calls' answers are kept for the fronts' checks.
    pub fronts: SharedLog,
    /// The broker's log, which the metrics scraper compares the gateways' gauges with.
    pub bus: switchyard::bus::MemoryBus,
    /// Sends bursts of changes to one key at once ([`super::corners::bursts`]).
    pub bursts: bool,
    /// The sample instances, whose deregistrations the bursts race with their renewals.
    pub services: Vec<String>,
    /// The liveness prober, in liveness mode.
    pub probe: Option<super::liveness::Probe>,
    /// The windows of the balancer's corner faults, each with its prober's calls
    /// ([`super::probing::prober`]).
    pub probes: Vec<super::probing::Window>,
}

/// The client's workloads at once: [`changes_and_calls`], an [`intruder`] with its own
/// generator (so the other's draws are not disturbed), the trespasser, the edge caller
/// ([`super::fronts::edges`]), the metrics scraper ([`super::fronts::scrapes`]), the bursts, the liveness prober and the balancer's prober.
pub async fn client(mut c: Client) -> Result<(), Box<dyn std::error::Error>> {
    let intruding = intruder(c.gateways.clone(), c.seed, c.fault_ms, c.trace.clone());
    let trespassing = trespasser(
        c.gateways.clone(),
        c.seed,
        c.fault_ms,
        c.trace.clone(),
        c.fronts.clone(),
    );
    let bursting = super::corners::bursts(super::corners::Bursts {
        on: c.bursts,
        acks: c.acks.clone(),
        trace: c.trace.clone(),
        gateways: c.gateways.clone(),
        late: c.late.clone(),
        services: c.services.clone(),
        seed: c.seed,
        fault_ms: c.fault_ms,
    });
    let edging = super::fronts::edges::caller(
        c.gateways.clone(),
        c.seed,
        c.fault_ms,
        c.trace.clone(),
        c.fronts.clone(),
    );
    let scraping = super::fronts::scrapes::scraper(
        c.gateways.clone(),
        c.bus.clone(),
        c.seed,
        c.fault_ms,
        c.fronts.clone(),
    );
    let probing = super::liveness::probe(c.probe.take());
    let balance_probing = super::probing::prober(
        std::mem::take(&mut c.probes),
        c.fronts.clone(),
        c.trace.clone(),
    );
    let (result, (), (), (), (), (), (), ()) = tokio::join!(
        changes_and_calls(c),
        intruding,
        trespassing,
        edging,
        scraping,
        bursting,
        probing,
        balance_probing
    );
    result
}

/// Every 200-600 ms during the fault window: tries to register `ghost/x-N` through a random
/// gateway with a credential that does not allow it — none, another service's, one signed by
/// a key no gateway holds, an expired one. Nothing of it may ever reach a registry (the
/// phantom check), and every answer must be a refusal.
async fn intruder(
    gateways: Vec<String>,
    seed: u64,
    fault_ms: u64,
    trace: Rc<RefCell<Vec<String>>>,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x1a7d);
    let credentials = intruder_credentials();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(fault_ms) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        let gw = &gateways[rng.random_range(0..gateways.len())];
        let which = rng.random_range(0..=credentials.len());
        let token = credentials.get(which).map(String::as_str);
        let path = format!(
            "/v1/services/{GHOST}/instances/x-{}",
            rng.random_range(0..4)
        );
        let body = br#"{"addr":"nowhere:1"}"#.to_vec();
        let reply = http_send_as(gw, CONTROL_PORT, "PUT", &path, body, token).await;
        let line = match reply {
            Ok((status, _)) => format!("intruder {which} via {gw}: {status}"),
            Err(e) => format!("intruder {which} via {gw}: {}", e.kind()),
        };
        trace
            .borrow_mut()
            .push(format!("{:>6} ms {line}", started.elapsed().as_millis()));
    }
}

/// XORed into the seed for the trespasser's generator.
const TRESPASS_DRAWS: u64 = 0x7e55_9a55;

/// Addresses the gateways' address policy refuses at registration (IP literals it never
/// admits, and https with no CA to verify the instance).
const REFUSED_ADDRS: [&str; 5] = [
    "http://127.0.0.1:9",
    "http://169.254.169.254:80",
    "http://0.0.0.0:9",
    "http://[::1]:9",
    "https://nowhere:1",
];

/// Every 300-900 ms during the fault window, through a random gateway's control listener, one
/// of what no one may do there, each of which must be refused:
///
/// * read the registry (`GET /v1/services/ghost`) with no credential, one signed by a key no
///   gateway holds, an expired one, or a valid one without `read`: answered 401 or 403;
/// * revoke a public token (`POST /v1/revocations`) with a credential that is not for every
///   service, or one of the above: answered 401 or 403 (authorization comes first, before the
///   gateway finds it has no revocation store);
/// * register `ghost/y-N` with a valid credential for `ghost` at an address the address policy
///   refuses ([`REFUSED_ADDRS`]): never answered 2xx (400; 503 while the gateway catches up),
///   and the phantom check sees that it never reaches a registry.
///
/// Beside them, as controls, the same read and revocation with a credential that allows them:
/// answered 200 (404 while the gateway knows no ghost), and 503 (past the check, the
/// simulated gateways keep no revocation store).
/// An unexpected answer is a violation (kept in the fronts' log); transport errors
/// (partitions, crashes) are not judged. Its own generator: every other draw stays as it was.
async fn trespasser(
    gateways: Vec<String>,
    seed: u64,
    fault_ms: u64,
    trace: Rc<RefCell<Vec<String>>>,
    log: SharedLog,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ TRESPASS_DRAWS);
    let [other_service, foreign, expired] = intruder_credentials();
    let unreadable = crate::credential_without_read("trespasser", &["*"]);
    let ghost_only = crate::credential("trespasser", &[GHOST]);
    let operator = crate::credential("operator", &["*"]);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(fault_ms) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        let gw = &gateways[rng.random_range(0..gateways.len())];
        let (what, method, path, body, token, expected): (
            String,
            _,
            _,
            Vec<u8>,
            _,
            fn(u16) -> bool,
        ) = match rng.random_range(0..3) {
            0 => {
                let refused: fn(u16) -> bool = |status| matches!(status, 401 | 403);
                let (name, token, expected) = [
                    ("no credential", None, refused),
                    (
                        "a credential signed by a foreign key",
                        Some(&foreign),
                        refused,
                    ),
                    ("an expired credential", Some(&expired), refused),
                    ("a credential without read", Some(&unreadable), refused),
                    // The control: a credential that allows it reads (404 while that gateway
                    // knows no ghost).
                    (
                        "a credential that allows reading",
                        Some(&operator),
                        |status| matches!(status, 200 | 404),
                    ),
                ][rng.random_range(0..5)];
                (
                    format!("a registry read with {name}"),
                    "GET",
                    format!("/v1/services/{GHOST}"),
                    Vec::new(),
                    token,
                    expected,
                )
            }
            1 => {
                let refused: fn(u16) -> bool = |status| matches!(status, 401 | 403);
                let (name, token, expected) = [
                    ("no credential", None, refused),
                    (
                        "a credential for one service",
                        Some(&other_service),
                        refused,
                    ),
                    ("a credential for ghost only", Some(&ghost_only), refused),
                    (
                        "a credential signed by a foreign key",
                        Some(&foreign),
                        refused,
                    ),
                    // The control: a credential for every service may revoke; the simulated
                    // gateways keep no revocation store, so they answer 503 past the check.
                    (
                        "a credential for every service",
                        Some(&operator),
                        |status| status == 503,
                    ),
                ][rng.random_range(0..5)];
                (
                    format!("a revocation with {name}"),
                    "POST",
                    "/v1/revocations".to_owned(),
                    br#"{"issuer":"sim","subject":"someone","expires_at":4000000000}"#.to_vec(),
                    token,
                    expected,
                )
            }
            _ => {
                let addr = REFUSED_ADDRS[rng.random_range(0..REFUSED_ADDRS.len())];
                (
                    format!("a registration at {addr}"),
                    "PUT",
                    format!(
                        "/v1/services/{GHOST}/instances/y-{}",
                        rng.random_range(0..4)
                    ),
                    format!(r#"{{"addr":"{addr}"}}"#).into_bytes(),
                    Some(&ghost_only),
                    |status| !(200..300).contains(&status),
                )
            }
        };
        let reply = http_send_as(
            gw,
            CONTROL_PORT,
            method,
            &path,
            body,
            token.map(String::as_str),
        )
        .await;
        let at_ms = started.elapsed().as_millis();
        let line = match reply {
            Ok((status, _)) => {
                let mut log = log.borrow_mut();
                log.trespasses += 1;
                if !expected(status) {
                    log.trespasses_admitted.push(format!(
                        "{gw} answered {what} ({method} {path}) {status} at {at_ms} ms: it must refuse it (or, the control, let it through)"
                    ));
                }
                format!("trespasser via {gw}: {what}: {status}")
            }
            Err(e) => format!("trespasser via {gw}: {what}: {}", e.kind()),
        };
        trace.borrow_mut().push(format!("{at_ms:>6} ms {line}"));
    }
}

/// Every 50-250 ms during the fault window: register (40 %) or deregister (20 %) a ghost
/// instance, or call the sample service (40 %), through a random gateway. Then idles until
/// the run stops it. Each change goes through REST, gRPC or GraphQL, each call through REST or
/// a GraphQL `call` fan-out, drawn from a generator of their own (`fronts`).
async fn changes_and_calls(c: Client) -> Result<(), Box<dyn std::error::Error>> {
    let Client {
        acks,
        trace,
        stop,
        gateways,
        late,
        seed,
        fault_ms,
        fronts,
        ..
    } = c;
    let mut crng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut frng = SmallRng::seed_from_u64(seed ^ FRONT_DRAWS);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(fault_ms) {
        tokio::time::sleep(Duration::from_millis(crng.random_range(50..250))).await;
        let candidates: Vec<&String> = gateways
            .iter()
            .filter(|g| {
                Some(*g) != late.as_ref() || started.elapsed() > Duration::from_millis(fault_ms / 2)
            })
            .collect();
        let gw = candidates[crng.random_range(0..candidates.len())].clone();
        let id = format!("g-{}", crng.random_range(0..GHOST_IDS));
        let roll = crng.random_range(0..100);
        let line = if roll < 60 {
            let op = if roll < 40 {
                Op::Register
            } else {
                Op::Deregister
            };
            let metadata = ghost_metadata(&id);
            let change = match op {
                Op::Register => Change::Register {
                    service: GHOST,
                    id: &id,
                    addr: "nowhere:1",
                    lease_ms: GHOST_LEASE_MS,
                    metadata: &metadata,
                },
                Op::Deregister => Change::Deregister {
                    service: GHOST,
                    id: &id,
                },
            };
            let front = Front::draw(&mut frng);
            *fronts
                .borrow_mut()
                .changes_by_front
                .entry(front.name())
                .or_default() += 1;
            let sent_ms = sim_now_ms();
            let reply = register::send(front, &gw, change).await;
            let line = record_ack(&acks, GHOST, &id, op, &gw, sent_ms, reply);
            format!("{} {line}", front.name())
        } else {
            let front = if frng.random_bool(0.5) {
                CallFront::Rest
            } else {
                CallFront::GraphqlCall
            };
            let elapsed = || turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64);
            calls::call(front, &gw, SAMPLE, &fronts, elapsed).await
        };
        trace
            .borrow_mut()
            .push(format!("{:>6} ms {line}", started.elapsed().as_millis()));
    }
    while !stop.get() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The metadata a ghost registers with: none, but `g-0` carries the most the gateways accept
/// (32 entries, keys and values of 512 bytes: events of about 33 KiB, half the bus's bound), so
/// that the largest registrations cross every front, the bus and the codec in every run. Not
/// drawn from a generator: the run's draws stay as they were.
fn ghost_metadata(id: &str) -> BTreeMap<String, String> {
    if id != "g-0" {
        return BTreeMap::new();
    }
    (0..METADATA_ENTRIES_MAX)
        .map(|i| {
            let key = format!("k{i:02}-{}", "k".repeat(METADATA_BYTES_MAX - 4));
            (key, "v".repeat(METADATA_BYTES_MAX))
        })
        .collect()
}

fn stamp_of(json: &serde_json::Value) -> Option<Stamp> {
    let s = &json["stamp"];
    Some(Stamp::new(
        s["physical_ms"].as_u64()?,
        u32::try_from(s["logical"].as_u64()?).ok()?,
        s["node_id"].as_str()?,
    ))
}

fn record_ack(
    acks: &RefCell<Vec<Ack>>,
    service: &str,
    id: &str,
    op: Op,
    gateway: &str,
    sent_ms: u64,
    reply: std::io::Result<(u16, bytes::Bytes)>,
) -> String {
    match reply {
        Ok((status, body)) => {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let stamp = stamp_of(&json);
            acks.borrow_mut().push(Ack {
                key: InstanceKey::new(service, id),
                op,
                status,
                stamp: stamp.clone(),
                gateway: gateway.to_owned(),
                sent_ms,
            });
            format!("{service}/{id}: {status} {stamp:?}")
        }
        Err(e) => format!("{service}/{id}: {}", e.kind()),
    }
}
