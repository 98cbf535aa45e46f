//! Credentials on the control listener, on real sockets: every registry change (REST, gRPC
//! and GraphQL alike) and every read needs a credential that covers it; each refusal is 401
//! or 403 with its code, counted by reason, and changes nothing; a key removed from the key
//! file stops verifying its credentials without a restart.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use switchyard::auth::{self, AUDIENCE, Authenticator, Claims, KeySet, Refusal, SigningKey};
use switchyard::bus::MemoryBus;
use switchyard::config::{ControlAuth, ControlReads};
use switchyard::seams::{Clock as _, SystemClock};
use switchyard::telemetry::metrics::CONTROL_AUTH_REFUSALS;
use switchyard_core::registry::Lookup;
use switchyard_proto::registry::registration_client::RegistrationClient;
use switchyard_proto::registry::{DeregisterRequest, ListRequest, RegisterRequest};

use crate::graphql::post_raw;
use crate::harness::{Gateway, eventually, http_with};

fn new_key() -> SigningKey {
    let (private, _) = auth::generate_key().unwrap();
    SigningKey::from_pem(&private).unwrap()
}

fn now_s() -> u64 {
    SystemClock.now_ms() / 1_000
}

/// A credential of `key` for `services`, valid for an hour from `from_s`.
fn token_at(key: &SigningKey, services: &[&str], read: bool, from_s: u64) -> String {
    let claims = Claims {
        aud: AUDIENCE.to_owned(),
        sub: format!("team-{}", services.join("+")),
        jti: format!("id-{}", services.join("+")),
        iat: from_s,
        exp: from_s + 3_600,
        nbf: None,
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        read,
    };
    auth::issue(key, &claims).unwrap()
}

fn token(key: &SigningKey, services: &[&str]) -> String {
    token_at(key, services, false, now_s())
}

/// A gateway that verifies credentials against `keys` (reads as `reads` says).
async fn gateway(keys: &[&SigningKey], reads: ControlReads) -> Gateway {
    let pem: String = keys.iter().map(|k| k.public_pem()).collect();
    let auth = Authenticator::new(
        auth::Mode::Required,
        KeySet::from_pem(&pem).unwrap(),
        30_000,
    );
    Gateway::start_built(
        MemoryBus::new(),
        |c| {
            c.control.auth = ControlAuth::Required;
            c.control.reads = reads;
        },
        |b| b.authenticator(Arc::new(auth)),
    )
    .await
}

