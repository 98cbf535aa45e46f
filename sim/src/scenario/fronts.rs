//! Every front and policy inside the simulation (issue 19): registration by REST, gRPC and
//! GraphQL, GraphQL `call` fan-out on the public front, `registryChanges` subscriptions over
//! WebSocket, and auditing into a memory sink per gateway, each with its checker.
//!
//! * [`register`]: a registry change through the front the workload draws for it.
//! * [`calls`]: calls through the public front (REST or a GraphQL `call` fan-out), each
//!   answer kept with the request id it carried; the check that a call answered by a service
//!   reached a service.
//! * [`edges`]: calls at the forwarding's edges (`Via` entries, answers at the response body
//!   bound) and the check of the mark every forwarded request carries.
//! * [`audit`]: the memory audit sink of each gateway, audit-sink outages, and the check that
//!   every answered request is audited once, or its absence counted.
//! * [`scrapes`]: a metrics scraper and the check of the bus gauges it reads.
//! * [`subscriptions`]: a watcher host subscribed to `registryChanges` on some gateways, and
//!   the check against each gateway's own change feed: no silent gap.
//!
//! Everything here that draws randomness draws from generators of its own, seeded from the
//! run's seed, so the draws of the faults and of the rest of the workload stay as they were.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub mod audit;
pub mod calls;
pub mod edges;
pub mod register;
pub mod scrapes;
pub mod subscriptions;

/// Salts of the generators this module draws from (each XORed with the seed).
pub const FRONT_DRAWS: u64 = 0x000f_7075_5eed;
pub const AUDIT_DRAWS: u64 = 0x00a0_d175_5eed;
pub const WATCH_DRAWS: u64 = 0x0057_a7c4_5eed;

/// Which public front carried a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallFront {
    Rest,
    GraphqlCall,
}

/// One call the client saw answered by a gateway: its request id and status (for a GraphQL
/// `call`, the field's: a service's status, or the error's `extensions.status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub gateway: String,
    pub front: CallFront,
    pub request_id: String,
    pub status: u16,
    /// A GraphQL `call` field that came back as a `CallResult` (an answer of the service),
    /// rather than `null` with an error. Always `status == 200` for REST answers from a
    /// service; REST cannot tell a service's error from the gateway's, so only 200 counts.
    pub from_service: bool,
    /// The gateway's error code when the gateway answered rather than a service (REST: the
    /// body's `error.code`; GraphQL: the error's `extensions.code`), else empty.
    pub code: String,
    /// Simulated ms when the client sent the call, and when the answer arrived.
    pub sent_ms: u64,
    pub at_ms: u64,
}

/// What the fronts saw during a run, shared between the client tasks and the step loop.
#[derive(Debug, Default)]
pub struct FrontLog {
    /// Answered calls, at most [`ANSWERED_MAX`] (the client sends one every 50 ms at most).
    pub answered: Vec<Answered>,
    /// Registry changes asked for, by front name.
    pub changes_by_front: BTreeMap<&'static str, usize>,
    /// Calls not kept because the log was full.
    pub unkept: usize,
    /// What the trespasser tried ([`super::workload`]'s `trespasser`) and got an answer to,
    /// and the answers that let it through.
    pub trespasses: usize,
    pub trespasses_admitted: Vec<String>,
    /// What the edge caller (`edges::caller`) sent and saw.
    pub edges: edges::EdgeLog,
    /// What the metrics scraper (`scrapes::scraper`) judged.
    pub scrapes: scrapes::ScrapeLog,
}

/// The most answers a run keeps.
pub const ANSWERED_MAX: usize = 100_000;

impl FrontLog {
    pub fn answered(&mut self, answered: Answered) {
        if self.answered.len() < ANSWERED_MAX {
            self.answered.push(answered);
        } else {
            self.unkept += 1;
        }
    }
}

pub type SharedLog = Rc<RefCell<FrontLog>>;

/// One HTTP/1.1 request on a new connection, bounded by 5 s of simulated time: the status,
/// the `x-request-id` of the answer and the body.
pub async fn send(
    host: &str,
    port: u16,
    request: http::Request<Full<Bytes>>,
) -> std::io::Result<(u16, String, Bytes)> {
    let exchange = async {
        let stream = turmoil::net::TcpStream::connect((host, port)).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((status, request_id, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s"))?
}

/// A JSON `POST /graphql` to `host:port`, with `token` as its bearer credential.
pub async fn graphql(
    host: &str,
    port: u16,
    body: &serde_json::Value,
    token: Option<&str>,
) -> std::io::Result<(u16, String, serde_json::Value)> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri("/graphql")
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(std::io::Error::other)?;
    let (status, request_id, body) = send(host, port, request).await?;
    let json = serde_json::from_slice(&body).unwrap_or_default();
    Ok((status, request_id, json))
}

/// The HTTP status a GraphQL error stands for (`extensions.status`), 500 if it names none.
pub fn error_status(error: &serde_json::Value) -> u16 {
    error["extensions"]["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(500)
}

/// The most "answered but never served" violations described in one run (all are counted).
const SHOWN_MAX: usize = 5;

/// What the fronts' checkers judged in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrontCounts {
    /// Registry changes asked for, by front.
    pub changes_by_front: BTreeMap<String, usize>,
    /// Calls answered, by the public front that carried them.
    pub rest_calls: usize,
    pub graphql_calls: usize,
    /// Calls answered 200 by a service that no instance received.
    pub answered_not_served: usize,
    pub audit: audit::AuditCounts,
    pub subscriptions: subscriptions::SubscriptionCounts,
    /// Reads, revocations and refused registrations the trespasser had answered, and the
    /// answers that let one through.
    #[serde(default)]
    pub trespasses: usize,
    #[serde(default)]
    pub trespasses_admitted: usize,
    /// What the forwarding's edge checks judged (`scenario/fronts/edges.rs`).
    #[serde(default)]
    pub edges: edges::EdgeCounts,
    /// `/metrics` answers whose bus gauges were judged (`scenario/fronts/scrapes.rs`).
    #[serde(default)]
    pub scrapes_judged: usize,
}

/// Runs the fronts' checks at the end of a run.
pub fn check(
    log: &FrontLog,
    served: &[crate::witness::Served],
    sinks: &audit::Sinks,
    watched: &subscriptions::Watched,
    feeds: &[subscriptions::Feed],
    end_ms: u64,
    violations: &mut Vec<String>,
) -> FrontCounts {
    if log.unkept > 0 {
        violations.push(format!(
            "{} answered calls were not kept for the fronts' checks",
            log.unkept
        ));
    }
    let count = |front| log.answered.iter().filter(|a| a.front == front).count();
    violations.extend(log.trespasses_admitted.iter().take(SHOWN_MAX).cloned());
    FrontCounts {
        changes_by_front: log
            .changes_by_front
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        rest_calls: count(CallFront::Rest),
        graphql_calls: count(CallFront::GraphqlCall),
        answered_not_served: calls::check_answered_were_served(
            &log.answered,
            served,
            SHOWN_MAX,
            violations,
        ),
        audit: audit::check(sinks, &log.answered, violations),
        subscriptions: subscriptions::check(watched, feeds, end_ms, violations),
        trespasses: log.trespasses,
        trespasses_admitted: log.trespasses_admitted.len(),
        edges: edges::check(&log.edges, served, violations),
        scrapes_judged: scrapes::check(&log.scrapes, violations),
    }
}
