//! Calls through the public front: a REST `GET`, or a GraphQL operation that fans out to
//! the sample service with two aliased `call` fields. Every answer is kept with the request id
//! it carried, for the audit check and for [`check_answered_were_served`].
//!
//! Whatever reaches an instance is judged by the routing checker (`scenario/routing.rs`)
//! through the witnesses, whichever front sent it: a GraphQL `call` becomes the same
//! `ForwardingReq` as REST, with the gateway's name and deadline in it.

use std::collections::BTreeSet;

use bytes::Bytes;
use http_body_util::Full;

use super::{Answered, CallFront, SharedLog};
use crate::PUBLIC_PORT;
use crate::witness::Served;

/// Two sibling calls: they run concurrently on the gateway.
const FAN_OUT: &str = r#"query { a: call(service: "sample", path: "/hello") { status requestId } b: call(service: "sample", path: "/hello") { status requestId } }"#;

/// Sends one call through `front` to `gateway`; keeps each answer in `log`; returns the
/// trace line.
pub async fn call(
    front: CallFront,
    gateway: &str,
    service: &str,
    log: &SharedLog,
    now_ms: impl Fn() -> u64,
) -> String {
    match front {
        CallFront::Rest => rest(gateway, service, log, now_ms).await,
        CallFront::GraphqlCall => fan_out(gateway, log, now_ms).await,
    }
}

async fn rest(gateway: &str, service: &str, log: &SharedLog, now_ms: impl Fn() -> u64) -> String {
    let sent_ms = now_ms();
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("/{service}/hello"))
        .header(http::header::HOST, gateway)
        .body(Full::new(Bytes::new()));
    let reply = match request {
        Ok(request) => super::send(gateway, PUBLIC_PORT, request).await,
        Err(e) => Err(std::io::Error::other(e)),
    };
    match reply {
        Ok((status, request_id, body)) => {
            let code = if status == 200 {
                String::new()
            } else {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            log.borrow_mut().answered(Answered {
                gateway: gateway.to_owned(),
                front: CallFront::Rest,
                request_id,
                status,
                from_service: status == 200,
                code,
                sent_ms,
                at_ms: now_ms(),
            });
            format!("GET {service} via {gateway}: {status}")
        }
        Err(e) => format!("GET {service} via {gateway}: {}", e.kind()),
    }
}

async fn fan_out(gateway: &str, log: &SharedLog, now_ms: impl Fn() -> u64) -> String {
    let sent_ms = now_ms();
    let body = serde_json::json!({ "query": FAN_OUT });
    let (status, _, json) = match super::graphql(gateway, PUBLIC_PORT, &body, None).await {
        Ok(answer) => answer,
        Err(e) => return format!("graphql call via {gateway}: {}", e.kind()),
    };
    let mut statuses = Vec::new();
    for alias in ["a", "b"] {
        let field = &json["data"][alias];
        let answered = if field.is_object() {
            let status = field["status"].as_u64().unwrap_or(0) as u16;
            field["requestId"]
                .as_str()
                .map(|id| (id.to_owned(), status, true, String::new()))
        } else {
            // A failed call: its error names the field in `path` and carries its request id.
            json["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["path"][0].as_str() == Some(alias))
                .and_then(|e| {
                    let id = e["extensions"]["requestId"].as_str()?;
                    let code = e["extensions"]["code"].as_str().unwrap_or_default();
                    Some((
                        id.to_owned(),
                        super::error_status(e),
                        false,
                        code.to_owned(),
                    ))
                })
        };
        if let Some((request_id, status, from_service, code)) = answered {
            statuses.push(status);
            log.borrow_mut().answered(Answered {
                gateway: gateway.to_owned(),
                front: CallFront::GraphqlCall,
                request_id,
                status,
                from_service,
                code,
                sent_ms,
                at_ms: now_ms(),
            });
        }
    }
    format!("graphql call via {gateway}: {status} {statuses:?}")
}

/// A call the client saw answered by a service must have reached an instance: a REST 200, or
/// a GraphQL `call` field holding a `CallResult` with status 200, whose request id no witness
/// ever received was made up by the gateway ("200 on error": DESIGN.md's lesson from Envoy's
/// transcoder). Only 200s are judged: the sample service answers nothing else to `/hello`.
pub fn check_answered_were_served(
    answered: &[Answered],
    served: &[Served],
    shown_max: usize,
    violations: &mut Vec<String>,
) -> usize {
    let received: BTreeSet<&str> = served.iter().map(|s| s.request_id.as_str()).collect();
    let mut broken = 0;
    for a in answered
        .iter()
        .filter(|a| a.from_service && a.status == 200)
    {
        if !received.contains(a.request_id.as_str()) {
            broken += 1;
            if broken <= shown_max {
                violations.push(format!(
                    "{} answered a {:?} call with 200 at {} ms (request id {:?}), but no instance ever received that request",
                    a.gateway, a.front, a.at_ms, a.request_id
                ));
            }
        }
    }
    broken
}
