"""The controller reads from its watches instead of GETs: lean informer caches, the
adapter's cache-first reads (Job, its pods, namespaces, kill switch, admission), what
counts as a write, and which Job events wake an execution."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tests.support.fake_apiserver import FakeApiserver, list_body

from kexec.adapters.kubernetes.cluster import KubernetesCluster
from kexec.adapters.kubernetes.jobs import lean_job, lean_pod
from kexec.adapters.kubernetes.requests import ApiCall
from kexec.adapters.kubernetes.wire import cached_execution
from kexec.application.ports.cluster import Identity
from kexec.entrypoints.container import build_container
from kexec.entrypoints.controller import Controller, ControllerConfig
from kexec.runtime.informer import Informer, drop_managed_fields

pytestmark = pytest.mark.timeout(20)
MANAGED = [{"manager": "kubectl", "fieldsV1": {"f:data": {}}}]


class Api:
    """An ApiClient stand-in: answers from a table by path, records every call."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, str]] = []

    async def call_api(self, path: str, method: str, **_kw: Any) -> Any:
        self.calls.append((method, path))
        answer = self.answers.get(path, {})
        if isinstance(answer, Exception):
            raise answer
        return answer


def job(name: str, *conditions: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ns", "managedFields": MANAGED,
                         "ownerReferences": [{"kind": "KubernetesExecution", "name": "ex",
                                              "controller": True}]},
            "spec": {"template": {"spec": {"containers": [{"env": [{"name": "KEXEC_SPEC"}]}]}}},
            "status": {"succeeded": 1 if conditions else 0,
                       "conditions": [{"type": c, "status": "True"} for c in conditions]}}


def pod(job_name: str, report: dict[str, Any] | None) -> dict[str, Any]:
    state = ({"terminated": {"exitCode": 0, "message": json.dumps(report)}} if report is not None
             else {"running": {}})
    return {"metadata": {"name": f"{job_name}-abcde", "namespace": "ns", "managedFields": MANAGED,
                         "labels": {"batch.kubernetes.io/job-name": job_name},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "runner"}]},
            "status": {"phase": "Succeeded",
                       "containerStatuses": [{"name": "runner", "state": state, "image": "x"}]}}


async def test_an_informer_transform_applies_to_listed_and_watched_objects() -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "5",
                        "managedFields": MANAGED}, "data": {"k": "v"}}
    async with FakeApiserver() as fake:
        fake.lists.append(list_body("10", obj))
        changed = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "11"}}
        fake.watches.append([{"type": "MODIFIED", "object": changed}])
        seen: list[dict[str, Any]] = []
        inf = Informer(fake.api, "", "v1", "configmaps", namespace="ns",
                       on_event=lambda _t, o: seen.append(o), transform=drop_managed_fields)
        inf.start()
        try:
            await asyncio.wait_for(inf.wait_synced(), 5)
            await asyncio.wait_for(fake.idle.wait(), 5)
        finally:
            await inf.stop()
    assert [o["metadata"]["resourceVersion"] for o in seen] == ["5", "11"]
    assert all("managedFields" not in o["metadata"] for o in seen)
    assert inf.cache["ns/a"]["data"] == {"k": "v"}


def test_lean_caches_keep_what_get_job_reads_and_drop_the_rest() -> None:
    lean = lean_job(job("j", "Complete"))
    assert "spec" not in lean and "managedFields" not in lean["metadata"]
    assert lean["status"]["conditions"] == [{"type": "Complete", "status": "True"}]
    assert lean["metadata"]["ownerReferences"][0]["name"] == "ex"
    p = lean_pod(pod("j", {"changes": []}))
    assert set(p["metadata"]) == {"name", "namespace", "labels", "creationTimestamp"}
    assert p["status"] == {"containerStatuses": [
        {"name": "runner", "state": {"terminated": {"exitCode": 0,
                                                    "message": '{"changes": []}'}}}]}


async def test_get_job_reads_the_watched_job_and_pods_without_a_request() -> None:
    api = Api()
    cluster = KubernetesCluster(api, job_cache={"ns/j": lean_job(job("j", "Complete"))}.get,
                                pod_cache=lambda: [lean_pod(pod("j", {"changes": ["x"]})),
                                                   lean_pod(pod("other", {}))])
    state = await cluster.get_job("ns", "j")
    assert state is not None and state.finished and state.success
    assert state.report == {"changes": ["x"]} and state.pod_name == "j-abcde"
    assert api.calls == []


async def test_get_job_asks_the_server_when_the_watch_has_not_shown_it_yet() -> None:
    api = Api({"/apis/batch/v1/namespaces/ns/jobs/j": job("j", "Complete"),
               "/api/v1/namespaces/ns/pods": {"items": [pod("j", {"changes": ["y"]})]}})
    # The Job is not in the cache yet; its pod is, but still running: both are read.
    cluster = KubernetesCluster(api, job_cache={}.get, pod_cache=lambda: [pod("j", None)])
    state = await cluster.get_job("ns", "j")
    assert state is not None and state.report == {"changes": ["y"]}
    assert [m for m, _ in api.calls] == ["GET", "GET"]


