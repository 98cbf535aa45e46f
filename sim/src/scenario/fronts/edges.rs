//! The forwarding's edges: calls through the public front that carry `Via` entries, or ask
//! for an answer at the response body bound, each with the answer the gateway promises
//! (docs/protocol.md), and a check of the mark every forwarded request carries.
//!
//! Every 300-900 ms during the fault window, through a random gateway, one of:
//!
//! * a call that passed 1 to `upstream.hops_max` proxies (`Via` entries), some with bytes
//!   outside ASCII: never refused as a loop (`loop_detected`);
//! * a call that passed more than `upstream.hops_max` proxies, or whose `Via` names the
//!   gateway itself: never answered 200, and never reaching an instance;
//! * a call for an answer whose body is exactly `upstream.response_body_bytes_max`
//!   ([`RESPONSE_BODY_MAX`]) with [`AT_BOUND_FIELDS`] header fields (about 59 KiB, within the
//!   64 KiB a response may carry): never refused as a bad upstream response, and when
//!   answered 200, with the whole body;
//! * a call for an answer one byte longer, or longer than the decoding limit with any room
//!   for headers (more than 68 KiB past the bound, so tonic refuses it before the gateway
//!   measures it): never answered 200, and never as if the service had failed the call with a
//!   status of its own;
//! * a call that the instance fails with a gRPC status ([`STATUS_PATH`]): answered as that
//!   status (`upstream_<code>`, at its HTTP status), whatever the message, unless it is
//!   exactly the refusal of a loop by a gateway on the way (`FAILED_PRECONDITION` with
//!   [`hops::LOOP_GRPC_MESSAGE`]), which is answered 508 `loop_detected`. The code and the
//!   message are drawn so that a gateway that reads only one of them, or reads a status as
//!   tonic's refusal of a long answer, answers otherwise.
//!
//! Faults may answer any of them otherwise (no live instance, a timeout, a partition): only
//! what breaks the promise is judged. Of every edge call, an answer `upstream_timeout` sooner
//! than `upstream.timeout_ms` after the call was sent breaks the promise too. And every
//! request an instance received, whatever sent it, must carry the forwarding gateway's mark on the `Send` call's own metadata as well as
//! in `ForwardingReq.headers`: the `via` metadata ends with the gateway's entry, so an
//! instance that is another gateway's public listener can refuse a loop.
//!
//! Its own generator: every other draw stays as it was.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard_core::{GatewayError, hops, translate};

use super::SharedLog;
use crate::PUBLIC_PORT;
use crate::scenario::{SAMPLE, UPSTREAM_TIMEOUT_MS};
use crate::witness::{ANSWER_PATH, STATUS_PATH, Served, StatusMessage};

/// XORed into the seed for the edge caller's generator.
pub const EDGE_DRAWS: u64 = 0x00ed_9e5e_ed00;
/// `upstream.hops_max` (the default) in the simulation.
pub const HOPS_MAX: usize = 8;
/// `upstream.response_body_bytes_max` in the simulation: above the 64 KiB the gateway's
/// decoding limit leaves for a response's headers, so that a limit that subtracts them
/// instead refuses an answer at the bound.
pub const RESPONSE_BODY_MAX: usize = 96 * 1024;
/// The header fields of an answer at the bound (each 4,000 bytes of value): about 59 KiB,
/// within the 64 KiB a response may carry.
pub const AT_BOUND_FIELDS: usize = 15;
/// How far past [`RESPONSE_BODY_MAX`] the body of an answer beyond the decoding limit is at
/// least: beyond the room a valid response's headers need (64 KiB of fields, 256 fields' tags
/// and lengths, and the status: under 68 KiB), so the decoding limit refuses it.
pub const PAST_ENVELOPE_BYTES: usize =
    translate::RESPONSE_HEADER_BYTES_MAX + translate::RESPONSE_HEADERS_MAX * 8 + 1024;
/// The gRPC codes an instance fails a status edge with besides `FAILED_PRECONDITION` and
/// `OUT_OF_RANGE` (which the gateway reads twice: the loop's refusal, tonic's refusal):
/// every code a service may send of its own, except `CANCELLED` and `UNAVAILABLE`.
const OTHER_CODES: [tonic::Code; 10] = [
    tonic::Code::InvalidArgument,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::PermissionDenied,
    tonic::Code::ResourceExhausted,
    tonic::Code::Aborted,
    tonic::Code::Unimplemented,
    tonic::Code::Internal,
    tonic::Code::DataLoss,
    tonic::Code::Unauthenticated,
];
/// The most violations of one kind described in one run (all are counted).
const SHOWN_MAX: usize = 5;

