//! A sample Switchyard service in Rust, meant to be copied.
//!
//! * [`Sample`] implements `ForwardingService.Send`, the one rpc a service needs.
//! * [`keep_registered`] registers the instance through a gateway's gRPC `Registration`
//!   service, renews its lease as the gateway advises, and deregisters on shutdown.
//!
//! Routes (the path below the service prefix, so `/sample/hello` through the gateway):
//!
//! | path | answer |
//! | --- | --- |
//! | `/hello` | a JSON greeting naming the instance |
//! | `/echo` | the request as the service received it, as JSON (headers included: the claims a gateway forwards, such as `x-auth-subject`, show here) |
//! | `/test/echo-body` | the request body as it came, with its content type (for benchmarks) |
//! | `/test/status/{n}` | a response with status `n` (any number, for testing the gateway) |
//! | `/test/grpc-error/{code}` | fails the rpc with gRPC status `code` |
//! | `/test/sleep/{ms}` | answers after `ms` milliseconds (at most 60 s) |
//! | `/test/bad-header` | a response header whose value holds CR LF |
//! | anything else | 404 with a JSON error |
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::forwarding::forwarding_service_server::{
    ForwardingService, ForwardingServiceServer,
};
use switchyard_proto::forwarding::{ForwardingReq, ForwardingResp, Header};
use switchyard_proto::registry::registration_client::RegistrationClient;
use switchyard_proto::registry::{DeregisterRequest, RegisterRequest};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The sample service's `ForwardingService` implementation.
#[derive(Debug, Clone)]
pub struct Sample {
    pub service: String,
    pub instance_id: String,
}

impl Sample {
    pub fn new(service: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            instance_id: instance_id.into(),
        }
    }

    /// The tonic service, ready for `Server::add_service` or `Routes::new`.
    pub fn into_server(self) -> ForwardingServiceServer<Self> {
        ForwardingServiceServer::new(self)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }

    fn json(&self, status: u32, value: &serde_json::Value) -> ForwardingResp {
        ForwardingResp {
            status,
            headers: vec![
                header("content-type", "application/json"),
                header("x-served-by", &self.instance_id),
            ],
            body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        }
    }

    fn echo(&self, req: &ForwardingReq) -> serde_json::Value {
        let headers: Vec<_> = req
            .headers
            .iter()
            .map(|h| serde_json::json!([h.name, String::from_utf8_lossy(&h.value)]))
            .collect();
        serde_json::json!({
            "instance": self.instance_id,
            "method": req.method,
            "scheme": req.scheme,
            "authority": req.authority,
            "path": req.path,
            "query": req.raw_query,
            "headers": headers,
            "body": String::from_utf8_lossy(&req.body),
            "http_version": req.http_version,
            "client_addr": req.client_addr,
            "request_id": req.request_id,
            "deadline_unix_ms": req.deadline_unix_ms,
            "service": req.service,
            "gateway_node": req.gateway_node,
            "traceparent": req.traceparent,
        })
    }
}

