#!/usr/bin/env bash
# Sets up the project on a fresh machine (a venv with its packages) and runs the chat core.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/chat-server "$@"
