//! `switchyard demo`: one gateway with the in-memory bus and two instances of the Rust sample
//! service, registered through the gateway's control listener exactly as a real service
//! registers. It prints what to try, and stops everything on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sample_service::{RegistrationSpec, Sample, keep_registered};
use switchyard_core::registry::Lookup;
use switchyard_proto::registry::registration_client::RegistrationClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use switchyard::auth::{self, Authenticator, Claims, KeySet, SigningKey};
use switchyard::bus::MemoryBus;
use switchyard::config::{Config, JwtProvider, JwtRoute};
use switchyard::forwarding::lazy_channel;
use switchyard::node::{Node, PublicListeners};
use switchyard::seams::{Clock as _, Seams, SystemClock, TokioConnector, os_seed};
use switchyard::serve::{serve, with_nodelay};

/// The service name the demo registers.
pub const DEMO_SERVICE: &str = "sample";

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for the {what} listener: {e} (choose another address with {flag})"),
        )
    })
}

/// Runs the demo until `shutdown`. The demo turns GraphQL introspection and the GraphiQL
/// page on, which production configuration leaves off, and admits loopback instance
/// addresses (its sample instances listen on 127.0.0.1), which the address policy refuses by
/// default; it says so in its banner.
pub async fn run(
    mut config: Config,
    instances: usize,
    shutdown: CancellationToken,
) -> io::Result<()> {
    config.graphql.introspection = true;
    config.graphql.graphiql = true;
    config
        .upstream
        .allow_addresses
        .push(DEMO_ALLOWED_ADDRESSES.to_owned());
    // Credentials stay on: the demo makes a key of its own, gives the gateway its public
    // half and prints an operator credential signed with it (valid for a day).
    let (auth, token) = demo_credentials(&config)?;
    // The public front checks tokens too: a provider of the demo's own, its JWKS in a file.
    let public_jwt = if config.jwt.providers.is_empty() {
        Some(demo_public_jwt(&mut config)?)
    } else {
        None
    };
    let public = PublicListeners::bind(&config).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {} for the public listener: {e} (choose another address with --public-listen)", config.public.listen),
        )
    })?;
    let control = bind(config.control.listen, "control", "--control-listen").await?;
    let (public_addr, control_addr) = (public.local_addr()?, control.local_addr()?);
    let seams = Seams {
        connector: Arc::new(TokioConnector),
        clock: Arc::new(SystemClock),
        bus: Arc::new(MemoryBus::new()),
        seed: config.seed.unwrap_or_else(os_seed),
    };
    let drain = Duration::from_millis(config.shutdown.drain_timeout_ms);
    let reset_stream_hold = Duration::from_millis(config.upstream.reset_stream_hold_ms);
    let node = Node::builder(config, seams).authenticator(auth).build();
    let gateway = tokio::spawn(node.clone().serve_public(
        public.map(with_nodelay),
        with_nodelay(control),
        shutdown.clone(),
    ));

    let registration = lazy_channel(
        Arc::new(TokioConnector),
        &format!("http://{control_addr}"),
        Duration::from_secs(1),
        reset_stream_hold,
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let mut services = Vec::new();
    for i in 1..=instances {
        let listener = bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            "sample service",
            "--instances",
        )
        .await?;
        let addr = listener.local_addr()?;
        let instance_id = format!("demo-{i}");
        let routes =
            tonic::service::Routes::new(Sample::new(DEMO_SERVICE, &instance_id).into_server())
                .into_axum_router();
        services.push(tokio::spawn(serve(
            with_nodelay(listener),
            routes,
            shutdown.clone(),
            drain,
        )));
        tokio::spawn(keep_registered(
            RegistrationClient::new(registration.clone()),
            RegistrationSpec {
                service: DEMO_SERVICE.to_owned(),
                instance_id,
                addr: format!("http://{addr}"),
                lease_ms: 10_000,
                token: Some(token.clone()),
            },
            shutdown.clone(),
        ));
    }

    if wait_for_instances(&node, instances, &shutdown).await {
        print_banner(&node, public_addr, control_addr, instances, &token);
        if let Some(public_jwt) = &public_jwt {
            print_public_jwt(public_addr, public_jwt);
        }
    }
    let served = gateway.await.map_err(io::Error::other)?;
    for service in services {
        let _ = service.await;
    }
    served
}

