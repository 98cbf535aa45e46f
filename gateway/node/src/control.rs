//! The control listener: instances register, renew and deregister here (REST under `/v1`, the
//! gRPC `Registration` service and GraphQL mutations at `/graphql`, all on the same port), and
//! operators read the registry and the node's state.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use switchyard_core::event::EventKind;
use switchyard_core::registration::Registration;
use switchyard_core::view::InstanceView;
use switchyard_core::{GatewayError, Stamp};
use switchyard_proto::registry as pb;
use switchyard_proto::registry::registration_server::{
    Registration as RegistrationService, RegistrationServer,
};

mod revocations;

use crate::outbox::Delivery;
use crate::registrar::{Caller, Registrar, Via};
use crate::respond::{detailed_error_response, json_response, read_body};
use crate::revocations::Revocations;
use crate::seams::ClientAddr;
use crate::status::Status;
use crate::tls::PeerCertificate;

/// Largest registration body accepted.
const REGISTRATION_BODY_BYTES_MAX: usize = 64 * 1024;

/// What the control handlers need.
#[derive(Debug)]
pub struct Control {
    pub registrar: Arc<Registrar>,
    pub status: Arc<Status>,
    /// The revocations of public tokens, when `redis.url` names a store.
    pub revocations: Option<Arc<Revocations>>,
}

/// Registration (REST and gRPC), registry views, revocations and `/metrics`. The composition root mounts
/// it beside the probes and the GraphQL front.
pub fn router(control: Arc<Control>) -> Router {
    let grpc = tonic::service::Routes::new(RegistrationServer::new(RegistrationApi {
        control: control.clone(),
    }))
    .into_axum_router();
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route(
            "/v1/revocations",
            get(revocations::list).post(revocations::revoke),
        )
        .route("/v1/services", get(list_services))
        .route("/v1/services/{service}", get(get_service))
        .route(
            "/v1/services/{service}/instances/{instance_id}",
            axum::routing::put(put_instance).delete(delete_instance),
        )
        .with_state(control)
        .merge(grpc)
}

/// The peer of a REST request, when the server recorded it.
fn peer(client: Option<Extension<ConnectInfo<ClientAddr>>>) -> Option<std::net::SocketAddr> {
    client.map(|Extension(ConnectInfo(ClientAddr(addr)))| addr)
}

/// The client certificate the listener verified, if any.
type Peer = Option<Extension<Arc<PeerCertificate>>>;

fn peer_certificate(peer: Peer) -> Option<Arc<PeerCertificate>> {
    peer.map(|Extension(cert)| cert)
}

/// A caller the registrar lets read the registry and the metrics (see
/// [`Registrar::authorize_read`]); extracting it answers a refused read.
struct Reader;

impl FromRequestParts<Arc<Control>> for Reader {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        control: &Arc<Control>,
    ) -> Result<Self, Self::Rejection> {
        let client = parts
            .extensions
            .get::<ConnectInfo<ClientAddr>>()
            .map(|ConnectInfo(ClientAddr(addr))| *addr);
        let certificate = parts.extensions.get::<Arc<PeerCertificate>>();
        control
            .registrar
            .authorize_read(&parts.headers, certificate.map(Arc::as_ref), client)
            .map(|()| Reader)
            .map_err(|error| detailed_error_response(&error, None))
    }
}

/// Prometheus text exposition of the node's metrics.
async fn metrics(State(control): State<Arc<Control>>, _: Reader) -> Response {
    let body = control.status.render_metrics().await;
    Response::builder()
        .header(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Body::from(body))
        .unwrap_or_default()
}

fn ok_json(value: &serde_json::Value) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// 200 once the change is on the bus; 202 while the gateway still holds it for the bus.
fn accepted_json(delivery: Delivery, value: &serde_json::Value) -> Response {
    let status = match delivery {
        Delivery::Published => StatusCode::OK,
        Delivery::Queued => StatusCode::ACCEPTED,
    };
    json_response(status, serde_json::to_vec(value).unwrap_or_default())
}

fn stamp_json(stamp: &Stamp) -> serde_json::Value {
    serde_json::json!({
        "physical_ms": stamp.physical_ms,
        "logical": stamp.logical,
        "node_id": stamp.node_id,
    })
}

