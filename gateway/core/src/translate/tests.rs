use super::*;

fn head_of(req: &http::Request<()>) -> RequestHead<'_> {
    RequestHead {
        method: req.method(),
        uri: req.uri(),
        version: req.version(),
        headers: req.headers(),
    }
}

fn ctx() -> ForwardContext<'static> {
    ForwardContext {
        scheme: "http",
        client_addr: Some("10.1.2.3:5555".parse().unwrap()),
        gateway_node: "gw-1",
        request_id: "rid-1",
        deadline_unix_ms: 99,
        via_name: "gw-1",
        hops_max: 8,
    }
}

fn names_of(req: &ForwardingReq) -> Vec<&str> {
    req.headers.iter().map(|h| h.name.as_str()).collect()
}

fn value_of<'a>(req: &'a ForwardingReq, name: &str) -> Vec<&'a [u8]> {
    req.headers
        .iter()
        .filter(|h| h.name == name)
        .map(|h| h.value.as_ref())
        .collect()
}

#[test]
fn routes() {
    assert_eq!(route("/orders/v1/items").unwrap(), ("orders", "/v1/items"));
    assert_eq!(route("/orders").unwrap(), ("orders", "/"));
    assert_eq!(route("/orders/").unwrap(), ("orders", "/"));
    assert_eq!(route("/orders//a/../b").unwrap(), ("orders", "//a/../b"));
    assert_eq!(route("/").unwrap_err().code(), "route_not_found");
    assert_eq!(route("//x").unwrap_err().code(), "route_not_found");
    assert_eq!(
        route("/%6frders/x").unwrap_err().code(),
        "service_not_found"
    );
    assert_eq!(route("/../etc").unwrap_err().code(), "service_not_found");
}

#[test]
fn request_fields_are_carried_and_headers_keep_order_and_duplicates() {
    let req = http::Request::builder()
        .method("POST")
        .uri("/orders/v1/items?a=1&b=%20")
        .header("host", "api.example")
        .header("accept", "text/plain")
        .header("x-custom", "1")
        .header("accept", "application/json")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(())
        .unwrap();
    let out = to_forwarding_req(&head_of(&req), Bytes::from_static(b"{}"), &ctx()).unwrap();
    assert_eq!(out.method, "POST");
    assert_eq!(out.service, "orders");
    assert_eq!(out.path, "/v1/items");
    assert_eq!(out.raw_query, "a=1&b=%20");
    assert_eq!(out.authority, "api.example");
    assert_eq!(out.http_version, "HTTP/1.1");
    assert_eq!(out.client_addr, "10.1.2.3:5555");
    assert_eq!(out.request_id, "rid-1");
    assert_eq!(out.deadline_unix_ms, 99);
    assert_eq!(out.gateway_node, "gw-1");
    assert_eq!(out.body.as_ref(), b"{}");
    assert_eq!(
        out.traceparent,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    // HeaderMap groups duplicates by name (its iteration order); both values survive.
    assert_eq!(
        value_of(&out, "accept"),
        [&b"text/plain"[..], &b"application/json"[..]]
    );
    assert_eq!(value_of(&out, "x-forwarded-for"), [&b"10.1.2.3"[..]]);
    assert_eq!(value_of(&out, "x-forwarded-proto"), [&b"http"[..]]);
    assert_eq!(value_of(&out, "x-forwarded-host"), [&b"api.example"[..]]);
    assert_eq!(value_of(&out, "x-request-id"), [&b"rid-1"[..]]);
}

#[test]
fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
    let req = http::Request::builder()
        .uri("/s/")
        .header("connection", "keep-alive, X-Secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic x")
        .header("proxy-connection", "close")
        .header("te", "trailers")
        .header("trailer", "x")
        .header("transfer-encoding", "chunked")
        .header("upgrade", "h2c")
        .header("x-secret", "s")
        .header("x-kept", "k")
        .body(())
        .unwrap();
    let out = to_forwarding_req(&head_of(&req), Bytes::new(), &ctx()).unwrap();
    let names = names_of(&out);
    for gone in [
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-secret",
    ] {
        assert!(!names.contains(&gone), "{gone} was forwarded: {names:?}");
    }
    assert!(names.contains(&"x-kept"));
}

