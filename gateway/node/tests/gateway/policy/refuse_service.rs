//! A test-only registration policy: refuses every change to services whose name starts with
//! `locked-`, and records who asked for each change it saw.

use std::sync::Mutex;

use switchyard::registrar::{Caller, Change, RegistrationPolicy, Via};
use switchyard_core::GatewayError;

/// The prefix of the services this policy protects.
pub const LOCKED: &str = "locked-";

/// The front and whether a peer address was known, for each change seen.
#[derive(Debug, Default)]
pub struct RefuseService {
    pub seen: Mutex<Vec<(Via, bool)>>,
}

impl RegistrationPolicy for RefuseService {
    fn name(&self) -> &'static str {
        "refuse-service"
    }

    fn check(&self, caller: &mut Caller, change: &Change<'_>) -> Result<(), GatewayError> {
        self.seen
            .lock()
            .unwrap()
            .push((caller.via, caller.client_addr.is_some()));
        let service = match change {
            Change::Register { registration, .. } => &registration.key.service,
            Change::Deregister { key } => &key.service,
        };
        if service.starts_with(LOCKED) {
            return Err(GatewayError::Forbidden {
                reason: format!("{service} is locked"),
            });
        }
        Ok(())
    }
}
