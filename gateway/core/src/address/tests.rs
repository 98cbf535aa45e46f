use proptest::prelude::*;

use super::*;

fn sa(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn policy(rules: &[&str]) -> AddressPolicy {
    AddressPolicy::new(rules.iter().map(|r| AllowRule::parse(r).unwrap()).collect())
}

#[test]
fn every_refused_class_is_refused_by_default() {
    let p = AddressPolicy::default();
    for (addr, class) in [
        ("127.0.0.1:80", Forbidden::Loopback),
        ("127.255.0.9:80", Forbidden::Loopback),
        ("[::1]:80", Forbidden::Loopback),
        ("169.254.169.254:80", Forbidden::LinkLocal),
        ("169.254.0.1:80", Forbidden::LinkLocal),
        ("[fe80::1]:80", Forbidden::LinkLocal),
        ("[febf::1]:80", Forbidden::LinkLocal),
        ("0.0.0.0:80", Forbidden::Unspecified),
        ("0.1.2.3:80", Forbidden::Unspecified),
        ("[::]:80", Forbidden::Unspecified),
        ("224.0.0.1:80", Forbidden::Multicast),
        ("239.255.255.250:80", Forbidden::Multicast),
        ("[ff02::1]:80", Forbidden::Multicast),
        ("255.255.255.255:80", Forbidden::Broadcast),
        // IPv4 carried in IPv6 is judged as IPv4.
        ("[::ffff:127.0.0.1]:80", Forbidden::Loopback),
        ("[::ffff:169.254.169.254]:80", Forbidden::LinkLocal),
    ] {
        assert_eq!(p.check(sa(addr)), Err(class), "{addr}");
    }
    for ok in [
        "10.0.0.1:80",
        "192.168.0.3:9000",
        "172.16.0.1:1",
        "8.8.8.8:53",
        "[2001:db8::1]:80",
        "[fd00::1]:80",
        "[fec0::1]:80",
        "[::ffff:10.0.0.1]:80",
    ] {
        assert_eq!(p.check(sa(ok)), Ok(()), "{ok}");
    }
}

#[test]
fn the_allow_list_admits_what_it_names_and_nothing_else() {
    let p = policy(&["127.0.0.0/8", "169.254.169.254:8080-8081", "[::1]:9000"]);
    assert_eq!(p.check(sa("127.0.0.1:1")), Ok(()));
    assert_eq!(p.check(sa("[::ffff:127.0.0.2]:1")), Ok(()));
    assert_eq!(p.check(sa("169.254.169.254:8080")), Ok(()));
    assert_eq!(p.check(sa("169.254.169.254:8081")), Ok(()));
    assert_eq!(p.check(sa("169.254.169.254:80")), Err(Forbidden::LinkLocal));
    assert_eq!(
        p.check(sa("169.254.169.253:8080")),
        Err(Forbidden::LinkLocal)
    );
    assert_eq!(p.check(sa("[::1]:9000")), Ok(()));
    assert_eq!(p.check(sa("[::1]:9001")), Err(Forbidden::Loopback));
    // A v4 rule says nothing of v6 and the other way round.
    assert_eq!(
        policy(&["::/0"]).check(sa("127.0.0.1:1")),
        Err(Forbidden::Loopback)
    );
}

#[test]
fn own_listeners_need_a_rule_that_names_their_port() {
    let own = [
        sa("127.0.0.1:8080"),
        sa("0.0.0.0:8081"),
        sa("10.0.0.5:8082"),
    ];
    let loose = policy(&["127.0.0.0/8", "10.0.0.0/8"]).with_own_listeners(&own);
    assert_eq!(
        loose.check(sa("127.0.0.1:8080")),
        Err(Forbidden::OwnListener)
    );
    assert_eq!(
        loose.check(sa("127.0.0.1:8081")),
        Err(Forbidden::OwnListener)
    );
    assert_eq!(
        loose.check(sa("[::ffff:127.0.0.1]:8081")),
        Err(Forbidden::OwnListener)
    );
    assert_eq!(
        loose.check(sa("10.0.0.5:8082")),
        Err(Forbidden::OwnListener)
    );
    // Another port of the same host, or another host's port, is not the gateway's.
    assert_eq!(loose.check(sa("127.0.0.1:8079")), Ok(()));
    assert_eq!(loose.check(sa("10.0.0.6:8082")), Ok(()));
    // Without an allow rule, an own loopback listener is refused as the listener it is.
    let strict = AddressPolicy::default().with_own_listeners(&own);
    assert_eq!(
        strict.check(sa("127.0.0.1:8080")),
        Err(Forbidden::OwnListener)
    );
    let explicit = policy(&["127.0.0.1:8080"]).with_own_listeners(&own);
    assert_eq!(explicit.check(sa("127.0.0.1:8080")), Ok(()));
    assert_eq!(
        explicit.check(sa("127.0.0.1:8081")),
        Err(Forbidden::OwnListener)
    );
}

#[test]
fn rules_parse_or_say_what_is_wrong() {
    for ok in [
        "127.0.0.0/8",
        "127.0.0.1",
        "10.0.0.5:8080",
        "10.1.0.0/16:50000-50100",
        "::1",
        "fe80::/10",
        "[::1]:9000",
        "[fd00::/8]:1-65535",
        "0.0.0.0/0",
    ] {
        assert!(AllowRule::parse(ok).is_ok(), "{ok}");
    }
    for (bad, says) in [
        ("", "not an IP"),
        ("localhost", "not an IP"),
        ("10.0.0.1/8", "past its /8"),
        ("10.0.0.0/33", "prefix length"),
        ("10.0.0.0/x", "prefix length"),
        ("10.0.0.1:0", "outside 1..=65535"),
        ("10.0.0.1:70000", "outside 1..=65535"),
        ("10.0.0.1:9-8", "backwards"),
        ("10.0.0.1:", "outside"),
        ("[::1", "does not close"),
        ("[::1]9000", "not :PORTS"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
    ] {
        let err = AllowRule::parse(bad).unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn registrations_are_checked_by_ip_and_by_the_names_that_must_be_loopback() {
    let p = AddressPolicy::default();
    for bad in [
        "http://127.0.0.1:50051",
        "http://[::1]:1",
        "http://169.254.169.254:80",
        "http://localhost:80",
        "http://LocalHost.:80",
        "http://svc.localhost:80",
    ] {
        let class = p.check_registration(bad).unwrap_err();
        let err = refusal(bad, class);
        assert_eq!(err.code(), "invalid_argument", "{bad}");
        assert!(
            err.to_string().contains("upstream.allow_addresses"),
            "{err}"
        );
    }
    let addr = "http://169.254.169.254:80";
    let err = refusal(addr, p.check_registration(addr).unwrap_err());
    assert!(err.to_string().contains("link-local"), "{err}");
    for ok in [
        "http://10.0.0.1:80",
        "http://orders.internal:80",
        "http://localhost.example:80",
    ] {
        assert!(p.check_registration(ok).is_ok(), "{ok}");
    }
    assert!(
        policy(&["127.0.0.0/8"])
            .check_registration("http://localhost:80")
            .is_ok()
    );
}

proptest! {
    #[test]
    fn an_ipv4_mapped_address_is_judged_as_its_ipv4(bits in any::<u32>(), port in 1u16..) {
        let v4 = Ipv4Addr::from(bits);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        let p = policy(&["10.0.0.0/8", "127.0.0.1:5000-6000"])
            .with_own_listeners(&[sa("0.0.0.0:7000")]);
        prop_assert_eq!(
            p.check(SocketAddr::new(mapped, port)),
            p.check(SocketAddr::new(IpAddr::V4(v4), port))
        );
    }

    #[test]
    fn a_rule_admits_exactly_the_addresses_under_its_prefix(bits in any::<u32>(), net in any::<u32>(), prefix in 0u8..=32) {
        let net = mask(IpAddr::V4(Ipv4Addr::from(net)), prefix);
        let rule = AllowRule::parse(&format!("{net}/{prefix}")).unwrap();
        let ip = Ipv4Addr::from(bits);
        let shift = 32 - u32::from(prefix);
        let IpAddr::V4(net4) = net else { unreachable!() };
        let same = u64::from(bits) >> shift == u64::from(u32::from(net4)) >> shift;
        prop_assert_eq!(rule.contains(IpAddr::V4(ip)), same);
    }
}
