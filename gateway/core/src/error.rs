//! One error vocabulary for the whole gateway. Each error knows which side is at fault,
//! whether retrying on another instance may help, and is mapped here, once, to the HTTP
//! status, the stable JSON `code`, and the gRPC code used by the registration service.

use crate::status::{self, code};

/// Which side of the gateway caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something the gateway cannot accept.
    Downstream,
    /// The service, or the way to it, failed.
    Upstream,
    /// The gateway itself (or its bus) failed.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for path {path:?}: requests go to /{{service}}/{{path}}")]
    RouteNotFound { path: String },
    #[error("service {service:?} is not registered")]
    ServiceNotFound { service: String },
    #[error("service {service:?} has no live instance")]
    NoLiveInstance { service: String },
    #[error("request body exceeds {limit_bytes} bytes")]
    BodyTooLarge { limit_bytes: usize },
    #[error("request body not received within {timeout_ms} ms")]
    RequestTimeout { timeout_ms: u64 },
    #[error("request headers exceed {limit_bytes} bytes")]
    HeadersTooLarge { limit_bytes: usize },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("service {service:?} did not answer within {timeout_ms} ms")]
    UpstreamTimeout { service: String, timeout_ms: u64 },
    #[error("could not reach an instance of {service:?}: {detail}")]
    UpstreamConnect { service: String, detail: String },
    /// The connection to the instance broke while the call was on it (the instance died or
    /// reset it). The service may have run the request, so it is not retried.
    #[error("the connection to an instance of {service:?} broke during the call: {detail}")]
    UpstreamReset { service: String, detail: String },
    #[error("service {service:?} failed the call with gRPC status {grpc_code}: {message}")]
    UpstreamStatus {
        service: String,
        grpc_code: i32,
        message: String,
    },
    #[error("service {service:?} sent an invalid response: {reason}")]
    BadUpstreamResponse { service: String, reason: String },
    #[error("not allowed: {what}")]
    NotAllowed { what: String },
    /// The request carries no credentials, or credentials that could not be verified.
    /// `challenge` is the `WWW-Authenticate` value that tells the client how to authenticate,
    /// such as `Bearer realm="switchyard"`.
    #[error("authentication required: {reason}")]
    Unauthenticated { reason: String, challenge: String },
    /// The client is authenticated but may not make this request.
    #[error("forbidden: {reason}")]
    Forbidden { reason: String },
    /// The client is authenticated but its credential lacks a scope the request needs: a 403
    /// `forbidden` whose `challenge` (`WWW-Authenticate`, RFC 6750 `insufficient_scope`) names
    /// the scope.
    #[error("forbidden: the credential lacks the scope {scope:?}")]
    InsufficientScope { scope: String, challenge: String },
    /// The client sent more requests than its rate allows; it may try again after
    /// `retry_after_s` seconds.
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error(
        "the registry change feed fell {missed} changes behind this subscriber; subscribe again and re-read the registry"
    )]
    SubscriptionLagged { missed: u64 },
    #[error("the gateway is at its bound of {what}; try again later")]
    Overloaded { what: String },
    /// A registry change would add a service or an instance past a configured quota. Entries
    /// leave the registry when their tombstones are collected, so the same change may succeed
    /// later.
    #[error("registry quota reached: {what}")]
    QuotaExceeded { what: String },
    #[error("the registry bus is unavailable: {detail}")]
    BusUnavailable { detail: String },
    /// The gateway has not yet read the bus up to the mark it saw at start, so a change
    /// stamped here now could be older than one already on the bus and lose to it.
    #[error("this gateway is not ready: {detail}; try again, or another gateway")]
    NotReady { detail: String },
    /// The service's audit mode is `required` and the gateway cannot audit the request now
    /// (the audit sink is unavailable, or the audit queue is more than three quarters full):
    /// the request is refused rather than served unaudited.
    #[error(
        "service {service:?} is served only when audited, and audit records cannot be delivered now; try again later"
    )]
    AuditUnavailable { service: String },
    #[error("internal error: {detail}")]
    Internal { detail: String },
    /// The request came back to a gateway it had passed, or passed more proxies than
    /// `upstream.hops_max` (RFC 9110 `Via`); or an upstream gateway refused it for that.
    #[error("forwarding loop: {reason}")]
    LoopDetected { reason: String },
}

