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
