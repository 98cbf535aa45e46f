//! A registry change through one of the three fronts that take them: REST, gRPC
//! (`switchyard.registry.v1.Registration`) and a GraphQL mutation, all on the control
//! listener with the operator's credential. The answer is given back in REST's shape (status
//! and a JSON body with the stamp) so that the workload records every front's answers alike.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use switchyard_proto::registry::registration_client::RegistrationClient;
use switchyard_proto::registry::{DeregisterRequest, HlcStamp, RegisterRequest};

use crate::{CONTROL_PORT, SimConnector, credential, http_send};

/// The status given to an answer that reports success but carries no stamp (a deregistration
/// by gRPC or GraphQL answers only `existed` and `published`): the lost-change check cannot
/// judge it, so it is recorded apart from the 200s.
pub const NO_STAMP: u16 = 0;

/// A front that takes registry changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Rest,
    Grpc,
    Graphql,
}

impl Front {
    /// One of the three, uniformly.
    pub fn draw(rng: &mut impl Rng) -> Self {
        match rng.random_range(0..3) {
            0 => Front::Rest,
            1 => Front::Grpc,
            _ => Front::Graphql,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Front::Rest => "rest",
            Front::Grpc => "grpc",
            Front::Graphql => "graphql",
        }
    }
}

/// A change asked of a gateway.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Register {
        service: &'a str,
        id: &'a str,
        addr: &'a str,
        lease_ms: u64,
        metadata: &'a BTreeMap<String, String>,
    },
    Deregister {
        service: &'a str,
        id: &'a str,
    },
}

/// Sends `change` to `gateway` through `front`: REST's status (200 on the bus, 202 held,
/// the error's status otherwise; [`NO_STAMP`] for a success without a stamp) and a JSON body
/// holding `stamp` as REST writes it.
pub async fn send(front: Front, gateway: &str, change: Change<'_>) -> io::Result<(u16, Bytes)> {
    match front {
        Front::Rest => rest(gateway, change).await,
        Front::Grpc => bounded(grpc(gateway, change)).await,
        Front::Graphql => graphql(gateway, change).await,
    }
}

async fn bounded<T>(f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer within 5 s"))?
}

async fn rest(gateway: &str, change: Change<'_>) -> io::Result<(u16, Bytes)> {
    match change {
        Change::Register {
            service,
            id,
            addr,
            lease_ms,
            metadata,
        } => {
            let body =
                serde_json::json!({ "addr": addr, "lease_ms": lease_ms, "metadata": metadata });
            let path = format!("/v1/services/{service}/instances/{id}");
            http_send(
                gateway,
                CONTROL_PORT,
                "PUT",
                &path,
                body.to_string().into_bytes(),
            )
            .await
        }
        Change::Deregister { service, id } => {
            let path = format!("/v1/services/{service}/instances/{id}");
            http_send(gateway, CONTROL_PORT, "DELETE", &path, Vec::new()).await
        }
    }
}

fn with_stamp(published: bool, stamp: serde_json::Value) -> (u16, Bytes) {
    let status = if published { 200 } else { 202 };
    let body = serde_json::json!({ "stamp": stamp });
    (status, Bytes::from(body.to_string()))
}

fn without_stamp() -> (u16, Bytes) {
    (NO_STAMP, Bytes::new())
}

fn grpc_stamp(stamp: Option<&HlcStamp>) -> serde_json::Value {
    stamp.map_or(serde_json::Value::Null, |s| {
        serde_json::json!({ "physical_ms": s.physical_ms, "logical": s.logical, "node_id": s.node_id })
    })
}

/// The HTTP status of a gRPC failure, as the design's mapping gives it.
fn http_of(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
        _ => 500,
    }
}

async fn grpc(gateway: &str, change: Change<'_>) -> io::Result<(u16, Bytes)> {
    let channel = switchyard::forwarding::lazy_channel(
        Arc::new(SimConnector),
        &format!("http://{gateway}:{CONTROL_PORT}"),
        Duration::from_secs(1),
        crate::RESET_STREAM_HOLD,
    )
    .map_err(io::Error::other)?;
    let mut client = RegistrationClient::new(channel);
    let token = credential("sim-client", &["*"]);
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(io::Error::other)?;
    let answer = match change {
        Change::Register {
            service,
            id,
            addr,
            lease_ms,
            metadata,
        } => {
            let mut request = tonic::Request::new(RegisterRequest {
                service: service.to_owned(),
                instance_id: id.to_owned(),
                addr: addr.to_owned(),
                metadata: metadata.clone().into_iter().collect(),
                lease_ms,
            });
            request.metadata_mut().insert("authorization", bearer);
            client.register(request).await.map(|r| {
                let r = r.into_inner();
                let stamp = r.instance.as_ref().and_then(|i| i.stamp.as_ref());
                with_stamp(r.published, grpc_stamp(stamp))
            })
        }
        Change::Deregister { service, id } => {
            let mut request = tonic::Request::new(DeregisterRequest {
                service: service.to_owned(),
                instance_id: id.to_owned(),
            });
            request.metadata_mut().insert("authorization", bearer);
            client.deregister(request).await.map(|_| without_stamp())
        }
    };
    match answer {
        Ok(answer) => Ok(answer),
        // A transport failure (refused, reset, no answer) is an error of the exchange, as
        // REST's are; a status the gateway sent is an answer.
        Err(status)
            if status.code() == tonic::Code::Unavailable && status.metadata().is_empty() =>
        {
            Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                status.message().to_owned(),
            ))
        }
        Err(status) => Ok((http_of(status.code()), Bytes::new())),
    }
}

const REGISTER: &str = "mutation($i: RegisterInput!) { register(input: $i) { published instance { stamp { physicalMs logical nodeId } } } }";
const DEREGISTER: &str = "mutation($s: String!, $id: String!) { deregister(service: $s, instanceId: $id) { published } }";

async fn graphql(gateway: &str, change: Change<'_>) -> io::Result<(u16, Bytes)> {
    let body = match change {
        Change::Register {
            service,
            id,
            addr,
            lease_ms,
            metadata,
        } => serde_json::json!({
            "query": REGISTER,
            "variables": { "i": {
                "service": service, "instanceId": id, "addr": addr, "leaseMs": lease_ms,
                "metadata": metadata
                    .iter()
                    .map(|(key, value)| serde_json::json!({ "key": key, "value": value }))
                    .collect::<Vec<_>>(),
            } },
        }),
        Change::Deregister { service, id } => serde_json::json!({
            "query": DEREGISTER,
            "variables": { "s": service, "id": id },
        }),
    };
    let token = credential("sim-client", &["*"]);
    let (status, _, json) = super::graphql(gateway, CONTROL_PORT, &body, Some(&token)).await?;
    if status != 200 {
        return Ok((status, Bytes::new()));
    }
    if let Some(error) = json["errors"].as_array().and_then(|e| e.first()) {
        return Ok((super::error_status(error), Bytes::new()));
    }
    let data = &json["data"];
    match change {
        Change::Register { .. } => {
            let registered = &data["register"];
            let s = &registered["instance"]["stamp"];
            let stamp = serde_json::json!({
                "physical_ms": s["physicalMs"], "logical": s["logical"], "node_id": s["nodeId"],
            });
            Ok(with_stamp(
                registered["published"].as_bool().unwrap_or(false),
                stamp,
            ))
        }
        Change::Deregister { .. } => Ok(without_stamp()),
    }
}
