#!/usr/bin/env bash
# Sets up the project on a fresh machine (a venv with its packages) and runs the chat system:
# the core (TCP port 9000) and the web gateway (http://127.0.0.1:8000/) together, sharing a
# gateway secret (a fresh random one unless CHAT_GATEWAY_SECRET is set). Ctrl-C or SIGTERM
# stops both. Each also runs alone: .venv/bin/chat-server and .venv/bin/chat-web (see README).
# CHAT_* variables configure the core (docs/operations.md); CHAT_WEB_PORT the gateway's port.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh ""  # an explicit (empty) extras argument: not run.sh's own arguments

if [ -z "${CHAT_GATEWAY_SECRET:-}" ]; then
    CHAT_GATEWAY_SECRET=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))')
fi
export CHAT_GATEWAY_SECRET
core_port=${CHAT_PORT:-9000}
web_port=${CHAT_WEB_PORT:-8000}

.venv/bin/chat-server &
core_pid=$!
.venv/bin/chat-web --core "127.0.0.1:$core_port" --port "$web_port" &
web_pid=$!

stop() {
    trap '' INT TERM  # once is enough: a second Ctrl-C must not cut the shutdown short
    kill -TERM "$web_pid" "$core_pid" 2>/dev/null || true
}
trap stop INT TERM

echo "chat core: nc 127.0.0.1 $core_port    web: open http://127.0.0.1:$web_port/ in a browser" \
     "(Ctrl-C stops both)"

# Whichever stops first (a signal, or an error such as a port in use) stops the other too.
status=0
wait -n "$core_pid" "$web_pid" || status=$?
stop
wait "$core_pid" || true
wait "$web_pid" || true
exit "$status"