/// What the edge caller sent and what came back wrong.
#[derive(Debug, Default)]
pub struct EdgeLog {
    /// Calls answered (by the gateway or a service).
    pub answered: usize,
    /// Loop refusals (508) of calls that had to be refused, and answers at the bound with the
    /// whole body: the promises seen kept.
    pub loops_refused: usize,
    pub at_bound_whole: usize,
    /// Instances' statuses answered as promised.
    pub statuses_kept: usize,
    /// Answers that broke a promise, described.
    pub wrong: Vec<String>,
    /// Calls that must never reach an instance: gateway, request id (`x-request-id`), when.
    pub not_to_serve: Vec<(String, String, u64)>,
}

/// One edge case.
#[derive(Debug, Clone)]
enum Edge {
    /// Passed this many proxies before the gateway; `true`: one entry has bytes outside ASCII.
    Hops(usize, bool),
    /// Passed more than [`HOPS_MAX`] proxies.
    TooManyHops(usize),
    /// Passed the gateway itself already.
    Own,
    /// An answer of exactly the bound, or one byte more.
    AtBound,
    PastBound,
    /// An answer past the bound by [`PAST_ENVELOPE_BYTES`] and this many bytes more.
    PastEnvelope(usize),
    /// The instance fails the call with this status.
    Status(tonic::Code, StatusMessage),
}

impl Edge {
    fn draw(rng: &mut SmallRng) -> Self {
        match rng.random_range(0..8) {
            0 => Self::Hops(rng.random_range(1..=HOPS_MAX), false),
            1 => Self::Hops(rng.random_range(1..=3), true),
            2 => Self::TooManyHops(rng.random_range(HOPS_MAX + 1..=HOPS_MAX + 3)),
            3 => Self::Own,
            4 => Self::AtBound,
            5 => Self::PastBound,
            6 => Self::PastEnvelope(rng.random_range(0..4096)),
            _ => {
                let code = match rng.random_range(0..3) {
                    0 => tonic::Code::FailedPrecondition,
                    1 => tonic::Code::OutOfRange,
                    _ => OTHER_CODES[rng.random_range(0..OTHER_CODES.len())],
                };
                let message = StatusMessage::ALL[rng.random_range(0..StatusMessage::ALL.len())];
                // tonic's own refusal, exactly: the gateway cannot tell a service that sends
                // it from tonic, and takes it for an answer past the limit; not drawn.
                if code == tonic::Code::OutOfRange && message == StatusMessage::DecodeLimit {
                    Self::Status(code, StatusMessage::Plain)
                } else {
                    Self::Status(code, message)
                }
            }
        }
    }

    /// For a status edge, the answer the gateway promises when the instance's status reaches
    /// it: HTTP status and error code.
    fn expected(&self) -> Option<(u16, String)> {
        let Self::Status(code, message) = *self else {
            return None;
        };
        let promised = if code == tonic::Code::FailedPrecondition && message == StatusMessage::Loop
        {
            GatewayError::LoopDetected {
                reason: String::new(),
            }
        } else {
            service_status(code as i32)
        };
        Some((promised.http_status(), promised.code()))
    }

    /// The `Via` value the call carries, if any.
    fn via(&self, gateway: &str) -> Option<Vec<u8>> {
        let entries = |n: usize| (0..n).map(|i| format!("1.1 proxy-{i}")).collect::<Vec<_>>();
        match self {
            Self::Hops(n, unprintable) => {
                let mut value = entries(*n).join(", ").into_bytes();
                if *unprintable {
                    // obs-text: valid in an HTTP field value, not in gRPC metadata.
                    value.extend_from_slice(b" (caf\xe9)");
                }
                Some(value)
            }
            Self::TooManyHops(n) => Some(entries(*n).join(", ").into_bytes()),
            Self::Own => {
                Some(format!("1.1 proxy-0, 1.1 {}", hops::pseudonym(gateway)).into_bytes())
            }
            Self::AtBound | Self::PastBound | Self::PastEnvelope(_) | Self::Status(..) => None,
        }
    }

    fn path(&self) -> String {
        match self {
            Self::AtBound => format!("/{SAMPLE}{ANSWER_PATH}{RESPONSE_BODY_MAX}/{AT_BOUND_FIELDS}"),
            Self::PastBound => format!("/{SAMPLE}{ANSWER_PATH}{}/0", RESPONSE_BODY_MAX + 1),
            Self::PastEnvelope(more) => format!(
                "/{SAMPLE}{ANSWER_PATH}{}/0",
                RESPONSE_BODY_MAX + PAST_ENVELOPE_BYTES + more
            ),
            Self::Status(code, message) => {
                format!("/{SAMPLE}{STATUS_PATH}{}/{}", *code as i32, message.word())
            }
            _ => format!("/{SAMPLE}/hello"),
        }
    }
}