/// Found by the `request` fuzz target: one non-ASCII token in a Connection value made the
/// whole value unreadable as text, so the fields it named were forwarded.
#[test]
fn a_non_ascii_connection_token_does_not_hide_the_others() {
    let req = http::Request::builder()
        .uri("/s/")
        .header(
            "connection",
            HeaderValue::from_bytes(b"X-Secret, caf\xc3\xa9,\xff").unwrap(),
        )
        .header("x-secret", "s")
        .header("x-kept", "k")
        .body(())
        .unwrap();
    let out = to_forwarding_req(&head_of(&req), Bytes::new(), &ctx()).unwrap();
    let names = names_of(&out);
    assert!(
        !names.contains(&"x-secret"),
        "x-secret was forwarded: {names:?}"
    );
    assert!(names.contains(&"x-kept"));

    let r = to_http_response(resp(
        200,
        &[
            ("connection", b"x-private,\xff"),
            ("x-private", b"p"),
            ("x-thing", b"t"),
        ],
    ))
    .unwrap();
    assert!(!r.headers().contains_key("x-private"));
    assert!(r.headers().contains_key("x-thing"));
}

#[test]
fn forwarding_headers_append_and_keep_what_the_load_balancer_set() {
    let req = http::Request::builder()
        .uri("/s/x")
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "2.2.2.2, 3.3.3.3")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.example")
        .header("x-request-id", "client-id")
        .body(())
        .unwrap();
    let out = to_forwarding_req(&head_of(&req), Bytes::new(), &ctx()).unwrap();
    assert_eq!(
        value_of(&out, "x-forwarded-for"),
        [&b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"[..]]
    );
    assert_eq!(value_of(&out, "x-forwarded-proto"), [&b"https"[..]]);
    assert_eq!(value_of(&out, "x-forwarded-host"), [&b"public.example"[..]]);
    // The context's id wins: the node decides which id a request is known by.
    assert_eq!(value_of(&out, "x-request-id"), [&b"rid-1"[..]]);
}

#[test]
fn x_forwarded_for_is_what_came_then_the_client() {
    let with = |values: &[&str], client: Option<SocketAddr>| {
        let mut req = http::Request::builder().uri("/s/x");
        for v in values {
            req = req.header("x-forwarded-for", *v);
        }
        let req = req.body(()).unwrap();
        let ctx = ForwardContext {
            client_addr: client,
            ..ctx()
        };
        let out = to_forwarding_req(&head_of(&req), Bytes::new(), &ctx).unwrap();
        value_of(&out, "x-forwarded-for")
            .into_iter()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect::<Vec<_>>()
    };
    let client = Some(SocketAddr::from(([192, 0, 2, 7], 1)));
    assert_eq!(with(&[], client), ["192.0.2.7"]);
    assert_eq!(with(&[""], client), ["192.0.2.7"]);
    assert_eq!(with(&["1.1.1.1"], client), ["1.1.1.1, 192.0.2.7"]);
    assert_eq!(with(&["1.1.1.1", "2.2.2.2"], None), ["1.1.1.1, 2.2.2.2"]);
    assert!(with(&[], None).is_empty());
}

#[test]
fn client_request_ids_are_kept_only_when_plausible() {
    let mut h = HeaderMap::new();
    assert_eq!(client_request_id(&h), None);
    h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
    assert_eq!(client_request_id(&h), Some("abc-123"));
    h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
    assert_eq!(client_request_id(&h), None);
    h.insert(
        X_REQUEST_ID,
        HeaderValue::from_str(&"x".repeat(129)).unwrap(),
    );
    assert_eq!(client_request_id(&h), None);
}

#[test]
fn malformed_traceparent_passes_through_but_is_not_copied() {
    let req = http::Request::builder()
        .uri("/s/x")
        .header("traceparent", "not-a-trace")
        .body(())
        .unwrap();
    let out = to_forwarding_req(&head_of(&req), Bytes::new(), &ctx()).unwrap();
    assert_eq!(out.traceparent, "");
    assert_eq!(value_of(&out, "traceparent"), [&b"not-a-trace"[..]]);
}

/// Found by the `request` fuzz target: a traceparent with an all-zero trace id (which Trace
/// Context calls invalid) was copied into the forwarding metadata; upper-case hex was too.
#[test]
fn traceparent_with_zero_ids_or_upper_case_hex_is_not_copied() {
    for bad in [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
    ] {
        let req = http::Request::builder()
            .uri("/s/x")
            .header("traceparent", bad)
            .body(())
            .unwrap();
        let out = to_forwarding_req(&head_of(&req), Bytes::new(), &ctx()).unwrap();
        assert_eq!(out.traceparent, "", "{bad} was copied");
        assert_eq!(value_of(&out, "traceparent"), [bad.as_bytes()]);
    }
}

#[test]
fn head_limits() {
    let limits = Limits {
        body_bytes_max: 10,
        header_bytes_max: 100,
    };
    let ok = http::Request::builder()
        .uri("/s/")
        .header("a", "b")
        .body(())
        .unwrap();
    assert!(check_head(&head_of(&ok), &limits).is_ok());
    let big = http::Request::builder()
        .uri("/s/")
        .header("a", "b".repeat(100))
        .body(())
        .unwrap();
    assert_eq!(
        check_head(&head_of(&big), &limits)
            .unwrap_err()
            .http_status(),
        431
    );
    let long = http::Request::builder()
        .uri("/s/")
        .header("content-length", "11")
        .body(())
        .unwrap();
    assert_eq!(
        check_head(&head_of(&long), &limits)
            .unwrap_err()
            .http_status(),
        413
    );
}

