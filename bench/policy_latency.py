"""Safety-policy decision latency: embedded engine (regopy) vs a local OPA server.

Every decision is the full adapter path on the repo policies (policies/): input
preparation, evaluation of ``data.kexec.safety.decision``, parsing into a
PolicyDecision. Two input sets: the fixtures of policies/testdata (≈ 90 varied
documents: every action, allow/deny/approval paths, malformed input), and
controller-like inputs built by ``build_policy_input`` as the controller builds
them in a burst (unique execution names, real-looking Deployments and ConfigMaps
with uids, resourceVersions, status and timestamps, ten namespaces, one clock
second per 40 executions).

Memory (issue 13, item 3): RSS of a fresh process before and after N unique
controller-like decisions on a pool of two interpreters (two threads) — the
regression benchmark for rego-cpp keeping memory per decision.

    .venv/bin/python bench/policy_latency.py [--decisions 2000] [--opa PATH] [--memory-decisions 3000]

opa: --opa, else $KEXEC_BIN_DIR/opa, else the dir printed by hack/build-binaries.sh.
Prints a markdown table against the targets (embedded <= 0.5 ms p99, OPA <= 5 ms p99).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from regopy import Interpreter, LogLevel

from kexec.adapters.policy.bundle import load_policy_dir, prepare_input
from kexec.adapters.policy.embedded import CompiledPolicy, EmbeddedPolicy
from kexec.adapters.policy.opa_http import OpaHttpPolicy
from kexec.application.policy_input import build_policy_input
from kexec.domain.execution import Execution
from kexec.domain.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"


def merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: merge(base[k], v) if k in base else v for k, v in patch.items()}}
    return copy.deepcopy(patch)


def inputs() -> list[dict[str, Any]]:
    bases = json.loads((POLICIES / "testdata" / "bases.json").read_text())["bases"]
    docs = []
    for path in sorted((POLICIES / "testdata").glob("cases_*.json")):
        for case in json.loads(path.read_text())["cases"].values():
            docs.append(merge(bases[case["base"]], case["input"]))
    return docs


def _deployment(ns: str, name: str, now: datetime, replicas: int) -> dict[str, Any]:
    created = (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    container = {"name": "web", "image": "registry.example/web:1.4.2", "ports": [{"containerPort": 8080}],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                 "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "generation": 3,
                     "resourceVersion": str(uuid.uuid4().int % 10**7), "creationTimestamp": created,
                     "labels": {"app": name}, "annotations": {"deployment.kubernetes.io/revision": "3"},
                     "managedFields": [{"manager": "kubectl", "operation": "Update", "time": created}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas, "observedGeneration": 3,
                   "conditions": [{"type": "Available", "status": "True", "lastTransitionTime": created,
                                   "reason": "MinimumReplicasAvailable"}]},
    }


def controller_inputs(n: int, start: int = 0) -> list[dict[str, Any]]:
    """What the controller hands the engine in a burst (see the module docstring)."""
    docs = []
    base = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    nodes = [{"name": f"node-{i}", "ready": True, "unschedulable": False, "controlPlane": i == 0} for i in range(3)]
    for i in range(start, start + n):
        ns = f"bench-burst-{i % 10}"
        now = base + timedelta(seconds=i // 40)
        if i % 2:
            spec = {"action": "update_configmap", "parameters": {"updateConfigMap": {
                "namespace": ns, "configMap": f"cm-{i // 10}", "data": {"tick": f"dry-{i}"}}}, "dryRun": True}
            target = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"tick": f"dry-{i - 10}"},
                      "metadata": {"name": f"cm-{i // 10}", "namespace": ns, "uid": str(uuid.uuid4()),
                                   "resourceVersion": str(1000 + i), "creationTimestamp": now.isoformat()}}
        else:
            spec = {"action": "scale_deployment", "parameters": {"scaleDeployment": {
                "namespace": ns, "deployment": f"web-{i // 10}", "replicas": 2 + i % 5}}}
            target = _deployment(ns, f"web-{i // 10}", now, 3)
        _parsed, action, params = parse_spec(spec)
        ex = Execution(ns, f"exec-{i}-{uuid.uuid4().hex[:5]}", spec=spec,
                       annotations={"kubectl.kubernetes.io/last-applied-configuration": json.dumps(spec)})
        facts = {"namespace": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}, "nodes": nodes}
        active = {f"bench-burst-{j}": (i * 7 + j) % 4 for j in range(10)}
        docs.append(build_policy_input(ex, action, params, {"target": target}, facts, active, now,
                                       ["kubernaut-system"]))
    return docs


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_child(n: int, threads: int) -> None:
    """(In a fresh process, see _CHILD) RSS before and after n unique decisions; prints one JSON line."""
    compiled = CompiledPolicy(load_policy_dir(POLICIES), pool_size=threads)
    docs = controller_inputs(min(n, 500))
    next_index = iter(range(n))
    lock = threading.Lock()
    compiled.decide(docs[0])
    before = rss_mb()
    checkpoints: dict[int, float] = {}

    def work() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            doc = docs[i % len(docs)]
            # unique names and times on every decision, as in a burst
            doc = {**doc, "execution": {**doc["execution"], "name": f"exec-m{i}"},
                   "time": {**doc["time"], "now": f"2026-12-02T07:{i // 60 % 60:02d}:{i % 60:02d}Z"}}
            compiled.decide(doc)
            if i % 1000 == 999:
                checkpoints[i + 1] = round(rss_mb(), 1)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"decisions": n, "threads": threads, "rss_before_mb": round(before, 1),
                      "rss_after_mb": round(rss_mb(), 1), "checkpoints": checkpoints}))


# The child imports as the controller does (kexec.entrypoints.launch, then the
# controller with aiohttp and kubernetes-asyncio) before measuring; "libstdc++
# first" loads libstdc++ before rego-cpp, the order that leaks.
_CHILD = """
import ctypes, sys
if {wrong_order}:
    ctypes.CDLL("libstdc++.so.6")
