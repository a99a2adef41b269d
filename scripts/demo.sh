#!/usr/bin/env bash
# Quick-start demo: set up, then run the agent on a shared video against the local broker
# (127.0.0.1:1883) and print each detection message as it arrives.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

PORT=1883
STARTED_BROKER=""
if ! .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null; then
  echo "[demo] no broker on 127.0.0.1:$PORT: starting mosquitto for the demo" >&2
  MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  "$MOSQ" -p "$PORT" >/dev/null 2>&1 &
  STARTED_BROKER=$!
  sleep 1
fi
cleanup() { [ -n "$STARTED_BROKER" ] && kill "$STARTED_BROKER" 2>/dev/null; true; }
trap cleanup EXIT

# The subscriber runs until the agent publishes its offline status at the end of the replay.
.venv/bin/edge-agent watch --port "$PORT" --topic 'edge/demo-01/#' --until-offline --timeout 600 &
WATCH=$!
sleep 1
.venv/bin/edge-agent run --config configs/demo.yaml --log-level warning
wait "$WATCH"
echo "[demo] done: the agent processed the clip, delivered every message and exited." >&2
