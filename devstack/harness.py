"""kexec on the real local control plane: CRD + RBAC applied, the controller running as
its own least-privilege ServiceAccount in a subprocess, Jobs executed by the simulator.

Used by the e2e tests (fixture ``kexec`` in tests/e2e/conftest.py), hack/run_local.py and
bench/controller_bench.py. Failed checks raise AssertionError with the details."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devstack.controlplane import ControlPlane, free_port

ROOT = Path(__file__).resolve().parents[1]
NS_CTRL = "kubernaut-system"
GROUP_PATH = "/apis/kubernetesexecution.kubernaut.io/v1alpha1"
TERMINAL = ("Completed", "Failed", "RollbackReady")
APPROVER = "alice"  # a second person with kexec-approver (the admin creates executions)

__all__ = ["GROUP_PATH", "NS_CTRL", "TERMINAL", "Kexec", "dev_policy_data", "free_port"]


def dev_policy_data() -> dict[str, Any]:
    """policies/data.json with the storm brake and the cooldown off: tests and the bench
    create hundreds of executions of one action in minutes, often on one target (the
    brake's own tests turn it on through the safety-policies ConfigMap)."""
    data: dict[str, Any] = json.loads((ROOT / "policies" / "data.json").read_text())
    data["kexec"]["limits"].update(storm_brake={}, cooldown={})
    return data


def dev_policy_dir(target: Path) -> Path:
    """The shipped policies with ``dev_policy_data``, for the controllers the harness runs."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ROOT / "policies", target, ignore=shutil.ignore_patterns("testdata"))
    (target / "data.json").write_text(json.dumps(dev_policy_data(), indent=1))
    return target

_INSTANCES: list[Kexec] = []  # every Kexec made in this process (Kexec.existing)


class Kexec:
    """Drives the controller process and talks to the API as admin."""

    def __init__(self, cp: ControlPlane, dsn: str) -> None:
        self.cp = cp
        self.dsn = dsn
        self.procs: list[subprocess.Popen[bytes]] = []
        self.http_port = free_port()
        self.log_dir = Path(cp.log_dir or "/tmp")
        self.kubeconfig = self.log_dir.parent / "kexec-controller.kubeconfig"
        self.policy_dir = dev_policy_dir(self.log_dir.parent / "policies-dev")
        _INSTANCES.append(self)

    @staticmethod
    def existing(cp: ControlPlane) -> Kexec | None:
        """The Kexec already installed on this control plane in this process (e.g. the e2e
        tests' session fixture), so another suite drives the same controllers instead of
        running a second, competing set."""
        return next((k for k in _INSTANCES if k.cp is cp), None)

    # --- admin API ---------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return self.cp.api(method, path, body, **kw)

    def try_api(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        try:
            return 200, self.api(method, path, body, **kw)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def token_for(self, namespace: str, service_account: str) -> str:
        return str(self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"expirationSeconds": 600}})["status"]["token"])

    def as_token(self, token: str, method: str, path: str, body: Any = None) -> int:
        """HTTP status of a request made with a bearer token (RBAC as that identity)."""
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.cp.ca_file))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(str(self.cp.server) + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Content-Type", "application/merge-patch+json" if method == "PATCH"
                       else "application/json")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = self.cp.kubectl(*args, check=False)
        if check and proc.returncode:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def apply(self, obj: dict[str, Any]) -> None:
        proc = self.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                               check=False, input=json.dumps(obj))
        if proc.returncode:
            raise AssertionError(proc.stderr)

    def namespace(self, name: str, **labels: str) -> str:
        self.apply({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels}})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the SA controller makes "default"
            code, _ = self.try_api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            if code == 200:
                return name
            time.sleep(0.1)
        return name

    # --- setup ------------------------------------------------------------------------
    def install(self) -> None:
        self.namespace(NS_CTRL)
        for path in ("deploy/base/crd.yaml", "deploy/base/admission.yaml", "deploy/base/rbac"):
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / path))
        self.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                     "crd/kubernetesexecutions.kubernetesexecution.kubernaut.io")
        self.await_admission()
        # A second person who may approve (kexec-approver) and edit executions everywhere.
        for role in ("kexec-approver", "kexec-edit"):
            self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                        "metadata": {"name": f"e2e-approver-{role}"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                    "name": role},
                        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                      "name": APPROVER}]})
        self.namespace(NS_CTRL)
        self.kubectl("create", "serviceaccount", "kubernetes-executor-sa", "-n", NS_CTRL, check=False)
        token = self.api("POST", f"/api/v1/namespaces/{NS_CTRL}/serviceaccounts/kubernetes-executor-sa/token",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                          "spec": {"expirationSeconds": 86400}})["status"]["token"]
        assert self.cp.kubeconfig is not None
        admin = yaml.safe_load(self.cp.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": "kexec-controller", "user": {"token": token}}],
            "contexts": [{"name": "kexec", "context": {"cluster": cluster["name"],
                                                         "user": "kexec-controller"}}],
            "current-context": "kexec",
        }))

    def await_admission(self, timeout: float = 30) -> None:
        """The admission policies take a moment to be in force: a server-side dry-run create
        comes back stamped once they are."""
        probe = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1",
                 "kind": "KubernetesExecution", "metadata": {"name": "admission-probe"},
                 "spec": {"action": "cordon_node", "parameters": {"cordonNode": {"node": "x"}}}}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, obj = self.try_api(
                "POST", f"{GROUP_PATH}/namespaces/{NS_CTRL}/kubernetesexecutions?dryRun=All", probe)
            if code == 200 and "kubernetesexecution.kubernaut.io/requested-by" in (
                    (obj.get("metadata") or {}).get("annotations") or {}):
                return
            time.sleep(0.2)
        raise AssertionError("kexec's admission policies did not come into force")

    def start_controller(self, identity: str = "e2e-1", *extra: str,
                         http_port: int | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"kexec-controller-{identity}.log", "ab")
        argv = [
            str(Path(sys.executable).with_name("kexec")), "controller",
            "--kubeconfig", str(self.kubeconfig), "--namespace", NS_CTRL,
            "--trusted-namespaces", NS_CTRL, "--audit-dsn", self.dsn,
            "--policy-dir", str(self.policy_dir), "--image", "kexec:e2e",
            "--http-addr", f"127.0.0.1:{self.http_port if http_port is None else http_port}",
            # probes and /metrics on one port, as the e2e tests read them
            "--metrics-addr", f"127.0.0.1:{self.http_port if http_port is None else http_port}",
            "--identity", identity, "--workers", "16", *extra,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("KUBECONFIG", None)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_controller(self, proc: subprocess.Popen[bytes], kill: bool = False) -> None:
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs:
            self.stop_controller(proc)

    def replace_controllers(self, *starts: tuple[str, tuple[str, ...], int]) -> list[subprocess.Popen[bytes]]:
        """Stop every running controller, start these (identity, extra args, http port)."""
        for proc in list(self.procs):
            self.stop_controller(proc)
            self.procs.remove(proc)
        return [self.start_controller(identity, *extra, http_port=port) for identity, extra, port in starts]

    def default_controller(self) -> None:
        self.replace_controllers(("e2e-1", ("--no-leader-elect",), 0))

    def controller_log(self, identity: str = "e2e-1") -> str:
        path = self.log_dir / f"kexec-controller-{identity}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- executions -----------------------------------------------------------------------
    def create(self, namespace: str, action: str, params: dict[str, Any], *,
               name: str | None = None, **spec: Any) -> str:
        from kexec.domain.actions import ACTIONS

        name = name or f"{action.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        body = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1",
                "kind": "KubernetesExecution", "metadata": {"name": name},
                "spec": {"action": action, "parameters": {ACTIONS[action].key: params}, **spec}}
        self.api("POST", f"{GROUP_PATH}/namespaces/{namespace}/kubernetesexecutions", body)
        return name

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.api("GET", f"{GROUP_PATH}/namespaces/{namespace}/kubernetesexecutions/{name}"))

    def wait(self, namespace: str, name: str, phases: tuple[str, ...] = TERMINAL,
             timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get(namespace, name)
            if (obj.get("status") or {}).get("phase") in phases:
                return obj
            time.sleep(0.1)
        raise AssertionError(
            f"{namespace}/{name} not in {phases} after {timeout}s: "
            f"{json.dumps(obj.get('status'), indent=1)}\n--- controller log tail:\n"
            f"{self.controller_log()[-3000:]}")

    def until(self, check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or check}")

    def jobs_for(self, namespace: str, name: str) -> list[dict[str, Any]]:
        sel = f"kubernetesexecution.kubernaut.io/execution={name}"
        return list(self.api("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector={sel}")["items"])

    def events_for(self, namespace: str, name: str) -> list[dict[str, Any]]:
        sel = f"involvedObject.name={name}"
        return list(self.api("GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector={sel}")["items"])
