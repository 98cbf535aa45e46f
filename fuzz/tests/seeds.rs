//! Replays every committed seed through its target's `check`, on plain stable without
//! libFuzzer, so that the reproducers of fixed bugs (`seeds/*/regress-*`) stay fixed and the
//! properties keep holding on the seed inputs. `cargo test` in `fuzz/` runs it.

use std::path::{Path, PathBuf};

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable seed directory").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    for file in seeds(target) {
        let data = std::fs::read(&file).expect("readable seed");
        eprintln!("{target}: {}", file.display());
        check(&data);
    }
}

#[test]
fn request_seeds_hold() {
    replay("request", switchyard_fuzz::request::check);
}

#[test]
fn response_seeds_hold() {
    replay("response", switchyard_fuzz::response::check);
}

#[test]
fn http2_seeds_hold() {
    replay("http2", switchyard_fuzz::http2::check);
}

#[test]
fn registry_seeds_hold() {
    replay("registry", switchyard_fuzz::registry::check);
}

/// The raw seeds are only useful while they still decode; a schema change would make them
/// noise, and this says so.
#[test]
fn raw_registry_seeds_still_decode() {
    for name in ["raw-register", "raw-renew", "raw-deregister", "raw-evict"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds/registry")
            .join(name);
        let data = std::fs::read(&path).expect("readable seed");
        assert!(
            switchyard_core::Event::decode(&data[1..]).is_ok(),
            "{name} no longer decodes; regenerate with `cargo run --example make_seeds`"
        );
    }
}
