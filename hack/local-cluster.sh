#!/usr/bin/env bash
# Local kexec dev cluster: builds (or reuses) the control-plane binaries, starts
# etcd + kube-apiserver + kube-controller-manager + the node simulator, prints the
# kubeconfig path and runs until Ctrl-C, then tears everything down.
#
#   hack/local-cluster.sh [--nodes N] [--no-simulator] [--state-dir DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
KEXEC_BIN_DIR="$("$ROOT/hack/build-binaries.sh" | tail -n 1)"
export KEXEC_BIN_DIR
cd "$ROOT"
exec "$PY" -m devstack.controlplane "$@"
