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
set -euo pipefail

SRC=${CHAT_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
ROOT=${CHAT_ROOT:-}
SERVICE_USER=${CHAT_USER:-chat}
APP_DIR="$ROOT/opt/chatroom"
ETC_DIR="$ROOT/etc/chatroom"
UNIT_DIR="$ROOT/etc/systemd/system"
ENV_FILE="$ETC_DIR/chatroom.env"

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

say "installing the unit files into $UNIT_DIR"
for unit in chat-core.service chat-web.service; do
    sed -e "s|/opt/chatroom|$APP_DIR|g" -e "s|/etc/chatroom|$ETC_DIR|g" \
        -e "s|^User=chat$|User=$SERVICE_USER|" -e "s|^Group=chat$|Group=$SERVICE_USER|" \
        "$APP_DIR/deploy/systemd/$unit" >"$UNIT_DIR/$unit"
    chmod 0644 "$UNIT_DIR/$unit"
done

if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    say "starting chat-core and chat-web"
    systemctl daemon-reload
    systemctl enable chat-core.service chat-web.service
    systemctl restart chat-core.service chat-web.service
    # A shell in the VM finds chat-client and friends without activating the venv.
    printf 'export PATH="%s/.venv/bin:$PATH"\n' "$APP_DIR" >/etc/profile.d/chatroom.sh
    say "core on port 9000, web on http://<this machine>:8000/"
else
    say "systemd is not running here (or CHAT_ROOT is set): services installed, not started"
fi