/// Waits until the registry lists `n` live demo instances (bounded: 10 s).
async fn wait_for_instances(node: &Node, n: usize, shutdown: &CancellationToken) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let live = match node.registry().lookup(DEMO_SERVICE, node.now_ms()) {
            Lookup::Live(live) => live.len(),
            _ => 0,
        };
        if live >= n {
            return true;
        }
        if shutdown.is_cancelled() || tokio::time::Instant::now() >= deadline {
            tracing::warn!(live, expected = n, "demo instances did not all register");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the demo's address policy admits beyond the default: its instances' loopback.
const DEMO_ALLOWED_ADDRESSES: &str = "127.0.0.0/8";

/// A fresh Ed25519 key for this run, the gateway's authenticator holding its public half, and
/// an operator credential (every service, reads) signed with it.
fn demo_credentials(config: &Config) -> io::Result<(Arc<Authenticator>, String)> {
    let failed = |e: auth::KeyError| io::Error::other(e.to_string());
    let (private, public) = auth::generate_key().map_err(failed)?;
    let key = SigningKey::from_pem(&private).map_err(failed)?;
    let now_s = SystemClock.now_ms() / 1_000;
    let claims = Claims {
        aud: auth::AUDIENCE.to_owned(),
        sub: "demo-operator".to_owned(),
        jti: format!("demo-{now_s}"),
        iat: now_s,
        exp: now_s + 86_400,
        nbf: None,
        services: vec!["*".to_owned()],
        read: true,
    };
    let token = auth::issue(&key, &claims).map_err(failed)?;
    let keys = KeySet::from_pem(&public).map_err(failed)?;
    let auth = Authenticator::new(auth::Mode::Required, keys, config.control.jwt_leeway_ms);
    Ok((Arc::new(auth), token))
}

/// The demo's public provider: its issuer, audience and the files it made.
/// The demo's public provider: the directory of its key and JWKS, removed when the demo
/// ends, and a token it signed.
struct PublicJwt {
    dir: std::path::PathBuf,
    token: String,
}

impl Drop for PublicJwt {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the demo's key directory");
        }
    }
}

const DEMO_ISSUER: &str = "switchyard-demo";
const DEMO_AUDIENCE: &str = "sample";

