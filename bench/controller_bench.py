"""Controller benchmark on the real local control plane (DESIGN.md §4).

    .venv/bin/python bench/controller_bench.py [--latency N] [--burst N]

Starts the control plane, the node simulator, PostgreSQL and the controller (as its own
ServiceAccount), then measures, from the client side through a watch:
  * latency: N executions one after another: created -> Job created, created -> Completed
  * burst:   N executions created at once: time until every Job exists and until all are
             Completed, controller peak RSS, Kubernetes API requests per execution
  * the controller's own step histograms (validation incl. policy + dry run).
Prints markdown tables. Each execution is an update_configmap on its own ConfigMap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient

from devstack.controlplane import ControlPlane
from devstack.harness import NS_CTRL, Kexec, dev_policy_data
from devstack.postgres import PostgresServer
from devstack.simulator import NodeSimulator
from kexec.adapters.kubernetes.client import load_configuration
from kexec.runtime.informer import Informer

ROOT = Path(__file__).resolve().parents[1]
GROUP = "kubernetesexecution.kubernaut.io"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


class Clocks:
    """Client-side event times per execution key."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.job: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.phase: dict[str, str] = {}
        self.reason: dict[str, str] = {}

    def on_execution(self, _t: str, obj: dict[str, Any]) -> None:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        phase = (obj.get("status") or {}).get("phase", "")
        self.phase[key] = phase
        self.reason[key] = (obj.get("status") or {}).get("reason", "")
        if phase in ("Completed", "Failed", "RollbackReady") and key not in self.done:
            self.done[key] = time.monotonic()

    def on_job(self, _t: str, obj: dict[str, Any]) -> None:
        for ref in obj["metadata"].get("ownerReferences") or []:
            key = f"{obj['metadata']['namespace']}/{ref['name']}"
            self.job.setdefault(key, time.monotonic())


async def create(api: ApiClient, ns: str, name: str, cm: str, **spec: Any) -> None:
    body = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "KubernetesExecution",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"action": "update_configmap",
                     "parameters": {"updateConfigMap": {"namespace": ns, "configMap": cm,
                                                        "data": {"tick": name}}}, **spec}}
    await api.call_api(f"/apis/{GROUP}/v1alpha1/namespaces/{ns}/kubernetesexecutions", "POST",
                       body=body, header_params={"Content-Type": "application/json"},
                       auth_settings=["BearerToken"], response_types_map={201: "object"},
                       _return_http_data_only=True)


async def baseline(api: ApiClient, ns: str, n: int) -> dict[str, Any]:
    """The same change made directly through the same client: server dry run, then the
    merge patch (what an operator without kexec would do), one ConfigMap after another."""
    times = []
    for i in range(n):
        path = f"/api/v1/namespaces/{ns}/configmaps/cm-{i}"
        t0 = time.monotonic()
        for query in ([("dryRun", "All")], []):
            await api.call_api(path, "PATCH", query_params=query, body={"data": {"tick": f"baseline-{i}"}},
                               header_params={"Content-Type": "application/merge-patch+json",
                                              "Accept": "application/json"},
                               auth_settings=["BearerToken"], response_types_map={200: "object"},
                               _return_http_data_only=True)
        times.append(time.monotonic() - t0)
    return {"n": n, "p50": pct(times, 0.5), "p95": pct(times, 0.95), "requests_per_change": 2}


