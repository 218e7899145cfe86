# Sourced by run.sh and test.sh: makes .venv and installs the project into it (idempotent).
# Usage: source scripts/setup.sh [EXTRAS]   e.g. "test"
#
# The interpreter: $PYTHON if set, else the newest one that actually starts of python3.13,
# python3.12 (on PATH, or installed by pyenv even where its shim refuses to run) and python3
# (3.11 at least). A .venv made with another interpreter is made anew.
set -euo pipefail

_python_works() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

_pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        _python_works "$PYTHON" || { echo "PYTHON=$PYTHON does not run Python 3.11+" >&2; return 1; }
        echo "$PYTHON"
        return
    fi
    local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv} candidate
    for candidate in python3.13 "$pyenv_root"/versions/3.13*/bin/python3.13 \
                     python3.12 "$pyenv_root"/versions/3.12*/bin/python3.12 python3; do
        if _python_works "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    echo "no Python 3.11 or newer found; set PYTHON=/path/to/python3" >&2
    return 1
}

_version_of() {
    "$1" -c 'import sys; print(sys.version.split()[0])'
}

PYTHON=$(_pick_python)
if [ -x .venv/bin/python ] && [ "$(_version_of .venv/bin/python)" != "$(_version_of "$PYTHON")" ]; then
    echo "scripts/setup.sh: .venv has Python $(_version_of .venv/bin/python); making it anew" \
         "with $PYTHON ($(_version_of "$PYTHON"))"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
extras=${1:-}
spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp=".venv/.installed-${extras:-base}"
# Reinstall only when the dependency list changed: a second run starts at once.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e "$spec"
    touch "$stamp"
fi
