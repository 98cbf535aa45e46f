//! The query root: calling services, and reading the registry and the node.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_graphql::{Context, Json, Object};
use bytes::Bytes;
use switchyard_core::GatewayError;
use switchyard_core::registry::{EntryState, Removal};
use switchyard_core::trace::{self, Span};
use switchyard_core::translate::{self, Call, ForwardContext};

use super::types::{CallResult, Header, Instance, Service};
use super::{Carrier, field_error, node, null_with_error};
use crate::node::{Node, NodeStatus};
use crate::otlp;

/// The query root.
#[derive(Debug, Default, Clone, Copy)]
pub struct Query;

/// A call's arguments, owned.
struct CallArgs {
    service: String,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// Calls to services, and views of the registry and of this node.
#[Object]
impl Query {
    /// Sends one request to a live instance of `service`, exactly as REST would send
    /// `method /{service}{path}?{query}` with these headers and body: the same translation,
    /// routing, balancing, retries and limits. Headers the client's own HTTP request carried
    /// for forwarding and tracing (`host`, `x-forwarded-*`, `forwarded`, `traceparent`,
    /// `tracestate`, `baggage`) are inherited unless the call sets them. Calls aliased side by
    /// side in one operation run concurrently. A gateway error leaves this field null, with
    /// the error (and its `extensions.code`) in `errors`; sibling fields are not affected.
    #[allow(clippy::too_many_arguments)] // One argument per part of the HTTP request.
    async fn call(
        &self,
        ctx: &Context<'_>,
        service: String,
        #[graphql(default_with = "\"GET\".to_owned()")] method: String,
        #[graphql(default_with = "\"/\".to_owned()")] path: String,
        #[graphql(default)] query: String,
        #[graphql(default)] headers: Vec<Header>,
        #[graphql(default)] body: String,
    ) -> async_graphql::Result<Option<CallResult>> {
        let node = node(ctx)?;
        let carrier = ctx.data::<Carrier>().map_err(|_| {
            field_error(
                &GatewayError::Internal {
                    detail: "a call outside an HTTP request".to_owned(),
                },
                None,
            )
        })?;
        let args = CallArgs {
            service,
            method,
            path,
            query,
            headers: headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body,
        };
        match forward_call(node, carrier, args).await {
            (_, Ok(answer)) => Ok(Some(answer)),
            (request_id, Err(error)) => null_with_error(ctx, &error, Some(&request_id)),
        }
    }

    /// The services this node's registry lists, in name order, with their instances
    /// (deregistered ones left out). `name` narrows the list to one service.
    async fn services(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
    ) -> async_graphql::Result<Vec<Service>> {
        Ok(services(node(ctx)?, name.as_deref()))
    }

    /// One service, or null when this node lists no instance of it (never registered, or
    /// every instance deregistered).
    async fn service(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<Option<Service>> {
        Ok(services(node(ctx)?, Some(&name)).into_iter().next())
    }

    /// This gateway node as it sees itself.
    async fn node(&self, ctx: &Context<'_>) -> async_graphql::Result<NodeStatus> {
        Ok(node(ctx)?.status())
    }
}

/// Forwards one call; returns the request id it went by, whatever the outcome.
async fn forward_call(
    node: &Arc<Node>,
    carrier: &Carrier,
    args: CallArgs,
) -> (String, Result<CallResult, GatewayError>) {
    let call = Call {
        service: &args.service,
        method: &args.method,
        path: &args.path,
        query: &args.query,
        headers: &args.headers,
        body: Bytes::from(args.body.into_bytes()),
    };
    let request_id = translate::call_request_id(&call)
        .map(str::to_owned)
        .unwrap_or_else(|| node.new_request_id());
    let started = tokio::time::Instant::now();
    let start_unix_ms = node.now_ms();
    let mut span = None;
    let result = send(node, carrier, call, &request_id, &mut span).await;
    let elapsed = started.elapsed();
    let path: String = args.path.chars().take(256).collect();
    let (service, method) = (&args.service, &args.method);
    let trace_id = span.map(|s| s.trace_id()).unwrap_or(trace::TraceId(0));
    let status = match &result {
        Ok(answer) => {
            tracing::debug!(%request_id, %trace_id, %service, %method, %path, status = answer.status, elapsed_us = elapsed.as_micros() as u64, "graphql call done");
            answer.status
        }
        Err(error) if error.http_status() >= 500 => {
            tracing::warn!(%request_id, %trace_id, %service, %method, %path, code = %error.code(), %error, "graphql call failed");
            error.http_status()
        }
        Err(error) => {
            tracing::info!(%request_id, %trace_id, %service, %method, %path, code = %error.code(), %error, "graphql call refused");
            error.http_status()
        }
    };
    if let Some(span) = span {
        otlp::export(
            node.exporter.as_ref(),
            otlp::Finished {
                span,
                method,
                path: &path,
                service,
                status,
                request_id: &request_id,
                start_unix_ms,
                elapsed,
            },
        );
    }
    (request_id, result)
}

async fn send(
    node: &Node,
    carrier: &Carrier,
    call: Call<'_>,
    request_id: &str,
    span: &mut Option<Span>,
) -> Result<CallResult, GatewayError> {
    let service = call.service.to_owned();
    let ctx = ForwardContext {
        scheme: "http",
        client_addr: Some(carrier.client),
        gateway_node: node.id(),
        request_id,
        deadline_unix_ms: node.now_ms() + node.config().upstream.timeout_ms,
    };
    let mut req = translate::call_to_forwarding_req(call, &carrier.head(), &node.limits(), &ctx)?;
    // The translator kept the caller's traceparent only if it is valid; the call's span is its
    // child, or the root of a new trace.
    let incoming = Some(req.traceparent.as_str()).filter(|t| !t.is_empty());
    let call_span = node.with_rng(|rng| Span::start(incoming, rng));
    trace::set_parent(&mut req, &call_span);
    *span = Some(call_span);
    let resp = node.forward(req).await?;
    let response = translate::to_http_response(resp)
        .map_err(|reason| GatewayError::BadUpstreamResponse { service, reason })?;
    let (parts, body) = response.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
        .collect();
    Ok(CallResult {
        status: parts.status.as_u16(),
        headers,
        json: translate::body_json(&parts.headers, &body).map(Json),
        body: String::from_utf8_lossy(&body).into_owned(),
        request_id: request_id.to_owned(),
    })
}

/// The registry's services as views, deregistered instances and services left without any
/// instance left out; only `only` if given.
pub fn services(node: &Node, only: Option<&str>) -> Vec<Service> {
    let now = node.now_ms();
    let registry = node.registry();
    let mut by_name: BTreeMap<&str, Vec<Instance>> = BTreeMap::new();
    let entries: Box<dyn Iterator<Item = _>> = match only {
        Some(service) => Box::new(registry.service_entries(service)),
        None => Box::new(registry.entries()),
    };
    for (key, entry) in entries {
        if entry.state != EntryState::Removed(Removal::Deregistered) {
            by_name
                .entry(&key.service)
                .or_default()
                .push(Instance::new(node, key, entry, now));
        }
    }
    by_name
        .into_iter()
        .map(|(name, instances)| Service {
            name: name.to_owned(),
            instances,
        })
        .collect()
}
