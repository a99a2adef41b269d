#!/usr/bin/env bash
# Check the `legacy` install (tflite-runtime with numpy<2) against the project venv (LiteRT):
# the shared images through every shared detector, over a real broker, compared by
# scripts/compare_detections.py: same labels; boxes IoU >= 0.9 or every corner within 0.025 of
# the frame; scores within 0.06. The two runtimes' int8 kernels round differently: scores move by
# up to a few output quantization steps, and NMS may keep another box of a cluster (listed as
# excused, see compare_detections.py); the float BlazeFace model comes out identical.
#
#   scripts/legacy-check.sh [--exact] [--cache DIR] [--report FILE] [--keep]
#
# --exact runs both with `model.exact: true` (reference kernels, exact resize) and requires
# the same detections: same labels, IoU >= 0.99, scores within 0.01 (they come out identical).
#
# The legacy venv is cached (DIR/legacy-venv-<hash of pyproject.toml>, DIR defaults to
# /var/cache/edge-agent when writable, else ~/.cache/edge-agent); building it needs PyPI.
# ai-edge-litert is a runtime dependency on x86_64 and aarch64 and comes first in the agent's
# runtime order, so it is uninstalled from that venv: the agent then loads tflite_runtime. The
# agent runs from this working tree (PYTHONPATH) on the venv's dependencies.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${EDGE_AGENT_SHARED:-$(dirname "$SRC")/shared}
PROJECT_PY=$SRC/.venv/bin/python
CACHE=/var/cache/edge-agent
[ -w "$(dirname "$CACHE")" ] || [ -w "$CACHE" ] || CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent
KEEP=0 WORK="" BROKER_PID="" REPORT="" EXACT=()

log() { printf '[legacy] %s\n' "$*" >&2; }
die() { printf '[legacy] error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --cache) [ $# -ge 2 ] || die "--cache needs a value"; CACHE=$2; shift 2 ;;
      --report) [ $# -ge 2 ] || die "--report needs a value"; REPORT=$2; shift 2 ;;
      --keep) KEEP=1; shift ;;
      --exact) EXACT=(--exact); shift ;;
      -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown option: $1" ;;
    esac
  done
}

cleanup() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; fi
  [ -n "$WORK" ] || return 0
  if [ "$KEEP" -eq 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

# The legacy venv: `pip install '.[legacy]'` from a copy of the tree (no build/ left in it),
# then ai-edge-litert removed. Built under a .partial name, so a failed build is never reused.
# ($1: final path; the venv is made there, a stamp file marks it complete.)
build_venv() {
  local venv=$1 copy=$WORK/src
  mkdir -p "$copy"
  git -c safe.directory="$SRC" -C "$SRC" ls-files -co --exclude-standard -z \
    | (cd "$SRC" && while IFS= read -r -d '' f; do
         if [ -e "$f" ]; then printf '%s\0' "$f"; fi
       done) \
    | tar -C "$SRC" --null -T - -cf - | tar -C "$copy" -xf -
  rm -rf "$venv"
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${copy}[legacy]" >&2
  "$venv/bin/pip" uninstall -y -q ai-edge-litert >&2 || true
  "$venv/bin/python" - <<'EOF' >&2
import importlib.util, numpy, tflite_runtime
assert numpy.__version__ < "2", numpy.__version__
assert importlib.util.find_spec("ai_edge_litert") is None, "ai-edge-litert still installed"
print("legacy venv: numpy", numpy.__version__, "tflite_runtime", tflite_runtime.__version__)
EOF
  touch "$venv/.edge-agent-legacy"
}

start_broker() {
  PORT=$("$PROJECT_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local mosquitto
  mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$PORT" >"$WORK/mosquitto.conf"
  "$mosquitto" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
  BROKER_PID=$!
  local _
  for _ in $(seq 50); do
    if "$PROJECT_PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "mosquitto did not start (log: $WORK/mosquitto.log)"
}

collect() {  # collect NAME PYTHON
  log "running the shared detectors with $1"
  PYTHONPATH=$SRC "$PROJECT_PY" "$SRC/scripts/compare_detections.py" collect \
    --agent "$2 -m edge_agent" --port "$PORT" --out "$WORK/$1.json" \
    --models "$SHARED/models" --media "$SHARED/media" --work "$WORK/$1" "${EXACT[@]}"
}

main() {
  parse_args "$@"
  [ -x "$PROJECT_PY" ] || die "no project venv at $SRC/.venv (scripts/setup.sh)"
  command -v python3.11 >/dev/null || die "python3.11 is needed (tflite-runtime has cp311 wheels)"
  local key venv start total cached=reused t_venv
  total=$(now)
  key=$(sha256sum "$SRC/pyproject.toml" | cut -c1-12)
  venv=$CACHE/legacy-venv-$key
  WORK=$(mktemp -d /tmp/edge-agent-legacy.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$CACHE"
  [ -n "$REPORT" ] || REPORT=$WORK/report.json
  start=$(now)
  if [ ! -f "$venv/.edge-agent-legacy" ]; then
    cached=built
    log "building $venv (pip install '.[legacy]', then pip uninstall ai-edge-litert)"
    build_venv "$venv"
  fi
  t_venv=$(since "$start")
  log "legacy venv $venv ($cached in $t_venv s)"
  start_broker
  start=$(now)
  collect litert "$PROJECT_PY"
  collect legacy "$venv/bin/python"
  log "agent runs took $(since "$start") s"
  local rc=0 bounds=(--min-iou 0.9 --box-tol 0.025 --score-tol 0.06)
  if [ ${#EXACT[@]} -gt 0 ]; then bounds=(--min-iou 0.99 --score-tol 0.01); fi
  "$PROJECT_PY" "$SRC/scripts/compare_detections.py" compare "$WORK/litert.json" \
    "$WORK/legacy.json" "${bounds[@]}" --report "$REPORT" --runtime-b tflite_runtime.interpreter \
    || rc=$?
  log "summary: legacy venv $cached in $t_venv s; total $(since "$total") s; report $REPORT"
  return "$rc"
}

main "$@"
