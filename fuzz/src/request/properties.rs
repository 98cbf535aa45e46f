//! The properties of the `request` target: the node's steps run on one [`Case`], and each
//! outcome checked against the rules in `http_rules` and the documented refusals.

use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use switchyard_core::GatewayError;
use switchyard_core::translate::{self, ForwardContext, Limits, RequestHead};
use switchyard_proto::forwarding::ForwardingReq;

use super::{Case, DEADLINE_UNIX_MS, GATEWAY_NODE, MADE_REQUEST_ID};

/// The hop bound the fuzzed requests are translated with.
const VIA_HOPS_MAX: usize = 8;
use crate::http_rules::{self, connection_names, must_drop, values};

/// Runs one request through the node's steps and checks the outcome of each.
pub fn check_case(case: &Case) {
    let req = &case.request;
    let head = RequestHead {
        method: req.method(),
        uri: req.uri(),
        version: req.version(),
        headers: req.headers(),
    };
    let client_id = translate::client_request_id(req.headers());
    if let Some(id) = client_id {
        assert!(
            !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()),
            "implausible client request id {id:?} was kept"
        );
    }
    let request_id = client_id.unwrap_or(MADE_REQUEST_ID);

    if let Err(e) = translate::check_head(&head, &case.limits) {
        assert_documented(&e);
        check_head_refusal(&e, req.headers(), &case.limits);
        return;
    }
    assert!(
        header_bytes(req.headers()) <= case.limits.header_bytes_max,
        "headers over the limit were accepted"
    );
    assert!(
        announced_length(req.headers()).is_none_or(|n| n <= case.limits.body_bytes_max as u128),
        "a Content-Length over the body limit was accepted"
    );

    let path = req.uri().path();
    let routed = translate::route(path);
    check_route(path, &routed);
    if routed.is_err() {
        return;
    }
    // The node reads at most the limit and answers 413 past it (outside the core).
    if case.body.len() > case.limits.body_bytes_max {
        return;
    }
    let ctx = ForwardContext {
        scheme: case.scheme,
        client_addr: case.client,
        gateway_node: GATEWAY_NODE,
        request_id,
        deadline_unix_ms: DEADLINE_UNIX_MS,
        via_name: GATEWAY_NODE,
        hops_max: VIA_HOPS_MAX,
    };
    let mut wire = bytes::BytesMut::new();
    let encoded =
        translate::encode_forwarding_req(&head, &case.body, &ctx, TRACEPARENT_SENT, &mut wire);
    let out = match translate::to_forwarding_req(&head, case.body.clone(), &ctx) {
        Ok(out) => out,
        // A request whose Via names this gateway, or more proxies than the bound, is a
        // documented refusal.
        Err(e @ GatewayError::LoopDetected { .. }) => {
            let refused = encoded.expect_err("the wire translation forwarded a refused request");
            assert_eq!(refused.code(), e.code());
            return;
        }
        Err(e) => panic!("a routed request was refused: {e}"),
    };
    check_forwarded(case, &ctx, &out);
    check_wire(&out, encoded, &wire);
}

/// The trace context the wire translation is given (the gateway's span, in the node).
const TRACEPARENT_SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The request translated straight to protobuf is, byte for byte, the built one with the same
/// trace context, and names the same service and `Via`.
fn check_wire(
    built: &ForwardingReq,
    encoded: Result<translate::Encoded<'_>, GatewayError>,
    wire: &[u8],
) {
    let encoded = encoded.expect("the wire translation refused a request the built one took");
    let mut expected = built.clone();
    switchyard_core::trace::set_traceparent(&mut expected, TRACEPARENT_SENT.to_owned());
    assert!(
        wire == expected.encode_to_vec().as_slice(),
        "the wire translation differs from the built request"
    );
    assert_eq!(encoded.service, built.service);
    let via = built.headers.iter().rev().find(|h| h.name == "via");
    assert_eq!(Some(&encoded.via[..]), via.map(|h| &h.value[..]));
}

