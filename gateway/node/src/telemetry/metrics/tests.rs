use super::*;

fn encoded(m: &Metrics) -> String {
    let mut out = String::new();
    m.encode(&mut out);
    out
}

/// The value of the sample line that starts with `series` (name and labels).
fn value(out: &str, series: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[test]
fn a_request_is_counted_under_its_labels_and_latency_bucket() {
    let m = Metrics::default();
    m.request(
        Front::Rest,
        "sample",
        &Method::GET,
        200,
        Duration::from_micros(700),
    );
    m.request(
        Front::Rest,
        "sample",
        &Method::GET,
        200,
        Duration::from_millis(30),
    );
    m.request(
        Front::Rest,
        "",
        &Method::from_bytes(b"BREW").unwrap(),
        404,
        Duration::ZERO,
    );
    let out = encoded(&m);
    assert!(out.contains("switchyard_http_requests_total{front=\"rest\",service=\"sample\",method=\"GET\",status=\"200\"} 2\n"), "{out}");
    assert!(out.contains("switchyard_http_requests_total{front=\"rest\",service=\"\",method=\"OTHER\",status=\"404\"} 1\n"), "{out}");
    // 700 µs falls in the 1 ms bucket, not the 0.5 ms one; 30 ms in the 50 ms one.
    assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"0.0005\"} 0\n"), "{out}");
    assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"0.001\"} 1\n"), "{out}");
    assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"0.025\"} 1\n"), "{out}");
    assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"0.05\"} 2\n"), "{out}");
    assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"10\"} 2\n"), "{out}");
    assert!(out.contains("switchyard_http_request_duration_seconds_bucket{front=\"rest\",service=\"sample\",le=\"+Inf\"} 2\n"), "{out}");
    assert!(
        out.contains(
            "switchyard_http_request_duration_seconds_count{front=\"rest\",service=\"sample\"} 2\n"
        ),
        "{out}"
    );
    let sum = value(
        &out,
        "switchyard_http_request_duration_seconds_sum{front=\"rest\",service=\"sample\"}",
    );
    assert!((sum.unwrap() - 0.0307).abs() < 1e-9, "{out}");
    assert_eq!(m.requests_of(Front::Rest, "sample", 200), 2);
    assert_eq!(m.requests_of(Front::Rest, "", 404), 1);
    assert_eq!(m.requests_of(Front::Graphql, "sample", 200), 0);
    assert_eq!(m.requests_of(Front::Rest, "unseen", 200), 0);
}

#[test]
fn requests_of_sums_over_methods() {
    let m = Metrics::default();
    for method in [Method::GET, Method::POST, Method::POST] {
        m.request(Front::GraphqlCall, "s", &method, 201, Duration::ZERO);
    }
    assert_eq!(m.requests_of(Front::GraphqlCall, "s", 201), 3);
}

#[test]
fn in_flight_falls_back_when_the_guard_drops() {
    let m = Metrics::default();
    let g = m.in_flight(Front::Graphql);
    assert!(encoded(&m).contains("switchyard_http_requests_in_flight{front=\"graphql\"} 1\n"));
    drop(g);
    assert!(encoded(&m).contains("switchyard_http_requests_in_flight{front=\"graphql\"} 0\n"));
}

