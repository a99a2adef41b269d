#!/usr/bin/env bash
# Set up a development/demo checkout: mosquitto (if absent), .venv with edge-agent and its
# test tools, and the model binaries (from ../shared/models when present, else downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { log "Python 3.11+ is required ($("$PY" --version 2>&1))"; exit 1; }

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  log "installing mosquitto (broker used by the demo and the tests)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import edge_agent, pytest, ruff' >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  log "installing edge-agent with test extras into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  # supervision (a tracker the tests compare against) asks for opencv-python, which would shadow
  # opencv-python-headless: its other needs are in the test extra, so install it alone.
  .venv/bin/python -m pip install -q --no-deps 'supervision==0.26.*'
  # label-studio-sdk (the collector's tests validate tasks with it) pins an older OpenCV and
  # numpy: its other needs are in the test extra, so it is installed alone too.
  .venv/bin/python -m pip install -q --no-deps 'label-studio-sdk==2.1.*'
  touch .venv/.installed
fi

if [ -d ../shared/models ]; then
  .venv/bin/python scripts/fetch_models.py --from ../shared/models >/dev/null
else
  log "../shared/models not found: downloading models listed in models/manifest.json"
  .venv/bin/python scripts/fetch_models.py
fi
log "ready: $(.venv/bin/edge-agent --version)"
