"""Scenario 9: leak scan. ``update_secret`` executions replace Secrets' data with random
marker values; neither the old nor the new values (plain or base64) appear anywhere kexec
writes: the executions' objects (status included), the namespace's Events, the controller's
log (at debug level), the runner pods' output, the audit database (pg_dump of it) and
/metrics. Only Secrets hold them (the target, its source, the rollback copy)."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from devstack.harness import free_port
from tests.reliability.conftest import Reliability, record, size

pytestmark = pytest.mark.cluster


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def test_secret_values_never_leak(rel: Reliability) -> None:
    n = size(4, 20)
    t0 = time.monotonic()
    k = rel.k
    ns = rel.ns("leak")
    port = free_port()
    ident = f"rel-leak-{uuid.uuid4().hex[:4]}"
    k.replace_controllers((ident, ("--no-leader-elect", "--log-level", "debug"), port))
    markers: list[str] = []
    for i in range(n):
        old, new = f"old{uuid.uuid4().hex}", f"new{uuid.uuid4().hex}"
        markers += [old, new]
        k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s-{i}", "namespace": ns},
                 "stringData": {"password": old, "token": old[::-1]}})
        k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"src-{i}", "namespace": ns},
                 "stringData": {"password": new, "token": new[::-1]}})
        markers += [old[::-1], new[::-1]]
    names = [k.create(ns, "update_secret", {"namespace": ns, "secret": f"s-{i}",
                                            "sourceSecretRef": {"name": f"src-{i}"}}) for i in range(n)]
    seen = rel.wait_terminal({ns: names}, timeout=size(120, 300))
    completed = [o for o in seen.values() if (o.get("status") or {}).get("phase") == "Completed"]
    updated = sum(k.api("GET", f"/api/v1/namespaces/{ns}/secrets/s-{i}")["data"]["password"]
                  == b64(markers[4 * i + 1]) for i in range(n))
    rel.audit_compare(list(seen.values()), wait_s=60)  # the trail is written before it is scanned
    time.sleep(1)
    sinks = {
        "executions": json.dumps(k.api("GET", f"/apis/kubernetesexecution.kubernaut.io/v1alpha1/namespaces/{ns}"
                                              "/kubernetesexecutions")),
        "events": json.dumps(k.api("GET", f"/api/v1/namespaces/{ns}/events")),
        "controller_log": k.controller_log(ident),
        "runner_output": "\n".join(p.read_text(errors="replace") for p in (k.log_dir / "pods").glob(f"{ns}_*.log")),
        "audit_db": rel.pg.dump(rel.db),
        "metrics": rel.metrics(port)[1],
    }
    forms = [f for m in markers for f in (m, b64(m))]
    leaks = [f"{sink}: {form}" for sink, text in sinks.items() for form in forms if form in text]
    empty = [sink for sink, text in sinks.items() if len(text) < 50]
    tried = len(sinks) * len(forms)
    record("leak_scan", tried, tried - len(leaks), 0, 0, time.monotonic() - t0, executions=n,
           completed=len(completed), leaks=len(leaks), bytes_scanned=sum(len(t) for t in sinks.values()))
    assert len(completed) == n and updated == n, seen
    assert not empty, empty  # every sink was really read
    assert not leaks, leaks[:10]
