#!/usr/bin/env bash
# Sets up the project on a fresh machine (a venv with its packages) and runs the chat system:
# the core (TCP port 9000) and the web gateway (http://127.0.0.1:8000/) together, sharing a
# gateway secret (a fresh random one unless CHAT_GATEWAY_SECRET is set). Ctrl-C or SIGTERM
# stops everything. Each also runs alone: .venv/bin/chat-server and .venv/bin/chat-web (see
# README). CHAT_* variables configure the core (docs/operations.md); CHAT_WEB_PORT the
# gateway's port.
#
# CHAT_NODES=2: two core nodes sharing one room through Redis instead (docs/operations.md,
# "Several nodes: Redis"): a redis-server of its own on CHAT_REDIS_PORT (default 6380) with
# its data in a temporary directory (removed at the end), nodes on CHAT_PORT and CHAT_PORT+1
# (9000, 9001), and one gateway spreading browsers over both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh ""  # an explicit (empty) extras argument: not run.sh's own arguments

if [ -z "${CHAT_GATEWAY_SECRET:-}" ]; then
    CHAT_GATEWAY_SECRET=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))')
fi
export CHAT_GATEWAY_SECRET
core_port=${CHAT_PORT:-9000}
web_port=${CHAT_WEB_PORT:-8000}
nodes=${CHAT_NODES:-1}
pids=()
redis_dir=""

stop() {
    trap '' INT TERM  # once is enough: a second Ctrl-C must not cut the shutdown short
    # The gateway and the nodes first (they tell Redis their users are away), Redis last.
    if [ "${#pids[@]}" -gt 0 ]; then
        kill -TERM "${pids[@]:1}" 2>/dev/null || true
        for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
        if [ "${pids[0]}" != 0 ]; then
            kill -TERM "${pids[0]}" 2>/dev/null || true
            wait "${pids[0]}" 2>/dev/null || true
        fi
    fi
    [ -n "$redis_dir" ] && rm -rf "$redis_dir"
}
trap stop INT TERM

case "$nodes" in
1)
    pids+=(0)  # no Redis
    .venv/bin/chat-server &
    pids+=($!)
    .venv/bin/chat-web --core "127.0.0.1:$core_port" --port "$web_port" &
    pids+=($!)
    echo "chat core: nc 127.0.0.1 $core_port    web: open http://127.0.0.1:$web_port/ in a" \
         "browser (Ctrl-C stops both)"
    ;;
2)
    if ! command -v redis-server >/dev/null; then
        echo "run.sh: CHAT_NODES=2 needs Debian's redis-server: apt-get install redis-server" >&2
        exit 2
    fi
    redis_port=${CHAT_REDIS_PORT:-6380}
    redis_dir=$(mktemp -d -t chatroom-redis-XXXXXX)
    # In a session of its own: Ctrl-C (the whole foreground group) must not stop Redis before
    # the nodes have told it that their users are away; stop() ends it last.
    setsid redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$redis_dir" --save '' \
        --appendonly yes --appendfsync everysec --logfile "$redis_dir/redis.log" &
    pids+=($!)
    for _ in $(seq 50); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    url="redis://127.0.0.1:$redis_port/0"
    second=$((core_port + 1))
    CHAT_PORT=$core_port .venv/bin/chat-server --redis "$url" --node-id node1 &
    pids+=($!)
    CHAT_PORT=$second .venv/bin/chat-server --redis "$url" --node-id node2 &
    pids+=($!)
    .venv/bin/chat-web --core "127.0.0.1:$core_port,127.0.0.1:$second" --port "$web_port" &
    pids+=($!)
    echo "chat nodes: nc 127.0.0.1 $core_port or $second (redis on $redis_port)    web: open" \
         "http://127.0.0.1:$web_port/ in a browser (Ctrl-C stops all)"
    ;;
*)
    echo "run.sh: CHAT_NODES must be 1 or 2, not $nodes" >&2
    exit 2
    ;;
esac

# Whichever stops first (a signal, or an error such as a port in use) stops the others too.
status=0
live=()
for pid in "${pids[@]}"; do [ "$pid" != 0 ] && live+=("$pid"); done
wait -n "${live[@]}" || status=$?
stop
exit "$status"
