"""A drain while its Node holds pods of a namespace being deleted (found by the suite: the
eviction dry run was refused by NamespaceLifecycle, so such a drain failed DryRunFailed).

Like ``kubectl drain`` (which retries a NamespaceTerminating eviction until the pod is marked
deleted, then waits for it), kexec leaves those pods to the namespace controller and waits
for them: the drain validates, cordons, evicts the other pods and stays Executing until the
namespace controller has deleted them, then Completes -- and reports only its own evictions.

The namespace controller is normally quick, so the window is held open: a
ValidatingAdmissionPolicy refuses to start the deletion of pods in namespaces labelled
``rel-hold`` (a delete of a pod already terminating passes), until the test lifts it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from devstack.harness import NS_CTRL
from tests.e2e.test_actions_e2e import uncordon
from tests.reliability.conftest import Reliability, record, size

pytestmark = pytest.mark.cluster
NODE = "sim-node-3"
HOLD = "rel-hold-pod-deletion"
VAP = "/apis/admissionregistration.k8s.io/v1"


def hold_pod_deletion(rel: Reliability) -> None:
    rel.k.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                 "metadata": {"name": HOLD},
                 "spec": {"failurePolicy": "Fail",
                          "matchConstraints": {"resourceRules": [{
                              "apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"],
                              "resources": ["pods"]}]},
                          "validations": [{"expression": "has(oldObject.metadata.deletionTimestamp)",
                                           "message": "held by the reliability suite"}]}})
    rel.k.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                 "metadata": {"name": HOLD},
                 "spec": {"policyName": HOLD, "validationActions": ["Deny"],
                          "matchResources": {"namespaceSelector": {"matchLabels": {"rel-hold": "true"}}}}})


def release_pod_deletion(rel: Reliability) -> None:
    rel.k.try_api("DELETE", f"{VAP}/validatingadmissionpolicybindings/{HOLD}")
    rel.k.try_api("DELETE", f"{VAP}/validatingadmissionpolicies/{HOLD}")


def pods_on_node(rel: Reliability, ns: str) -> list[dict[str, Any]]:
    return list(rel.k.api("GET", f"/api/v1/namespaces/{ns}/pods?fieldSelector=spec.nodeName={NODE}")["items"])


def pinned(ns: str, name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": NODE},
                                           "containers": [{"name": "app", "image": "nginx:1"}]}}}}


def one_round(rel: Reliability) -> tuple[bool, str]:
    k = rel.k
    live = rel.ns("drainlive")
    doomed = k.namespace(f"rel-drainterm-{uuid.uuid4().hex[:5]}", **{"rel-hold": "true"})
    k.apply(pinned(live, "free", 2))
    k.apply(pinned(doomed, "web", 1))
    # no controller and not force: a problem for a drain -- unless its namespace is going anyway
    k.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": doomed},
             "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "nginx:1"}]}})

    def running(ns: str, count: int) -> bool:
        return sum((p.get("status") or {}).get("phase") == "Running" for p in pods_on_node(rel, ns)) == count
    k.until(lambda: running(live, 2) and running(doomed, 2), 60, "pods running on the node")
    hold_pod_deletion(rel)
    k.until(lambda: k.try_api("DELETE", f"/api/v1/namespaces/{doomed}/pods/bare?dryRun=All")[0] != 200,
            30, "the hold in force")
    k.kubectl("delete", "namespace", doomed, "--wait=false")

    def terminating() -> bool:
        phase = (k.api("GET", f"/api/v1/namespaces/{doomed}").get("status") or {}).get("phase")
        pods = pods_on_node(rel, doomed)
        return phase == "Terminating" and len(pods) == 2 and not any(
            p["metadata"].get("deletionTimestamp") for p in pods)
    k.until(terminating, 30, "the namespace terminating, its pods not yet deleted")

    live_pods = {f"{live}/{p['metadata']['name']}" for p in pods_on_node(rel, live)}
    name = k.create(NS_CTRL, "drain_node", {"node": NODE}, timeout="150s")

    def drained_but_waiting() -> bool:
        st = k.get(NS_CTRL, name).get("status") or {}
        node = k.api("GET", f"/api/v1/nodes/{NODE}")
        live_left = [p for p in pods_on_node(rel, live) if not p["metadata"].get("deletionTimestamp")]
        if st.get("phase") in ("Failed", "RollbackReady", "Completed"):
            raise AssertionError(f"drain ended before the namespace's pods went: {st.get('phase')} "
                                 f"{st.get('reason')}: {st.get('message')}")
        return st.get("phase") == "Executing" and bool(node["spec"].get("unschedulable")) and not live_left
    k.until(drained_but_waiting, 90, "cordoned, the other pods evicted, the drain waiting")
    time.sleep(3)
    waiting = k.get(NS_CTRL, name)["status"]["phase"] == "Executing" and len(pods_on_node(rel, doomed)) == 2
    release_pod_deletion(rel)
    # the namespace controller backs off while it fails; a change to the namespace wakes it
    k.kubectl("annotate", "namespace", doomed, f"rel-nudge={time.time()}", "--overwrite")
    st = k.wait(NS_CTRL, name, timeout=150)["status"]
    node = k.api("GET", f"/api/v1/nodes/{NODE}")
    left = [p["metadata"]["name"] for p in pods_on_node(rel, doomed) if not p["metadata"].get("deletionTimestamp")]
    # only what it evicted itself: the live pods (and whatever else other scenarios left on the
    # node), none of the terminating namespace's
    affected = (st.get("execution") or {}).get("resourcesAffected") or []
    evicted = {f"{c.get('namespace')}/{c.get('name')}" for c in affected if c.get("operation") == "evict"}
    true = (waiting and st["phase"] == "Completed" and node["spec"].get("unschedulable") is True and not left
            and (live_pods <= evicted or any((c.get("after") or {}).get("moreEvicted") for c in affected))
            and not any(e.startswith(f"{doomed}/") for e in evicted) and len(k.jobs_for(NS_CTRL, name)) == 1)
    uncordon(k, NODE)
    k.kubectl("delete", "namespace", live, "--wait=false", check=False)
    return true, (f"waiting={waiting} phase={st['phase']} reason={st.get('reason')} message={st.get('message')} "
                  f"unschedulable={node['spec'].get('unschedulable')} left={left} evicted={sorted(evicted)}")


def test_drain_waits_for_the_pods_of_a_terminating_namespace(rel: Reliability) -> None:
    rounds = size(1, 2)
    t0 = time.monotonic()
    rel.k.replace_controllers(("rel-drainterm", ("--no-leader-elect",), 0))
    untrue: list[str] = []
    try:
        for _ in range(rounds):
            ok, what = one_round(rel)
            if not ok:
                untrue.append(what)
    finally:
        release_pod_deletion(rel)
        uncordon(rel.k, NODE)
    record("drain_terminating_namespace", rounds, rounds - len(untrue), len(untrue), 0, time.monotonic() - t0)
    assert not untrue, untrue