/// An instance view as JSON.
fn instance_json(view: &InstanceView) -> serde_json::Value {
    let mut v = serde_json::json!({
        "service": view.service,
        "instance_id": view.instance_id,
        "state": view.state.as_str(),
        "stamp": stamp_json(&view.stamp),
    });
    if let Some(addr) = &view.addr {
        v["addr"] = addr.as_str().into();
        v["metadata"] = serde_json::to_value(&view.metadata).unwrap_or_default();
        v["lease_ms"] = view.lease_ms.unwrap_or_default().into();
        v["expires_unix_ms"] = view.expires_unix_ms.unwrap_or_default().into();
        if let Some(until) = view.ejected_until_unix_ms {
            v["ejected_until_unix_ms"] = until.into();
        }
    }
    v
}

/// Every service and its instances, deregistered ones left out.
async fn list_services(State(control): State<Arc<Control>>, _: Reader) -> Response {
    let services: Vec<_> = control
        .status
        .services(None)
        .into_iter()
        .map(|(name, instances)| {
            let instances: Vec<_> = instances.iter().map(instance_json).collect();
            serde_json::json!({ "service": name, "instances": instances })
        })
        .collect();
    ok_json(&serde_json::json!({ "services": services }))
}

async fn get_service(
    State(control): State<Arc<Control>>,
    _: Reader,
    Path(service): Path<String>,
) -> Response {
    let instances: Vec<_> = control
        .status
        .services(Some(&service))
        .into_values()
        .flatten()
        .map(|view| instance_json(&view))
        .collect();
    if instances.is_empty() {
        return detailed_error_response(&GatewayError::ServiceNotFound { service }, None);
    }
    ok_json(&serde_json::json!({ "service": service, "instances": instances }))
}

