//! The address policy: which instance addresses the gateway registers and connects to.
//!
//! An instance address that points back into the gateway's own host or network plumbing is
//! refused: loopback, link-local (the cloud metadata address 169.254.169.254 among them),
//! unspecified, multicast, broadcast, and the gateway's own listeners. An operator allow-list
//! of CIDRs, each optionally with a port or a port range, admits what it names. An IPv4
//! address carried in IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address it carries.
//!
//! The policy runs twice: on a registration's address, and on every address a host name
//! resolves to when a connection is made (so a name that resolves elsewhere later, DNS
//! rebinding, gains nothing). A gateway's own listeners are admitted only by a rule that names
//! their port, so allowing loopback for tests does not let a registration loop back into the
//! gateway itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::GatewayError;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Forbidden {
    Loopback = 0,
    LinkLocal = 1,
    Unspecified = 2,
    Multicast = 3,
    Broadcast = 4,
    OwnListener = 5,
}

impl Forbidden {
    pub const ALL: [Forbidden; 6] = [
        Self::Loopback,
        Self::LinkLocal,
        Self::Unspecified,
        Self::Multicast,
        Self::Broadcast,
        Self::OwnListener,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::LinkLocal => "link_local",
            Self::Unspecified => "unspecified",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::OwnListener => "own_listener",
        }
    }

    /// What the address is, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::LinkLocal => "a link-local address (the cloud metadata address is one)",
            Self::Unspecified => "an unspecified address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::OwnListener => "one of this gateway's own listeners",
        }
    }
}

/// One entry of the allow-list: a network, and the ports it admits (all, when none are
/// named).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowRule {
    net: IpAddr,
    prefix: u8,
    ports: Option<(u16, u16)>,
}

impl AllowRule {
    /// Parses `CIDR`, `CIDR:PORTS`, or for IPv6 with ports `[CIDR]:PORTS`, where CIDR is an
    /// address with an optional `/prefix` and PORTS is `N` or `N-M`: `127.0.0.0/8`,
    /// `10.0.0.5:8080`, `10.1.0.0/16:50000-50100`, `fd00::/8`, `[::1]:9000`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} {why}");
        let (cidr, ports) = if let Some(rest) = text.strip_prefix('[') {
            let (cidr, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("opens a bracket it does not close"))?;
            match after {
                "" => (cidr, None),
                _ => match after.strip_prefix(':') {
                    Some(ports) => (cidr, Some(ports)),
                    None => return Err(bad("has text after ']' that is not :PORTS")),
                },
            }
        } else if text.matches(':').count() == 1 {
            let (cidr, ports) = text.split_once(':').unwrap_or((text, ""));
            (cidr, Some(ports))
        } else {
            (text, None)
        };
        let (ip, prefix) = match cidr.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (cidr, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| {
            bad("is not an IP address or CIDR (write IPv6 with ports as [CIDR]:PORTS)")
        })?;
        if let IpAddr::V6(v6) = net
            && v6.to_ipv4_mapped().is_some()
        {
            return Err(bad("is an IPv4-mapped IPv6 address; write the IPv4 form"));
        }
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| bad(&format!("has a prefix length outside 0..={bits}")))?,
        };
        if mask(net, prefix) != net {
            return Err(bad(&format!(
                "has bits set past its /{prefix} prefix; write the network address"
            )));
        }
        let ports = ports
            .map(|p| parse_ports(p).map_err(|why| bad(&why)))
            .transpose()?;
        Ok(Self { net, prefix, ports })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.net
            }
            _ => false,
        }
    }

    fn admits_port(&self, port: u16) -> bool {
        self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
    }
}

fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("has a port {p:?} outside 1..=65535"))
    };
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => (port(text)?, port(text)?),
    };
    if lo > hi {
        return Err(format!("has a port range {lo}-{hi} that runs backwards"));
    }
    Ok((lo, hi))
}

/// `ip` with every bit past `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; any other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The class of address the policy refuses, if `ip` is in one.
pub fn forbidden_class(ip: IpAddr) -> Option<Forbidden> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some(Forbidden::Loopback)
            } else if v4.is_link_local() {
                Some(Forbidden::LinkLocal)
            } else if v4.octets()[0] == 0 {
                // 0.0.0.0/8, "this host on this network": Linux connects 0.0.0.0 to itself.
                Some(Forbidden::Unspecified)
            } else if v4.is_multicast() {
                Some(Forbidden::Multicast)
            } else if v4.is_broadcast() {
                Some(Forbidden::Broadcast)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some(Forbidden::Loopback)
            } else if v6.is_unicast_link_local() {
                Some(Forbidden::LinkLocal)
            } else if v6.is_unspecified() {
                Some(Forbidden::Unspecified)
            } else if v6.is_multicast() {
                Some(Forbidden::Multicast)
            } else {
                None
            }
        }
    }
}

/// The policy: the allow-list and the gateway's own listener addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<AllowRule>,
    own: Vec<SocketAddr>,
}

impl AddressPolicy {
    pub fn new(allow: Vec<AllowRule>) -> Self {
        Self {
            allow,
            own: Vec::new(),
        }
    }

    /// The same policy, also refusing the gateway's own listeners at `own`.
    pub fn with_own_listeners(mut self, own: &[SocketAddr]) -> Self {
        self.own = own.to_vec();
        self
    }

    /// Whether `addr` is one of this gateway's own listeners: the same port, and the
    /// listener's address, or, for a listener on every interface, a loopback or unspecified
    /// address (the host's other addresses are not known here; the loop mark catches those).
    fn is_own(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.own.iter().any(|own| {
            let own_ip = canonical(own.ip());
            own.port() == addr.port()
                && (own_ip == ip
                    || (own_ip.is_unspecified()
                        && matches!(
                            forbidden_class(ip),
                            Some(Forbidden::Loopback | Forbidden::Unspecified)
                        )))
        })
    }

    /// Admits `addr` or says why not. An address in a refused class is admitted by any rule
    /// that contains it; one of the gateway's own listeners only by a rule that names ports.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Forbidden> {
        let ip = canonical(addr.ip());
        let admitted_by = |explicit_port: bool| {
            self.allow.iter().any(|rule| {
                rule.contains(ip)
                    && rule.admits_port(addr.port())
                    && (!explicit_port || rule.ports.is_some())
            })
        };
        if self.is_own(addr) && !admitted_by(true) {
            return Err(Forbidden::OwnListener);
        }
        match forbidden_class(ip) {
            Some(class) if !admitted_by(false) => Err(class),
            _ => Ok(()),
        }
    }

    /// Checks a registration's normalised address (`http://host:port`). An IP address is
    /// checked now; `localhost` and names under `.localhost` are loopback by definition
    /// (RFC 6761); any other name is accepted here and checked at every connection.
    pub fn check_registration(&self, addr: &str) -> Result<(), Forbidden> {
        let Some((host, port)) = split_authority(addr) else {
            return Ok(());
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check(SocketAddr::new(ip, port));
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return self.check(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
        Ok(())
    }
}

/// The refusal of a registration at `addr` for `class`: `invalid_argument` naming the reason
/// and the key that would admit it.
pub fn refusal(addr: &str, class: Forbidden) -> GatewayError {
    GatewayError::InvalidArgument {
        field: "addr",
        reason: format!(
            "{addr:?} is {}; the address policy (upstream.allow_addresses) does not admit it",
            class.describe()
        ),
    }
}

/// The host (brackets removed) and port of `http://host:port`, `https://host:port` or
/// `host:port`.
pub fn split_authority(addr: &str) -> Option<(&str, u16)> {
    let authority = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let (host, port) = authority.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests;
