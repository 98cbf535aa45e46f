//! JWT authentication on the public front, against a real JWKS server on loopback: keys
//! fetched before ready, rotation, a provider down at start and mid-run, a flood of unknown
//! `kid`s, every kind of bad token, scopes, public routes, forwarded claims and forged claim
//! headers, revocation, the verified-token cache — REST and GraphQL `call` alike.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::{Value, json};
use switchyard::auth::{self, SigningKey};
use switchyard::bus::MemoryBus;
use switchyard::config::{Config, JwtProvider, JwtRoute, RevocationFailMode};
use switchyard::revocation::{Revocation, RevocationList, TokenFacts};
use switchyard::seams::{Clock as _, SystemClock};

use crate::graphql::post_raw;
use crate::harness::{self, Gateway, Instance, echoed_header, http, http_with};
use crate::telemetry::{sample, scrape};

const ISSUER: &str = "https://issuer.test/";
const AUDIENCE: &str = "orders-api";

/// A JWKS server: its document, how often it was asked, and a switch that makes it answer 503.
struct Jwks {
    document: Mutex<Value>,
    hits: AtomicUsize,
    failing: AtomicBool,
}

async fn serve_jwks(State(jwks): State<Arc<Jwks>>) -> Response {
    jwks.hits.fetch_add(1, Ordering::SeqCst);
    if jwks.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let body = serde_json::to_vec(&*jwks.document.lock().unwrap()).unwrap();
    ([("content-type", "application/json")], body).into_response()
}

struct JwksServer {
    state: Arc<Jwks>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: &[&SigningKey]) -> Self {
        let state = Arc::new(Jwks {
            document: Mutex::new(document(keys)),
            hits: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/jwks.json", get(serve_jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, url, task }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.state.document.lock().unwrap() = document(keys);
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn document(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk().unwrap()).collect::<Vec<_>>() })
}

fn ed_key() -> SigningKey {
    SigningKey::from_pem(&auth::generate_key().unwrap().0).unwrap()
}

fn es_key() -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    SigningKey::from_pem(&pair.serialize_pem()).unwrap()
}

fn now_s() -> u64 {
    SystemClock.now_ms() / 1_000
}

/// Claims of a good token for `sub`, valid for an hour.
fn claims(sub: &str) -> Value {
    let now = now_s();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "jti": format!("id-{sub}"),
        "iat": now, "exp": now + 3_600, "scope": "orders:read"
    })
}

fn token(key: &SigningKey, claims: &Value) -> String {
    auth::sign_claims(key, claims).unwrap()
}

fn provider(name: &str, url: &str) -> JwtProvider {
    JwtProvider {
        name: name.into(),
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        algorithms: vec!["EdDSA".into()],
        jwks_url: url.into(),
        ..JwtProvider::default()
    }
}

fn route(service: &str) -> JwtRoute {
    JwtRoute {
        service: service.into(),
        ..JwtRoute::default()
    }
}

/// Routes of the tests: "orders" needs a token (`/admin` with scope `orders:admin`, `DELETE`
/// with claim `role = admin`, `POST /echo` public); "open" has no route.
fn protect(c: &mut Config, url: &str) {
    c.jwt.providers = vec![provider("test", url)];
    c.jwt.forward_claims = [("sub".to_owned(), "x-auth-subject".to_owned())].into();
    c.jwt.routes = vec![
        route("orders"),
        JwtRoute {
            path_prefix: "/admin".into(),
            scopes: vec!["orders:admin".into()],
            ..route("orders")
        },
        JwtRoute {
            methods: vec!["DELETE".into()],
            claims: [("role".to_owned(), "admin".to_owned())].into(),
            ..route("orders")
        },
        JwtRoute {
            path_prefix: "/echo".into(),
            methods: vec!["POST".into()],
            public: true,
            ..route("orders")
        },
    ];
}

