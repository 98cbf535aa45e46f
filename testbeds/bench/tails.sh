#!/usr/bin/env bash
# Honest tails, every core, and memory (issue 18; see tails.py and docs/benchmarks.md):
#
#   testbeds/bench/tails.sh                                  all four parts, 3 rounds (about 25 minutes)
#   testbeds/bench/tails.sh --parts tails --repeats 5        the open-loop tail latencies only
#   testbeds/bench/tails.sh --parts parallel --pairs 12      two threads on one core, then two, in one process
#   testbeds/bench/tails.sh --parts memory --allocators      memory, and both allocators measured
#   testbeds/bench/tails.sh --smoke                          every part but scaling, briefly
#
# Uses the proxies and tools that proxies.sh installs (nginx, Envoy in testbeds/.venv or ENVOY_BIN,
# oha): run `testbeds/bench/proxies.sh --smoke` once on a fresh machine. tails.py needs only
# Python's standard library. Builds the gateway, the sample
# service and the bench tools (the `dist` profile, the shipped build; debug with --smoke;
# BENCH_PROFILE names another, e.g. release) into
# $CARGO_TARGET_DIR (default target/). With --allocators, also a gateway without the mimalloc
# feature (the system allocator), copied to switchyard-system-alloc beside the others.
# Results: testbeds/.run/bench/tails-<time>/.
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

log() { printf 'tails: %s\n' "$*" >&2; }

profile="${BENCH_PROFILE:-}"
allocators=0
args=()
for arg in "$@"; do
  case "$arg" in
    --allocators) allocators=1 ;;
    *) args+=("$arg") ;;
  esac
  [[ -z "${BENCH_PROFILE:-}" && "$arg" == --smoke ]] && profile=debug
done
profile="${profile:-dist}"

nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
# Envoy from proxies.sh's venv, unless ENVOY_BIN names one.
venv="$root/testbeds/.venv"
envoy_bin="${ENVOY_BIN:-$("$venv/bin/python" -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")' 2>/dev/null || true)}"
oha_bin="$(command -v oha || echo "${CARGO_HOME:-$HOME/.cargo}/bin/oha")"
for tool in "$nginx_bin" "$envoy_bin" "$oha_bin"; do
  if [[ -z "$tool" || ! -x "$tool" ]]; then
    log "nginx, Envoy or oha is missing: run testbeds/bench/proxies.sh --smoke once, which installs them"
    exit 1
  fi
done
command -v taskset >/dev/null || { log "taskset (util-linux) is missing"; exit 1; }

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"
source "$root/testbeds/bench/cargo-profile.sh"
bench_profile "$profile"
extra=()
if (( allocators )); then
  log "building the gateway without mimalloc (the system allocator)"
  cargo build --quiet --locked "${profile_flag[@]}" -p switchyard --no-default-features --features kafka,demo
  cp "$target_dir/$profile/switchyard" "$target_dir/$profile/switchyard-system-alloc"
  extra=(--system-alloc-bin "$target_dir/$profile/switchyard-system-alloc")
fi
log "building the gateway, the sample service and the bench tools ($profile)"
cargo build --quiet --locked "${profile_flag[@]}" -p switchyard -p sample-service -p switchyard-bench

exec python3 testbeds/bench/tails.py --bin-dir "$target_dir/$profile" \
  --envoy "$envoy_bin" --oha "$oha_bin" --nginx "$nginx_bin" "${extra[@]}" "${args[@]}"