async fn cluster(State(control): State<Arc<Control>>, _: Reader) -> Response {
    ok_json(&serde_json::to_value(control.status.node()).unwrap_or_default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutInstance {
    addr: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    lease_ms: u64,
    /// `"register"` (default) or `"renew"`: which event the bus records.
    #[serde(default)]
    kind: Option<String>,
}

/// The caller of a REST request: its peer (when the server recorded it) and its headers.
fn rest_caller(
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    certificate: Peer,
    headers: HeaderMap,
) -> Caller {
    Caller::new(Via::Rest, peer(client), headers).with_peer(peer_certificate(certificate))
}

async fn put_instance(
    State(control): State<Arc<Control>>,
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    certificate: Peer,
    Path((service, instance_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut caller = rest_caller(client, certificate, headers);
    match register_rest(&control, &mut caller, service, instance_id, body).await {
        Ok(response) => response,
        Err(error) => detailed_error_response(&error, None),
    }
}

async fn register_rest(
    control: &Control,
    caller: &mut Caller,
    service: String,
    instance_id: String,
    body: Body,
) -> Result<Response, GatewayError> {
    let bytes = read_body(body, REGISTRATION_BODY_BYTES_MAX).await?;
    let put: PutInstance = serde_json::from_slice(&bytes).map_err(|e| GatewayError::InvalidArgument {
        field: "body",
        reason: format!("expected JSON {{\"addr\": \"host:port\", \"metadata\": {{..}}, \"lease_ms\": n}}: {e}"),
    })?;
    let kind = match put.kind.as_deref() {
        None | Some("register") => EventKind::Register,
        Some("renew") => EventKind::Renew,
        Some(other) => {
            return Err(GatewayError::InvalidArgument {
                field: "kind",
                reason: format!("{other:?} is neither \"register\" nor \"renew\""),
            });
        }
    };
    let registration = Registration {
        service,
        instance_id,
        addr: put.addr,
        metadata: put.metadata,
        lease_ms: put.lease_ms,
    };
    let registered = control
        .registrar
        .register(caller, registration, kind)
        .await?;
    let view = control
        .status
        .view(&registered.key, &registered.entry, control.status.now_ms());
    let mut body = instance_json(&view);
    body["renew_after_ms"] = registered.renew_after_ms.into();
    body["published"] = (registered.delivery == Delivery::Published).into();
    Ok(accepted_json(registered.delivery, &body))
}

async fn delete_instance(
    State(control): State<Arc<Control>>,
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    certificate: Peer,
    Path((service, instance_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut caller = rest_caller(client, certificate, headers);
    match control
        .registrar
        .deregister(&mut caller, &service, &instance_id)
        .await
    {
        Ok(gone) => accepted_json(
            gone.delivery,
            &serde_json::json!({
                "service": service,
                "instance_id": instance_id,
                "existed": gone.existed,
                "published": gone.delivery == Delivery::Published,
                "stamp": stamp_json(&gone.stamp),
            }),
        ),
        Err(error) => detailed_error_response(&error, None),
    }
}

/// The gRPC registration service.
#[derive(Debug, Clone)]
pub struct RegistrationApi {
    control: Arc<Control>,
}

fn to_status(error: &GatewayError) -> tonic::Status {
    tonic::Status::new(tonic::Code::from_i32(error.grpc_code()), error.to_string())
}

/// An instance view as protobuf.
fn instance_pb(view: InstanceView) -> pb::Instance {
    pb::Instance {
        service: view.service,
        instance_id: view.instance_id,
        addr: view.addr.unwrap_or_default(),
        metadata: view.metadata,
        lease_ms: view.lease_ms.unwrap_or_default(),
        expires_unix_ms: view.expires_unix_ms.unwrap_or_default(),
        stamp: Some((&view.stamp).into()),
    }
}

/// The caller of a gRPC request: the connection's peer, as the HTTP server recorded it, and
/// the request's metadata.
fn grpc_caller<T>(request: &tonic::Request<T>) -> Caller {
    let client = request
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(addr))| *addr);
    let certificate = request.extensions().get::<Arc<PeerCertificate>>().cloned();
    Caller::new(Via::Grpc, client, request.metadata().clone().into_headers()).with_peer(certificate)
}

impl RegistrationApi {
    async fn register_as(
        &self,
        request: tonic::Request<pb::RegisterRequest>,
        kind: EventKind,
    ) -> Result<tonic::Response<pb::RegisterResponse>, tonic::Status> {
        let mut caller = grpc_caller(&request);
        let r = request.into_inner();
        let registration = Registration {
            service: r.service,
            instance_id: r.instance_id,
            addr: r.addr,
            metadata: r.metadata,
            lease_ms: r.lease_ms,
        };
        let registered = self
            .control
            .registrar
            .register(&mut caller, registration, kind)
            .await
            .map_err(|e| to_status(&e))?;
        let status = &self.control.status;
        let view = status.view(&registered.key, &registered.entry, status.now_ms());
        Ok(tonic::Response::new(pb::RegisterResponse {
            instance: Some(instance_pb(view)),
            renew_after_ms: registered.renew_after_ms,
            published: registered.delivery == Delivery::Published,
        }))
    }
}

#[tonic::async_trait]
impl RegistrationService for RegistrationApi {
    async fn register(
        &self,
        request: tonic::Request<pb::RegisterRequest>,
    ) -> Result<tonic::Response<pb::RegisterResponse>, tonic::Status> {
        self.register_as(request, EventKind::Register).await
    }

    async fn renew(
        &self,
        request: tonic::Request<pb::RegisterRequest>,
    ) -> Result<tonic::Response<pb::RegisterResponse>, tonic::Status> {
        self.register_as(request, EventKind::Renew).await
    }

    async fn deregister(
        &self,
        request: tonic::Request<pb::DeregisterRequest>,
    ) -> Result<tonic::Response<pb::DeregisterResponse>, tonic::Status> {
        let mut caller = grpc_caller(&request);
        let r = request.into_inner();
        let gone = self
            .control
            .registrar
            .deregister(&mut caller, &r.service, &r.instance_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(tonic::Response::new(pb::DeregisterResponse {
            existed: gone.existed,
            published: gone.delivery == Delivery::Published,
        }))
    }

    async fn list(
        &self,
        request: tonic::Request<pb::ListRequest>,
    ) -> Result<tonic::Response<pb::ListResponse>, tonic::Status> {
        let caller = grpc_caller(&request);
        self.control
            .registrar
            .authorize_read(&caller.headers, caller.peer.as_deref(), caller.client_addr)
            .map_err(|e| to_status(&e))?;
        let service = request.into_inner().service;
        let only = Some(service.as_str()).filter(|s| !s.is_empty());
        let instances = self
            .control
            .status
            .live(only)
            .into_iter()
            .map(instance_pb)
            .collect();
        Ok(tonic::Response::new(pb::ListResponse { instances }))
    }
}
