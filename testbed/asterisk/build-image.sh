#!/usr/bin/env bash
# Build the container image localhost/asterisk:22 (Debian sid's Asterisk 22.x) for the test platform.
# Idempotent: does nothing when the image exists; re-imports from the cached tarball when only the
# image is missing; re-uses a finished root filesystem when only the tarball is missing.
set -euo pipefail

IMAGE="${TRUNKOP_ASTERISK_IMAGE:-localhost/asterisk:22}"
CACHE="${TRUNKOP_CACHE:-$HOME/.cache/asterisk-trunk-operator}/asterisk"
ROOTFS="$CACHE/rootfs"
TARBALL="$CACHE/rootfs.tar"
MIRROR="${DEBIAN_MIRROR:-}"
START=$(date +%s)

log() { printf '[build-image %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

if [ -z "$MIRROR" ]; then
  # the mirror the host's apt sources already use (deb822 or one-line format)
  MIRROR=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
             /etc/apt/sources.list.d/*.list 2>/dev/null \
           | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -n1 || true)
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

need=()
command -v podman >/dev/null || need+=(podman)
[ -x /usr/sbin/runc ] || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing host packages: ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/tmp/trunkop-host-apt.log 2>&1 \
    || { tail -n 30 /tmp/trunkop-host-apt.log; exit 1; }
fi

if podman image exists "$IMAGE"; then
  log "$IMAGE already exists, nothing to do"
  exit 0
fi

mkdir -p "$CACHE"

if [ ! -s "$TARBALL" ]; then
  if [ ! -f "$ROOTFS/.asterisk-installed" ]; then
    rm -rf "$ROOTFS"
    log "debootstrap --variant=minbase sid from $MIRROR"
    debootstrap --variant=minbase sid "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -n 30 "$CACHE/debootstrap.log"; exit 1; }
    log "debootstrap done"
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
    mounted=()
    cleanup_mounts() { for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done; }
    trap cleanup_mounts EXIT
    mount -t proc proc "$ROOTFS/proc" && mounted+=("$ROOTFS/proc")
    log "apt-get install asterisk in the root filesystem"
    chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
      apt-get -o Acquire::Check-Valid-Until=false update >"$CACHE/apt.log" 2>&1 \
      || { tail -n 30 "$CACHE/apt.log"; exit 1; }
    chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
      apt-get -o Acquire::Check-Valid-Until=false install -y --no-install-recommends asterisk \
      >>"$CACHE/apt.log" 2>&1 || { tail -n 30 "$CACHE/apt.log"; exit 1; }
    chroot "$ROOTFS" apt-get clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
    # the test harness copies its own configuration in at container start
    mkdir -p "$ROOTFS/etc/asterisk/pjsip.d" "$ROOTFS/etc/asterisk/extensions.d"
    cleanup_mounts; trap - EXIT
    chroot "$ROOTFS" asterisk -V | tee "$CACHE/asterisk-version"
    touch "$ROOTFS/.asterisk-installed"
    log "asterisk installed ($(du -sh "$ROOTFS" | cut -f1))"
  else
    log "re-using root filesystem $ROOTFS"
  fi
  log "packing $TARBALL"
  tar -C "$ROOTFS" --exclude=./proc/* --exclude=./.asterisk-installed -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
else
  log "re-using cached tarball $TARBALL"
fi

log "podman import -> $IMAGE"
podman import --quiet --change 'CMD ["/usr/sbin/asterisk","-f"]' "$TARBALL" "$IMAGE" >/dev/null
log "done: $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"
