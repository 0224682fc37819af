"""Smoke tests for the real local control plane + node simulator + opa.

Run: .venv/bin/python -m pytest tests/e2e/test_controlplane_smoke.py -v
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from devstack.controlplane import ControlPlane
from devstack.opa import OpaServer
from devstack.simulator import NodeSimulator

pytestmark = pytest.mark.cluster

T = TypeVar("T")


async def eventually(fn: Callable[[], Awaitable[T | None]], within: float = 30.0, what: str = "") -> T:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {within}s waiting for {what or fn} (last={last!r})")


@pytest.fixture
async def api(control_plane: ControlPlane, node_simulator: NodeSimulator) -> AsyncIterator[client.ApiClient]:
    c = await config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    name = f"smoke-{request.node.name[5:20].replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(api)
    await core.create_namespace({"metadata": {"name": name}})

    # PodSecurity/ServiceAccount admission need the namespace's default SA to exist
    async def sa_ready() -> bool:
        try:
            await core.read_namespaced_service_account("default", name)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    await eventually(sa_ready, 15, "default ServiceAccount")
    yield name
    await core.delete_namespace(name)


def _job(name: str, argv: list[str], sa: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "spec": {
                    "serviceAccountName": sa,
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "kexec/sim",
                            "command": argv,
                            "env": [
                                {
                                    "name": "POD_NAMESPACE",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                }
                            ],
                        }
                    ],
                }
            },
        },
    }


async def _job_condition(batch: client.BatchV1Api, ns: str, name: str) -> str | None:
    job = await batch.read_namespaced_job_status(name, ns)
    for c in job.status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return str(c.type)
    return None


async def test_deployment_pods_become_ready(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    labels = {"app": "web"}
    await apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
                },
            },
        },
    )

    async def ready() -> bool:
        d = await apps.read_namespaced_deployment_status("web", namespace)
        return d.status.ready_replicas == 3 and d.status.available_replicas == 3

    await eventually(ready, 30, "deployment readyReplicas == 3")
    pods = await client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=web")
    assert len(pods.items) == 3
    for p in pods.items:
        assert p.status.phase == "Running"
        assert p.spec.node_name and p.spec.node_name.startswith("sim-node-")
        assert p.status.pod_ip


LIST_PODS = """
import asyncio, os, sys
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

async def main():
    await config.load_kube_config()  # $KUBECONFIG: the pod's ServiceAccount token
    async with client.ApiClient() as api:
        try:
            pods = await client.CoreV1Api(api).list_namespaced_pod(os.environ["POD_NAMESPACE"])
        except ApiException as e:
            msg = f"{e.status} {e.reason}: {e.body}"
            code = 1
        else:
            msg = f"listed {len(pods.items)} pods"
            code = 0
    with open(os.environ["KEXEC_TERMINATION_LOG"], "w") as f:
        f.write(msg)
    return code

sys.exit(asyncio.run(main()))
"""


async def test_job_serviceaccount_rbac(api: client.ApiClient, namespace: str) -> None:
    core, rbac, batch = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.BatchV1Api(api)
    for sa in ("lister", "nobody"):
        await core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    await rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-lister"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    await rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "lister-can-list"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-lister"},
            "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": namespace}],
        },
    )
    argv = [sys.executable, "-c", LIST_PODS]
    await batch.create_namespaced_job(namespace, _job("allowed", argv, sa="lister"))
    await batch.create_namespaced_job(namespace, _job("denied", argv, sa="nobody"))

    async def both_done() -> tuple[str, str] | None:
        a = await _job_condition(batch, namespace, "allowed")
        d = await _job_condition(batch, namespace, "denied")
        return (a, d) if a and d else None

    assert await eventually(both_done, 40, "both jobs finished") == ("Complete", "Failed")

    async def term_message(job: str) -> str:
        pods = await core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}")
        assert len(pods.items) == 1, [p.metadata.name for p in pods.items]
        st = pods.items[0].status.container_statuses[0].state.terminated
        assert st is not None
        return f"{st.exit_code} {st.reason} {st.message}"

    allowed = await term_message("allowed")
    assert allowed.startswith("0 Completed listed "), allowed
    denied = await term_message("denied")
    assert denied.startswith("1 Error 403 Forbidden"), denied
    assert "system:serviceaccount:" + namespace + ":nobody" in denied


async def test_deleting_job_garbage_collects_pods(api: client.ApiClient, namespace: str) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    argv = [sys.executable, "-c", "import time; time.sleep(300)"]
    await batch.create_namespaced_job(namespace, _job("sleeper", argv, parallelism=2, completions=2))
    selector = "batch.kubernetes.io/job-name=sleeper"

    async def running() -> bool:
        pods = await core.list_namespaced_pod(namespace, label_selector=selector)
        return len(pods.items) == 2 and all(p.status.phase == "Running" for p in pods.items)

    await eventually(running, 20, "2 running sleeper pods")
    await batch.delete_namespaced_job("sleeper", namespace, propagation_policy="Background")

    async def gone() -> bool:
        pods = await core.list_namespaced_pod(namespace, label_selector=selector)
        return not pods.items

    await eventually(gone, 30, "sleeper pods garbage-collected")


async def test_privileged_pod_rejected_by_pod_security(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    await core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    privileged = {
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    with pytest.raises(ApiException) as ei:
        await core.create_namespaced_pod(namespace, privileged)
    assert ei.value.status == 403
    assert "violates PodSecurity" in ei.value.body and "restricted" in ei.value.body

    compliant = {
        "metadata": {"name": "compliant"},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    created = await core.create_namespaced_pod(namespace, compliant)
    assert created.metadata.name == "compliant"


def test_opa_runs(opa_bin: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(opa_bin), "version"], check=True, capture_output=True, text=True).stdout
    assert "Version: 1.22." in out, out
    (tmp_path / "smoke.rego").write_text("package smoke\n\nallow if input.x == 1\n")
    with OpaServer([tmp_path], bin_dir=opa_bin.parent, log_dir=tmp_path) as opa:
        assert opa.query("smoke/allow", {"x": 1}) is True
        assert opa.query("smoke/allow", {"x": 2}) is None


@pytest.mark.postgres
def test_psql_connects_to_the_test_server(postgres_server: Any) -> None:
    """The PostgreSQL the setup installed and started answers the real psql client."""
    out = subprocess.run([postgres_server._bin("psql"), postgres_server.dsn, "-Atc", "select 40 + 2"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
