"""The controller as SREs run it: policy hot reload, OPA fail-closed, audit trail in
PostgreSQL, leader election, authenticated metrics, kill switch (real control plane)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devstack.harness import GROUP_PATH, NS_CTRL, Kexec, dev_policy_data, free_port
from tests.e2e.test_actions_e2e import fresh_ns, ready_deployment, run

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def scale(kexec: Kexec, ns: str, replicas: int, **spec: Any) -> str:
    return kexec.create(ns, "scale_deployment",
                        {"namespace": ns, "deployment": "web", "replicas": replicas}, **spec)


def http(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def test_policy_configmap_hot_reload_and_broken_update(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "hotreload")
    ready_deployment(kexec, ns, "web", 1)
    data = dev_policy_data()  # the shipped knobs, the storm brake off (devstack)
    data["kexec"]["config"]["max_replicas"] = 2
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "safety-policies", "namespace": NS_CTRL},
          "data": {"data.json": json.dumps(data)}}
    try:
        kexec.apply(cm)
        # Takes effect without a restart.
        deadline = time.monotonic() + 30
        while True:
            obj = kexec.wait(ns, scale(kexec, ns, 3), timeout=60)
            if obj["status"]["reason"] == "PolicyDenied" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert obj["status"]["reason"] == "PolicyDenied", obj["status"]
        assert "max_replicas" in obj["status"]["message"]
        # A broken update is rejected and reported; the last good policy stays active.
        broken = dict(cm, data={"data.json": json.dumps(data),
                                "broken.rego": "package kexec.safety\nthis is not rego {"})
        kexec.apply(broken)
        kexec.until(lambda: any(e["reason"] == "PolicyRejected" for e in kexec.api(
            "GET", f"/api/v1/namespaces/{NS_CTRL}/events?fieldSelector=involvedObject.name=safety-policies")["items"]),
            30, "PolicyRejected event")
        obj = kexec.wait(ns, scale(kexec, ns, 3), timeout=60)
        assert obj["status"]["reason"] == "PolicyDenied" and "max_replicas" in obj["status"]["message"]
    finally:
        kexec.kubectl("delete", "configmap", "safety-policies", "-n", NS_CTRL, check=False)
    # Deleted: back to the baked-in policies (max 100).
    deadline = time.monotonic() + 30
    while True:
        obj = kexec.wait(ns, scale(kexec, ns, 3), timeout=60)
        if obj["status"]["phase"] == "Completed" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert obj["status"]["phase"] == "Completed", obj["status"]


def test_opa_engine_unreachable_fails_closed_and_recovers(kexec: Kexec, opa_bin: Path) -> None:
    ns = fresh_ns(kexec, "opa")
    ready_deployment(kexec, ns, "web", 1)
    port = free_port()
    kexec.replace_controllers(("e2e-opa", ("--no-leader-elect", "--policy-engine", "opa",
                                           "--opa-url", f"http://127.0.0.1:{port}"), 0))
    opa = None
    try:
        name = scale(kexec, ns, 2)
        kexec.until(lambda: (kexec.get(ns, name).get("status") or {}).get("reason")
                    == "PolicyEngineUnavailable", 30, "the controller to hold it")
        time.sleep(2)  # and it stays held
        obj = kexec.get(ns, name)
        st = obj.get("status") or {}
        assert st.get("phase") == "Validating" and st.get("reason") == "PolicyEngineUnavailable", st
        cond = next(c for c in st["conditions"] if c["type"] == "PolicyAllowed")
        assert cond["status"] == "Unknown" and cond["reason"] == "PolicyEngineUnavailable"
        assert kexec.jobs_for(ns, name) == []
        opa = subprocess.Popen([str(opa_bin), "run", "--server", "--addr", f"127.0.0.1:{port}",
                                str(ROOT / "policies" / "kexec"), str(ROOT / "policies" / "data.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        obj = kexec.wait(ns, name, timeout=60)
        assert obj["status"]["phase"] == "Completed", obj["status"]
        assert obj["status"]["validation"]["policy"]["engine"] == "opa"
    finally:
        if opa is not None:
            opa.terminate()
            opa.wait(10)
        kexec.default_controller()


def test_audit_trail_has_every_transition_once(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "audit")
    ready_deployment(kexec, ns, "web", 1)
    obj = run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 2})
    assert obj["status"]["phase"] == "Completed"
    name = obj["metadata"]["name"]
    cli = str(Path(sys.executable).with_name("kexec"))

    def audit_json() -> dict[str, Any] | None:
        out = subprocess.run([cli, "audit", name, "-n", ns, "--dsn", kexec.dsn, "-o", "json"],
                             capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None

    kexec.until(lambda: (audit_json() or {}).get("phase") == "Completed", 30, "audit row")
    doc = audit_json()
    assert doc is not None
    phases = [t["to_phase"] for t in doc["transitions"]]
    assert phases == ["Pending", "Validating", "Preparing", "Executing", "Verifying", "Completed"]
    assert doc["success"] is True and doc["job_name"] and doc["attempts"] == 1
    assert doc["policy_decision"]["allowed"] is True
    # The finalizer is released once the trail is confirmed: deletion goes through.
    kexec.api("DELETE", f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions/{name}")
    path = f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions/{name}"
    kexec.until(lambda: kexec.try_api("GET", path)[0] == 404, 30, "deleted")


def test_kill_switch_pauses_new_executions(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "paused")
    ready_deployment(kexec, ns, "web", 1)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kexec-config", "namespace": NS_CTRL},
          "data": {"paused": "true"}}
    kexec.apply(cm)
    try:
        time.sleep(2.5)  # the controller reads the switch at most 2 s late
        name = scale(kexec, ns, 2)
        time.sleep(3)
        st = kexec.get(ns, name).get("status") or {}
        assert (st.get("phase"), st.get("reason")) == ("Pending", "Paused"), st
        assert kexec.jobs_for(ns, name) == []
    finally:
        kexec.apply(dict(cm, data={"paused": "false"}))
    assert kexec.wait(ns, name, timeout=60)["status"]["phase"] == "Completed"


def test_leader_election_standby_takes_over_and_metrics_are_authenticated(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "leader")
    ready_deployment(kexec, ns, "web", 1)
    ports = {"e2e-a": free_port(), "e2e-b": free_port()}
    procs = kexec.replace_controllers(("e2e-a", (), ports["e2e-a"]), ("e2e-b", (), ports["e2e-b"]))
    try:
        def holder() -> str:
            code, lease = kexec.try_api(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS_CTRL}/leases/kexec-controller")
            return str((lease.get("spec") or {}).get("holderIdentity") or "") if code == 200 else ""

        kexec.until(lambda: holder() in ports, 40, "a leader")
        leader = holder()
        standby = next(i for i in ports if i != leader)
        for port in ports.values():  # both are live and ready (the standby to take over)
            kexec.until(lambda p=port: http(f"http://127.0.0.1:{p}/readyz")[0] == 200, 30, "ready")
            assert http(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "web",
                                                    "replicas": 2})["status"]["phase"] == "Completed"
        assert "leading as" not in kexec.controller_log(standby)
        # Metrics: no token → 401; a token without RBAC → 403; a metrics reader → 200.
        url = f"http://127.0.0.1:{ports[leader]}/metrics"
        assert http(url)[0] == 401
        for sa in ("scraper", "nobody"):
            kexec.kubectl("create", "serviceaccount", sa, "-n", ns)
        kexec.kubectl("create", "clusterrolebinding", f"scraper-{ns}", "--clusterrole=kexec-metrics-reader",
                      f"--serviceaccount={ns}:scraper")
        assert http(url, kexec.token_for(ns, "nobody"))[0] == 403
        reader = kexec.token_for(ns, "scraper")
        kexec.until(lambda: http(url, reader)[0] == 200, 20, "metrics for the reader")
        body = http(url, reader)[1]
        assert "kexec_reconcile_total" in body and "workqueue_depth" in body
        # The leader stops (SIGTERM releases the Lease): the standby takes over at once.
        t0 = time.monotonic()
        kexec.stop_controller(next(p for p, i in zip(procs, ports, strict=True) if i == leader))
        kexec.until(lambda: holder() == standby, 20, "takeover")
        takeover = time.monotonic() - t0
        obj = run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 3})
        assert obj["status"]["phase"] == "Completed"
        assert "leading as" in kexec.controller_log(standby)
        print(f"takeover after SIGTERM: {takeover:.2f}s")
    finally:
        kexec.kubectl("delete", "clusterrolebinding", f"scraper-{ns}", check=False)
        kexec.default_controller()
