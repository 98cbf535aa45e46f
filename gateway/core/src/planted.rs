//! Known bugs, planted on purpose behind a test-only switch, so that the simulation can show
//! that its checkers catch them. A checker that never fails proves nothing.
//!
//! Without the `planted-bugs` feature, [`active`] is a constant `false` and the optimiser
//! removes every planted branch. With it, a bug is active only on the thread that planted it
//! (turmoil runs a whole simulation on one thread), so simulations on other threads are clean.

/// The bugs that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// Registry merge keeps the incoming entry instead of the greater one.
    IncomingWins,
    /// A gateway skips its own events when it reads the bus (so after a restart it forgets
    /// the changes it accepted before).
    SkipOwnEvents,
    /// A gateway reports ready before it has caught up with the bus.
    ReadyBeforeCatchUp,
    /// Routing ignores lease expiry: an instance whose lease ran out is still chosen.
    RouteExpired,
    /// Tombstones are deleted from the bus as soon as they are written, without waiting for
    /// every older registration to run out (and readers apply such early delete markers).
    CollectEarly,
    /// Replication applies every record that decodes: no quarantine of stamps beyond the
    /// drift bound, leases out of bounds, or records whose key does not match their event.
    QuarantineOff,
    /// A control credential's service scope is not checked: any valid credential may
    /// register, renew and deregister any service.
    ScopeIgnored,
    /// A registration through the GraphQL front is applied on its gateway and answered as
    /// published, but never handed to the bus.
    FrontSkipsBus,
    /// A GraphQL `call` that fails at the gateway (no instance, no answer) is answered as a
    /// service's empty 200 instead of an error: "200 on error".
    CallOkOnError,
    /// Audit records that the sink fails to deliver are dropped without being counted.
    AuditDropUncounted,
    /// A `registryChanges` subscription silently skips renewals, as if a renewal changed
    /// nothing a subscriber needs to know: a gap with no `subscription_lagged` error.
    SubscriptionGap,
    /// The hybrid logical clock ignores the stamps it observes: a change made after one read
    /// from the bus may carry a smaller stamp.
    ObserveIgnored,
    /// The hybrid logical clock issues the same stamp again within one millisecond instead of
    /// counting up.
    TickRepeats,
    /// Registry merge lets a removal replace a live entry whatever their stamps (a bug in the
    /// merge every gateway shares).
    RemovalAlwaysWins,
    /// A gateway takes the high-water mark it saw at start minus one as its catch-up target,
    /// so it reports ready one record early (and its status agrees with itself).
    TargetShort,
    /// Replication sets its position from the last record fetched even when a redelivered
    /// record is earlier than the position (the bug fixed for issue 19), so it moves back.
    PositionBack,
}

impl Bug {
    pub const ALL: [Bug; 16] = [
        Bug::IncomingWins,
        Bug::SkipOwnEvents,
        Bug::ReadyBeforeCatchUp,
        Bug::RouteExpired,
        Bug::CollectEarly,
        Bug::QuarantineOff,
        Bug::ScopeIgnored,
        Bug::FrontSkipsBus,
        Bug::CallOkOnError,
        Bug::AuditDropUncounted,
        Bug::SubscriptionGap,
        Bug::ObserveIgnored,
        Bug::TickRepeats,
        Bug::RemovalAlwaysWins,
        Bug::TargetShort,
        Bug::PositionBack,
    ];
}

#[cfg(feature = "planted-bugs")]
mod switch {
    use std::cell::Cell;

    use super::Bug;

    thread_local! {
        static ACTIVE: Cell<Option<Bug>> = const { Cell::new(None) };
    }

    pub fn plant(bug: Option<Bug>) {
        ACTIVE.with(|a| a.set(bug));
    }

    pub fn active(bug: Bug) -> bool {
        ACTIVE.with(|a| a.get() == Some(bug))
    }
}

/// Plants `bug` on this thread (`None` removes it).
#[cfg(feature = "planted-bugs")]
pub use switch::plant;

/// Whether `bug` is planted on this thread.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        switch::active(bug)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}
