//! Rate limits on the public front (`[[rate_limits]]`): a burst admitted and then refused
//! with 429 `rate_limited`, `Retry-After` and the `RateLimit-Policy` / `RateLimit` headers
//! with exact values; refill; keys by client address, header and subject; REST and GraphQL
//! calls counted in the same bucket; the bucket bound under a key-rotating flood; and the
//! cluster mode's fall-back to a gateway's share when its store does not answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use switchyard::bus::MemoryBus;
use switchyard::config::{Config, RateLimitKey, RateLimitMode, RateLimitRule, RatePer};
use switchyard::pipeline::rate_limit::gcra::{Buckets, Shape};
use switchyard::pipeline::rate_limit::{CounterStore, StoreError};
use switchyard::pipeline::{Policy, RequestContext};
use switchyard::sync::BoxFuture;
use switchyard_core::GatewayError;
use switchyard_core::identity::Identity;
use switchyard_proto::forwarding::ForwardingReq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::graphql::post;
use crate::harness::{self, Gateway, Instance, http, http_with};
use crate::telemetry::{sample, scrape};

/// A rule on the `sample` service: `rate` per minute, `burst` at once, by client address.
fn rule(name: &str, rate: u64, burst: u64) -> RateLimitRule {
    RateLimitRule {
        name: name.to_owned(),
        services: vec!["sample".to_owned()],
        path_prefix: String::new(),
        methods: Vec::new(),
        key: RateLimitKey::ClientAddress,
        header: String::new(),
        ipv6_prefix_bits: 64,
        rate,
        per: RatePer::Minute,
        burst,
        mode: RateLimitMode::Local,
        buckets_max: 100_000,
    }
}

async fn gateway(rules: Vec<RateLimitRule>) -> (Gateway, Instance) {
    gateway_built(rules, |b| b).await
}

async fn gateway_built(
    rules: Vec<RateLimitRule>,
    build: impl FnOnce(switchyard::node::Builder) -> switchyard::node::Builder,
) -> (Gateway, Instance) {
    let configure = move |c: &mut Config| c.rate_limits = rules;
    let gw = Gateway::start_built(MemoryBus::new(), configure, build).await;
    let inst = Instance::start("sample", "i-1").await;
    gw.register("sample", "i-1", &inst.addr, 30_000).await;
    (gw, inst)
}

