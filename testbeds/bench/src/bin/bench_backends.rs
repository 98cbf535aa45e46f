//! The backends the proxies under benchmark forward to, in one process:
//!
//! * `--grpc ADDR`: the typed gRPC Echo service (behind Envoy's gRPC-JSON transcoder);
//! * `--http ADDR`: `POST /echo` over HTTP/1.1 (behind nginx and Envoy as plain proxies).
//!
//! `bench-backends descriptor FILE` writes the Echo descriptor set Envoy loads, and exits.
//! Prints one line `backends grpc=ADDR http=ADDR` once listening; stops on SIGTERM or Ctrl-C.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use switchyard_bench::{ECHO_DESCRIPTOR_SET, TypedEcho, echo, http_echo_router};

#[derive(Debug, Parser)]
#[command(about = "Echo backends for the proxy benchmark")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where to serve the typed gRPC Echo service.
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc: SocketAddr,
    /// Where to serve `POST /echo` over HTTP/1.1.
    #[arg(long, default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// Runtime worker threads (0: one per available core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the Echo service's descriptor set (with imports and options) to FILE.
    Descriptor { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Descriptor { file }) = &args.command {
        return std::fs::write(file, ECHO_DESCRIPTOR_SET)
            .with_context(|| format!("cannot write {}", file.display()));
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        builder.worker_threads(args.threads);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let grpc = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc))?;
    let http = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {}", args.http))?;
    println!(
        "backends grpc={} http={}",
        grpc.local_addr()?,
        http.local_addr()?
    );
    let grpc_server = tonic::transport::Server::builder()
        .add_service(echo::echo_server::EchoServer::new(TypedEcho))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            shutdown_signal(),
        );
    let http = http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_server = axum::serve(http, http_echo_router())
        .with_graceful_shutdown(shutdown_signal())
        .into_future();
    let (grpc_result, http_result) = tokio::join!(grpc_server, http_server);
    grpc_result.context("gRPC server failed")?;
    http_result.context("HTTP server failed")?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
