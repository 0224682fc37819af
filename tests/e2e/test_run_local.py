"""hack/run_local.py --no-examples: the dev stack as a tool, brought up, used, torn down.

Starts its own stack (control plane, simulator, PostgreSQL, controller), not the session
fixtures; needs $KEXEC_BIN_DIR (hack/build-binaries.sh) and PostgreSQL's binaries.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
NS_CTRL = "kubernaut-system"


def start_time(pid: int) -> str | None:
    """The process's start time (guards against pid reuse), None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``, with its start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(parent_of(int(entry.name)), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = start_time(pid)
        if started is not None:
            found[pid] = started
        todo += children.get(pid, [])
    return found


def postmaster_of(dsn: str) -> int:
    async def parent_of_backend() -> int:
        conn = await asyncpg.connect(dsn)
        try:  # a backend's parent is the postmaster; read it while the backend lives
            return parent_of(int(await conn.fetchval("SELECT pg_backend_pid()")))
        finally:
            await conn.close()

    return asyncio.run(parent_of_backend())


@pytest.mark.parametrize("mode", ["process", pytest.param("in-cluster", marks=pytest.mark.image)])
def test_run_local_serves_an_execution_and_stops_cleanly(tmp_path: Path, mode: str) -> None:
    """``in-cluster``: the controller installed from the image by kubectl apply -k (needs
    $KEXEC_IMAGE_ROOTFS: hack/test.sh exports it)."""
    bin_dir = os.environ.get("KEXEC_BIN_DIR")
    if not bin_dir:
        pytest.fail("KEXEC_BIN_DIR is not set: run hack/build-binaries.sh and export its output")
    if mode == "in-cluster" and not os.environ.get("KEXEC_IMAGE_ROOTFS"):
        pytest.fail("KEXEC_IMAGE_ROOTFS is not set: run hack/build-image.sh and export its last line")
    kubectl = [str(Path(bin_dir) / "kubectl"), "--kubeconfig", str(tmp_path / "kubeconfig")]
    stderr = open(tmp_path / "run-local.stderr", "wb")
    extra = ["--in-cluster"] if mode == "in-cluster" else []
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "hack" / "run_local.py"), "--no-examples", "--state-dir", str(tmp_path), *extra],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    out: list[str] = []
    stack: dict[int, str] = {}  # pid -> start time of every process the stack runs
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()

    def output() -> str:
        return "".join(out) + "\n--- stderr tail:\n" + (tmp_path / "run-local.stderr").read_text()[-3000:]

    try:
        t0 = time.monotonic()
        while "ready\n" not in out:
            try:
                out.append(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, f"run_local.py exited {proc.returncode} before ready:\n{output()}"
                assert time.monotonic() - t0 < 240, f"no 'ready' after 240s:\n{output()}"
        dsn = re.search(r"audit DSN:\s+(\S+)", "".join(out))
        assert dsn, output()
        stack.update(descendants(proc.pid))
        postmaster = postmaster_of(dsn.group(1))
        stack[postmaster] = start_time(postmaster) or ""
        config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        server = urlsplit(config["clusters"][0]["cluster"]["server"])
        names = {Path(f"/proc/{pid}/exe").resolve().name for pid in stack}
        assert {"etcd", "kube-apiserver", "kube-controller-manager", "postgres"} <= names, names
        if mode == "in-cluster":  # both controller replicas run from the image, under bwrap
            assert "bwrap" in names, names
            pods = subprocess.run([*kubectl, "get", "pods", "-n", NS_CTRL, "-o", "json"],
                                  capture_output=True, text=True, check=True)
            images = [c["image"] for p in json.loads(pods.stdout)["items"] for c in p["spec"]["containers"]]
            assert images == ["localhost/kexec:dev"] * 2, images

        nodes = subprocess.run([*kubectl, "get", "nodes", "-o", "name"], capture_output=True, text=True, check=True)
        assert sorted(nodes.stdout.split()) == ["node/sim-node-1", "node/sim-node-2", "node/sim-node-3"]
        name = f"cordon-dry-{uuid.uuid4().hex[:6]}"
        execution = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1", "kind": "KubernetesExecution",
                     "metadata": {"name": name, "namespace": NS_CTRL},
                     "spec": {"action": "cordon_node", "parameters": {"cordonNode": {"node": "sim-node-2"}},
                              "dryRun": True}}
        created = subprocess.run([*kubectl, "create", "-f", "-"], input=json.dumps(execution),
                                 capture_output=True, text=True)
        assert created.returncode == 0, created.stderr
        status: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while status.get("phase") not in ("Completed", "Failed", "RollbackReady") and time.monotonic() < deadline:
            time.sleep(0.5)
            got = subprocess.run([*kubectl, "get", "kexec", "-n", NS_CTRL, name, "-o", "json"],
                                 capture_output=True, text=True, check=True)
            status = json.loads(got.stdout).get("status") or {}
        assert (status.get("phase"), status.get("reason")) == ("Completed", "DryRunSucceeded"), status
        node = subprocess.run([*kubectl, "get", "node", "sim-node-2", "-o", "json"],
                              capture_output=True, text=True, check=True)
        assert not json.loads(node.stdout)["spec"].get("unschedulable"), "dryRun cordoned the node"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, output()
        deadline = time.monotonic() + 10  # the postmaster is not our child: it may take a moment
        while time.monotonic() < deadline and any(start_time(p) == s for p, s in stack.items()):
            time.sleep(0.2)
        left = [p for p, s in stack.items() if start_time(p) == s]
        assert left == [], f"left running: {[(p, Path(f'/proc/{p}/cmdline').read_bytes()[:200]) for p in left]}"
        with pytest.raises(OSError), socket.create_connection((server.hostname, server.port), timeout=2):
            pass  # kube-apiserver's port is closed
        assert not (tmp_path / "kubeconfig").exists()  # it would point at a cluster that is gone
    finally:  # when the test failed midway: tear down anyway, forcibly if need be
        if proc.poll() is None:
            stack.update(descendants(proc.pid))
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid, started in stack.items():
            if start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)
        stderr.close()
