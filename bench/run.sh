#!/usr/bin/env bash
# Runs the benchmark on a fresh machine: sets up .venv (scripts/setup.sh), installs Debian's
# ngIRCd when missing (the reference server), then bench/run.py with any arguments given, e.g.
#   bash bench/run.sh --update-readme        # every load; puts the table into bench/README.md
#   bash bench/run.sh --loads 1,3            # some loads only
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh ""  # no extras; without an argument it would see ours (--loads ...)

if ! command -v ngircd >/dev/null 2>&1 && [ ! -x /usr/sbin/ngircd ]; then
    echo "installing Debian's ngircd (the reference IRC server)..."
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ngircd >/dev/null
fi
if ! command -v taskset >/dev/null 2>&1; then
    echo "taskset (util-linux) not found: servers and generator will not be pinned to cores" >&2
fi
exec .venv/bin/python bench/run.py "$@"
