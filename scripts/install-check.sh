#!/usr/bin/env bash
# Check scripts/install.sh for real: in a chroot of a clean Debian 12 rootfs (scripts/rootfs.sh,
# cached), install from a copy of this working tree (pip reaches PyPI), check the result, install
# again and check that nothing changed, then uninstall and purge. Needs root and the network.
#
#   scripts/install-check.sh [--arch amd64|arm64] [--keep]
#
# Each run starts from the cached rootfs unchanged: the chroot is an overlay on it (a copy when
# overlayfs is missing). apt and pip downloads are cached beside the rootfs for the next run.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=/var/cache/edge-agent
CHECKOUT=/usr/local/src/edge-agent
ARCH=$(dpkg --print-architecture)
KEEP=0
WORK="" ROOT="" FAILS=0 CHECKS=0
MOUNTS=()
declare -A T=()  # wall time of each install.sh run, by name
STEPS="packages group user state venv package models config unit service"

log() { printf '[check] %s\n' "$*"; }
die() { printf '[check] error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# check WHAT CMD...: run CMD, count and print the outcome; CMD's output is shown if it fails.
check() {
  local what=$1 out=$WORK/check.out; shift
  CHECKS=$((CHECKS + 1))
  if "$@" >"$out" 2>&1; then
    log "ok: $what"
  else
    log "FAIL: $what"
    sed 's/^/    /' "$out"
    FAILS=$((FAILS + 1))
  fi
}

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --arch) [ $# -ge 2 ] || die "--arch needs a value"; ARCH=$2; shift 2 ;;
      --keep) KEEP=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
  done
}

mounted_below() {
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 { found = 1 } END { exit !found }' /proc/mounts
}

# Unmount in reverse order; never delete a tree that still has something mounted in it.
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" || true
  done
  [ -n "$WORK" ] || return 0
  if mounted_below "$WORK"; then
    log "something is still mounted under $WORK: left in place"
  elif [ "$KEEP" -eq 1 ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}

bind() {
  mkdir -p "$2"
  mount --bind "$1" "$2"
  MOUNTS+=("$2")
}

prepare_chroot() {
  WORK=$(mktemp -d /var/tmp/edge-agent-check.XXXXXX)
  ROOT=$WORK/root
  mkdir -p "$WORK/upper" "$WORK/work" "$ROOT"
  if mount -t overlay overlay \
       -o "lowerdir=$ROOTFS,upperdir=$WORK/upper,workdir=$WORK/work" "$ROOT" 2>/dev/null; then
    MOUNTS+=("$ROOT")
  else
    log "overlayfs unavailable: copying the rootfs"
    cp -a "$ROOTFS/." "$ROOT/"
  fi
  mount -t proc proc "$ROOT/proc" && MOUNTS+=("$ROOT/proc")
  mount -t sysfs sysfs "$ROOT/sys" && MOUNTS+=("$ROOT/sys")
  bind /dev "$ROOT/dev"
  if [ -d /dev/pts ]; then bind /dev/pts "$ROOT/dev/pts"; fi
  mkdir -p "$CACHE/apt-archives-$ARCH/partial" "$CACHE/pip-$ARCH"
  bind "$CACHE/apt-archives-$ARCH" "$ROOT/var/cache/apt/archives"
  bind "$CACHE/pip-$ARCH" "$ROOT/root/.cache/pip"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  # CAs this host trusts locally (e.g. of a TLS-inspecting proxy) are needed to reach PyPI from
  # the chroot too: the ca-certificates package, installed with python3-pip, picks them up.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  fi
}

# The working tree as git sees it (tracked and untracked, not ignored), plus the model binaries
# present (ignored: fetched by scripts/fetch_models.py), as a device checkout would have them.
copy_checkout() {
  mkdir -p "$ROOT$CHECKOUT"
  git -c safe.directory="$SRC" -C "$SRC" ls-files -co --exclude-standard -z \
    | (cd "$SRC" && while IFS= read -r -d '' f; do
         if [ -e "$f" ]; then printf '%s\0' "$f"; fi
       done) \
    | tar -C "$SRC" --null -T - -cf - | tar -C "$ROOT$CHECKOUT" -xf -
  (cd "$SRC" && find models -name '*.tflite' -print0 | tar --null -T - -cf -) \
    | tar -C "$ROOT$CHECKOUT" -xf -
}

