//! The turmoil harness: the seams of a Switchyard node implemented over turmoil's simulated
//! network and clock, so that the unchanged node code runs inside a deterministic simulation.
//!
//! * [`SimListener`] and [`SimConnector`]: the network seam over turmoil TCP.
//! * [`SimClock`]: wall time from the simulation's logical clock, with a per-node skew.
//! * [`broker`]: the simulated Kafka broker host and the gateways' adapter for it.
//! * [`faults`]: fault kinds (swarm-chosen per seed) and the schedule drawn from a seed.
//! * [`hostile`]: hostile bus records, written straight into the broker's log.
//! * [`scenario`]: one run: cluster, workload, faults, invariant checkers, trace hash.
//! * [`explore`]: many seeds, the summary, and the replay command for failures.
//! * [`progress`]: `explore`'s progress line, drawn only at a terminal outside CI.
//! * [`witness`]: a sample instance that records which gateway sent it each request.
//! * [`gateway_host`], [`service_host`], [`witnessed_service_host`]: host bodies that run a
//!   gateway node or a sample instance.
//! * [`http_get`], [`http_send`]: a minimal HTTP/1.1 client for simulated clients.
//! * [`authenticator`], [`credential`]: the control credentials every simulated gateway
//!   verifies and every simulated registration carries.
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sample_service::{RegistrationSpec, Sample, keep_registered};
use switchyard::Config;
use switchyard::auth::{self, Authenticator, Claims, KeySet, SigningKey};
use switchyard::bus::MemoryBus;
use switchyard::seams::{BoxFuture, Clock, Connector, Io, Seams};
use switchyard_proto::registry::registration_client::RegistrationClient;
use tokio_util::sync::CancellationToken;

/// Ports every simulated gateway listens on.
pub const PUBLIC_PORT: u16 = 8080;
pub const CONTROL_PORT: u16 = 8081;
/// Port every simulated service instance listens on.
pub const SERVICE_PORT: u16 = 7000;

/// How long every HTTP/2 client in the simulation, the gateways' included, remembers a
/// stream it reset: h2 times this on the machine's clock, which turmoil cannot move, so a
/// stream forgotten after a real second made a seed's trace depend on the machine's load.
/// Held past any run's wall time, only the count (50 per connection) decides (decision 0025).
pub const RESET_STREAM_HOLD: Duration =
    Duration::from_millis(switchyard::config::RESET_STREAM_HOLD_MS_MAX);

/// The simulation's operator key: an Ed25519 key made from 32 fixed bytes, so every run signs
/// the same credentials (Ed25519 signatures are deterministic).
fn operator_key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| fixed_key(11))
}

/// A key no simulated gateway holds: what an intruder signs with.
fn foreign_key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| fixed_key(12))
}

/// An Ed25519 key made from 32 bytes derived from `salt`.
fn fixed_key(salt: u8) -> SigningKey {
    // PKCS#8 v1 of an Ed25519 key: the fixed prefix, then the 32-byte seed.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(salt)));
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
    match SigningKey::from_pem(&pem) {
        Ok(key) => key,
        Err(e) => panic!("the simulation's fixed key is a valid Ed25519 key: {e}"),
    }
}

/// What a simulated gateway verifies credentials with: the operator key's public half, with
/// `control.auth` required as in production.
pub fn authenticator() -> Arc<Authenticator> {
    let keys = match KeySet::from_pem(operator_key().public_pem()) {
        Ok(keys) => keys,
        Err(e) => panic!("the simulation's public key is readable: {e}"),
    };
    Arc::new(Authenticator::new(auth::Mode::Required, keys, 30_000))
}

/// A credential for `services` (patterns, as `switchyard token issue --services` takes
/// them), valid for the whole of any run.
pub fn credential(subject: &str, services: &[&str]) -> String {
    sign(operator_key(), subject, services, u64::from(u32::MAX))
}

/// The credentials an intruder tries: one for another service, one signed by a key no gateway
/// holds, and one long expired (each for every service but the first).
pub fn intruder_credentials() -> [String; 3] {
    [
        credential("intruder", &["not-ghost"]),
        sign(foreign_key(), "intruder", &["*"], u64::from(u32::MAX)),
        sign(operator_key(), "intruder", &["*"], 1),
    ]
}

/// A valid credential for `services` that does not allow reading the registry (`read` off).
pub fn credential_without_read(subject: &str, services: &[&str]) -> String {
    sign_with(
        operator_key(),
        subject,
        services,
        u64::from(u32::MAX),
        false,
    )
}

fn sign(key: &SigningKey, subject: &str, services: &[&str], exp: u64) -> String {
    sign_with(key, subject, services, exp, true)
}

fn sign_with(key: &SigningKey, subject: &str, services: &[&str], exp: u64, read: bool) -> String {
    let claims = Claims {
        aud: auth::AUDIENCE.to_owned(),
        sub: subject.to_owned(),
        jti: format!("sim-{subject}"),
        iat: 0,
        exp,
        nbf: None,
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        read,
    };
    match auth::issue(key, &claims) {
        Ok(token) => token,
        Err(e) => panic!("the simulation's key signs: {e}"),
    }
}

pub mod broker;
pub mod explore;
pub mod faults;
pub mod hostile;
pub mod progress;
pub mod scenario;
pub mod witness;

