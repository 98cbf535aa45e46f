#!/usr/bin/env bash
# The mutation study (issue 19, docs/simulation.md "Mutation study"): cargo-mutants changes one
# thing at a time in the code that decides (the core's registry, clock, events and balancing;
# the node's registrar, replication, outbox, store and forwarding) and the simulation, run by
# `cargo test -p switchyard-sim --test mutation` (sim/tests/mutation.rs), judges each mutant.
#
#   sim/mutants.sh                         every area (hours: see docs/simulation.md)
#   sim/mutants.sh --area hlc --area registry
#   sim/mutants.sh --area balance --shard 0/4     one quarter of an area
#   sim/mutants.sh --list                  the mutants, without running them
#   sim/mutants.sh --table DIR             the table of an earlier run's DIR/mutants.out
#   sim/mutants.sh ... -- ARGS             more arguments for cargo-mutants (e.g. --re hlc)
#
# Environment: CARGO_TARGET_DIR (default target/sim, the simulation suite's own build, whose
# dependencies the study reuses), MUTANTS_OUT (default target/mutants-study), and the test
# profile's SIM_MUTANTS_SEEDS, SIM_MUTANTS_SHORT_LEASE_SEEDS, SIM_MUTANTS_JOBS
# (sim/tests/mutation.rs), MUTANTS_TIMEOUT_S (per mutant's test, default 300),
# MUTANTS_COPY=1 (mutate a copy of the tree instead of the tree itself), MUTANTS_BASELINE=skip
# (do not run the unmutated tree first).
set -euo pipefail

MUTANTS_VERSION=27.1.0
cd "$(dirname "$0")/.."
root=$(pwd)

declare -A AREA_FILES=(
    [hlc]="gateway/core/src/hlc.rs"
    [registry]="gateway/core/src/registry.rs"
    [event]="gateway/core/src/event.rs"
    [balance]="gateway/core/src/balance.rs"
    [registrar]="gateway/node/src/registrar.rs"
    [replication]="gateway/node/src/replication.rs"
    [outbox]="gateway/node/src/outbox.rs"
    [store]="gateway/node/src/store.rs"
    [forwarding]="gateway/node/src/forwarding.rs gateway/node/src/forwarding/channel.rs"
)
AREAS_ALL=(hlc registry event balance registrar replication outbox store forwarding)

areas=()
list=0
table_only=""
shard=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --area)
            [ $# -ge 2 ] || { echo "--area needs a name: ${AREAS_ALL[*]}" >&2; exit 2; }
            [ -n "${AREA_FILES[$2]+x}" ] || { echo "unknown area $2; known: ${AREAS_ALL[*]}" >&2; exit 2; }
            areas+=("$2"); shift 2 ;;
        --shard)
            [ $# -ge 2 ] || { echo "--shard needs K/N" >&2; exit 2; }
            shard="$2"; shift 2 ;;
        --list) list=1; shift ;;
        --table)
            [ $# -ge 2 ] || { echo "--table needs a directory" >&2; exit 2; }
            table_only="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "unknown argument $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done
[ ${#areas[@]} -gt 0 ] || areas=("${AREAS_ALL[@]}")

if [ -n "$table_only" ]; then
    exec python3 sim/mutants_table.py "$table_only/mutants.out" sim/mutants-equivalent.txt
fi

if [ "$(cargo mutants --version 2>/dev/null || true)" != "cargo-mutants $MUTANTS_VERSION" ]; then
    echo "installing cargo-mutants $MUTANTS_VERSION" >&2
    cargo install --locked cargo-mutants --version "$MUTANTS_VERSION"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/sim}"
# The flag the simulation suite builds with (seeded tokio), so the study reuses its build of
# the dependencies and its runs replay as the suite's do.
export RUSTFLAGS="--cfg tokio_unstable"
# Only the workspace's crates are rebuilt per mutant: incremental, many codegen units, no
# debug info, opt-level 1 (set per package, so the dependencies stay the suite's release
# build, optimised, and are never rebuilt). Cargo applies CARGO_INCREMENTAL to workspace
# crates only; a profile of the study's own would build every dependency once more.
export CARGO_INCREMENTAL=1
cargo_args=(--cargo-arg=--locked)
for p in switchyard-core switchyard switchyard-sim switchyard-proto sample-service; do
    for kv in opt-level=1 codegen-units=256 debug=false; do
        cargo_args+=("--cargo-arg=--config=profile.release.package.$p.$kv")
    done
done

files=()
file_args=()
for a in "${areas[@]}"; do
    for f in ${AREA_FILES[$a]}; do files+=("$f"); file_args+=(--file "$f"); done
done

out="${MUTANTS_OUT:-$root/target/mutants-study}"
common=(
    "${file_args[@]}"
    --test-package switchyard-sim
    --profile release
    "${cargo_args[@]}"
    --cargo-test-arg=--test=mutation
)
[ -z "$shard" ] || common+=(--shard "$shard")

if [ "$list" = 1 ]; then
    exec cargo mutants "${common[@]}" --list "${extra[@]}"
fi

# In place, cargo-mutants runs one mutant at a time by itself; a copy is told so (two cores,
# shared: one build at a time).
placement=(--in-place)
if [ "${MUTANTS_COPY:-0}" = 1 ]; then
    placement=(--jobs 1)
else
    # Mutating the tree itself reuses its build; refuse if the files to mutate have changes
    # of their own, so a mutation can never mix with them, and check they are clean after.
    changed=$(git status --porcelain -- "${files[@]}" | tr -d '\n')
    if [ -n "$changed" ]; then
        echo "the files to mutate have uncommitted changes; commit them or set MUTANTS_COPY=1" >&2
        exit 2
    fi
fi

# The baseline, run here: cargo-mutants 27.1.0 runs its own baseline with the tests of the
# mutated packages, not those of --test-package, which have no `mutation` target. The
# unmutated tree must pass the profile, or no mutant's result means anything.
if [ "${MUTANTS_BASELINE:-run}" != skip ]; then
    cargo_plain=()
    for a in "${cargo_args[@]}"; do cargo_plain+=("${a#--cargo-arg=}"); done
    echo "baseline: the unmutated tree against the profile" >&2
    start=$(date +%s)
    cargo test -p switchyard-sim --release "${cargo_plain[@]}" --test mutation
    echo "baseline passed in $(( $(date +%s) - start )) s (build and test)" >&2
fi

mkdir -p "$out"
status=0
cargo mutants "${common[@]}" "${placement[@]}" \
    --output "$out" --baseline skip \
    --timeout "${MUTANTS_TIMEOUT_S:-300}" --build-timeout 900 \
    --no-shuffle --caught --unviable \
    "${extra[@]}" || status=$?
if [ "${MUTANTS_COPY:-0}" != 1 ] && ! git diff --quiet -- "${files[@]}"; then
    echo "WARNING: the mutated files differ from git after the run: check 'git diff'" >&2
fi
if [ -f "$out/mutants.out/outcomes.json" ]; then
    python3 sim/mutants_table.py "$out/mutants.out" sim/mutants-equivalent.txt || true
fi
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts: a finding, not a failure
# of the study; 1, 4 and others are failures of the run itself.
case "$status" in 0|2|3) exit 0 ;; *) exit "$status" ;; esac
