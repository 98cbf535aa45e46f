//! The service instance as witness: a `ForwardingService` that serves like the sample service
//! and records, for every request it receives, which gateway sent it and when. The routing
//! checker (`scenario::routing`) compares these records with what each gateway's registry
//! listed. A witness can also be stalled ([`Stalls`]): it then takes requests and answers
//! none before the gateway's deadline (the `stalls` fault kind).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use switchyard_proto::forwarding::forwarding_service_server::{
    ForwardingService, ForwardingServiceServer,
};
use switchyard_proto::forwarding::{ForwardingReq, ForwardingResp, Header};
use tonic::{Request, Response, Status};

/// The most requests one log keeps; later ones are counted but not kept. The client sends at
/// most one request every 50 ms, so a run stays far below it.
pub const SERVED_MAX: usize = 100_000;

/// How long a stalled instance holds each request it received while stalled before it
/// answers: longer than the gateways' upstream timeout in the simulation (2 s), so every such
/// request times out at its gateway, and bounded, so a stall never holds a request forever.
pub const STALL_HOLD_MS: u64 = 3_000;

/// The instances stalled now, by instance id (the host's name), shared by the step loop that
/// stalls and unstalls them and the witnesses that read it.
#[derive(Debug, Clone, Default)]
pub struct Stalls {
    inner: Arc<Mutex<BTreeSet<String>>>,
}

impl Stalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set(&self, instance: &str, stalled: bool) {
        if stalled {
            self.lock().insert(instance.to_owned());
        } else {
            self.lock().remove(instance);
        }
    }

    /// Ends every stall (the heal).
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn is_stalled(&self, instance: &str) -> bool {
        self.lock().contains(instance)
    }
}

/// One request as the instance that served it saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The instance that received the request.
    pub instance_id: String,
    /// `ForwardingReq.gateway_node`: the gateway that forwarded it.
    pub gateway_node: String,
    /// `ForwardingReq.deadline_unix_ms`: the forwarding gateway's wall clock when it began
    /// forwarding, plus its upstream timeout.
    pub deadline_unix_ms: u64,
    /// Simulated milliseconds since the start of the run when the request arrived.
    pub received_ms: u64,
    /// `ForwardingReq.request_id`: what the client's answer carries as `x-request-id` (or a
    /// GraphQL `call`'s `requestId`).
    pub request_id: String,
    /// Received while the instance was stalled: held for [`STALL_HOLD_MS`], past the
    /// gateway's deadline, before it was answered.
    pub stalled: bool,
    /// The value of the `via` field of `ForwardingReq.headers` (the last, if several), and of
    /// the `via` metadata of the `Send` call itself: the forwarding gateway's mark, which
    /// `scenario::fronts::edges` checks.
    pub via_forwarded: Option<Vec<u8>>,
    pub via_metadata: Option<Vec<u8>>,
}

/// The requests every witnessed instance received, shared by all of them (an instance that
/// crashes keeps its records: the log lives outside the host).
#[derive(Debug, Clone, Default)]
pub struct ServedLog {
    inner: Arc<Mutex<ServedInner>>,
}

#[derive(Debug, Default)]
struct ServedInner {
    served: Vec<Served>,
    dropped: usize,
}

impl ServedLog {
    fn push(&self, served: Served) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.served.len() < SERVED_MAX {
            inner.served.push(served);
        } else {
            inner.dropped += 1;
        }
    }

    /// The records kept, in arrival order, and how many were not kept.
    pub fn take(&self) -> (Vec<Served>, usize) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut inner.served), inner.dropped)
    }
}

/// Serves as `inner` does, after recording each request in `log`; while `stalls` names it,
/// only after holding the request for [`STALL_HOLD_MS`].
#[derive(Debug, Clone)]
pub struct Witness {
    pub inner: sample_service::Sample,
    pub log: ServedLog,
    pub stalls: Stalls,
}

