//! The gRPC-to-HTTP status table, as Envoy and grpc-gateway map it. It applies when the `Send`
//! rpc itself fails; a `ForwardingResp` carries its own HTTP status.

/// gRPC status codes by number (the numbering is fixed by the gRPC specification).
pub mod code {
    pub const OK: i32 = 0;
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const DATA_LOSS: i32 = 15;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The HTTP status for a failed rpc with gRPC status `code`.
pub fn http_status_for_grpc(code: i32) -> u16 {
    match code {
        code::OK => 200,
        code::CANCELLED => 499,
        code::INVALID_ARGUMENT | code::FAILED_PRECONDITION | code::OUT_OF_RANGE => 400,
        code::DEADLINE_EXCEEDED => 504,
        code::NOT_FOUND => 404,
        code::ALREADY_EXISTS | code::ABORTED => 409,
        code::PERMISSION_DENIED => 403,
        code::RESOURCE_EXHAUSTED => 429,
        code::UNIMPLEMENTED => 501,
        code::UNAVAILABLE => 503,
        code::UNAUTHENTICATED => 401,
        // UNKNOWN, INTERNAL, DATA_LOSS and any code this table does not know.
        _ => 500,
    }
}

/// The lower-case snake name of a gRPC code, used in stable error codes
/// (`upstream_deadline_exceeded`, ...). Unknown numbers are `unknown`.
pub fn grpc_code_name(code: i32) -> &'static str {
    match code {
        code::OK => "ok",
        code::CANCELLED => "cancelled",
        code::INVALID_ARGUMENT => "invalid_argument",
        code::DEADLINE_EXCEEDED => "deadline_exceeded",
        code::NOT_FOUND => "not_found",
        code::ALREADY_EXISTS => "already_exists",
        code::PERMISSION_DENIED => "permission_denied",
        code::RESOURCE_EXHAUSTED => "resource_exhausted",
        code::FAILED_PRECONDITION => "failed_precondition",
        code::ABORTED => "aborted",
        code::OUT_OF_RANGE => "out_of_range",
        code::UNIMPLEMENTED => "unimplemented",
        code::INTERNAL => "internal",
        code::UNAVAILABLE => "unavailable",
        code::DATA_LOSS => "data_loss",
        code::UNAUTHENTICATED => "unauthenticated",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_design() {
        let expected = [
            (0, 200),
            (1, 499),
            (2, 500),
            (3, 400),
            (4, 504),
            (5, 404),
            (6, 409),
            (7, 403),
            (8, 429),
            (9, 400),
            (10, 409),
            (11, 400),
            (12, 501),
            (13, 500),
            (14, 503),
            (15, 500),
            (16, 401),
            (17, 500),
            (-1, 500),
        ];
        for (grpc, http) in expected {
            assert_eq!(http_status_for_grpc(grpc), http, "gRPC code {grpc}");
        }
    }

    #[test]
    fn every_known_code_has_a_name() {
        for c in (0..=16).filter(|&c| c != code::UNKNOWN) {
            assert_ne!(grpc_code_name(c), "unknown", "gRPC code {c}");
        }
        assert_eq!(grpc_code_name(99), "unknown");
    }
}
