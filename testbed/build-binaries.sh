#!/usr/bin/env bash
# Build the local Kubernetes test platform from pinned Go modules (no downloads
# except through the Go module proxy).
#
#   testbed/build-binaries.sh        -> prints the bin directory as the last stdout line
#
# Idempotent: every binary lands in $CACHE/bin/<name>-<version>/<name> and is
# skipped when it already exists, so only the first run on a machine pays
# (kube-apiserver alone is several minutes on 2 cores). Progress goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
: "${KUBERNETES_VERSION:?}" "${ETCD_VERSION:?}" "${KWOK_VERSION:?}" "${HELM_VERSION:?}"

# shellcheck source=go-env.sh
source "$HERE/go-env.sh"
BUILD_FLAGS=(-p "${TRUNKOP_BUILD_JOBS:-2}" -trimpath)
mkdir -p "$GOMODCACHE" "$GOCACHE" "$CACHE/bin"

log() { printf '[build-binaries] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The wrapper modules must agree with versions.env.
grep -q "^require k8s.io/kubernetes ${KUBERNETES_VERSION}\$" "$HERE/go/kubernetes/go.mod" ||
    die "testbed/go/kubernetes/go.mod does not require k8s.io/kubernetes ${KUBERNETES_VERSION}"
grep -q "^require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}\$" "$HERE/go/etcd/go.mod" ||
    die "testbed/go/etcd/go.mod does not require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"

# out_path NAME VERSION -> $CACHE/bin/NAME-VERSION/NAME
out_path() { printf '%s/bin/%s-%s/%s' "$CACHE" "$1" "$2" "$1"; }

# build NAME VERSION DIR PACKAGE LDFLAGS  (go build inside module DIR)
build() {
    local name="$1" version="$2" dir="$3" pkg="$4" ldflags="$5"
    local out; out="$(out_path "$name" "$version")"
    if [[ -x "$out" ]]; then
        log "have $name $version ($out)"
        return 0
    fi
    mkdir -p "$(dirname "$out")"
    log "building $name $version from $pkg ..."
    local start=$SECONDS
    (cd "$dir" && GOFLAGS="-mod=mod -buildvcs=false" \
        go build "${BUILD_FLAGS[@]}" -ldflags "-s -w $ldflags" -o "$out.tmp.$$" "$pkg")
    mv -f "$out.tmp.$$" "$out"
    log "built $name $version in $((SECONDS - start)) s"
}

# --- Kubernetes -------------------------------------------------------------
kminor="${KUBERNETES_VERSION#v1.}"; kminor="${kminor%%.*}"
kube_ld=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ld+=" -X $p.gitVersion=${KUBERNETES_VERSION} -X $p.gitMajor=1 -X $p.gitMinor=${kminor} -X $p.gitTreeState=clean"
done
# kubelet: the real node of testbed/node/ (containerd comes from Debian).
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
    build "$c" "$KUBERNETES_VERSION" "$HERE/go/kubernetes" "k8s.io/kubernetes/cmd/$c" "$kube_ld"
done

# --- etcd -------------------------------------------------------------------
build etcd "$ETCD_VERSION" "$HERE/go/etcd" go.etcd.io/etcd/server/v3 ""

# --- kwok / kwokctl ---------------------------------------------------------
# Built from a copy of the published module with testbed/go/kwok/*.patch applied
# (stdin EOF + exit codes for `kubectl exec` on simulated pods; see README.md).
# The copy lives in the cache, never in the checkout. The patch hash is part of
# the version key, so changing the patch rebuilds.
kwok_patches=("$HERE"/go/kwok/kwok-"${KWOK_VERSION}"-*.patch)
[[ -e "${kwok_patches[0]}" ]] || kwok_patches=()
kwok_key="$KWOK_VERSION"
if ((${#kwok_patches[@]})); then
    kwok_key+="-p$(cat "${kwok_patches[@]}" | sha256sum | cut -c1-8)"
fi
if [[ ! -x "$(out_path kwok "$kwok_key")" || ! -x "$(out_path kwokctl "$kwok_key")" ]]; then
    kwok_src="$CACHE/src/kwok-$kwok_key"
    if [[ ! -f "$kwok_src/.patched" ]]; then
        log "preparing kwok source $kwok_key in $kwok_src"
        pristine="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
        [[ -d "$pristine" ]] || die "go mod download sigs.k8s.io/kwok@${KWOK_VERSION} gave no directory"
        rm -rf "$kwok_src"
        mkdir -p "$(dirname "$kwok_src")"
        cp -r "$pristine" "$kwok_src"
        chmod -R u+w "$kwok_src"
        for p in "${kwok_patches[@]}"; do
            log "applying $(basename "$p")"
            patch -s -d "$kwok_src" -p1 <"$p"
        done
        touch "$kwok_src/.patched"
    fi
    kwok_ld="-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}"
    build kwok "$kwok_key" "$kwok_src" ./cmd/kwok "$kwok_ld"
    build kwokctl "$kwok_key" "$kwok_src" ./cmd/kwokctl "$kwok_ld"
else
    log "have kwok, kwokctl $kwok_key"
fi

# --- helm (no replace directives: plain go install) -------------------------
helm_out="$(out_path helm "$HELM_VERSION")"
if [[ -x "$helm_out" ]]; then
    log "have helm $HELM_VERSION ($helm_out)"
else
    log "building helm $HELM_VERSION ..."
    start=$SECONDS
    tmpbin="$(mktemp -d "$CACHE/bin/.helm.XXXXXX")"
    (cd / && GOBIN="$tmpbin" GOFLAGS="-buildvcs=false" go install "${BUILD_FLAGS[@]}" \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
        "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}")
    mkdir -p "$(dirname "$helm_out")"
    mv -f "$tmpbin/helm" "$helm_out"
    rmdir "$tmpbin"
    log "built helm $HELM_VERSION in $((SECONDS - start)) s"
fi

# --- one directory of symlinks, keyed by everything that defines the build ---
key="$(cat "$HERE/versions.env" \
    "$HERE/go/kubernetes/go.mod" "$HERE/go/kubernetes/go.sum" \
    "$HERE/go/etcd/go.mod" "$HERE/go/etcd/go.sum" \
    "${kwok_patches[@]}" | sha256sum | cut -c1-16)"
bindir="$CACHE/testbed-bin/$key"
mkdir -p "$bindir"
declare -A versions=(
    [kube-apiserver]="$KUBERNETES_VERSION" [kube-controller-manager]="$KUBERNETES_VERSION"
    [kube-scheduler]="$KUBERNETES_VERSION" [kubectl]="$KUBERNETES_VERSION"
    [kubelet]="$KUBERNETES_VERSION"
    [etcd]="$ETCD_VERSION" [kwok]="$kwok_key" [kwokctl]="$kwok_key" [helm]="$HELM_VERSION"
)
for name in "${!versions[@]}"; do
    target="$(out_path "$name" "${versions[$name]}")"
    [[ -x "$target" ]] || die "missing $target"
    ln -sfn "$target" "$bindir/$name"
done
log "binaries in $bindir"
echo "$bindir"
