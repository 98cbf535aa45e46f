//! The control listener: instances register, renew and deregister here (REST under `/v1`, the
//! gRPC `Registration` service and GraphQL mutations at `/graphql`, all on the same port), and
//! operators read the registry and the node's state.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use http::StatusCode;
use serde::Deserialize;
use switchyard_core::event::EventKind;
use switchyard_core::registry::{Entry, EntryState};
use switchyard_core::{GatewayError, InstanceKey};
use switchyard_proto::registry as pb;
use switchyard_proto::registry::registration_server::{Registration, RegistrationServer};

use crate::graphql::{self, Front};
use crate::node::{self, Node};
use crate::outbox::Delivery;
use crate::public::{self, error_response, json_response};

/// Largest registration body accepted.
const REGISTRATION_BODY_BYTES_MAX: usize = 64 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    let grpc = tonic::service::Routes::new(RegistrationServer::new(RegistrationApi {
        node: node.clone(),
    }))
    .into_axum_router();
    Router::new()
        .route("/healthz", get(public::healthz))
        .route("/readyz", get(public::readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{service}", get(get_service))
        .route(
            "/v1/services/{service}/instances/{instance_id}",
            axum::routing::put(put_instance).delete(delete_instance),
        )
        .with_state(node.clone())
        .merge(grpc)
        .merge(graphql::router(node, Front::Control))
        .fallback(public::route_not_found)
}

/// Prometheus text exposition of the node's metrics.
async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let body = node.render_metrics().await;
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

/// The JSON view of one registry entry.
fn instance_json(node: &Node, key: &InstanceKey, entry: &Entry, now_ms: u64) -> serde_json::Value {
    let mut v = serde_json::json!({
        "service": key.service,
        "instance_id": key.instance_id,
        "state": Node::entry_state(entry, now_ms),
        "stamp": {
            "physical_ms": entry.stamp.physical_ms,
            "logical": entry.stamp.logical,
            "node_id": entry.stamp.node_id,
        },
    });
    if let EntryState::Alive {
        addr,
        metadata,
        lease_ms,
    } = &entry.state
    {
        v["addr"] = addr.as_str().into();
        v["metadata"] = serde_json::to_value(metadata).unwrap_or_default();
        v["lease_ms"] = (*lease_ms).into();
        v["expires_unix_ms"] = entry.expires_ms().unwrap_or_default().into();
        let health = node.health_of(key);
        if health.is_ejected(now_ms) {
            v["ejected_until_unix_ms"] = health.ejected_until_ms.into();
        }
    }
    v
}

/// Every service and its instances, deregistered ones left out.
async fn list_services(State(node): State<Arc<Node>>) -> Response {
    let now = node.now_ms();
    let registry = node.registry();
    let mut services: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for (key, entry) in registry.entries() {
        if Node::entry_state(entry, now) != "deregistered" {
            services
                .entry(&key.service)
                .or_default()
                .push(instance_json(&node, key, entry, now));
        }
    }
    let services: Vec<_> = services
        .into_iter()
        .map(|(name, instances)| serde_json::json!({ "service": name, "instances": instances }))
        .collect();
    ok_json(&serde_json::json!({ "services": services }))
}

async fn get_service(State(node): State<Arc<Node>>, Path(service): Path<String>) -> Response {
    let now = node.now_ms();
    let registry = node.registry();
    let instances: Vec<_> = registry
        .service_entries(&service)
        .filter(|(_, e)| Node::entry_state(e, now) != "deregistered")
        .map(|(k, e)| instance_json(&node, k, e, now))
        .collect();
    if instances.is_empty() {
        return error_response(&GatewayError::ServiceNotFound { service }, None);
    }
    ok_json(&serde_json::json!({ "service": service, "instances": instances }))
}

async fn cluster(State(node): State<Arc<Node>>) -> Response {
    ok_json(&serde_json::to_value(node.status()).unwrap_or_default())
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

async fn put_instance(
    State(node): State<Arc<Node>>,
    Path((service, instance_id)): Path<(String, String)>,
    body: Body,
) -> Response {
    match register_rest(&node, service, instance_id, body).await {
        Ok(response) => response,
        Err(error) => error_response(&error, None),
    }
}

async fn register_rest(
    node: &Node,
    service: String,
    instance_id: String,
    body: Body,
) -> Result<Response, GatewayError> {
    let bytes = public::read_body(body, REGISTRATION_BODY_BYTES_MAX).await?;
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
    let registration = node::Registration {
        service,
        instance_id,
        addr: put.addr,
        metadata: put.metadata,
        lease_ms: put.lease_ms,
    };
    let (key, entry, delivery) = node.register(registration, kind).await?;
    let now = node.now_ms();
    let lease_ms = match &entry.state {
        EntryState::Alive { lease_ms, .. } => *lease_ms,
        EntryState::Removed(_) => 0,
    };
    let mut body = instance_json(node, &key, &entry, now);
    body["renew_after_ms"] = (lease_ms / 3).into();
    body["published"] = (delivery == Delivery::Published).into();
    Ok(accepted_json(delivery, &body))
}

async fn delete_instance(
    State(node): State<Arc<Node>>,
    Path((service, instance_id)): Path<(String, String)>,
) -> Response {
    match node.deregister(&service, &instance_id).await {
        Ok(gone) => accepted_json(
            gone.delivery,
            &serde_json::json!({
                "service": service,
                "instance_id": instance_id,
                "existed": gone.existed,
                "published": gone.delivery == Delivery::Published,
                "stamp": {
                    "physical_ms": gone.stamp.physical_ms,
                    "logical": gone.stamp.logical,
                    "node_id": gone.stamp.node_id,
                },
            }),
        ),
        Err(error) => error_response(&error, None),
    }
}

/// The gRPC registration service.
#[derive(Debug, Clone)]
pub struct RegistrationApi {
    node: Arc<Node>,
}

fn to_status(error: &GatewayError) -> tonic::Status {
    tonic::Status::new(tonic::Code::from_i32(error.grpc_code()), error.to_string())
}

fn instance_pb(key: &InstanceKey, entry: &Entry) -> pb::Instance {
    let (addr, metadata, lease_ms) = match &entry.state {
        EntryState::Alive {
            addr,
            metadata,
            lease_ms,
        } => (addr.clone(), metadata.clone(), *lease_ms),
        EntryState::Removed(_) => Default::default(),
    };
    pb::Instance {
        service: key.service.clone(),
        instance_id: key.instance_id.clone(),
        addr,
        metadata,
        lease_ms,
        expires_unix_ms: entry.expires_ms().unwrap_or_default(),
        stamp: Some((&entry.stamp).into()),
    }
}

impl RegistrationApi {
    async fn register_as(
        &self,
        request: tonic::Request<pb::RegisterRequest>,
        kind: EventKind,
    ) -> Result<tonic::Response<pb::RegisterResponse>, tonic::Status> {
        let r = request.into_inner();
        let registration = node::Registration {
            service: r.service,
            instance_id: r.instance_id,
            addr: r.addr,
            metadata: r.metadata,
            lease_ms: r.lease_ms,
        };
        let (key, entry, delivery) = self
            .node
            .register(registration, kind)
            .await
            .map_err(|e| to_status(&e))?;
        let instance = instance_pb(&key, &entry);
        let renew_after_ms = instance.lease_ms / 3;
        Ok(tonic::Response::new(pb::RegisterResponse {
            instance: Some(instance),
            renew_after_ms,
            published: delivery == Delivery::Published,
        }))
    }
}

#[tonic::async_trait]
impl Registration for RegistrationApi {
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
        let r = request.into_inner();
        let gone = self
            .node
            .deregister(&r.service, &r.instance_id)
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
        let service = request.into_inner().service;
        let now = self.node.now_ms();
        let registry = self.node.registry();
        let instances = registry
            .entries()
            .filter(|(k, e)| (service.is_empty() || k.service == service) && e.is_live(now))
            .map(|(k, e)| instance_pb(k, e))
            .collect();
        Ok(tonic::Response::new(pb::ListResponse { instances }))
    }
}
