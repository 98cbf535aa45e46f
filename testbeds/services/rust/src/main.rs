//! The sample service as a process: serves `ForwardingService` on a TCP port and keeps itself
//! registered with a gateway until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sample_service::{RegistrationSpec, Sample, keep_registered};
use switchyard_proto::registry::registration_client::RegistrationClient;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(about = "A sample Switchyard service (Rust)")]
struct Args {
    /// The gateway's control address, where instances register.
    #[arg(long, env = "GATEWAY_CONTROL", default_value = "http://127.0.0.1:8081")]
    gateway: String,
    /// Service name to register under.
    #[arg(long, default_value = "sample")]
    service: String,
    /// Instance id; defaults to `rust-<port>`.
    #[arg(long)]
    instance_id: Option<String>,
    /// Where to serve ForwardingService; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The address gateways should use; defaults to the bound listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Lease requested from the gateway, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// The control credential the gateway asks for (`switchyard token issue`); leave unset
    /// for a gateway whose `control.auth` is "none".
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve ForwardingService over TLS with this PEM certificate chain (with --tls-key); the
    /// advertised address becomes `https://...`. The same certificate is the client
    /// certificate presented to an `https://` gateway.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (the gateways' certificates).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// The CA that signed an `https://` gateway's control certificate.
    #[arg(long)]
    gateway_ca: Option<PathBuf>,
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let instance_id = args
        .instance_id
        .unwrap_or_else(|| format!("rust-{}", local.port()));
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = args
        .advertise
        .unwrap_or_else(|| format!("{scheme}://{local}"));
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        )),
        _ => None,
    };
    // One line on stdout that scripts can wait for.
    println!("listening on {local} as {}/{instance_id}", args.service);

    let shutdown = CancellationToken::new();
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = &identity {
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity.clone());
        if let Some(ca) = &args.tls_client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(tls).context("TLS configuration")?;
    }
    let server = builder
        .add_service(Sample::new(&args.service, &instance_id).into_server())
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, the tail of a large response can wait for the peer's
            // delayed ACK (tens of milliseconds).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    let mut endpoint = tonic::transport::Endpoint::from_shared(args.gateway.clone())
        .with_context(|| format!("invalid gateway address {:?}", args.gateway))?;
    if args.gateway.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &args.gateway_ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        endpoint = endpoint.tls_config(tls).context("TLS to the gateway")?;
    }
    let channel = endpoint.connect_lazy();
    let registration = tokio::spawn(keep_registered(
        RegistrationClient::new(channel),
        RegistrationSpec {
            service: args.service,
            instance_id,
            addr,
            lease_ms: args.lease_ms,
            token: args.token,
        },
        shutdown.clone(),
    ));
    let signals = {
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            shutdown.cancel();
        }
    };
    let (served, ()) = tokio::join!(server, signals);
    served.context("server failed")?;
    registration.await.context("registration task failed")?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
