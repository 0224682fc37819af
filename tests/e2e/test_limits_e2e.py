"""Limits queue, failures tell the whole truth, retries: on the real control plane."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devstack.harness import GROUP_PATH, NS_CTRL, Kexec
from tests.e2e.test_actions_e2e import fresh_ns, guarded_pod_on, kexec_cli, run, uncordon

pytestmark = pytest.mark.cluster
ACTIVE = ("Preparing", "Executing", "Verifying")


def phases(kexec: Kexec, ns: str, names: set[str]) -> dict[str, str]:
    items = kexec.api("GET", f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions")["items"]
    return {o["metadata"]["name"]: (o.get("status") or {}).get("phase", "")
            for o in items if o["metadata"]["name"] in names}


def watch_until_terminal(kexec: Kexec, ns: str, names: set[str], timeout: float,
                         on_poll: Any = None) -> tuple[int, dict[str, str]]:
    """Poll every 200 ms; return the peak number between Preparing and Verifying."""
    peak, seen = 0, {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = phases(kexec, ns, names)
        peak = max(peak, sum(1 for p in seen.values() if p in ACTIVE))
        if on_poll is not None:
            on_poll(seen)
        if len(seen) == len(names) and all(p in ("Completed", "Failed", "RollbackReady")
                                           for p in seen.values()):
            return peak, seen
        time.sleep(0.2)
    raise AssertionError(f"not all terminal after {timeout}s: {seen}\n"
                         f"{kexec.controller_log()[-3000:]}")


def test_nine_at_once_in_one_namespace_all_complete_never_more_than_five(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "burst")
    for i in range(9):
        kexec.apply({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"cfg{i}", "namespace": ns}, "data": {"a": "1"}})
    names = {kexec.create(ns, "update_configmap", {"namespace": ns, "configMap": f"cfg{i}",
                                                   "data": {"a": "2"}}) for i in range(9)}
    peak, seen = watch_until_terminal(kexec, ns, names, 180)
    print(f"burst of 9 in one namespace: {sorted(seen.values())}, peak active {peak}")
    assert sorted(seen.values()) == ["Completed"] * 9, seen
    assert peak <= 5
    queued = [t for n in names for t in kexec.get(ns, n)["status"]["phaseTransitions"]]
    assert all(t["reason"] != "PolicyDenied" for t in queued)


def fake_node(kexec: Kexec, name: str) -> None:
    """A Ready Node the simulator does not run pods on (a target for cordons only)."""
    kexec.api("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                        "metadata": {"name": name,
                                                     "labels": {"kubernetes.io/hostname": name}}})
    kexec.api("PATCH", f"/api/v1/nodes/{name}/status",
              {"status": {"conditions": [{"type": "Ready", "status": "True",
                                          "reason": "KubeletReady", "message": "e2e"}]}},
              content_type="application/merge-patch+json")


def test_three_cordons_at_once_with_node_limit_one_run_one_at_a_time(kexec: Kexec) -> None:
    nodes = [f"lim-node-{i}" for i in range(3)]
    for node in nodes:
        fake_node(kexec, node)
    try:
        names = {kexec.create(NS_CTRL, "cordon_node", {"node": node}) for node in nodes}
        queued: set[str] = set()

        def note(seen: dict[str, str]) -> None:
            for name in names:
                st = kexec.get(NS_CTRL, name).get("status") or {}
                if st.get("reason") == "Queued":
                    assert "nodes cordoned or draining at once" in st["message"], st
                    queued.add(name)
        peak, seen = watch_until_terminal(kexec, NS_CTRL, names, 120, note)
        assert sorted(seen.values()) == ["Completed"] * 3, seen
        assert peak == 1
        assert len(queued) >= 1
        for node in nodes:
            assert kexec.api("GET", f"/api/v1/nodes/{node}")["spec"].get("unschedulable") is True
    finally:
        for node in nodes:
            kexec.try_api("DELETE", f"/api/v1/nodes/{node}")


def test_pdb_blocked_drain_uncordons_and_records_both_changes(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "truth")
    node = "sim-node-2"
    guarded_pod_on(kexec, ns, "guarded", node)
    try:
        name = kexec.create(NS_CTRL, "drain_node", {"node": node}, timeout="15s")
        blocked: list[dict[str, Any]] = []

        def progress() -> bool:
            st = kexec.get(NS_CTRL, name).get("status") or {}
            blocked[:] = ((st.get("execution") or {}).get("progress") or {}).get("blocked") or []
            return bool(blocked) or st.get("phase") in ("Failed", "Completed")
        kexec.until(progress, 30, "drain progress naming the PDB")
        assert blocked == [{"pod": blocked[0]["pod"], "podDisruptionBudget": f"{ns}/guarded"}]
        obj = kexec.wait(NS_CTRL, name, timeout=60)
        st = obj["status"]
        assert st["phase"] == "Failed" and st["reason"] in ("EvictionBlocked", "DeadlineExceeded")
        assert not kexec.api("GET", f"/api/v1/nodes/{node}")["spec"].get("unschedulable")
        # (Other tests' pods on the node may have been evicted: those are Pod changes.)
        ops = [(c["operation"], c["name"]) for c in st["execution"]["resourcesAffected"]
               if c["kind"] == "Node"]
        assert ops == [("cordon", node), ("uncordon", node)], st["execution"]
        events = kexec.api("GET", f"/api/v1/namespaces/{NS_CTRL}/events")["items"]
        assert any(e.get("reason") == "EvictionBlocked" and f"{ns}/guarded" in e.get("message", "")
                   and e["involvedObject"].get("name") == name for e in events)
    finally:
        uncordon(kexec, node)


def test_pdb_blocked_drain_without_uncordon_offers_uncordon_node(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "truth")
    node = "sim-node-2"
    guarded_pod_on(kexec, ns, "guarded", node)
    try:
        obj = run(kexec, NS_CTRL, "drain_node", {"node": node, "uncordonOnFailure": False},
                  timeout="12s")
        st = obj["status"]
        assert st["phase"] == "Failed", st
        assert kexec.api("GET", f"/api/v1/nodes/{node}")["spec"].get("unschedulable") is True
        # (Other tests' pods on the node may have been evicted: those are Pod changes.)
        ops = [(c["operation"], c["name"]) for c in st["execution"]["resourcesAffected"]
               if c["kind"] == "Node"]
        assert ops == [("cordon", node)], st["execution"]
        assert st["rollback"] == {"available": True, "action": "uncordon_node",
                                  "parameters": {"uncordonNode": {"node": node}}}
        # The record undoes it: `kexec rollback` creates the uncordon.
        done = kexec_cli(kexec, "rollback", obj["metadata"]["name"], "-n", NS_CTRL)
        assert done.returncode == 0, done.stderr
        undo = kexec.wait(NS_CTRL, f"{obj['metadata']['name'][:50]}-rollback", timeout=60)
        assert undo["status"]["phase"] == "Completed", undo["status"]
        assert not kexec.api("GET", f"/api/v1/nodes/{node}")["spec"].get("unschedulable")
    finally:
        uncordon(kexec, node)


def test_a_job_that_fails_once_then_succeeds_is_completed_after_two_attempts(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "retry")
    kexec.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": ns},
                 "data": {"a": "1"}})
    kexec.namespace(ns, environment="production")  # approval: the fault goes in meanwhile
    name = kexec.create(ns, "update_configmap", {"namespace": ns, "configMap": "cfg",
                                                 "data": {"a": "2"}}, maxRetries=2)
    kexec.wait(ns, name, ("WaitingApproval",), timeout=30)
    # A transient fault: an admission webhook that cannot be reached (500 from the API server).
    hook = f"fail-once-{ns}"
    kexec.api("POST", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": hook},
        "webhooks": [{"name": "fail-once.kexec.test", "failurePolicy": "Fail",
                      "clientConfig": {"url": "https://127.0.0.1:1/unreachable"},
                      "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                 "operations": ["UPDATE"], "resources": ["configmaps"]}],
                      "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                      "sideEffects": "None", "admissionReviewVersions": ["v1"],
                      "timeoutSeconds": 2}]})
    try:
        assert kexec_cli(kexec, "approve", name, "-n", ns, "--as", "alice").returncode == 0

        def failed_once() -> bool:
            jobs = kexec.jobs_for(ns, name)
            return bool(jobs) and (jobs[0].get("status") or {}).get("failed", 0) >= 1
        kexec.until(failed_once, 60, "the first attempt to fail")
    finally:
        kexec.try_api("DELETE", f"/apis/admissionregistration.k8s.io/v1/"
                                f"validatingwebhookconfigurations/{hook}")
    obj = kexec.wait(ns, name, timeout=90)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["execution"]["attempts"] == 2
    assert kexec.api("GET", f"/api/v1/namespaces/{ns}/configmaps/cfg")["data"] == {"a": "2"}


def test_leader_killed_halfway_the_new_leader_rebuilds_the_slots(kexec: Kexec) -> None:
    from devstack.harness import free_port

    ns = fresh_ns(kexec, "burst-lead", environment="production")  # approval: slots held a while
    for i in range(9):
        kexec.apply({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"cfg{i}", "namespace": ns}, "data": {"a": "1"}})
    ports = {"e2e-a": free_port(), "e2e-b": free_port()}
    procs = kexec.replace_controllers(("e2e-a", (), ports["e2e-a"]), ("e2e-b", (), ports["e2e-b"]))
    holding = ("WaitingApproval", *ACTIVE)
    try:
        def holder() -> str:
            code, lease = kexec.try_api(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS_CTRL}/leases/kexec-controller")
            return str((lease.get("spec") or {}).get("holderIdentity") or "") if code == 200 else ""
        kexec.until(lambda: holder() in ports, 40, "a leader")
        leader = holder()
        names = {kexec.create(ns, "update_configmap", {"namespace": ns, "configMap": f"cfg{i}",
                                                       "data": {"a": "2"}}) for i in range(9)}
        peak = 0

        def count() -> dict[str, str]:
            nonlocal peak
            seen = phases(kexec, ns, names)
            peak = max(peak, sum(1 for p in seen.values() if p in holding))
            return seen
        kexec.until(lambda: sum(p == "WaitingApproval" for p in count().values()) == 5, 60,
                    "five holding slots")
        # The leader dies (SIGKILL: the Lease is not released); the standby must not admit
        # the four queued ones on top of the five it finds holding slots.
        kexec.stop_controller(next(p for p, i in zip(procs, ports, strict=True) if i == leader),
                              kill=True)
        standby = next(i for i in ports if i != leader)
        kexec.until(lambda: holder() == standby and count() is not None, 60, "takeover")
        kexec.until(lambda: "leading as" in kexec.controller_log(standby), 30, "leading")
        time.sleep(2)
        assert sum(p in holding for p in count().values()) == 5
        approved: set[str] = set()

        def approve(seen: dict[str, str]) -> None:
            nonlocal peak
            peak = max(peak, sum(1 for p in seen.values() if p in holding))
            for name, phase in seen.items():
                if phase == "WaitingApproval" and name not in approved:
                    assert kexec_cli(kexec, "approve", name, "-n", ns, "--as", "alice").returncode == 0
                    approved.add(name)
        _, seen = watch_until_terminal(kexec, ns, names, 180, approve)
        assert sorted(seen.values()) == ["Completed"] * 9, seen
        assert peak <= 5
    finally:
        kexec.default_controller()
