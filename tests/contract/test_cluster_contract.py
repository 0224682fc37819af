"""ClusterPort contract: FakeCluster and KubernetesCluster on the REAL local control plane
(etcd + kube-apiserver + kube-controller-manager, tests/support) run the same tests.

Only the port is used to arrange and to observe (admin credential = ``identity=None``).
What real controllers do in the background (the disruption controller computing a
PodDisruptionBudget's status) is awaited through ``Backend.settle_pdb``. The real cases
FAIL (never skip) when the control plane cannot start.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration

from devstack.controlplane import ControlPlane
from kexec.adapters.fakes.clock import ManualClock
from kexec.adapters.fakes.cluster import FakeCluster
from kexec.adapters.kubernetes.cluster import KubernetesCluster
from kexec.adapters.kubernetes.rbac import action_service_account
from kexec.application.ports.cluster import (
    AlreadyExists,
    ClusterPort,
    Conflict,
    Forbidden,
    Identity,
    Invalid,
    JobRequest,
    NotFound,
    TooManyRequests,
)
from kexec.domain.execution import Execution
from kexec.domain.phases import Phase
from kexec.domain.resources import Create, Delete, Evict, Get, List, ObjectRef, Patch
from kexec.domain.status import ExecutionStatus

ROOT = Path(__file__).resolve().parents[2]
ROOT_CA = "kube-root-ca.crt"


# --------------------------------------------------------------------------- the backends


@dataclass
class Backend:
    """One ClusterPort to test, a fresh namespace in it, and what only it can do."""

    name: str
    port: ClusterPort
    ns: str
    other_ns: str  # a second fresh namespace
    settle_pdb: Callable[[str], Awaitable[None]]  # until the PDB's status is computed


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The CRD and the per-action ClusterRoles on the real apiserver (idempotent)."""
    for path in ("deploy/base/crd.yaml", "deploy/base/rbac/actions.yaml"):
        proc = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                                     str(ROOT / path), check=False)
        if proc.returncode:
            pytest.fail(f"kubectl apply {path}: {proc.stderr}")
    proc = control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                                 "crd/kubernetesexecutions.kubernetesexecution.kubernaut.io", check=False)
    if proc.returncode:
        pytest.fail(f"CRD not established: {proc.stderr}")
    yield control_plane


async def until(check: Callable[[], Awaitable[Any]], what: str, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.2)


async def real_namespace(port: KubernetesCluster, name: str) -> None:
    await port.mutate(Create(ObjectRef("Namespace", "", name),
                             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
    # Pods need the namespace's "default" ServiceAccount (made by its controller).
    await until(lambda: port.read(Get("sa", ObjectRef("ServiceAccount", name, "default"))),
                f"the default ServiceAccount of {name}")


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.cluster)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    suffix = uuid.uuid4().hex[:6]
    ns, other = f"contract-{suffix}", f"contract-{suffix}-b"
    if request.param == "fake":
        fake = FakeCluster(ManualClock())
        for name in (ns, other):
            await fake.mutate(Create(ObjectRef("Namespace", "", name),
                                     {"kind": "Namespace", "metadata": {"name": name}}))

        async def nothing(_: str) -> None:
            return None  # the fake decides an eviction from the PDB and the pods themselves

        yield Backend("fake", fake, ns, other, nothing)
        return
    cp: ControlPlane = request.getfixturevalue("installed")
    cfg = Configuration()
    await config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)
    async with ApiClient(cfg) as api:
        port = KubernetesCluster(api, request_timeout=20)
        for name in (ns, other):
            await real_namespace(port, name)

        async def settle_pdb(pdb: str) -> None:
            async def computed() -> bool:
                obj = await port.read(Get("pdb", ObjectRef("PodDisruptionBudget", ns, pdb)))
                st = (obj or {}).get("status") or {}
                return bool(st.get("observedGeneration") == obj["metadata"]["generation"]
                            and "disruptionsAllowed" in st and st.get("expectedPods", 0) > 0)
            await until(computed, f"the disruption controller to compute PDB {ns}/{pdb}")

        try:
            yield Backend("real", port, ns, other, settle_pdb)
        finally:
            for name in (ns, other):
                try:
                    await port.mutate(Delete(ObjectRef("Namespace", "", name)))
                except NotFound:
                    pass


# --------------------------------------------------------------------------- helpers


def configmap(ns: str, name: str, labels: dict[str, str] | None = None, **data: str) -> Create:
    return Create(ObjectRef("ConfigMap", ns, name), {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "data": data})


