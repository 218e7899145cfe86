#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine (venv, packages, Debian's chromium for
# the browser tests, Debian's redis-server for the multi-node tests) and runs the whole suite:
# lint, types, unit, integration and end-to-end.
# Extra arguments go to pytest, e.g. scripts/test.sh -k protocol
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test

if [ -z "${CHROMIUM_PATH:-}" ] && ! command -v chromium >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests..."
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing Debian's redis-server for the multi-node tests (never run as a service)..."
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    # The tests start their own redis-server on free ports: the package's service is not used.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

.venv/bin/ruff check .
.venv/bin/mypy
# Two pytest workers (pytest-xdist), each taking a whole test file at a time (module fixtures
# such as a provisioned venv are made once): most tests wait on sockets, processes and browsers,
# so two overlap well on two cores (a full run on one host: 1,108 s alone, 651 s with two).
# TEST_WORKERS=0 runs everything in this one process (a debugger, pdb, print-debugging).
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
