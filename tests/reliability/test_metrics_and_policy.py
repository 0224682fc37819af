"""Scenarios 10 and 11.

10. Metrics auth, many times over on both leader-elected replicas: no token 401, a bogus
    token 401, a real ServiceAccount token without RBAC 403, a metrics reader 200; the
    probes (/healthz, /readyz) answer without a token.
11. Bad policy updates (a Rego syntax error, a Rego compile error, malformed data.json)
    pushed through the ``safety-policies`` ConfigMap one after another: each is rejected
    (Event PolicyRejected) and counted once in ``kexec_policy_reload_total{result="failure"}``,
    and the previous, good policy keeps deciding (its max_replicas still denies, a small
    scale still runs)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devstack.harness import NS_CTRL, dev_policy_data, free_port
from tests.reliability.conftest import Reliability, record, size

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def get(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_metrics_auth_matrix(rel: Reliability) -> None:
    n = size(10, 100)
    t0 = time.monotonic()
    k = rel.k
    ports = {"rel-ma": free_port(), "rel-mb": free_port()}
    k.replace_controllers(*((ident, (), port) for ident, port in ports.items()))
    k.kubectl("create", "serviceaccount", "rel-nobody", "-n", NS_CTRL, check=False)
    nobody, reader = k.token_for(NS_CTRL, "rel-nobody"), rel.reader_token()
    for port in ports.values():
        k.until(lambda p=port: get(f"http://127.0.0.1:{p}/readyz", None) == 200, 60, "ready")
    cases: list[tuple[str, str | None, int]] = [
        ("/metrics", None, 401), ("/metrics", "not-a-token", 401), ("/metrics", nobody + "x", 401),
        ("/metrics", nobody, 403), ("/metrics", reader, 200),
        ("/healthz", None, 200), ("/readyz", None, 200),
    ]
    wrong: list[str] = []
    tried = 0
    for _ in range(n):
        for port in ports.values():
            for path, token, want in cases:
                tried += 1
                got = get(f"http://127.0.0.1:{port}{path}", token)
                if got != want:
                    wrong.append(f"{port}{path} token={'reader' if token == reader else token and token[:8]}: "
                                 f"{got} != {want}")
    record("metrics_auth", tried, tried - len(wrong), 0, 0, time.monotonic() - t0, replicas=len(ports))
    assert not wrong, wrong[:10]


def policy_cm(data: dict[str, Any], **extra: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "safety-policies", "namespace": NS_CTRL},
            "data": {"data.json": json.dumps(data), **extra}}


def rejected_events(rel: Reliability) -> int:
    items = rel.k.api("GET", f"/api/v1/namespaces/{NS_CTRL}/events"
                             "?fieldSelector=involvedObject.name=safety-policies")["items"]
    return sum(int(e.get("count") or 1) for e in items if e.get("reason") == "PolicyRejected")


def reload_failures(rel: Reliability, port: int) -> float:
    _, body = rel.metrics(port)
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("kexec_policy_reload_total{") and 'result="failure"' in line)


def test_bad_policy_updates_keep_the_previous_policy(rel: Reliability) -> None:
    rounds = size(1, 5)
    t0 = time.monotonic()
    k = rel.k
    port = free_port()
    k.replace_controllers(("rel-policy", ("--no-leader-elect",), port))
    ns = rel.ns("policy")
    rel.deployments(ns, ["web"])
    data = dev_policy_data()  # the shipped knobs, brake and cooldown off as in the harness
    data["kexec"]["config"]["max_replicas"] = 2
    good = policy_cm(data)
    bad_updates = [
        policy_cm(data, **{"broken.rego": "package kexec.safety\nthis is not rego {"}),
        policy_cm(data, **{"broken.rego": "package kexec.safety\n\ndeny contains msg if {\n"
                                          "    msg := undefined_function_xyz(input)\n}\n"}),
        {**good, "data": {"data.json": "{\"kexec\": {\"config\": "}},
    ]

    def decide(replicas: int) -> dict[str, Any]:
        name = k.create(ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": replicas})
        return k.wait(ns, name, timeout=90)["status"]

    try:
        k.apply(good)
        k.until(lambda: rel.gauge(port, "kexec_leader") == 1, 60, "leading")
        deadline = time.monotonic() + 40
        while decide(3)["reason"] != "PolicyDenied":  # the good policy is in force
            assert time.monotonic() < deadline, "the good policy never took effect"
            time.sleep(1)
        tried = ok = metric_missed = 0
        failures: list[str] = []
        for _ in range(rounds):
            for bad in bad_updates:
                events, reloads = rejected_events(rel), reload_failures(rel, port)
                k.apply(bad)
                k.until(lambda ev=events: rejected_events(rel) > ev, 40, "the bad update rejected (Event)")
                # counted before the Event is emitted
                counted = reload_failures(rel, port) == reloads + 1
                metric_missed += not counted
                denied, allowed = decide(3), decide(2)
                tried += 1
                if (denied["phase"], denied["reason"]) == ("Failed", "PolicyDenied") and \
                        "max_replicas" in denied["message"] and allowed["phase"] == "Completed" and counted:
                    ok += 1
                else:
                    failures.append(f"{json.dumps(bad['data'])[:80]}: {denied.get('reason')} / {allowed.get('phase')}"
                                    f" / reload failures counted: {counted}")
                k.apply(good)
        record("bad_policy_update", tried, ok, tried - ok, 0, time.monotonic() - t0,
               failure_metric_missed=metric_missed)
        assert not failures, failures
        assert ok == tried == rounds * len(bad_updates)
    finally:
        k.kubectl("delete", "configmap", "safety-policies", "-n", NS_CTRL, check=False)
