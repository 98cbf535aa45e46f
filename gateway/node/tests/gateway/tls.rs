//! TLS on the listeners, with certificates made here: HTTP/2 and HTTP/1.1 by ALPN, a new
//! certificate in force without a restart, a handshake that never comes bounded, and client
//! certificates as control credentials (mapped SAN, unmapped SAN, none).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switchyard::auth::{self, Authenticator, KeySet};
use switchyard::bus::MemoryBus;
use switchyard::config::{CertificateGrant, ControlAuth, TlsConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::{Gateway, eventually};

/// A CA and what it signs.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `dns` names and `uris`, and its key (PEM).
    pub(crate) fn leaf(&self, dns: &[&str], uris: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }
}

pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-tls-{name}-{}-{:?}",
        std::process::id(),
        tokio::time::Instant::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// One request over TLS to `addr`: the status, the body, and the certificate the server
/// presented. `h2` picks the protocol by ALPN.
async fn https(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&(String, String)>,
    h2: bool,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(StatusCode, Bytes, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, connection) = tls.get_ref();
    assert_eq!(
        connection.alpn_protocol(),
        Some(if h2 { &b"h2"[..] } else { &b"http/1.1"[..] })
    );
    let presented = connection.peer_certificates().unwrap()[0].to_vec();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1:{}{path}", addr.port()))
        .header("host", format!("127.0.0.1:{}", addr.port()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body, presented))
}

struct Setup {
    ca: Ca,
    dir: PathBuf,
    gw: Gateway,
    orders_client: (String, String),
    stranger_client: (String, String),
}

async fn setup() -> Setup {
    let ca = Ca::new("switchyard test CA");
    let dir = temp_dir("listeners");
    let (cert, key) = ca.leaf(&["localhost"], &[]);
    let cert_file = write(&dir, "server.pem", &cert);
    let key_file = write(&dir, "server.key", &key);
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let orders_client = ca.leaf(&[], &["spiffe://test/orders"]);
    let stranger_client = ca.leaf(&[], &["spiffe://test/stranger"]);
    let (_, public) = auth::generate_key().unwrap();
    let authenticator = Authenticator::new(
        auth::Mode::Required,
        KeySet::from_pem(&public).unwrap(),
        30_000,
    )
    .with_certificate_grants(&[CertificateGrant {
        san: "spiffe://test/orders".to_owned(),
        services: vec!["orders".to_owned()],
        read: false,
    }])
    .unwrap();
    let tls = TlsConfig {
        cert_file,
        key_file,
        client_ca_file: PathBuf::new(),
        reload_interval_ms: 100,
    };
    let gw = Gateway::launch_tls(
        MemoryBus::new(),
        |c| {
            c.public.tls = tls.clone();
            c.control.tls = TlsConfig {
                client_ca_file: ca_file.clone(),
                ..tls.clone()
            };
            c.control.header_read_timeout_ms = 300;
            c.control.auth = ControlAuth::Required;
        },
        |b| b.authenticator(Arc::new(authenticator)),
    )
    .await;
    Setup {
        ca,
        dir,
        gw,
        orders_client,
        stranger_client,
    }
}

async fn wait_ready_tls(s: &Setup) {
    let ca = s.ca.pem();
    eventually(Duration::from_secs(10), || async {
        matches!(
            https(s.gw.public_addr(), &ca, None, true, "GET", "/readyz", "").await,
            Ok((StatusCode::OK, _, _))
        )
    })
    .await;
}