/// The request body back, under the request's content type: the cheapest answer a service
/// can give, so a benchmark measures the hop and not the service.
fn echo_body(req: ForwardingReq) -> ForwardingResp {
    let content_type = req
        .headers
        .into_iter()
        .find(|h| h.name == "content-type")
        .map(|h| h.value)
        .unwrap_or_else(|| Bytes::from_static(b"application/octet-stream"));
    ForwardingResp {
        status: 200,
        headers: vec![Header {
            name: "content-type".to_owned(),
            value: content_type,
        }],
        body: req.body,
    }
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_owned(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

#[tonic::async_trait]
impl ForwardingService for Sample {
    async fn send(
        &self,
        request: Request<ForwardingReq>,
    ) -> Result<Response<ForwardingResp>, Status> {
        let req = request.into_inner();
        tracing::debug!(request_id = %req.request_id, traceparent = %req.traceparent, gateway = %req.gateway_node, method = %req.method, path = %req.path.chars().take(256).collect::<String>(), "request");
        let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let resp = match segments.as_slice() {
            ["hello"] => self.json(
                200,
                &serde_json::json!({
                    "message": format!("hello from {}/{}", self.service, self.instance_id),
                    "service": self.service,
                    "instance": self.instance_id,
                    "language": "rust",
                }),
            ),
            ["echo"] => self.json(200, &self.echo(&req)),
            ["test", "echo-body"] => echo_body(req),
            ["test", "status", n] => {
                let status = n
                    .parse()
                    .map_err(|_| Status::invalid_argument("status must be a number"))?;
                self.json(status, &serde_json::json!({ "status": status }))
            }
            ["test", "grpc-error", code] => {
                let code: i32 = code
                    .parse()
                    .map_err(|_| Status::invalid_argument("code must be a number"))?;
                if code == 0 {
                    return Err(Status::invalid_argument("code 0 is OK, not an error"));
                }
                return Err(Status::new(
                    tonic::Code::from_i32(code),
                    "error requested by the caller",
                ));
            }
            ["test", "sleep", ms] => {
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| Status::invalid_argument("ms must be a number"))?;
                tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
                self.json(200, &serde_json::json!({ "slept_ms": ms.min(60_000) }))
            }
            ["test", "bad-header"] => ForwardingResp {
                status: 200,
                headers: vec![header("x-bad", "a\r\nset-cookie: injected=1")],
                body: Bytes::new(),
            },
            _ => self.json(
                404,
                &serde_json::json!({ "error": "no such route", "path": req.path }),
            ),
        };
        Ok(Response::new(resp))
    }
}

/// How to register one instance.
#[derive(Debug, Clone)]
pub struct RegistrationSpec {
    pub service: String,
    pub instance_id: String,
    /// The address gateways reach this instance at, `http://host:port`.
    pub addr: String,
    pub lease_ms: u64,
    /// The control credential (`switchyard token issue`), sent as `authorization: Bearer`
    /// with every registration, renewal and deregistration; `None` for a gateway whose
    /// `control.auth` is `"none"`.
    pub token: Option<String>,
}

/// `message` as a request carrying the instance's credential, if it has one.
fn with_credential<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // Trimmed: a token read from a file or a Secret often ends with a line end.
    if let Some(value) = token.and_then(|t| format!("Bearer {}", t.trim()).parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Registers the instance through `client`, renews its lease until `shutdown`, then
/// deregisters. A failed registration or renewal is retried with a bounded backoff, so the
/// instance comes back by itself after a gateway restart or an eviction.
pub async fn keep_registered(
    mut client: RegistrationClient<Channel>,
    spec: RegistrationSpec,
    shutdown: CancellationToken,
) {
    let request = RegisterRequest {
        service: spec.service.clone(),
        instance_id: spec.instance_id.clone(),
        addr: spec.addr.clone(),
        metadata: [("language".to_owned(), "rust".to_owned())].into(),
        lease_ms: spec.lease_ms,
    };
    let mut registered = false;
    let mut retry = Duration::from_millis(100);
    loop {
        let token = spec.token.as_deref();
        let call = if registered {
            client.renew(with_credential(request.clone(), token)).await
        } else {
            client
                .register(with_credential(request.clone(), token))
                .await
        };
        let wait = match call {
            Ok(resp) => {
                if !registered {
                    tracing::info!(service = %spec.service, instance = %spec.instance_id, addr = %spec.addr, "registered");
                }
                registered = true;
                retry = Duration::from_millis(100);
                Duration::from_millis(resp.into_inner().renew_after_ms.max(100))
            }
            Err(status) => {
                // Register again from scratch: the gateway may have restarted or evicted us.
                registered = false;
                tracing::warn!(code = ?status.code(), message = status.message(), retry_ms = retry.as_millis() as u64, "registration failed; retrying");
                let wait = retry;
                retry = (retry * 2).min(Duration::from_secs(5));
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    let deregister = client.deregister(with_credential(
        DeregisterRequest {
            service: spec.service.clone(),
            instance_id: spec.instance_id.clone(),
        },
        spec.token.as_deref(),
    ));
    match tokio::time::timeout(Duration::from_secs(2), deregister).await {
        Ok(Ok(_)) => tracing::info!(instance = %spec.instance_id, "deregistered"),
        Ok(Err(status)) => tracing::warn!(message = status.message(), "deregistration failed"),
        Err(_) => tracing::warn!("deregistration timed out"),
    }
}
