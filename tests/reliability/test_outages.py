"""Scenarios 4 and 5: a dependency goes down in the middle of a burst of executions.

4. PostgreSQL (the audit store) stopped mid-burst: executions go on; afterwards no audit
   record is lost or doubled and the unconfirmed-records gauge is back at 0.
5. OPA (``--policy-engine opa``) stopped mid-burst: nothing executes while it is down (each
   execution held in Validating, condition PolicyAllowed=Unknown PolicyEngineUnavailable,
   no Job, its ConfigMap untouched); once OPA is back, everything completes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from devstack.harness import free_port
from tests.reliability.conftest import Reliability, record, size

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def ready(rel: Reliability, port: int) -> None:
    rel.k.until(lambda: rel.metrics(port, token=None)[0] in (401, 200), 60, "the controller's HTTP server")
    rel.k.until(lambda: rel.gauge(port, "kexec_leader") == 1, 60, "the controller leading")


def phase(obj: dict[str, Any] | None) -> str:
    return str(((obj or {}).get("status") or {}).get("phase") or "")


def test_postgres_down_mid_burst(rel: Reliability) -> None:
    m, outage = size(20, 100), size(15, 60)
    t0 = time.monotonic()
    k = rel.k
    targets = rel.configmaps(m, "pg")
    port = free_port()
    k.replace_controllers(("rel-pg", ("--no-leader-elect",), port))
    ready(rel, port)
    names: dict[str, list[str]] = {}
    created: dict[tuple[str, str], str] = {}  # (ns, execution) -> ConfigMap
    before = targets[: m // 3]
    during = targets[m // 3:]

    def create(ns: str, cm: str) -> None:
        name = rel.update_configmap(ns, cm, f"new-{cm}")
        names.setdefault(ns, []).append(name)
        created[(ns, name)] = cm

    for ns, cm in before:
        create(ns, cm)
    time.sleep(1.0)
    rel.pg.stop_server(mode="fast")
    down_at = time.monotonic()
    gauge_max = 0.0
    try:
        for ns, cm in during:
            create(ns, cm)
            time.sleep(outage / (2 * max(1, len(during))))
            gauge_max = max(gauge_max, rel.gauge(port, "kexec_audit_unconfirmed_records") or 0.0)
        while time.monotonic() - down_at < outage:
            gauge_max = max(gauge_max, rel.gauge(port, "kexec_audit_unconfirmed_records") or 0.0)
            time.sleep(1)
        seen = rel.wait_terminal(names, timeout=1)
        completed_while_down = sum(phase(o) == "Completed" for key, o in seen.items() if created[key] in
                                   {cm for ns, cm in during if ns == key[0]})
    finally:
        rel.pg.start_server()
    seen = rel.wait_terminal(names, timeout=size(180, 600))
    objs = [o for o in seen.values() if o.get("status")]
    transitions, audit_lost, audit_extra = rel.audit_compare(objs, wait_s=120)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (rel.gauge(port, "kexec_audit_unconfirmed_records") != 0
                                           or rel.gauge(port, "kexec_audit_unconfirmed_executions") != 0):
        time.sleep(1)
    backlog = (rel.gauge(port, "kexec_audit_unconfirmed_records"),
               rel.gauge(port, "kexec_audit_unconfirmed_executions"))
    jobs = {(ns, n): c for ns in names for n, c in rel.jobs_by_execution(ns).items()}
    not_done = [key for key in created if phase(seen.get(key)) != "Completed"]
    unchanged = [key for key, cm in created.items() if rel.configmap_value(key[0], cm) != f"new-{cm}"]
    tried = len(created)
    lost = len(not_done) + audit_lost
    duplicated = audit_extra + sum(c - 1 for c in jobs.values() if c > 1)
    record("postgres_down", tried, tried - len(not_done), lost, duplicated, time.monotonic() - t0,
           outage_s=outage, completed_while_down=completed_while_down, transitions=transitions,
           unconfirmed_max=gauge_max, unconfirmed_after=backlog[0])
    assert completed_while_down > 0, "no execution went on while PostgreSQL was down"
    assert gauge_max > 0, "the outage was never visible in kexec_audit_unconfirmed_records"
    assert not not_done and not unchanged, (not_done, unchanged)
    assert audit_lost == 0 and audit_extra == 0, (transitions, audit_lost, audit_extra)
    assert duplicated == 0
    assert backlog == (0, 0), backlog


def start_opa(opa_bin: Path, port: int, policy_dir: Path) -> subprocess.Popen[bytes]:
    """OPA serving the policies the harness's controllers use (brake and cooldown off)."""
    proc = subprocess.Popen([str(opa_bin), "run", "--server", "--addr", f"127.0.0.1:{port}", "--disable-telemetry",
                             str(policy_dir / "kexec"), str(policy_dir / "data.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


def test_opa_down_mid_burst(rel: Reliability, opa_bin: Path) -> None:
    m1, m2 = size(5, 20), size(10, 50)
    t0 = time.monotonic()
    k = rel.k
    targets = rel.configmaps(m1 + m2, "opa")
    opa_port, port = free_port(), free_port()
    opa = start_opa(opa_bin, opa_port, k.policy_dir)
    try:
        k.replace_controllers(("rel-opa", ("--no-leader-elect", "--policy-engine", "opa",
                                           "--opa-url", f"http://127.0.0.1:{opa_port}"), port))
        ready(rel, port)
        first: dict[str, list[str]] = {}
        for ns, cm in targets[:m1]:
            first.setdefault(ns, []).append(rel.update_configmap(ns, cm, "up"))
        seen1 = rel.wait_terminal(first, timeout=size(120, 300))
        opa.terminate()
        opa.wait(10)
        second: dict[tuple[str, str], str] = {}
        for ns, cm in targets[m1:]:
            second[(ns, rel.update_configmap(ns, cm, "after"))] = cm

        def held() -> dict[tuple[str, str], dict[str, Any]]:
            out = {}
            for ns in {ns for ns, _ in second}:
                for name, obj in rel.list_executions(ns).items():
                    if (ns, name) in second:
                        out[(ns, name)] = obj
            return out

        k.until(lambda: all((o.get("status") or {}).get("reason") == "PolicyEngineUnavailable"
                            for o in held().values()) and len(held()) == len(second), 90,
                "every execution held by the unavailable policy engine")
        time.sleep(3)  # and they stay held
        during = held()
        refused_ok = 0
        leaked = []
        for (ns, name), obj in during.items():
            st = obj.get("status") or {}
            cond = next((c for c in st.get("conditions") or [] if c["type"] == "PolicyAllowed"), {})
            jobs = rel.jobs_by_execution(ns).get(name, 0)
            value = rel.configmap_value(ns, second[(ns, name)])
            if (st.get("phase"), st.get("reason"), cond.get("status"), cond.get("reason"), jobs, value) == (
                    "Validating", "PolicyEngineUnavailable", "Unknown", "PolicyEngineUnavailable", 0, "old"):
                refused_ok += 1
            else:
                leaked.append(f"{ns}/{name}: {st.get('phase')} {st.get('reason')} cond={cond} jobs={jobs} "
                              f"value={value}")
        opa = start_opa(opa_bin, opa_port, k.policy_dir)
        names: dict[str, list[str]] = {}
        for ns, name in second:
            names.setdefault(ns, []).append(name)
        seen2 = rel.wait_terminal(names, timeout=size(180, 600))
    finally:
        opa.terminate()
        opa.wait(10)
    done1 = sum(phase(o) == "Completed" for o in seen1.values())
    done2 = [key for key, o in seen2.items() if phase(o) == "Completed"
             and rel.configmap_value(key[0], second[key]) == "after"]
    engines = {o["status"]["validation"]["policy"]["engine"] for o in seen2.values() if phase(o) == "Completed"}
    dup = sum(c - 1 for ns in {ns for ns, _ in second} for c in rel.jobs_by_execution(ns).values() if c > 1)
    tried = m1 + m2
    ok = done1 + sum(1 for key in done2 if key in during and not any(key[1] in x for x in leaked))
    record("opa_down", tried, ok, tried - done1 - len(done2), dup, time.monotonic() - t0,
           held_while_down=refused_ok, executed_while_down=len(leaked))
    assert done1 == m1, seen1
    assert not leaked and refused_ok == m2, leaked
    assert len(done2) == m2 and engines == {"opa"}, (seen2, engines)
    assert dup == 0
