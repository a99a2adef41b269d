#!/usr/bin/env bash
# Test-only: a separate venv holding Home Assistant, whose own MQTT discovery schemas validate
# the discovery payloads edge-agent publishes (tests/test_homeassistant.py). Never part of the
# runtime install. Built once and cached outside the repository; prints the venv's python.
#
#   EDGE_AGENT_HA_VENV     where the venv lives (default /var/cache/edge-agent/ha-venv when
#                          writable, else ~/.cache/edge-agent/ha-venv)
#   EDGE_AGENT_HA_VERSION  the homeassistant release (default below)
set -euo pipefail

# 2024.3.x is the last Home Assistant release that installs on Python 3.11.
HA_VERSION=${EDGE_AGENT_HA_VERSION:-2024.3.3}
PY=${PYTHON:-python3}
log() { printf '\033[1m[ha-venv]\033[0m %s\n' "$*" >&2; }

if [ -n "${EDGE_AGENT_HA_VENV:-}" ]; then
  dir=$EDGE_AGENT_HA_VENV
elif mkdir -p /var/cache/edge-agent 2>/dev/null && [ -w /var/cache/edge-agent ]; then
  dir=/var/cache/edge-agent/ha-venv
else
  dir=${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent/ha-venv
fi
mkdir -p "$(dirname "$dir")"
marker="$dir/.edge-agent-homeassistant-$HA_VERSION"

# One builder at a time; a build that was interrupted has no marker and starts over.
exec 9>"$dir.lock"
flock 9
if [ ! -f "$marker" ]; then
  log "building $dir with homeassistant==$HA_VERSION (once; about 3 minutes)"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --no-compile \
    "homeassistant==$HA_VERSION" >&2
  "$dir/bin/python" -c 'import homeassistant.components.mqtt.discovery' >&2
  touch "$marker"
fi
echo "$dir/bin/python"
