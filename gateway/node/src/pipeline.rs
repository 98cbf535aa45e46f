//! The request pipeline: the one path of every forwarded request, a REST request or a GraphQL
//! `call` alike.
//!
//! ```text
//! front ──begin──► RequestContext (request id, span, client, in-flight)
//!       ──translate (the front's own)──► ForwardingReq
//!       ──forward──► policies in order ──► Forwarder (choose, call, retry)
//!       ──finish──► Telemetry (access log, metrics, span export), Auditor (when on)
//! ```
//!
//! With no policy and no auditor, a REST request ([`Pipeline::forward_head`]) is translated
//! straight into the call's protobuf, without the intermediate `ForwardingReq` (nothing would
//! read it; decision 0032).
//!
//! A front calls [`Pipeline::begin`] first, so a request refused at any later step — by the
//! translator, by a policy, by the service — is logged, counted and (once it has a span)
//! traced the same way; then
//! [`Pipeline::forward`] with the translated request; then [`Pipeline::finish`] with the
//! outcome. The fronts add no routing, balancing, retry or policy of their own.
//!
//! * [`policy`]: the [`Policy`] trait, a check that may refuse a request.
//! * [`audit_required`]: refuses the requests of services in `required` audit mode while
//!   they cannot be audited.
//! * [`policies`]: the built-in policies, in order.
//! * [`jwt`]: JWT authentication on the public front (`[jwt]`).
//! * [`rate_limit`]: token buckets by client, subject, service or header, kept on this
//!   gateway or in Redis (docs/decisions/0020).
//!
//! A policy may also leave headers for the client's answer
//! ([`RequestContext::add_response_header`]): [`Pipeline::forward`] adds them to the
//! service's answer, and the fronts add them to a refusal (REST to its error response,
//! GraphQL to the call's error extensions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use rand::Rng;
use switchyard_core::GatewayError;
use switchyard_core::hops;
use switchyard_core::identity::Identity;
use switchyard_core::trace::{self, Span};
use switchyard_core::translate::{self, ForwardContext, RequestHead};
use switchyard_proto::forwarding::{ForwardingReq, ForwardingResp};

use crate::audit::redact::QUERY_CHARS_MAX;
use crate::audit::{Auditor, RequestFacts, RequestNotes};
use crate::forwarding::{Answered, Forwarder, Outgoing};
use crate::store::Store;
use crate::sync::SharedRng;
use crate::telemetry::metrics::InFlightGuard;
use crate::telemetry::{Finished, Front, Telemetry, UpstreamErrorKind};

pub mod audit_required;
pub mod jwt;
pub mod policies;
pub mod policy;
pub mod rate_limit;

pub use policy::Policy;

/// Characters of a request path kept for logs, spans and the context.
pub const PATH_CHARS_MAX: usize = 256;

/// Response headers the policies may leave for one answer; more are dropped (and logged).
pub const RESPONSE_HEADERS_MAX: usize = 16;

/// Where the gateway's span of a request takes its parent from.
#[derive(Debug, Clone, Copy)]
pub enum Parent<'a> {
    /// The client's `traceparent` header, read before translation (REST).
    Header(Option<&'a str>),
    /// The translated request's `traceparent` (a GraphQL call, whose translation decides
    /// which of the call's and the carrier's headers it inherits). No span exists until the
    /// call is translated.
    Translated,
}

/// What a front knows of a request when it begins.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub front: Front,
    pub client_addr: SocketAddr,
    /// The client's own request id, if it sent a plausible one.
    pub request_id: Option<&'a str>,
    pub parent: Parent<'a>,
    pub method: &'a Method,
    /// The path (for a GraphQL call, the call's path).
    pub path: &'a str,
    /// The service the request names, when the front knows it before translation.
    pub service: Option<&'a str>,
    /// The query string (without `?`), kept for the audit record only while auditing is on.
    pub query: Option<&'a str>,
}

/// Everything the gateway knows of one request while it is handled. Policies read it and may
/// fill in the identity and leave headers for the answer; nothing else in it changes once the
/// request has begun.
#[derive(Debug, Clone)]
pub struct RequestContext {
    front: Front,
    request_id: String,
    /// The gateway's span of this request, the service's parent.
    span: Option<Span>,
    client_addr: SocketAddr,
    /// When the answer is due: set when the request is translated, told to the service, and
    /// the bound of the policies and all attempts together.
    deadline: Option<tokio::time::Instant>,
    identity: Option<Identity>,
    method: Method,
    /// At most [`PATH_CHARS_MAX`] characters.
    path: String,
    /// The service named by a GraphQL call, at most [`PATH_CHARS_MAX`] characters (REST
    /// requests name it in the path).
    service: Option<String>,
    /// Where the service's name ends in `path`, once the REST front has routed the path
    /// ([`RequestContext::set_routed_service`]).
    service_end: Option<usize>,
    started: tokio::time::Instant,
    start_unix_ms: u64,
    /// Headers for the client's answer, whatever it is: at most [`RESPONSE_HEADERS_MAX`].
    response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// What the audit record needs beyond the rest; `None` while auditing is off, so that
    /// nothing of it costs anything then.
    audit: Option<Box<RequestNotes>>,
}

