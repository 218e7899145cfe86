#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine (venv, packages, Debian's chromium for
# the browser tests) and runs the whole suite: lint, types, unit, integration and end-to-end.
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

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
