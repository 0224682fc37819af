#!/usr/bin/env bash
# Build the local Kubernetes control plane used by kexec's tests and by
# hack/local-cluster.sh, from Go modules only:
#   kube-apiserver, kube-controller-manager, kubectl  (k8s.io/kubernetes)
#   etcd                                              (go.etcd.io/etcd/server/v3/etcdmain)
#   opa                                               (github.com/open-policy-agent/opa)
#
# Binaries go to a cache dir OUTSIDE the repo, keyed by a hash of the module
# files, this script and the Go version:
#   ${KEXEC_CACHE_DIR:-$HOME/.cache/kexec}/bin/<hash>
# A second run with the same inputs is a no-op. The build happens in a temp dir
# that is renamed into place at the end, so an interrupted build leaves nothing
# half-written behind.
#
# stdout: ONLY the bin dir path (last line). Everything else goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CP="$ROOT/hack/controlplane"
SCRIPT="$ROOT/hack/build-binaries.sh"

log() { echo "[build-binaries] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH (need Go >= 1.26)"

# Versions (must match hack/controlplane/go.mod and opa/go.mod).
K8S_VERSION="v1.37.2"
OPA_VERSION="v1.22.3"

export CGO_ENABLED=0
# go.mod/go.sum are committed and complete: never rewrite them during a build.
export GOFLAGS="-mod=readonly -buildvcs=false"

CACHE_ROOT="${KEXEC_CACHE_DIR:-$HOME/.cache/kexec}"
GOVER="$(go env GOVERSION) $(go env GOOS)/$(go env GOARCH)"

hash_inputs() {
    {
        echo "$GOVER"
        cat "$SCRIPT"
        cat "$CP/go.mod" "$CP/go.sum" "$CP/etcd/main.go"
        cat "$CP/opa/go.mod" "$CP/opa/go.sum"
    } | sha256sum | cut -c1-16
}
HASH="$(hash_inputs)"
BIN_ROOT="$CACHE_ROOT/bin"
FINAL="$BIN_ROOT/$HASH"
BINARIES=(kube-apiserver kube-controller-manager kubectl etcd opa)

complete() {
    local d="$1" b
    [ -f "$d/.complete" ] || return 1
    for b in "${BINARIES[@]}"; do [ -x "$d/$b" ] || return 1; done
}

if complete "$FINAL"; then
    log "up to date: $FINAL"
    echo "$FINAL"
    exit 0
fi

mkdir -p "$BIN_ROOT"
# Serialise concurrent builds (two pytest sessions, CI + dev shell, ...).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$BIN_ROOT/.lock"
    log "waiting for build lock $BIN_ROOT/.lock"
    flock 9
    if complete "$FINAL"; then
        log "up to date (built by a concurrent run): $FINAL"
        echo "$FINAL"
        exit 0
    fi
    # We hold the lock, so any temp dir left is from a killed build.
    rm -rf "$BIN_ROOT"/.tmp-*
fi

TMP="$(mktemp -d "$BIN_ROOT/.tmp-$HASH-XXXXXX")"
chmod 755 "$TMP"
CHILD=""
cleanup() { rm -rf "$TMP"; }
on_signal() {
    # go runs in its own process group (see run_go); stop it and its compilers too.
    if [ -n "$CHILD" ]; then kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true; fi
    log "interrupted; discarding $TMP"
    exit 130
}
trap cleanup EXIT
trap on_signal INT TERM HUP

# Run a go command in the background (own process group when setsid exists) and
# wait for it, so a signal to this script is handled at once and stops the build.
run_go() {
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >&2 &
    else
        "$@" >&2 &
    fi
    CHILD=$!
    wait "$CHILD"
    local rc=$?
    CHILD=""
    return "$rc"
}

start=$(date +%s)
log "building into $TMP ($GOVER, GOMODCACHE=$(go env GOMODCACHE))"

VPKG_CG="k8s.io/client-go/pkg/version"
VPKG_CB="k8s.io/component-base/version"
KMAJOR="${K8S_VERSION#v}"; KMAJOR="${KMAJOR%%.*}"
KMINOR="${K8S_VERSION#v*.}"; KMINOR="${KMINOR%%.*}"
KLDFLAGS="-s -w"
for p in "$VPKG_CG" "$VPKG_CB"; do
    KLDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$KMAJOR -X $p.gitMinor=$KMINOR"
    KLDFLAGS+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

cd "$CP"
log "go mod download (kubernetes graph)"
run_go go mod download
log "go build kube-apiserver kube-controller-manager kubectl etcd"
run_go go build -trimpath -ldflags="$KLDFLAGS" -o "$TMP/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl \
    ./etcd
cd "$CP/opa"
log "go mod download (opa graph)"
run_go go mod download
log "go build opa"
run_go go build -trimpath -ldflags="-s -w" -o "$TMP/opa" github.com/open-policy-agent/opa
cd "$ROOT"

for b in "${BINARIES[@]}"; do
    [ -x "$TMP/$b" ] || die "missing $b after build"
done
{
    echo "kubernetes $K8S_VERSION"
    echo "etcd $(cd "$CP" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
    echo "opa $OPA_VERSION"
    echo "go $GOVER"
} >"$TMP/VERSIONS"
touch "$TMP/.complete"

if [ -e "$FINAL" ]; then
    # A stale, incomplete dir (should not happen: we only ever rename complete
    # dirs into place) - replace it.
    rm -rf "$FINAL"
fi
mv -T "$TMP" "$FINAL"
trap - EXIT
# Prune binaries of older inputs (~350 MB each): keep the 3 newest.
# shellcheck disable=SC2012
ls -1dt "$BIN_ROOT"/*/ 2>/dev/null | tail -n +4 | while read -r old; do
    log "pruning old $old"
    rm -rf "$old"
done
log "built in $(( $(date +%s) - start ))s: $FINAL"
echo "$FINAL"
