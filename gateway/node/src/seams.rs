//! The seams: the only things that differ between production and the simulation.
//!
//! | seam | production | simulation |
//! | --- | --- | --- |
//! | listen | [`axum::serve::Listener`] over tokio TCP | the same trait over turmoil TCP |
//! | connect, resolve | [`TokioConnector`] | a turmoil connector in `sim/` |
//! | bus | [`crate::bus::MemoryBus`] (Kafka in a later adapter) | a simulated log |
//! | clock | [`SystemClock`] | the simulated clock |
//! | randomness | a seed from config or the OS | the simulation seed |
//!
//! Everything that decides something sits above these traits.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::bus::Bus;

pub use crate::sync::BoxFuture;

/// The most addresses of one host name that are considered per connection.
pub const RESOLVED_ADDRESSES_MAX: usize = 16;

/// A byte stream to an upstream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Opens connections to `host:port` authorities (the instance addresses in the registry).
/// The gateway resolves an instance's host with [`resolve`](Connector::resolve), checks each
/// address against the address policy, and connects only to admitted ones, passing each to
/// [`connect`](Connector::connect) as `ip:port`.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>>;

    /// The addresses `host` resolves to. The default resolves IP addresses only, so a
    /// connector that does not say how it resolves names refuses them rather than asking a
    /// resolver the simulation does not control.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let resolved = host
            .parse::<std::net::IpAddr>()
            .map(|ip| vec![SocketAddr::new(ip, port)])
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("this connector resolves no host names ({host})"),
                )
            });
        Box::pin(async move { resolved })
    }
}

/// Wall time in Unix milliseconds, for HLC stamps and leases. Timers use tokio's clock, which
/// the simulation drives, so only wall time needs a seam.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The production clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // This adapter owns wall time.
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The production connector: tokio TCP with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioConnector;

impl Connector for TokioConnector {
    fn connect(&self, authority: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let authority = authority.to_owned();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }

    /// The system resolver, through tokio.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .take(RESOLVED_ADDRESSES_MAX)
                .collect())
        })
    }
}

/// A seed from the operating system, for production nodes that were not given one.
pub fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS on first use in each process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

/// Everything a node takes from its environment.
#[derive(Clone)]
pub struct Seams {
    pub connector: Arc<dyn Connector>,
    pub clock: Arc<dyn Clock>,
    pub bus: Arc<dyn Bus>,
    pub seed: u64,
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// The client address of an accepted connection, as handlers see it (`serve.rs` puts it in
/// each request's extensions as `ConnectInfo<ClientAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// A bounded exponential backoff for loops that retry an outside dependency.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            next: base,
            max,
            base,
        }
    }

    /// The delay to wait now; each call doubles the next one up to the bound.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}