impl RequestContext {
    /// Leaves a header for the client's answer (a rate limit's `RateLimit`, say): added to
    /// the service's answer, or to the gateway's refusal. Past [`RESPONSE_HEADERS_MAX`] a
    /// header is dropped and logged.
    pub fn add_response_header(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        if self.response_headers.len() < RESPONSE_HEADERS_MAX {
            self.response_headers.push((name, value));
        } else {
            tracing::warn!(request_id = %self.request_id, header = %name, "response header dropped: the policies left too many");
        }
    }

    /// The headers the policies left for the answer, in the order they were added.
    pub fn response_headers(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        &self.response_headers
    }

    /// Appends the headers the policies left to `headers` (after the service's own).
    pub fn apply_response_headers(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.response_headers {
            headers.append(name.clone(), value.clone());
        }
    }

    pub fn front(&self) -> Front {
        self.front
    }

    /// The request id: the client's if it sent a plausible one, else the gateway's.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The gateway's span; `None` for a GraphQL call not yet translated.
    pub fn span(&self) -> Option<&Span> {
        self.span.as_ref()
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request path (a GraphQL call's own path), at most [`PATH_CHARS_MAX`] characters.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Who sent the request, once an authentication policy has established it.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Records who sent the request (an authentication policy's job).
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }

    /// The service the request names: a GraphQL call's, or the first segment of a REST path.
    pub fn service_name(&self) -> Option<&str> {
        self.service
            .as_deref()
            .or_else(|| self.service_end.and_then(|end| self.path.get(1..end)))
            .or_else(|| {
                translate::route(&self.path)
                    .ok()
                    .map(|(service, _)| service)
            })
    }

    /// Notes that the path's first segment routed as `service`, so that finishing the request
    /// does not route the path again (a quarter of a percent of a request's instructions).
    pub fn set_routed_service(&mut self, service: &str) {
        let end = 1 + service.len();
        let segment_ends = matches!(self.path.as_bytes().get(end), None | Some(b'/'));
        let one_segment = !service.is_empty() && !service.contains('/');
        if one_segment && self.path.get(1..end) == Some(service) && segment_ends {
            self.service_end = Some(end);
        }
    }
}

/// A request being handled: its context, and its place in the in-flight gauge until it is
/// finished.
#[derive(Debug)]
pub struct Exchange<'p> {
    pub ctx: RequestContext,
    _in_flight: InFlightGuard<'p>,
}

/// `n` as 32 lowercase hex digits, two to a byte from a table: the formatting machinery cost
/// a visible share per request.
fn request_id_of(n: u128) -> String {
    let mut digits = [0u8; 32];
    switchyard_core::trace::write_hex(&n.to_be_bytes(), &mut digits);
    // Only hex digits were written.
    std::str::from_utf8(&digits).unwrap_or_default().to_owned()
}

/// The first `n` characters of `s` (all of it when shorter), without copying them one by one.
fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// Begins, polices, forwards and finishes requests.
pub struct Pipeline {
    store: Arc<Store>,
    forwarder: Arc<Forwarder>,
    telemetry: Arc<Telemetry>,
    rng: Arc<SharedRng>,
    policies: Vec<Arc<dyn Policy>>,
    /// This gateway's name in `Via`.
    via_name: String,
    auditor: Option<Arc<Auditor>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.policies.iter().map(|p| p.name()).collect();
        f.debug_struct("Pipeline")
            .field("policies", &names)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub fn new(
        store: Arc<Store>,
        forwarder: Arc<Forwarder>,
        telemetry: Arc<Telemetry>,
        rng: Arc<SharedRng>,
        policies: Vec<Arc<dyn Policy>>,
        auditor: Option<Arc<Auditor>>,
    ) -> Self {
        let via_name = hops::pseudonym(store.node_id());
        Self {
            store,
            forwarder,
            telemetry,
            rng,
            policies,
            via_name,
            auditor,
        }
    }

