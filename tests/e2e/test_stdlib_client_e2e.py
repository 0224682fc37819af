"""The runner's standard-library transport (``StdlibApi``) against a real kube-apiserver,
side by side with the controller's kubernetes-asyncio adapter (``KubernetesApi``): the same
reads and mutations give the same outcomes, errors included (404 → absent, AlreadyExists,
Conflict on a stale uid, Invalid, Forbidden under impersonation, dry run not persisted,
eviction). Both shape their calls in ``adapters/kubernetes/requests.py``.

Needs the session fixture ``control_plane``; FAILS, never skips, without it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from devstack.controlplane import ControlPlane
from kexec.adapters.kubernetes.api import KubernetesApi
from kexec.adapters.kubernetes.client import api_client
from kexec.adapters.kubernetes.stdlib_client import StdlibApi, from_kubeconfig
from kexec.application.ports.cluster import ClusterError, Identity, RunnerCluster
from kexec.domain.resources import Create, Delete, Evict, Get, List, ObjectRef, Patch


@pytest_asyncio.fixture
async def kubernetes_api(control_plane: ControlPlane) -> AsyncIterator[KubernetesApi]:
    async for api in api_client(str(control_plane.kubeconfig), pool_size=4):
        yield KubernetesApi(api, request_timeout=10.0)


async def outcome(coro: Any) -> Any:
    try:
        return await coro
    except ClusterError as exc:
        return type(exc).__name__


async def scenario(cluster: RunnerCluster, ns: str) -> list[Any]:
    """Every RunnerCluster call a runner makes, reduced to what the runner looks at."""
    cm = ObjectRef("ConfigMap", ns, "cfg")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "x"}},
            "data": {"k": "1"}}
    seen: list[Any] = [await cluster.read(Get("t", cm))]
    created = await cluster.mutate(Create(cm, body))
    seen.append(created["data"])
    seen.append(await outcome(cluster.mutate(Create(cm, body))))
    dry = await cluster.mutate(Patch(cm, "merge", {"data": {"k": "2"}}), dry_run=True)
    seen += [dry["data"], (await cluster.read(Get("t", cm)))["data"]]
    await cluster.mutate(Patch(cm, "merge", {"data": {"k": "3"}}))
    await cluster.mutate(Patch(cm, "apply", {"apiVersion": "v1", "kind": "ConfigMap",
                                             "metadata": {"name": "cfg"}, "data": {"a": "y"}}))
    items = await cluster.read(List("cms", "ConfigMap", ns, label_selector="app=x"))
    seen.append([(i["kind"], i["apiVersion"], i["data"]) for i in items])
    seen.append(await outcome(cluster.mutate(Create(ObjectRef("ConfigMap", ns, "Bad_Name"),
                                                    {"metadata": {"name": "Bad_Name"}}))))
    nobody = Identity(ns, "nobody")
    seen.append(await outcome(cluster.read(Get("t", cm), identity=nobody)))
    seen.append(await outcome(cluster.mutate(Delete(cm, uid="not-its-uid"))))
    await cluster.mutate(Delete(cm, uid=created["metadata"]["uid"]))
    seen.append(await cluster.read(Get("t", cm)))
    pod = ObjectRef("Pod", ns, "p")
    await cluster.mutate(Create(pod, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                      "spec": {"containers": [{"name": "c", "image": "x"}]}}))
    evicted = await cluster.mutate(Evict(pod, grace_period_seconds=0))
    seen.append(evicted.get("status"))
    seen.append(await outcome(cluster.mutate(Evict(pod))))
    return seen


EXPECTED = [None, {"k": "1"}, "AlreadyExists", {"k": "2"}, {"k": "1"},
            [("ConfigMap", "v1", {"k": "3", "a": "y"})], "Invalid", "Forbidden", "Conflict", None,
            "Success", "NotFound"]


@pytest.mark.cluster
async def test_stdlib_transport_and_kubernetes_asyncio_adapter_agree(
        control_plane: ControlPlane, kubernetes_api: KubernetesApi) -> None:
    assert control_plane.kubeconfig is not None
    stdlib = StdlibApi(from_kubeconfig(str(control_plane.kubeconfig)))  # admin: a client certificate
    results = {}
    for name, cluster in (("kubernetes-asyncio", kubernetes_api), ("stdlib", stdlib)):
        ns = f"stdlib-e2e-{uuid.uuid4().hex[:6]}"
        control_plane.api("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        try:
            results[name] = await scenario(cluster, ns)
        finally:
            control_plane.api("DELETE", f"/api/v1/namespaces/{ns}")
    stdlib.close()
    assert results["kubernetes-asyncio"] == EXPECTED
    assert results["stdlib"] == EXPECTED
    # One request per call, no retries: 16 calls, plus one GET /readyz for the Forbidden answer
    # (a ready API server: the refusal stands and is not sent again).
    assert stdlib.calls == 16 + 1
