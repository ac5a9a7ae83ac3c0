#!/usr/bin/env bash
# Build the operator image localhost/asterisk-trunk-operator:<version> from the Dockerfile, on a
# local Python 3.11 base (no image registry here): localhost/python-base:3.11-bookworm, a
# debootstrap'd Debian bookworm minbase with python3, python3-venv and ca-certificates.
#
# Idempotent, like asterisk/build-image.sh: the base is skipped when the image exists (and
# re-imported from the cached rootfs tarball when only the image is missing); the operator
# image is skipped when one with the same inputs hash label exists (Dockerfile, .dockerignore,
# pyproject.toml, operator/ sources, base image id).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
BASE_IMAGE="${TRUNKOP_PYTHON_BASE_IMAGE:-localhost/python-base:3.11-bookworm}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n1)"
IMAGE="${TRUNKOP_OPERATOR_IMAGE:-localhost/asterisk-trunk-operator:$VERSION}"
HASH_LABEL="dev.asterisk-operator.trunks.inputs-hash"
CACHE_ROOT="${TRUNKOP_CACHE:-$HOME/.cache/asterisk-trunk-operator}"
CACHE="$CACHE_ROOT/python-base"
BUILD_LOG="$CACHE_ROOT/operator-image/build.log"
ROOTFS="$CACHE/rootfs"
TARBALL="$CACHE/rootfs.tar"
MIRROR="${DEBIAN_MIRROR:-}"
START=$(date +%s)

log() { printf '[build-operator-image %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

[ -n "$VERSION" ] || { log "no version in pyproject.toml"; exit 1; }

if [ -z "$MIRROR" ]; then
  # the mirror the host's apt sources already use (deb822 or one-line format)
  MIRROR=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
             /etc/apt/sources.list.d/*.list 2>/dev/null \
           | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -n1 || true)
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing host packages: ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/tmp/trunkop-host-apt.log 2>&1 \
    || { tail -n 30 /tmp/trunkop-host-apt.log; exit 1; }
fi

# --- the base: what python:3.11-slim-bookworm gives, from the Debian mirror --------------------
build_base_rootfs() {
  rm -rf "$ROOTFS"
  log "debootstrap --variant=minbase bookworm from $MIRROR"
  debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap.log"; exit 1; }
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
  local mounted=()
  cleanup_mounts() { for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done; }
  trap cleanup_mounts EXIT
  mount -t proc proc "$ROOTFS/proc" && mounted+=("$ROOTFS/proc")
  # python-is-python3: `python` on PATH as in the slim image; python3-venv: ensurepip, so
  # `python3 -m venv` gives a venv with a working pip.
  log "apt-get install python3 python3-venv python-is-python3 ca-certificates"
  chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update >"$CACHE/apt.log" 2>&1 \
    || { tail -n 30 "$CACHE/apt.log"; exit 1; }
  chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y \
    --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
    >>"$CACHE/apt.log" 2>&1 || { tail -n 30 "$CACHE/apt.log"; exit 1; }
  chroot "$ROOTFS" apt-get clean
  cleanup_mounts; trap - EXIT
  # Not needed at run time. The stdlib's bytecode stays: with a read-only root filesystem
  # nothing could cache it, and every start would compile the stdlib again.
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/log/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/usr/share/locale/* "$ROOTFS"/etc/resolv.conf
  chroot "$ROOTFS" python --version | tee "$CACHE/python-version"
  touch "$ROOTFS/.python-installed"
  log "base root filesystem ready ($(du -sh "$ROOTFS" | cut -f1))"
}

if podman image exists "$BASE_IMAGE"; then
  log "$BASE_IMAGE already exists"
else
  mkdir -p "$CACHE"
  if [ ! -s "$TARBALL" ]; then
    [ -f "$ROOTFS/.python-installed" ] || build_base_rootfs
    log "packing $TARBALL"
    tar -C "$ROOTFS" --exclude=./proc/* --exclude=./.python-installed -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
  else
    log "re-using cached tarball $TARBALL"
  fi
  log "podman import -> $BASE_IMAGE"
  podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$TARBALL" "$BASE_IMAGE" >/dev/null
fi

# --- the operator image ---------------------------------------------------------------------
# Everything the image is built from; the base's id too, so a rebuilt base rebuilds this.
inputs_hash() {
  {
    podman image inspect --format '{{.Id}}' "$BASE_IMAGE"
    cd "$REPO"
    find Dockerfile .dockerignore pyproject.toml operator -type f \
      -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -not -name '*.pyc' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}
hash="$(inputs_hash)"
if podman image exists "$IMAGE" &&
   [ "$(podman image inspect --format "{{index .Labels \"$HASH_LABEL\"}}" "$IMAGE")" = "$hash" ]; then
  log "$IMAGE is up to date (inputs $hash), nothing to do"
else
  source_url="$(git -C "$REPO" remote get-url origin 2>/dev/null || true)"
  log "podman build -> $IMAGE (inputs $hash; log: $BUILD_LOG)"
  mkdir -p "$(dirname "$BUILD_LOG")"
  # The host's CA bundle: pip in the build must trust what the host trusts (a TLS-inspecting
  # proxy's CA, for one). A build secret, so it is not stored in the image.
  ca_bundle="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  secret=()
  [ -s "$ca_bundle" ] && secret=(--secret "id=pip-ca,src=$ca_bundle")
  podman build --network host "${secret[@]}" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$VERSION" \
    --build-arg SOURCE_URL="$source_url" --label "$HASH_LABEL=$hash" \
    -t "$IMAGE" "$REPO" >"$BUILD_LOG" 2>&1 || { tail -n 40 "$BUILD_LOG"; exit 1; }
  # Earlier builds of this script (the label says so; other images are never touched), with
  # their intermediate layers: each would otherwise keep ~40 MB.
  podman images --all --filter "label=$HASH_LABEL" --format "{{.ID}} {{index .Labels \"$HASH_LABEL\"}}" \
    | awk -v current="$hash" '$2 != current { print $1 }' \
    | xargs --no-run-if-empty podman rmi --force >/dev/null 2>&1 || true
fi
size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
log "done: $IMAGE ($((size / 1000000)) MB; base $BASE_IMAGE $(( $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") / 1000000 )) MB)"