async fn setup(
    configure: impl FnOnce(&mut Config, &str),
) -> (Gateway, JwksServer, SigningKey, Instance, Instance) {
    let key = ed_key();
    let jwks = JwksServer::start(&[&key]).await;
    let url = jwks.url.clone();
    let gw = Gateway::start(|c| configure(c, &url)).await;
    let orders = Instance::start("orders", "o-1").await;
    let open = Instance::start("open", "p-1").await;
    gw.register("orders", "o-1", &orders.addr, 30_000).await;
    gw.register("open", "p-1", &open.addr, 30_000).await;
    (gw, jwks, key, orders, open)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, Value) {
    let (status, headers, body) = http_with("GET", url, headers, Vec::new()).await;
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, headers, json)
}

async fn metric(gw: &Gateway, series: &str) -> f64 {
    sample(&scrape(gw).await, series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_valid_token_reaches_the_service_with_its_claims_and_no_forged_ones_over_rest() {
    let (gw, _jwks, key, orders, _open) = setup(protect).await;
    let base = gw.public_url();
    let good = token(&key, &claims("alice"));
    let auth = bearer(&good);

    let (status, _, echo) = get_with(
        &format!("{base}/orders/echo"),
        &[("authorization", &auth), ("x-auth-subject", "mallory")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echoed_header(&echo, "x-auth-subject"), ["alice"], "{echo}");
    assert!(
        echoed_header(&echo, "authorization").is_empty(),
        "the token stops at the gateway: {echo}"
    );

    // No token: 401 with the bare challenge, and the service never sees it.
    let before = orders.requests_received();
    let (status, headers, body) = get_with(&format!("{base}/orders/echo"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="switchyard""#);
    assert_eq!(orders.requests_received(), before);

    // A service without routes is open, and a forged claim header is stripped there too.
    let (status, _, echo) = get_with(
        &format!("{base}/open/echo"),
        &[
            ("x-auth-subject", "mallory"),
            ("authorization", "Basic eDp5"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert!(echoed_header(&echo, "x-auth-subject").is_empty(), "{echo}");
    assert_eq!(
        echoed_header(&echo, "authorization"),
        ["Basic eDp5"],
        "a service without routes keeps its own authorization"
    );
    // A public route of a protected service is open; forged headers are stripped.
    let (status, _, echo) = http_with(
        "POST",
        &format!("{base}/orders/echo"),
        &[("x-auth-subject", "mallory")],
        Vec::new(),
    )
    .await;
    let echo: Value = serde_json::from_slice(&echo).unwrap();
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert!(echoed_header(&echo, "x-auth-subject").is_empty(), "{echo}");
    // A dot segment cannot borrow the public prefix.
    let (status, _, body) = http_with(
        "POST",
        &format!("{base}/orders/echo/%2e%2e/admin"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");

    assert_eq!(
        metric(&gw, r#"switchyard_jwt_refusals_total{reason="missing"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn scopes_and_claims_of_a_route_are_required() {
    let (gw, _jwks, key, _orders, _open) = setup(protect).await;
    let base = gw.public_url();
    let reader = bearer(&token(&key, &claims("bob")));
    let (status, headers, body) = get_with(
        &format!("{base}/orders/admin/users"),
        &[("authorization", &reader)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        headers["www-authenticate"],
        r#"Bearer realm="switchyard", error="insufficient_scope", scope="orders:admin""#
    );
    let mut admin = claims("carol");
    admin["scp"] = json!(["orders:read", "orders:admin"]);
    admin.as_object_mut().unwrap().remove("scope");
    let admin_auth = bearer(&token(&key, &admin));
    let (status, _, body) = get_with(
        &format!("{base}/orders/admin/users"),
        &[("authorization", &admin_auth)],
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("no such route")),
        "an scp array grants it: the service itself answered"
    );

    // DELETE needs role = admin.
    let (status, _, body) = http_with(
        "DELETE",
        &format!("{base}/orders/items/1"),
        &[("authorization", &admin_auth)],
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    admin["role"] = "admin".into();
    let (status, _, body) = http_with(
        "DELETE",
        &format!("{base}/orders/items/1"),
        &[("authorization", &bearer(&token(&key, &admin)))],
        Vec::new(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the service itself answered: {body:?}"
    );
    assert_eq!(
        metric(
            &gw,
            r#"switchyard_jwt_refusals_total{reason="insufficient_scope"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            r#"switchyard_jwt_refusals_total{reason="claim_mismatch"}"#
        )
        .await,
        1.0
    );
}

/// A token with the header and claims given, signed with nothing (`alg: none`).
fn unsigned(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| auth::base64url(&serde_json::to_vec(v).unwrap());
    format!("{}.{}.", part(header), part(claims))
}

#[tokio::test]
async fn bad_tokens_are_refused_with_invalid_token() {
    let (gw, _jwks, key, orders, _open) = setup(protect).await;
    let url = format!("{}/orders/echo", gw.public_url());
    let now = now_s();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims("dave");
        change(&mut c);
        c
    };
    // A key the provider does not publish, naming the published key's kid: bad signature.
    let mut forged_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    forged_header.kid = Some(key.id().to_owned());
    let stranger_pem = auth::generate_key().unwrap().0;
    let forged = jsonwebtoken::encode(
        &forged_header,
        &claims("dave"),
        &jsonwebtoken::EncodingKey::from_ed_pem(stranger_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    // HS256 with the public key's bytes as the secret: the classic confusion.
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(key.id().to_owned());
    let public_x = key.jwk().unwrap()["x"].as_str().unwrap().to_owned();
    let hs = jsonwebtoken::encode(
        &hs_header,
        &claims("dave"),
        &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes()),
    )
    .unwrap();
    // ES256 is not pinned for this provider.
    let es = token(&es_key(), &claims("dave"));
    let none = unsigned(
        &json!({"alg": "none", "typ": "JWT", "kid": key.id()}),
        &claims("dave"),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            token(&key, &with(&|c| c["exp"] = (now - 120).into())),
            "expired",
        ),
        (
            "not yet valid",
            token(&key, &with(&|c| c["nbf"] = (now + 600).into())),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            token(&key, &with(&|c| c["iat"] = (now + 600).into())),
            "issued_in_future",
        ),
        (
            "no exp",
            token(
                &key,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            "malformed",
        ),
        (
            "wrong audience",
            token(&key, &with(&|c| c["aud"] = json!(["other-api"]))),
            "wrong_audience",
        ),
        (
            "wrong issuer",
            token(&key, &with(&|c| c["iss"] = "https://evil.test/".into())),
            "unknown_issuer",
        ),
        ("forged signature", forged, "bad_signature"),
        ("HS256 with the public key", hs, "algorithm"),
        ("unpinned algorithm", es, "algorithm"),
        ("alg none", none, "malformed"),
        ("not a token", "abc.def".to_owned(), "malformed"),
        ("too long", "a".repeat(9 * 1024), "too_large"),
    ];
    for (name, bad, reason) in &cases {
        let auth = bearer(bad);
        let (status, headers, body) = get_with(&url, &[("authorization", &auth)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{name}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with(r#"Bearer realm="switchyard", error="invalid_token""#),
            "{name}: {challenge}"
        );
        assert!(
            metric(
                &gw,
                &format!(r#"switchyard_jwt_refusals_total{{reason="{reason}"}}"#)
            )
            .await
                >= 1.0,
            "{name}: counted as {reason}"
        );
    }
    assert_eq!(
        orders.requests_received(),
        0,
        "no bad token reached the service"
    );
    // Just inside the 60 s leeway: still taken.
    let lenient = token(&key, &with(&|c| c["exp"] = (now - 30).into()));
    let (status, _, body) = get_with(&url, &[("authorization", &bearer(&lenient))]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn graphql_calls_take_the_token_from_the_call_not_the_carrier() {
    let (gw, _jwks, key, orders, _open) = setup(protect).await;
    let auth = bearer(&token(&key, &claims("erin")));
    let query = r#"query($h: [HeaderInput!]!) {
        ok: call(service: "orders", path: "/echo", headers: $h) { status json }
        bare: call(service: "orders", path: "/echo") { status }
        open: call(service: "open", path: "/echo", headers: [{name: "x-auth-subject", value: "mallory"}]) { status json }
    }"#;
    let variables = json!({ "h": [
        {"name": "authorization", "value": auth},
        {"name": "x-auth-subject", "value": "mallory"},
    ]});
    let body = serde_json::to_vec(&json!({ "query": query, "variables": variables })).unwrap();
    // The carrier holds a valid token too: calls do not inherit it.
    let (status, json) = post_raw(
        &gw.graphql_url(),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let echo = &json["data"]["ok"]["json"];
    assert_eq!(json["data"]["ok"]["status"], 200, "{json}");
    assert_eq!(echoed_header(echo, "x-auth-subject"), ["erin"], "{json}");
    assert!(echoed_header(echo, "authorization").is_empty(), "{json}");
    let error = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"][0] == "bare")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(error["extensions"]["code"], "unauthenticated", "{json}");
    assert_eq!(error["extensions"]["status"], 401, "{json}");
    let open = &json["data"]["open"]["json"];
    assert!(echoed_header(open, "x-auth-subject").is_empty(), "{json}");
    assert_eq!(orders.requests_received(), 1);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_never_answered_401() {
    let (gw, jwks, old, _orders, _open) = setup(protect).await;
    let url = format!("{}/orders/echo", gw.public_url());
    let (status, _, _) = get_with(
        &url,
        &[("authorization", &bearer(&token(&old, &claims("f"))))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let fetched = jwks.hits();
    let new = ed_key();
    jwks.publish(&[&old, &new]);
    for i in 0..5 {
        let auth = bearer(&token(&new, &claims(&format!("g{i}"))));
        let (status, _, body) = get_with(&url, &[("authorization", &auth)]).await;
        assert_eq!(status, StatusCode::OK, "token {i} of the new key: {body}");
    }
    assert_eq!(jwks.hits(), fetched + 1, "one refetch for the new kid");
    assert_eq!(
        metric(&gw, r#"switchyard_jwks_keys{provider="test"}"#).await,
        2.0
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_provider_one_fetch_per_cooldown() {
    let (gw, jwks, _key, _orders, _open) = setup(protect).await;
    let url = format!("{}/orders/echo", gw.public_url());
    let fetched = jwks.hits();
    // One after the other: each would find the last fetch over.
    for i in 0..20 {
        let auth = bearer(&token(&ed_key(), &claims(&format!("s{i}"))));
        assert_eq!(
            get_with(&url, &[("authorization", &auth)]).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // All at once: they would wait for one fetch in flight.
    let mut floods = Vec::new();
    for i in 0..20 {
        let url = url.clone();
        floods.push(tokio::spawn(async move {
            // A fresh key each time: a kid the provider has never published.
            let stranger = ed_key();
            let auth = bearer(&token(&stranger, &claims(&format!("h{i}"))));
            get_with(&url, &[("authorization", &auth)]).await.0
        }));
    }
    for flood in floods {
        assert_eq!(flood.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        jwks.hits(),
        fetched + 1,
        "40 unknown kids within the cooldown: one fetch"
    );
    assert_eq!(
        metric(&gw, r#"switchyard_jwks_refetches_total{provider="test"}"#).await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            r#"switchyard_jwt_refusals_total{reason="unknown_key"}"#
        )
        .await,
        40.0
    );
}

#[tokio::test]
async fn a_provider_down_at_start_keeps_the_gateway_unready_until_its_keys_arrive() {
    let key = ed_key();
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_failing(true);
    let url = jwks.url.clone();
    let gw = Gateway::launch_tls(MemoryBus::new(), |c| protect(c, &url), |b| b).await;
    let ready = format!("{}/readyz", gw.public_url());
    // Asked at least twice (the first fetch and a retry) and still unready.
    harness::eventually(Duration::from_secs(10), || async { jwks.hits() >= 2 }).await;
    let (status, _, body) = get_with(&ready, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["waiting_for"][0], r#"JWT provider "test" has no keys"#,
        "{body}"
    );
    let orders = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &orders.addr, 30_000).await;
    let auth = bearer(&token(&key, &claims("i")));
    let orders_url = format!("{}/orders/echo", gw.public_url());
    let (status, _, body) = get_with(&orders_url, &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "not_ready", "{body}");

    jwks.set_failing(false);
    gw.wait_ready_probe().await;
    let (status, _, body) = get_with(&orders_url, &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        metric(
            &gw,
            r#"switchyard_jwks_fetches_total{provider="test",outcome="http_status"}"#
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_provider_down_mid_run_is_served_stale_within_the_bound_then_dropped() {
    let (gw, jwks, key, _orders, _open) = setup(|c, url| {
        protect(c, url);
        let p = &mut c.jwt.providers[0];
        p.refresh_min_ms = 100;
        p.refresh_interval_ms = 200;
        p.stale_max_ms = 1_000;
    })
    .await;
    let url = format!("{}/orders/echo", gw.public_url());
    let auth = bearer(&token(&key, &claims("j")));
    jwks.set_failing(true);
    let failed_from = jwks.hits();
    // Stale keys still serve right after the provider went down.
    let (status, _, body) = get_with(&url, &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Then, past the stale bound, they are dropped: 503 and unready.
    harness::eventually(Duration::from_secs(10), || async {
        get_with(&url, &[("authorization", &auth)]).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(
        jwks.hits() > failed_from,
        "the gateway kept trying while the keys were stale"
    );
    let (status, _, body) = get_with(&format!("{}/readyz", gw.public_url()), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        metric(&gw, r#"switchyard_jwks_keys{provider="test"}"#).await,
        0.0
    );
    // The provider comes back: so do the keys.
    jwks.set_failing(false);
    gw.wait_ready_probe().await;
    let (status, _, body) = get_with(&url, &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A revocation list whose answer the test sets.
struct Answer(Mutex<Revocation>, Mutex<Vec<String>>);

impl RevocationList for Answer {
    fn check(&self, token: &TokenFacts<'_>) -> Revocation {
        self.1.lock().unwrap().push(format!(
            "{}/{}/{:?}",
            token.provider, token.subject, token.token_id
        ));
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn the_revocation_list_is_asked_for_every_request_and_its_three_answers_are_kept() {
    let key = ed_key();
    let jwks = JwksServer::start(&[&key]).await;
    let url = jwks.url.clone();
    let answer = Arc::new(Answer(
        Mutex::new(Revocation::Clear),
        Mutex::new(Vec::new()),
    ));
    let list: Arc<dyn RevocationList> = answer.clone();
    let gw = Gateway::start_built(
        MemoryBus::new(),
        |c| {
            protect(c, &url);
            // A second provider for the same issuer, open when the list cannot vouch, for
            // the "lenient" service only.
            let mut lenient = provider("lenient", &url);
            lenient.revocation_unavailable = RevocationFailMode::FailOpen;
            c.jwt.providers.push(lenient);
            c.jwt.providers[0].issuer = "https://strict.test/".into();
            c.jwt.routes.push(JwtRoute {
                providers: vec!["lenient".into()],
                ..route("lenient")
            });
        },
        |b| b.revocations(list),
    )
    .await;
    let orders = Instance::start("orders", "o-1").await;
    let lenient = Instance::start("lenient", "l-1").await;
    gw.register("orders", "o-1", &orders.addr, 30_000).await;
    gw.register("lenient", "l-1", &lenient.addr, 30_000).await;
    let mut strict_claims = claims("kim");
    strict_claims["iss"] = "https://strict.test/".into();
    let strict = bearer(&token(&key, &strict_claims));
    let open = bearer(&token(&key, &claims("lee")));
    let strict_url = format!("{}/orders/echo", gw.public_url());
    let lenient_url = format!("{}/lenient/echo", gw.public_url());

    let set = |r: Revocation| *answer.0.lock().unwrap() = r;
    assert_eq!(
        get_with(&strict_url, &[("authorization", &strict)]).await.0,
        StatusCode::OK
    );
    set(Revocation::Revoked);
    // The same token again: a cache hit, and still asked.
    let (status, headers, body) = get_with(&strict_url, &[("authorization", &strict)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    set(Revocation::Unknown);
    let (status, _, body) = get_with(&strict_url, &[("authorization", &strict)]).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "fail_closed: {body}"
    );
    assert_eq!(body["error"]["code"], "not_ready");
    let (status, _, body) = get_with(&lenient_url, &[("authorization", &open)]).await;
    assert_eq!(status, StatusCode::OK, "fail_open: {body}");
    assert_eq!(
        metric(
            &gw,
            r#"switchyard_jwt_revocation_unknown_admitted_total{provider="lenient"}"#
        )
        .await,
        1.0
    );
    let asked = answer.1.lock().unwrap().clone();
    assert_eq!(
        asked,
        [
            r#"test/kim/Some("id-kim")"#,
            r#"test/kim/Some("id-kim")"#,
            r#"test/kim/Some("id-kim")"#,
            r#"lenient/lee/Some("id-lee")"#
        ]
    );
    assert_eq!(orders.requests_received(), 1);
}

#[tokio::test]
async fn the_verified_token_cache_is_bounded_and_hit_by_a_repeated_token() {
    let (gw, _jwks, key, _orders, _open) = setup(|c, url| {
        protect(c, url);
        c.jwt.cache_entries_max = 4;
    })
    .await;
    let url = format!("{}/orders/echo", gw.public_url());
    let mut auth = String::new();
    for i in 0..10 {
        auth = bearer(&token(&key, &claims(&format!("m{i}"))));
        assert_eq!(
            get_with(&url, &[("authorization", &auth)]).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(metric(&gw, "switchyard_jwt_cache_entries").await, 4.0);
    // The last token again: remembered.
    for _ in 0..3 {
        assert_eq!(
            get_with(&url, &[("authorization", &auth)]).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        metric(&gw, r#"switchyard_jwt_cache_lookups_total{result="hit"}"#).await,
        3.0
    );
    assert_eq!(
        metric(&gw, r#"switchyard_jwt_cache_lookups_total{result="miss"}"#).await,
        10.0
    );
}

#[tokio::test]
async fn without_providers_the_public_front_is_open() {
    let gw = Gateway::start(|_| {}).await;
    let open = Instance::start("open", "p-1").await;
    gw.register("open", "p-1", &open.addr, 30_000).await;
    let (status, _, body) = http("GET", &format!("{}/open/echo", gw.public_url())).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let metrics = scrape(&gw).await;
    assert!(
        !metrics.contains("switchyard_jwt_"),
        "no JWT metrics without JWT"
    );
}

#[tokio::test]
async fn a_jwks_document_past_its_size_or_key_bound_is_refused_and_keeps_the_gateway_unready() {
    let keys: Vec<SigningKey> = (0..3).map(|_| ed_key()).collect();
    let jwks = JwksServer::start(&keys.iter().collect::<Vec<_>>()).await;
    let size = serde_json::to_vec(&document(&keys.iter().collect::<Vec<_>>()))
        .unwrap()
        .len();
    for (name, configure) in [
        (
            "bytes",
            Box::new(move |p: &mut JwtProvider| p.jwks_bytes_max = size - 1)
                as Box<dyn Fn(&mut JwtProvider)>,
        ),
        ("keys", Box::new(|p: &mut JwtProvider| p.keys_max = 2)),
    ] {
        let url = jwks.url.clone();
        let gw = Gateway::launch_tls(
            MemoryBus::new(),
            |c| {
                protect(c, &url);
                configure(&mut c.jwt.providers[0]);
            },
            |b| b,
        )
        .await;
        harness::eventually(Duration::from_secs(10), || async {
            metric(
                &gw,
                r#"switchyard_jwks_fetches_total{provider="test",outcome="invalid"}"#,
            )
            .await
                >= 1.0
        })
        .await;
        let (status, _, body) = get_with(&format!("{}/readyz", gw.public_url()), &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {body}");
    }
    // Within both bounds: taken.
    let url = jwks.url.clone();
    let gw = Gateway::start(|c| {
        protect(c, &url);
        c.jwt.providers[0].jwks_bytes_max = size;
        c.jwt.providers[0].keys_max = 3;
    })
    .await;
    assert_eq!(
        metric(&gw, r#"switchyard_jwks_keys{provider="test"}"#).await,
        3.0
    );
}

#[tokio::test]
async fn a_provider_that_never_answers_costs_one_fetch_timeout() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let gw = Gateway::launch_tls(
        MemoryBus::new(),
        |c| {
            protect(c, &url);
            c.jwt.providers[0].fetch_timeout_ms = 200;
        },
        |b| b,
    )
    .await;
    harness::eventually(Duration::from_secs(10), || async {
        metric(
            &gw,
            r#"switchyard_jwks_fetches_total{provider="test",outcome="timeout"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    let (status, _, body) = get_with(&format!("{}/readyz", gw.public_url()), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    held.abort();
}

#[tokio::test]
async fn keys_are_fetched_over_https_verified_against_the_configured_ca() {
    use crate::tls::{Ca, temp_dir, write};
    let dir = temp_dir("jwks");
    let ca = Ca::new("jwks-ca");
    let (cert, key_pem) = ca.leaf(&["localhost"], &[]);
    let tls_files = switchyard::config::TlsConfig {
        cert_file: write(&dir, "jwks.crt", &cert),
        key_file: write(&dir, "jwks.key", &key_pem),
        ..Default::default()
    };
    let tls = switchyard::tls::ServerTls::load(&tls_files).unwrap();
    let key = ed_key();
    let state = Arc::new(Jwks {
        document: Mutex::new(document(&[&key])),
        hits: AtomicUsize::new(0),
        failing: AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/jwks.json", get(serve_jwks))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/jwks.json", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(switchyard::serve::serve_with(
        listener,
        app,
        stop.clone(),
        Duration::from_millis(100),
        switchyard::serve::ServeLimits::default(),
        tls,
        Arc::new(|_| {}),
    ));
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let gw = Gateway::start(|c| {
        protect(c, &url);
        c.jwt.providers[0].jwks_ca_file = ca_file.clone();
    })
    .await;
    let orders = Instance::start("orders", "o-1").await;
    gw.register("orders", "o-1", &orders.addr, 30_000).await;
    let auth = bearer(&token(&key, &claims("tls")));
    let (status, _, body) = get_with(
        &format!("{}/orders/echo", gw.public_url()),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Another CA's gateway does not trust the provider: no keys, not ready.
    let other = write(&dir, "other-ca.pem", &Ca::new("other").pem());
    let distrustful = Gateway::launch_tls(
        MemoryBus::new(),
        |c| {
            protect(c, &url);
            c.jwt.providers[0].jwks_ca_file = other;
        },
        |b| b,
    )
    .await;
    harness::eventually(Duration::from_secs(10), || async {
        metric(
            &distrustful,
            r#"switchyard_jwks_fetches_total{provider="test",outcome="unreachable"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    let (status, _, _) = get_with(&format!("{}/readyz", distrustful.public_url()), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    stop.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_provider_that_cannot_be_set_up_keeps_the_gateway_unready_with_the_reason() {
    let gw = Gateway::launch_tls(
        MemoryBus::new(),
        |c| {
            protect(c, "https://127.0.0.1:9/jwks.json");
            c.jwt.providers[0].jwks_ca_file = "/nonexistent/ca.pem".into();
        },
        |b| b,
    )
    .await;
    let ready = format!("{}/readyz", gw.public_url());
    harness::eventually(Duration::from_secs(10), || async {
        harness::try_http("GET", &ready).await.is_ok()
    })
    .await;
    let (status, _, body) = get_with(&ready, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let reason = body["waiting_for"][0].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("[jwt] not in force") && reason.contains("/nonexistent/ca.pem"),
        "{body}"
    );
}

#[tokio::test]
async fn a_token_remembered_for_one_provider_is_still_taken_by_another_of_the_same_issuer() {
    let (gw, _jwks, key, _orders, _open) = setup(|c, url| {
        protect(c, url);
        c.jwt.providers.push(provider("twin", url));
        c.jwt.routes = vec![
            JwtRoute {
                providers: vec!["test".into()],
                ..route("orders")
            },
            JwtRoute {
                providers: vec!["twin".into()],
                ..route("open")
            },
        ];
    })
    .await;
    let auth = bearer(&token(&key, &claims("nia")));
    for service in ["orders", "open", "orders"] {
        let (status, _, body) = get_with(
            &format!("{}/{service}/echo", gw.public_url()),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{service}: {body}");
    }
}
