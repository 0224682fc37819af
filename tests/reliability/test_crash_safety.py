"""Scenario 1: crash safety. Executions of mixed actions (the non-idempotent
``rollout_restart`` among them) across namespaces while two leader-elected controller
replicas are SIGKILLed at random points, each restarted after its kill.

Afterwards: every execution terminal and Completed, one Job per execution, each
``rollout_restart`` applied exactly once (the Deployment's generation moved by exactly
one and carries this execution's restartedBy), every transition of every status in the
audit store (PostgreSQL) exactly once."""

from __future__ import annotations

import random
import subprocess
import time
from typing import Any

import pytest

from devstack.harness import NS_CTRL, free_port
from kexec.domain.actions.rollout_restart import RESTARTED_BY
from tests.reliability.conftest import Reliability, record, size

pytestmark = pytest.mark.cluster


ACTIONS = ("rollout_restart", "scale_deployment", "update_configmap", "rollout_restart", "patch_deployment")


def lease_holder(rel: Reliability) -> str:
    code, lease = rel.k.try_api("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS_CTRL}/leases/kexec-controller")
    return str((lease.get("spec") or {}).get("holderIdentity") or "") if code == 200 else ""


def params_for(action: str, ns: str, i: int) -> dict[str, Any]:
    target = f"web-{i}"
    if action == "rollout_restart":
        return {"namespace": ns, "deployment": target}
    if action == "scale_deployment":
        return {"namespace": ns, "deployment": target, "replicas": 2}
    if action == "patch_deployment":
        return {"namespace": ns, "deployment": target, "patchType": "merge",
                "patch": {"metadata": {"labels": {"rel-patched": str(i)}}}}
    return {"namespace": ns, "configMap": f"cm-{i}", "data": {"key": f"value-{i}"}}


def test_crash_safety_under_random_sigkills(rel: Reliability) -> None:
    n, kills, per_ns = size(30, 200), size(3, 10), size(6, 10)
    rng = random.Random(int(time.time()))
    t0 = time.monotonic()
    k = rel.k
    plan: list[tuple[str, str, int]] = []  # (namespace, action, index)
    for j in range((n + per_ns - 1) // per_ns):
        ns = rel.ns(f"crash{j}")
        count = min(per_ns, n - j * per_ns)
        actions = [ACTIONS[(j + i) % len(ACTIONS)] for i in range(count)]
        rel.deployments(ns, [f"web-{i}" for i, a in enumerate(actions) if a != "update_configmap"])
        for i, a in enumerate(actions):
            if a == "update_configmap":
                k.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i}", "namespace": ns},
                         "data": {"key": "old"}})
            plan.append((ns, a, i))
    generations = {}
    for ns, a, i in plan:
        if a == "rollout_restart":
            dep = k.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web-{i}")
            generations[(ns, i)] = int(dep["metadata"]["generation"])

    ports = {"rel-a": free_port(), "rel-b": free_port()}
    procs: dict[str, subprocess.Popen[bytes]] = dict(zip(
        ports, k.replace_controllers(*((ident, (), port) for ident, port in ports.items())), strict=True))
    names: dict[str, list[str]] = {}
    killed: list[str] = []
    k.until(lambda: lease_holder(rel) in ports, 60, "a leader")
    for batch in (plan[b::kills] for b in range(kills)):
        for ns, a, i in batch:
            names.setdefault(ns, []).append(k.create(ns, a, params_for(a, ns, i), name=f"{a.replace('_', '-')}-{i}"))
        time.sleep(rng.uniform(0.5, 5.0))  # a random point in their processing
        leader = lease_holder(rel)
        victim = leader if leader in ports and rng.random() < 0.75 else rng.choice(list(ports))
        k.stop_controller(procs[victim], kill=True)  # SIGKILL: no Lease release, no flush
        killed.append(victim)
        time.sleep(rng.uniform(0.5, 3.0))
        procs[victim] = k.start_controller(victim, http_port=ports[victim])
    seen = rel.wait_terminal(names, timeout=size(300, 1500))
    tried = sum(len(v) for v in names.values())
    objs = list(seen.values())
    phases = [(o.get("status") or {}).get("phase") for o in objs]
    not_terminal = [f"{ns}/{nm}: {(o.get('status') or {}).get('phase')}" for (ns, nm), o in seen.items()
                    if (o.get("status") or {}).get("phase") not in ("Completed", "Failed", "RollbackReady")]
    missing = tried - len(seen)
    failed = {f"{ns}/{nm}": ((o.get("status") or {}).get("reason"), (o.get("status") or {}).get("message"))
              for (ns, nm), o in seen.items() if (o.get("status") or {}).get("phase") in ("Failed", "RollbackReady")}
    # One Job per execution.
    jobs: dict[tuple[str, str], int] = {}
    for ns in names:
        for nm, count in rel.jobs_by_execution(ns).items():
            jobs[(ns, nm)] = count
    extra_jobs = {f"{ns}/{nm}": c for (ns, nm), c in jobs.items() if c > 1}
    no_job = [f"{ns}/{nm}" for (ns, nm), o in seen.items()
              if (o.get("status") or {}).get("phase") == "Completed" and jobs.get((ns, nm), 0) == 0]
    # Each rollout_restart exactly once.
    restarts_twice, restarts_missing = [], []
    for (ns, i), gen0 in generations.items():
        dep = k.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web-{i}")
        delta = int(dep["metadata"]["generation"]) - gen0
        by = ((dep["spec"]["template"]["metadata"].get("annotations") or {}).get(RESTARTED_BY))
        ex = seen.get((ns, f"rollout-restart-{i}"))
        if delta > 1:
            restarts_twice.append(f"{ns}/web-{i}: +{delta}")
        elif delta < 1 or ex is None or by != ex["metadata"]["uid"]:
            restarts_missing.append(f"{ns}/web-{i}: +{delta} by={by}")
    transitions, audit_lost, audit_extra = rel.audit_compare([o for o in objs if o.get("status")])
    ok = phases.count("Completed")
    lost = len(not_terminal) + missing + len(restarts_missing) + audit_lost
    duplicated = sum(c - 1 for c in extra_jobs.values()) + len(restarts_twice) + audit_extra
    record("crash_safety", tried, ok, lost, duplicated, time.monotonic() - t0,
           kills=len(killed), transitions=transitions, audit_lost=audit_lost, audit_extra=audit_extra)
    assert len(killed) >= kills
    assert not not_terminal and not missing, (not_terminal, missing)
    assert not failed, failed
    assert not extra_jobs and not no_job, (extra_jobs, no_job)
    assert not restarts_twice and not restarts_missing, (restarts_twice, restarts_missing)
    assert audit_lost == 0 and audit_extra == 0, (transitions, audit_lost, audit_extra)
    assert ok == tried
