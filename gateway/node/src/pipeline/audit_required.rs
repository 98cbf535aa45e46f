//! Required audit mode: a service whose `[audit]` mode is `required` is served only while its
//! requests can be audited. While the audit sink says it cannot deliver, or the auditor's
//! queue is more than three quarters full, its requests are refused with 503
//! `audit_unavailable` and counted in `switchyard_audit_refused_total`. Best-effort services
//! are never refused here.

use std::sync::Arc;

use switchyard_core::GatewayError;
use switchyard_proto::forwarding::ForwardingReq;

use super::{Policy, RequestContext};
use crate::audit::Auditor;
use crate::sync::BoxFuture;

/// Built only when some service is in `required` mode.
#[derive(Debug)]
pub struct AuditRequired {
    auditor: Arc<Auditor>,
}

impl AuditRequired {
    pub fn new(auditor: Arc<Auditor>) -> Self {
        Self { auditor }
    }

    fn check_now(&self, service: &str) -> Result<(), GatewayError> {
        if !self.auditor.required(service) || self.auditor.can_audit() {
            return Ok(());
        }
        self.auditor.count_refused();
        Err(GatewayError::AuditUnavailable {
            service: service.to_owned(),
        })
    }
}

impl Policy for AuditRequired {
    fn name(&self) -> &'static str {
        "audit_required"
    }

    fn check<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        req: &'a mut ForwardingReq,
    ) -> BoxFuture<'a, Result<(), GatewayError>> {
        let result = self.check_now(&req.service);
        Box::pin(std::future::ready(result))
    }
}
