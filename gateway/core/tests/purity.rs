//! The core stays pure because Cargo says so: this test asks `cargo tree` for every crate the
//! core depends on in a normal build for this host and fails, naming each one, if a
//! runtime, a transport or a bus client has crept in, directly or through `switchyard-proto`.
//!
//! The check reads the resolved graph rather than `Cargo.toml`, so a forbidden crate reached
//! through a feature or through another crate is caught as well as a direct dependency. It runs
//! offline, so it looks at the host target only: `--target all` would need the sources of
//! crates for other platforms, which an offline machine may not have. Every crate banned here
//! is platform-independent, so the host's graph shows it as well as any other's would.

use std::path::Path;
use std::process::Command;

/// Crates the core must not reach at all, with the reason each is banned.
const FORBIDDEN_CRATES: &[(&str, &str)] = &[
    (
        "tokio",
        "an async runtime: the core is driven by `now` and events",
    ),
    ("tokio-util", "tokio's companion crate"),
    ("tokio-stream", "tokio's companion crate"),
    ("mio", "non-blocking sockets"),
    (
        "tonic",
        "gRPC; the message types come from switchyard-proto without its `grpc` feature",
    ),
    (
        "tonic-prost",
        "tonic's codec; enabled only by switchyard-proto's `grpc` feature",
    ),
    ("h2", "an HTTP/2 transport"),
    ("hyper", "an HTTP transport"),
    ("hyper-util", "an HTTP transport"),
    ("axum", "an HTTP server"),
    ("axum-core", "an HTTP server"),
    ("tower", "service middleware for transports"),
    ("rdkafka", "the Kafka client"),
    ("rdkafka-sys", "the Kafka client"),
];

/// Features that would be forbidden even if one of the crates above were let in again: they
/// are the ones that open sockets or serve connections.
const FORBIDDEN_FEATURES: &[(&str, &[&str])] = &[
    ("tokio", &["net"]),
    ("tonic", &["transport", "router", "server", "channel"]),
];

/// One line of `cargo tree --prefix none -f '{p}|{f}'`.
#[derive(Debug, PartialEq, Eq)]
struct Package {
    name: String,
    /// The whole `{p}` field: name, version and, for path crates, the path.
    id: String,
    features: Vec<String>,
}

/// Parses the `cargo tree` output. Lines that repeat a package end in ` (*)`.
fn parse(tree: &str) -> Vec<Package> {
    tree.lines()
        .map(|line| line.trim().trim_end_matches("(*)").trim_end())
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (id, features) = line.rsplit_once('|').unwrap_or((line, ""));
            Package {
                name: id.split_whitespace().next().unwrap_or_default().to_owned(),
                id: id.trim().to_owned(),
                features: features
                    .split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }
        })
        .collect()
}

/// Every violation in `packages`, one message each, sorted and without repeats.
fn violations(packages: &[Package]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    for p in packages {
        if let Some((_, why)) = FORBIDDEN_CRATES.iter().find(|(name, _)| *name == p.name) {
            found.insert(format!(
                "crate {} (features: [{}]): {why}",
                p.id,
                p.features.join(",")
            ));
        }
        if let Some((_, banned)) = FORBIDDEN_FEATURES.iter().find(|(name, _)| *name == p.name) {
            for f in p.features.iter().filter(|f| banned.contains(&f.as_str())) {
                found.insert(format!("feature `{f}` of crate {}", p.id));
            }
        }
    }
    found.into_iter().collect()
}

fn core_dependency_tree() -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--manifest-path"])
        .arg(&manifest)
        .args([
            "-p",
            "switchyard-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-f",
            "{p}|{f}",
        ])
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", env!("CARGO")));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cargo tree failed ({}):\n{}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_core_depends_on_no_runtime_transport_or_bus_client() {
    let tree = core_dependency_tree();
    let packages = parse(&tree);
    // A broken invocation (wrong package, empty output) must not pass as "nothing forbidden".
    assert!(
        packages
            .first()
            .is_some_and(|p| p.name == "switchyard-core"),
        "cargo tree did not list switchyard-core first:\n{tree}"
    );
    assert!(
        packages.iter().any(|p| p.name == "switchyard-proto"),
        "cargo tree did not reach switchyard-proto, so the check did not see the path through \
         it (if the core no longer uses the wire types, drop this assertion):\n{tree}"
    );
    let found = violations(&packages);
    assert!(
        found.is_empty(),
        "switchyard-core must stay free of I/O, but its normal dependencies include:\n  {}\n\
         Run `cargo tree -p switchyard-core -e normal -i <crate>` to see the path.",
        found.join("\n  ")
    );
}

#[test]
fn the_check_names_forbidden_crates_and_features() {
    let tree = "switchyard-core v0.1.0 (/w/gateway/core)|\n\
                switchyard-proto v0.1.0 (/w/proto)|grpc\n\
                tonic v0.14.9|channel,codegen,transport\n\
                tokio v1.54.1|net,rt (*)\n\
                prost v0.14.6|default,derive,std\n\
                hyper v1.12.0|client,http2\n";
    let packages = parse(tree);
    assert_eq!(packages.len(), 6);
    assert_eq!(packages[3].features, ["net", "rt"]);
    let found = violations(&packages);
    for expected in [
        "crate tonic v0.14.9",
        "crate tokio v1.54.1",
        "crate hyper v1.12.0",
        "feature `transport` of crate tonic",
        "feature `channel` of crate tonic",
        "feature `net` of crate tokio",
    ] {
        assert!(
            found.iter().any(|v| v.starts_with(expected)),
            "{expected:?} not reported in {found:#?}"
        );
    }
    assert_eq!(found.len(), 6, "only the forbidden ones: {found:#?}");
    assert!(violations(&parse("switchyard-core v0.1.0|\nprost v0.14.6|std\n")).is_empty());
}