/// Every refusal on the request path is one of the documented ones, with its status.
fn assert_documented(e: &GatewayError) {
    let pair = (e.code(), e.http_status());
    let documented = [
        ("route_not_found", 404),
        ("service_not_found", 404),
        ("headers_too_large", 431),
        ("body_too_large", 413),
    ];
    assert!(
        documented.iter().any(|(c, s)| pair.0 == *c && pair.1 == *s),
        "undocumented refusal {pair:?}: {e}"
    );
}

/// The size of a header block as the limit counts it: name, value and `: ` plus CRLF.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.as_bytes().len() + 4)
        .sum()
}

/// The first `Content-Length` if it is the RFC's `1*DIGIT`, as a u128; a number too long for
/// that saturates (it is over any limit all the same).
fn announced_length(headers: &HeaderMap) -> Option<u128> {
    let v = headers.get(http::header::CONTENT_LENGTH)?.as_bytes();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &v[v.iter().take_while(|b| **b == b'0').count()..];
    // u128::MAX has 39 digits, so 38 always fit.
    if significant.len() > 38 {
        return Some(u128::MAX);
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn check_head_refusal(e: &GatewayError, headers: &HeaderMap, limits: &Limits) {
    let too_large = header_bytes(headers) > limits.header_bytes_max;
    match e.http_status() {
        431 => assert!(too_large, "431 for headers within the limit"),
        413 => assert!(
            !too_large,
            "413 where the headers were already over their limit"
        ),
        other => panic!("check_head refused with {other}: {e}"),
    }
}

/// RFC-style service name check, independent of `names::validate_service`.
fn is_service_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_route(path: &str, routed: &Result<(&str, &str), GatewayError>) {
    let first = path
        .strip_prefix('/')
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match (first, routed) {
        (Some(first), Ok((service, below))) => {
            assert_eq!(*service, first, "service is not the first path segment");
            assert!(is_service_name(service), "routed to bad name {service:?}");
            assert!(below.starts_with('/'), "path below {below:?} lacks '/'");
            let rejoined = format!("/{service}{below}");
            assert!(
                rejoined == path || (*below == "/" && path == format!("/{service}")),
                "{path:?} split into {service:?} + {below:?}"
            );
        }
        (None, Ok(_)) => panic!("routed {path:?}, which does not start with '/'"),
        (first, Err(e)) => {
            assert_documented(e);
            let expected = match first {
                None | Some("") => "route_not_found",
                Some(s) if !is_service_name(s) => "service_not_found",
                Some(s) => panic!("valid service {s:?} in {path:?} was refused: {e}"),
            };
            assert_eq!(e.code(), expected, "for path {path:?}");
        }
    }
}

/// What a client sent for `name` that a proxy must pass on, in order.
fn kept<'a>(headers: &'a HeaderMap, connection: &[Vec<u8>], name: &str) -> Vec<&'a [u8]> {
    if must_drop(name.as_bytes(), connection) {
        Vec::new()
    } else {
        values(headers, name)
    }
}

fn forwarded<'a>(out: &'a ForwardingReq, name: &str) -> Vec<&'a [u8]> {
    out.headers
        .iter()
        .filter(|h| h.name == name)
        .map(|h| h.value.as_ref())
        .collect()
}