#[tokio::test]
async fn listeners_speak_tls_by_alpn_and_client_certificates_are_control_credentials() {
    let s = setup().await;
    wait_ready_tls(&s).await;
    let ca = s.ca.pem();
    let public = s.gw.public_addr();
    for h2 in [true, false] {
        let (status, _, _) = https(public, &ca, None, h2, "GET", "/healthz", "")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "h2: {h2}");
    }

    let control = s.gw.control_addr();
    let put = |client: Option<&(String, String)>, service: &'static str| {
        let ca = ca.clone();
        let client = client.cloned();
        async move {
            https(
                control,
                &ca,
                client.as_ref(),
                true,
                "PUT",
                &format!("/v1/services/{service}/instances/i-1"),
                r#"{"addr":"127.0.0.1:9"}"#,
            )
            .await
            .unwrap()
            .0
        }
    };
    assert_eq!(put(None, "orders").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        put(Some(&s.stranger_client), "orders").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        put(Some(&s.orders_client), "billing").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(s.gw.node.registry().len(), 0);
    assert_eq!(put(Some(&s.orders_client), "orders").await, StatusCode::OK);
    assert_eq!(s.gw.node.registry().len(), 1);
    // The grant has no `read`.
    let (status, _, _) = https(
        control,
        &ca,
        Some(&s.orders_client),
        false,
        "GET",
        "/v1/services",
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A certificate from another CA is refused at the handshake.
    let other = Ca::new("another CA").leaf(&[], &["spiffe://test/orders"]);
    let refused = https(control, &ca, Some(&other), true, "GET", "/healthz", "").await;
    assert!(refused.is_err(), "{refused:?}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test]
async fn a_new_certificate_is_in_force_without_a_restart_and_a_bad_one_changes_nothing() {
    let s = setup().await;
    wait_ready_tls(&s).await;
    let ca = s.ca.pem();
    let public = s.gw.public_addr();
    let presented = || async {
        https(public, &ca, None, true, "GET", "/healthz", "")
            .await
            .unwrap()
            .2
    };
    let first = presented().await;

    std::fs::write(s.dir.join("server.pem"), "not a certificate").unwrap();
    eventually(Duration::from_secs(10), || async {
        let mut text = String::new();
        s.gw.node.metrics().encode(&mut text);
        crate::telemetry::sample(
            &text,
            "switchyard_tls_reloads_total{listener=\"public\",outcome=\"rejected\"}",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(presented().await, first, "the certificate in force stays");

    let (cert, key) = s.ca.leaf(&["localhost"], &[]);
    std::fs::write(s.dir.join("server.key"), key).unwrap();
    std::fs::write(s.dir.join("server.pem"), cert).unwrap();
    eventually(Duration::from_secs(10), || async {
        presented().await != first
    })
    .await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test]
async fn a_handshake_that_never_comes_is_bounded_and_counted() {
    let s = setup().await;
    wait_ready_tls(&s).await;
    let mut silent = TcpStream::connect(s.gw.control_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    // The listener closes it after control.header_read_timeout_ms (300 ms).
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // Cleartext HTTP to a TLS listener is no handshake either.
    let plain =
        crate::harness::try_http("GET", &format!("http://{}/healthz", s.gw.control_addr())).await;
    assert!(plain.is_err(), "{plain:?}");
    let mut text = String::new();
    s.gw.node.metrics().encode(&mut text);
    let refused = crate::telemetry::sample(
        &text,
        "switchyard_listener_refusals_total{listener=\"control\",reason=\"tls_handshake\"}",
    )
    .unwrap();
    assert!(refused >= 2.0, "{refused}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// A sample instance serving over TLS with `identity`, requiring client certificates signed by
/// `client_ca` when given: its `https://` address.
async fn tls_instance(
    service: &str,
    identity: &(String, String),
    client_ca: Option<&str>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&identity.0, &identity.1),
    );
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
    }
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(sample_service::Sample::new(service, "tls-1").into_server());
    tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    format!("https://{addr}")
}

/// A gateway that calls https instances with `ca` and, when given, a client certificate.
async fn upstream_gateway(dir: &Path, ca: &Ca, client: Option<&(String, String)>) -> Gateway {
    let ca_file = write(dir, "upstream-ca.pem", &ca.pem());
    let client_files = client.map(|(cert, key)| {
        (
            write(dir, "gw-client.pem", cert),
            write(dir, "gw-client.key", key),
        )
    });
    Gateway::start(move |c| {
        c.upstream.tls.ca_file = ca_file;
        if let Some((cert, key)) = client_files {
            c.upstream.tls.cert_file = cert;
            c.upstream.tls.key_file = key;
        }
    })
    .await
}

#[tokio::test]
async fn https_instances_are_called_over_tls_with_the_configured_ca_and_client_certificate() {
    let ca = Ca::new("services CA");
    let dir = temp_dir("upstream");
    let server = ca.leaf(&["localhost"], &[]);
    let gateway_client = ca.leaf(&[], &["spiffe://test/gateway"]);

    // TLS, no client certificate asked.
    let plain_tls = tls_instance("secure", &server, None).await;
    let gw = upstream_gateway(&dir, &ca, None).await;
    gw.register("secure", "tls-1", &plain_tls, 30_000).await;
    let (status, _, body) =
        crate::harness::http("GET", &format!("{}/secure/hello", gw.public_url())).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");

    // mTLS: the instance asks for a certificate signed by the CA; the gateway presents one.
    let mutual = tls_instance("mutual", &server, Some(&ca.pem())).await;
    let mtls_dir = temp_dir("upstream-mtls");
    let with_cert = upstream_gateway(&mtls_dir, &ca, Some(&gateway_client)).await;
    with_cert.register("mutual", "tls-1", &mutual, 30_000).await;
    let (status, _, body) =
        crate::harness::http("GET", &format!("{}/mutual/hello", with_cert.public_url())).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    // Without a client certificate the instance refuses the handshake.
    gw.register("mutual", "tls-1", &mutual, 30_000).await;
    let (status, _, body) =
        crate::harness::http("GET", &format!("{}/mutual/hello", gw.public_url())).await;
    assert!(status.is_server_error(), "{status} {body:?}");

    // A gateway that does not trust the instance's CA does not call it.
    let stranger_dir = temp_dir("upstream-stranger");
    let distrusting = upstream_gateway(&stranger_dir, &Ca::new("another CA"), None).await;
    distrusting
        .register("secure", "tls-1", &plain_tls, 30_000)
        .await;
    let (status, _, body) =
        crate::harness::http("GET", &format!("{}/secure/hello", distrusting.public_url())).await;
    assert!(status.is_server_error(), "{status} {body:?}");

    // A gateway without upstream.tls refuses https registrations outright.
    let cleartext = Gateway::start(|_| {}).await;
    let url = format!(
        "{}/v1/services/secure/instances/tls-1",
        cleartext.control_url()
    );
    let body = serde_json::to_vec(&serde_json::json!({ "addr": plain_tls })).unwrap();
    let (status, _, answer) = crate::harness::http_with("PUT", &url, &[], body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("upstream.tls.ca_file"));
    for d in [dir, mtls_dir, stranger_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}