async fn metric(gw: &Gateway, series: &str) -> f64 {
    sample(&scrape(gw).await, series).unwrap_or(0.0)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn a_burst_is_admitted_then_refused_with_retry_after_and_exact_headers() {
    // One per minute, five at once: each request takes one of five, and an empty bucket takes
    // 300 s to fill. (The numbers are exact while the six requests take under a second.)
    let (gw, inst) = gateway(vec![rule("per-client", 1, 5)]).await;
    let url = format!("{}/sample/hello", gw.public_url());
    for n in 1..=5u64 {
        let (status, headers, _) = http("GET", &url).await;
        assert_eq!(status, StatusCode::OK, "request {n}");
        assert_eq!(
            header(&headers, "ratelimit-policy"),
            r#""per-client";q=5;w=300"#
        );
        assert_eq!(
            header(&headers, "ratelimit"),
            format!(r#""per-client";r={};t={}"#, 5 - n, 60 * n),
            "request {n}"
        );
    }
    let (status, headers, body) = http_with(
        "GET",
        &url,
        &[("x-request-id", "req-limited-1")],
        Vec::new(),
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["request_id"], "req-limited-1");
    assert_eq!(header(&headers, "retry-after"), "60");
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        r#""per-client";q=5;w=300"#
    );
    assert_eq!(header(&headers, "ratelimit"), r#""per-client";r=0;t=300"#);
    assert_eq!(
        inst.requests_received(),
        5,
        "the refusal never reached the service"
    );

    // Another service is not selected by the rule: no headers, no limit.
    let other = Instance::start("other", "o-1").await;
    gw.register("other", "o-1", &other.addr, 30_000).await;
    let (status, headers, _) = http("GET", &format!("{}/other/hello", gw.public_url())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("ratelimit").is_none(), "{headers:?}");

    let series = r#"switchyard_rate_limit_requests_total{rule="per-client",outcome="#;
    assert_eq!(metric(&gw, &format!(r#"{series}"admitted"}}"#)).await, 5.0);
    assert_eq!(metric(&gw, &format!(r#"{series}"limited"}}"#)).await, 1.0);
    let rest = r#"switchyard_http_requests_total{front="rest",service="sample",method="GET",status="429"}"#;
    assert_eq!(metric(&gw, rest).await, 1.0);
}

#[tokio::test]
async fn an_empty_bucket_admits_again_once_it_refills() {
    // 20 per second, two at once: one more every 50 ms.
    let mut fast = rule("fast", 20, 2);
    fast.per = RatePer::Second;
    let (gw, _inst) = gateway(vec![fast]).await;
    let url = format!("{}/sample/hello", gw.public_url());
    // Under load the refill may already give one more; ask until the bucket runs dry (a bound
    // of 50 tries: at most 2 + 20 per second of asking).
    let mut refused = None;
    for _ in 0..50 {
        let (status, headers, _) = http("GET", &url).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(headers);
            break;
        }
    }
    let refused = refused.expect("the bucket ran dry");
    assert_eq!(header(&refused, "retry-after"), "1", "50 ms, rounded up");
    assert_eq!(header(&refused, "ratelimit-policy"), r#""fast";q=2;w=1"#);
    harness::eventually(Duration::from_secs(5), || async {
        http("GET", &url).await.0 == StatusCode::OK
    })
    .await;
}

/// A GET from the client address `local` (a loopback address), over a connection of its own.
async fn get_from(local: &str, gateway: SocketAddr, path: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(gateway).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer in 10 s")
        .unwrap();
    let head = String::from_utf8_lossy(&answer);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn keys_by_client_address_and_by_header() {
    let mut by_key = rule("by-key", 1, 1);
    by_key.key = RateLimitKey::Header;
    by_key.header = "x-api-key".to_owned();
    by_key.path_prefix = "/echo".to_owned();
    let mut by_address = rule("by-address", 1, 1);
    by_address.path_prefix = "/hello".to_owned();
    let (gw, _inst) = gateway(vec![by_key, by_address]).await;

    // Two client addresses, two buckets.
    let addr = gw.public_addr();
    assert_eq!(get_from("127.0.0.1", addr, "/sample/hello").await, 200);
    assert_eq!(get_from("127.0.0.1", addr, "/sample/hello").await, 429);
    assert_eq!(get_from("127.0.0.2", addr, "/sample/hello").await, 200);
    assert_eq!(get_from("127.0.0.2", addr, "/sample/hello").await, 429);
    // A percent-encoded letter is the same path to the prefix.
    assert_eq!(get_from("127.0.0.2", addr, "/sample/%68ello").await, 429);

    // Two header values, two buckets; none: the client's address.
    let url = format!("{}/sample/echo", gw.public_url());
    let with_key = |key: &'static str| {
        let url = url.clone();
        async move {
            http_with("GET", &url, &[("x-api-key", key)], Vec::new())
                .await
                .0
        }
    };
    assert_eq!(with_key("alpha").await, StatusCode::OK);
    assert_eq!(with_key("alpha").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(with_key("beta").await, StatusCode::OK);
    assert_eq!(http("GET", &url).await.0, StatusCode::OK);
    assert_eq!(http("GET", &url).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(with_key("gamma").await, StatusCode::OK);
}

/// Stands in for the JWT policy: the subject named by `x-test-subject` becomes the identity.
#[derive(Debug)]
struct SubjectFromHeader;

impl Policy for SubjectFromHeader {
    fn name(&self) -> &'static str {
        "test-subject"
    }

    fn check<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut ForwardingReq,
    ) -> BoxFuture<'a, Result<(), GatewayError>> {
        let subject = req
            .headers
            .iter()
            .find(|h| h.name == "x-test-subject")
            .map(|h| String::from_utf8_lossy(&h.value).into_owned());
        if let Some(subject) = subject {
            ctx.set_identity(Identity {
                subject,
                credential_id: "test".to_owned(),
            });
        }
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn keys_by_subject_with_the_client_address_when_there_is_none() {
    let mut by_subject = rule("by-subject", 1, 2);
    by_subject.key = RateLimitKey::Subject;
    let (gw, _inst) = gateway_built(vec![by_subject], |b| {
        b.policy_before_builtin(Arc::new(SubjectFromHeader))
    })
    .await;
    let url = format!("{}/sample/hello", gw.public_url());
    let as_subject = |subject: &'static str| {
        let url = url.clone();
        async move {
            http_with("GET", &url, &[("x-test-subject", subject)], Vec::new())
                .await
                .0
        }
    };
    for want in [200, 200, 429] {
        assert_eq!(as_subject("alice").await.as_u16(), want, "alice");
    }
    assert_eq!(as_subject("bob").await, StatusCode::OK);
    // No identity: the client's address, a bucket of its own.
    for want in [200, 200, 429] {
        assert_eq!(http("GET", &url).await.0.as_u16(), want, "anonymous");
    }
    assert_eq!(as_subject("bob").await, StatusCode::OK);
    assert_eq!(as_subject("bob").await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn rest_requests_and_graphql_calls_share_a_bucket_and_its_headers() {
    let (gw, inst) = gateway(vec![rule("shared", 1, 3)]).await;
    let (status, headers, _) = http("GET", &format!("{}/sample/hello", gw.public_url())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "ratelimit"), r#""shared";r=2;t=60"#);

    // Two calls in one operation take the next two; a third, in the next operation, is
    // refused, with the headers as extensions.
    let query = r#"{
        a: call(service: "sample", path: "/hello") { status headers { name value } }
        b: call(service: "sample", path: "/hello") { status headers { name value } }
    }"#;
    let (status, body) = post(&gw.graphql_url(), query, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut remaining: Vec<String> = ["a", "b"]
        .iter()
        .map(|alias| {
            let call = &body["data"][alias];
            assert_eq!(call["status"], 200, "{body}");
            let headers = call["headers"].as_array().unwrap();
            let value = |name: &str| {
                headers
                    .iter()
                    .find(|h| h["name"] == name)
                    .unwrap_or_else(|| panic!("no {name}: {body}"))["value"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(value("ratelimit-policy"), r#""shared";q=3;w=180"#);
            value("ratelimit")
        })
        .collect();
    // Sibling calls run concurrently, so which took which is not fixed.
    remaining.sort();
    assert_eq!(
        remaining,
        [r#""shared";r=0;t=180"#, r#""shared";r=1;t=120"#]
    );

    let (status, body) = post(
        &gw.graphql_url(),
        r#"{ c: call(service: "sample", path: "/hello") { status } }"#,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["c"], Value::Null, "{body}");
    let ext = &body["errors"][0]["extensions"];
    assert_eq!(ext["code"], "rate_limited", "{body}");
    assert_eq!(ext["status"], 429);
    assert_eq!(ext["retryAfter"], 60);
    assert_eq!(ext["ratelimitPolicy"], r#""shared";q=3;w=180"#, "{body}");
    assert_eq!(ext["ratelimit"], r#""shared";r=0;t=180"#);
    assert_eq!(inst.requests_received(), 3);
}

#[tokio::test]
async fn a_key_rotating_flood_keeps_the_bucket_count_bounded_and_the_limited_key_limited() {
    const BUCKETS_MAX: usize = 20;
    const FLOOD: usize = 200;
    let mut by_key = rule("flooded", 1, 2);
    by_key.key = RateLimitKey::Header;
    by_key.header = "x-api-key".to_owned();
    by_key.buckets_max = BUCKETS_MAX;
    let (gw, _inst) = gateway(vec![by_key]).await;
    let url = format!("{}/sample/hello", gw.public_url());
    let send = |key: String| {
        let url = url.clone();
        async move {
            http_with("GET", &url, &[("x-api-key", &key)], Vec::new())
                .await
                .0
        }
    };
    for want in [200, 200, 429] {
        assert_eq!(send("victim".to_owned()).await.as_u16(), want);
    }
    let buckets = r#"switchyard_rate_limit_buckets{rule="flooded"}"#;
    for i in 0..FLOOD {
        assert_eq!(send(format!("rotating-{i}")).await, StatusCode::OK);
    }
    let held = metric(&gw, buckets).await;
    assert!(
        held <= BUCKETS_MAX as f64,
        "{held} buckets after {FLOOD} keys; the bound is {BUCKETS_MAX}"
    );
    assert_eq!(
        send("victim".to_owned()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rotating keys did not free the limited key"
    );
}

/// A store for the cluster mode kept in memory, that can be switched off: while off, every
/// call fails as an unreachable Redis would.
struct FakeStore {
    buckets: Mutex<Buckets>,
    origin: tokio::time::Instant,
    up: AtomicBool,
    live: usize,
    checks: AtomicUsize,
}

impl CounterStore for FakeStore {
    fn check<'a>(
        &'a self,
        key: &'a str,
        shape: Shape,
    ) -> BoxFuture<'a, Result<(bool, u64), StoreError>> {
        let answer = if self.up.load(Ordering::SeqCst) {
            self.checks.fetch_add(1, Ordering::SeqCst);
            let now = self.origin.elapsed().as_micros() as u64;
            let d = self.buckets.lock().unwrap().check(key, shape, now);
            Ok((d.admitted, d.reset_us))
        } else {
            Err(StoreError::Unavailable("switched off".to_owned()))
        };
        Box::pin(async move { answer })
    }

    fn heartbeat<'a>(&'a self, _: &'a str, _: u64) -> BoxFuture<'a, Result<u64, StoreError>> {
        let answer = if self.up.load(Ordering::SeqCst) {
            Ok(self.live as u64)
        } else {
            Err(StoreError::Unavailable("switched off".to_owned()))
        };
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn the_cluster_mode_asks_its_store_and_falls_back_to_its_share_when_it_is_down() {
    let store = Arc::new(FakeStore {
        buckets: Mutex::new(Buckets::new(100)),
        origin: tokio::time::Instant::now(),
        up: AtomicBool::new(true),
        live: 3,
        checks: AtomicUsize::new(0),
    });
    let mut shared = rule("cluster", 1, 6);
    shared.mode = RateLimitMode::Cluster;
    let (gw, inst) = gateway_built(vec![shared], |b| b.rate_limit_store(store.clone())).await;
    let live = "switchyard_rate_limit_live_gateways";
    harness::eventually(Duration::from_secs(5), || async {
        metric(&gw, live).await == 3.0
    })
    .await;
    let url = format!("{}/sample/hello", gw.public_url());
    let (status, headers, _) = http("GET", &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "ratelimit"), r#""cluster";r=5;t=60"#);
    assert_eq!(store.checks.load(Ordering::SeqCst), 1, "the store decided");

    // The store goes down: this gateway's share, a third of the rate and of the burst.
    store.up.store(false, Ordering::SeqCst);
    for n in 1..=2u64 {
        let (status, headers, _) = http("GET", &url).await;
        assert_eq!(status, StatusCode::OK, "request {n} on the share");
        assert_eq!(
            header(&headers, "ratelimit-policy"),
            r#""cluster";q=2;w=360"#
        );
        assert_eq!(
            header(&headers, "ratelimit"),
            format!(r#""cluster";r={};t={}"#, 2 - n, 180 * n)
        );
    }
    let (status, headers, _) = http("GET", &url).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&headers, "retry-after"), "180");
    assert_eq!(inst.requests_received(), 3);
    let fallbacks = r#"switchyard_rate_limit_fallbacks_total{rule="cluster"}"#;
    assert_eq!(metric(&gw, fallbacks).await, 3.0);
    assert_eq!(metric(&gw, live).await, 3.0, "the last count stays");
    let errors = r#"switchyard_rate_limit_redis_errors_total{reason="unavailable"}"#;
    assert!(metric(&gw, errors).await >= 3.0);

    // Back: the store's count again, which had taken one.
    store.up.store(true, Ordering::SeqCst);
    let (status, headers, _) = http("GET", &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "ratelimit"), r#""cluster";r=4;t=120"#);
}

#[tokio::test]
async fn bad_rules_are_refused_with_the_key_at_fault() {
    let cases: [(&str, &str); 6] = [
        ("name = \"a b\"\nrate = 1", "rate_limits.name"),
        ("name = \"a\"\nrate = 0", "rate_limits.rate"),
        (
            "name = \"a\"\nrate = 1\nkey = \"header\"",
            "rate_limits.header",
        ),
        (
            "name = \"a\"\nrate = 1\nkey = \"header\"\nheader = \"X-Key\"",
            "rate_limits.header",
        ),
        (
            "name = \"a\"\nrate = 1\nbuckets_max = 0",
            "rate_limits.buckets_max",
        ),
        (
            "name = \"a\"\nrate = 1\nmethods = [\"get\"]",
            "rate_limits.methods",
        ),
    ];
    let dir = std::env::temp_dir().join(format!("switchyard-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (rule, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, format!("[[rate_limits]]\n{rule}\n")).unwrap();
        let error = Config::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(error.contains(key), "{rule}: {error}");
    }
    let path = dir.join("twice.toml");
    std::fs::write(
        &path,
        "[[rate_limits]]\nname = \"a\"\nrate = 1\n[[rate_limits]]\nname = \"a\"\nrate = 2\n",
    )
    .unwrap();
    let error = Config::load(Some(&path), &[]).unwrap_err().to_string();
    assert!(error.contains("names two rules"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