async def test_facts_come_from_the_watches_when_given() -> None:
    api = Api()
    paused = {"data": {"paused": "true"}}
    cluster = KubernetesCluster(
        api, node_cache=lambda: [], config_cache=lambda: paused,
        namespace_cache={"team": {"metadata": {"name": "team", "labels": {"env": "prod"}}}}.get)
    assert await cluster.paused()
    paused["data"]["paused"] = "false"
    assert not await cluster.paused()  # as fresh as the watch: no TTL
    facts = await cluster.cluster_facts("team")
    assert facts["namespace"] == {"name": "team", "labels": {"env": "prod"}}
    assert (await cluster.cluster_facts("gone"))["namespace"]["labels"] == {}
    assert api.calls == []


async def test_admission_is_believed_for_its_ttl_once_found_and_asked_again_while_missing() -> None:
    from kexec.application.ports.cluster import NotFound

    api = Api()
    cluster = KubernetesCluster(api, admission_ttl=60.0, facts_ttl=0.0)
    assert await cluster.admission_installed() == ""
    assert await cluster.admission_installed() == ""
    assert len(api.calls) == 4  # the four objects, once
    api2 = Api({"/apis/admissionregistration.k8s.io/v1/mutatingadmissionpolicies/kexec-requester":
                NotFound("gone")})
    cluster2 = KubernetesCluster(api2, admission_ttl=60.0, facts_ttl=0.0)
    assert "not installed" in await cluster2.admission_installed()
    assert "not installed" in await cluster2.admission_installed()
    assert len(api2.calls) == 2  # missing: asked again at once (facts_ttl 0)


async def test_a_service_account_is_created_once_per_process() -> None:
    api = Api()
    cluster = KubernetesCluster(api)
    cluster._await_rbac = _no_wait  # type: ignore[method-assign]
    for _ in range(2):
        await cluster.ensure_identity(Identity("ns", "kexec-action-x"), "scale_deployment", "ns")
    posts = [p for m, p in api.calls if m == "POST"]
    assert posts.count("/api/v1/namespaces/ns/serviceaccounts") == 1
    assert posts.count("/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings") == 2


async def _no_wait(*_a: Any) -> None:
    return None


def test_request_kinds_separate_persisted_writes_from_dry_runs_and_reviews() -> None:
    from kexec.adapters.kubernetes.api import request_kind

    assert request_kind(ApiCall("GET", "/api/v1/namespaces/ns/pods")) == "read"
    assert request_kind(ApiCall("PUT", "/apis/g/v1/namespaces/ns/x/a/status")) == "write"
    assert request_kind(ApiCall("POST", "/api/v1/namespaces/ns/events")) == "write"
    assert request_kind(ApiCall("PATCH", "/api/v1/namespaces/ns/configmaps/c",
                                (("dryRun", "All"),))) == "dry_run"
    assert request_kind(ApiCall("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews")) \
        == "review"


async def test_counted_by_kind_on_the_registry() -> None:
    registry = CollectorRegistry()
    cluster = KubernetesCluster(Api(), registry=registry)
    await cluster.request("GET", "/api/v1/namespaces/ns")
    await cluster.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body={})
    assert registry.get_sample_value("kexec_api_request_kinds_total", {"kind": "read"}) == 1
    assert registry.get_sample_value("kexec_api_request_kinds_total", {"kind": "review"}) == 1
    assert registry.get_sample_value("kexec_api_requests_total", {"method": "POST"}) == 1


async def test_only_a_jobs_end_or_loss_wakes_its_execution() -> None:
    controller = Controller(ControllerConfig(), build_container(), CollectorRegistry())
    controller._on_job("ADDED", job("j"))
    controller._on_job("MODIFIED", job("j"))  # a pod started: nothing to do
    assert len(controller.queue) == 0
    controller._on_job("MODIFIED", job("j", "Complete"))
    assert len(controller.queue) == 1
    await controller.queue.get()
    controller._on_job("DELETED", job("j"))
    assert controller.queue.processing == frozenset({"ns/ex"}) and "ns/ex" in controller.queue._dirty


async def test_a_job_event_wakes_only_an_execution_that_waits_for_it() -> None:
    controller = Controller(ControllerConfig(), build_container(), CollectorRegistry())
    api = Api()
    controller.executions = Informer(api, "g", "v1", "xs")  # type: ignore[arg-type]
    controller.executions.cache["ns/ex"] = {"status": {"phase": "Completed"}}
    controller._on_job("MODIFIED", job("j", "Complete"))  # later updates, TTL deletion...
    controller._on_job("DELETED", job("j", "Complete"))
    assert len(controller.queue) == 0
    controller.executions.cache["ns/ex"] = {"status": {"phase": "Executing"}}
    controller._on_job("MODIFIED", job("j", "Complete"))
    assert len(controller.queue) == 1


def test_a_deleted_execution_leaves_nothing_in_the_controllers_tables() -> None:
    controller = Controller(ControllerConfig(), build_container(), CollectorRegistry())
    obj = {"apiVersion": "kubernaut.io/v1alpha1", "kind": "KubernetesExecution",
           "metadata": {"name": "ex", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                        "finalizers": []},
           "spec": {"action": "scale_deployment"}, "status": {"phase": "Completed"}}
    controller.written["ns/ex"] = "7"
    controller.releasing["u1"] = "ns/ex"
    controller._on_execution("DELETED", cached_execution(obj))
    assert (controller.written, controller.releasing, controller.active) == ({}, {}, {})
