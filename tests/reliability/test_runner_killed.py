"""Scenario 2: the runner killed mid-action. A ``drain_node`` has cordoned its Node and
evicted what it could; a PodDisruptionBudget at its limit holds it on the last pod. Its
runner pod is then deleted (between mutations).

* ``maxRetries: 0``: the execution ends Failed/RollbackReady and its record is true -- the
  Node *is* cordoned, and the status offers the rollback (``uncordon_node``);
* ``maxRetries: 2``: the Job retries; once the PDB is gone the retried runner finishes the
  drain safely: Completed, one Job, the attempts counted, no pod of the node left."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devstack.harness import NS_CTRL
from tests.e2e.test_actions_e2e import guarded_pod_on, uncordon
from tests.reliability.conftest import Reliability, record, size

pytestmark = pytest.mark.cluster
NODE = "sim-node-3"


def runner_pods(rel: Reliability, name: str) -> list[dict[str, Any]]:
    out = []
    for job in rel.k.jobs_for(NS_CTRL, name):
        sel = f"batch.kubernetes.io/job-name={job['metadata']['name']}"
        out += [p for p in rel.k.api("GET", f"/api/v1/namespaces/{NS_CTRL}/pods?labelSelector={sel}")["items"]
                if (p.get("status") or {}).get("phase") in ("Pending", "Running")
                and not p["metadata"].get("deletionTimestamp")]
    return out


def kill_mid_drain(rel: Reliability, ns: str, retries: int) -> tuple[str, dict[str, Any]]:
    k = rel.k
    name = k.create(NS_CTRL, "drain_node", {"node": NODE}, timeout="90s", maxRetries=retries)

    def mid_drain() -> bool:  # cordoned, the free pods evicted, the runner blocked on the held one
        node = k.api("GET", f"/api/v1/nodes/{NODE}")
        on_node = [p for p in k.api("GET", f"/api/v1/namespaces/{ns}/pods?fieldSelector=spec.nodeName={NODE}")["items"]
                   if not p["metadata"].get("deletionTimestamp")]
        return bool(node["spec"].get("unschedulable")) and {p["metadata"]["labels"]["app"] for p in on_node} == {
            "held"} and bool(runner_pods(rel, name))

    try:
        k.until(mid_drain, 60, "the drain blocked after cordoning and evicting")
    except AssertionError as exc:
        pods = k.api("GET", f"/api/v1/namespaces/{ns}/pods")["items"]
        raise AssertionError(f"{exc}: {[(p['metadata']['name'], p['spec'].get('nodeName')) for p in pods]} "
                             f"runner={[p['metadata']['name'] for p in runner_pods(rel, name)]} "
                             f"status={k.get(NS_CTRL, name).get('status')}") from None
    time.sleep(1)
    for pod in runner_pods(rel, name):
        k.api("DELETE", f"/api/v1/namespaces/{NS_CTRL}/pods/{pod['metadata']['name']}",
              {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})
    return name, k.get(NS_CTRL, name)


def free_pods(rel: Reliability, ns: str) -> None:
    rel.k.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "free", "namespace": ns},
                 "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "free"}},
                          "template": {"metadata": {"labels": {"app": "free"}},
                                       "spec": {"nodeSelector": {"kubernetes.io/hostname": NODE},
                                                "containers": [{"name": "app", "image": "nginx:1"}]}}}})
    rel.k.until(lambda: (rel.k.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/free").get("status")
                         or {}).get("readyReplicas") == 2, 60, "free pods ready")


def test_runner_killed_mid_drain(rel: Reliability) -> None:
    rounds = size(1, 3)
    t0 = time.monotonic()
    k = rel.k
    k.replace_controllers(("rel-runner", ("--no-leader-elect",), 0))
    tried = ok = 0
    untrue: list[str] = []
    dup = 0
    try:
        for _ in range(rounds):
            for retries in (0, 2):
                ns = rel.ns(f"drainkill{retries}")
                guarded_pod_on(k, ns, "held", NODE)
                free_pods(rel, ns)
                name, _ = kill_mid_drain(rel, ns, retries)
                tried += 1
                if retries:
                    k.api("DELETE", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/held")
                st = k.wait(NS_CTRL, name, timeout=150)["status"]
                jobs = len(k.jobs_for(NS_CTRL, name))
                dup += max(0, jobs - 1)
                node = k.api("GET", f"/api/v1/nodes/{NODE}")
                left = [p["metadata"]["name"] for p in k.api(
                    "GET", f"/api/v1/namespaces/{ns}/pods?fieldSelector=spec.nodeName={NODE}")["items"]]
                rollback = st.get("rollback") or {}
                attempts = (st.get("execution") or {}).get("attempts", 0)
                if retries == 0:
                    true = (st["phase"] in ("Failed", "RollbackReady") and bool(st.get("reason"))
                            and node["spec"].get("unschedulable") is True  # what changed stays changed ...
                            and rollback.get("available") is True and rollback.get("action") == "uncordon_node")
                else:
                    true = (st["phase"] == "Completed" and attempts >= 2 and not left
                            and node["spec"].get("unschedulable") is True)
                if true and jobs == 1:
                    ok += 1
                else:
                    untrue.append(f"maxRetries={retries}: phase={st['phase']} reason={st.get('reason')} "
                                  f"message={st.get('message')} attempts={attempts} jobs={jobs} left={left} "
                                  f"unschedulable={node['spec'].get('unschedulable')} rollback={rollback}")
                uncordon(k, NODE)
                # gone before the next drain: evicting from a terminating namespace is refused
                k.kubectl("delete", "namespace", ns, "--timeout=90s")
    finally:
        uncordon(k, NODE)
    record("runner_killed_mid_drain", tried, ok, tried - ok, dup, time.monotonic() - t0)
    assert not untrue, untrue
    assert ok == tried == 2 * rounds
