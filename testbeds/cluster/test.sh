#!/usr/bin/env bash
# The cluster scenarios end to end: testbeds/cluster/cluster.sh up, the scenario tests in
# testbeds/cluster/tests (pytest), then cluster.sh down, which always runs (also after a
# failure, Ctrl-C or SIGTERM). Each scenario prints its figures and writes them to
# testbeds/.run/cluster/results.json, which this script prints at the end.
#
#   testbeds/cluster/test.sh [pytest arguments...]      e.g. testbeds/cluster/test.sh -k eviction
#
# Environment: CLUSTER_TEST_TIMEOUT_S bounds the scenarios (default 420 s); SWITCHYARD_BIN and
# SAMPLE_SERVICE_BIN use prebuilt binaries (testbeds/test-all passes the debug builds the
# end-to-end step made); the CLUSTER_* settings of cluster.sh apply.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
testbeds="$(dirname -- "$here")"
root="$(dirname -- "$testbeds")"
run="${CLUSTER_RUN_DIR:-$testbeds/.run/cluster}"
timeout_s="${CLUSTER_TEST_TIMEOUT_S:-420}"
started=$SECONDS

log() { printf 'cluster-test: %s\n' "$*" >&2; }

pytest_pid=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$pytest_pid" ]] && kill -0 "$pytest_pid" 2>/dev/null; then
    kill -TERM "$pytest_pid" 2>/dev/null || true
    wait "$pytest_pid" 2>/dev/null || true
  fi
  "$here/cluster.sh" down || status=1
  if [[ -f "$run/results.json" ]]; then
    log "figures (also in $run/results.json):"
    cat "$run/results.json" >&2
  fi
  log "finished in $((SECONDS - started)) s with status $status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$here/cluster.sh" down >/dev/null 2>&1 || true # a cluster left from an interrupted run
"$here/cluster.sh" up
log "cluster up after $((SECONDS - started)) s; running the scenarios (at most $timeout_s s)"

cd "$root"
export PYTHONDONTWRITEBYTECODE=1
# In the background, so that a signal to this script runs the trap at once.
timeout --kill-after=10 "$timeout_s" \
  "$testbeds/.venv/bin/python" -m pytest -q -p no:cacheprovider -s testbeds/cluster/tests "$@" &
pytest_pid=$!
status=0
wait "$pytest_pid" || status=$?
pytest_pid=""
if [[ "$status" == 124 ]]; then
  log "the scenarios did not finish within $timeout_s s"
fi
exit "$status"
