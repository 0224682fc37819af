"""Scenario 3: kube-apiserver restarted, then etcd restarted, in the middle of a burst of
executions (``rollout_restart`` and ``update_configmap``). The controller's watches break
and relist; afterwards every execution is Completed, with one Job each, each restart
applied exactly once (generation +1, restartedBy this execution) and every transition in
the audit store exactly once. The node simulator retries what a pod's life needs through
the outage like a kubelet, and the runner sends again a request whose connection was refused
or that the just-restarted API server refused before its RBAC caches were loaded, so an
outage delays executions instead of failing them."""

from __future__ import annotations

import time

import pytest

from devstack.harness import free_port
from kexec.domain.actions.rollout_restart import RESTARTED_BY
from tests.reliability.conftest import Reliability, record, size

pytestmark = pytest.mark.cluster


def test_apiserver_and_etcd_restart_mid_burst(rel: Reliability) -> None:
    per_ns, namespaces, down = 4, size(3, 10), size(2.0, 10.0)
    t0 = time.monotonic()
    k = rel.k
    port = free_port()
    k.replace_controllers(("rel-apiserver", ("--no-leader-elect",), port))
    plan: list[tuple[str, str, int]] = []
    for j in range(namespaces):
        ns = rel.ns(f"apirs{j}")
        rel.deployments(ns, [f"web-{i}" for i in range(per_ns // 2)])
        for i in range(per_ns // 2, per_ns):
            k.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i}", "namespace": ns},
                     "data": {"key": "old"}})
        plan += [(ns, "rollout_restart" if i < per_ns // 2 else "update_configmap", i) for i in range(per_ns)]
    generations = {(ns, i): int(k.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web-{i}")
                                ["metadata"]["generation"]) for ns, a, i in plan if a == "rollout_restart"}
    names: dict[str, list[str]] = {}

    def create(batch: list[tuple[str, str, int]]) -> None:
        for ns, a, i in batch:
            params = ({"namespace": ns, "deployment": f"web-{i}"} if a == "rollout_restart"
                      else {"namespace": ns, "configMap": f"cm-{i}", "data": {"key": "new"}})
            names.setdefault(ns, []).append(k.create(ns, a, params, name=f"{a.replace('_', '-')}-{i}"))

    third = len(plan) // 3
    create(plan[:third])
    time.sleep(1.0)
    unready = []
    for component, batch in (("kube-apiserver", plan[third:2 * third]), ("etcd", plan[2 * third:])):
        start = time.monotonic()
        k.cp.restart(component, down_seconds=down)
        k.await_admission(60)  # the CRD served and kexec's admission policies in force again
        unready.append(time.monotonic() - start)
        create(batch)
        time.sleep(1.0)
    seen = rel.wait_terminal(names, timeout=size(240, 900))
    objs = [o for o in seen.values() if o.get("status")]
    tried = sum(len(v) for v in names.values())
    not_completed = [f"{ns}/{n}: {(o.get('status') or {}).get('phase')} {(o.get('status') or {}).get('reason')}"
                     for (ns, n), o in seen.items() if (o.get("status") or {}).get("phase") != "Completed"]
    jobs = {(ns, n): c for ns in names for n, c in rel.jobs_by_execution(ns).items()}
    extra_jobs = {key: c for key, c in jobs.items() if c > 1}
    twice, missing = [], []
    for (ns, i), gen0 in generations.items():
        dep = k.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web-{i}")
        delta = int(dep["metadata"]["generation"]) - gen0
        by = (dep["spec"]["template"]["metadata"].get("annotations") or {}).get(RESTARTED_BY)
        ex = seen.get((ns, f"rollout-restart-{i}"))
        if delta > 1:
            twice.append(f"{ns}/web-{i}: +{delta}")
        elif delta < 1 or ex is None or by != ex["metadata"]["uid"]:
            missing.append(f"{ns}/web-{i}: +{delta}")
    transitions, audit_lost, audit_extra = rel.audit_compare(objs)
    lost = len(not_completed) + (tried - len(seen)) + len(missing) + audit_lost
    duplicated = sum(c - 1 for c in extra_jobs.values()) + len(twice) + audit_extra
    record("apiserver_etcd_restart", tried, tried - len(not_completed) - (tried - len(seen)), lost, duplicated,
           time.monotonic() - t0, unready_s=[round(u, 1) for u in unready], transitions=transitions)
    assert not not_completed and len(seen) == tried, not_completed
    assert not extra_jobs and not twice and not missing, (extra_jobs, twice, missing)
    assert audit_lost == 0 and audit_extra == 0, (transitions, audit_lost, audit_extra)
