//! Validating a registration before it enters the registry: the names, the metadata, the
//! address (normalised to `http://host:port`) and the lease (bounded by configuration). Every
//! front (REST, gRPC, GraphQL) hands the same [`Registration`] here, so they accept and refuse
//! exactly the same requests with the same errors.

use std::collections::BTreeMap;

use crate::{GatewayError, InstanceKey, names};

/// A registration as a front receives it, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    pub service: String,
    pub instance_id: String,
    /// `host:port` or `http://host:port`, as the instance sent it.
    pub addr: String,
    pub metadata: BTreeMap<String, String>,
    /// The lease the instance asks for; 0 asks for the configured default.
    pub lease_ms: u64,
}

/// The leases a gateway grants: the default for a registration that names none, and the
/// range a requested lease must fall in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseBounds {
    pub default_ms: u64,
    pub min_ms: u64,
    pub max_ms: u64,
}

impl LeaseBounds {
    /// The lease granted for a request of `requested_ms` (0: the default). A lease outside
    /// `min_ms..=max_ms` is refused rather than clamped, so an instance never renews on a
    /// schedule other than the one it asked for without being told. The default itself is
    /// checked too, so a misconfigured default is reported rather than granted.
    pub fn resolve(&self, requested_ms: u64) -> Result<u64, GatewayError> {
        let lease_ms = if requested_ms == 0 {
            self.default_ms
        } else {
            requested_ms
        };
        if !(self.min_ms..=self.max_ms).contains(&lease_ms) {
            return Err(GatewayError::InvalidArgument {
                field: "lease_ms",
                reason: format!("{lease_ms} is outside {}..={}", self.min_ms, self.max_ms),
            });
        }
        Ok(lease_ms)
    }
}

/// A registration that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRegistration {
    pub key: InstanceKey,
    /// Normalised to `http://host:port`.
    pub addr: String,
    pub metadata: BTreeMap<String, String>,
    /// The granted lease, never 0.
    pub lease_ms: u64,
}

impl Registration {
    /// Checks the service name, the instance id, the metadata, the address and the lease, in
    /// that order, and reports the first that fails.
    pub fn validate(self, lease: &LeaseBounds) -> Result<ValidRegistration, GatewayError> {
        names::validate_service(&self.service)?;
        names::validate_instance_id(&self.instance_id)?;
        names::validate_metadata(&self.metadata)?;
        let addr = names::normalize_addr(&self.addr)?;
        let lease_ms = lease.resolve(self.lease_ms)?;
        Ok(ValidRegistration {
            key: InstanceKey::new(self.service, self.instance_id),
            addr,
            metadata: self.metadata,
            lease_ms,
        })
    }
}

/// When an instance should renew: a third of its lease, so that two renewals in a row can be
/// lost before the lease runs out.
pub fn renew_after_ms(lease_ms: u64) -> u64 {
    lease_ms / 3
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BOUNDS: LeaseBounds = LeaseBounds {
        default_ms: 10_000,
        min_ms: 1_000,
        max_ms: 60_000,
    };

    fn registration() -> Registration {
        Registration {
            service: "orders".into(),
            instance_id: "o-1".into(),
            addr: "127.0.0.1:8080".into(),
            metadata: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            lease_ms: 0,
        }
    }

    fn field_of(result: Result<ValidRegistration, GatewayError>) -> &'static str {
        match result {
            Err(GatewayError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_registration_is_normalised_and_gets_the_default_lease() {
        let valid = registration().validate(&BOUNDS).unwrap();
        assert_eq!(valid.key, InstanceKey::new("orders", "o-1"));
        assert_eq!(valid.addr, "http://127.0.0.1:8080");
        assert_eq!(valid.metadata["zone"], "a");
        assert_eq!(valid.lease_ms, 10_000);
    }

    #[test]
    fn a_requested_lease_within_bounds_is_granted_as_asked() {
        for lease_ms in [1_000, 5_000, 60_000] {
            let reg = Registration {
                lease_ms,
                ..registration()
            };
            assert_eq!(reg.validate(&BOUNDS).unwrap().lease_ms, lease_ms);
        }
    }

    #[test]
    fn a_lease_outside_the_bounds_is_refused_with_the_documented_text() {
        let err = BOUNDS.resolve(999).unwrap_err();
        assert_eq!(
            err,
            GatewayError::InvalidArgument {
                field: "lease_ms",
                reason: "999 is outside 1000..=60000".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid lease_ms: 999 is outside 1000..=60000"
        );
        assert!(BOUNDS.resolve(60_001).is_err());
        let misconfigured = LeaseBounds {
            default_ms: 100,
            ..BOUNDS
        };
        assert!(
            misconfigured.resolve(0).is_err(),
            "the default is checked too"
        );
    }

    #[test]
    fn checks_run_in_order_and_the_first_failure_is_reported() {
        let everything_wrong = Registration {
            service: String::new(),
            instance_id: String::new(),
            addr: "ftp://x".into(),
            metadata: BTreeMap::from([(String::new(), String::new())]),
            lease_ms: 1,
        };
        assert_eq!(
            field_of(everything_wrong.clone().validate(&BOUNDS)),
            "service"
        );
        let reg = Registration {
            service: "orders".into(),
            ..everything_wrong
        };
        assert_eq!(field_of(reg.clone().validate(&BOUNDS)), "instance_id");
        let reg = Registration {
            instance_id: "o-1".into(),
            ..reg
        };
        assert_eq!(field_of(reg.clone().validate(&BOUNDS)), "metadata");
        let reg = Registration {
            metadata: BTreeMap::new(),
            ..reg
        };
        assert_eq!(field_of(reg.clone().validate(&BOUNDS)), "addr");
        let reg = Registration {
            addr: "http://h:1/".into(),
            ..reg
        };
        assert_eq!(field_of(reg.clone().validate(&BOUNDS)), "lease_ms");
        let reg = Registration {
            lease_ms: 2_000,
            ..reg
        };
        assert_eq!(reg.validate(&BOUNDS).unwrap().addr, "http://h:1");
    }

    #[test]
    fn renewal_comes_at_a_third_of_the_lease() {
        assert_eq!(renew_after_ms(30_000), 10_000);
        assert_eq!(renew_after_ms(10_000), 3_333);
        assert_eq!(renew_after_ms(0), 0);
    }

    proptest! {
        #[test]
        fn a_granted_lease_is_within_bounds_and_the_request_when_one_was_made(
            requested_ms in prop_oneof![Just(0u64), 0u64..100_000, any::<u64>()],
            default_ms in 0u64..100_000,
            min_ms in 0u64..50_000,
            span_ms in 0u64..50_000,
        ) {
            let bounds = LeaseBounds { default_ms, min_ms, max_ms: min_ms + span_ms };
            match bounds.resolve(requested_ms) {
                Ok(lease_ms) => {
                    prop_assert!((bounds.min_ms..=bounds.max_ms).contains(&lease_ms));
                    let asked = if requested_ms == 0 { default_ms } else { requested_ms };
                    prop_assert_eq!(lease_ms, asked);
                }
                Err(GatewayError::InvalidArgument { field, .. }) => prop_assert_eq!(field, "lease_ms"),
                Err(other) => prop_assert!(false, "unexpected error {:?}", other),
            }
        }

        #[test]
        fn renewal_leaves_two_renewals_of_slack(lease_ms in any::<u64>()) {
            let renew = renew_after_ms(lease_ms);
            prop_assert!(renew <= lease_ms);
            prop_assert!(renew.saturating_mul(3) <= lease_ms);
        }
    }
}
