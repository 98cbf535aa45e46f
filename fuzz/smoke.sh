#!/usr/bin/env bash
# Smoke run of every fuzz target: replays the committed seeds with `cargo test`, then fuzzes
# each target for FUZZ_SECONDS (default 20) and exits non-zero on the first crash, hang or
# out-of-memory. Works on a fresh machine with only rustup's stable toolchain: cargo-fuzz is
# installed if missing, and the nightly-only flags it passes are unlocked with
# RUSTC_BOOTSTRAP=1 (see docs/fuzzing.md for why, and for long runs).
#
#   fuzz/smoke.sh                       # every target, 20 s each
#   FUZZ_SECONDS=600 fuzz/smoke.sh registry
#   FUZZ_SANITIZER=address fuzz/smoke.sh    # with AddressSanitizer (about 4-5x slower)
#   FUZZ_BUILD_ONLY=1 fuzz/smoke.sh     # install cargo-fuzz and build the seed tests and the
#                                       # targets, run nothing (testbeds/test-all builds ahead)
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-none}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(request response registry http2)
fi
# Each sanitizer gets its own target dir, so switching does not rebuild the other from scratch.
target_dir="target"
if [ "$sanitizer" != "none" ]; then
    target_dir="target/$sanitizer"
fi

export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_BUILD_ONLY:-}" ]; then
    echo "smoke: building the seed tests and the targets (sanitizer: $sanitizer), running none"
    cargo test --quiet --locked --no-run
    cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"
    exit 0
fi

echo "smoke: replaying seeds (cargo test)"
cargo test --quiet --locked

fuzz=(cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir")
echo "smoke: building targets (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"

mkdir -p target/smoke-logs
status=0
for t in "${targets[@]}"; do
    # libFuzzer writes what it finds into the first corpus dir; the committed seeds are copied
    # in (never fuzzed in place) because fuzz/corpus/*/ is ignored by git.
    mkdir -p "corpus/$t"
    cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
    extra=()
    if [ "$t" = request ]; then
        extra+=(-dict=dict/http.dict)
    fi
    log="target/smoke-logs/$t.log"
    echo "smoke: $t for ${seconds}s (log: fuzz/$log)"
    if "${fuzz[@]}" "$t" "corpus/$t" -- -max_total_time="$seconds" -timeout=10 \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
        echo "smoke: $t ok: ${runs:-?} runs, ${last:-no coverage line}"
    else
        status=1
        echo "smoke: $t FAILED (full log: fuzz/$log)"
        grep -A 1 -m 1 'panicked at' "$log" || true
        grep -E 'SUMMARY|Test unit written to' "$log" || tail -n 20 "$log"
    fi
done
if [ "$status" -ne 0 ]; then
    echo "smoke: a target failed; reproducers are in fuzz/artifacts/ (docs/fuzzing.md: triage)"
fi
exit "$status"
