#!/usr/bin/env bash
# Build, or reuse from the cache, a Debian 12 (bookworm) root filesystem for checking the
# installer in a chroot. Prints the rootfs path on stdout; everything else goes to stderr.
#
#   scripts/rootfs.sh [--arch amd64|arm64] [--dir DIR] [--mirror URL] [--rebuild]
#
# A rootfs is reused when its stamp file matches the recipe (suite, arch, variant, packages,
# mirror); a changed recipe or --rebuild builds it anew. Needs root and network access to the
# Debian mirror. For arm64 on another host, qemu-user-static is registered in binfmt_misc first.
set -euo pipefail

SUITE=bookworm
VARIANT=minbase
# systemd: systemctl and systemd-analyze, as on a device; procps: /bin/kill (the unit's
# ExecReload). Python and the rest are left to the installer under test.
INCLUDE=systemd,procps
RECIPE_VERSION=1
CACHE_ROOT=/var/cache/edge-agent

ARCH=""
DIR=""
MIRROR=http://deb.debian.org/debian
REBUILD=0

log() { printf '[rootfs] %s\n' "$*" >&2; }
die() { printf '[rootfs] error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<EOF
Usage: scripts/rootfs.sh [--arch amd64|arm64] [--dir DIR] [--mirror URL] [--rebuild]

Build (debootstrap, Debian $SUITE, --variant=$VARIANT --include=$INCLUDE) or reuse a cached
root filesystem and print its path.

  --arch A      amd64 or arm64 (default: this machine's architecture)
  --dir DIR     where the rootfs lives (default: $CACHE_ROOT/rootfs-<arch>)
  --mirror URL  Debian mirror (default: $MIRROR)
  --rebuild     build anew even when the cached rootfs matches
  -h, --help    this help
EOF
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --arch) [ $# -ge 2 ] || die "--arch needs a value"; ARCH=$2; shift 2 ;;
      --dir) [ $# -ge 2 ] || die "--dir needs a value"; DIR=$2; shift 2 ;;
      --mirror) [ $# -ge 2 ] || die "--mirror needs a value"; MIRROR=$2; shift 2 ;;
      --rebuild) REBUILD=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
  done
  [ -n "$ARCH" ] || ARCH=$(dpkg --print-architecture)
  case "$ARCH" in
    amd64|arm64) ;;
    *) die "unsupported --arch '$ARCH' (amd64 or arm64)" ;;
  esac
  [ -n "$DIR" ] || DIR="$CACHE_ROOT/rootfs-$ARCH"
  DIR=$(realpath -m "$DIR")
  [ "$DIR" != / ] || die "refusing --dir /"
}

# apt-get install the named packages when a command is missing (Debian hosts).
need() {
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  log "installing $* (for $cmd)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# True when something is mounted at or below $1 (a leftover chroot run): never delete then.
mounted_below() {
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 { found = 1 } END { exit !found }' /proc/mounts
}

stamp_text() {
  printf 'edge-agent rootfs v%s suite=%s arch=%s variant=%s include=%s mirror=%s\n' \
    "$RECIPE_VERSION" "$SUITE" "$ARCH" "$VARIANT" "$INCLUDE" "$MIRROR"
}

# Register qemu-user-static for aarch64 in binfmt_misc when this host cannot run arm64 binaries.
ensure_arm64_emulation() {
  [ "$(uname -m)" = aarch64 ] && return 0
  need qemu-aarch64-static qemu-user-static binfmt-support
  need update-binfmts binfmt-support
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    log "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if ! grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    log "registering qemu-aarch64 in binfmt_misc"
    update-binfmts --import qemu-aarch64 >&2 || true
    update-binfmts --enable qemu-aarch64 >&2
  fi
  grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || die "qemu-aarch64 is not registered in binfmt_misc"
}

# debootstrap into $1; a foreign architecture goes through --foreign and a second stage run
# under qemu (copied into the rootfs unless binfmt_misc opens the interpreter itself, flag F).
bootstrap() {
  local target=$1 logfile=$2 foreign=0
  [ "$ARCH" = "$(dpkg --print-architecture)" ] || foreign=1
  local args=(--arch="$ARCH" --variant="$VARIANT" --include="$INCLUDE")
  [ "$foreign" -eq 0 ] || args+=(--foreign)
  if ! debootstrap "${args[@]}" "$SUITE" "$target" "$MIRROR" >"$logfile" 2>&1; then
    tail -n 20 "$logfile" >&2
    die "debootstrap failed (full log: $logfile)"
  fi
  [ "$foreign" -eq 1 ] || return 0
  if ! grep -qs '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    install -m 0755 "$(command -v qemu-aarch64-static)" "$target/usr/bin/qemu-aarch64-static"
  fi
  if ! chroot "$target" /debootstrap/debootstrap --second-stage >>"$logfile" 2>&1; then
    tail -n 20 "$logfile" >&2
    die "debootstrap --second-stage failed (full log: $logfile)"
  fi
}

build() {
  local partial="$DIR.partial" logfile="$DIR.log"
  if [ -e "$DIR" ] && [ ! -f "$DIR/.edge-agent-rootfs" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists and was not built by this script: remove it or choose another --dir"
  fi
  for path in "$DIR" "$partial"; do
    mounted_below "$path" && die "something is still mounted under $path: unmount it first"
  done
  need debootstrap debootstrap
  [ "$ARCH" != arm64 ] || ensure_arm64_emulation
  mkdir -p "$(dirname "$DIR")"
  rm -rf "$partial"
  log "building Debian $SUITE $ARCH in $DIR (debootstrap, log: $logfile)"
  bootstrap "$partial" "$logfile"
  # Chroot runs copy /etc/resolv.conf in; the cached rootfs keeps none of the host's.
  rm -f "$partial/etc/resolv.conf"
  apt_clean "$partial"
  stamp_text >"$partial/.edge-agent-rootfs"
  rm -rf "$DIR"
  mv "$partial" "$DIR"
}

# Drop downloaded .deb files: the rootfs is the cache, the archives are not needed.
apt_clean() {
  find "$1/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
}

main() {
  parse_args "$@"
  [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"
  if [ "$REBUILD" -eq 0 ] && [ -f "$DIR/.edge-agent-rootfs" ] \
     && [ "$(cat "$DIR/.edge-agent-rootfs")" = "$(stamp_text)" ]; then
    [ "$ARCH" != arm64 ] || ensure_arm64_emulation
    log "reusing $DIR ($(stamp_text))"
  else
    build
    log "built $DIR"
  fi
  printf '%s\n' "$DIR"
}

main "$@"