def metrics(port: int, token: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


STEP_COUNT = "kexec_reconcile_seconds_count"  # reconcile steps by the phase they started in


def counter(text: str, name: str, label: str = "method") -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf'^{name}\{{{label}="([^"]+)"\}} ([0-9.e+]+)$', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def metric_sum(text: str, name: str) -> float:
    """The sum of a metric over all its label sets."""
    return sum(float(m.group(1)) for line in text.splitlines()
               if (m := re.match(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", line)))


def histogram_quantile(text: str, name: str, phases: tuple[str, ...], q: float) -> float:
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        m = re.match(rf'^{name}_bucket\{{le="([^"]+)",phase="([^"]+)"\}} ([0-9.e+]+)$', line)
        if m and m.group(2) in phases:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets[le] = buckets.get(le, 0.0) + float(m.group(3))
    total = buckets.get(float("inf"), 0.0)
    for le in sorted(buckets):
        if total and buckets[le] >= q * total:
            return le
    return float("nan")


class RssSampler:
    """Samples the controller's /proc status every 0.2 s: where the peak is (anonymous heap
    vs mapped files) and how many threads it had then."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key + "_mb"] = int(value.split()[0]) / 1024
            elif key == "Threads":
                out["threads"] = int(value)
        sockets = 0
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                sockets += os.readlink(fd).startswith("socket:")
        out["sockets"] = sockets
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                now = self._sample()
            except OSError:
                return
            if now.get("VmRSS_mb", 0) >= self.peak.get("VmRSS_mb", 0):
                self.peak = now

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peak


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU so far (``/proc/PID/stat``)."""
    usage = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(usage[11]) + int(usage[12])) / os.sysconf("SC_CLK_TCK")


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the controller into a collapsed-stack file (``--profile``)."""
    return subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                             str(pid), "--rate", "100", "--format", "raw", "--nonblocking",
                             "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def bench(k: Kexec, latency_n: int, burst_n: int, dry_n: int, token: str, port: int,
                pid: int, profile: str = "") -> dict[str, Any]:
    cfg = await load_configuration(str(k.cp.kubeconfig), pool_size=64)
    results: dict[str, Any] = {}
    async with ApiClient(cfg) as api:
        clocks = Clocks()
        execs = Informer(api, GROUP, "v1alpha1", "kubernetesexecutions", on_event=clocks.on_execution)
        jobs = Informer(api, "batch", "v1", "jobs", on_event=clocks.on_job)
        execs.start()
        jobs.start()
        await execs.wait_synced()
        await jobs.wait_synced()

        # Latency: one at a time.
        ns = "bench-latency"
        for i in range(latency_n):
            key = f"{ns}/lat-{i}"
            clocks.created[key] = time.monotonic()
            await create(api, ns, f"lat-{i}", f"cm-{i}")
            while key not in clocks.done:  # noqa: ASYNC110 - polling the watch-fed dict is the point
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
        keys = [f"{ns}/lat-{i}" for i in range(latency_n)]
        to_job = [clocks.job[x] - clocks.created[x] for x in keys if x in clocks.job]
        to_done = [clocks.done[x] - clocks.created[x] for x in keys]
        results["latency"] = {
            "n": latency_n,
            "to_job_p50": pct(to_job, 0.5), "to_job_p95": pct(to_job, 0.95),
            "to_done_p50": pct(to_done, 0.5), "to_done_p95": pct(to_done, 0.95),
            "completed": sum(1 for x in keys if clocks.phase.get(x) == "Completed"),
        }
        results["baseline"] = await baseline(api, ns, latency_n)
        text = metrics(port, token)
        results["validation_p95"] = histogram_quantile(text, "kexec_reconcile_seconds",
                                                       ("New", "Pending", "Validating"), 0.95)
        results["validation_p50"] = histogram_quantile(text, "kexec_reconcile_seconds",
                                                       ("New", "Pending", "Validating"), 0.5)

        # Bursts: everything at once; first validation only (dryRun: no Job), then real Jobs.
        for label, n, spec in (("dry_run_burst", dry_n, {"dryRun": True}),
                               ("burst", burst_n, {"timeout": "15m"})):
            if not n:
                continue
            text_before = metrics(port, token)
            before = counter(text_before, "kexec_api_requests_total")
            kinds_before = counter(text_before, "kexec_api_request_kinds_total", "kind")
            phases_before = counter(text_before, STEP_COUNT, "phase")
            cpu_before = cpu_seconds(pid)
            spy = profiler(pid, Path(profile) / f"{label}.txt") if profile else None
            names = [(f"bench-burst-{i % 10}", f"{label[:3]}-{i}", f"cm-{i // 10}") for i in range(n)]
            t0 = time.monotonic()
            sem = asyncio.Semaphore(32)

            async def one(ns: str, name: str, cm: str, spec: dict[str, Any] = spec,
                          sem: asyncio.Semaphore = sem) -> None:
                async with sem:
                    clocks.created[f"{ns}/{name}"] = time.monotonic()
                    await create(api, ns, name, cm, **spec)

            await asyncio.gather(*(one(*x) for x in names))
            created = time.monotonic() - t0
            keys = [f"{x[0]}/{x[1]}" for x in names]
            deadline = time.monotonic() + 1800
            all_jobs = None
            while time.monotonic() < deadline:
                if all_jobs is None and all(x in clocks.job for x in keys):
                    all_jobs = time.monotonic() - t0
                if all(x in clocks.done for x in keys):
                    break
                await asyncio.sleep(0.1)
            total = time.monotonic() - t0
            await asyncio.sleep(2)  # what follows the end (finalizer released) is counted too
            cpu = cpu_seconds(pid) - cpu_before
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(30)
            text_after = metrics(port, token)
            after = counter(text_after, "kexec_api_requests_total")
            kinds = {k: (v - kinds_before.get(k, 0)) / n
                     for k, v in counter(text_after, "kexec_api_request_kinds_total", "kind").items()}
            results[label + "_reconciles"] = [line for line in text_after.splitlines()
                                              if line.startswith("kexec_reconcile_total")]
            per = {m: (after.get(m, 0) - before.get(m, 0)) / n for m in after}
            results[label] = {
                "n": n, "created_s": created, "all_jobs_s": all_jobs, "all_done_s": total,
                "completed": sum(1 for x in keys if clocks.phase.get(x) == "Completed"),
                "outcomes": dict(Counter(f"{clocks.phase.get(x)}/{clocks.reason.get(x)}" for x in keys)),
                "api_per_execution": per,
                # persisted writes (Events included); dry runs and access reviews apart
                "api_kinds_per_execution": kinds,
                "writes_per_execution": kinds.get("write", 0.0),
                "reviews_per_execution": kinds.get("review", 0.0),
                "gets_per_execution": per.get("GET", 0.0),
                "reconciles_per_execution": (metric_sum(text_after, "kexec_reconcile_total")
                                             - metric_sum(text_before, "kexec_reconcile_total")) / n,
                "reconciles_by_phase": {p: round((v - phases_before.get(p, 0)) / n, 3)
                                        for p, v in counter(text_after, STEP_COUNT, "phase").items()
                                        if v != phases_before.get(p, 0)},
                # the controller's CPU from the first create to 2 s after the last end
                "cpu_per_execution_s": cpu / n,
            }
        await execs.stop()
        await jobs.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=int, default=60)
    parser.add_argument("--burst", type=int, default=200, help="executions with real Jobs at once")
    parser.add_argument("--dry-burst", type=int, default=1000, help="dryRun executions at once")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--json-out", help="also write the results to this JSON file")
    parser.add_argument("--profile", default="", help="directory: py-spy collapsed stacks of "
                        "the controller during each burst (py-spy from PyPI)")
    args = parser.parse_args()
    with ControlPlane() as cp, PostgresServer() as pg:
        sim = NodeSimulator(cp.kubeconfig, nodes=3, log_dir=cp.log_dir)
        sim.start()
        k = Kexec(cp, pg.dsn)
        try:
            k.install()
            data = dev_policy_data()  # the shipped knobs, the storm brake and cooldown off
            data["kexec"]["config"]["max_concurrent_per_namespace"] = 100000
            k.apply({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "safety-policies", "namespace": NS_CTRL},
                     "data": {"data.json": json.dumps(data)}})
            for ns in ["bench-latency"] + [f"bench-burst-{i}" for i in range(10)]:
                k.namespace(ns)
            for i in range(max(args.latency, max(args.burst, args.dry_burst) // 10 + 1)):
                for ns in ["bench-latency"] + [f"bench-burst-{j}" for j in range(10)]:
                    if ns == "bench-latency" and i >= args.latency:
                        continue
                    k.apply({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": f"cm-{i}", "namespace": ns}, "data": {"tick": "0"}})
            token_file = Path(cp.log_dir or "/tmp") / "metrics.token"
            token_file.write_text("bench-token")
            proc = k.start_controller("bench", "--no-leader-elect", "--workers", str(args.workers),
                                      "--metrics-token-file", str(token_file))
            time.sleep(3)
            idle = RssSampler(proc.pid)._sample()
            sampler = RssSampler(proc.pid)
            cpu_idle = cpu_seconds(proc.pid)
            res = asyncio.run(bench(k, args.latency, args.burst, args.dry_burst, "bench-token",
                                    k.http_port, proc.pid, args.profile))
            res["rss_peak_mb"] = rss_peak_mb(proc.pid)
            res["controller_cpu_s"] = cpu_seconds(proc.pid)
            res["controller_cpu_start_s"] = cpu_idle
            res["rss_idle"] = idle
            res["rss_at_peak"] = sampler.stop()
        finally:
            k.stop()
            sim.stop()
    lat = res["latency"]
    ms = 1000.0
    print("\n| measure | kexec goal | measured |\n|---|---|---|")
    print(f"| execution created → Job created, p50 / p95 (n={lat['n']}) | p95 ≤ 100 ms | "
          f"{lat['to_job_p50'] * ms:.0f} / {lat['to_job_p95'] * ms:.0f} ms |")
    print(f"| execution created → Completed, p50 / p95 (n={lat['n']}) | — | "
          f"{lat['to_done_p50'] * ms:.0f} / {lat['to_done_p95'] * ms:.0f} ms |")
    print(f"| validation step incl. policy + dry run, p50 / p95 (histogram bucket bound) | p95 ≤ 50 ms | "
          f"≤ {res['validation_p50'] * ms:.0f} / ≤ {res['validation_p95'] * ms:.0f} ms |")
    for label, what in (("dry_run_burst", "dryRun (validation only, no Job)"), ("burst", "with real Jobs")):
        b = res.get(label)
        if not b:
            continue
        if b["all_jobs_s"] is not None:
            print(f"| {b['n']} executions at once {what} → all Jobs created | — | {b['all_jobs_s']:.1f} s |")
        print(f"| {b['n']} executions at once {what} → all terminal ({b['outcomes']}) | "
              f"1,000 in ≤ 60 s | {b['all_done_s']:.1f} s |")
        per = ", ".join(f"{m} {v:.1f}" for m, v in sorted(b["api_per_execution"].items()))
        print(f"| API requests per execution, {what} | ≤ 10 writes, ≤ 3 GETs, ≤ 8 reconciles | "
              f"{b['writes_per_execution']:.1f} writes (persisted, Events included), "
              f"{b['gets_per_execution']:.1f} GETs, {b['reconciles_per_execution']:.1f} reconciles; "
              f"{b['reviews_per_execution']:.1f} access reviews; by method: {per}; reconciles by "
              f"phase: {b['reconciles_by_phase']} |")
        print(f"| controller CPU per execution, {what} (from /proc) | ≤ 10 ms | "
              f"{b['cpu_per_execution_s'] * ms:.1f} ms |")
    at = res["rss_at_peak"]
    print(f"| controller peak RSS (VmHWM) | ≤ 150 MB | {res['rss_peak_mb']:.0f} MB (idle after start "
          f"{res['rss_idle'].get('VmRSS_mb', 0):.0f} MB; at the peak: anonymous {at.get('RssAnon_mb', 0):.0f} MB, "
          f"files {at.get('RssFile_mb', 0):.0f} MB, {at.get('threads', 0):.0f} threads, "
          f"{at.get('sockets', 0):.0f} sockets) |")
    base = res["latency"]
    print(f"| baseline: the same change directly (dry run + patch, same client), p50 / p95 | — | "
          f"{res['baseline']['p50'] * ms:.0f} / {res['baseline']['p95'] * ms:.0f} ms "
          f"(kexec/baseline p95: {base['to_done_p95'] / res['baseline']['p95']:.0f}x) |")
    print(json.dumps(res, indent=1, default=str))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
