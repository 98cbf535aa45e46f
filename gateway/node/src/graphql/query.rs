//! The query root: calling services, and reading the registry and the node.

use std::sync::Arc;

use async_graphql::{Context, Json, Object};
use bytes::Bytes;
use http::Method;
use switchyard_core::GatewayError;
use switchyard_core::planted::{self, Bug};
use switchyard_core::translate::{self, Call};

use super::types::{CallResult, Header, Service};
use super::{Backend, Carrier, backend, field_error, null_with_call_error, reader};
use crate::pipeline::{Parent, RequestContext, Start};
use crate::status::NodeStatus;
use crate::telemetry::Front;

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
        let backend = backend(ctx)?;
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
        match forward_call(backend, carrier, args).await {
            Forwarded {
                result: Ok(answer), ..
            } => Ok(Some(answer)),
            Forwarded {
                request_id,
                result: Err(_),
                ..
            } if planted::active(Bug::CallOkOnError) => Ok(Some(CallResult {
                status: 200,
                headers: Vec::new(),
                body: String::new(),
                json: None,
                request_id,
            })),
            Forwarded {
                request_id,
                response_headers,
                result: Err(error),
            } => null_with_call_error(ctx, &error, &request_id, &response_headers),
        }
    }

    /// The services this node's registry lists, in name order, with their instances
    /// (deregistered ones left out). `name` narrows the list to one service.
    async fn services(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
    ) -> async_graphql::Result<Vec<Service>> {
        Ok(services(reader(ctx)?, name.as_deref()))
    }

    /// One service, or null when this node lists no instance of it (never registered, or
    /// every instance deregistered).
    async fn service(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<Option<Service>> {
        Ok(services(reader(ctx)?, Some(&name)).into_iter().next())
    }

    /// This gateway node as it sees itself.
    async fn node(&self, ctx: &Context<'_>) -> async_graphql::Result<NodeStatus> {
        Ok(reader(ctx)?.status.node())
    }
}

/// A call's outcome, with what its error needs: the request id it went by and the headers
/// the policies left for its answer (on success they are in the result's headers already).
struct Forwarded {
    request_id: String,
    response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    result: Result<CallResult, GatewayError>,
}

/// Forwards one call through the request pipeline.
async fn forward_call(backend: &Arc<Backend>, carrier: &Carrier, args: CallArgs) -> Forwarded {
    let call = Call {
        service: &args.service,
        method: &args.method,
        path: &args.path,
        query: &args.query,
        headers: &args.headers,
        body: Bytes::from(args.body.into_bytes()),
    };
    let pipeline = &backend.pipeline;
    // A method that does not parse is refused by the translator; until then it is counted
    // and logged as `OTHER`.
    let method = Method::from_bytes(args.method.as_bytes())
        .or_else(|_| Method::from_bytes(b"OTHER"))
        .unwrap_or_default();
    let mut exchange = pipeline.begin(Start {
        front: Front::GraphqlCall,
        client_addr: carrier.client,
        request_id: translate::call_request_id(&call),
        parent: Parent::Translated,
        method: &method,
        path: &args.path,
        service: Some(&args.service),
        query: Some(&args.query),
    });
    let result = send(backend, carrier, call, &mut exchange.ctx).await;
    let request_id = exchange.ctx.request_id().to_owned();
    let response_headers = match &result {
        Ok(_) => Vec::new(),
        Err(_) => exchange.ctx.response_headers().to_vec(),
    };
    pipeline.finish(exchange, result.as_ref().map(|answer| answer.status));
    Forwarded {
        request_id,
        response_headers,
        result,
    }
}

async fn send(
    backend: &Backend,
    carrier: &Carrier,
    call: Call<'_>,
    ctx: &mut RequestContext,
) -> Result<CallResult, GatewayError> {
    let pipeline = &backend.pipeline;
    let req = translate::call_to_forwarding_req(
        call,
        &carrier.head(),
        &backend.call_limits,
        &pipeline.forward_context(ctx),
    )?;
    let response = pipeline.forward(ctx, req).await?;
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
        request_id: ctx.request_id().to_owned(),
    })
}

/// The registry's services as views, deregistered instances and services left without any
/// instance left out; only `only` if given.
pub fn services(backend: &Backend, only: Option<&str>) -> Vec<Service> {
    backend
        .status
        .services(only)
        .into_iter()
        .map(|(name, instances)| Service {
            name,
            instances: instances.into_iter().map(Into::into).collect(),
        })
        .collect()
}
