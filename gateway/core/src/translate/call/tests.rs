use super::*;

const LIMITS: Limits = Limits {
    body_bytes_max: 16,
    header_bytes_max: 1024,
};

fn ctx(request_id: &str) -> ForwardContext<'_> {
    ForwardContext {
        scheme: "http",
        client_addr: Some("10.1.2.3:5555".parse().unwrap()),
        gateway_node: "gw-1",
        request_id,
        deadline_unix_ms: 99,
        via_name: "gw-1",
        hops_max: 8,
    }
}

/// The HTTP request that carries the GraphQL operation.
fn carrier() -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri("/graphql")
        .header("host", "api.example")
        .header("x-forwarded-for", "1.1.1.1")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("authorization", "Bearer carrier")
        .header("content-type", "application/json")
        .header("connection", "tracestate")
        .header("tracestate", "hop=only")
        .body(())
        .unwrap()
}

fn head_of(req: &http::Request<()>) -> RequestHead<'_> {
    RequestHead {
        method: req.method(),
        uri: req.uri(),
        version: req.version(),
        headers: req.headers(),
    }
}

fn call<'a>(headers: &'a [(String, String)]) -> Call<'a> {
    Call {
        service: "orders",
        method: "PUT",
        path: "/v1/items/7",
        query: "a=1&b=%20",
        headers,
        body: Bytes::from_static(b"payload"),
    }
}

fn values<'a>(req: &'a ForwardingReq, name: &str) -> Vec<&'a [u8]> {
    req.headers
        .iter()
        .filter(|h| h.name == name)
        .map(|h| h.value.as_ref())
        .collect()
}

fn translate(call: Call<'_>) -> Result<ForwardingReq, GatewayError> {
    let carrier = carrier();
    call_to_forwarding_req(call, &head_of(&carrier), &LIMITS, &ctx("rid-9"))
}

