#!/usr/bin/env bash
# Instructions per request of one or more gateway builds under callgrind (see profile.py).
#
#   testbeds/bench/profile.sh [--requests N] [--policies] [--layouts shared,per_core] [GATEWAY_BIN...]   default: the dist build's
#
# Compare two builds in one run: copy the older binary aside (cp target/dist/switchyard
# /tmp/switchyard-before), rebuild, then pass both. Installs valgrind (apt-get) when missing;
# needs oha, which proxies.sh installs. Builds the gateway and sample service with the `dist`
# profile (the shipped build; BENCH_PROFILE names another, e.g. release).
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
OHA_VERSION=1.16.0
if ! command -v valgrind >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
oha_bin="$(command -v oha || echo "$cargo_bin/oha")"
if [[ ! -x "$oha_bin" ]]; then
  echo "profile: oha is missing; testbeds/bench/proxies.sh installs it (oha $OHA_VERSION)" >&2
  exit 1
fi
source "$root/testbeds/bench/cargo-profile.sh"
bench_profile "${BENCH_PROFILE:-dist}"
cargo build --quiet --locked "${profile_flag[@]}" -p switchyard -p sample-service
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"
exec python3 testbeds/bench/profile.py --sample "$target_dir/$profile/sample-service" \
  --default-gateway "$target_dir/$profile/switchyard" --oha "$oha_bin" "$@"
