#!/usr/bin/env bash
# The console's browser tests: Debian's Chromium, headless, driven by Playwright's Python client,
# against a real gateway and the Rust sample service (testbeds/console/test_console.py). They
# save a screenshot of each page to docs/console/.
#
#   testbeds/console/test.sh [pytest arguments...]
#
# First it rebuilds the console from gateway/console/ (npm ci, then the build into a scratch
# directory) and fails if the result differs from the committed gateway/console/dist/, which is
# what the gateway embeds: the committed files must be the build of the committed sources.
# That step needs Node 20.19 or later and npm (Vite's requirement); the gateway's own build
# needs neither.
#
# Installs what is missing: the chromium package with apt-get (as root), the end-to-end
# virtualenv and binaries (testbeds/e2e.sh with E2E_PREPARE_ONLY; SWITCHYARD_BIN and
# SAMPLE_SERVICE_BIN name prebuilt ones), and Playwright into that virtualenv. Playwright's own
# browser download is never run. Bounded by CONSOLE_TIMEOUT_S (default 300).
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
testbeds="$(dirname -- "$here")"
root="$(dirname -- "$testbeds")"
venv="$testbeds/.venv"
timeout_s="${CONSOLE_TIMEOUT_S:-300}"
export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"

log() { printf 'console: %s\n' "$*" >&2; }

console="$root/gateway/console"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "no node or npm: the committed console cannot be checked against its sources (Node >= 20.19)"
  exit 1
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a == 20 && b >= 19) ? 0 : 1)'; then
  log "node $(node --version) is too old for Vite: Node 20.19 or later is needed"
  exit 1
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
log "rebuilding the console and comparing it with gateway/console/dist"
(cd "$console" && npm ci --no-audit --no-fund --loglevel=error >/dev/null &&
  npx --no-install tsc --noEmit &&
  npx --no-install vite build --logLevel error --outDir "$scratch/dist" --emptyOutDir)
if ! diff -r "$console/dist" "$scratch/dist" >/dev/null; then
  diff -r "$console/dist" "$scratch/dist" | head -20 >&2 || true
  log "gateway/console/dist differs from a build of gateway/console/src: run"
  log "  (cd gateway/console && npm ci && npm run build) and commit the result"
  exit 1
fi

if [[ ! -x "$CHROMIUM_BIN" ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing chromium with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    log "no Chromium at $CHROMIUM_BIN: install Debian's chromium package (or set CHROMIUM_BIN)"
    exit 1
  fi
fi

# The virtualenv, the Python requirements and the binaries, as the end-to-end tests have them.
E2E_PREPARE_ONLY=1 "$testbeds/e2e.sh"
if [[ -z "${SWITCHYARD_BIN:-}" ]]; then
  target="${CARGO_TARGET_DIR:-$root/target}"
  [[ "$target" == /* ]] || target="$root/$target"
  export SWITCHYARD_BIN="$target/debug/switchyard"
  export SAMPLE_SERVICE_BIN="${SAMPLE_SERVICE_BIN:-$target/debug/sample-service}"
fi

stamp="$venv/.console-requirements.sha256"
want="$(sha256sum <"$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "installing Playwright into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$here/requirements.txt"
  printf '%s\n' "$want" >"$stamp"
fi

cd "$root"
export PYTHONDONTWRITEBYTECODE=1
log "running the browser tests (at most ${timeout_s} s)"
timeout --kill-after=10 "$timeout_s" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here" "$@"
