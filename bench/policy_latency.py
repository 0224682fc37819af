"""Safety-policy decision latency: embedded engine (regopy) vs a local OPA server.

Every decision is the full adapter path on the repo policies (policies/): input
preparation, evaluation of ``data.kexec.safety.decision``, parsing into a
PolicyDecision. Inputs cycle through the fixtures of policies/testdata (88 varied
documents: every action, allow/deny/approval paths, malformed input).

    .venv/bin/python bench/policy_latency.py [--decisions 2000] [--opa PATH]

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
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from regopy import Interpreter, LogLevel

from kexec.adapters.policy.bundle import load_policy_dir, prepare_input
from kexec.adapters.policy.embedded import CompiledPolicy, EmbeddedPolicy
from kexec.adapters.policy.opa_http import OpaHttpPolicy

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
    parser.add_argument("--opa", help="path of the opa binary")
    parser.add_argument("--json-out", help="also write the numbers (seconds) to this JSON file")
    args = parser.parse_args()
    n = args.decisions
    docs = inputs()
    policy_set = load_policy_dir(POLICIES)
    rows: list[tuple[str, str, dict[str, float], str]] = []

    compiled = CompiledPolicy(policy_set, pool_size=1)
    rows.append(
        ("embedded", "bundle: build + query_bundle, calling thread", measure_sync(compiled.decide, docs, n), "≤ 0.5 ms")
    )

    embedded = EmbeddedPolicy(policy_set, pool_size=2)
    rows.append(
        ("embedded", "EmbeddedPolicy.decide (executor hop)", await measure_async(embedded.decide, docs, n), "≤ 0.5 ms")
    )

    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE
    for name, source in policy_set.modules.items():
        interpreter.add_module(name, source)
    interpreter.add_data(policy_set.data)

    def plain_query(doc: dict[str, Any]) -> Any:
        interpreter.set_input(prepare_input(doc))
        return interpreter.query("data.kexec.safety.decision")

    rows.append(
        (
            "embedded",
            "plain Interpreter.query (for comparison)",
            measure_sync(plain_query, docs, args.plain_query_decisions),
            "-",
        )
    )

    opa = find_opa(args.opa)
    with opa_server(opa) as url:
        client = OpaHttpPolicy(url)
        rows.append(
            ("opa", "OpaHttpPolicy.decide, local server", await measure_async(client.decide, docs, n), "≤ 5 ms")
        )
        opa_tput = await throughput(client.decide, docs, n, 8)
        await client.aclose()
    embedded_tput = await throughput(embedded.decide, docs, n, 8)
    embedded.close()

    if args.json_out:
        p99 = {engine + ("_direct" if "calling thread" in path else ""): s["p99"] / 1000
               for engine, path, s, _ in rows if "plain" not in path}
        Path(args.json_out).write_text(json.dumps({  # noqa: ASYNC240 - measuring is over
            "policy_embedded_p99_s": p99["embedded_direct"], "policy_embedded_decide_p99_s": p99["embedded"],
            "policy_opa_p99_s": p99["opa"]}))
    print(f"Policy decision latency ({n} decisions, {len(docs)} distinct inputs, {os.cpu_count()} CPUs)\n")
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


if __name__ == "__main__":
    asyncio.run(main())
