//! The node crate's module graph stays acyclic and layered.
//!
//! A top-level module is `src/X.rs` with everything under `src/X/`; `lib.rs` and `main.rs` are
//! not modules. Module X imports module Y when any of its files names `crate::Y` (in a `use`,
//! grouped or not, or in an inline path), or a name `lib.rs` brings in from Y. Three rules:
//!
//! 1. No cycle: no two modules import each other, directly or around a loop.
//! 2. Nothing imports the composition root [`ROOT`]; only `lib.rs` declares and re-exports it.
//! 3. Every import goes from a higher layer of [`LAYERS`] to a strictly lower one, and the
//!    table lists exactly the modules in `src/`, so it stays a true map of the crate.
//!
//! Check with `cargo test -p switchyard --test gateway architecture` (add
//! `--no-default-features` to skip building librdkafka); `-- --nocapture` prints the graph.
//!
//! Deliberately not followed: `super::` paths, which inside `src/X/` or an inline `mod tests`
//! never leave X (only a `super::` at the top level of `src/X.rs` would reach the crate root,
//! and no module writes one); `use crate as alias` then `alias::Y`; glob re-exports in
//! `lib.rs`. The crate uses neither of the last two.

mod graph;
mod source;
mod tests;

use std::path::Path;

/// The composition root: it wires every other module together, so nothing may import it.
const ROOT: &str = "node";

/// Each module's layer. An import must go to a strictly lower layer; same-layer imports are
/// not allowed. A new module gets a line here, in the layer its imports allow.
const LAYERS: &[(&str, u8)] = &[
    // Vocabulary: configuration, locking, the seeded generator, the revocation contract.
    ("config", 0),
    ("revocation", 0),
    ("sync", 0),
    // The seams to the outside: the bus, then the connector, clock and listeners.
    ("bus", 1),
    ("seams", 2),
    ("tls", 2),
    // Owners built only on the seams.
    ("address", 3),
    ("serve", 3),
    ("store", 3),
    ("outbox", 3),
    ("telemetry", 3),
    ("auth", 3),
    // The auditor keeps its own counters (the node adds them to every scrape), so the
    // registrar and the pipeline can both hand it records.
    ("audit", 3),
    // Keeping the registry: registration and replication; the Redis client (counts through
    // telemetry's scrape helpers).
    ("redis", 4),
    ("registrar", 4),
    ("replication", 4),
    ("jwks", 4),
    // Calling services (evicts through the registrar); the revocation list on the Redis
    // client.
    ("forwarding", 5),
    ("revocations", 5),
    // Handling a request, and what the node reports.
    ("pipeline", 6),
    ("status", 6),
    ("respond", 6),
    // The listeners' fronts.
    ("public", 7),
    ("control", 7),
    ("console", 7),
    ("graphql", 7),
    ("probes", 7),
    // The composition root.
    ("node", 8),
];

#[test]
fn node_crate_modules_are_layered_without_cycles() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let tree = source::read_tree(src);
    let violations = graph::check(&tree.modules, &tree.edges, LAYERS, ROOT);
    if !violations.is_empty() {
        let list: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
        panic!(
            "the node crate's module graph breaks the architecture rules: {}.\n\
             LAYERS and the rules are in gateway/node/tests/gateway/architecture.rs.\n{}\n\
             Check again with: cargo test -p switchyard --test gateway architecture",
            graph::summary(&violations),
            list.join("\n"),
        );
    }
    let graph = graph::graph(&tree.edges);
    println!(
        "module graph of the node crate (X -> the modules X imports):\n{}",
        graph::render_graph(&tree.modules, &graph, LAYERS)
    );
}
