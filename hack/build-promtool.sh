#!/usr/bin/env bash
# Build promtool (Prometheus' rule checker and rule unit-test runner) from the
# Prometheus Go module, cached outside the repo like hack/build-binaries.sh:
#   ${KEXEC_CACHE_DIR:-$HOME/.cache/kexec}/promtool/<version>/promtool
# stdout: ONLY the path of the binary (last line).
set -euo pipefail

PROMETHEUS_MODULE_VERSION="v0.316.0"   # Prometheus 3.x's Go module version
CACHE_ROOT="${KEXEC_CACHE_DIR:-$HOME/.cache/kexec}"
DIR="$CACHE_ROOT/promtool/$PROMETHEUS_MODULE_VERSION-$(go env GOVERSION)"
BIN="$DIR/promtool"
log() { echo "[build-promtool] $*" >&2; }

command -v go >/dev/null 2>&1 || { log "ERROR: go is not on PATH"; exit 1; }
if [ -x "$BIN" ]; then
    log "up to date: $BIN"
    echo "$BIN"
    exit 0
fi
mkdir -p "$CACHE_ROOT/promtool"
exec 9>"$CACHE_ROOT/promtool/.lock"
flock 9
if [ ! -x "$BIN" ]; then
    TMP="$(mktemp -d "$CACHE_ROOT/promtool/.tmp-XXXXXX")"
    trap 'rm -rf "$TMP"' EXIT
    log "building promtool $PROMETHEUS_MODULE_VERSION (a few minutes the first time)"
    CGO_ENABLED=0 GOFLAGS="-buildvcs=false" GOBIN="$TMP" \
        go install -trimpath "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" >&2
    "$TMP/promtool" --version >&2
    mkdir -p "$(dirname "$DIR")"
    rm -rf "$DIR"
    mv "$TMP" "$DIR"
    trap - EXIT
fi
echo "$BIN"
