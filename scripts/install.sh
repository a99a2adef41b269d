#!/usr/bin/env bash
# Install edge-agent as a systemd service on Raspberry Pi OS Bookworm / Debian 12 (arm64 or
# x86_64), from the checkout this script belongs to. Run as root; see --help. Every step
# prints one line saying what it did; a second run changes nothing and says "unchanged".
set -euo pipefail
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNIT_SRC=$SRC/systemd/edge-agent.service
UNIT_NAME=edge-agent.service
UNIT_DST=/etc/systemd/system/$UNIT_NAME
WANTS_LINK=/etc/systemd/system/multi-user.target.wants/$UNIT_NAME
VIDEO_GROUP=video
REQUIRED_PACKAGES=(python3-venv python3-pip)
# Debian's picamera2 matches the Pi's libcamera; the venv sees it through system site-packages.
OPTIONAL_PACKAGE=python3-picamera2

DRY_RUN=0 UNINSTALL=0 PURGE=0 NO_START=0 FROM="" EXAMPLE=""
UNIT_CHANGED=0 CODE_CHANGED=0 LOG="" BUILD_DIR=""

usage() {
  cat <<'EOF'
Usage: sudo scripts/install.sh [--from SPEC] [--example NAME] [--no-start] [--dry-run]
       sudo scripts/install.sh --uninstall [--purge] [--dry-run]

Installs edge-agent as a systemd service: apt packages (python3-venv, python3-pip, and
python3-picamera2 when apt has it), the system user edge-agent (group video), a venv with
--system-site-packages, the package, the models and labels found in the checkout, an example
config (never overwritten) and the unit; then enables and starts the service.

  --from SPEC     pip requirement to install instead of this checkout (a wheel, edge-agent==X)
  --example NAME  configs/NAME.yaml becomes the config (default: picamera2 on a Raspberry Pi,
                  else v4l2); used only when no config is present
  --no-start      do not enable or start the service
  --dry-run       print every step and its commands, change nothing (works without root)
  --uninstall     stop and disable the service, remove the unit, the venv and the models;
                  the config, the state directory (the outbox) and the user stay
  --purge         with --uninstall: also remove the config, the state directory and the user
  -h, --help      this help

Paths come from systemd/edge-agent.service (ExecStart, StateDirectory=, User=).
EOF
}

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'install.sh: %s (see --help)\n' "$*" >&2; exit 2; }
say() { printf '[%s] %s\n' "$1" "$2"; }
dry() { [ "$DRY_RUN" -eq 1 ]; }
plan() { printf '    $'; printf ' %q' "$@"; printf '\n'; }
plan_text() { printf '    $ %s\n' "$1"; }
# "would <plan>" in a dry run, else what was done: `say user "$(verb create created): ..."`.
verb() { if dry; then echo "would $1"; else echo "$2"; fi; }

