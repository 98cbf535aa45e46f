use super::*;

fn write(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::new(text)
}

/// A file removed when dropped, without another dependency.
mod tempfile_path {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct TempPath(PathBuf);

    impl TempPath {
        pub fn new(text: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "switchyard-config-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn defaults_are_valid() {
    let c = Config::load(None, &[]).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.public.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.registry.clock_drift_max_ms, 60_000);
}

#[test]
fn file_then_env_then_flags() {
    let f = write("node_id = \"from-file\"\n[upstream]\ntimeout_ms = 100\nattempts_max = 2\n");
    let env = env_overrides([
        (
            "SWITCHYARD_UPSTREAM__TIMEOUT_MS".to_owned(),
            "200".to_owned(),
        ),
        ("SWITCHYARD_CONFIG".to_owned(), "ignored".to_owned()),
        ("OTHER".to_owned(), "x".to_owned()),
        ("SWITCHYARD_BIN".to_owned(), "/usr/bin/x".to_owned()),
    ]);
    assert_eq!(env.len(), 1);
    let mut overrides = env;
    overrides.push(parse_set_flag("node_id=from-flag").unwrap());
    let c = Config::load(Some(f.path()), &overrides).unwrap();
    assert_eq!(c.node_id, "from-flag");
    assert_eq!(c.upstream.timeout_ms, 200);
    assert_eq!(c.upstream.attempts_max, 2);
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let f = write("[upstream]\ntimeout = 5\n");
    let err = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
    assert!(
        err.contains("upstream.timeout") && err.contains("unknown field"),
        "{err}"
    );
    assert!(err.contains(&f.path().display().to_string()), "{err}");
}

#[test]
fn type_errors_name_the_key_and_the_origin() {
    let o = parse_set_flag("upstream.timeout_ms=soon").unwrap();
    let err = Config::load(None, &[o]).unwrap_err().to_string();
    assert!(
        err.contains("`upstream.timeout_ms`") && err.contains("flag --set"),
        "{err}"
    );
    let env = env_overrides([("SWITCHYARD_PUBLIC__LISTEN".to_owned(), "nowhere".to_owned())]);
    let err = Config::load(None, &env).unwrap_err().to_string();
    assert!(
        err.contains("public.listen") && err.contains("SWITCHYARD_PUBLIC__LISTEN"),
        "{err}"
    );
    let typo = env_overrides([("SWITCHYARD_UPSTREAM__TIMOUT_MS".to_owned(), "5".to_owned())]);
    let err = Config::load(None, &typo).unwrap_err().to_string();
    assert!(
        err.contains("upstream.timout_ms") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn validation_names_the_key() {
    let cases = [
        ("upstream.timeout_ms=0", "upstream.timeout_ms"),
        ("registry.lease_default_ms=10", "registry.lease_default_ms"),
        (
            "registry.clock_drift_max_ms=0",
            "registry.clock_drift_max_ms",
        ),
        (
            "registry.clock_drift_max_ms=3600001",
            "registry.clock_drift_max_ms",
        ),
        ("upstream.ejection_max_ms=1", "upstream.ejection_max_ms"),
        (
            "upstream.in_flight_per_instance_max=0",
            "upstream.in_flight_per_instance_max",
        ),
        (
            "upstream.in_flight_per_instance_max=16385",
            "upstream.in_flight_per_instance_max",
        ),
        (
            "upstream.keepalive_timeout_ms=0",
            "upstream.keepalive_timeout_ms",
        ),
        (
            "upstream.reset_stream_hold_ms=3600001",
            "upstream.reset_stream_hold_ms",
        ),
        ("control.listen=\"127.0.0.1:8080\"", "control.listen"),
        ("node_id=\"a b\"", "node_id"),
        ("graphql.calls_max=0", "graphql.calls_max"),
        ("graphql.calls_max=257", "graphql.calls_max"),
        ("graphql.depth_max=0", "graphql.depth_max"),
        ("graphql.websockets_max=0", "graphql.websockets_max"),
        (
            "graphql.websockets_per_client_max=0",
            "graphql.websockets_per_client_max",
        ),
        (
            "graphql.websocket_operations_max=0",
            "graphql.websocket_operations_max",
        ),
        (
            "graphql.websocket_init_timeout_ms=0",
            "graphql.websocket_init_timeout_ms",
        ),
        (
            "graphql.websocket_init_timeout_ms=60001",
            "graphql.websocket_init_timeout_ms",
        ),
        ("runtime.worker_threads=1025", "runtime.worker_threads"),
        ("runtime.worker_threads=-1", "runtime.worker_threads"),
        ("public.connections_max=0", "public.connections_max"),
        ("control.connections_max=1000001", "control.connections_max"),
        (
            "public.header_read_timeout_ms=0",
            "public.header_read_timeout_ms",
        ),
        (
            "control.body_read_timeout_ms=0",
            "control.body_read_timeout_ms",
        ),
        ("public.idle_timeout_ms=0", "public.idle_timeout_ms"),
        (
            "control.http2_max_concurrent_streams=0",
            "control.http2_max_concurrent_streams",
        ),
        (
            "public.http2_stream_window_bytes=100",
            "public.http2_stream_window_bytes",
        ),
        (
            "control.http2_connection_window_bytes=2147483648",
            "control.http2_connection_window_bytes",
        ),
        (
            "public.http2_send_buf_bytes=0",
            "public.http2_send_buf_bytes",
        ),
    ];
    for (set, key) in cases {
        let err = Config::load(None, &[parse_set_flag(set).unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{key}`")), "{set}: {err}");
    }
}

#[test]
fn runtime_worker_threads_default_to_one_per_core_and_can_be_set() {
    assert_eq!(Config::default().runtime.worker_threads, 0);
    let one = Config::load(None, &[parse_set_flag("runtime.worker_threads=1").unwrap()]).unwrap();
    assert_eq!(one.runtime.worker_threads, 1);
    let env = env_overrides([(
        "SWITCHYARD_RUNTIME__WORKER_THREADS".to_owned(),
        "2".to_owned(),
    )]);
    assert_eq!(Config::load(None, &env).unwrap().runtime.worker_threads, 2);
}

#[test]
fn the_runtime_layout_is_shared_unless_per_core_is_asked_for() {
    assert_eq!(Config::default().runtime.layout, RuntimeLayout::Shared);
    let per_core = Config::load(
        None,
        &[parse_set_flag(r#"runtime.layout="per_core""#).unwrap()],
    )
    .unwrap();
    assert_eq!(per_core.runtime.layout, RuntimeLayout::PerCore);
    let err = Config::load(
        None,
        &[parse_set_flag(r#"runtime.layout="per-core""#).unwrap()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("runtime.layout"), "{err}");
}

#[test]
fn kafka_needs_brokers_and_a_valid_topic() {
    let kafka = parse_set_flag("bus.kind=kafka").unwrap();
    let err = Config::load(None, std::slice::from_ref(&kafka))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`bus.kafka.brokers`"), "{err}");
    let brokers = parse_set_flag("bus.kafka.brokers=127.0.0.1:9092").unwrap();
    let c = Config::load(None, &[kafka.clone(), brokers.clone()]).unwrap();
    assert_eq!(c.bus.kind, BusKind::Kafka);
    assert_eq!(c.bus.kafka.topic, "switchyard.registry");
    let topic = parse_set_flag("bus.kafka.topic=bad/topic").unwrap();
    let err = Config::load(None, &[kafka, brokers, topic])
        .unwrap_err()
        .to_string();
    assert!(err.contains("`bus.kafka.topic`"), "{err}");
}

#[test]
fn syntax_errors_name_the_file() {
    let f = write("node_id = \n");
    let err = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
    assert!(err.contains("not valid TOML"), "{err}");
    let missing = Config::load(Some(Path::new("/nonexistent/switchyard.toml")), &[]).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/switchyard.toml"));
    assert!(parse_set_flag("novalue").is_err());
}

#[test]
fn graphql_websockets_are_bounded_by_default_and_the_bounds_can_be_set() {
    let g = Config::default().graphql;
    assert_eq!(
        (
            g.websockets_max,
            g.websockets_per_client_max,
            g.websocket_init_timeout_ms,
            g.websocket_operations_max
        ),
        (1_024, 64, 3_000, 100)
    );
    let f = write(
        "[graphql]\nwebsockets_per_client_max = 2\nwebsocket_init_timeout_ms = 60000\n\
         websocket_operations_max = 1\n",
    );
    let c = Config::load(Some(f.path()), &[]).unwrap();
    assert_eq!(c.graphql.websockets_per_client_max, 2);
    assert_eq!(c.graphql.websocket_init_timeout_ms, 60_000);
    assert_eq!(c.graphql.websocket_operations_max, 1);
}

#[test]
fn the_graphql_front_is_on_and_closed_down_by_default() {
    let c = Config::default();
    assert!(c.public.rest && c.public.graphql);
    let g = &c.graphql;
    assert!(!g.introspection && !g.graphiql && !g.mutations_on_public);
    let f = write("[public]\ngraphql = false\n[graphql]\nintrospection = true\ncalls_max = 4\n");
    let env = env_overrides([(
        "SWITCHYARD_GRAPHQL__MUTATIONS_ON_PUBLIC".to_owned(),
        "true".to_owned(),
    )]);
    let c = Config::load(Some(f.path()), &env).unwrap();
    assert!(!c.public.graphql && c.public.rest);
    assert!(c.graphql.introspection && c.graphql.mutations_on_public);
    assert_eq!(c.graphql.calls_max, 4);
    let f = write("[graphql]\ngraphiq = true\n");
    let err = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
    assert!(
        err.contains("graphql.graphiq") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn the_address_policy_and_the_hop_bound_are_checked() {
    let c = Config::load(None, &[]).unwrap();
    assert!(
        c.upstream.allow_addresses.is_empty(),
        "nothing refused is admitted by default"
    );
    assert_eq!(c.upstream.hops_max, 8);
    let set = |arg: &str| Config::load(None, &[parse_set_flag(arg).unwrap()]);
    let ok = set(r#"upstream.allow_addresses=["127.0.0.0/8", "[::1]:9000-9100"]"#).unwrap();
    assert_eq!(ok.upstream.allow_addresses.len(), 2);
    let env = env_overrides([(
        "SWITCHYARD_UPSTREAM__ALLOW_ADDRESSES".to_owned(),
        r#"["10.0.0.5:8080"]"#.to_owned(),
    )]);
    let from_env = Config::load(None, &env).unwrap();
    assert_eq!(from_env.upstream.allow_addresses, ["10.0.0.5:8080"]);
    for (arg, says) in [
        (r#"upstream.allow_addresses=["10.0.0.1/8"]"#, "past its /8"),
        (r#"upstream.allow_addresses=["localhost"]"#, "not an IP"),
        ("upstream.hops_max=0", "between 1 and 255"),
        ("upstream.hops_max=256", "between 1 and 255"),
    ] {
        let err = set(arg).unwrap_err().to_string();
        let key = arg.split('=').next().unwrap();
        assert!(err.contains(key) && err.contains(says), "{arg}: {err}");
    }
    let many: Vec<String> = (0..=256)
        .map(|i| format!("\"10.0.{}.{}\"", i / 256, i % 256))
        .collect();
    let err = set(&format!("upstream.allow_addresses=[{}]", many.join(","))).unwrap_err();
    assert!(err.to_string().contains("at most 256"), "{err}");
}

#[test]
fn a_jwks_fetch_must_fit_twice_in_the_request_deadline() {
    let mut config = Config::default();
    config.jwt.providers = vec![JwtProvider {
        name: "corp".into(),
        issuer: "https://id.example.com/".into(),
        audiences: vec!["api".into()],
        algorithms: vec!["EdDSA".into()],
        jwks_file: "/etc/jwks.json".into(),
        ..JwtProvider::default()
    }];
    assert_eq!(config.validate(), Ok(()));
    config.upstream.timeout_ms = 10_000;
    let (key, message) = config.validate().unwrap_err();
    assert_eq!(key, "jwt.providers");
    assert!(message.contains("fetch_timeout_ms"), "{message}");
}

#[test]
fn the_jwt_section_reads_from_toml() {
    let file = write(
        r#"
[jwt]
forward_claims = { sub = "x-auth-subject" }
[[jwt.providers]]
name = "corp"
issuer = "https://id.example.com/"
audiences = ["api"]
algorithms = ["ES256", "EdDSA"]
jwks_url = "http://127.0.0.1:9/jwks.json"
revocation_unavailable = "fail_open"
[[jwt.routes]]
service = "orders"
path_prefix = "/admin"
methods = ["DELETE"]
scopes = ["orders:admin"]
claims = { tenant = "acme" }
"#,
    );
    let config = Config::load(Some(file.path()), &[]).unwrap();
    assert_eq!(
        config.jwt.providers[0].revocation_unavailable,
        RevocationFailMode::FailOpen
    );
    assert_eq!(config.jwt.providers[0].stale_max_ms, 3_600_000);
    assert_eq!(config.jwt.routes[0].claims["tenant"], "acme");
    assert_eq!(config.jwt.forward_claims["sub"], "x-auth-subject");
    let typo = write("[[jwt.providers]]\nnmae = \"x\"\n");
    let error = Config::load(Some(typo.path()), &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("nmae"), "{error}");
}

#[test]
fn redis_and_revocation_keys_are_checked_and_name_the_key() {
    let cases = [
        ("redis.url=\"http://127.0.0.1:6379\"", "redis.url"),
        ("redis.url=\"rediss://127.0.0.1:6379\"", "redis.url"),
        ("redis.url=\"redis://user:pw@127.0.0.1:6379\"", "redis.url"),
        ("redis.command_timeout_ms=0", "redis.command_timeout_ms"),
        ("redis.breaker_failures=0", "redis.breaker_failures"),
        ("redis.key_prefix=\"a*\"", "redis.key_prefix"),
        ("redis.key_prefix=\"\"", "redis.key_prefix"),
        (
            "redis.password_file=\"/nonexistent/switchyard-redis-password\"",
            "redis.password_file",
        ),
        ("revocation.entries_max=0", "revocation.entries_max"),
        (
            "revocation.stale_after_ms=1000",
            "revocation.stale_after_ms",
        ),
        ("revocation.list_max=10001", "revocation.list_max"),
    ];
    for (set, key) in cases {
        let mut overrides = vec![parse_set_flag(set).unwrap()];
        if set.starts_with("redis.password_file") {
            overrides.push(parse_set_flag("redis.url=\"redis://127.0.0.1:6379\"").unwrap());
        }
        let error = Config::load(None, &overrides).expect_err(set).to_string();
        assert!(error.contains(key), "{set}: {error}");
        assert!(
            !error.contains("pw@"),
            "{set}: the error repeats a password: {error}"
        );
    }
    let env = env_overrides([(
        "SWITCHYARD_REDIS__URL".to_owned(),
        "redis://127.0.0.1:6379/2".to_owned(),
    )]);
    let c = Config::load(None, &env).unwrap();
    assert_eq!(c.redis.url, "redis://127.0.0.1:6379/2");
    assert_eq!(c.redis.command_timeout_ms, 50);
    assert_eq!(c.revocation.stale_after_ms, 3_000);
}

#[test]
fn audit_is_off_by_default_and_its_settings_are_checked_by_key() {
    let c = Config::load(None, &[]).unwrap();
    assert!(!c.audit.enabled);
    assert_eq!(c.audit.default.mode, AuditMode::BestEffort);
    assert!(!c.audit.default.bodies && !c.audit.default.query);
    let env = env_overrides([("SWITCHYARD_AUDIT__ENABLED".to_owned(), "true".to_owned())]);
    assert!(Config::load(None, &env).unwrap().audit.enabled);
    let cases = [
        ("audit.queue_records_max=0", "audit.queue_records_max"),
        ("audit.queue_bytes_max=10", "audit.queue_bytes_max"),
        ("audit.record_bytes_max=2000000", "audit.record_bytes_max"),
        ("audit.batch_records_max=20000", "audit.batch_records_max"),
        ("audit.partitions=0", "audit.partitions"),
        ("audit.delivery_timeout_ms=1", "audit.delivery_timeout_ms"),
        ("audit.compression=\"zstd-max\"", "audit.compression"),
        ("audit.topic_requests=\"a b\"", "audit.topic_requests"),
        (
            "audit.topic_registry=\"switchyard.registry\"",
            "audit.topic_registry",
        ),
        (
            "audit.topic_registry=\"switchyard.audit.requests\"",
            "audit.topic_registry",
        ),
        ("audit.default.mode=\"sometimes\"", "audit.default.mode"),
        (
            "audit.default.sample_successes=1.5",
            "audit.default.sample_successes",
        ),
        (
            "audit.default.sample_successes=-0.1",
            "audit.default.sample_successes",
        ),
        (
            "audit.default.body_bytes_max=65537",
            "audit.default.body_bytes_max",
        ),
        (
            "audit.default.redact_headers=[\"bad header\"]",
            "audit.default.redact_headers",
        ),
        (
            "audit.default.redact_query_params=[\"a=b\"]",
            "audit.default.redact_query_params",
        ),
        (
            "audit.default.redact_json_fields=[\"\"]",
            "audit.default.redact_json_fields",
        ),
        ("audit.default.typo=1", "audit.default.typo"),
        ("audit.typo=1", "audit.typo"),
    ];
    for (set, key) in cases {
        let err = Config::load(None, &[parse_set_flag(set).unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{key}`")), "{set}: {err}");
    }
}

#[test]
fn audit_services_take_the_defaults_and_are_named_once() {
    let f = write(
        "[audit.default]\nbodies = true\nredact_headers = [\"x-key\"]\n\
         [[audit.services]]\nservice = \"orders\"\nmode = \"required\"\n\
         [[audit.services]]\nservice = \"users\"\nbodies = false\nsample_successes = 0.5\n",
    );
    let c = Config::load(Some(f.path()), &[]).unwrap();
    let policies = c.audit.service_policies();
    let orders = &policies["orders"];
    assert_eq!(orders.mode, AuditMode::Required);
    assert!(
        orders.bodies,
        "a key not given takes [audit.default]'s value"
    );
    assert_eq!(orders.redact_headers, ["x-key"]);
    let users = &policies["users"];
    assert_eq!((users.bodies, users.sample_successes), (false, 0.5));
    assert_eq!(users.mode, AuditMode::BestEffort);
    assert!(c.audit.any_required());
    let refused = [
        (
            "[[audit.services]]\nservice = \"a\"\n[[audit.services]]\nservice = \"a\"\n",
            "named twice",
        ),
        ("[[audit.services]]\nservice = \"a/b\"\n", "service \"a/b\""),
        (
            "[[audit.services]]\nservice = \"a\"\nsample_successes = 2.0\n",
            "sample_successes",
        ),
        (
            "[[audit.services]]\nservice = \"a\"\nbody_bytes_max = 100000\n",
            "body_bytes_max",
        ),
        (
            "[[audit.services]]\nservice = \"a\"\nbodys = true\n",
            "bodys",
        ),
    ];
    for (text, says) in refused {
        let f = write(text);
        let err = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(
            err.contains("audit.services") && err.contains(says),
            "{text}: {err}"
        );
    }
}
