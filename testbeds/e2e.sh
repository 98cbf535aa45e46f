#!/usr/bin/env bash
# End-to-end tests of Switchyard with real processes on loopback: the gateway, the Rust sample
# service and the Python sample service (testbeds/tests); Kafka, and Debian's redis-server for
# the revocation tests (testbeds/redis/redis.sh, installed with apt-get when missing and root).
#
#   testbeds/e2e.sh [pytest arguments...]      e.g. testbeds/e2e.sh -k failover -v
#
# 1. Creates the virtualenv testbeds/.venv (gitignored) if needed and installs the pinned
#    requirements into it; they are reinstalled only when a requirements file changes.
# 2. Builds the gateway and the Rust sample with cargo (into $CARGO_TARGET_DIR if set, after
#    build-deps.sh has checked the system packages the build needs), unless SWITCHYARD_BIN names
#    a prebuilt gateway (then SAMPLE_SERVICE_BIN names the sample, default
#    target/debug/sample-service).
# 3. Runs pytest on testbeds/tests, bounded by E2E_TIMEOUT_S seconds (default 600).
#
# Environment: PYTHON (interpreter for the venv, default python3), SWITCHYARD_BIN,
# SAMPLE_SERVICE_BIN, E2E_TIMEOUT_S, E2E_LOG_DIR (process logs, default
# testbeds/.run/e2e-logs), KAFKA_BOOTSTRAP (use that broker instead of starting one),
# E2E_PREPARE_ONLY (set up the venv and binaries, run nothing). Exits non-zero if any step or any test fails.
set -euo pipefail

testbeds="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname -- "$testbeds")"
venv="$testbeds/.venv"
python="${PYTHON:-python3}"
timeout_s="${E2E_TIMEOUT_S:-600}"
requirements=("$testbeds/services/python/requirements.txt" "$testbeds/requirements-test.txt")

log() { printf 'e2e: %s\n' "$*" >&2; }

venv_has_pip() { "$venv/bin/python" -m pip --version >/dev/null 2>&1; }

# Creates $venv with pip in it. `python3 -m venv` needs ensurepip, which Debian and Ubuntu ship
# apart, in python3-venv; without it, install that package (as root), else build the venv
# without pip and let the interpreter's own pip install pip into it.
make_venv() {
  rm -rf "$venv"
  if "$python" -m venv "$venv" >/dev/null 2>&1 && venv_has_pip; then
    return 0
  fi
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null &&
    [[ "$(command -v "$python")" == /usr/bin/* ]]; then
    log "python3 -m venv failed (no ensurepip); installing python3-venv with apt-get"
    local version
    version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python${version}-venv" ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv || true
    rm -rf "$venv"
    if "$python" -m venv "$venv" >/dev/null 2>&1 && venv_has_pip; then
      return 0
    fi
  fi
  if "$python" -m pip --version >/dev/null 2>&1; then
    log "python3 -m venv failed; creating the venv without pip and installing pip into it"
    rm -rf "$venv"
    "$python" -m venv --without-pip "$venv"
    # pip >= 22.3 can install into another interpreter's environment.
    "$python" -m pip --python "$venv/bin/python" install -q --disable-pip-version-check pip
    venv_has_pip && return 0
  fi
  log "cannot create a virtualenv with $python: install python3-venv (Debian, Ubuntu) or pip"
  return 1
}

install_requirements() {
  local stamp="$venv/.requirements.sha256" want
  want="$(cat "${requirements[@]}" | sha256sum | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "installing the Python requirements into $venv"
  local args=()
  for file in "${requirements[@]}"; do args+=(-r "$file"); done
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input "${args[@]}"
  printf '%s\n' "$want" >"$stamp"
}

if [[ ! -x "$venv/bin/python" ]] || ! venv_has_pip; then
  log "creating the virtualenv $venv"
  make_venv
fi
install_requirements

# The TLS tests make their certificates with the openssl command (and the unit tests their RSA
# keys): install it where it is missing and we may.
if ! command -v openssl >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing openssl with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
  else
    log "warning: no openssl command; the TLS tests will fail"
  fi
fi

if [[ -z "${SWITCHYARD_BIN:-}" ]]; then
  "$testbeds/build-deps.sh"
  log "building the gateway and the Rust sample service"
  (cd "$root" && cargo build --quiet -p switchyard -p sample-service)
  # The binaries just built, wherever CARGO_TARGET_DIR puts them.
  target="${CARGO_TARGET_DIR:-$root/target}"
  [[ "$target" == /* ]] || target="$root/$target"
  export SWITCHYARD_BIN="$target/debug/switchyard"
  export SAMPLE_SERVICE_BIN="${SAMPLE_SERVICE_BIN:-$target/debug/sample-service}"
fi

# For other scripts that only need the venv and the binaries (the benchmarks).
if [[ -n "${E2E_PREPARE_ONLY:-}" ]]; then
  exit 0
fi

# pytest runs in the background under `timeout`, which puts it, and the gateway and services
# it starts, in a process group of their own and ends the whole group when time runs out.
# Ctrl-C or SIGTERM to this script ends that group too, so nothing is left behind.
cd "$root"
export PYTHONDONTWRITEBYTECODE=1
log "running the end-to-end tests (at most ${timeout_s} s)"
timeout --kill-after=10 "$timeout_s" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider testbeds/tests "$@" &
pytest_pid=$!
trap 'kill -TERM "$pytest_pid" 2>/dev/null || true' INT TERM
status=0
while true; do
  wait "$pytest_pid" && status=0 || status=$?
  # `wait` also returns when a trapped signal arrives; go on waiting for pytest itself.
  kill -0 "$pytest_pid" 2>/dev/null || break
done
trap - INT TERM
if [[ "$status" == 124 ]]; then
  log "the tests did not finish within ${timeout_s} s"
fi
exit "$status"
