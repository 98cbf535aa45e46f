#!/usr/bin/env bash
# A profile-guided build of the gateway: instrumented, trained on a mix of its own traffic
# (testbeds/bench/pgo.py), rebuilt with the counters.
#
#   testbeds/bench/pgo.sh [--scale F]     the binary: target/pgo/<host triple>/dist/switchyard
#
# (target/ is $CARGO_TARGET_DIR when set.) --scale multiplies the training's request counts.
#
# Both builds use the `dist` profile (fat LTO, one codegen unit; Cargo.toml), each in a target
# directory of its own (target/pgo-gen, target/pgo), since the instrumentation flags rebuild
# every crate; `--target` keeps the flags off build scripts and procedural macros. Needs
# llvm-profdata of the toolchain's own LLVM: installs rustup's llvm-tools component when it is
# missing. Needs oha, which proxies.sh installs. On two cores: two full builds of 6 to 9
# minutes each and a training run of about 15 s (decision 0035, docs/benchmarks.md).
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
log() { printf '[pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

scale=1.0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --scale) scale="${2:?--scale takes a number}"; shift 2 ;;
    *) echo "usage: testbeds/bench/pgo.sh [--scale F]" >&2; exit 2 ;;
  esac
done

sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
  log "installing rustup's llvm-tools component (llvm-profdata)"
  rustup component add llvm-tools
fi
[[ -x "$profdata" ]] || { log "no llvm-profdata at $profdata"; exit 1; }

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
oha_bin="$(command -v oha || echo "$cargo_bin/oha")"
[[ -x "$oha_bin" ]] || { log "oha is missing; testbeds/bench/proxies.sh installs it"; exit 1; }

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"
data="$target_dir/pgo-data"
rm -rf "$data" && mkdir -p "$data/raw"

log "building the instrumented gateway (dist profile, target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$data/raw" CARGO_TARGET_DIR="$target_dir/pgo-gen" \
  cargo build --quiet --locked --profile dist --target "$host" -p switchyard
log "building the sample service (release)"
cargo build --quiet --locked --release -p sample-service

log "training"
python3 testbeds/bench/pgo.py --gateway "$target_dir/pgo-gen/$host/dist/switchyard" \
  --sample "$target_dir/release/sample-service" --oha "$oha_bin" --scale "$scale"
shopt -s nullglob
raw=("$data"/raw/*.profraw)
[[ ${#raw[@]} -gt 0 ]] || { log "the training wrote no counters"; exit 1; }
"$profdata" merge -o "$data/merged.profdata" "${raw[@]}"
log "merged ${#raw[@]} profiles: $("$profdata" show "$data/merged.profdata" | grep -m1 'Total functions' || true)"
# Named by its content: cargo tracks RUSTFLAGS, not the file they name, so new counters under
# the same name would leave the last build standing.
merged="$data/merged-$(sha256sum "$data/merged.profdata" | cut -c1-16).profdata"
mv "$data/merged.profdata" "$merged"

log "building the gateway with the counters (dist profile, target/pgo)"
RUSTFLAGS="-Cprofile-use=$merged" CARGO_TARGET_DIR="$target_dir/pgo" \
  cargo build --quiet --locked --profile dist --target "$host" -p switchyard
log "done: $target_dir/pgo/$host/dist/switchyard"