fn check_forwarded(case: &Case, ctx: &ForwardContext<'_>, out: &ForwardingReq) {
    let req = &case.request;
    let headers = req.headers();
    let connection = connection_names(headers);

    assert_eq!(out.method, req.method().as_str());
    assert_eq!(out.raw_query, req.uri().query().unwrap_or(""));
    assert_eq!(out.body, case.body);
    assert_eq!(out.request_id, ctx.request_id);
    assert_eq!(out.scheme, ctx.scheme);
    assert!(out.path.starts_with('/'), "path {:?}", out.path);
    let first = req.uri().path()[1..].split('/').next();
    assert_eq!(Some(out.service.as_str()), first, "service");

    // The fields the gateway sets itself; each is checked against its exact value below.
    let gateway_set = [
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
    ];
    for h in &out.headers {
        // A client's field named in Connection goes; the gateway's own field of that name is
        // new to the next hop and stays.
        let own = gateway_set.contains(&h.name.as_str());
        assert!(
            !http_rules::is_hop_by_hop(h.name.as_bytes())
                && (own || !must_drop(h.name.as_bytes(), &connection)),
            "{:?} was forwarded but is hop-by-hop or named in Connection {connection:?}",
            h.name
        );
        let name = HeaderName::from_bytes(h.name.as_bytes());
        assert!(
            name.is_ok_and(|n| n.as_str() == h.name),
            "forwarded name {:?} is not a lower-case field name",
            h.name
        );
        assert!(
            HeaderValue::from_bytes(&h.value).is_ok(),
            "forwarded {} has an invalid value",
            h.name
        );
    }

    assert_eq!(
        forwarded(out, "x-request-id"),
        [ctx.request_id.as_bytes()],
        "x-request-id must appear once, as the context's id"
    );
    // What the client sent, combined into one field, with the peer's address appended.
    let sent_xff = kept(headers, &connection, "x-forwarded-for");
    let mut xff = sent_xff.join(&b", "[..]);
    if let Some(client) = ctx.client_addr {
        if !xff.is_empty() {
            xff.extend_from_slice(b", ");
        }
        xff.extend_from_slice(client.ip().to_string().as_bytes());
    }
    let expected_xff: Vec<&[u8]> = if sent_xff.is_empty() && ctx.client_addr.is_none() {
        vec![]
    } else {
        vec![&xff]
    };
    assert_eq!(
        forwarded(out, "x-forwarded-for"),
        expected_xff,
        "x-forwarded-for"
    );

    // Every Via value the client sent, trimmed and joined, then this gateway's entry.
    let mut via = Vec::new();
    for v in headers.get_all("via") {
        via.extend_from_slice(v.as_bytes().trim_ascii());
        via.extend_from_slice(b", ");
    }
    let protocol = match req.version() {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    via.extend_from_slice(format!("{protocol} {}", ctx.via_name).as_bytes());
    assert_eq!(forwarded(out, "via"), [&via[..]], "via");

    let proto = kept(headers, &connection, "x-forwarded-proto");
    let expected_proto = if proto.is_empty() {
        vec![ctx.scheme.as_bytes()]
    } else {
        proto
    };
    assert_eq!(forwarded(out, "x-forwarded-proto"), expected_proto);

    let host = kept(headers, &connection, "x-forwarded-host");
    let expected_host = match (host.is_empty(), out.authority.is_empty()) {
        (false, _) => host,
        (true, false) => vec![out.authority.as_bytes()],
        (true, true) => vec![],
    };
    assert_eq!(forwarded(out, "x-forwarded-host"), expected_host);

    // Every other field the client sent, and only those, arrives with its values in order.
    for name in headers.keys() {
        if !gateway_set.contains(&name.as_str()) {
            assert_eq!(
                forwarded(out, name.as_str()),
                kept(headers, &connection, name.as_str()),
                "values of {name}"
            );
        }
    }
    for h in &out.headers {
        assert!(
            gateway_set.contains(&h.name.as_str()) || headers.contains_key(h.name.as_str()),
            "{} appeared from nowhere",
            h.name
        );
    }

    if !out.traceparent.is_empty() {
        assert!(
            forwarded(out, "traceparent").contains(&out.traceparent.as_bytes()),
            "traceparent {:?} was not among the forwarded ones",
            out.traceparent
        );
        assert!(
            is_traceparent(&out.traceparent),
            "malformed traceparent {:?}",
            out.traceparent
        );
    }

    let decoded = ForwardingReq::decode(out.encode_to_vec().as_slice())
        .expect("a ForwardingReq the gateway built must decode");
    assert_eq!(&decoded, out, "ForwardingReq did not survive protobuf");
}

/// W3C Trace Context level 1, §3.2: `version-traceid-parentid-flags`, every part lower-case
/// hex (`HEXDIGLC`) of 2, 32, 16 and 2 digits, version `ff` forbidden, and an all-zero trace
/// id or parent id invalid.
fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && !zero(parts[1])
        && hex(parts[2], 16)
        && !zero(parts[2])
        && hex(parts[3], 2)
}
