//! A request policy: a check on every forwarded request, REST or GraphQL `call`, made after
//! the request context exists and before an instance is chosen.

use switchyard_core::GatewayError;
use switchyard_proto::forwarding::ForwardingReq;

use super::RequestContext;
use crate::sync::BoxFuture;

/// A check that may refuse a request with a [`GatewayError`] (`unauthenticated`, `forbidden`,
/// `rate_limited`, ...). Policies run in order; the first refusal is the answer, and it is
/// logged, counted and traced like any other.
///
/// A policy may record the caller's identity (`ctx.set_identity`) and add or strip headers of
/// the request, for the policies after it and for the service; it may not change the service,
/// method or path. Its time counts towards the request's deadline (`upstream.timeout_ms`,
/// which the service is told), so it must bound every wait it makes well within it.
pub trait Policy: Send + Sync + 'static {
    /// A short name, for logs.
    fn name(&self) -> &'static str;

    fn check<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut ForwardingReq,
    ) -> BoxFuture<'a, Result<(), GatewayError>>;
}

impl std::fmt::Debug for dyn Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