def deployment(ns: str, name: str) -> Create:
    return Create(ObjectRef("Deployment", ns, name), {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9",
                                                       "args": ["a", "b"]},
                                                      {"name": "side", "image": "busybox:1"}]}}}})


def pod(ns: str, name: str, labels: dict[str, str]) -> Create:
    return Create(ObjectRef("Pod", ns, name), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}})


def execution(ns: str, name: str) -> Execution:
    """The one place the contract builds an Execution (its type is being reworked)."""
    return Execution(namespace=ns, name=name, spec={
        "action": "scale_deployment",
        "parameters": {"scaleDeployment": {"namespace": ns, "deployment": "web", "replicas": 2}},
        "maxRetries": 1})


async def get(b: Backend, kind: str, name: str, ns: str | None = None) -> Any:
    return await b.port.read(Get("x", ObjectRef(kind, b.ns if ns is None else ns, name)))


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


# --------------------------------------------------------------------------- reads


async def test_get_of_a_missing_object_is_none(backend: Backend) -> None:
    assert await get(backend, "ConfigMap", "nope") is None
    assert await get(backend, "Deployment", "nope", "no-such-namespace") is None


async def test_list_filters_by_label_selector(backend: Backend) -> None:
    b = backend
    await b.port.mutate(configmap(b.ns, "one", {"app": "a", "tier": "web"}))
    await b.port.mutate(configmap(b.ns, "two", {"app": "a", "tier": "db"}))
    await b.port.mutate(configmap(b.ns, "three", {"app": "b"}))
    await b.port.mutate(configmap(b.other_ns, "four", {"app": "a"}))
    found = await b.port.read(List("cms", "ConfigMap", b.ns, label_selector="app=a"))
    assert sorted(o["metadata"]["name"] for o in found) == ["one", "two"]
    assert {o["kind"] for o in found} == {"ConfigMap"}
    selected = {
        "app=a,tier=db": ["two"], "app==b": ["three"], "app!=a": ["three"], "tier": ["one", "two"],
        "!tier": ["three"], "tier in (web, db),app=a": ["one", "two"], "app notin (a)": ["three"],
        "app in (b)": ["three"],
    }
    for selector, names in selected.items():
        found = await b.port.read(List("cms", "ConfigMap", b.ns, label_selector=selector))
        # kube-root-ca.crt: the real cluster's own, published into every namespace
        assert sorted(o["metadata"]["name"] for o in found if o["metadata"]["name"] != ROOT_CA) == names, selector


async def test_list_filters_by_field_selector(backend: Backend) -> None:
    b = backend
    for name, node in (("p1", "node-a"), ("p2", "node-b"), ("p3", "node-a")):
        body = pod(b.ns, name, {"app": name}).body
        body["spec"]["nodeName"] = node
        await b.port.mutate(Create(ObjectRef("Pod", b.ns, name), body))
    for selector, names in {"spec.nodeName=node-a": ["p1", "p3"], "metadata.name=p2": ["p2"],
                            "spec.nodeName!=node-a": ["p2"],
                            "spec.nodeName=node-a,metadata.name!=p1": ["p3"]}.items():
        found = await b.port.read(List("pods", "Pod", b.ns, field_selector=selector))
        assert sorted(o["metadata"]["name"] for o in found) == names, selector


async def test_cordon_a_cluster_scoped_node_and_find_it_by_field(backend: Backend) -> None:
    b = backend
    name = f"{b.ns}-node"
    ref = ObjectRef("Node", "", name)
    created = await b.port.mutate(Create(ref, {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "labels": {"contract": b.ns}}, "spec": {}}))
    try:
        assert "namespace" not in created["metadata"]
        cordoned = await b.port.mutate(Patch(ref, "merge", {"spec": {"unschedulable": True}}))
        assert rv(cordoned) > rv(created)
        for selector, names in {"spec.unschedulable=true": [name], "spec.unschedulable=false": [],
                                f"metadata.name={name}": [name]}.items():
            found = await b.port.read(List("nodes", "Node", label_selector=f"contract={b.ns}",
                                           field_selector=selector))
            assert [o["metadata"]["name"] for o in found] == names, selector
    finally:
        await b.port.mutate(Delete(ref))
    assert await b.port.read(Get("node", ref)) is None


# --------------------------------------------------------------------------- mutations


