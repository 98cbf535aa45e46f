#!/usr/bin/env bash
# Runs the convergence benchmark (see convergence.py) with the e2e virtualenv and a fresh
# broker. Arguments go to convergence.py, e.g. --registrations 1000.
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
E2E_PREPARE_ONLY=1 testbeds/e2e.sh
exec testbeds/.venv/bin/python testbeds/bench/convergence.py "$@"