#[test]
fn every_family_is_announced_before_anything_is_counted() {
    let out = encoded(&Metrics::default());
    let types: Vec<&str> = out.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    assert_eq!(
        types,
        [
            "# TYPE switchyard_http_requests_total counter",
            "# TYPE switchyard_http_request_duration_seconds histogram",
            "# TYPE switchyard_http_requests_in_flight gauge",
            "# TYPE switchyard_upstream_errors_total counter",
            "# TYPE switchyard_upstream_retries_total counter",
            "# TYPE switchyard_bus_events_applied_total counter",
            "# TYPE switchyard_bus_events_changed_total counter",
            "# TYPE switchyard_bus_apply_runs_total counter",
            "# TYPE switchyard_bus_events_quarantined_total counter",
            "# TYPE switchyard_registry_changes_total counter",
            "# TYPE switchyard_evictions_total counter",
            "# TYPE switchyard_registry_entries_collected_total counter",
            "# TYPE switchyard_registry_quota_refusals_total counter",
            "# TYPE switchyard_listener_refusals_total counter",
            "# TYPE switchyard_address_refusals_total counter",
            "# TYPE switchyard_control_auth_refusals_total counter",
            "# TYPE switchyard_control_key_reloads_total counter",
            "# TYPE switchyard_tls_reloads_total counter",
            "# TYPE switchyard_control_keys gauge",
            "# TYPE switchyard_upstream_ejections_total counter",
            "# TYPE switchyard_graphql_websocket_refusals_total counter",
            "# TYPE switchyard_rate_limit_requests_total counter",
            "# TYPE switchyard_rate_limit_fallbacks_total counter",
            "# TYPE switchyard_rate_limit_redis_errors_total counter",
            "# TYPE switchyard_rate_limit_buckets gauge",
            "# TYPE switchyard_rate_limit_live_gateways gauge",
        ],
        "{out}"
    );
    assert!(out.contains(
        "# HELP switchyard_http_requests_total HTTP requests answered, by front, service, method and status.\n"
    ), "{out}");
    for front in ["rest", "graphql", "graphql_call"] {
        assert!(
            out.contains(&format!(
                "switchyard_http_requests_in_flight{{front=\"{front}\"}} 0\n"
            )),
            "{out}"
        );
    }
    for series in [
        "switchyard_bus_events_applied_total{origin=\"local\"} 0",
        "switchyard_bus_events_applied_total{origin=\"remote\"} 0",
        "switchyard_bus_events_changed_total 0",
        "switchyard_bus_apply_runs_total 0",
        "switchyard_bus_events_quarantined_total{reason=\"stamp_ahead\"} 0",
        "switchyard_bus_events_quarantined_total{reason=\"lease_out_of_bounds\"} 0",
        "switchyard_bus_events_quarantined_total{reason=\"undecodable\"} 0",
        "switchyard_address_refusals_total{stage=\"register\",reason=\"link_local\"} 0",
        "switchyard_address_refusals_total{stage=\"connect\",reason=\"own_listener\"} 0",
        "switchyard_bus_events_quarantined_total{reason=\"key_mismatch\"} 0",
        "switchyard_registry_changes_total{op=\"register\"} 0",
        "switchyard_registry_changes_total{op=\"deregister\"} 0",
        "switchyard_registry_changes_total{op=\"evict\"} 0",
        "switchyard_evictions_total 0",
    ] {
        assert!(out.contains(&format!("{series}\n")), "{out}");
    }
    for listener in ["public", "control"] {
        for reason in REFUSAL_REASONS {
            let series = format!(
                "switchyard_listener_refusals_total{{listener=\"{listener}\",reason=\"{reason}\"}} 0\n"
            );
            assert!(out.contains(&series), "{out}");
        }
        for reason in WebSocketRefusal::ALL {
            let series = format!(
                "switchyard_graphql_websocket_refusals_total{{listener=\"{listener}\",reason=\"{}\"}} 0\n",
                reason.label()
            );
            assert!(out.contains(&series), "{out}");
        }
    }
}

#[test]
fn websocket_refusals_are_counted_per_listener_and_reason() {
    let m = Metrics::default();
    m.websocket_refusal(ListenerLabel::Public, WebSocketRefusal::InitTimeout);
    assert_eq!(
        m.websocket_refusals_of(ListenerLabel::Public, WebSocketRefusal::InitTimeout),
        1
    );
    assert_eq!(
        m.websocket_refusals_of(ListenerLabel::Control, WebSocketRefusal::InitTimeout),
        0
    );
    assert!(encoded(&m).contains(
        "switchyard_graphql_websocket_refusals_total{listener=\"public\",reason=\"init_timeout\"} 1\n"
    ));
}