async def test_create_of_an_existing_object_is_already_exists(backend: Backend) -> None:
    await backend.port.mutate(configmap(backend.ns, "cm", a="1"))
    with pytest.raises(AlreadyExists):
        await backend.port.mutate(configmap(backend.ns, "cm", a="2"))
    assert (await get(backend, "ConfigMap", "cm"))["data"] == {"a": "1"}


async def test_patch_or_evict_of_a_missing_object_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.port.mutate(Patch(ObjectRef("ConfigMap", backend.ns, "nope"), "merge", {"data": {"a": "1"}}))
    with pytest.raises(NotFound):
        await backend.port.mutate(Evict(ObjectRef("Pod", backend.ns, "nope")))


async def test_create_takes_the_namespace_of_the_request(backend: Backend) -> None:
    b = backend
    body = configmap(b.ns, "cm", a="1").body
    del body["metadata"]["namespace"]
    created = await b.port.mutate(Create(ObjectRef("ConfigMap", b.ns, "cm"), body))
    assert created["metadata"]["namespace"] == b.ns
    assert (await get(b, "ConfigMap", "cm"))["data"] == {"a": "1"}
    with pytest.raises(Invalid):  # a body naming another namespace than the request's
        await b.port.mutate(Create(ObjectRef("ConfigMap", b.ns, "cm2"), configmap(b.other_ns, "cm2", a="1").body))


async def test_create_in_a_missing_namespace_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.port.mutate(configmap("no-such-namespace", "cm", a="1"))
    with pytest.raises(NotFound):
        await backend.port.mutate(configmap("no-such-namespace", "cm", a="1"), dry_run=True)


async def test_merge_patch_changes_the_object_and_bumps_the_resource_version(backend: Backend) -> None:
    b = backend
    before = await b.port.mutate(configmap(b.ns, "cm", a="1", b="2"))
    after = await b.port.mutate(Patch(ObjectRef("ConfigMap", b.ns, "cm"), "merge",
                                      {"data": {"a": "10", "b": None, "c": "3"}}))
    assert after["data"] == {"a": "10", "c": "3"}
    assert rv(after) > rv(before)
    assert (await get(b, "ConfigMap", "cm")) ["data"] == {"a": "10", "c": "3"}


async def test_strategic_merge_patch_merges_containers_by_name(backend: Backend) -> None:
    b = backend
    before = await b.port.mutate(deployment(b.ns, "web"))
    after = await b.port.mutate(Patch(ObjectRef("Deployment", b.ns, "web"), "strategic", {"spec": {"template": {
        "spec": {"containers": [{"name": "side", "image": "busybox:2", "env": [{"name": "X", "value": "1"}]}]}}}}))
    containers = after["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("app", "registry.k8s.io/pause:3.9"),
                                                             ("side", "busybox:2")]
    assert containers[1]["env"] == [{"name": "X", "value": "1"}]
    assert rv(after) > rv(before)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1


async def test_json_patch_does_every_rfc6902_operation(backend: Backend) -> None:
    b = backend
    await b.port.mutate(configmap(b.ns, "cm", {"keep": "1"}, a="1", b="2", c="3"))
    cm = await b.port.mutate(Patch(ObjectRef("ConfigMap", b.ns, "cm"), "json", [
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "move", "from": "/data/a", "path": "/data/moved"},
        {"op": "copy", "from": "/data/b", "path": "/data/copied"},
        {"op": "remove", "path": "/data/c"},
        {"op": "replace", "path": "/data/b", "value": "20"},
        {"op": "add", "path": "/metadata/labels/x~1y", "value": "slash"},
    ]))
    assert cm["data"] == {"moved": "1", "b": "20", "copied": "2"}
    assert cm["metadata"]["labels"] == {"keep": "1", "x/y": "slash"}
    await b.port.mutate(deployment(b.ns, "web"))
    args = "/spec/template/spec/containers/0/args"
    dep = await b.port.mutate(Patch(ObjectRef("Deployment", b.ns, "web"), "json", [
        {"op": "add", "path": f"{args}/-", "value": "end"},
        {"op": "add", "path": f"{args}/0", "value": "start"},
        {"op": "remove", "path": f"{args}/1"},
        {"op": "move", "from": f"{args}/0", "path": f"{args}/-"},
        {"op": "copy", "from": "/spec/template/spec/containers/1", "path": "/spec/template/spec/containers/-"},
        {"op": "replace", "path": "/spec/template/spec/containers/2/name", "value": "side2"},
    ]))
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert containers[0]["args"] == ["b", "end", "start"]
    assert [c["name"] for c in containers] == ["app", "side", "side2"]
    assert (await get(b, "Deployment", "web"))["spec"]["template"]["spec"]["containers"] == containers