impl Witness {
    /// The tonic service, with the sample service's message limits.
    pub fn into_server(self) -> ForwardingServiceServer<Self> {
        ForwardingServiceServer::new(self)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

#[tonic::async_trait]
impl ForwardingService for Witness {
    async fn send(
        &self,
        request: Request<ForwardingReq>,
    ) -> Result<Response<ForwardingResp>, Status> {
        let req = request.get_ref();
        let stalled = self.stalls.is_stalled(&self.inner.instance_id);
        self.log.push(Served {
            instance_id: self.inner.instance_id.clone(),
            gateway_node: req.gateway_node.clone(),
            deadline_unix_ms: req.deadline_unix_ms,
            received_ms: turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64),
            request_id: req.request_id.clone(),
            stalled,
            via_forwarded: req
                .headers
                .iter()
                .rev()
                .find(|h| h.name == "via")
                .map(|h| h.value.to_vec()),
            via_metadata: request.metadata().get("via").map(|v| v.as_bytes().to_vec()),
        });
        if stalled {
            tokio::time::sleep(Duration::from_millis(STALL_HOLD_MS)).await;
        }
        if let Some(answer) = sized_answer(&req.path) {
            return Ok(Response::new(answer));
        }
        if let Some(status) = status_answer(&req.path) {
            return Err(status);
        }
        self.inner.send(request).await
    }
}

/// The path of a call that asks the witness for an answer of a given size:
/// `/sim/answer/<body bytes>/<header fields>`, each field [`ANSWER_FIELD_BYTES`] of value.
pub const ANSWER_PATH: &str = "/sim/answer/";
/// The value bytes of each header field of a sized answer.
pub const ANSWER_FIELD_BYTES: usize = 4_000;
/// The largest body and the most fields a sized answer has, whatever the path asks.
const ANSWER_BODY_MAX: usize = 1024 * 1024;
const ANSWER_FIELDS_MAX: usize = 32;

/// The path of a call that asks the witness to fail it with a gRPC status:
/// `/sim/status/<code>/<message>`, the message one of [`StatusMessage`]'s words.
pub const STATUS_PATH: &str = "/sim/status/";

/// The message of a status a `/sim/status/..` path asks for: chosen so that a status is taken
/// for something else only by a gateway that reads one of its parts alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMessage {
    /// A message of the service's own.
    Plain,
    /// The message with which a gateway refuses a call as a loop
    /// ([`switchyard_core::hops::LOOP_GRPC_MESSAGE`]).
    Loop,
    /// How tonic's own refusal of an answer past the decoding limit begins.
    DecodeLimit,
}

impl StatusMessage {
    pub const ALL: [StatusMessage; 3] = [Self::Plain, Self::Loop, Self::DecodeLimit];

    /// The word for it in a path.
    pub fn word(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Loop => "loop",
            Self::DecodeLimit => "limit",
        }
    }

    /// The status message itself.
    pub fn text(self) -> &'static str {
        match self {
            Self::Plain => "the witness fails this call as asked",
            Self::Loop => switchyard_core::hops::LOOP_GRPC_MESSAGE,
            // tonic 0.14's wording (`codec/decode.rs`), which the gateway's classification
            // pins in a test of its own.
            Self::DecodeLimit => {
                "Error, decoded message length too large: found 1 bytes, the limit is: 0 bytes"
            }
        }
    }
}

/// The status a `/sim/status/..` path asks for, `None` for any other path or one that does
/// not parse.
fn status_answer(path: &str) -> Option<Status> {
    let (code, word) = path.strip_prefix(STATUS_PATH)?.split_once('/')?;
    let code = tonic::Code::from_i32(code.parse().ok()?);
    let message = StatusMessage::ALL.into_iter().find(|m| m.word() == word)?;
    Some(Status::new(code, message.text()))
}

/// The answer a `/sim/answer/..` path asks for, `None` for any other path (served by the
/// sample service) or one that does not parse.
fn sized_answer(path: &str) -> Option<ForwardingResp> {
    let (body, fields) = path.strip_prefix(ANSWER_PATH)?.split_once('/')?;
    let body: usize = body.parse().ok()?;
    let fields: usize = fields.parse().ok()?;
    Some(ForwardingResp {
        status: 200,
        headers: (0..fields.min(ANSWER_FIELDS_MAX))
            .map(|i| Header {
                name: format!("x-sim-pad-{i}"),
                value: vec![b'h'; ANSWER_FIELD_BYTES].into(),
            })
            .collect(),
        body: vec![b'b'; body.min(ANSWER_BODY_MAX)].into(),
    })
}
