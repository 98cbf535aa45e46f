//! The address policy at work: the core's [`AddressPolicy`] from the config, told the node's
//! own listener addresses once they are known, and the connect path that resolves an
//! instance's host through the connector seam and dials only the addresses the policy
//! admits. Every connection to an instance is made here, so a host name that resolved to an
//! admitted address at registration and to a refused one later (DNS rebinding) is refused.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use switchyard_core::address::{self, AddressPolicy, AllowRule, Forbidden};

use crate::config::UpstreamConfig;
use crate::seams::{Connector, Io, RESOLVED_ADDRESSES_MAX};
use crate::sync::{read, write};

/// A connection the address policy refused: every address the host resolved to is one the
/// policy refuses. Carried as the source of an `io::Error` of kind `PermissionDenied`.
#[derive(Debug, thiserror::Error)]
#[error("{authority} resolves only to addresses the address policy refuses ({})", .class.label())]
pub struct AddressRefused {
    pub authority: String,
    /// The reason for the first refused address.
    pub class: Forbidden,
}

/// The address policy of one node.
#[derive(Debug)]
pub struct Addresses {
    policy: RwLock<Arc<AddressPolicy>>,
}

impl Addresses {
    /// The policy of `upstream.allow_addresses` (validated with the config; an entry that
    /// does not parse admits nothing).
    pub fn new(config: &UpstreamConfig) -> Self {
        let rules = config
            .allow_addresses
            .iter()
            .filter_map(|r| AllowRule::parse(r).ok())
            .collect();
        Self {
            policy: RwLock::new(Arc::new(AddressPolicy::new(rules))),
        }
    }

    /// Refuses the node's own listeners from now on (called once they are bound).
    pub fn set_own_listeners(&self, own: &[SocketAddr]) {
        let mut policy = write(&self.policy);
        *policy = Arc::new((**policy).clone().with_own_listeners(own));
    }

    pub fn policy(&self) -> Arc<AddressPolicy> {
        read(&self.policy).clone()
    }

    /// Connects to `authority` (`host:port`): resolves the host through `connector`, keeps
    /// the first [`RESOLVED_ADDRESSES_MAX`] addresses, drops those the policy refuses (each
    /// reported to `on_refused`), and tries the rest in order. When the policy refused every
    /// address, the error is `PermissionDenied` with an [`AddressRefused`] inside.
    pub async fn connect(
        &self,
        connector: &dyn Connector,
        authority: &str,
        on_refused: &(dyn Fn(Forbidden) + Send + Sync),
    ) -> io::Result<Box<dyn Io>> {
        let (host, port) = address::split_authority(authority).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{authority:?} is not host:port"),
            )
        })?;
        let resolved = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => connector.resolve(host, port).await?,
        };
        let policy = self.policy();
        let mut refused = None;
        let mut last_error = None;
        for addr in resolved.into_iter().take(RESOLVED_ADDRESSES_MAX) {
            if let Err(class) = policy.check(addr) {
                tracing::warn!(%authority, %addr, reason = class.label(), "connection refused by the address policy");
                on_refused(class);
                refused.get_or_insert(class);
                continue;
            }
            match connector.connect(&addr.to_string()).await {
                Ok(io) => return Ok(io),
                Err(error) => last_error = Some(error),
            }
        }
        Err(match (last_error, refused) {
            (Some(error), _) => error,
            (None, Some(class)) => io::Error::new(
                io::ErrorKind::PermissionDenied,
                AddressRefused {
                    authority: authority.to_owned(),
                    class,
                },
            ),
            (None, None) => io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolved to no address"),
            ),
        })
    }
}
