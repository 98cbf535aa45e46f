#!/usr/bin/env bash
# The hostile-client load test (attack.py): slow-header, slow-body, connection-flood, HTTP/2
# unfinished-body and WebSocket-flood attackers against one gateway on loopback, beside a
# legitimate client at a fixed rate; fails unless the legitimate client keeps >= 99.9 %
# success and its p99 within 2x of its baseline, and the gateway's RSS stays under the bound
# derived from its limits.
#
#   testbeds/attack/run.sh              the full run: 4 rounds of 8 s baseline + 15 s attack (~105 s)
#   testbeds/attack/run.sh --smoke      2 rounds of 4 s + 9 s (~35 s once built; testbeds/test-all)
#   testbeds/attack/run.sh --only flood,slow-header --attack-s 20    see attack.py --help
#
# Installs its Python packages (h2, websockets) into the venv of the end-to-end tests through
# e2e.sh, builds the gateway and the Rust sample service (release; SWITCHYARD_ATTACK_BIN_DIR
# names a directory with both already built instead), and writes its results and the
# processes' logs to testbeds/.run/attack/<time>/.
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

log() { printf 'attack: %s\n' "$*" >&2; }

# The venv of the end-to-end tests (created and filled by e2e.sh, without building anything).
SWITCHYARD_BIN=unused E2E_PREPARE_ONLY=1 testbeds/e2e.sh

bin_dir="${SWITCHYARD_ATTACK_BIN_DIR:-}"
if [[ -z "$bin_dir" ]]; then
  log "building the gateway and the sample service (release)"
  cargo build --quiet --release --locked -p switchyard -p sample-service
  bin_dir="${CARGO_TARGET_DIR:-$root/target}/release"
fi

# Every child runs in this process group under `timeout`, so nothing outlives the run.
exec timeout --kill-after=10 "${ATTACK_TIMEOUT_S:-600}" \
  testbeds/.venv/bin/python testbeds/attack/attack.py --bin-dir "$bin_dir" "$@"