# Run a command, or only print it in a dry run; output goes to the log (shown on failure).
run() {
  if dry; then plan "$@"; return 0; fi
  local rc=0
  "$@" >>"$LOG" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] && return 0
  tail -n 25 "$LOG" >&2
  die "command failed (exit $rc): $*  (full output: $LOG)"
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --from) [ $# -ge 2 ] || usage_error "--from needs a value"; FROM=$2; shift 2 ;;
      --example) [ $# -ge 2 ] || usage_error "--example needs a value"; EXAMPLE=$2; shift 2 ;;
      --no-start) NO_START=1; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      --uninstall) UNINSTALL=1; shift ;;
      --purge) PURGE=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) usage_error "unknown option: $1" ;;
    esac
  done
  if [ "$PURGE" -eq 1 ] && [ "$UNINSTALL" -eq 0 ]; then usage_error "--purge goes with --uninstall"; fi
  if [ "$UNINSTALL" -eq 1 ] && [ -n "$FROM$EXAMPLE" ]; then
    usage_error "--from and --example do not go with --uninstall"
  fi
  if [ -n "$EXAMPLE" ] && [ ! -f "$SRC/configs/$EXAMPLE.yaml" ]; then
    usage_error "--example $EXAMPLE: configs/$EXAMPLE.yaml not found"
  fi
  if [[ $FROM == */* || $FROM == *.whl ]] && [ ! -e "$FROM" ]; then
    usage_error "--from $FROM: no such file"
  fi
}

# The unit is the reference: the venv, config, state directory and user are read from it.
read_unit() {
  [ -f "$UNIT_SRC" ] || die "$UNIT_SRC not found: run the install.sh of an edge-agent checkout"
  local exec_start agent state_name
  exec_start=$(sed -n 's/^ExecStart=//p' "$UNIT_SRC" | head -n 1)
  agent=${exec_start%% *}
  [[ $agent == /*/bin/edge-agent ]] || die "$UNIT_SRC: ExecStart does not run <venv>/bin/edge-agent"
  VENV=${agent%/bin/edge-agent}
  APP_DIR=$(dirname "$VENV")
  CONFIG=$(sed -n 's/.* --config[ =]\([^ ]*\).*/\1/p' <<<"$exec_start")
  [[ $CONFIG == /*.yaml ]] || die "$UNIT_SRC: ExecStart has no absolute --config FILE.yaml"
  state_name=$(sed -n 's/^StateDirectory=//p' "$UNIT_SRC" | head -n 1)
  [[ $state_name =~ ^[a-z][a-z0-9-]*$ ]] || die "$UNIT_SRC: StateDirectory= missing or unusual"
  STATE=/var/lib/$state_name
  USER_NAME=$(sed -n 's/^User=//p' "$UNIT_SRC" | head -n 1)
  [ -n "$USER_NAME" ] || die "$UNIT_SRC: User= missing"
}

preflight() {
  if [ "$(id -u)" -ne 0 ] && ! dry; then
    die "run as root (sudo $0 ...), or add --dry-run to see the plan"
  fi
  local id version
  id=$(sed -n 's/^ID=//p' /etc/os-release 2>/dev/null | tr -d '"' || true)
  version=$(sed -n 's/^VERSION_ID=//p' /etc/os-release 2>/dev/null | tr -d '"' || true)
  if [ "$version" != 12 ] || { [ "$id" != debian ] && [ "$id" != raspbian ]; }; then
    printf 'install.sh: warning: made for Debian 12 / Raspberry Pi OS Bookworm, this is %s %s\n' \
      "${id:-unknown}" "${version:-?}" >&2
  fi
  case "$(uname -m)" in
    x86_64|aarch64) ;;
    *) printf 'install.sh: warning: %s has no ai-edge-litert wheels; see the legacy extra\n' \
         "$(uname -m)" >&2 ;;
  esac
  if ! dry; then LOG=$(mktemp /tmp/edge-agent-install.XXXXXX.log); fi
}

installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }
apt_has() { apt-cache policy "$1" 2>/dev/null | grep -q '^ *Candidate: [^(]'; }
is_pi() { grep -qas 'Raspberry Pi' /proc/device-tree/model || [ -f /etc/rpi-issue ]; }
systemd_running() { [ -d /run/systemd/system ]; }
in_group() { id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"; }
# Commands run from the venv write no .pyc files: a check must not change the installed tree.
venv_ok() { PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -c '' >/dev/null 2>&1; }

step_packages() {
  local missing=() pkg optional="" note=""
  for pkg in "${REQUIRED_PACKAGES[@]}"; do
    if ! installed "$pkg"; then missing+=("$pkg"); fi
  done
  if installed "$OPTIONAL_PACKAGE"; then note=" $OPTIONAL_PACKAGE"; fi
  if [ ${#missing[@]} -eq 0 ] && { [ -n "$note" ] || ! apt_has "$OPTIONAL_PACKAGE"; }; then
    [ -n "$note" ] || note=" ($OPTIONAL_PACKAGE: not in apt, skipped)"
    say packages "unchanged: ${REQUIRED_PACKAGES[*]}$note"
    return 0
  fi
  if dry; then
    say packages "would install: ${missing[*]} $OPTIONAL_PACKAGE (if apt has it)"
    plan apt-get update
    plan apt-get install -y --no-install-recommends "${missing[@]}" "$OPTIONAL_PACKAGE"
    return 0
  fi
  run apt-get update
  if [ -z "$note" ] && apt_has "$OPTIONAL_PACKAGE"; then optional=$OPTIONAL_PACKAGE; fi
  # shellcheck disable=SC2086  # $optional is one word or nothing
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}" $optional
  [ -n "$optional$note" ] || note=" ($OPTIONAL_PACKAGE: not in apt, skipped)"
  say packages "installed: ${missing[*]}${optional:+ $optional}$note"
}

step_group() {
  if getent group "$VIDEO_GROUP" >/dev/null; then
    say group "unchanged: $VIDEO_GROUP exists"
  else
    say group "$(verb create created): $VIDEO_GROUP"
    run groupadd --system "$VIDEO_GROUP"
  fi
}

step_user() {
  if ! getent passwd "$USER_NAME" >/dev/null; then
    local shell
    shell=$(command -v nologin || echo /usr/sbin/nologin)
    say user "$(verb create created): $USER_NAME (system, home $STATE, shell $shell, groups $VIDEO_GROUP)"
    run useradd --system --user-group --home-dir "$STATE" --no-create-home --shell "$shell" \
      --groups "$VIDEO_GROUP" --comment "edge-agent service" "$USER_NAME"
  elif in_group "$USER_NAME" "$VIDEO_GROUP"; then
    say user "unchanged: $USER_NAME exists, in $VIDEO_GROUP"
  else
    say user "$(verb add added): $USER_NAME to $VIDEO_GROUP"
    run usermod --append --groups "$VIDEO_GROUP" "$USER_NAME"
  fi
}

# The state directory holds the outbox. 0755 is the unit's StateDirectoryMode default: systemd
# warns about, and keeps, an existing directory of another mode.
step_state() {
  if [ -d "$STATE" ] && [ "$(stat -c %U:%G "$STATE")" = "$USER_NAME:$USER_NAME" ]; then
    say state "unchanged: $STATE owned by $USER_NAME"
  else
    say state "$(verb create created): $STATE (0755 $USER_NAME:$USER_NAME)"
    run install -d -m 0755 -o "$USER_NAME" -g "$USER_NAME" "$STATE"
  fi
}

step_venv() {
  if [ -f "$VENV/pyvenv.cfg" ] && venv_ok \
     && grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg"; then
    say venv "unchanged: $VENV (--system-site-packages)"
  elif [ -f "$VENV/pyvenv.cfg" ] && venv_ok; then
    # --upgrade rewrites pyvenv.cfg and keeps the installed packages.
    say venv "$(verb update updated): $VENV now sees system site-packages"
    run python3 -m venv --upgrade --system-site-packages "$VENV"
  else
    say venv "$(verb create created): $VENV (--system-site-packages)"
    if [ -e "$VENV" ]; then run rm -rf "$VENV"; fi
    run python3 -m venv --system-site-packages "$VENV"
  fi
}

# The files of the checkout that make the package (what pip builds from).
source_roots() {
  local name
  for name in pyproject.toml README.md LICENSE setup.cfg setup.py edge_agent; do
    if [ -e "$SRC/$name" ]; then printf '%s\n' "$name"; fi
  done
}

source_digest() {
  local roots
  mapfile -t roots < <(source_roots)
  (cd "$SRC" && find "${roots[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
     | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-64
}

# What would be installed, as one line: the spec and a digest of its content when local.
wanted_source() {
  if [ -z "$FROM" ]; then
    printf 'checkout %s sha256 %s\n' "$SRC" "$(source_digest)"
  elif [ -f "$FROM" ]; then
    printf 'file %s sha256 %s\n' "$FROM" "$(sha256sum <"$FROM" | cut -c1-64)"
  else
    printf 'spec %s\n' "$FROM"
  fi
}

step_package() {
  local wanted stamp=$VENV/.edge-agent-source
  wanted=$(wanted_source)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && venv_ok \
     && PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/edge-agent" --version >/dev/null 2>&1; then
    say package "unchanged: $(PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/edge-agent" --version) ($wanted)"
    return 0
  fi
  CODE_CHANGED=1
  say package "$(verb install installing): $wanted (pip)"
  local spec=$FROM
  if [ -z "$FROM" ]; then
    # pip builds in its source folder: build from a copy, leaving no root-owned build/ behind.
    local roots
    mapfile -t roots < <(source_roots)
    if dry; then
      spec=/tmp/edge-agent-src.XXXXXX
      plan_text "tar -C $SRC -cf - ${roots[*]} | tar -C $spec -xf -"
    else
      BUILD_DIR=$(mktemp -d /tmp/edge-agent-src.XXXXXX)
      spec=$BUILD_DIR
      tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - "${roots[@]}" \
        | tar -C "$spec" -xf -
    fi
  fi
  run "$VENV/bin/python" -m pip install --no-input --disable-pip-version-check "$spec"
  if dry; then plan_text "echo '$wanted' > $stamp"; else printf '%s\n' "$wanted" >"$stamp"; fi
}

# Model files found in the checkout (labels; binaries once scripts/fetch_models.py ran) are
# copied beside the venv, where the service can read them (ProtectHome hides /home).
step_models() {
  local dst=$APP_DIR/models
  if [ "$(realpath -m "$SRC")" = "$(realpath -m "$APP_DIR")" ]; then
    say models "unchanged: the checkout is $APP_DIR"
    return 0
  fi
  local rel files=() changed=()
  mapfile -t files < <(cd "$SRC/models" && find . -type f ! -name '*.part' | LC_ALL=C sort)
  for rel in "${files[@]}"; do
    if ! cmp -s "$SRC/models/$rel" "$dst/$rel"; then changed+=("${rel#./}"); fi
  done
  local hint=""
  if ! compgen -G "$SRC/models/*/*.tflite" >/dev/null; then
    hint="; no model binary in $SRC/models yet: run scripts/fetch_models.py, then install.sh"
  fi
  if [ ${#changed[@]} -eq 0 ]; then
    say models "unchanged: ${#files[@]} files in $dst$hint"
    return 0
  fi
  say models "$(verb copy copied): ${#changed[@]} of ${#files[@]} files to $dst$hint"
  for rel in "${changed[@]}"; do run install -D -m 0644 "$SRC/models/$rel" "$dst/$rel"; done
}

step_config() {
  if [ -e "$CONFIG" ]; then
    say config "unchanged: $CONFIG present (never overwritten)"
    return 0
  fi
  local name=${EXAMPLE:-v4l2}
  if [ -z "$EXAMPLE" ] && is_pi; then name=picamera2; fi
  local example=$SRC/configs/$name.yaml
  say config "$(verb create created): $CONFIG from configs/$name.yaml (0640 root:$USER_NAME; edit it)"
  run install -d -m 0755 "$(dirname "$CONFIG")"
  # The examples name models relative to configs/; the installed config points at the copies.
  if dry; then
    plan_text "sed 's#\.\./models/#$APP_DIR/models/#' $example > $CONFIG.new"
  else
    sed "s#\.\./models/#$APP_DIR/models/#" "$example" >"$CONFIG.new"
  fi
  run install -m 0640 -o root -g "$USER_NAME" "$CONFIG.new" "$CONFIG"
  run rm -f "$CONFIG.new"
}

step_unit() {
  if cmp -s "$UNIT_SRC" "$UNIT_DST"; then
    say unit "unchanged: $UNIT_DST"
    return 0
  fi
  local what=installed
  if [ -e "$UNIT_DST" ]; then what=updated; fi
  UNIT_CHANGED=1
  say unit "$(verb "install" "$what"): $UNIT_DST"
  run install -m 0644 "$UNIT_SRC" "$UNIT_DST"
}

step_service() {
  if ! systemd_running; then
    say service "skipped: systemd is not running (/run/systemd/system missing); on the device: systemctl enable --now $UNIT_NAME"
    return 0
  fi
  local actions=()
  if [ "$UNIT_CHANGED" -eq 1 ]; then run systemctl daemon-reload; actions+=(daemon-reload); fi
  if [ "$NO_START" -eq 1 ]; then
    say service "skipped: --no-start ${actions[*]}; start with: systemctl enable --now $UNIT_NAME"
    return 0
  fi
  if ! systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
    run systemctl enable "$UNIT_NAME"; actions+=(enable)
  fi
  if ! systemctl is-active --quiet "$UNIT_NAME"; then
    run systemctl start "$UNIT_NAME"; actions+=(start)
  elif [ $((UNIT_CHANGED + CODE_CHANGED)) -gt 0 ]; then
    run systemctl restart "$UNIT_NAME"; actions+=(restart)
  fi
  if [ ${#actions[@]} -eq 0 ]; then
    say service "unchanged: $UNIT_NAME enabled and active"
  else
    say service "$(verb run ran): systemctl ${actions[*]} $UNIT_NAME (then: systemctl status edge-agent)"
  fi
}

# Removing: one line per step too; "kept" for what stays, "unchanged" when already gone.
remove_path() {
  local step=$1 path=$2
  if [ -e "$path" ] || [ -L "$path" ]; then
    say "$step" "$(verb remove removed): $path"
    run rm -rf "$path"
  else
    say "$step" "unchanged: $path absent"
  fi
}

uninstall_service() {
  if systemd_running && { systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null \
       || systemctl is-active --quiet "$UNIT_NAME"; }; then
    say service "$(verb "stop and disable" "stopped and disabled"): $UNIT_NAME"
    run systemctl disable --now "$UNIT_NAME"
  elif [ -L "$WANTS_LINK" ]; then
    say service "$(verb disable disabled): $UNIT_NAME (systemd is not running)"
    run rm -f "$WANTS_LINK"
  else
    say service "unchanged: $UNIT_NAME not enabled"
  fi
}

uninstall() {
  uninstall_service
  local had_unit=0
  if [ -e "$UNIT_DST" ]; then had_unit=1; fi
  remove_path unit "$UNIT_DST"
  if [ "$had_unit" -eq 1 ] && systemd_running; then run systemctl daemon-reload; fi
  remove_path venv "$VENV"
  if [ "$(realpath -m "$SRC")" = "$(realpath -m "$APP_DIR")" ]; then
    say models "kept: $APP_DIR/models is the checkout's"
  else
    remove_path models "$APP_DIR/models"
    if [ -d "$APP_DIR" ] && [ -z "$(ls -A "$APP_DIR")" ]; then run rmdir "$APP_DIR"; fi
  fi
  if [ "$PURGE" -eq 0 ]; then
    say config "kept: $CONFIG (--purge removes it)"
    say state "kept: $STATE, the outbox (--purge removes it)"
    say user "kept: $USER_NAME (--purge removes it)"
  else
    # Only a folder of our own is removed whole, never a shared one such as /etc.
    if [ "$(basename "$(dirname "$CONFIG")")" = edge-agent ]; then
      remove_path config "$(dirname "$CONFIG")"
    else
      remove_path config "$CONFIG"
    fi
    remove_path state "$STATE"
    if getent passwd "$USER_NAME" >/dev/null; then
      say user "$(verb remove removed): $USER_NAME"
      run userdel "$USER_NAME"
    else
      say user "unchanged: $USER_NAME absent"
    fi
  fi
  say packages "kept: apt packages stay (shared with the system)"
}

# The pip build copy always goes; the log stays when a step failed (die names it).
cleanup() {
  if [ -n "$BUILD_DIR" ]; then rm -rf "$BUILD_DIR"; fi
}

main() {
  trap cleanup EXIT
  parse_args "$@"
  read_unit
  preflight
  if dry; then echo "install.sh: dry run, nothing is changed"; fi
  if [ "$UNINSTALL" -eq 1 ]; then
    uninstall
  else
    step_packages
    step_group
    step_user
    step_state
    step_venv
    step_package
    step_models
    step_config
    step_unit
    step_service
  fi
  if [ -n "$LOG" ]; then rm -f "$LOG"; fi
}

main "$@"