from kexec.entrypoints.launch import prepare_controller
prepare_controller()
import kexec.entrypoints.controller
sys.path.insert(0, {bench!r})
import policy_latency
policy_latency.memory_child({n}, threads=2)
"""


def measure_memory(n: int, *, wrong_order: bool = False) -> dict[str, Any]:
    code = _CHILD.format(wrong_order=wrong_order, bench=str(ROOT / "bench"), n=n)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def find_opa(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    bin_dir = os.environ.get("KEXEC_BIN_DIR")
    if not bin_dir:
        out = subprocess.run([str(ROOT / "hack" / "build-binaries.sh")], check=True, capture_output=True, text=True)
        bin_dir = out.stdout.strip().splitlines()[-1]
    return Path(bin_dir) / "opa"


@contextlib.contextmanager
def opa_server(opa: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [str(opa), "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error"]
    proc = subprocess.Popen([*args, str(POLICIES)], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("opa server did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean": statistics.fmean(ordered),
    }


def measure_sync(fn: Callable[[dict[str, Any]], Any], docs: list[dict[str, Any]], n: int) -> dict[str, float]:
    for doc in docs[:50]:  # warm-up
        fn(doc)
    samples = []
    for i in range(n):
        doc = docs[i % len(docs)]
        start = time.perf_counter()
        fn(doc)
        samples.append((time.perf_counter() - start) * 1000)
    return summary(samples)


async def measure_async(
    fn: Callable[[dict[str, Any]], Awaitable[Any]], docs: list[dict[str, Any]], n: int
) -> dict[str, float]:
    for doc in docs[:50]:
        await fn(doc)
    samples = []
    for i in range(n):
        doc = docs[i % len(docs)]
        start = time.perf_counter()
        await fn(doc)
        samples.append((time.perf_counter() - start) * 1000)
    return summary(samples)


async def throughput(
    fn: Callable[[dict[str, Any]], Awaitable[Any]], docs: list[dict[str, Any]], n: int, concurrency: int
) -> float:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(docs[i % len(docs)])

    async def worker() -> None:
        while not queue.empty():
            await fn(queue.get_nowait())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--plain-query-decisions", type=int, default=200)
    parser.add_argument("--memory-decisions", type=int, help="unique decisions of the memory measure "
                        "(default: twice --decisions; 0: skip it)")
    parser.add_argument("--opa", help="path of the opa binary")
    parser.add_argument("--json-out", help="also write the numbers (seconds) to this JSON file")
    args = parser.parse_args()
    n = args.decisions
    docs = inputs()
    burst = controller_inputs(500)
    policy_set = load_policy_dir(POLICIES)
    rows: list[tuple[str, str, dict[str, float], str]] = []

    compiled = CompiledPolicy(policy_set, pool_size=1)
    rows.append(("embedded", "calling thread, fixtures", measure_sync(compiled.decide, docs, n), "≤ 0.5 ms"))
    rows.append(("embedded", "calling thread, controller-like", measure_sync(compiled.decide, burst, n), "≤ 0.5 ms"))

    embedded = EmbeddedPolicy(policy_set, pool_size=2)
    rows.append(
        ("embedded", "EmbeddedPolicy.decide (executor hop), fixtures", await measure_async(embedded.decide, docs, n),
         "≤ 0.5 ms")
    )

    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE
    for name, source in policy_set.modules.items():
        interpreter.add_module(name, source)
    interpreter.add_data(policy_set.data)

    def plain_query(doc: dict[str, Any]) -> Any:
        interpreter.set_input(prepare_input(doc))
        return interpreter.query("data.kexec.safety.decision")

    plain = measure_sync(plain_query, docs, args.plain_query_decisions)
    rows.append(("embedded", "plain Interpreter.query (for comparison)", plain, "-"))

    opa = find_opa(args.opa)
    with opa_server(opa) as url:
        client = OpaHttpPolicy(url)
        rows.append(("opa", "OpaHttpPolicy.decide, local server, fixtures", await measure_async(client.decide, docs, n),
                     "≤ 5 ms"))
        rows.append(("opa", "OpaHttpPolicy.decide, controller-like", await measure_async(client.decide, burst, n),
                     "≤ 5 ms"))
        opa_tput = await throughput(client.decide, docs, n, 8)
        await client.aclose()
    embedded_tput = await throughput(embedded.decide, docs, n, 8)
    embedded.close()
    memory_n = 2 * n if args.memory_decisions is None else args.memory_decisions
    memory = measure_memory(memory_n) if memory_n else None
    leaky = measure_memory(min(memory_n, 1000), wrong_order=True) if memory_n else None

    if args.json_out:
        def p99(engine: str, path: str) -> float:
            return next(s["p99"] for e, p, s, _ in rows if e == engine and p.startswith(path)) / 1000

        result: dict[str, Any] = {
            "policy_embedded_p99_s": p99("embedded", "calling thread, fixtures"),
            "policy_embedded_controller_p99_s": p99("embedded", "calling thread, controller-like"),
            "policy_embedded_decide_p99_s": p99("embedded", "EmbeddedPolicy.decide"),
            "policy_opa_p99_s": p99("opa", "OpaHttpPolicy.decide, local server"),
        }
        if memory:
            result["policy_memory_growth_mb"] = round(memory["rss_after_mb"] - memory["rss_before_mb"], 1)
        Path(args.json_out).write_text(json.dumps(result))  # noqa: ASYNC240 - measuring is over
    print(f"Policy decision latency ({n} decisions; {len(docs)} fixtures, {len(burst)} controller-like inputs; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})\n")
    print("| engine | path | n | p50 ms | p99 ms | mean ms | target p99 | met |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for engine, path, s, target in rows:
        met = "-"
        if target != "-":
            limit = float(target.split()[1])
            met = "yes" if s["p99"] <= limit else "no"
        stats = f"{s['n']:.0f} | {s['p50']:.3f} | {s['p99']:.3f} | {s['mean']:.3f}"
        print(f"| {engine} | {path} | {stats} | {target} | {met} |")
    print()
    print(f"Throughput at concurrency 8: embedded {embedded_tput:,.0f}/s (pool of 2), OPA {opa_tput:,.0f}/s")
    if memory:
        for label, m in (("controller's import order", memory), ("libstdc++ loaded first (the leak)", leaky)):
            assert m is not None
            print(f"Memory, {label}: RSS {m['rss_before_mb']} MB -> {m['rss_after_mb']} MB after {m['decisions']} "
                  f"unique controller-like decisions on {m['threads']} threads (per 1,000: {m['checkpoints']})")


if __name__ == "__main__":
    asyncio.run(main())
