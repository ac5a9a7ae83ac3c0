#!/usr/bin/env bash
# External Secrets Operator's controller, from its Go module pinned in
# testbed/go/external-secrets (go.mod, go.sum), for the e2e test that runs it against the test
# cluster (tests/e2e/test_external_secrets.py). Apart from build-binaries.sh because only that
# test needs it and it is large: the first build downloads ~2.6 GB of modules (cloud SDKs) and
# takes ~9 minutes on 2 cores. Same caches; prints the binary's path, then its module directory
# (where its CRDs are: deploy/crds/bundle.yaml).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/versions.env"
: "${EXTERNAL_SECRETS_VERSION:?}"

# shellcheck source=go-env.sh
source "$HERE/go-env.sh"

module=github.com/external-secrets/external-secrets
grep -q "^require $module ${EXTERNAL_SECRETS_VERSION}\$" "$HERE/go/external-secrets/go.mod" ||
    { echo "testbed/go/external-secrets/go.mod does not require $module ${EXTERNAL_SECRETS_VERSION}" >&2; exit 1; }

out="$CACHE/bin/external-secrets-${EXTERNAL_SECRETS_VERSION}/external-secrets"
cd "$HERE/go/external-secrets"
if [[ ! -x "$out" ]]; then
    echo "[build-external-secrets] building $module ${EXTERNAL_SECRETS_VERSION} (first time: ~9 min) ..." >&2
    start=$SECONDS
    mkdir -p "$(dirname "$out")"
    GOFLAGS="-mod=mod -buildvcs=false" go build -p "${TRUNKOP_BUILD_JOBS:-2}" -trimpath \
        -ldflags "-s -w" -o "$out.tmp.$$" "$module"
    mv -f "$out.tmp.$$" "$out"
    echo "[build-external-secrets] built in $((SECONDS - start)) s" >&2
fi
echo "$out"
GOFLAGS=-mod=mod go mod download -json "$module@${EXTERNAL_SECRETS_VERSION}" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