/// `token` with its claims changed after signing: `services` widened to `*`, the signature
/// kept.
fn forged(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let claims = Claims {
        aud: AUDIENCE.to_owned(),
        sub: "forger".to_owned(),
        jti: "forged".to_owned(),
        iat: now_s(),
        exp: now_s() + 3_600,
        nbf: None,
        services: vec!["*".to_owned()],
        read: true,
    };
    parts[1] = base64_url(&serde_json::to_vec(&claims).unwrap());
    parts.join(".")
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `PUT` a registration of `service/id` with `authorization` (if any): status and body.
async fn put(
    gw: &Gateway,
    service: &str,
    id: &str,
    authorization: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let url = format!("{}/v1/services/{service}/instances/{id}", gw.control_url());
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let (status, head, body) =
        http_with("PUT", &url, &headers, br#"{"addr":"127.0.0.1:9"}"#.to_vec()).await;
    let challenge = head
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        challenge,
    )
}

fn entries(gw: &Gateway) -> usize {
    gw.node.registry().len()
}

#[tokio::test]
async fn rest_registration_needs_a_credential_for_its_service() {
    let key = new_key();
    let stranger = new_key();
    let gw = gateway(&[&key], ControlReads::Credential).await;
    gw.wait_ready_probe().await;
    let orders = bearer(&token(&key, &["orders", "billing-*"]));

    let refusals = [
        (None, StatusCode::UNAUTHORIZED, "missing"),
        (
            Some("Bearer not.a.jwt".to_owned()),
            StatusCode::UNAUTHORIZED,
            "malformed",
        ),
        (
            Some(bearer(&token(&stranger, &["orders"]))),
            StatusCode::UNAUTHORIZED,
            "unknown_key",
        ),
        (
            Some(bearer(&token_at(&key, &["orders"], false, now_s() - 7_200))),
            StatusCode::UNAUTHORIZED,
            "expired",
        ),
        (
            Some(bearer(&forged(&token(&key, &["payments"])))),
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            Some(bearer(&token(&key, &["payments"]))),
            StatusCode::FORBIDDEN,
            "not_permitted",
        ),
    ];
    for (authorization, status, reason) in refusals {
        let before = gw.node.metrics().control_auth_refusals_of(reason);
        let (got, body, challenge) = put(&gw, "orders", "i-1", authorization.as_deref()).await;
        assert_eq!(got, status, "{reason}: {body}");
        let code = if status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "unauthenticated"
        };
        assert_eq!(body["error"]["code"], code, "{reason}");
        if status == StatusCode::UNAUTHORIZED {
            assert!(
                challenge
                    .unwrap()
                    .starts_with("Bearer realm=\"switchyard-control\"")
            );
        }
        assert_eq!(
            gw.node.metrics().control_auth_refusals_of(reason),
            before + 1,
            "{reason} counted"
        );
        assert_eq!(entries(&gw), 0, "{reason}: the registry is unchanged");
    }

    // Its own services, by name and by prefix; not a name that merely starts like one.
    assert_eq!(
        put(&gw, "orders", "i-1", Some(&orders)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put(&gw, "billing-eu", "i-1", Some(&orders)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put(&gw, "billing", "i-1", Some(&orders)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(entries(&gw), 2);

    // Another team cannot deregister them; the owner can.
    let url = format!("{}/v1/services/orders/instances/i-1", gw.control_url());
    let payments = bearer(&token(&key, &["payments"]));
    let (status, _, _) =
        http_with("DELETE", &url, &[("authorization", &payments)], Vec::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(matches!(
        gw.node.registry().lookup("orders", gw.node.now_ms()),
        Lookup::Live(_)
    ));
    let (status, _, _) = http_with("DELETE", &url, &[("authorization", &orders)], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn grpc_and_graphql_changes_are_held_to_the_same_credentials() {
    let key = new_key();
    let gw = gateway(&[&key], ControlReads::Credential).await;
    gw.wait_ready_probe().await;
    let channel = tonic::transport::Endpoint::from_shared(gw.control_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RegistrationClient::new(channel);
    let register = |service: &str, authorization: Option<String>| {
        let mut request = tonic::Request::new(RegisterRequest {
            service: service.to_owned(),
            instance_id: "g-1".to_owned(),
            addr: "127.0.0.1:9".to_owned(),
            ..RegisterRequest::default()
        });
        if let Some(a) = authorization {
            request
                .metadata_mut()
                .insert("authorization", a.parse().unwrap());
        }
        request
    };
    let orders = bearer(&token(&key, &["orders"]));
    let stranger = new_key();
    let refusals = [
        (None, tonic::Code::Unauthenticated),
        (
            Some(bearer(&token(&stranger, &["orders"]))),
            tonic::Code::Unauthenticated,
        ),
        (
            Some(bearer(&forged(&token(&key, &["billing"])))),
            tonic::Code::Unauthenticated,
        ),
        (
            Some(bearer(&token_at(&key, &["orders"], false, now_s() - 7_200))),
            tonic::Code::Unauthenticated,
        ),
        (
            Some(bearer(&token(&key, &["billing"]))),
            tonic::Code::PermissionDenied,
        ),
    ];
    for (authorization, code) in refusals {
        let refused = client
            .register(register("orders", authorization))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
    }
    let refused = client
        .register(register("billing", Some(orders.clone())))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(entries(&gw), 0);
    client
        .register(register("orders", Some(orders.clone())))
        .await
        .unwrap();
    client
        .renew(register("orders", Some(orders.clone())))
        .await
        .unwrap();
    let mut deregister = tonic::Request::new(DeregisterRequest {
        service: "orders".to_owned(),
        instance_id: "g-1".to_owned(),
    });
    deregister.metadata_mut().insert(
        "authorization",
        bearer(&token(&key, &["billing"])).parse().unwrap(),
    );
    let refused = client.deregister(deregister).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // Listing is a read: the registration credential has no `read`.
    let mut list = tonic::Request::new(ListRequest::default());
    list.metadata_mut()
        .insert("authorization", orders.parse().unwrap());
    assert_eq!(
        client.list(list).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    let mutation = r#"mutation($s: String!) {
        register(input: {service: $s, instanceId: "q-1", addr: "127.0.0.1:9"}) { published }
    }"#;
    let graphql = |service: &str| {
        serde_json::to_vec(&json!({"query": mutation, "variables": {"s": service}})).unwrap()
    };
    let url = gw.control_graphql_url();
    let json_type = ("content-type", "application/json");
    let (_, body) = post_raw(&url, &[json_type], graphql("orders")).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "unauthenticated",
        "{body}"
    );
    let (_, body) = post_raw(
        &url,
        &[json_type, ("authorization", &orders)],
        graphql("billing"),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "forbidden",
        "{body}"
    );
    let (_, body) = post_raw(
        &url,
        &[json_type, ("authorization", &orders)],
        graphql("orders"),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(body["data"]["register"]["published"], true);
    assert_eq!(entries(&gw), 2);
}

#[tokio::test]
async fn reads_need_a_credential_with_read_unless_open() {
    let key = new_key();
    let gw = gateway(&[&key], ControlReads::Credential).await;
    let reader = bearer(&token_at(&key, &[], true, now_s()));
    let writer = bearer(&token(&key, &["orders"]));
    for path in ["/v1/services", "/v1/cluster", "/metrics"] {
        let url = format!("{}{path}", gw.control_url());
        assert_eq!(
            http_with("GET", &url, &[], Vec::new()).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let (status, _, _) =
            http_with("GET", &url, &[("authorization", &writer)], Vec::new()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _, _) =
            http_with("GET", &url, &[("authorization", &reader)], Vec::new()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let query = serde_json::to_vec(&json!({"query": "{ services { name } }"})).unwrap();
    let json_type = ("content-type", "application/json");
    let (_, body) = post_raw(&gw.control_graphql_url(), &[json_type], query.clone()).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "unauthenticated",
        "{body}"
    );
    let (_, body) = post_raw(
        &gw.control_graphql_url(),
        &[json_type, ("authorization", &reader)],
        query,
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    // The probes stay open: load balancers and orchestrators hold no credential.
    let (status, _, _) = http_with(
        "GET",
        &format!("{}/readyz", gw.control_url()),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let open = gateway(&[&key], ControlReads::Open).await;
    let url = format!("{}/v1/services", open.control_url());
    assert_eq!(
        http_with("GET", &url, &[], Vec::new()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put(&open, "orders", "i-1", None).await.0,
        StatusCode::UNAUTHORIZED,
        "changes still need one"
    );
}

#[tokio::test]
async fn a_key_removed_from_the_key_file_stops_verifying_without_a_restart() {
    let (old, new) = (new_key(), new_key());
    let dir = std::env::temp_dir().join(format!(
        "switchyard-keys-{}-{}",
        std::process::id(),
        now_s()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("control-keys.pem");
    std::fs::write(&file, format!("{}{}", old.public_pem(), new.public_pem())).unwrap();
    let gw = Gateway::start(|c| {
        c.control.auth = ControlAuth::Required;
        c.control.jwt_keys_file = file.clone();
        c.control.keys_reload_interval_ms = 100;
    })
    .await;
    let (old_token, new_token) = (
        bearer(&token(&old, &["orders"])),
        bearer(&token(&new, &["orders"])),
    );
    eventually(Duration::from_secs(10), || async {
        put(&gw, "orders", "i-1", Some(&old_token)).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        put(&gw, "orders", "i-2", Some(&new_token)).await.0,
        StatusCode::OK
    );

    // A broken file changes nothing: the keys in force stay.
    let reloads = |outcome: &str| {
        let mut metrics = String::new();
        gw.node.metrics().encode(&mut metrics);
        crate::telemetry::sample(
            &metrics,
            &format!("switchyard_control_key_reloads_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    std::fs::write(
        &file,
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    eventually(Duration::from_secs(10), || async {
        reloads("rejected") >= 1.0
    })
    .await;
    assert_eq!(
        put(&gw, "orders", "i-3", Some(&old_token)).await.0,
        StatusCode::OK
    );

    // Rotation done: the old key leaves the file, and its credentials stop working. (Before
    // the watcher's first read, this gateway held no key: refusals before here are that.)
    let unknown_before = gw.node.metrics().control_auth_refusals_of("unknown_key");
    std::fs::write(&file, new.public_pem()).unwrap();
    eventually(Duration::from_secs(10), || async {
        put(&gw, "orders", "i-4", Some(&old_token)).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(reloads("applied") >= 1.0);
    assert_eq!(
        put(&gw, "orders", "i-5", Some(&new_token)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        gw.node.metrics().control_auth_refusals_of("unknown_key"),
        unknown_before + 1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_refusal_reason_has_its_series() {
    assert_eq!(Refusal::LABELS, CONTROL_AUTH_REFUSALS);
}