    /// A fresh request id: 32 hex digits from the node's seeded generator.
    pub fn new_request_id(&self) -> String {
        request_id_of(self.rng.with(|r| r.random()))
    }

    /// Begins a request: its id (the client's, if plausible), its span (unless it waits for
    /// translation), its start time and its place in the in-flight gauge.
    pub fn begin(&self, start: Start<'_>) -> Exchange<'_> {
        let in_flight = self.telemetry.metrics().in_flight(start.front);
        let request_id = match start.request_id {
            Some(id) => id.to_owned(),
            None => self.new_request_id(),
        };
        let span = match start.parent {
            Parent::Header(incoming) => Some(self.rng.with(|rng| Span::start(incoming, rng))),
            Parent::Translated => None,
        };
        let ctx = RequestContext {
            front: start.front,
            request_id,
            span,
            client_addr: start.client_addr,
            deadline: None,
            identity: None,
            method: start.method.clone(),
            path: first_chars(start.path, PATH_CHARS_MAX).to_owned(),
            service: start
                .service
                .map(|s| first_chars(s, PATH_CHARS_MAX).to_owned()),
            service_end: None,
            started: tokio::time::Instant::now(),
            start_unix_ms: self.store.now_ms(),
            response_headers: Vec::new(),
            audit: self.auditor.as_ref().map(|_| {
                Box::new(RequestNotes {
                    query: start
                        .query
                        .filter(|q| !q.is_empty())
                        .map(|q| q.chars().take(QUERY_CHARS_MAX).collect()),
                    ..RequestNotes::default()
                })
            }),
        };
        Exchange {
            ctx,
            _in_flight: in_flight,
        }
    }

    /// What the translator needs of the context. Sets the request's deadline: the one the
    /// service is told, and the one the policies and every attempt together must meet.
    pub fn forward_context<'a>(&'a self, ctx: &'a mut RequestContext) -> ForwardContext<'a> {
        let timeout_ms = self.forwarder.timeout_ms();
        ctx.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
        ForwardContext {
            scheme: "http",
            client_addr: Some(ctx.client_addr),
            gateway_node: self.store.node_id(),
            request_id: &ctx.request_id,
            deadline_unix_ms: self.store.now_ms() + timeout_ms,
            via_name: &self.via_name,
            hops_max: self.forwarder.hops_max(),
        }
    }

    /// Runs the policies in order, forwards the request with the gateway's span as the
    /// service's parent, and turns the service's answer into an HTTP response, with the
    /// headers the policies left for it. The first refusal is the answer (its headers are the
    /// front's to add: [`RequestContext::response_headers`]).
    pub async fn forward(
        &self,
        ctx: &mut RequestContext,
        req: ForwardingReq,
    ) -> Result<http::Response<Bytes>, GatewayError> {
        let resp = self.call(ctx, req).await?;
        self.answer(ctx, resp)
    }

    /// Forwards a client's HTTP request (the REST front's): as [`Pipeline::forward`] of its
    /// translation. While no policy and no audit reads requests, it is translated straight
    /// into the message sent ([`Outgoing::from_head`]) and no `ForwardingReq` is built.
    pub async fn forward_head(
        &self,
        ctx: &mut RequestContext,
        head: &RequestHead<'_>,
        body: Bytes,
    ) -> Result<http::Response<Bytes>, GatewayError> {
        if !self.policies.is_empty() || self.auditor.is_some() {
            let req = translate::to_forwarding_req(head, body, &self.forward_context(ctx))?;
            return self.forward(ctx, req).await;
        }
        let span = self.span(ctx, None);
        let traceparent = span.traceparent_text();
        let (call, service) = Outgoing::from_head(
            head,
            &body,
            &self.forward_context(ctx),
            traceparent.as_str(),
        )?;
        drop(body);
        let deadline = self.deadline(ctx);
        let Answered { resp, .. } = self.forwarder.forward(service, &call, deadline).await?;
        self.answer(ctx, resp)
    }

    /// The gateway's span of the request, started now (the child of `incoming`, a valid
    /// traceparent, or the root of a new trace) if it has none yet.
    fn span(&self, ctx: &mut RequestContext, incoming: Option<&str>) -> Span {
        *ctx.span
            .get_or_insert_with(|| self.rng.with(|rng| Span::start(incoming, rng)))
    }

    /// When the answer is due (set by [`Pipeline::forward_context`]).
    fn deadline(&self, ctx: &RequestContext) -> tokio::time::Instant {
        ctx.deadline.unwrap_or_else(|| {
            tokio::time::Instant::now() + Duration::from_millis(self.forwarder.timeout_ms())
        })
    }

    /// The service's answer as the client's: noted for the audit, checked and translated,
    /// with the headers the policies left.
    fn answer(
        &self,
        ctx: &mut RequestContext,
        resp: ForwardingResp,
    ) -> Result<http::Response<Bytes>, GatewayError> {
        if let Some(auditor) = &self.auditor {
            let rules = auditor.rules(ctx.service_name().unwrap_or_default());
            let capture = rules.bodies.then(|| {
                let headers = resp.headers.iter().map(|h| (h.name.as_str(), &h.value[..]));
                rules.redaction.capture(headers, &resp.body)
            });
            if let Some(notes) = ctx.audit.as_deref_mut() {
                notes.bytes_out = resp.body.len() as u64;
                notes.response_capture = capture;
            }
        }
        let mut response = translate::to_http_response(resp).map_err(|reason| {
            let service = ctx.service_name().unwrap_or_default().to_owned();
            self.telemetry
                .metrics()
                .upstream_error(&service, UpstreamErrorKind::BadResponse);
            GatewayError::BadUpstreamResponse { service, reason }
        })?;
        ctx.apply_response_headers(response.headers_mut());
        Ok(response)
    }

    async fn call(
        &self,
        ctx: &mut RequestContext,
        mut req: ForwardingReq,
    ) -> Result<ForwardingResp, GatewayError> {
        // The translator kept the caller's traceparent only if it is valid; the span is its
        // child, or the root of a new trace.
        let incoming = Some(req.traceparent.as_str()).filter(|t| !t.is_empty());
        let span = self.span(ctx, incoming);
        let deadline = self.deadline(ctx);
        if let (Some(notes), Some(auditor)) = (ctx.audit.as_deref_mut(), &self.auditor) {
            notes.bytes_in = req.body.len() as u64;
            let rules = auditor.rules(&req.service);
            if rules.bodies {
                let headers = req.headers.iter().map(|h| (h.name.as_str(), &h.value[..]));
                notes.request_capture = Some(rules.redaction.capture(headers, &req.body));
            }
        }
        if !self.policies.is_empty() {
            self.police(ctx, &mut req).await?;
        }
        trace::set_parent(&mut req, &span);
        let call = Outgoing::of(&req)?;
        let Answered { resp, instance } = self
            .forwarder
            .forward(&req.service, &call, deadline)
            .await?;
        if let Some(notes) = ctx.audit.as_deref_mut() {
            notes.instance_id = instance.instance_id;
        }
        Ok(resp)
    }

    /// Runs the policies in order; the first refusal is the answer. A policy may add or strip
    /// headers, not send the request elsewhere: a changed service, method or path is refused
    /// as the gateway's own fault.
    async fn police(
        &self,
        ctx: &mut RequestContext,
        req: &mut ForwardingReq,
    ) -> Result<(), GatewayError> {
        let target = (req.service.clone(), req.method.clone(), req.path.clone());
        for policy in &self.policies {
            if let Err(error) = policy.check(ctx, req).await {
                tracing::debug!(request_id = %ctx.request_id, policy = policy.name(), code = %error.code(), "policy refused the request");
                return Err(error);
            }
            if (&req.service, &req.method, &req.path) != (&target.0, &target.1, &target.2) {
                return Err(GatewayError::Internal {
                    detail: format!(
                        "policy {} changed where the request goes; policies may change headers only",
                        policy.name()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Finishes a request with its answer's status, or the gateway's error: the one place
    /// where requests are logged, counted and their spans exported.
    pub fn finish(&self, mut exchange: Exchange<'_>, outcome: Result<u16, &GatewayError>) {
        if let Some(auditor) = &self.auditor {
            self.audit(auditor, &mut exchange.ctx, outcome);
        }
        let ctx = &exchange.ctx;
        let (status, error) = match outcome {
            Ok(status) => (status, None),
            Err(error) => (error.http_status(), Some(error)),
        };
        let service = ctx.service_name();
        self.telemetry.request_finished(&Finished {
            front: ctx.front,
            request_id: &ctx.request_id,
            span: ctx.span.as_ref(),
            method: &ctx.method,
            path: &ctx.path,
            service: self.known_service(service),
            named_service: service.unwrap_or_default(),
            status,
            error,
            identity: ctx.identity.as_ref(),
            start_unix_ms: ctx.start_unix_ms,
            elapsed: ctx.started.elapsed(),
        });
    }

    /// Hands the finished request to the auditor.
    fn audit(
        &self,
        auditor: &Auditor,
        ctx: &mut RequestContext,
        outcome: Result<u16, &GatewayError>,
    ) {
        let (status, error_code) = match outcome {
            Ok(status) => (status, None),
            Err(error) => (error.http_status(), Some(error.code())),
        };
        let notes = ctx.audit.take().map(|n| *n).unwrap_or_default();
        let front = match ctx.front {
            Front::Rest => switchyard_proto::audit::Front::Rest,
            Front::GraphqlCall => switchyard_proto::audit::Front::GraphqlCall,
            Front::Graphql => switchyard_proto::audit::Front::Unspecified,
        };
        let trace_id = ctx.span.map(|s| s.trace_id_hex()).unwrap_or_default();
        auditor.request(RequestFacts {
            time_unix_ms: self.store.now_ms(),
            request_id: &ctx.request_id,
            trace_id: &trace_id,
            front,
            client_addr: ctx.client_addr,
            identity: ctx.identity.as_ref(),
            method: ctx.method.as_str(),
            service: ctx.service_name().unwrap_or_default(),
            path: &ctx.path,
            status,
            error_code,
            latency_us: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            notes,
        });
    }

    /// The service if the registry knows it, else `""`: the label under which a request is
    /// counted, bounded by the registry so that random paths cannot grow the metrics.
    fn known_service<'s>(&self, service: Option<&'s str>) -> &'s str {
        match service {
            Some(s) if self.store.registry().knows_service(s) => s,
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_as_format_writes_them() {
        for n in [
            0,
            1,
            0xabc,
            u128::MAX,
            u128::MAX / 3,
            1 << 127,
            0x0123_4567_89ab_cdef << 61,
        ] {
            assert_eq!(request_id_of(n), format!("{n:032x}"));
        }
    }

    #[test]
    fn first_chars_cuts_at_a_character_not_a_byte() {
        assert_eq!(first_chars("/s/x", 256), "/s/x");
        assert_eq!(first_chars("/s/x", 2), "/s");
        assert_eq!(first_chars("/é/ü", 3), "/é/");
        assert_eq!(first_chars("", 0), "");
        assert_eq!(first_chars("é", 0), "");
    }

    #[test]
    fn the_policies_leave_at_most_the_bound_of_response_headers() {
        let mut ctx = rest_context("/s/x");
        for i in 0..RESPONSE_HEADERS_MAX + 5 {
            ctx.add_response_header(
                http::HeaderName::from_static("x-policy"),
                http::HeaderValue::from(i),
            );
        }
        assert_eq!(ctx.response_headers().len(), RESPONSE_HEADERS_MAX);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-policy", http::HeaderValue::from_static("service"));
        ctx.apply_response_headers(&mut headers);
        let values: Vec<_> = headers.get_all("x-policy").iter().collect();
        assert_eq!(values.len(), RESPONSE_HEADERS_MAX + 1);
        assert_eq!(values[0], "service", "the service's own header comes first");
    }

    fn rest_context(path: &str) -> RequestContext {
        RequestContext {
            front: Front::Rest,
            request_id: "r".to_owned(),
            span: None,
            client_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            deadline: None,
            identity: None,
            method: Method::GET,
            path: path.to_owned(),
            service: None,
            service_end: None,
            started: tokio::time::Instant::now(),
            start_unix_ms: 0,
            response_headers: Vec::new(),
            audit: None,
        }
    }

    #[test]
    fn a_routed_service_is_the_paths_first_segment_and_nothing_else() {
        let mut ctx = rest_context("/orders/v1/list");
        assert_eq!(ctx.service_name(), Some("orders"), "routed from the path");
        ctx.set_routed_service("orders");
        assert_eq!(ctx.service_end, Some(7));
        assert_eq!(ctx.service_name(), Some("orders"));

        // A name that is not the path's first segment is not taken.
        let mut ctx = rest_context("/orders/v1");
        ctx.set_routed_service("order");
        ctx.set_routed_service("billing");
        ctx.set_routed_service("orders/v1/longer-than-the-path");
        ctx.set_routed_service("orders/v1");
        ctx.set_routed_service("");
        assert_eq!(ctx.service_end, None);
        assert_eq!(ctx.service_name(), Some("orders"));

        // A name whose end falls inside a multi-byte character is not taken.
        let mut ctx = rest_context("/é");
        ctx.set_routed_service("x");
        assert_eq!(ctx.service_end, None);
        ctx.set_routed_service("\u{e9}");
        assert_eq!(ctx.service_end, Some(3));
        assert_eq!(ctx.service_name(), Some("é"));
    }
}
