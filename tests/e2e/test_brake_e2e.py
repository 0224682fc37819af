"""Storm brake and cooldown on the real control plane: a storm trips the brake, the next
execution waits (Pending/StormBrake, a Warning Event), an operator's `kexec brake release`
(with only its own RBAC) lets it run and is in the audit trail; a target remediated a moment
ago waits out the cooldown."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.harness import NS_CTRL, Kexec, dev_policy_data
from kexec.domain.execution import iso, parse_time
from tests.e2e.test_actions_e2e import fresh_ns, kexec_cli, ready_deployment

pytestmark = pytest.mark.cluster
OPERATOR = "alice"
STORM = 20


def _policy_loaded_since(kexec: Kexec, since: datetime) -> bool:
    events = kexec.api("GET", f"/api/v1/namespaces/{NS_CTRL}/events?fieldSelector="
                              "involvedObject.name=safety-policies")["items"]
    return any(e["reason"] == "PolicyLoaded"
               and (parse_time(e.get("lastTimestamp") or e.get("firstTimestamp")) or since)
               >= since for e in events)


def brake_data() -> dict[str, Any]:
    """The brake on for scale_deployment (20 per window), a short cooldown for
    update_configmap, deferred executions asked again every 2 s."""
    data: dict[str, Any] = dev_policy_data()
    data["kexec"]["limits"]["storm_brake"] = {
        "window_seconds": 600, "recheck_seconds": 2,
        "per_action": {"scale_deployment": {"executions_per_window": STORM}}}
    data["kexec"]["limits"]["cooldown"] = {"per_action": {"update_configmap": 8}}
    data["kexec"]["limits"]["deferred_recheck_seconds"] = 2
    return data


def use_policy_data(kexec: Kexec, data: dict[str, Any]) -> None:
    since = datetime.now(UTC).replace(microsecond=0)
    kexec.apply({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "safety-policies", "namespace": NS_CTRL},
                 "data": {"data.json": json.dumps(data)}})
    kexec.until(lambda: _policy_loaded_since(kexec, since), 30, "the policy reload")


@pytest.fixture(scope="module")
def brake_on(kexec: Kexec) -> Iterator[Kexec]:
    """``brake_data`` active; the operator may release brakes (Role kexec-brake-releaser
    only)."""
    kexec.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "e2e-brake-releaser", "namespace": NS_CTRL},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": "kexec-brake-releaser"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                               "name": OPERATOR}]})
    use_policy_data(kexec, brake_data())
    try:
        yield kexec
    finally:
        kexec.kubectl("delete", "configmap", "safety-policies", "-n", NS_CTRL, check=False)


def release(kexec: Kexec, action: str, as_user: str) -> subprocess.CompletedProcess[str]:
    return kexec_cli(kexec, "brake", "release", action, "--as", as_user)


def status(kexec: Kexec, ns: str, name: str) -> dict[str, Any]:
    return dict(kexec.get(ns, name).get("status") or {})


def test_a_storm_trips_the_brake_and_an_operator_release_lets_the_next_run(
        brake_on: Kexec) -> None:
    kexec = brake_on
    ns = fresh_ns(kexec, "storm")
    ready_deployment(kexec, ns, "web", 1)
    # Only what starts after a release counts: start from a clean slate (earlier tests in
    # the session scaled deployments too).
    out = release(kexec, "scale_deployment", OPERATOR)
    assert out.returncode == 0, out.stderr
    # A remediation loop gone wrong: 20 executions on deployments that do not exist.
    started = time.monotonic()
    storm = [kexec.create(ns, "scale_deployment", {"namespace": ns, "deployment": f"gone{i}",
                                                   "replicas": 2}) for i in range(STORM)]
    kexec.until(lambda: all(status(kexec, ns, n).get("phase") == "Failed" for n in storm),
                120, "the storm to fail")
    storm_s = time.monotonic() - started
    assert {status(kexec, ns, n)["reason"] for n in storm} == {"TargetNotFound"}
    # The 21st waits, and says why and until when.
    created = time.monotonic()
    name = kexec.create(ns, "scale_deployment", {"namespace": ns, "deployment": "web",
                                                 "replicas": 2})
    kexec.until(lambda: status(kexec, ns, name).get("reason") == "StormBrake", 30, "the brake")
    braked_s = time.monotonic() - created
    st = status(kexec, ns, name)
    assert st["phase"] == "Pending", st
    assert f"{STORM} executions started in the last 600s (at most {STORM})" in st["message"]
    assert "kexec brake release scale_deployment" in st["message"]
    cond = next(c for c in st["conditions"] if c["type"] == "StormBrake")
    assert cond["status"] == "True"
    events = [e for e in kexec.events_for(ns, name) if e["reason"] == "StormBrake"]
    assert events and events[0]["type"] == "Warning", events
    assert kexec.jobs_for(ns, name) == []
    time.sleep(3)  # it stays held: the brake does not leak with time or rechecks
    assert status(kexec, ns, name).get("reason") == "StormBrake"
    # Someone without the operator's Role cannot release it.
    denied = release(kexec, "scale_deployment", "mallory")
    assert denied.returncode == 1 and "forbidden" in denied.stderr.lower(), denied.stderr
    assert status(kexec, ns, name).get("reason") == "StormBrake"
    # The operator releases it (as themselves, with only kexec-brake-releaser).
    released_at = time.monotonic()
    out = release(kexec, "scale_deployment", OPERATOR)
    assert out.returncode == 0, out.stderr
    assert f"as {OPERATOR}" in out.stdout
    obj = kexec.wait(ns, name, timeout=60)
    release_s = time.monotonic() - released_at
    assert obj["status"]["phase"] == "Completed", obj["status"]
    cond = next(c for c in obj["status"]["conditions"] if c["type"] == "StormBrake")
    assert (cond["status"], cond["reason"]) == ("False", "BrakeClear")
    # The release is in the audit trail, with who made it.
    cm = kexec.api("GET", f"/api/v1/namespaces/{NS_CTRL}/configmaps/kexec-storm-brake")
    doc = json.loads(cm["data"]["scale_deployment"])
    assert doc["releasedBy"] == OPERATOR
    uid = f"brake-release:scale_deployment:{iso(parse_time(doc['releasedAt']) or datetime.now(UTC))}"
    cli = str(Path(sys.executable).with_name("kexec"))

    def audited() -> dict[str, Any] | None:
        out = subprocess.run([cli, "audit", uid, "--dsn", kexec.dsn, "-o", "json"],
                             capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None

    kexec.until(lambda: audited() is not None, 30, "the release in the audit trail")
    record = audited()
    assert record is not None
    assert record["reason"] == "StormBrakeReleased" and record["action"] == "scale_deployment"
    assert f"released by {OPERATOR}" in record["message"]
    print(f"storm of {STORM} failed in {storm_s:.1f}s; the 21st held in {braked_s:.1f}s; "
          f"released → Completed in {release_s:.1f}s")


def test_a_target_remediated_a_moment_ago_waits_out_the_cooldown(brake_on: Kexec) -> None:
    kexec = brake_on
    ns = fresh_ns(kexec, "cooldown")
    kexec.apply({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "cfg", "namespace": ns}, "data": {"a": "1"}})
    first = kexec.create(ns, "update_configmap", {"namespace": ns, "configMap": "cfg",
                                                  "data": {"a": "2"}})
    obj = kexec.wait(ns, first, timeout=90)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    done = max(parse_time(t["time"]) or datetime.now(UTC)
               for t in obj["status"]["phaseTransitions"] if t["phase"] == "Completed")
    second = kexec.create(ns, "update_configmap", {"namespace": ns, "configMap": "cfg",
                                                   "data": {"a": "3"}})
    kexec.until(lambda: status(kexec, ns, second).get("reason") in ("Cooldown", "Succeeded"),
                30, "the cooldown")
    st = status(kexec, ns, second)
    assert (st["phase"], st["reason"]) == ("Pending", "Cooldown"), st
    assert f"remediated by {ns}/{first}" in st["message"] and "waits until" in st["message"]
    obj = kexec.wait(ns, second, timeout=90)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    started = min(parse_time(t["time"]) or done
                  for t in obj["status"]["phaseTransitions"] if t["phase"] == "Validating")
    assert (started - done).total_seconds() >= 8 - 1  # second resolution
    assert kexec.api("GET", f"/api/v1/namespaces/{ns}/configmaps/cfg")["data"] == {"a": "3"}
    print(f"cooldown 8s: the second started {(started - done).total_seconds():.0f}s after "
          "the first completed")


def test_a_maintenance_window_defers_until_it_is_over(brake_on: Kexec) -> None:
    kexec = brake_on
    ns = fresh_ns(kexec, "deferred")
    kexec.apply({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "cfg", "namespace": ns}, "data": {"a": "1"}})
    now = datetime.now(UTC)
    data = brake_data()
    data["kexec"]["config"]["maintenance_windows"] = [{
        "name": "db-upgrade", "start": iso(now - timedelta(hours=1)),
        "end": iso(now + timedelta(hours=1))}]
    use_policy_data(kexec, data)
    try:
        name = kexec.create(ns, "update_configmap", {"namespace": ns, "configMap": "cfg",
                                                     "data": {"a": "2"}})
        kexec.until(lambda: status(kexec, ns, name).get("reason") == "Deferred", 30,
                    "the deferral")
        st = status(kexec, ns, name)
        assert st["phase"] == "Pending", st
        assert st["message"] == "deferred by the policy: maintenance window db-upgrade is in effect"
        assert kexec.jobs_for(ns, name) == []
    finally:
        use_policy_data(kexec, brake_data())  # the window is over
    obj = kexec.wait(ns, name, timeout=60)
    assert obj["status"]["phase"] == "Completed", obj["status"]