/// A turmoil TCP listener as the node's listener seam.
pub struct SimListener(turmoil::net::TcpListener);

impl std::fmt::Debug for SimListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SimListener")
            .field(&self.0.local_addr().ok())
            .finish()
    }
}

impl SimListener {
    pub async fn bind(port: u16) -> io::Result<Self> {
        turmoil::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
            .await
            .map(Self)
    }
}

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // The simulated network reports no transient accept errors worth more than a
                // retry on the next tick.
                Err(error) => {
                    tracing::debug!(%error, "simulated accept failed");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The connector seam over turmoil TCP; host names resolve through turmoil's DNS.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimConnector;

impl Connector for SimConnector {
    fn connect(&self, authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let authority = authority.to_owned();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(authority.as_str()).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }

    /// Turmoil's DNS: the simulated hosts' names, on private 192.168.0.0/16 addresses.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(turmoil::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// Wall time in the simulation: the configured epoch plus simulated elapsed time, shifted by
/// this node's skew (gateways' wall clocks disagree in production too).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimClock {
    pub skew_ms: i64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let ms = turmoil::since_epoch()
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        ms.saturating_add_signed(self.skew_ms)
    }
}

/// The body of a gateway host: the production node, unchanged, over the simulated seams.
pub async fn gateway_host(
    node_id: &str,
    bus: MemoryBus,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        node_id: node_id.to_owned(),
        ..Config::default()
    };
    let seams = Seams {
        connector: Arc::new(SimConnector),
        clock: Arc::new(SimClock::default()),
        bus: Arc::new(bus),
        seed,
    };
    let public = SimListener::bind(PUBLIC_PORT).await?;
    let control = SimListener::bind(CONTROL_PORT).await?;
    switchyard::Node::builder(config, seams)
        .authenticator(authenticator())
        .build()
        .serve(public, control, CancellationToken::new())
        .await?;
    Ok(())
}

/// The body of a service host: the sample service, registered through `gateway` with a 10 s
/// lease.
pub async fn service_host(
    service: &str,
    instance_id: &str,
    host_name: &str,
    gateway: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let sample = Sample::new(service, instance_id);
    let routes = tonic::service::Routes::new(sample.into_server()).into_axum_router();
    serve_instance(routes, service, instance_id, host_name, gateway, 10_000).await
}

/// The body of a witnessed service host: the sample service, recording every request it
/// receives in `log`, registered through `gateway` with a lease of `lease_ms`, and stalled
/// while `stalls` names `instance_id`.
pub async fn witnessed_service_host(
    service: &str,
    instance_id: &str,
    host_name: &str,
    gateway: &str,
    lease_ms: u64,
    log: witness::ServedLog,
    stalls: witness::Stalls,
) -> Result<(), Box<dyn std::error::Error>> {
    let witness = witness::Witness {
        inner: Sample::new(service, instance_id),
        log,
        stalls,
    };
    let routes = tonic::service::Routes::new(witness.into_server()).into_axum_router();
    serve_instance(routes, service, instance_id, host_name, gateway, lease_ms).await
}

async fn serve_instance(
    routes: axum::Router,
    service: &str,
    instance_id: &str,
    host_name: &str,
    gateway: &str,
    lease_ms: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = SimListener::bind(SERVICE_PORT).await?;
    let shutdown = CancellationToken::new();
    let registration = switchyard::forwarding::lazy_channel(
        Arc::new(SimConnector),
        &format!("http://{gateway}:{CONTROL_PORT}"),
        Duration::from_secs(1),
        RESET_STREAM_HOLD,
    )?;
    tokio::spawn(keep_registered(
        RegistrationClient::new(registration),
        RegistrationSpec {
            service: service.to_owned(),
            instance_id: instance_id.to_owned(),
            addr: format!("http://{host_name}:{SERVICE_PORT}"),
            lease_ms,
            token: Some(credential(service, &[service])),
        },
        shutdown.clone(),
    ));
    switchyard::serve::serve(listener, routes, shutdown, Duration::from_secs(1)).await?;
    Ok(())
}

/// `GET http://{host}:{port}{path}` over the simulated network: the status and the body.
pub async fn http_get(host: &str, port: u16, path: &str) -> io::Result<(u16, Bytes)> {
    http_send(host, port, "GET", path, Vec::new()).await
}

/// One HTTP/1.1 request over the simulated network, bounded by 5 s of simulated time. On the
/// control listener it carries an operator credential.
pub async fn http_send(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> io::Result<(u16, Bytes)> {
    let operator = (port == CONTROL_PORT).then(|| credential("sim-client", &["*"]));
    http_send_as(host, port, method, path, body, operator.as_deref()).await
}

/// [`http_send`] with the credential `token` (or none).
pub async fn http_send_as(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> io::Result<(u16, Bytes)> {
    tokio::time::timeout(
        Duration::from_secs(5),
        send_once(host, port, method, path, body, token),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer within 5 s"))?
}

async fn send_once(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> io::Result<(u16, Bytes)> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(io::Error::other)?;
    exchange(host, port, request).await
}

/// Sends one request on a new connection to `host:port` over the simulated network and reads
/// the whole answer: its status and body.
pub async fn exchange(
    host: &str,
    port: u16,
    request: http::Request<Full<Bytes>>,
) -> io::Result<(u16, Bytes)> {
    let stream = turmoil::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(io::Error::other)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    Ok((status, body))
}
