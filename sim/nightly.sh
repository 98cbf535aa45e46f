#!/usr/bin/env bash
# The nightly simulation run: many seeds (10,000 by default) of the default world, each in a
# fresh process, with a summary kept in a file.
#
#   sim/nightly.sh                          seeds 0..10000, 2 jobs
#   SIM_NIGHTLY_SEEDS=20000 SIM_NIGHTLY_FIRST=10000 SIM_NIGHTLY_JOBS=4 sim/nightly.sh
#
# 1. Builds switchyard-sim in release with `--cfg tokio_unstable` (bit-for-bit replays; see
#    docs/simulation.md), in $CARGO_TARGET_DIR, default target/sim, as testbeds/test-all does.
# 2. Runs `explore --seeds FIRST..FIRST+SEEDS --jobs JOBS --summary FILE`, bounded by
#    SIM_NIGHTLY_TIMEOUT_S seconds of wall time (default 28800: eight hours, room for a
#    machine shared with builds); no progress line,
#    as CI is set for it.
# 3. Leaves the summary in $SIM_NIGHTLY_DIR (default target/sim-nightly) as
#    summary-FIRST-LAST.txt, with the replay command of every failed seed (up to 20).
#
# Exits 0 if no seed found a violation, 1 if some did (the summary names them), 2 or more if
# the run could not be made.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds="${SIM_NIGHTLY_SEEDS:-10000}"
first="${SIM_NIGHTLY_FIRST:-0}"
jobs="${SIM_NIGHTLY_JOBS:-2}"
timeout_s="${SIM_NIGHTLY_TIMEOUT_S:-28800}"
out_dir="${SIM_NIGHTLY_DIR:-target/sim-nightly}"
for value in "$seeds" "$first" "$jobs" "$timeout_s"; do
  if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "${#value}" -gt 12 ]; then
    echo "nightly: expected whole numbers, got '$value'" >&2
    exit 2
  fi
done
if [ "$seeds" -lt 1 ] || [ "$jobs" -lt 1 ] || [ "$jobs" -gt 64 ]; then
  echo "nightly: SIM_NIGHTLY_SEEDS must be at least 1 and SIM_NIGHTLY_JOBS 1..64" >&2
  exit 2
fi
last=$((first + seeds))

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/sim}"
RUSTFLAGS="--cfg tokio_unstable" cargo build -p switchyard-sim --release --locked --quiet

mkdir -p "$out_dir"
summary="$out_dir/summary-$first-$last.txt"
echo "nightly: seeds $first..$last, $jobs jobs, summary in $summary"
status=0
CI=1 timeout "$timeout_s" "$CARGO_TARGET_DIR/release/switchyard-sim" explore \
  --seeds "$first..$last" --jobs "$jobs" --summary "$summary" || status=$?
if [ "$status" -eq 124 ]; then
  echo "nightly: stopped after $timeout_s s of wall time; no summary for the seeds not run" >&2
  exit 3
fi
exit "$status"
