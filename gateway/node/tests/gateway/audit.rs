//! Auditing (`[audit]`) with the sink in memory: every request of a burst recorded once with
//! its fields, REST and GraphQL; sampling; bodies and the query redacted; registry changes and
//! refusals; required mode while the sink is unavailable; the queue bound under a sink that
//! never completes, and the stop's bounded flush.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use prost::Message;
use serde_json::{Value, json};
use switchyard::audit::{AuditSink, DropReason, MemorySink, Outgoing, Stream};
use switchyard::bus::MemoryBus;
use switchyard::config::{AuditMode, AuditServiceConfig, Config};
use switchyard::node::Node;
use switchyard::pipeline::{Policy, RequestContext};
use switchyard::registrar::{Caller, Change, RegistrationPolicy};
use switchyard::seams::{Seams, SystemClock, TokioConnector};
use switchyard::sync::BoxFuture;
use switchyard_core::GatewayError;
use switchyard_core::identity::Identity;
use switchyard_proto::audit::{
    AuditRecord, Front, RegistryAction, RegistryAudit, RequestAudit, audit_record,
};
use switchyard_proto::forwarding::ForwardingReq;

use crate::graphql::post;
use crate::harness::{Gateway, Instance, eventually, http, http_with};
use crate::telemetry::{sample, scrape};

fn decode(record: &Outgoing) -> AuditRecord {
    let decoded = AuditRecord::decode(record.payload.as_ref()).expect("a record decodes");
    assert_eq!(decoded.version, 1);
    decoded
}

/// The request records the sink holds, by request id (each id with all its records).
fn requests(sink: &MemorySink) -> BTreeMap<String, Vec<RequestAudit>> {
    let mut out: BTreeMap<String, Vec<RequestAudit>> = BTreeMap::new();
    for record in sink.records() {
        if record.stream != Stream::Requests {
            continue;
        }
        if let Some(audit_record::Kind::Request(r)) = decode(&record).kind {
            assert_eq!(record.key, r.request_id, "keyed by request id");
            out.entry(r.request_id.clone()).or_default().push(r);
        }
    }
    out
}

fn registry(sink: &MemorySink) -> Vec<(String, RegistryAudit)> {
    sink.records()
        .iter()
        .filter(|r| r.stream == Stream::Registry)
        .filter_map(|r| match decode(r).kind {
            Some(audit_record::Kind::Registry(audit)) => Some((r.key.clone(), audit)),
            _ => None,
        })
        .collect()
}

fn audited(c: &mut Config) {
    c.audit.enabled = true;
}

fn service(name: &str, f: impl FnOnce(&mut AuditServiceConfig)) -> AuditServiceConfig {
    let mut s = AuditServiceConfig {
        service: name.to_owned(),
        ..AuditServiceConfig::default()
    };
    f(&mut s);
    s
}

async fn gateway(
    sink: Arc<dyn AuditSink>,
    configure: impl FnOnce(&mut Config),
) -> (Gateway, Instance) {
    let configure = move |c: &mut Config| {
        audited(c);
        configure(c);
    };
    let gw = Gateway::start_built(MemoryBus::new(), configure, move |b| {
        b.audit_sink(sink).policy_before_builtin(Arc::new(Subject))
    })
    .await;
    let inst = Instance::start("sample", "i-1").await;
    gw.register("sample", "i-1", &inst.addr, 30_000).await;
    (gw, inst)
}

/// Stands in for an authentication policy: the `x-test-subject` header names the caller.
struct Subject;

impl Policy for Subject {
    fn name(&self) -> &'static str {
        "test_subject"
    }

    fn check<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut ForwardingReq,
    ) -> BoxFuture<'a, Result<(), GatewayError>> {
        if let Some(h) = req.headers.iter().find(|h| h.name == "x-test-subject") {
            ctx.set_identity(Identity {
                subject: String::from_utf8_lossy(&h.value).into_owned(),
                credential_id: "cred-1".to_owned(),
            });
        }
        Box::pin(async { Ok(()) })
    }
}

