"""The reliability and security suite (issue 14): the fixture ``rel`` and the results table.

Every scenario records one row (name, tried, ok, lost, duplicated, seconds) *before* it
asserts, so a failing scenario still shows its counts. The row table is printed at the end
of the pytest run; with $KEXEC_RELIABILITY_JSON set (hack/reliability.sh) it is also written
there as ``{"scenarios": [...]}``.

Sizes: $KEXEC_RELIABILITY=short (default, the CI variant) or long (hack/reliability.sh --long).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack.controlplane import ControlPlane
from devstack.harness import NS_CTRL, TERMINAL, Kexec
from devstack.postgres import PostgresServer
from devstack.simulator import NodeSimulator

LONG = os.environ.get("KEXEC_RELIABILITY", "short") == "long"


def size(short: int, long: int) -> int:
    return long if LONG else short


@dataclass
class Row:
    name: str
    tried: int
    ok: int
    lost: int
    duplicated: int
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)


ROWS: list[Row] = []


def record(name: str, tried: int, ok: int, lost: int, duplicated: int, seconds: float,
           **notes: Any) -> Row:
    row = Row(name, tried, ok, lost, duplicated, round(seconds, 1), notes)
    ROWS.append(row)
    print(f"\nreliability {name}: tried={tried} ok={ok} lost={lost} duplicated={duplicated} "
          f"seconds={row.seconds:.1f} {notes or ''}")
    return row


def table() -> str:
    head = f"{'scenario':<26} {'tried':>7} {'survived':>9} {'lost':>6} {'duplicated':>11} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    lines += [f"{r.name:<26} {r.tried:>7} {r.ok:>9} {r.lost:>6} {r.duplicated:>11} {r.seconds:>8.1f}"
              for r in ROWS]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section(f"reliability ({'long' if LONG else 'short'} variant)")
    terminalreporter.write_line(table())
    out = os.environ.get("KEXEC_RELIABILITY_JSON")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({
            "variant": "long" if LONG else "short",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scenarios": [{k: v for k, v in asdict(r).items() if k != "notes" or v} for r in ROWS],
        }, indent=2) + "\n")
        terminalreporter.write_line(f"written to {out}")


class Reliability:
    """The shared Kexec plus what the scenarios measure with: the audit database, metrics."""

    def __init__(self, kexec: Kexec, pg: PostgresServer) -> None:
        self.k = kexec
        self.pg = pg
        self.db = kexec.dsn.rsplit("/", 1)[1]
        self._reader: str | None = None

    # --- audit store ----------------------------------------------------------------
    def audit_seqs(self, uids: list[str]) -> dict[str, list[int]]:
        """(uid → seqs of its transitions in kubernetes_execution_audit_events), one query."""
        out: dict[str, list[int]] = {u: [] for u in uids}
        if not uids:
            return out
        values = ",".join(f"'{u}'" for u in uids)  # uids are Kubernetes UUIDs
        text = self.pg.psql("SELECT execution_uid, seq FROM kubernetes_execution_audit_events "
                            f"WHERE execution_uid IN ({values}) ORDER BY 1, 2", dbname=self.db)
        for line in text.splitlines():
            if line.strip():
                uid, seq = line.split("|")
                out[uid].append(int(seq))
        return out

    def audit_compare(self, objs: list[dict[str, Any]], wait_s: float = 90) -> tuple[int, int, int]:
        """(transitions in the statuses, missing from the audit store, extra or doubled in it)
        once the store has caught up (or ``wait_s`` passed)."""
        want = {o["metadata"]["uid"]: sorted(int(t["seq"]) for t in o["status"].get("phaseTransitions") or [])
                for o in objs}
        deadline = time.monotonic() + wait_s
        while True:
            got = self.audit_seqs(list(want))
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(1)
        lost = sum(len(set(w) - set(got[u])) for u, w in want.items())
        extra = sum(len(got[u]) - len(set(got[u]) & set(w)) for u, w in want.items())
        return sum(len(w) for w in want.values()), lost, extra

    # --- metrics ---------------------------------------------------------------------
    def reader_token(self) -> str:
        if self._reader is None:
            self.k.kubectl("create", "serviceaccount", "rel-scraper", "-n", NS_CTRL, check=False)
            self.k.kubectl("create", "clusterrolebinding", "rel-scraper", "--clusterrole=kexec-metrics-reader",
                           f"--serviceaccount={NS_CTRL}:rel-scraper", check=False)
            self._reader = self.k.token_for(NS_CTRL, "rel-scraper")
        return self._reader

    def metrics(self, port: int, token: str | None = "reader") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if token:
            req.add_header("Authorization", f"Bearer {self.reader_token() if token == 'reader' else token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def gauge(self, port: int, name: str) -> float | None:
        code, body = self.metrics(port)
        if code != 200:
            return None
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    # --- executions ------------------------------------------------------------------
    def ns(self, prefix: str) -> str:
        return self.k.namespace(f"rel-{prefix}-{uuid.uuid4().hex[:5]}")

    def deployments(self, ns: str, names: list[str], replicas: int = 1, timeout: float = 180) -> None:
        for name in names:
            self.k.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                          "metadata": {"name": name, "namespace": ns},
                          "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                                   "template": {"metadata": {"labels": {"app": name}},
                                                "spec": {"containers": [{"name": "app", "image": "nginx:1"}]}}}})

        def ready() -> bool:
            items = self.k.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]
            done = {d["metadata"]["name"] for d in items
                    if (d.get("status") or {}).get("readyReplicas", 0) == replicas
                    and (d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]}
            return set(names) <= done
        self.k.until(ready, timeout, f"deployments in {ns} ready")

    def configmaps(self, count: int, prefix: str, per_ns: int = 5) -> list[tuple[str, str]]:
        """``count`` ConfigMaps (data key=old), ``per_ns`` to a fresh namespace: (ns, name)."""
        out: list[tuple[str, str]] = []
        for j in range((count + per_ns - 1) // per_ns):
            ns = self.ns(f"{prefix}{j}")
            for i in range(min(per_ns, count - j * per_ns)):
                self.k.apply({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": f"cm-{i}", "namespace": ns}, "data": {"key": "old"}})
                out.append((ns, f"cm-{i}"))
        return out

    def update_configmap(self, ns: str, cm: str, value: str) -> str:
        return self.k.create(ns, "update_configmap", {"namespace": ns, "configMap": cm, "data": {"key": value}},
                             name=f"update-{cm}-{uuid.uuid4().hex[:4]}")

    def configmap_value(self, ns: str, cm: str) -> str:
        return str((self.k.api("GET", f"/api/v1/namespaces/{ns}/configmaps/{cm}").get("data") or {}).get("key"))

    def list_executions(self, ns: str) -> dict[str, dict[str, Any]]:
        from devstack.harness import GROUP_PATH

        items = self.k.api("GET", f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions", timeout=30)["items"]
        return {o["metadata"]["name"]: o for o in items}

    def wait_terminal(self, names: dict[str, list[str]], timeout: float) -> dict[tuple[str, str], dict[str, Any]]:
        """Poll (one list per namespace) until every named execution is terminal or the time
        is up; returns the last object seen of each."""
        deadline = time.monotonic() + timeout
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        while True:
            for ns, wanted in names.items():
                try:
                    objs = self.list_executions(ns)
                except (urllib.error.URLError, OSError):
                    continue
                for n in wanted:
                    if n in objs:
                        seen[(ns, n)] = objs[n]
            pending = [k for ns, ws in names.items() for k in ((ns, n) for n in ws)
                       if ((seen.get(k) or {}).get("status") or {}).get("phase") not in TERMINAL]
            if not pending or time.monotonic() > deadline:
                return seen
            time.sleep(1)

    def jobs_by_execution(self, ns: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.k.api("GET", f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]:
            name = (job["metadata"].get("labels") or {}).get("kubernetesexecution.kubernaut.io/execution")
            if name:
                out[name] = out.get(name, 0) + 1
        return out

    def controller_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.k.log_dir.glob("kexec-controller-*.log")))


@pytest.fixture(scope="session")
def rel(control_plane: ControlPlane, node_simulator: NodeSimulator,
        postgres_server: PostgresServer) -> Iterator[Reliability]:
    """The Kexec of the e2e session when it exists (one set of controllers on the control
    plane), else a new one installed here. Scenarios start their own controllers
    (``replace_controllers``); afterwards the default single controller is back."""
    kexec = Kexec.existing(control_plane)
    own = kexec is None
    if kexec is None:
        kexec = Kexec(control_plane, postgres_server.create_database(f"kexec_rel_{uuid.uuid4().hex[:6]}"))
        kexec.install()
    try:
        yield Reliability(kexec, postgres_server)
    finally:
        if not postgres_server.running:
            postgres_server.start_server()
        if own:
            kexec.stop()
        else:
            kexec.default_controller()