#[test]
fn a_call_becomes_the_request_rest_would_have_sent() {
    let own = [
        ("X-Custom".to_owned(), "a".to_owned()),
        ("x-custom".to_owned(), "b".to_owned()),
        ("Connection".to_owned(), "x-hop".to_owned()),
        ("x-hop".to_owned(), "dropped".to_owned()),
        ("keep-alive".to_owned(), "5".to_owned()),
    ];
    let req = translate(call(&own)).unwrap();
    assert_eq!(req.method, "PUT");
    assert_eq!(req.service, "orders");
    assert_eq!(req.path, "/v1/items/7");
    assert_eq!(req.raw_query, "a=1&b=%20");
    assert_eq!(req.body.as_ref(), b"payload");
    assert_eq!(req.authority, "api.example");
    assert_eq!(req.request_id, "rid-9");
    assert_eq!(req.client_addr, "10.1.2.3:5555");
    assert_eq!(req.gateway_node, "gw-1");
    assert_eq!(
        req.traceparent,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(values(&req, "x-custom"), [b"a", b"b"]);
    assert!(values(&req, "x-hop").is_empty());
    assert!(values(&req, "keep-alive").is_empty());
    assert!(values(&req, "connection").is_empty());
    // Inherited from the carrier: forwarding and tracing, with the client appended as in REST.
    assert_eq!(values(&req, "x-forwarded-for"), [b"1.1.1.1, 10.1.2.3"]);
    assert_eq!(values(&req, "host"), [b"api.example"]);
    assert_eq!(values(&req, "x-forwarded-host"), [b"api.example"]);
    assert_eq!(values(&req, "x-forwarded-proto"), [b"http"]);
    assert_eq!(values(&req, "x-request-id"), [b"rid-9"]);
    // Not inherited: the carrier's credentials and content type, and what its Connection named.
    assert!(values(&req, "authorization").is_empty());
    assert!(values(&req, "content-type").is_empty());
    assert!(values(&req, "tracestate").is_empty());
}

#[test]
fn a_header_the_call_sets_replaces_the_inherited_one() {
    let own = [
        ("traceparent".to_owned(), "00-1-2-3".to_owned()),
        ("x-forwarded-for".to_owned(), "9.9.9.9".to_owned()),
    ];
    let req = translate(call(&own)).unwrap();
    assert_eq!(values(&req, "traceparent"), [b"00-1-2-3"]);
    assert_eq!(req.traceparent, "", "a malformed traceparent is not copied");
    assert_eq!(values(&req, "x-forwarded-for"), [b"9.9.9.9, 10.1.2.3"]);
}

#[test]
fn the_request_id_comes_from_the_calls_own_header_if_plausible() {
    let own = [("X-Request-Id".to_owned(), "call-7".to_owned())];
    assert_eq!(call_request_id(&call(&own)), Some("call-7"));
    let odd = [("x-request-id".to_owned(), "has space".to_owned())];
    assert_eq!(call_request_id(&call(&odd)), None);
    assert_eq!(call_request_id(&call(&[])), None);
}

#[test]
fn an_http2_carrier_lends_its_authority() {
    let carrier = http::Request::builder()
        .method("POST")
        .uri("http://h2.example:8080/graphql")
        .version(http::Version::HTTP_2)
        .body(())
        .unwrap();
    let req = call_to_forwarding_req(call(&[]), &head_of(&carrier), &LIMITS, &ctx("r")).unwrap();
    assert_eq!(req.authority, "h2.example:8080");
    assert_eq!(req.path, "/v1/items/7");
    assert_eq!(req.http_version, "HTTP/2.0");
}

#[test]
fn bad_arguments_name_the_field() {
    let cases: [(&str, &str, &str, &str); 7] = [
        ("GE T", "/x", "", "method"),
        ("GET", "x", "", "path"),
        ("GET", "/a?b", "", "path"),
        ("GET", "/a b", "", "path"),
        ("GET", "/a#b", "", "path"),
        ("GET", "/a", "q=#", "query"),
        ("GET", "/a", "q= 1", "query"),
    ];
    for (method, path, query, field) in cases {
        let c = Call {
            method,
            path,
            query,
            ..call(&[])
        };
        match translate(c) {
            Err(GatewayError::InvalidArgument { field: f, .. }) => {
                assert_eq!(f, field, "{method} {path} {query}")
            }
            other => panic!("{method} {path} {query}: {other:?}"),
        }
    }
    let bad_name = [("bad name".to_owned(), "v".to_owned())];
    let bad_value = [("x".to_owned(), "a\r\nb".to_owned())];
    for headers in [&bad_name[..], &bad_value[..]] {
        let err = translate(call(headers)).unwrap_err();
        assert!(
            matches!(
                err,
                GatewayError::InvalidArgument {
                    field: "headers",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn invalid_services_and_limits_are_refused_as_in_rest() {
    for service in ["", "a/b", "%6frders", "../x"] {
        let err = translate(Call {
            service,
            ..call(&[])
        })
        .unwrap_err();
        assert_eq!(err.code(), "service_not_found", "{service:?}");
    }
    let err = translate(Call {
        body: Bytes::from(vec![b'a'; 17]),
        ..call(&[])
    })
    .unwrap_err();
    assert_eq!(err.code(), "body_too_large");
    let big = [("x-big".to_owned(), "v".repeat(2000))];
    assert_eq!(
        translate(call(&big)).unwrap_err().code(),
        "headers_too_large"
    );
}

#[test]
fn json_bodies_are_recognised_by_type_or_shape() {
    let typed = |ct: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    };
    let none = HeaderMap::new();
    assert_eq!(
        body_json(&typed("application/json; charset=utf-8"), b"42"),
        Some(serde_json::json!(42))
    );
    assert_eq!(
        body_json(&typed("application/problem+json"), br#""x""#),
        Some(serde_json::json!("x"))
    );
    assert_eq!(
        body_json(&none, b" {\"a\":[1]}"),
        Some(serde_json::json!({"a": [1]}))
    );
    assert_eq!(
        body_json(&typed("text/plain"), b"[1,2]"),
        Some(serde_json::json!([1, 2]))
    );
    assert_eq!(
        body_json(&none, b"42"),
        None,
        "a bare scalar needs a JSON type"
    );
    assert_eq!(body_json(&typed("application/json"), b"{oops"), None);
    assert_eq!(body_json(&none, b"hello"), None);
    let deep = "[".repeat(100_000);
    assert_eq!(body_json(&none, deep.as_bytes()), None, "no stack overflow");
}