in_chroot() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# As the service user, writing no .pyc (a check must not change the installed tree).
as_agent() {
  in_chroot PYTHONDONTWRITEBYTECODE=1 setpriv --reuid="$USER_NAME" --regid="$USER_NAME" \
    --init-groups "$@"
}

# run_install NAME ARGS...: install.sh in the chroot; its output in $WORK/NAME.log, step lines
# shown; its wall time in T[NAME].
run_install() {
  local name=$1 start rc=0; shift
  start=$(now)
  in_chroot "$CHECKOUT/scripts/install.sh" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
  T[$name]=$(since "$start")
  sed 's/^/    /' "$WORK/$name.log"
  check "install.sh${*:+ $*} exits 0 (took ${T[$name]} s)" [ "$rc" -eq 0 ]
}

read_unit() {
  local unit=$SRC/systemd/edge-agent.service exec_start
  exec_start=$(sed -n 's/^ExecStart=//p' "$unit" | head -n 1)
  AGENT=${exec_start%% *}
  VENV=${AGENT%/bin/edge-agent}
  APP_DIR=$(dirname "$VENV")
  CONFIG=$(sed -n 's/.* --config[ =]\([^ ]*\).*/\1/p' <<<"$exec_start")
  STATE=/var/lib/$(sed -n 's/^StateDirectory=//p' "$unit" | head -n 1)
  USER_NAME=$(sed -n 's/^User=//p' "$unit" | head -n 1)
  UNIT=/etc/systemd/system/edge-agent.service
  VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml")
}

