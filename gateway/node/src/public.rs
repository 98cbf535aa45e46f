//! The REST front: `/{service}/{path}` on the public listener, through the request pipeline.
//! The composition root mounts it (when `public.rest` is on) beside the probes and the
//! GraphQL front.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::HeaderValue;
use switchyard_core::GatewayError;
use switchyard_core::translate::{self, Limits, RequestHead, X_REQUEST_ID_NAME};

use crate::pipeline::{Parent, Pipeline, RequestContext, Start};
use crate::respond::{error_response, read_body};
use crate::seams::ClientAddr;
use crate::serve::Direct;
use crate::telemetry::Front;

/// What the REST handler needs.
#[derive(Debug)]
pub struct Rest {
    pub pipeline: Arc<Pipeline>,
    pub limits: Limits,
    /// The paths the listener's router serves itself (the probes, `/graphql`): every other
    /// path is a service's.
    pub others: Vec<&'static str>,
}

/// REST forwarding for every path the router does not serve otherwise.
pub fn router(rest: Arc<Rest>) -> Router {
    Router::new().fallback(forward).with_state(rest)
}

/// The listener calls the REST front directly for every path but the router's own.
impl Direct for Rest {
    fn claims(&self, path: &str) -> bool {
        !self.others.contains(&path)
    }

    fn call(
        &self,
        request: Request,
        client: SocketAddr,
    ) -> impl Future<Output = Response> + Send + '_ {
        forward_from(self, client, request)
    }
}

async fn forward(
    State(rest): State<Arc<Rest>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    request: Request,
) -> Response {
    forward_from(&rest, client, request).await
}

async fn forward_from(rest: &Rest, client: SocketAddr, request: Request) -> Response {
    let pipeline = &rest.pipeline;
    let headers = request.headers();
    let mut exchange = pipeline.begin(Start {
        front: Front::Rest,
        client_addr: client,
        request_id: translate::client_request_id(headers),
        parent: Parent::Header(
            headers
                .get(translate::TRACEPARENT_NAME)
                .and_then(|v| v.to_str().ok()),
        ),
        method: request.method(),
        path: request.uri().path(),
        service: None,
        query: request.uri().query(),
    });
    let request_id = HeaderValue::from_str(exchange.ctx.request_id()).ok();
    let mut response = match handle(rest, &mut exchange.ctx, request).await {
        Ok(answer) => {
            pipeline.finish(exchange, Ok(answer.status().as_u16()));
            answer.map(Body::from)
        }
        Err(error) => {
            let mut response = error_response(&error, Some(exchange.ctx.request_id()));
            exchange.ctx.apply_response_headers(response.headers_mut());
            pipeline.finish(exchange, Err(&error));
            response
        }
    };
    if let Some(v) = request_id {
        response.headers_mut().insert(X_REQUEST_ID_NAME, v);
    }
    response
}

async fn handle(
    rest: &Rest,
    ctx: &mut RequestContext,
    request: Request,
) -> Result<http::Response<Bytes>, GatewayError> {
    let (parts, body) = request.into_parts();
    let head = RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
    };
    translate::check_head(&head, &rest.limits)?;
    // Refuse a bad route before reading a body that would be thrown away.
    let (service, _) = translate::route(parts.uri.path())?;
    ctx.set_routed_service(service);
    let body = read_body(body, rest.limits.body_bytes_max).await?;
    rest.pipeline.forward_head(ctx, &head, body).await
}