async def test_a_failed_json_patch_test_changes_nothing(backend: Backend) -> None:
    b = backend
    before = await b.port.mutate(configmap(b.ns, "cm", a="1"))
    with pytest.raises(Invalid):
        await b.port.mutate(Patch(ObjectRef("ConfigMap", b.ns, "cm"), "json", [
            {"op": "replace", "path": "/data/a", "value": "2"},
            {"op": "test", "path": "/data/a", "value": "1"}]))
    with pytest.raises(Invalid):
        await b.port.mutate(Patch(ObjectRef("ConfigMap", b.ns, "cm"), "json", [
            {"op": "remove", "path": "/data/missing"}]))
    with pytest.raises(Invalid):  # "add" needs the parent to exist
        await b.port.mutate(Patch(ObjectRef("ConfigMap", b.ns, "cm"), "json", [
            {"op": "add", "path": "/metadata/annotations/x", "value": "1"}]))
    after = await get(b, "ConfigMap", "cm")
    assert (after["data"], rv(after)) == ({"a": "1"}, rv(before))


async def test_the_main_resource_and_its_status_subresource_write_only_their_own_part(backend: Backend) -> None:
    b = backend
    ref = ObjectRef("Pod", b.ns, "p")
    await b.port.mutate(pod(b.ns, "p", {"app": "p"}))
    await b.port.mutate(Patch(ref, "merge", {"metadata": {"labels": {"main": "1"}}, "status": {"phase": "Running"}}))
    obj = await get(b, "Pod", "p")
    assert obj["metadata"]["labels"] == {"app": "p", "main": "1"}
    assert (obj.get("status") or {}).get("phase") != "Running"
    await b.port.mutate(Patch(ref, "merge", {"spec": {"activeDeadlineSeconds": 60}, "status": {"phase": "Running"}},
                              subresource="status"))
    obj = await get(b, "Pod", "p")
    assert obj["status"]["phase"] == "Running"
    assert "activeDeadlineSeconds" not in obj["spec"]


async def test_scale_through_the_scale_subresource_as_the_action_identity(backend: Backend) -> None:
    b = backend
    me = Identity(b.ns, action_service_account("scale_deployment"))
    dep = ObjectRef("Deployment", b.ns, "web")
    await b.port.mutate(deployment(b.ns, "web"))
    await b.port.ensure_identity(me, "scale_deployment", b.ns)
    await b.port.mutate(Patch(dep, "merge", {"spec": {"replicas": 2}}, "scale"), identity=me, dry_run=True)
    assert (await get(b, "Deployment", "web"))["spec"]["replicas"] == 0
    await b.port.mutate(Patch(dep, "merge", {"spec": {"replicas": 2}}, "scale"), identity=me)
    assert (await get(b, "Deployment", "web"))["spec"]["replicas"] == 2
    with pytest.raises(Forbidden):
        await b.port.mutate(Patch(dep, "merge", {"spec": {"replicas": 3}}), identity=me)


async def test_server_side_apply_creates_updates_and_drops_what_it_no_longer_applies(backend: Backend) -> None:
    b = backend
    ref = ObjectRef("ConfigMap", b.ns, "cm")

    def manifest(**data: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": b.ns,
                                                                      "labels": {"applied": "yes"}}, "data": data}

    await b.port.mutate(Patch(ref, "apply", manifest(a="1")), dry_run=True)
    assert await get(b, "ConfigMap", "cm") is None
    created = await b.port.mutate(Patch(ref, "apply", manifest(a="1", b="2")))
    assert created["data"] == {"a": "1", "b": "2"}
    await b.port.mutate(Patch(ref, "merge", {"data": {"other": "x"}}))  # another writer's field
    updated = await b.port.mutate(Patch(ref, "apply", manifest(a="10")))
    assert rv(updated) > rv(created)
    obj = await get(b, "ConfigMap", "cm")
    assert obj["data"] == {"a": "10", "other": "x"}
    assert obj["metadata"]["labels"] == {"applied": "yes"}
    await b.port.mutate(Patch(ref, "apply", manifest(a="20")), dry_run=True)
    assert (await get(b, "ConfigMap", "cm"))["data"] == {"a": "10", "other": "x"}


