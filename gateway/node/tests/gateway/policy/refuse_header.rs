//! A test-only request policy: refuses a request that carries `x-refuse`, with the error its
//! value names (or, for `reroute`, tries to send it to another service, which the pipeline
//! must not allow). The whole of what adding a policy takes is this file and one line of wiring
//! (`.policy(Arc::new(RefuseHeader))` where the node is built).

use switchyard::pipeline::{Policy, RequestContext};
use switchyard::sync::BoxFuture;
use switchyard_core::GatewayError;
use switchyard_proto::forwarding::ForwardingReq;

/// The header this policy reads.
pub const HEADER: &str = "x-refuse";

#[derive(Debug)]
pub struct RefuseHeader;

impl Policy for RefuseHeader {
    fn name(&self) -> &'static str {
        "refuse-header"
    }

    fn check<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut ForwardingReq,
    ) -> BoxFuture<'a, Result<(), GatewayError>> {
        let value = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(HEADER))
            .map(|h| String::from_utf8_lossy(&h.value).into_owned());
        let refusal = match value.as_deref() {
            None => None,
            Some("reroute") => {
                req.service = "elsewhere".to_owned();
                None
            }
            Some("unauthenticated") => Some(GatewayError::Unauthenticated {
                reason: format!("request {} carries no credential", ctx.request_id()),
                challenge: r#"Bearer realm="switchyard-test""#.to_owned(),
            }),
            Some("rate-limited") => Some(GatewayError::RateLimited { retry_after_s: 7 }),
            Some(other) => Some(GatewayError::Forbidden {
                reason: format!("{HEADER}: {other}"),
            }),
        };
        Box::pin(async move { refusal.map_or(Ok(()), Err) })
    }
}
