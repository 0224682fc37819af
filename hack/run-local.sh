#!/usr/bin/env bash
# kexec's main job, on a fresh machine: builds a real local Kubernetes control plane
# (etcd, kube-apiserver, kube-controller-manager from Go modules) with a node/pod
# simulator, starts PostgreSQL for the audit trail, installs the CRD and RBAC, runs
# the controller and a set of example executions, prints what happened, and keeps
# the controller running until Ctrl-C or SIGTERM, then tears it all down.
#
#   hack/run-local.sh [--once] [--no-examples] [--state-dir DIR] [--nodes N] [--in-cluster]
#
# --in-cluster: build the image (hack/build-image.sh) and install the controller from it with
# `kubectl apply -k deploy/overlays/local` (two replicas run by the node simulator) instead of
# running it as a local process.
# --once: exit after the examples. --no-examples: just the stack and the controller.
# The admin kubeconfig is written to DIR/kubeconfig (default .kexec/kubeconfig); a line
# "ready" on stdout says the stack is up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup-venv.sh >&2
KEXEC_BIN_DIR="$(bash hack/build-binaries.sh | tail -n 1)"
export KEXEC_BIN_DIR
bash hack/ensure-postgres.sh >/dev/null
for arg in "$@"; do
  if [[ $arg == --in-cluster && -z ${KEXEC_IMAGE_ROOTFS:-} ]]; then
    KEXEC_IMAGE_ROOTFS="$(bash hack/build-image.sh | tail -n 1)"
    export KEXEC_IMAGE_ROOTFS
  fi
done
exec .venv/bin/python hack/run_local.py "$@"