#[test]
fn refusals_are_counted_per_listener_and_reason() {
    let m = Metrics::default();
    m.listener_refusal(ListenerLabel::Control, "body_timeout");
    m.listener_refusal(ListenerLabel::Control, "not_a_reason");
    assert_eq!(
        m.listener_refusals_of(ListenerLabel::Control, "body_timeout"),
        1
    );
    assert_eq!(
        m.listener_refusals_of(ListenerLabel::Public, "body_timeout"),
        0
    );
    assert!(encoded(&m).contains(
        "switchyard_listener_refusals_total{listener=\"control\",reason=\"body_timeout\"} 1\n"
    ));
}

/// Counts the same things in `order` on fresh metrics. The latencies are multiples of 1/8 s,
/// so a histogram's sum (of `f64` seconds) does not depend on the order either.
fn fill(order: impl Iterator<Item = usize>) -> Metrics {
    let m = Metrics::default();
    let methods = [Method::GET, Method::POST, Method::DELETE];
    for i in order {
        let service = format!("svc-{}", i % 17);
        let front = Front::ALL[i % 3];
        m.request(
            front,
            &service,
            &methods[i % 3],
            200 + (i % 5) as u16,
            Duration::from_millis(125 * (i as u64 % 7)),
        );
        if i % 4 == 0 {
            m.upstream_error(&service, UpstreamErrorKind::Timeout);
            m.retry(&service);
        }
    }
    m
}

#[test]
fn output_is_sorted_so_equal_states_encode_byte_equal() {
    // Each `Metrics` has its own hash maps with their own random order; the same counts,
    // made in another order, must still encode to the same bytes.
    let a = encoded(&fill(0..200));
    let b = encoded(&fill((0..200).rev()));
    assert_eq!(a, b);
    assert_eq!(a, encoded(&fill(0..200)));
    let samples = |prefix: &str| -> Vec<String> {
        a.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    };
    for family in [
        "switchyard_http_requests_total{",
        "switchyard_http_request_duration_seconds_count{",
        "switchyard_upstream_errors_total{",
    ] {
        let lines = samples(family);
        assert!(lines.len() > 10, "{a}");
        assert!(lines.is_sorted(), "{lines:#?}");
    }
    // A histogram's buckets stay in the order of their bounds, with `_sum` and `_count` last.
    let series: Vec<&str> = a
        .lines()
        .filter(|l| l.contains("{front=\"rest\",service=\"svc-0\""))
        .filter(|l| l.starts_with("switchyard_http_request_duration_seconds"))
        .collect();
    assert_eq!(series.len(), LATENCY_BUCKETS_S.len() + 3, "{a}");
    assert!(series[0].contains("le=\"0.0005\""), "{series:#?}");
    assert!(series[13].contains("le=\"10\""), "{series:#?}");
    assert!(series[14].contains("le=\"+Inf\""), "{series:#?}");
    assert!(series[15].contains("_sum{"), "{series:#?}");
    assert!(series[16].contains("_count{"), "{series:#?}");
}

#[test]
fn counters_are_suffixed_once_and_help_ends_in_one_stop() {
    let m = fill(0..20);
    m.events_applied(1, 0);
    m.change(ChangeOp::Evict);
    m.eviction();
    let out = encoded(&m);
    assert!(!out.contains("_total_total"), "{out}");
    assert!(!out.contains(".."), "{out}");
    for line in out.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(line.ends_with('.'), "{line}");
    }
    assert!(
        out.contains("switchyard_registry_changes_total{op=\"evict\"} 1\n"),
        "{out}"
    );
    assert!(
        out.contains("switchyard_bus_events_applied_total{origin=\"local\"} 1\n"),
        "{out}"
    );
    assert!(out.contains("switchyard_evictions_total 1\n"), "{out}");
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::default();
    m.retry("a\"b\\c\nd");
    let out = encoded(&m);
    assert!(
        out.contains("switchyard_upstream_retries_total{service=\"a\\\"b\\\\c\\nd\"} 1\n"),
        "{out}"
    );
}