/// Makes a key for the demo's public provider, writes its JWKS (and the private key, so
/// `switchyard token issue-public` can sign more tokens) to a directory of this run, and
/// protects the sample service with it: `/hello` stays public, everything else needs a token
/// whose `sub` and `scope` reach the service as `x-auth-subject` and `x-auth-scope`.
fn demo_public_jwt(config: &mut Config) -> io::Result<PublicJwt> {
    let failed = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let (private, _) = auth::generate_key().map_err(|e| failed(&e))?;
    let key = SigningKey::from_pem(&private).map_err(|e| failed(&e))?;
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key_file = dir.join("public-jwt.key");
    let jwks_file = dir.join("jwks.json");
    write_private(&key_file, private.as_bytes())?;
    let jwks = crate::token::jwks(std::slice::from_ref(&key)).map_err(|e| failed(&e))?;
    std::fs::write(
        &jwks_file,
        serde_json::to_vec_pretty(&jwks).map_err(|e| failed(&e))?,
    )?;
    let now_s = SystemClock.now_ms() / 1_000;
    let claims = crate::token::public_claims(
        DEMO_ISSUER,
        DEMO_AUDIENCE,
        "demo-user",
        "sample:read",
        now_s,
        86_400,
    );
    let token = auth::sign_claims(&key, &claims).map_err(|e| failed(&e))?;
    config.jwt.providers.push(JwtProvider {
        name: "demo".to_owned(),
        issuer: DEMO_ISSUER.to_owned(),
        audiences: vec![DEMO_AUDIENCE.to_owned()],
        algorithms: vec!["EdDSA".to_owned()],
        jwks_file,
        ..JwtProvider::default()
    });
    config.jwt.forward_claims = [
        ("sub".to_owned(), "x-auth-subject".to_owned()),
        ("scope".to_owned(), "x-auth-scope".to_owned()),
    ]
    .into();
    let route = JwtRoute {
        service: DEMO_SERVICE.to_owned(),
        ..JwtRoute::default()
    };
    config.jwt.routes = vec![
        route.clone(),
        JwtRoute {
            path_prefix: "/hello".to_owned(),
            public: true,
            ..route
        },
    ];
    Ok(PublicJwt { dir, token })
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

fn print_public_jwt(public: SocketAddr, jwt: &PublicJwt) {
    let dir = jwt.dir.display();
    println!(
        "The public front checks JWTs for \"{DEMO_SERVICE}\" (issuer {DEMO_ISSUER}, audience {DEMO_AUDIENCE}, keys in {dir}/jwks.json); /{DEMO_SERVICE}/hello stays public.\
         \nA token for demo-user (scope sample:read; valid a day):\
         \n  PUBLIC_TOKEN={token}\
         \n  curl -s http://{public}/{DEMO_SERVICE}/echo -H \"authorization: Bearer $PUBLIC_TOKEN\"    (the echo shows x-auth-subject and x-auth-scope)\
         \n  curl -s http://{public}/{DEMO_SERVICE}/echo    (no token: 401 unauthenticated)\
         \nMore tokens, signed with the demo provider's key:\
         \n  switchyard token issue-public --key {dir}/public-jwt.key --issuer {DEMO_ISSUER} --audience {DEMO_AUDIENCE} --subject you --scope sample:read\n",
        token = jwt.token,
    );
}

fn print_banner(
    node: &Node,
    public: SocketAddr,
    control: SocketAddr,
    instances: usize,
    token: &str,
) {
    println!(
        "\nSwitchyard demo: gateway {id} with the in-memory bus and {instances} instances of the Rust sample service \"{DEMO_SERVICE}\".\n\
         \n  public   http://{public}    REST forwarding: /{{service}}/{{path}}, GraphQL: /graphql (GraphiQL in a browser), /healthz, /readyz\
         \n  control  http://{control}    registration: /v1/services (REST), gRPC switchyard.registry.v1.Registration, GraphQL /graphql\
         \n  console  http://{control}/console/    the web console: cluster, services live, try it, traffic (paste the credential below)\n\
         \nThe demo admits loopback instance addresses ({DEMO_ALLOWED_ADDRESSES}, upstream.allow_addresses), which a gateway refuses by default.\n\
         \nTry:\
         \n  curl -s http://{public}/{DEMO_SERVICE}/hello\
         \n  curl -s http://{public}/graphql -H 'content-type: application/json' -d '{{\"query\":\"{{ a: call(service: \\\"{DEMO_SERVICE}\\\", path: \\\"/hello\\\") {{ status json }} services {{ name instances {{ instanceId state }} }} }}\"}}'\
         \n  curl -s http://{public}/nosuch/thing\
         \n\nThe control listener asks for a credential; this run's operator credential (every service, reads; valid a day):\
         \n  TOKEN={token}\
         \n  curl -s http://{control}/v1/services -H \"authorization: Bearer $TOKEN\"\
         \n  curl -s -X PUT http://{control}/v1/services/my-service/instances/i-1 -H \"authorization: Bearer $TOKEN\" -d '{{\"addr\":\"127.0.0.1:50051\"}}'\
         \n  curl -s http://{control}/v1/services    (no credential: 401 unauthenticated)\n\
         \nCtrl-C stops the gateway and the sample instances (they deregister first).\n",
        id = node.id(),
    );
}