/// Found by the `request` fuzz target: a Content-Length too long for a u64 failed to parse
/// and was treated as no length at all, so the request passed the head check.
#[test]
fn content_length_beyond_u64_is_too_large() {
    let limits = Limits {
        body_bytes_max: 10,
        header_bytes_max: 1000,
    };
    for announced in ["18446744073709551616", "99999999999999999999999999"] {
        let req = http::Request::builder()
            .uri("/s/")
            .header("content-length", announced)
            .body(())
            .unwrap();
        let err = check_head(&head_of(&req), &limits).unwrap_err();
        assert_eq!(err.http_status(), 413, "{announced}");
    }
    // u64::MAX itself parses, and is over the limit as before.
    let req = http::Request::builder()
        .uri("/s/")
        .header("content-length", u64::MAX.to_string())
        .body(())
        .unwrap();
    assert_eq!(
        check_head(&head_of(&req), &limits)
            .unwrap_err()
            .http_status(),
        413
    );
    // A value that is not a number is the HTTP server's to refuse, not a 413.
    let req = http::Request::builder()
        .uri("/s/")
        .header("content-length", "ten")
        .body(())
        .unwrap();
    assert!(check_head(&head_of(&req), &limits).is_ok());
}

fn resp(status: u32, headers: &[(&str, &[u8])]) -> ForwardingResp {
    ForwardingResp {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| Header {
                name: (*n).to_owned(),
                value: Bytes::copy_from_slice(v),
            })
            .collect(),
        body: Bytes::from_static(b"body"),
    }
}

#[test]
fn valid_responses_pass_with_duplicates_in_order() {
    let r = to_http_response(resp(
        201,
        &[
            ("set-cookie", b"a=1"),
            ("x-thing", b"t"),
            ("set-cookie", b"b=2"),
            ("connection", b"close, x-private"),
            ("x-private", b"p"),
            ("content-length", b"999"),
            ("transfer-encoding", b"chunked"),
        ],
    ))
    .unwrap();
    assert_eq!(r.status(), 201);
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    for gone in [
        "connection",
        "x-private",
        "content-length",
        "transfer-encoding",
    ] {
        assert!(!r.headers().contains_key(gone), "{gone}");
    }
    assert_eq!(r.body().as_ref(), b"body");
}

#[test]
fn invalid_responses_are_refused_with_a_reason() {
    for status in [0, 99, 100, 101, 199, 600, 70_000] {
        let err = to_http_response(resp(status, &[])).unwrap_err();
        assert!(err.contains("status"), "{status}: {err}");
    }
    for (name, value) in [
        ("bad name", &b"v"[..]),
        ("", b"v"),
        ("x-inject", b"a\r\nset-cookie: evil=1"),
        ("x-nul", b"a\0b"),
    ] {
        let err = to_http_response(resp(200, &[(name, value)])).unwrap_err();
        assert!(err.contains("header"), "{name:?}: {err}");
    }
    let many: Vec<(String, Vec<u8>)> = (0..=RESPONSE_HEADERS_MAX)
        .map(|i| (format!("x-{i}"), b"v".to_vec()))
        .collect();
    let many: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    assert!(to_http_response(resp(200, &many)).is_err());
}

#[test]
fn bodiless_statuses_drop_the_body() {
    assert!(to_http_response(resp(204, &[])).unwrap().body().is_empty());
    assert!(to_http_response(resp(304, &[])).unwrap().body().is_empty());
}

#[test]
fn the_forwarded_request_carries_via_and_a_looped_one_is_refused() {
    let req = http::Request::builder()
        .uri("/orders/x")
        .header("via", "1.1 edge")
        .header("accept", "*/*")
        .body(())
        .unwrap();
    let out = to_forwarding_req(&head_of(&req), Bytes::new(), &ctx()).unwrap();
    assert_eq!(value_of(&out, "via"), [&b"1.1 edge, 1.1 gw-1"[..]]);
    let looped = http::Request::builder()
        .uri("/orders/x")
        .header("via", "1.1 edge, 2 gw-1")
        .body(())
        .unwrap();
    let err = to_forwarding_req(&head_of(&looped), Bytes::new(), &ctx()).unwrap_err();
    assert_eq!(err.code(), "loop_detected");
    let far = http::Request::builder()
        .uri("/orders/x")
        .header("via", ["1.1 p"; 9].join(", "))
        .body(())
        .unwrap();
    let err = to_forwarding_req(&head_of(&far), Bytes::new(), &ctx()).unwrap_err();
    assert_eq!(err.http_status(), 508);
}