/// Sends the edge cases until the fault window ends; keeps what came back in `log`.
pub async fn caller(
    gateways: Vec<String>,
    seed: u64,
    fault_ms: u64,
    trace: Rc<RefCell<Vec<String>>>,
    log: SharedLog,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ EDGE_DRAWS);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(fault_ms) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        let gw = &gateways[rng.random_range(0..gateways.len())];
        let edge = Edge::draw(&mut rng);
        let mut request = http::Request::builder()
            .method("GET")
            .uri(edge.path())
            .header(http::header::HOST, gw.as_str());
        if let Some(via) = edge.via(gw) {
            request = request.header(http::header::VIA, via);
        }
        let sent = tokio::time::Instant::now();
        let reply = match request.body(Full::new(Bytes::new())) {
            Ok(request) => super::send(gw, PUBLIC_PORT, request).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        let at_ms = started.elapsed().as_millis() as u64;
        let took_ms = sent.elapsed().as_millis() as u64;
        let line = match reply {
            Ok((status, request_id, body)) => {
                let code = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                judge(
                    &mut log.borrow_mut().edges,
                    &edge,
                    Judged {
                        gateway: gw,
                        status,
                        code: &code,
                        body_len: body.len(),
                        request_id,
                        at_ms,
                        took_ms,
                    },
                );
                format!("edge {edge:?} via {gw}: {status} {code}")
            }
            Err(e) => format!("edge {edge:?} via {gw}: {}", e.kind()),
        };
        trace.borrow_mut().push(format!("{at_ms:>6} ms {line}"));
    }
}

/// One answer to an edge case.
struct Judged<'a> {
    gateway: &'a str,
    status: u16,
    code: &'a str,
    body_len: usize,
    request_id: String,
    at_ms: u64,
    /// From the call's sending to its answer.
    took_ms: u64,
}

/// Whether an error code is one the gateway gives only after reading an instance's answer:
/// a status of the service's (`upstream_<code>`), a loop's refusal or an invalid answer. The
/// others (no live instance, a timeout, a reset, a failed connect, ...) come from faults.
fn read_from_answer(code: &str) -> bool {
    code == "loop_detected"
        || code == "bad_upstream_response"
        || (0..=16).any(|c| code == service_status(c).code())
}

/// The gateway's error for an instance that failed a call with gRPC status `code`.
fn service_status(code: i32) -> GatewayError {
    GatewayError::UpstreamStatus {
        service: SAMPLE.to_owned(),
        grpc_code: code,
        message: String::new(),
    }
}

fn judge(log: &mut EdgeLog, edge: &Edge, a: Judged<'_>) {
    log.answered += 1;
    let Judged {
        gateway,
        status,
        code,
        body_len,
        at_ms,
        took_ms,
        ..
    } = a;
    let early_timeout = (code == "upstream_timeout" && took_ms < UPSTREAM_TIMEOUT_MS).then(|| {
        format!("answered upstream_timeout {took_ms} ms after it was sent: upstream.timeout_ms is {UPSTREAM_TIMEOUT_MS}")
    });
    let wrong = early_timeout.or_else(|| match edge {
        Edge::Hops(..) => (code == "loop_detected").then(|| {
            format!("refused it as a loop ({status}): it passed at most {HOPS_MAX} proxies, none of them this gateway")
        }),
        Edge::TooManyHops(_) | Edge::Own => {
            if status == 508 && code == "loop_detected" {
                log.loops_refused += 1;
            }
            log.not_to_serve
                .push((gateway.to_owned(), a.request_id.clone(), at_ms));
            (status == 200).then(|| "answered 200: it must refuse it as a loop (508)".to_owned())
        }
        Edge::AtBound => {
            if status == 200 && body_len == RESPONSE_BODY_MAX {
                log.at_bound_whole += 1;
            }
            if code == "bad_upstream_response" {
                Some(format!(
                    "refused an answer of {RESPONSE_BODY_MAX} bytes with {AT_BOUND_FIELDS} header fields as a bad upstream response: both within their bounds"
                ))
            } else if status == 200 && body_len != RESPONSE_BODY_MAX {
                Some(format!(
                    "answered 200 with {body_len} bytes of a {RESPONSE_BODY_MAX}-byte answer"
                ))
            } else {
                None
            }
        }
        Edge::PastBound | Edge::PastEnvelope(_) => {
            if status == 200 {
                Some(format!(
                    "answered 200 with a body of {body_len} bytes: upstream.response_body_bytes_max is {RESPONSE_BODY_MAX}"
                ))
            } else if read_from_answer(code) && code != "bad_upstream_response" {
                Some(format!(
                    "answered {status} {code}: the instance answered, too long, and failed nothing (bad_upstream_response)"
                ))
            } else {
                None
            }
        }
        Edge::Status(..) => {
            let (want_status, want_code) = edge.expected()?;
            if code == want_code {
                log.statuses_kept += 1;
            }
            ((read_from_answer(code) || status == 200)
                && (code != want_code || status != want_status))
                .then(|| format!("answered {status} {code:?}: the instance's status is answered {want_status} {want_code}"))
        }
    });
    if let Some(what) = wrong {
        log.wrong.push(format!(
            "{gateway} at {at_ms} ms, a call {edge:?} (request id {:?}): {what}",
            a.request_id
        ));
    }
}

