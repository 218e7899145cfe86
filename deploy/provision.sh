#!/usr/bin/env bash
# Installs the chatroom as two systemd services: the README's set-up (scripts/setup.sh, a venv
# with the project in it) in /opt/chatroom, a random gateway secret in /etc/chatroom, and the
# unit files of deploy/systemd. The Vagrantfile runs it as root in a Debian VM; run it again
# at any time (it keeps the secret and only reinstalls what changed).
#
# Environment (the defaults install for real):
#   CHAT_SRC       the repository to install from              (default: this script's repo)
#   CHAT_ROOT      a directory to install under instead of /   (default: empty, i.e. /)
#                  With CHAT_ROOT set, no user is created, nothing is chown'ed and systemctl
#                  is not called: that is how the tests run this script in a scratch directory.
#   CHAT_USER      the service user                             (default: chat)
#   CHAT_SKIP_APT  1: do not apt-get the system packages        (default: 0)
#   CHAT_NODES     2: two core nodes (chat-core@9000, chat-core@9001) sharing one room through
#                  Debian's redis-server on this machine, instead of one chat-core
#                  (default: 1; docs/operations.md, "Several nodes: Redis")
set -euo pipefail

SRC=${CHAT_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
ROOT=${CHAT_ROOT:-}
SERVICE_USER=${CHAT_USER:-chat}
APP_DIR="$ROOT/opt/chatroom"
ETC_DIR="$ROOT/etc/chatroom"
UNIT_DIR="$ROOT/etc/systemd/system"
ENV_FILE="$ETC_DIR/chatroom.env"
NODES_ENV="$ETC_DIR/nodes.env"
NODES=${CHAT_NODES:-1}
case "$NODES" in 1|2) ;; *) echo "provision: CHAT_NODES must be 1 or 2" >&2; exit 1 ;; esac

say() { echo "provision: $*"; }

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "provision: run as root (or set CHAT_ROOT to install into a directory)" >&2
    exit 1
fi

if [ "${CHAT_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null; then
    say "installing Python, venv and netcat"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv python3-pip netcat-openbsd >/dev/null
    if [ "$NODES" = 2 ]; then
        say "installing redis-server (two nodes share one room through it)"
        apt-get install -y -qq redis-server >/dev/null
    fi
fi

if [ -z "$ROOT" ] && ! id "$SERVICE_USER" >/dev/null 2>&1; then
    say "creating the service user $SERVICE_USER"
    useradd --system --home-dir /opt/chatroom --no-create-home --shell /usr/sbin/nologin \
        "$SERVICE_USER"
fi

say "copying $SRC to $APP_DIR"
mkdir -p "$APP_DIR" "$ETC_DIR" "$UNIT_DIR"
# The working tree without local state: the venv is rebuilt here, for these paths.
tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./test-results \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache \
    --exclude='*.egg-info' -cf - . | tar -C "$APP_DIR" -xf -

say "setting up the venv (scripts/setup.sh, as in the README)"
(cd "$APP_DIR" && bash -c 'source scripts/setup.sh')

if [ ! -s "$ENV_FILE" ]; then
    say "generating the gateway secret in $ENV_FILE"
    secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
    (umask 077 && printf 'CHAT_GATEWAY_SECRET=%s\n' "$secret" >"$ENV_FILE")
fi
chmod 0600 "$ENV_FILE"
if [ -z "$ROOT" ]; then
    chown "$SERVICE_USER:$SERVICE_USER" "$ENV_FILE"  # readable by the service user only
fi

install_unit() {  # install_unit SOURCE TARGET: with this installation's paths and user
    sed -e "s|/opt/chatroom|$APP_DIR|g" -e "s|/etc/chatroom|$ETC_DIR|g" \
        -e "s|^User=chat$|User=$SERVICE_USER|" -e "s|^Group=chat$|Group=$SERVICE_USER|" \
        "$APP_DIR/deploy/systemd/$1" >"$2"
    chmod 0644 "$2"
}
say "installing the unit files into $UNIT_DIR"
for unit in chat-core.service chat-web.service; do
    install_unit "$unit" "$UNIT_DIR/$unit"
done
if [ "$NODES" = 2 ]; then
    install_unit chat-core@.service "$UNIT_DIR/chat-core@.service"
    mkdir -p "$UNIT_DIR/chat-web.service.d"
    install_unit chat-web-nodes.conf "$UNIT_DIR/chat-web.service.d/nodes.conf"
    if [ ! -s "$NODES_ENV" ]; then
        (umask 077 && printf 'CHAT_REDIS=redis://127.0.0.1:6379/0\n' >"$NODES_ENV")
    fi
    chmod 0600 "$NODES_ENV"
    [ -z "$ROOT" ] && chown "$SERVICE_USER:$SERVICE_USER" "$NODES_ENV"
else
    rm -f "$UNIT_DIR/chat-web.service.d/nodes.conf"
fi

if [ -z "$ROOT" ] && [ -d /run/systemd/system ] && [ "$NODES" = 2 ]; then
    say "redis: append-only file, fsync every second (an acknowledged message survives a crash)"
    systemctl enable --now redis-server.service
    redis-cli CONFIG SET appendonly yes >/dev/null
    redis-cli CONFIG SET appendfsync everysec >/dev/null
    redis-cli CONFIG REWRITE >/dev/null
    say "starting chat-core@9000, chat-core@9001 and chat-web"
    systemctl daemon-reload
    systemctl disable --now chat-core.service 2>/dev/null || true
    systemctl enable chat-core@9000.service chat-core@9001.service chat-web.service
    systemctl restart chat-core@9000.service chat-core@9001.service chat-web.service
    printf 'export PATH="%s/.venv/bin:$PATH"\n' "$APP_DIR" >/etc/profile.d/chatroom.sh
    say "nodes on ports 9000 and 9001, web on http://<this machine>:8000/"
elif [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    say "starting chat-core and chat-web"
    systemctl daemon-reload
    systemctl disable --now chat-core@9000.service chat-core@9001.service 2>/dev/null || true
    systemctl enable chat-core.service chat-web.service
    systemctl restart chat-core.service chat-web.service
    # A shell in the VM finds chat-client and friends without activating the venv.
    printf 'export PATH="%s/.venv/bin:$PATH"\n' "$APP_DIR" >/etc/profile.d/chatroom.sh
    say "core on port 9000, web on http://<this machine>:8000/"
else
    say "systemd is not running here (or CHAT_ROOT is set): services installed, not started"
fi