mod straight_to_the_wire {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::trace::set_traceparent;

    const SPAN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Header names the translator treats each its own way, and some it passes as they are.
    fn name() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "accept",
            "x-custom",
            "host",
            "connection",
            "keep-alive",
            "te",
            "proxy-authorization",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
            "via",
            "traceparent",
        ])
    }

    /// A field value: visible ASCII, spaces and obs-text, sometimes empty, sometimes long
    /// enough that the header's protobuf length takes two bytes; some name a header (for
    /// `Connection`), some are trace contexts, valid or not.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(prop_oneof![0x21u8..0x7f, Just(b' '), 0x80u8..=0xff], 0..40),
            prop::collection::vec(0x21u8..0x7f, 100..300),
            Just(b"x-custom, accept".to_vec()),
            Just(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()),
            Just(b"00-00000000000000000000000000000000-b7ad6b7169203331-01".to_vec()),
            Just(b"1.1 edge".to_vec()),
        ]
    }

    fn client() -> impl Strategy<Value = Option<SocketAddr>> {
        prop_oneof![
            Just(None),
            any::<([u8; 4], u16)>().prop_map(|(ip, port)| Some(SocketAddr::from((ip, port)))),
            any::<([u16; 8], u16, u32)>().prop_map(|(ip, port, scope)| {
                let ip = Ipv6Addr::from(ip);
                Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
            }),
        ]
    }

    fn uri() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/orders/v1/items?a=1&b=%20",
            "/orders",
            "http://api.example:8080/orders/x",
            "/",
            "/%6frders/x",
        ])
    }

    proptest! {
        /// The request written straight to protobuf is, byte for byte, what prost writes of
        /// the `ForwardingReq` built for it with the same trace context; and a request the
        /// one refuses, the other refuses alike.
        #[test]
        fn it_is_the_built_request_to_the_byte(
            fields in prop::collection::vec((name(), value()), 0..12),
            uri in uri(),
            client in client(),
            http10 in any::<bool>(),
            body in prop::collection::vec(any::<u8>(), 0..300),
            deadline_unix_ms in prop_oneof![Just(0u64), any::<u64>()],
        ) {
            let mut builder = http::Request::builder()
                .method("POST")
                .uri(uri)
                .version(if http10 { Version::HTTP_10 } else { Version::HTTP_11 });
            for (name, value) in &fields {
                builder = builder.header(*name, HeaderValue::from_bytes(value).unwrap());
            }
            let req = builder.body(()).unwrap();
            let head = head_of(&req);
            let ctx = ForwardContext { client_addr: client, deadline_unix_ms, ..ctx() };
            let body = Bytes::from(body);
            let mut out = BytesMut::new();
            let encoded = encode_forwarding_req(&head, &body, &ctx, SPAN, &mut out);
            match to_forwarding_req(&head, body.clone(), &ctx) {
                Ok(mut built) => {
                    let encoded = encoded.unwrap();
                    set_traceparent(&mut built, SPAN.to_owned());
                    prop_assert_eq!(&out[..], &built.encode_to_vec()[..]);
                    prop_assert_eq!(encoded.service, built.service.as_str());
                    let via = built.headers.iter().rev().find(|h| h.name == "via").unwrap();
                    prop_assert_eq!(&encoded.via[..], &via.value[..]);
                }
                Err(error) => prop_assert_eq!(encoded.unwrap_err().code(), error.code()),
            }
        }

        /// Addresses are written as `Display` writes them.
        #[test]
        fn addresses_read_as_display_writes_them(client in client()) {
            if let Some(addr) = client {
                let (socket, ip) = (AddrText::socket(addr), AddrText::ip(addr.ip()));
                prop_assert_eq!(socket.as_str(), addr.to_string());
                prop_assert_eq!(ip.as_str(), addr.ip().to_string());
            }
        }
    }

    #[test]
    fn decimal_writes_what_display_writes() {
        let mut buf = [0u8; DECIMAL_DIGITS_MAX];
        for n in [0, 7, 10, 99_999_999, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    #[test]
    fn every_octet_reads_as_display_writes_it() {
        for n in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(n, 255 - n, n / 2, 0));
            assert_eq!(AddrText::ip(ip).as_str(), ip.to_string());
            let addr = SocketAddr::new(ip, u16::from(n) * 257);
            assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
        }
    }

    #[test]
    fn the_longest_address_fits() {
        let ip = Ipv6Addr::from([0xffff; 8]);
        let addr = SocketAddr::V6(SocketAddrV6::new(ip, 65535, 0, u32::MAX));
        assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
    }
}