async def test_a_stale_resource_version_in_a_patch_is_a_conflict(backend: Backend) -> None:
    b = backend
    created = await b.port.mutate(configmap(b.ns, "cm", a="1"))
    ref = ObjectRef("ConfigMap", b.ns, "cm")
    fresh = await b.port.mutate(Patch(ref, "merge", {"metadata": {"resourceVersion": created["metadata"][
        "resourceVersion"]}, "data": {"a": "2"}}))
    with pytest.raises(Conflict):
        await b.port.mutate(Patch(ref, "merge", {"metadata": {"resourceVersion": created["metadata"][
            "resourceVersion"]}, "data": {"a": "3"}}))
    with pytest.raises(Conflict):
        await b.port.mutate(Patch(ref, "strategic", {"metadata": {"resourceVersion": created["metadata"][
            "resourceVersion"]}, "data": {"a": "3"}}))
    after = await get(b, "ConfigMap", "cm")
    assert (after["data"], rv(after)) == ({"a": "2"}, rv(fresh))


async def test_dry_run_validates_but_does_not_persist(backend: Backend) -> None:
    b = backend
    created = await b.port.mutate(configmap(b.ns, "cm", a="1"))
    ref = ObjectRef("ConfigMap", b.ns, "cm")
    answer = await b.port.mutate(Patch(ref, "merge", {"data": {"a": "2"}}), dry_run=True)
    assert answer["data"] == {"a": "2"}
    await b.port.mutate(Delete(ref), dry_run=True)
    await b.port.mutate(configmap(b.ns, "new", a="1"), dry_run=True)
    after = await get(b, "ConfigMap", "cm")
    assert (after["data"], rv(after)) == ({"a": "1"}, rv(created))
    assert await get(b, "ConfigMap", "new") is None
    await b.port.mutate(deployment(b.ns, "web"))
    with pytest.raises(Invalid):
        await b.port.mutate(Patch(ObjectRef("Deployment", b.ns, "web"), "merge", {"spec": {"replicas": -1}}),
                            dry_run=True)
    with pytest.raises(Conflict):
        await b.port.mutate(Patch(ref, "merge", {"metadata": {"resourceVersion": "1"}}), dry_run=True)


async def test_delete_with_a_uid_precondition_of_another_incarnation_is_a_conflict(backend: Backend) -> None:
    b = backend
    created = await b.port.mutate(configmap(b.ns, "cm", a="1"))
    ref = ObjectRef("ConfigMap", b.ns, "cm")
    with pytest.raises(Conflict):
        await b.port.mutate(Delete(ref, uid=str(uuid.uuid4())))
    assert await get(b, "ConfigMap", "cm") is not None
    await b.port.mutate(Delete(ref, uid=created["metadata"]["uid"]))
    assert await get(b, "ConfigMap", "cm") is None
    with pytest.raises(NotFound):
        await b.port.mutate(Delete(ref))


