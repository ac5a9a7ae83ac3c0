# Sourced by the testbed's Go builds (build-binaries.sh, build-external-secrets.sh): one cache
# outside the checkout, the machine's own Go toolchain, static binaries.
CACHE="${TRUNKOP_CACHE:-$HOME/.cache/asterisk-trunk-operator}"
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOTOOLCHAIN=local
export GOWORK=off
export CGO_ENABLED=0
