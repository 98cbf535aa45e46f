//! Serving an axum router (REST and gRPC alike, HTTP/1.1 and cleartext HTTP/2) on a listener
//! handed in from outside, until shutdown, then draining in-flight requests for a bounded time.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use tokio_util::sync::CancellationToken;

use crate::seams::{ClientAddr, WithClientAddr};

/// The shutdown signal, in every request's extensions. Draining waits for requests, not for
/// connections a handler has taken over (WebSockets), so such a handler ends its connection
/// when this is cancelled.
#[derive(Debug, Clone)]
pub struct Shutdown(pub CancellationToken);

/// Serves `router` on `listener`. On `shutdown` it stops accepting, lets open requests finish
/// for up to `drain`, then returns.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let server = axum::serve(
        WithClientAddr(listener),
        router
            .layer(axum::Extension(Shutdown(shutdown.clone())))
            .into_make_service_with_connect_info::<ClientAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let drain_expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = server.into_future() => result,
        () = drain_expired => {
            tracing::warn!(drain_ms = drain.as_millis() as u64, "drain timeout: closing connections with requests still open");
            Ok(())
        }
    }
}