async def test_an_eviction_a_pdb_at_its_limit_blocks_is_too_many_requests(backend: Backend) -> None:
    b = backend
    ref = ObjectRef("Pod", b.ns, "guarded")
    await b.port.mutate(pod(b.ns, "guarded", {"app": "guarded"}))
    await b.port.mutate(Patch(ref, "merge", {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}]}}, subresource="status"))
    await b.port.mutate(Create(ObjectRef("PodDisruptionBudget", b.ns, "guarded"), {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded", "namespace": b.ns},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}))
    await b.settle_pdb("guarded")
    with pytest.raises(TooManyRequests):
        await b.port.mutate(Evict(ref), dry_run=True)
    with pytest.raises(TooManyRequests):
        await b.port.mutate(Evict(ref))
    assert await get(b, "Pod", "guarded") is not None
    # A pod the PDB does not select is evicted (an unscheduled pod goes at once).
    await b.port.mutate(pod(b.ns, "free", {"app": "free"}))
    await b.port.mutate(Evict(ObjectRef("Pod", b.ns, "free")))
    assert await get(b, "Pod", "free") is None
    # With a disruption to spare, the guarded pod may go too.
    await b.port.mutate(Patch(ObjectRef("PodDisruptionBudget", b.ns, "guarded"), "merge",
                              {"spec": {"minAvailable": 0}}))
    await b.settle_pdb("guarded")
    await b.port.mutate(Evict(ref))
    assert await get(b, "Pod", "guarded") is None


# --------------------------------------------------------------------------- identities


async def test_an_identity_may_do_what_its_action_may_and_nothing_else(backend: Backend) -> None:
    b = backend
    me = Identity(b.ns, action_service_account("update_configmap"))
    await b.port.mutate(configmap(b.ns, "cm", a="1"))
    await b.port.mutate(configmap(b.other_ns, "cm", a="1"))
    await b.port.mutate(pod(b.ns, "p", {"app": "p"}))
    cm = ObjectRef("ConfigMap", b.ns, "cm")
    with pytest.raises(Forbidden):
        await b.port.read(Get("cm", cm), identity=me)
    await b.port.ensure_identity(me, "update_configmap", b.ns)
    assert (await b.port.read(Get("cm", cm), identity=me))["data"] == {"a": "1"}
    assert await b.port.read(Get("cm", ObjectRef("ConfigMap", b.ns, "absent")), identity=me) is None
    patched = await b.port.mutate(Patch(cm, "merge", {"data": {"a": "2"}}), identity=me)
    assert patched["data"] == {"a": "2"}
    with pytest.raises(Forbidden):  # another verb on the same kind
        await b.port.mutate(Delete(cm), identity=me)
    with pytest.raises(Forbidden):  # another action's operation
        await b.port.mutate(Delete(ObjectRef("Pod", b.ns, "p")), identity=me)
    with pytest.raises(Forbidden):  # the same operation in another namespace
        await b.port.read(Get("cm", ObjectRef("ConfigMap", b.other_ns, "cm")), identity=me)
    with pytest.raises(Forbidden):  # a list is another verb
        await b.port.read(List("cms", "ConfigMap", b.ns), identity=me)
    with pytest.raises(Forbidden):  # dry run is authorized like the real thing
        await b.port.mutate(Delete(ObjectRef("Pod", b.ns, "p")), identity=me, dry_run=True)
    await b.port.ensure_identity(me, "update_configmap", b.ns)  # idempotent
    assert await get(b, "Pod", "p") is not None


async def test_a_node_action_identity_is_bound_cluster_wide(backend: Backend) -> None:
    b = backend
    me = Identity(b.ns, action_service_account("cordon_node"))
    node = ObjectRef("Node", "", f"{b.ns}-node")
    with pytest.raises(Forbidden):
        await b.port.read(Get("node", node), identity=me)
    await b.port.ensure_identity(me, "cordon_node", "")
    assert await b.port.read(Get("node", node), identity=me) is None
    with pytest.raises(Forbidden):
        await b.port.read(Get("cm", ObjectRef("ConfigMap", b.ns, "cm")), identity=me)


# --------------------------------------------------------------------------- executions and Jobs


async def test_get_execution_of_a_missing_one_is_none(backend: Backend) -> None:
    assert await backend.port.get_execution(backend.ns, "nope") is None


async def test_update_status_with_a_stale_resource_version_is_a_conflict(backend: Backend) -> None:
    b = backend
    created = await b.port.create_execution(execution(b.ns, "ex"))
    created.status = ExecutionStatus(phase=Phase.PENDING)
    written = await b.port.update_status(created)
    assert int(written.resource_version) > int(created.resource_version)
    created.status = ExecutionStatus(phase=Phase.VALIDATING)
    with pytest.raises(Conflict):
        await b.port.update_status(created)  # the resourceVersion it carries is stale now
    stored = await b.port.get_execution(b.ns, "ex")
    assert stored is not None
    assert (stored.phase, stored.resource_version) == (Phase.PENDING, written.resource_version)


async def test_create_job_twice_makes_one_job(backend: Backend) -> None:
    b = backend
    ex = await b.port.create_execution(execution(b.ns, "ex"))
    job = JobRequest(namespace=b.ns, name=f"kexec-{ex.uid[:8]}", execution_name=ex.name,
                     execution_uid=ex.uid, service_account="kexec-none", env={"A": "1"},
                     backoff_limit=1, active_deadline_seconds=60, ttl_seconds_after_finished=600,
                     labels={"kexec.test/contract": "yes"})
    await b.port.create_job(job)
    await b.port.create_job(job)
    jobs = await b.port.read(List("jobs", "Job", b.ns, label_selector="kexec.test/contract=yes"))
    assert [j["metadata"]["name"] for j in jobs] == [job.name]
    assert jobs[0]["metadata"]["ownerReferences"][0]["uid"] == ex.uid
    state = await b.port.get_job(b.ns, job.name)
    assert state is not None
    assert (state.name, state.finished, state.success, state.pod_name, state.exit_code, state.report) == (
        job.name, False, False, "", None, None)
    assert await b.port.get_job(b.ns, "no-such-job") is None