impl GatewayError {
    /// The stable, documented machine-readable code (the JSON `code` field).
    pub fn code(&self) -> String {
        match self {
            Self::UpstreamStatus { grpc_code, .. } => {
                format!("upstream_{}", status::grpc_code_name(*grpc_code))
            }
            other => other.static_code().to_owned(),
        }
    }

    fn static_code(&self) -> &'static str {
        match self {
            Self::RouteNotFound { .. } => "route_not_found",
            Self::ServiceNotFound { .. } => "service_not_found",
            Self::NoLiveInstance { .. } => "no_live_instance",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamConnect { .. } => "upstream_connect_failed",
            Self::UpstreamReset { .. } => "upstream_reset",
            Self::UpstreamStatus { .. } => "upstream_status",
            Self::BadUpstreamResponse { .. } => "bad_upstream_response",
            Self::NotAllowed { .. } => "not_allowed",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::Forbidden { .. } | Self::InsufficientScope { .. } => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::SubscriptionLagged { .. } => "subscription_lagged",
            Self::Overloaded { .. } => "overloaded",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::BusUnavailable { .. } => "bus_unavailable",
            Self::NotReady { .. } => "not_ready",
            Self::AuditUnavailable { .. } => "audit_unavailable",
            Self::Internal { .. } => "internal",
            Self::LoopDetected { .. } => "loop_detected",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::RouteNotFound { .. } | Self::ServiceNotFound { .. } => 404,
            Self::NoLiveInstance { .. } => 503,
            Self::BodyTooLarge { .. } => 413,
            Self::RequestTimeout { .. } => 408,
            Self::HeadersTooLarge { .. } => 431,
            Self::InvalidArgument { .. } => 400,
            Self::UpstreamTimeout { .. } => 504,
            Self::UpstreamConnect { .. } => 503,
            Self::UpstreamStatus { grpc_code, .. } => status::http_status_for_grpc(*grpc_code),
            Self::BadUpstreamResponse { .. } | Self::UpstreamReset { .. } => 502,
            Self::NotAllowed { .. } | Self::Forbidden { .. } | Self::InsufficientScope { .. } => {
                403
            }
            Self::Unauthenticated { .. } => 401,
            Self::RateLimited { .. } => 429,
            Self::SubscriptionLagged { .. } => 429,
            Self::Overloaded { .. } => 503,
            Self::QuotaExceeded { .. } => 429,
            Self::BusUnavailable { .. } => 503,
            Self::NotReady { .. } => 503,
            Self::AuditUnavailable { .. } => 503,
            Self::Internal { .. } => 500,
            Self::LoopDetected { .. } => 508,
        }
    }

    /// The gRPC code this error is answered with by the gateway's own gRPC services.
    pub fn grpc_code(&self) -> i32 {
        match self {
            Self::RouteNotFound { .. } | Self::ServiceNotFound { .. } => code::NOT_FOUND,
            Self::InvalidArgument { .. } => code::INVALID_ARGUMENT,
            // No gRPC code means "loop"; the request cannot succeed until the registry that
            // routes it in a circle changes.
            Self::LoopDetected { .. } => code::FAILED_PRECONDITION,
            Self::BodyTooLarge { .. }
            | Self::HeadersTooLarge { .. }
            | Self::SubscriptionLagged { .. }
            | Self::QuotaExceeded { .. }
            | Self::RateLimited { .. } => code::RESOURCE_EXHAUSTED,
            Self::NotAllowed { .. } | Self::Forbidden { .. } | Self::InsufficientScope { .. } => {
                code::PERMISSION_DENIED
            }
            Self::Unauthenticated { .. } => code::UNAUTHENTICATED,
            Self::UpstreamTimeout { .. } | Self::RequestTimeout { .. } => code::DEADLINE_EXCEEDED,
            Self::UpstreamStatus { grpc_code, .. } => *grpc_code,
            Self::NoLiveInstance { .. }
            | Self::UpstreamConnect { .. }
            | Self::UpstreamReset { .. }
            | Self::Overloaded { .. }
            | Self::BusUnavailable { .. }
            | Self::NotReady { .. }
            | Self::AuditUnavailable { .. } => code::UNAVAILABLE,
            Self::BadUpstreamResponse { .. } | Self::Internal { .. } => code::INTERNAL,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::RouteNotFound { .. }
            | Self::ServiceNotFound { .. }
            | Self::BodyTooLarge { .. }
            | Self::RequestTimeout { .. }
            | Self::HeadersTooLarge { .. }
            | Self::InvalidArgument { .. }
            | Self::LoopDetected { .. }
            | Self::NotAllowed { .. }
            | Self::Unauthenticated { .. }
            | Self::Forbidden { .. }
            | Self::InsufficientScope { .. }
            | Self::RateLimited { .. }
            | Self::QuotaExceeded { .. }
            | Self::SubscriptionLagged { .. } => Fault::Downstream,
            Self::NoLiveInstance { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamConnect { .. }
            | Self::UpstreamReset { .. }
            | Self::UpstreamStatus { .. }
            | Self::BadUpstreamResponse { .. } => Fault::Upstream,
            Self::Overloaded { .. }
            | Self::BusUnavailable { .. }
            | Self::NotReady { .. }
            | Self::AuditUnavailable { .. }
            | Self::Internal { .. } => Fault::Internal,
        }
    }

    /// Whether sending the same request to another instance may succeed. Only failures where
    /// the request never reached a service qualify, so retrying never runs a request twice.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::UpstreamConnect { .. })
    }

    /// Headers the HTTP answer to this error must carry, as lower-case names and values:
    /// the `WWW-Authenticate` challenge of a 401, the `Retry-After` of a 429 from the rate
    /// limiter, and the gRPC status of a 508 loop refusal. Every HTTP front adds these, so clients see the same answer from each.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Unauthenticated { challenge, .. } | Self::InsufficientScope { challenge, .. } => {
                vec![("www-authenticate", challenge.clone())]
            }
            Self::RateLimited { retry_after_s } => {
                vec![("retry-after", retry_after_s.to_string())]
            }
            // Read by a gateway whose `Send` call reached a gateway's public listener.
            Self::LoopDetected { .. } => vec![
                ("grpc-status", self.grpc_code().to_string()),
                ("grpc-message", crate::hops::LOOP_GRPC_MESSAGE.to_owned()),
            ],
            _ => Vec::new(),
        }
    }

    /// The message a public client is shown. Errors whose text holds only what the client
    /// sent and the gateway's documented limits show it; errors whose text may hold an
    /// instance address, an OS error, an upstream's own message or the gateway's internals
    /// show a fixed sentence instead (the full text goes to the log and the span).
    pub fn public_message(&self) -> String {
        match self {
            Self::UpstreamConnect { service, .. } => {
                format!("could not reach an instance of {service:?}")
            }
            Self::UpstreamReset { service, .. } => {
                format!("the connection to an instance of {service:?} broke during the call")
            }
            Self::UpstreamStatus {
                service, grpc_code, ..
            } => format!(
                "service {service:?} failed the call with gRPC status {}",
                status::grpc_code_name(*grpc_code)
            ),
            Self::BadUpstreamResponse { service, .. } => {
                format!("service {service:?} sent an invalid response")
            }
            Self::Overloaded { .. } => "the gateway is at one of its bounds; try again later".into(),
            Self::BusUnavailable { .. } => "the registry bus is unavailable".into(),
            Self::NotReady { .. } => {
                "this gateway is not ready; try again, or another gateway".into()
            }
            Self::Internal { .. } => "internal error".into(),
            Self::LoopDetected { .. } => {
                "forwarding loop: the request came back to a gateway it had passed, or passed too many".into()
            }
            Self::RouteNotFound { .. }
            | Self::ServiceNotFound { .. }
            | Self::NoLiveInstance { .. }
            | Self::BodyTooLarge { .. }
            | Self::RequestTimeout { .. }
            | Self::HeadersTooLarge { .. }
            | Self::InvalidArgument { .. }
            | Self::UpstreamTimeout { .. }
            | Self::NotAllowed { .. }
            | Self::Unauthenticated { .. }
            | Self::Forbidden { .. }
            | Self::InsufficientScope { .. }
            | Self::RateLimited { .. }
            | Self::SubscriptionLagged { .. }
            | Self::QuotaExceeded { .. }
            | Self::AuditUnavailable { .. } => self.to_string(),
        }
    }

    /// The JSON error body a public client gets:
    /// `{"error":{"code":..,"status":..,"message":..,"request_id":..}}`, with the
    /// [`public_message`](Self::public_message).
    pub fn to_json(&self, request_id: Option<&str>) -> Vec<u8> {
        self.json_with(self.public_message(), request_id)
    }

    /// The JSON error body with the full message, for the control listener's callers (the
    /// owners of the instances they register).
    pub fn to_detailed_json(&self, request_id: Option<&str>) -> Vec<u8> {
        self.json_with(self.to_string(), request_id)
    }

    fn json_with(&self, message: String, request_id: Option<&str>) -> Vec<u8> {
        let mut error = serde_json::json!({
            "code": self.code(),
            "status": self.http_status(),
            "message": message,
        });
        if let Some(id) = request_id {
            error["request_id"] = serde_json::Value::from(id);
        }
        serde_json::to_vec(&serde_json::json!({ "error": error }))
            .unwrap_or_else(|_| br#"{"error":{"code":"internal"}}"#.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_request_body_is_the_client_s_fault_and_answered_408() {
        let err = GatewayError::RequestTimeout { timeout_ms: 30_000 };
        assert_eq!(err.code(), "request_timeout");
        assert_eq!(err.http_status(), 408);
        assert_eq!(err.grpc_code(), code::DEADLINE_EXCEEDED);
        assert_eq!(err.fault(), Fault::Downstream);
        assert!(!err.retryable());
    }

    #[test]
    fn upstream_status_codes_name_the_grpc_code() {
        let err = GatewayError::UpstreamStatus {
            service: "s".into(),
            grpc_code: code::UNAVAILABLE,
            message: "down".into(),
        };
        assert_eq!(err.code(), "upstream_unavailable");
        assert_eq!(err.http_status(), 503);
        let err = GatewayError::UpstreamStatus {
            service: "s".into(),
            grpc_code: code::CANCELLED,
            message: String::new(),
        };
        assert_eq!(
            (err.code().as_str(), err.http_status()),
            ("upstream_cancelled", 499)
        );
    }

    #[test]
    fn json_body_carries_code_status_and_request_id() {
        let err = GatewayError::ServiceNotFound {
            service: "orders".into(),
        };
        let body: serde_json::Value = serde_json::from_slice(&err.to_json(Some("r-1"))).unwrap();
        assert_eq!(body["error"]["code"], "service_not_found");
        assert_eq!(body["error"]["status"], 404);
        assert_eq!(body["error"]["request_id"], "r-1");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("orders")
        );
    }

    #[test]
    fn only_connect_failures_are_retryable() {
        let connect = GatewayError::UpstreamConnect {
            service: "s".into(),
            detail: "refused".into(),
        };
        let timeout = GatewayError::UpstreamTimeout {
            service: "s".into(),
            timeout_ms: 10,
        };
        let reset = GatewayError::UpstreamReset {
            service: "s".into(),
            detail: "connection reset".into(),
        };
        assert!(connect.retryable());
        assert!(!timeout.retryable());
        assert!(!reset.retryable(), "the service may have run it");
        assert_eq!(connect.fault(), Fault::Upstream);
        assert_eq!(
            (reset.code().as_str(), reset.http_status()),
            ("upstream_reset", 502)
        );
        assert_eq!(reset.fault(), Fault::Upstream);
    }

    #[test]
    fn refusals_of_the_graphql_front_have_codes() {
        let not_allowed = GatewayError::NotAllowed {
            what: "mutations".into(),
        };
        let lagged = GatewayError::SubscriptionLagged { missed: 3 };
        assert_eq!(
            (not_allowed.code().as_str(), not_allowed.http_status()),
            ("not_allowed", 403)
        );
        assert_eq!(not_allowed.grpc_code(), code::PERMISSION_DENIED);
        assert_eq!(
            (lagged.code().as_str(), lagged.http_status()),
            ("subscription_lagged", 429)
        );
        assert!(lagged.to_string().contains("3 changes"));
        assert_eq!(lagged.fault(), Fault::Downstream);
        assert!(!not_allowed.retryable());
        let full = GatewayError::Overloaded {
            what: "1 WebSocket".into(),
        };
        assert_eq!(
            (full.code().as_str(), full.http_status()),
            ("overloaded", 503)
        );
        assert_eq!(full.fault(), Fault::Internal);
    }

    #[test]
    fn a_gateway_not_yet_caught_up_refuses_with_not_ready() {
        let err = GatewayError::NotReady {
            detail: "catching up with the bus".into(),
        };
        assert_eq!((err.code().as_str(), err.http_status()), ("not_ready", 503));
        assert_eq!(err.grpc_code(), code::UNAVAILABLE);
        assert_eq!(status::http_status_for_grpc(err.grpc_code()), 503);
        assert_eq!(err.fault(), Fault::Internal);
        assert!(!err.retryable());
    }

    #[test]
    fn request_policy_refusals_map_to_every_front() {
        let unauthenticated = GatewayError::Unauthenticated {
            reason: "no bearer token".into(),
            challenge: r#"Bearer realm="switchyard""#.into(),
        };
        let forbidden = GatewayError::Forbidden {
            reason: "token may not call orders".into(),
        };
        let limited = GatewayError::RateLimited { retry_after_s: 7 };
        let table = [
            (
                &unauthenticated,
                "unauthenticated",
                401,
                code::UNAUTHENTICATED,
            ),
            (&forbidden, "forbidden", 403, code::PERMISSION_DENIED),
            (&limited, "rate_limited", 429, code::RESOURCE_EXHAUSTED),
        ];
        for (err, name, http, grpc) in table {
            assert_eq!(err.code(), name);
            assert_eq!(err.http_status(), http, "{name}");
            assert_eq!(err.grpc_code(), grpc, "{name}");
            assert_eq!(err.fault(), Fault::Downstream, "{name}");
            assert!(!err.retryable(), "{name}");
            // The gRPC code and the HTTP status agree, as the status table maps them.
            assert_eq!(
                status::http_status_for_grpc(err.grpc_code()),
                http,
                "{name}"
            );
        }
        assert_eq!(
            unauthenticated.to_string(),
            "authentication required: no bearer token"
        );
        assert!(limited.to_string().contains("7 s"));
        let body: serde_json::Value = serde_json::from_slice(&limited.to_json(None)).unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
        assert_eq!(body["error"]["status"], 429);
    }

    #[test]
    fn only_challenges_and_rate_limits_add_headers() {
        let unauthenticated = GatewayError::Unauthenticated {
            reason: "expired".into(),
            challenge: r#"Bearer realm="switchyard""#.into(),
        };
        assert_eq!(
            unauthenticated.response_headers(),
            [(
                "www-authenticate",
                r#"Bearer realm="switchyard""#.to_owned()
            )]
        );
        assert_eq!(
            GatewayError::RateLimited { retry_after_s: 30 }.response_headers(),
            [("retry-after", "30".to_owned())]
        );
        for other in [
            GatewayError::Forbidden {
                reason: "no".into(),
            },
            GatewayError::SubscriptionLagged { missed: 1 },
            GatewayError::Overloaded { what: "x".into() },
        ] {
            assert!(other.response_headers().is_empty(), "{other:?}");
        }
    }
    /// One error of every variant, each string field holding `secret` except those that are
    /// the client's own input. The match has no wildcard, so a new variant must be added here.
    fn every_variant(secret: &str) -> Vec<GatewayError> {
        let s = || secret.to_owned();
        let all = vec![
            GatewayError::RouteNotFound { path: "/x".into() },
            GatewayError::ServiceNotFound {
                service: "orders".into(),
            },
            GatewayError::NoLiveInstance {
                service: "orders".into(),
            },
            GatewayError::BodyTooLarge { limit_bytes: 1 },
            GatewayError::RequestTimeout { timeout_ms: 1 },
            GatewayError::HeadersTooLarge { limit_bytes: 1 },
            GatewayError::InvalidArgument {
                field: "body",
                reason: "bad".into(),
            },
            GatewayError::UpstreamTimeout {
                service: "orders".into(),
                timeout_ms: 1,
            },
            GatewayError::UpstreamConnect {
                service: "orders".into(),
                detail: s(),
            },
            GatewayError::UpstreamReset {
                service: "orders".into(),
                detail: s(),
            },
            GatewayError::UpstreamStatus {
                service: "orders".into(),
                grpc_code: 14,
                message: s(),
            },
            GatewayError::BadUpstreamResponse {
                service: "orders".into(),
                reason: s(),
            },
            GatewayError::NotAllowed {
                what: "mutations".into(),
            },
            GatewayError::Unauthenticated {
                reason: "no token".into(),
                challenge: "Bearer".into(),
            },
            GatewayError::Forbidden {
                reason: "no".into(),
            },
            GatewayError::RateLimited { retry_after_s: 1 },
            GatewayError::SubscriptionLagged { missed: 1 },
            GatewayError::Overloaded { what: s() },
            GatewayError::QuotaExceeded {
                what: "services".into(),
            },
            GatewayError::InsufficientScope {
                scope: "orders:write".into(),
                challenge: r#"Bearer realm="x", error="insufficient_scope", scope="orders:write""#
                    .into(),
            },
            GatewayError::BusUnavailable { detail: s() },
            GatewayError::NotReady { detail: s() },
            GatewayError::AuditUnavailable {
                service: "orders".into(),
            },
            GatewayError::Internal { detail: s() },
            GatewayError::LoopDetected { reason: s() },
        ];
        for e in &all {
            match e {
                GatewayError::RouteNotFound { .. }
                | GatewayError::ServiceNotFound { .. }
                | GatewayError::NoLiveInstance { .. }
                | GatewayError::BodyTooLarge { .. }
                | GatewayError::RequestTimeout { .. }
                | GatewayError::HeadersTooLarge { .. }
                | GatewayError::InvalidArgument { .. }
                | GatewayError::UpstreamTimeout { .. }
                | GatewayError::UpstreamConnect { .. }
                | GatewayError::UpstreamReset { .. }
                | GatewayError::UpstreamStatus { .. }
                | GatewayError::BadUpstreamResponse { .. }
                | GatewayError::NotAllowed { .. }
                | GatewayError::Unauthenticated { .. }
                | GatewayError::Forbidden { .. }
                | GatewayError::InsufficientScope { .. }
                | GatewayError::RateLimited { .. }
                | GatewayError::SubscriptionLagged { .. }
                | GatewayError::Overloaded { .. }
                | GatewayError::QuotaExceeded { .. }
                | GatewayError::BusUnavailable { .. }
                | GatewayError::NotReady { .. }
                | GatewayError::AuditUnavailable { .. }
                | GatewayError::Internal { .. }
                | GatewayError::LoopDetected { .. } => {}
            }
        }
        all
    }

    #[test]
    fn public_bodies_carry_no_internal_detail_and_detailed_ones_do() {
        let secret = "instance o-1 at http://10.9.8.7:4567: Connection refused (os error 111)";
        for err in every_variant(secret) {
            let public = String::from_utf8(err.to_json(Some("r"))).unwrap();
            for leak in ["10.9.8.7", "4567", "Connection refused", "os error"] {
                assert!(!public.contains(leak), "{err:?} shows {leak}: {public}");
            }
            let body: serde_json::Value = serde_json::from_str(&public).unwrap();
            assert_eq!(body["error"]["code"], err.code().as_str());
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
            if err.to_string().contains(secret) {
                let detailed = String::from_utf8(err.to_detailed_json(None)).unwrap();
                assert!(detailed.contains("10.9.8.7:4567"), "{detailed}");
            }
        }
    }

    #[test]
    fn a_loop_is_508_and_never_retried() {
        let err = GatewayError::LoopDetected { reason: "x".into() };
        assert_eq!(
            (err.code().as_str(), err.http_status()),
            ("loop_detected", 508)
        );
        assert_eq!(err.grpc_code(), code::FAILED_PRECONDITION);
        assert!(!err.retryable());
        assert_eq!(
            err.response_headers(),
            [
                ("grpc-status", "9".to_owned()),
                ("grpc-message", crate::hops::LOOP_GRPC_MESSAGE.to_owned())
            ]
        );
    }
}
