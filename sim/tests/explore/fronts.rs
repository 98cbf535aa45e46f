//! The fronts and policies inside the simulation (`scenario/fronts.rs`): every front is
//! exercised and no checker fires on the correct code, and each of their checkers finds its
//! planted bug within a stated number of seeds, each seed run in a fresh process as `explore`
//! does (so the seed the message names replays exactly).

use switchyard_core::planted::Bug;
use switchyard_sim::explore::{explore, summary};
use switchyard_sim::scenario::Options;

use super::{exe, find_and_show};

/// Seeds the clean run takes: fewer in a debug build.
fn seeds() -> u64 {
    if cfg!(debug_assertions) { 4 } else { 24 }
}

#[test]
fn every_front_is_exercised_and_no_front_checker_fires() {
    let template = Options::new(0);
    let outcomes = explore(0..seeds(), &template, 2, exe());
    let report = summary(&outcomes, &template, 0.0);
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .map(|o| (o.seed, o.violations.clone()))
        .collect();
    assert!(failed.is_empty(), "{report}\n{failed:#?}");
    let sum = |f: fn(&switchyard_sim::scenario::Outcome) -> usize| -> usize {
        outcomes.iter().map(f).sum()
    };
    for front in ["rest", "grpc", "graphql"] {
        let changes: usize = outcomes
            .iter()
            .map(|o| o.fronts.changes_by_front.get(front).copied().unwrap_or(0))
            .sum();
        assert!(changes > 0, "no registry change went through {front}");
    }
    let rest = sum(|o| o.fronts.rest_calls);
    let graphql = sum(|o| o.fronts.graphql_calls);
    let audited = sum(|o| o.fronts.audit.audited);
    let sessions = sum(|o| o.fronts.subscriptions.sessions);
    let changes = sum(|o| o.fronts.subscriptions.changes);
    println!(
        "calls: {rest} REST, {graphql} GraphQL; audited {audited} of {}, {} missing and counted; subscriptions: {sessions} judged, {changes} changes",
        sum(|o| o.fronts.audit.answered),
        sum(|o| o.fronts.audit.missing_counted),
    );
    assert!(rest > 0 && graphql > 0, "both public fronts carry calls");
    assert!(audited > 0, "calls were audited");
    assert!(
        sessions > 0 && changes > 10 * sessions,
        "subscribers saw changes"
    );
}

/// Each planted bug of the fronts, found within the stated number of seeds by its checker.
#[test]
fn the_front_checkers_find_each_planted_bug() {
    for (bug, within, checker) in [
        (Bug::FrontSkipsBus, 20, "acknowledged registration"),
        (Bug::CallOkOnError, 20, "no instance ever received"),
        (Bug::AuditDropUncounted, 20, "audit records lost silently"),
        (Bug::SubscriptionGap, 10, "silent gap"),
    ] {
        find_and_show(
            Options {
                bug: Some(bug),
                ..Options::new(0)
            },
            within,
            checker,
        );
    }
}
