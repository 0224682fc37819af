"""The kexec image (hack/build-image.sh) runs: as uid 65532 on a read-only root filesystem,
with runtime dependencies only and within its size budget.

Uses $KEXEC_IMAGE_ROOTFS when set (hack/test.sh builds the image first and exports it),
else runs hack/build-image.sh (cached: seconds when the tree is unchanged).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from devstack.controlplane import ControlPlane
from devstack.image_runner import Image, sandbox_argv
from devstack.simulator import NodeSimulator
from kexec.domain.actions import ACTIONS

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
SIZE_BUDGET = 200_000_000  # bytes, uncompressed
UID = 65532


@pytest.fixture(scope="module")
def image(kexec_image_rootfs: Path) -> Image:
    return Image.load(kexec_image_rootfs)


def run(image: Image, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sandbox_argv(image, argv, env=env), capture_output=True, text=True,
                          timeout=120, check=False)


def test_image_runs_as_65532_by_default(image: Image) -> None:
    assert image.ids() == (UID, UID)
    assert image.entrypoint == ["kexec"]
    proc = run(image, image.argv(command=["id"]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == [f"uid={UID}(kexec)", f"gid={UID}(kexec)"]


def test_actions_lists_the_11_actions(image: Image) -> None:
    proc = run(image, image.argv(args=["actions"]), env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "11 actions" in proc.stdout
    assert len(ACTIONS) == 11
    for name in ACTIONS:
        assert name in proc.stdout


def test_runner_without_its_environment_fails_permanently_with_a_clear_message(image: Image) -> None:
    proc = run(image, image.argv(args=["runner"]))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)  # EXIT_PERMANENT: no retry
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["success"] is False
    assert report["retryable"] is False
    assert report["reason"] == "InvalidRunnerEnvironment"
    assert report["message"] == "missing environment variable KEXEC_SPEC"


def test_root_filesystem_is_read_only_and_tmp_writable(image: Image) -> None:
    proc = run(image, ["/bin/sh", "-c", "touch /tmp/ok && ! touch /opt/kexec/x 2>/dev/null && echo fine"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "fine"


def rootfs_bytes(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def test_size_budget(image: Image) -> None:
    size = rootfs_bytes(image.rootfs)
    assert 50_000_000 < size <= SIZE_BUDGET, f"image is {size / 1e6:.1f} MB uncompressed"


def test_runtime_dependencies_only(image: Image) -> None:
    root = image.rootfs
    tools = ["gcc", "cc", "c++", "g++", "clang", "ld", "as", "strip", "make", "pip", "pip3"]
    found = [f"{d}/{t}" for d in ("usr/bin", "usr/local/bin", "opt/kexec/bin") for t in tools
             if (root / d / t).exists()]
    assert found == []
    site = next(root.glob("opt/kexec/lib/python3*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "kexec" in installed
    assert installed.isdisjoint({"pip", "setuptools", "pytest", "hypothesis", "mypy", "ruff",
                                 "import_linter", "cryptography"})
    assert not list(site.rglob("*.pyx")) and not list(site.rglob("*.c"))


# --- Job pods of the image, run by the node simulator from the image ------------------------

# Runs in the container: the in-cluster configuration (no KUBECONFIG), as the pod's
# ServiceAccount; the result goes to the termination log.
IN_POD = """
import asyncio, json, os, pathlib, sys
from kubernetes_asyncio import client
from kexec.adapters.kubernetes.client import api_client

async def whoami():
    async for api in api_client():
        review = await client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        return review.status.user_info.username

def writable(path):
    try:
        pathlib.Path(path, "probe").write_text("x")
        return True
    except OSError:
        return False

sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
pathlib.Path("/dev/termination-log").write_text(json.dumps({
    "user": asyncio.run(whoami()), "uid": os.getuid(), "gid": os.getgid(), "arg": sys.argv[1:],
    "namespace": (sa / "namespace").read_text(), "kubeconfig": os.environ.get("KUBECONFIG"),
    "policy_dir": os.environ.get("KEXEC_POLICY_DIR"), "root_writable": writable("/opt"),
    "tmp_writable": writable("/tmp"), "cwd": os.getcwd()}))
"""


def _eventually(fn: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


@pytest.fixture
def image_node(control_plane: ControlPlane, image: Image, tmp_path: Path) -> Iterator[str]:
    """A simulated node of its own that runs the kexec image from its root filesystem
    (pods are pinned to it, so the session simulator leaves them alone)."""
    node = f"image-node-{uuid.uuid4().hex[:6]}"
    assert control_plane.kubeconfig is not None
    sim = NodeSimulator(control_plane.kubeconfig, nodes=[node], log_dir=tmp_path / "logs",
                        work_dir=tmp_path / "sim", images={"kexec": image.rootfs})
    sim.start()
    try:
        yield node
    finally:
        sim.stop()
        for path in (f"/api/v1/nodes/{node}", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"):
            try:
                control_plane.api("DELETE", path)
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise


@pytest.mark.cluster
def test_job_pod_of_the_image_runs_from_it_with_the_in_cluster_config(control_plane: ControlPlane,
                                                                      image_node: str) -> None:
    ns = f"image-{uuid.uuid4().hex[:6]}"
    control_plane.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        def sa_ready() -> bool:
            try:
                control_plane.api("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")
                return True
            except urllib.error.HTTPError:
                return False

        _eventually(sa_ready, 20, "the default ServiceAccount")
        control_plane.api("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "nodeName": image_node, "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID},
                "containers": [{
                    "name": "probe", "image": "registry.example/kexec:0.1.0",
                    "command": ["python3", "-c", IN_POD], "args": ["$(GREETING)"],
                    "env": [{"name": "GREETING", "value": "hello"}],
                    "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                }]}}}})

        def finished() -> dict[str, Any] | None:
            pods = control_plane.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3Dprobe")["items"]
            if pods and pods[0].get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return dict(pods[0])
            return None

        pod = _eventually(finished, 90, "the probe pod to finish")
        term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert pod["status"]["phase"] == "Succeeded", term
        report = json.loads(term["message"])
        assert report == {
            "user": f"system:serviceaccount:{ns}:default", "uid": UID, "gid": UID, "arg": ["hello"],
            "namespace": ns, "kubeconfig": None, "policy_dir": "/etc/kexec/policies",
            "root_writable": False, "tmp_writable": True, "cwd": "/tmp",
        }
    finally:
        control_plane.api("DELETE", f"/api/v1/namespaces/{ns}")