#[test]
fn upstream_errors_are_classified() {
    let m = Metrics::default();
    let e = GatewayError::UpstreamTimeout {
        service: "s".into(),
        timeout_ms: 1,
    };
    m.upstream_error("s", UpstreamErrorKind::of(&e).unwrap());
    assert_eq!(
        UpstreamErrorKind::of(&GatewayError::ServiceNotFound {
            service: "s".into()
        }),
        None
    );
    let out = encoded(&m);
    assert!(
        out.contains("switchyard_upstream_errors_total{service=\"s\",kind=\"timeout\"} 1\n"),
        "{out}"
    );
}

#[test]
fn a_forgotten_service_leaves_no_series_and_others_keep_theirs() {
    let m = Metrics::default();
    for service in ["gone", "kept"] {
        m.request(Front::Rest, service, &Method::GET, 200, Duration::ZERO);
        m.request(
            Front::GraphqlCall,
            service,
            &Method::POST,
            599,
            Duration::ZERO,
        );
        m.request(Front::Rest, service, &Method::PATCH, 999, Duration::ZERO);
        m.upstream_error(service, UpstreamErrorKind::Reset);
        m.retry(service);
    }
    assert_eq!(m.services_seen().len(), 2);
    m.forget_service("gone");
    let out = encoded(&m);
    assert!(!out.contains("\"gone\""), "{out}");
    assert!(out.contains("service=\"kept\""), "{out}");
    assert_eq!(m.requests_of(Front::Rest, "kept", 200), 1);
    assert_eq!(m.requests_of(Front::Rest, "kept", 999), 1);
    let seen: Vec<String> = m.services_seen().iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, ["kept"]);
}

#[test]
fn a_forgotten_service_counts_again_in_series_that_are_written() {
    let m = Metrics::default();
    m.request(Front::Rest, "back", &Method::GET, 200, Duration::ZERO);
    m.forget_service("back");
    // The thread's handles on the removed series are dropped, not counted into.
    m.request(Front::Rest, "back", &Method::GET, 200, Duration::ZERO);
    m.request(Front::Rest, "back", &Method::GET, 200, Duration::ZERO);
    let out = encoded(&m);
    assert!(out.contains("switchyard_http_requests_total{front=\"rest\",service=\"back\",method=\"GET\",status=\"200\"} 2\n"), "{out}");
    assert!(
        out.contains(
            "switchyard_http_request_duration_seconds_count{front=\"rest\",service=\"back\"} 2\n"
        ),
        "{out}"
    );
}

#[test]
fn each_metrics_counts_its_own_requests_on_a_shared_thread() {
    let (a, b) = (Metrics::default(), Metrics::default());
    for _ in 0..3 {
        a.request(Front::Rest, "s", &Method::GET, 200, Duration::ZERO);
        b.request(Front::Rest, "s", &Method::GET, 200, Duration::ZERO);
    }
    a.request(Front::Rest, "s", &Method::GET, 200, Duration::ZERO);
    assert_eq!(a.requests_of(Front::Rest, "s", 200), 4);
    assert_eq!(b.requests_of(Front::Rest, "s", 200), 3);
}

#[test]
fn more_label_sets_than_a_thread_caches_are_all_counted() {
    let m = Metrics::default();
    let statuses: Vec<u16> = (200..200 + 2 * SERIES_CACHED_MAX as u16).collect();
    for round in 1..=3 {
        for &status in &statuses {
            m.request(Front::Rest, "s", &Method::GET, status, Duration::ZERO);
            assert_eq!(m.requests_of(Front::Rest, "s", status), round);
        }
    }
    // And from other threads, each with a cache of its own.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| m.request(Front::Rest, "s", &Method::GET, 200, Duration::ZERO));
        }
    });
    assert_eq!(m.requests_of(Front::Rest, "s", 200), 5);
}