# Type, mode, owner, mtime and checksum of everything the installer manages.
snapshot() {
  local paths=("${APP_DIR#/}" "$(dirname "${CONFIG#/}")" "${STATE#/}" etc/systemd/system
               etc/passwd etc/group etc/shadow etc/gshadow)
  (cd "$ROOT" && find "${paths[@]}" -printf '%y %m %U:%G %T@ %p\n' 2>/dev/null | LC_ALL=C sort -k5
   find "${paths[@]}" -type f -print0 2>/dev/null | xargs -0r sha256sum | LC_ALL=C sort -k2) \
    || true
}

exists() { [ -e "$ROOT$1" ]; }
absent() { [ ! -e "$ROOT$1" ]; }
has_user() { in_chroot getent passwd "$USER_NAME" >/dev/null; }
no_user() { ! has_user; }
log_has() { grep -q -- "$2" "$WORK/$1.log"; }
log_lacks() { ! grep -q -- "$2" "$WORK/$1.log"; }
user_ok() { in_chroot getent passwd "$USER_NAME" | grep -q ":$STATE:.*nologin\$"; }
in_video() { in_chroot id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx video; }
says_version() { [ "$(in_chroot PYTHONDONTWRITEBYTECODE=1 "$AGENT" --version)" = "edge-agent $VERSION" ]; }
steps_named() {
  local step
  for step in $STEPS; do log_has "$1" "^\[$step\] " || return 1; done
}
dry_run_unchanged() {
  [ "$1" = "$(snapshot)" ] && steps_named dry && log_lacks dry '^\[[a-z]*\] \(created\|installed\)'
}

# Every step named, each line saying STATUS (the service step may be skipped: no systemd).
steps_say() {
  local log=$WORK/$1.log status=$2 step line
  for step in $STEPS; do
    line=$(grep "^\[$step\] " "$log" | head -n 1)
    [[ $line == "[$step] $status:"* ]] && continue
    [[ $step == service && $line == "[service] skipped:"* ]] && continue
    log "  step $step: ${line:-missing}"
    return 1
  done
}

check_installed() {
  check "user $USER_NAME exists, home $STATE, no login shell" user_ok
  check "$USER_NAME is in the video group" in_video
  check "the venv has include-system-site-packages = true" \
    grep -qx 'include-system-site-packages = true' "$ROOT$VENV/pyvenv.cfg"
  check "the venv sees the system site-packages" as_agent "$VENV/bin/python" -c \
    'import sys; assert "/usr/lib/python3/dist-packages" in sys.path'
  check "edge-agent --version says $VERSION" says_version
  check "config present, mode 640 root:$USER_NAME" \
    [ "$(in_chroot stat -c '%a %U:%G' "$CONFIG")" = "640 root:$USER_NAME" ]
  check "the service user can read and validate the config" as_agent "$AGENT" check-config "$CONFIG"
  local model=$APP_DIR/models/ssd_mobilenet_v1_coco_quant
  check "the service user loads the installed model (LiteRT from PyPI)" as_agent "$AGENT" \
    models inspect "$model/detect.tflite" --labels "$model/labelmap.txt"
  check "unit installed, same as systemd/edge-agent.service" \
    cmp -s "$SRC/systemd/edge-agent.service" "$ROOT$UNIT"
  check "state dir $STATE owned by $USER_NAME" \
    [ "$(in_chroot stat -c '%U' "$STATE")" = "$USER_NAME" ]
  check "service start skipped: systemd is not running in a chroot" \
    log_has install1 '^\[service\] skipped: systemd is not running'
  verify_unit
}

verify_unit() {
  local out rc=0
  out=$(in_chroot systemd-analyze verify "$UNIT" 2>&1) || rc=$?
  [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/    /'
  check "systemd-analyze verify $UNIT (in the chroot)" [ "$rc" -eq 0 ]
}

check_second_run() {
  local before=$WORK/before.txt after=$WORK/after.txt
  snapshot >"$before"
  run_install install2
  snapshot >"$after"
  check "second run: every step says unchanged" steps_say install2 unchanged
  if ! diff -u "$before" "$after" >"$WORK/snapshot.diff"; then head -n 40 "$WORK/snapshot.diff"; fi
  check "second run: no installed file changed ($(wc -l <"$before") entries: mtime, mode, owner, sha256)" \
    cmp -s "$before" "$after"
}

check_uninstall() {
  run_install uninstall --uninstall
  check "uninstall: unit removed" absent "$UNIT"
  check "uninstall: venv removed" absent "$VENV"
  check "uninstall: models removed" absent "$APP_DIR/models"
  check "uninstall: config kept" exists "$CONFIG"
  check "uninstall: state dir (outbox) kept" exists "$STATE"
  check "uninstall: user kept" has_user
  run_install uninstall2 --uninstall
  check "second uninstall: nothing left to do" log_lacks uninstall2 '^\[[a-z]*\] removed'

  run_install purge --uninstall --purge
  check "purge: config dir removed" absent "$(dirname "$CONFIG")"
  check "purge: state dir removed" absent "$STATE"
  check "purge: user removed" no_user
  check "purge: $APP_DIR removed" absent "$APP_DIR"
  check "purge: the video group stays" in_chroot getent group video
}

main() {
  parse_args "$@"
  [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, mount and chroot need it)"
  command -v git >/dev/null || die "git is needed to list the working tree"
  read_unit
  local start total_start cached=reused
  total_start=$(now)
  [ -f "$CACHE/rootfs-$ARCH/.edge-agent-rootfs" ] || cached=built
  start=$(now)
  ROOTFS=$("$SRC/scripts/rootfs.sh" --arch "$ARCH")
  local t_rootfs
  t_rootfs=$(since "$start")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  prepare_chroot
  copy_checkout
  log "chroot $ROOT (rootfs $ROOTFS, $cached in $t_rootfs s)"

  local before
  before=$(snapshot)
  run_install dry --dry-run
  check "dry run names every step and changes nothing" dry_run_unchanged "$before"
  run_install install1
  check "first run: every step named" steps_named install1
  check_installed
  check_second_run
  check_uninstall

  log "summary: rootfs $cached in $t_rootfs s; install ${T[install1]} s; second install" \
    "${T[install2]} s; uninstall ${T[uninstall]} s; purge ${T[purge]} s;" \
    "total $(since "$total_start") s"
  log "$((CHECKS - FAILS)) passed, $FAILS failed"
  [ "$FAILS" -eq 0 ]
}

main "$@"
