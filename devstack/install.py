"""kexec installed the way users install it: ``kubectl apply -k`` of ``deploy/overlays/local``.

:func:`write_kustomization` writes a kustomization that is ``deploy/overlays/local`` with the audit
DSN of the PostgreSQL the local stack started (the Secret ``kexec-audit`` replaced) and,
optionally, the OPA sidecar component and a replica count; :class:`InCluster` applies it,
waits for the controller pods (run from the image by the node simulator) to be Ready and
reads the leader from the Lease. Used by tests/e2e/test_install_e2e.py and
``hack/run-local.sh --in-cluster``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
from pathlib import Path
from typing import Any

import yaml

from devstack.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[1]
NS_CTRL = "kubernaut-system"
LOCAL_OVERLAY = ROOT / "deploy" / "overlays" / "local"
OPA_COMPONENT = ROOT / "deploy" / "components" / "opa-sidecar"
SELECTOR = "app.kubernetes.io/name=kexec,app.kubernetes.io/component=controller"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS_CTRL}/leases/kexec-controller"


def write_kustomization(directory: Path, dsn: str, *, opa_sidecar: bool = False,
                        replicas: int | None = None) -> Path:
    """``directory/kustomization.yaml``: deploy/overlays/local with ``dsn`` (and the options)."""
    directory.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(LOCAL_OVERLAY, directory)],  # kustomize takes no absolute paths
        "secretGenerator": [{"name": "kexec-audit", "namespace": NS_CTRL, "behavior": "replace",
                             "literals": [f"dsn={dsn}"], "options": {"disableNameSuffixHash": True}}],
    }
    if opa_sidecar:
        doc["components"] = [os.path.relpath(OPA_COMPONENT, directory)]
    if replicas is not None:
        doc["replicas"] = [{"name": "kexec-controller", "count": replicas}]
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


class InCluster:
    """The controller Deployment of a ``kubectl apply -k`` install on a control plane."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def kubectl(self, *args: str, input: str | None = None) -> str:
        proc = self.cp.kubectl(*args, check=False, input=input)
        if proc.returncode:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def apply(self, kustomization_dir: Path) -> str:
        return self.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(kustomization_dir))

    def pods(self) -> list[dict[str, Any]]:
        items = self.cp.api("GET", f"/api/v1/namespaces/{NS_CTRL}/pods?labelSelector={SELECTOR}")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    @staticmethod
    def ready(pod: dict[str, Any]) -> bool:
        conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
        return conds.get("Ready") == "True"

    def wait_ready(self, count: int, timeout: float = 120, containers: int | None = None) -> list[dict[str, Any]]:
        """``count`` controller pods Ready (and only those: a rollout has finished)."""
        deadline = time.monotonic() + timeout
        pods: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            pods = self.pods()
            if len(pods) == count and all(self.ready(p) for p in pods) and (
                    containers is None or all(len(p["spec"]["containers"]) == containers for p in pods)):
                return pods
            time.sleep(0.5)
        raise AssertionError(f"not {count} Ready controller pods after {timeout}s: " + json.dumps(
            [{"name": p["metadata"]["name"], "status": p.get("status")} for p in pods], indent=1)[-4000:])

    def leader(self) -> str | None:
        try:
            lease = self.cp.api("GET", LEASE)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        holder = (lease.get("spec") or {}).get("holderIdentity")
        return str(holder) if holder else None

    def lease_duration(self) -> float:
        return float(self.cp.api("GET", LEASE)["spec"].get("leaseDurationSeconds") or 15)

    def wait_leader(self, among: set[str] | None = None, timeout: float = 60, *, not_: str = "") -> str:
        """The Lease holder once it is one of ``among`` (None: any) other than ``not_``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = self.leader()
            if holder and holder != not_ and (among is None or holder in among):
                return holder
            time.sleep(0.1)
        raise AssertionError(f"no leader among {sorted(among or ['any'])} but {not_!r} after {timeout}s "
                             f"(holder {self.leader()!r})")
