# shellcheck shell=bash
# Installs what clearmount's tests and demo need; sourced by scripts/test and scripts/demo
# (and scripts/bench, which also runs install_bench_ml).
# Idempotent and quiet when nothing changed. Works as root on a fresh Debian machine.
#
#   ROOT       the repository (set by the caller)
#   VENV       the virtualenv to use/create            (default $ROOT/.venv)
#   PYTHON     the interpreter that creates it         (default python3)
#   CLEARMOUNT_NODE_DIR  where azurite is npm-installed (default $ROOT/.cache/node)

: "${ROOT:?ROOT must be set before sourcing install.sh}"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
CLEARMOUNT_NODE_DIR="${CLEARMOUNT_NODE_DIR:-$ROOT/.cache/node}"
export VENV CLEARMOUNT_NODE_DIR

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config attr nginx)
# pyfuse3 ships only a source archive: pip compiles it (--no-install-recommends skips libc6-dev)
APT_PACKAGES+=(gcc libc6-dev python3-dev python3-venv)

_say() { printf '[install] %s\n' "$*" >&2; }

_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

install_apt() {
    local wanted=("${APT_PACKAGES[@]}") missing=() pkg
    command -v npm >/dev/null 2>&1 || wanted+=(nodejs npm)
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    _say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    _sudo apt-get update -qq
    _sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        _say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" - <<'EOF' || { _say "Python >= 3.11 is required for $VENV"; return 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
EOF
    local stamp="$VENV/.clearmount-install" want
    want="$(_hash "$ROOT/pyproject.toml") $("$VENV/bin/python" -c 'import sys; print(sys.version)' | head -1) $ROOT"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$VENV/bin/python" -c 'import clearmount, pytest, boto3' >/dev/null 2>&1; then
        return 0
    fi
    _say "pip install -e .[test] into $VENV"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    printf '%s' "$want" >"$stamp"
}

install_node() {
    local src="$ROOT/scripts/node/package.json" dir="$CLEARMOUNT_NODE_DIR"
    local stamp="$dir/.clearmount-install" want
    want="$(_hash "$src") $(node --version 2>/dev/null)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && [ -x "$dir/node_modules/.bin/azurite-blob" ]; then
        return 0
    fi
    _say "npm install azurite into $dir"
    mkdir -p "$dir"
    cp "$src" "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --no-update-notifier --loglevel=error >/dev/null)
    [ -x "$dir/node_modules/.bin/azurite-blob" ] || { _say "azurite-blob missing after npm install"; return 1; }
    printf '%s' "$want" >"$stamp"
}

# The benchmark's ML rows only (scripts/bench calls it; scripts/test never does): torch's CPU
# wheel pinned exactly, installed first so that nothing pulls another torch build, then
# safetensors and numpy. Skipped when the pinned torch and both are already installed.
TORCH_VERSION="2.13.0"
install_bench_ml() {
    if "$VENV/bin/python" - "$TORCH_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
version("safetensors"), version("numpy")
sys.exit(0 if version("torch").split("+")[0] == sys.argv[1] else 1)
EOF
    then
        return 0
    fi
    _say "pip install torch==$TORCH_VERSION, then safetensors numpy into $VENV (benchmark only)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q safetensors numpy
}

install_all() {
    install_apt
    install_venv
    install_node
}
