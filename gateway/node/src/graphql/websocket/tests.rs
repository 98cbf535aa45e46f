use super::*;

#[test]
fn an_address_holds_at_most_max_slots_and_its_entry_goes_with_its_last() {
    let sockets = ClientSockets::new(2);
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    let first = sockets.try_acquire(a).unwrap();
    let second = sockets.try_acquire(a).unwrap();
    assert!(sockets.try_acquire(a).is_none(), "a third from one address");
    let other = sockets.try_acquire(b).unwrap();
    assert_eq!(sockets.addresses(), 2);
    drop(first);
    let again = sockets
        .try_acquire(a)
        .expect("a slot given back is free again");
    drop((second, again, other));
    assert_eq!(sockets.addresses(), 0, "no entry outlives its sockets");
}

#[test]
fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
    let key = |s: &str| client_key(s.parse().unwrap());
    assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
    assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
    assert_eq!(key("192.0.2.1").to_string(), "192.0.2.1");
}

#[test]
fn the_refusal_is_an_error_message_for_the_operation_in_each_protocol() {
    let inbound = |protocol| Inbound {
        source: Box::pin(futures_util::stream::empty()),
        state: Arc::default(),
        refusals: PollSender::new(mpsc::channel(1).0),
        pending: None,
        protocol,
        operations_max: 1,
        counted: Counted {
            telemetry: Arc::new(Telemetry::new(&crate::config::Config::default(), "test")),
            listener: ListenerLabel::Public,
        },
    };
    let new = inbound(WebSocketProtocols::GraphQLWS);
    let subscribe =
        |id: &str| format!(r#"{{"type":"subscribe","id":"{id}","payload":{{"query":"{{ a }}"}}}}"#);
    assert!(matches!(
        new.admit(subscribe("1").as_bytes()),
        Admission::Pass
    ));
    assert!(
        matches!(new.admit(subscribe("1").as_bytes()), Admission::Pass),
        "the same id again"
    );
    let Admission::Refuse(text) = new.admit(subscribe("2").as_bytes()) else {
        panic!("a second operation past a bound of one");
    };
    let refusal: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(refusal["type"], "error");
    assert_eq!(refusal["id"], "2");
    assert_eq!(
        refusal["payload"][0]["extensions"]["code"], "rate_limited",
        "{refusal}"
    );
    note_completion(&new.state, r#"{"type":"complete","id":"1"}"#);
    assert!(
        matches!(new.admit(subscribe("2").as_bytes()), Admission::Pass),
        "room again"
    );

    let old = inbound(WebSocketProtocols::SubscriptionsTransportWS);
    let start =
        |id: &str| format!(r#"{{"type":"start","id":"{id}","payload":{{"query":"{{ a }}"}}}}"#);
    assert!(matches!(old.admit(start("a").as_bytes()), Admission::Pass));
    let Admission::Refuse(text) = old.admit(start("b").as_bytes()) else {
        panic!("a second operation past a bound of one");
    };
    let refusal: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        refusal["payload"]["extensions"]["code"], "rate_limited",
        "{refusal}"
    );
}

fn carrier(headers: http::HeaderMap) -> Carrier {
    Carrier {
        method: http::Method::GET,
        uri: http::Uri::from_static("/graphql"),
        version: http::Version::HTTP_11,
        headers,
        client: "192.0.2.1:4000".parse().unwrap(),
        peer: None,
    }
}

#[test]
fn a_credential_in_connection_init_becomes_the_sockets_authorization_header() {
    let payload = serde_json::json!({ "authorization": "Bearer abc" });
    let got = with_init_credential(carrier(http::HeaderMap::new()), &payload).unwrap();
    assert_eq!(got.headers[http::header::AUTHORIZATION], "Bearer abc");
    // The key in any case; other keys are the client's business.
    let payload = serde_json::json!({ "Authorization": "Bearer x", "other": 1 });
    let got = with_init_credential(carrier(http::HeaderMap::new()), &payload).unwrap();
    assert_eq!(got.headers[http::header::AUTHORIZATION], "Bearer x");
    // No payload, or none of ours: nothing changes.
    for payload in [
        serde_json::Value::Null,
        serde_json::json!({}),
        serde_json::json!([1]),
    ] {
        let got = with_init_credential(carrier(http::HeaderMap::new()), &payload).unwrap();
        assert!(!got.headers.contains_key(http::header::AUTHORIZATION));
    }
}

#[test]
fn a_credential_in_connection_init_that_cannot_be_one_is_refused() {
    let refused = |payload: serde_json::Value, headers: http::HeaderMap| {
        let error = with_init_credential(carrier(headers), &payload).unwrap_err();
        assert_eq!(error.code(), "invalid_argument", "{payload}: {error}");
    };
    refused(
        serde_json::json!({ "authorization": 42 }),
        http::HeaderMap::new(),
    );
    refused(
        serde_json::json!({ "authorization": "Bearer a\r\nx: y" }),
        http::HeaderMap::new(),
    );
    refused(
        serde_json::json!({ "authorization": "Bearer a", "AUTHORIZATION": "Bearer b" }),
        http::HeaderMap::new(),
    );
    let mut upgrade = http::HeaderMap::new();
    upgrade.insert(http::header::AUTHORIZATION, "Bearer first".parse().unwrap());
    refused(
        serde_json::json!({ "authorization": "Bearer second" }),
        upgrade.clone(),
    );
    // The upgrade's own credential stands when the payload brings none.
    let got = with_init_credential(carrier(upgrade), &serde_json::json!({})).unwrap();
    assert_eq!(got.headers[http::header::AUTHORIZATION], "Bearer first");
}