async fn metric(gw: &Gateway, series: &str) -> f64 {
    sample(&scrape(gw).await, series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_burst_of_rest_and_graphql_calls_is_recorded_once_each_with_its_fields() {
    let sink = MemorySink::new(10_000);
    let (gw, _inst) = gateway(Arc::new(sink.clone()), |_| {}).await;
    let rest_ids: Vec<String> = (0..20).map(|i| format!("rest-{i:03}")).collect();
    for id in &rest_ids {
        let url = format!("{}/sample/hello?x=1", gw.public_url());
        let headers = [("x-request-id", id.as_str()), ("x-test-subject", "alice")];
        let (status, _, _) = http_with("GET", &url, &headers, Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let call_ids: Vec<String> = (0..10).map(|i| format!("call-{i:03}")).collect();
    for id in &call_ids {
        let query = "query($id: String!) { call(service: \"sample\", path: \"/hello\", query: \"y=2\", headers: [{name: \"x-request-id\", value: $id}]) { status } }";
        let (status, body) = post(&gw.graphql_url(), query, json!({ "id": id })).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"]["call"]["status"], 200, "{body}");
    }
    let expected = rest_ids.len() + call_ids.len();
    eventually(Duration::from_secs(5), || async {
        requests(&sink).len() >= expected
    })
    .await;
    let records = requests(&sink);
    assert_eq!(records.len(), expected, "{:?}", records.keys());
    for (id, front, path) in rest_ids
        .iter()
        .map(|id| (id, Front::Rest, "/sample/hello"))
        .chain(call_ids.iter().map(|id| (id, Front::GraphqlCall, "/hello")))
    {
        let list = &records[id.as_str()];
        assert_eq!(list.len(), 1, "{id} recorded once");
        let r = &list[0];
        assert_eq!(r.front(), front, "{id}");
        assert_eq!(r.path, path);
        assert_eq!((r.method.as_str(), r.service.as_str()), ("GET", "sample"));
        assert_eq!((r.status, r.error_code.as_str()), (200, ""));
        assert_eq!(r.instance_id, "i-1");
        assert_eq!(r.query, "", "the query is left out unless asked for");
        assert!(r.client_addr.starts_with("127.0.0.1:"), "{}", r.client_addr);
        assert_eq!(r.trace_id.len(), 32);
        assert!(r.latency_us > 0 && r.bytes_out > 0);
        assert_eq!(r.sample_rate, 1.0);
        assert!(r.request_capture.is_none() && r.response_capture.is_none());
        let principal = r.principal.clone().unwrap_or_default();
        let subject = if front == Front::Rest { "alice" } else { "" };
        assert_eq!(principal.subject, subject);
    }
    let delivered = metric(&gw, "switchyard_audit_records_total{stream=\"requests\"}").await;
    assert_eq!(delivered, expected as f64);
}

#[tokio::test]
async fn sampling_keeps_every_error_and_about_the_fraction_of_successes() {
    let sink = MemorySink::new(10_000);
    let (gw, _inst) = gateway(Arc::new(sink.clone()), |c| {
        c.audit.services = vec![service("sample", |s| s.sample_successes = Some(0.3))];
    })
    .await;
    let (successes, errors) = (200, 20);
    for i in 0..successes + errors {
        let (id, path) = if i < successes {
            (format!("ok-{i}"), "/sample/hello")
        } else {
            (format!("err-{i}"), "/sample/test/status/500")
        };
        let url = format!("{}{path}", gw.public_url());
        http_with("GET", &url, &[("x-request-id", &id)], Vec::new()).await;
    }
    let sampled_out = "switchyard_audit_sampled_out_total";
    eventually(Duration::from_secs(5), || async {
        let records = requests(&sink);
        let kept = records.keys().filter(|id| id.starts_with("ok-")).count();
        let out = metric(&gw, sampled_out).await as usize;
        let errors_seen = records.keys().filter(|id| id.starts_with("err-")).count();
        kept + out == successes && errors_seen == errors
    })
    .await;
    let kept = requests(&sink)
        .keys()
        .filter(|id| id.starts_with("ok-"))
        .count();
    assert!(
        (35..=85).contains(&kept),
        "{kept} of {successes} kept at 0.3"
    );
    for (id, list) in requests(&sink) {
        let r = &list[0];
        if id.starts_with("ok-") {
            assert!((r.sample_rate - 0.3).abs() < 1e-9);
            assert!(
                switchyard::audit::record::unit_interval(&id) < 0.3,
                "{id}: kept by its hash"
            );
        } else {
            assert_eq!((r.status, r.sample_rate), (500, 1.0));
        }
    }
}

#[tokio::test]
async fn bodies_and_the_query_are_captured_redacted_and_capped() {
    let sink = MemorySink::new(10_000);
    let (gw, _inst) = gateway(Arc::new(sink.clone()), |c| {
        c.audit.services = vec![service("sample", |s| {
            s.bodies = Some(true);
            s.body_bytes_max = Some(96);
            s.redact_headers = Some(vec!["X-Secret".to_owned()]);
            s.redact_json_fields = Some(vec!["password".to_owned()]);
            s.query = Some(true);
            s.redact_query_params = Some(vec!["token".to_owned()]);
        })];
    })
    .await;
    let url = |q: &str| format!("{}/sample/test/echo-body?{q}", gw.public_url());
    let send = |id: &'static str, q: &'static str, body: Vec<u8>| {
        let url = url(q);
        async move {
            let headers = [
                ("x-request-id", id),
                ("content-type", "application/json"),
                ("authorization", "Bearer tok-123"),
                ("x-secret", "s3cret"),
                ("cookie", "c=1"),
            ];
            let (status, _, _) = http_with("POST", &url, &headers, body).await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    let json_body = json!({"user": "u", "nested": [{"password": "hunter2"}]});
    send(
        "json",
        "a=1&token=tok-9",
        serde_json::to_vec(&json_body).unwrap(),
    )
    .await;
    send("text", "", b"password=hunter2".to_vec()).await;
    let long = json!({ "filler": "f".repeat(300) });
    send("long", "", serde_json::to_vec(&long).unwrap()).await;
    eventually(Duration::from_secs(5), || async {
        requests(&sink).len() >= 3
    })
    .await;
    let records = requests(&sink);
    let everything = format!("{:?}", sink.records());
    for secret in ["tok-123", "s3cret", "hunter2", "tok-9", "c=1"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    let json = &records["json"][0];
    assert_eq!(json.query, "a=1&token=REDACTED");
    for capture in [&json.request_capture, &json.response_capture] {
        let capture = capture.as_ref().expect("captured");
        let body: Value = serde_json::from_slice(&capture.body).unwrap();
        assert_eq!(body["nested"][0]["password"], "REDACTED");
        assert_eq!(body["user"], "u");
        assert!(!capture.truncated);
    }
    let request = json.request_capture.as_ref().unwrap();
    for name in ["authorization", "x-secret", "cookie"] {
        assert_eq!(request.headers[name], "REDACTED", "{name}");
    }
    assert_eq!(request.headers["content-type"], "application/json");
    let text = &records["text"][0];
    for capture in [&text.request_capture, &text.response_capture] {
        let capture = capture.as_ref().unwrap();
        assert_eq!(capture.omitted, "not_json");
        assert!(capture.body.is_empty());
        assert_eq!(capture.body_size, 16);
    }
    let long = records["long"][0].request_capture.clone().unwrap();
    assert_eq!((long.body.len(), long.truncated), (96, true));
    assert!(long.body_size > 300);
}

/// Names the caller `ops` and refuses every change to service `locked`.
struct Operators;

impl RegistrationPolicy for Operators {
    fn name(&self) -> &'static str {
        "operators"
    }

    fn check(&self, caller: &mut Caller, change: &Change<'_>) -> Result<(), GatewayError> {
        caller.identity = Some(Identity {
            subject: "ops".to_owned(),
            credential_id: "key-7".to_owned(),
        });
        if change.key().service == "locked" {
            return Err(GatewayError::Forbidden {
                reason: "locked".to_owned(),
            });
        }
        Ok(())
    }
}

#[tokio::test]
async fn registry_changes_and_refusals_are_recorded_with_who_and_how() {
    let sink = MemorySink::new(10_000);
    let gw = Gateway::start_built(MemoryBus::new(), audited, {
        let sink = sink.clone();
        move |b| {
            b.audit_sink(Arc::new(sink))
                .registration_policy(Arc::new(Operators))
        }
    })
    .await;
    let inst = Instance::start("sample", "i-1").await;
    gw.register("sample", "i-1", &inst.addr, 20_000).await;
    let put = |service: &str, id: &str, addr: &str| {
        let url = format!("{}/v1/services/{service}/instances/{id}", gw.control_url());
        let body = serde_json::to_vec(&json!({ "addr": addr, "lease_ms": 20_000 })).unwrap();
        async move { http_with("PUT", &url, &[], body).await.0 }
    };
    assert_eq!(
        put("locked", "l-1", &inst.addr).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        put("sample", "i-2", "not an address").await,
        StatusCode::BAD_REQUEST
    );
    let url = format!("{}/v1/services/sample/instances/i-1", gw.control_url());
    assert_eq!(http("DELETE", &url).await.0, StatusCode::OK);
    eventually(Duration::from_secs(5), || async {
        registry(&sink).len() >= 4
    })
    .await;
    let records = registry(&sink);
    assert_eq!(records.len(), 4, "{records:?}");
    let (key, register) = &records[0];
    assert_eq!(key, "sample/i-1");
    assert_eq!(register.action(), RegistryAction::Register);
    assert_eq!(
        (register.via.as_str(), register.error_code.as_str()),
        ("rest", "")
    );
    assert_eq!(register.addr, inst.addr);
    assert_eq!(register.lease_ms, 20_000);
    assert!(
        register.stamp.ends_with(&format!(".{}", gw.node_id)),
        "{}",
        register.stamp
    );
    assert!(register.client_addr.starts_with("127.0.0.1:"));
    let principal = register.principal.clone().unwrap();
    assert_eq!(
        (principal.subject.as_str(), principal.credential_id.as_str()),
        ("ops", "key-7")
    );
    let (key, locked) = &records[1];
    assert_eq!(key, "locked/l-1");
    assert_eq!(locked.error_code, "forbidden");
    assert_eq!(locked.principal.clone().unwrap().subject, "ops");
    assert!(locked.stamp.is_empty());
    assert_eq!(records[2].1.error_code, "invalid_argument");
    let deregister = &records[3].1;
    assert_eq!(deregister.action(), RegistryAction::Deregister);
    assert!(!deregister.stamp.is_empty() && deregister.error_code.is_empty());
}

#[tokio::test]
async fn required_mode_refuses_while_the_sink_is_unavailable_and_serves_after() {
    let sink = MemorySink::new(10_000);
    let (gw, inst) = gateway(Arc::new(sink.clone()), |c| {
        c.audit.services = vec![service("sample", |s| s.mode = Some(AuditMode::Required))];
    })
    .await;
    gw.register("other", "o-1", &inst.addr, 30_000).await;
    let get = |service: &str| {
        let url = format!("{}/{service}/hello", gw.public_url());
        async move { http("GET", &url).await }
    };
    assert_eq!(get("sample").await.0, StatusCode::OK);
    sink.set_available(false);
    let (status, _, body) = get("sample").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert_eq!(
        get("other").await.0,
        StatusCode::OK,
        "best effort is served"
    );
    assert_eq!(metric(&gw, "switchyard_audit_refused_total").await, 1.0);
    assert_eq!(metric(&gw, "switchyard_audit_sink_available").await, 0.0);
    sink.set_available(true);
    assert_eq!(get("sample").await.0, StatusCode::OK);
}

/// A sink that takes batches and never finishes delivering them.
#[derive(Default)]
struct Stuck {
    batches: AtomicUsize,
}

impl AuditSink for Stuck {
    fn deliver(&self, _batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), DropReason>>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }

    fn available(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_sink_that_never_completes_fills_the_queue_and_requests_do_not_wait() {
    let stuck = Arc::new(Stuck::default());
    let (gw, _inst) = gateway(stuck.clone(), |c| {
        c.audit.queue_records_max = 10;
        c.audit.batch_records_max = 5;
    })
    .await;
    let url = format!("{}/sample/hello", gw.public_url());
    let requests = 40;
    for _ in 0..requests {
        let answer = tokio::time::timeout(Duration::from_secs(5), http("GET", &url)).await;
        assert_eq!(
            answer.expect("a request never waits on the sink").0,
            StatusCode::OK
        );
    }
    let auditor = gw.node.auditor().expect("auditing is on").clone();
    assert_eq!(auditor.queued(), 10, "the queue holds its bound");
    let full = auditor.dropped_count(Stream::Requests, DropReason::QueueFull);
    // At most one batch (5) is with the sink, the registration's record among them or queued.
    assert!((25..=30).contains(&full), "{full} dropped as queue_full");
    assert_eq!(stuck.batches.load(Ordering::SeqCst), 1);
    let scraped = metric(
        &gw,
        "switchyard_audit_dropped_total{stream=\"requests\",reason=\"queue_full\"}",
    )
    .await;
    assert_eq!(scraped, full as f64);
    let stopping = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), gw.stop())
        .await
        .expect("the stop ends within the drain and flush bounds");
    assert!(stopping.elapsed() >= switchyard::audit::FLUSH_TIMEOUT);
    let shutdown = auditor.dropped_count(Stream::Requests, DropReason::Shutdown)
        + auditor.dropped_count(Stream::Registry, DropReason::Shutdown);
    assert_eq!(shutdown + full, requests + 1, "every record counted once");
    assert_eq!(auditor.queued(), 0);
}

#[tokio::test]
async fn auditing_without_a_sink_or_kafka_does_not_serve() {
    let mut config = Config::default();
    config.audit.enabled = true;
    let seams = Seams {
        connector: Arc::new(TokioConnector),
        clock: Arc::new(SystemClock),
        bus: Arc::new(MemoryBus::new()),
        seed: 1,
    };
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = tokio::time::timeout(
        Duration::from_secs(5),
        Node::new(config, seams).serve(public, control, Default::default()),
    )
    .await
    .expect("refused at once");
    let error = served.expect_err("no sink, no Kafka").to_string();
    assert!(error.contains("auditing needs [bus.kafka]"), "{error}");
}