/// What the edge checks judged in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgeCounts {
    /// Edge calls answered, loop refusals seen, answers at the bound passed whole.
    pub answered: usize,
    pub loops_refused: usize,
    pub at_bound_whole: usize,
    /// Instances' statuses answered as promised.
    #[serde(default)]
    pub statuses_kept: usize,
    /// Requests whose `via` metadata was judged.
    pub via_judged: usize,
}

/// The checks at the end of a run: the answers [`judge`] found wrong, the calls refused as
/// loops that an instance received anyway, and the `via` mark of every request served.
pub fn check(log: &EdgeLog, served: &[Served], violations: &mut Vec<String>) -> EdgeCounts {
    violations.extend(log.wrong.iter().take(SHOWN_MAX).cloned());
    if log.wrong.len() > SHOWN_MAX {
        violations.push(format!(
            "{} more answers to edge calls broke their promise",
            log.wrong.len() - SHOWN_MAX
        ));
    }
    let received: BTreeSet<&str> = served.iter().map(|s| s.request_id.as_str()).collect();
    for (gateway, id, at_ms) in log
        .not_to_serve
        .iter()
        .filter(|(_, id, _)| !id.is_empty() && received.contains(id.as_str()))
        .take(SHOWN_MAX)
    {
        violations.push(format!(
            "{gateway} forwarded request {id:?} (answered at {at_ms} ms) to an instance: it passed more than {HOPS_MAX} proxies or this gateway"
        ));
    }
    let mut via_judged = 0;
    let mut unmarked = 0;
    for s in served {
        via_judged += 1;
        if let Some(what) = unmarked_because(s) {
            unmarked += 1;
            if unmarked <= SHOWN_MAX {
                violations.push(format!(
                    "{} sent request {:?} to {} at {} ms {what}",
                    s.gateway_node, s.request_id, s.instance_id, s.received_ms
                ));
            }
        }
    }
    EdgeCounts {
        answered: log.answered,
        loops_refused: log.loops_refused,
        at_bound_whole: log.at_bound_whole,
        statuses_kept: log.statuses_kept,
        via_judged,
    }
}

/// Why a served request lacks its gateway's mark on the call, if it does: the `via` metadata
/// must be printable ASCII (gRPC's `ASCII-Value`), end with the gateway's own entry, the last
/// of `ForwardingReq`'s `Via`, and be either that whole value or (when the value is not
/// printable ASCII) the entry alone.
fn unmarked_because(s: &Served) -> Option<String> {
    let Some(forwarded) = &s.via_forwarded else {
        return Some("without a Via field in ForwardingReq.headers".to_owned());
    };
    let own = last_entry(forwarded);
    let by = own.split(|b| *b == b' ').nth(1).unwrap_or_default();
    if by != hops::pseudonym(&s.gateway_node).as_bytes() {
        return Some(format!(
            "with a Via whose last entry {:?} is not the gateway's",
            String::from_utf8_lossy(own)
        ));
    }
    let Some(meta) = &s.via_metadata else {
        return Some("without its mark on the call's via metadata".to_owned());
    };
    if !meta.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Some(format!(
            "with via metadata {:?}, not printable ASCII as gRPC metadata must be",
            String::from_utf8_lossy(meta)
        ));
    }
    if meta != forwarded && meta.as_slice() != own {
        return Some(format!(
            "with via metadata {:?}: neither its Via {:?} nor the gateway's entry",
            String::from_utf8_lossy(meta),
            String::from_utf8_lossy(forwarded)
        ));
    }
    None
}

/// The last comma-separated entry of a `Via` value, trimmed.
fn last_entry(value: &[u8]) -> &[u8] {
    value
        .rsplit(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}
