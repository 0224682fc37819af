"""Merge one bench/run.sh run into bench/results/latest.json and a dated markdown table.

    .venv/bin/python bench/summarize.py RUN_DIR [--quick]

RUN_DIR holds controller.json (controller_bench.py --json-out), runner.json
(runner_cost.py --json) and policy.json (policy_latency.py --json-out). Numbers are
seconds and MB; each goal of DESIGN.md §4 is printed beside its measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# key: (DESIGN.md §4 measure, goal, comparison) — "<=" goals are upper bounds.
GOALS: dict[str, tuple[str, float | None]] = {
    "to_job_p95_s": ("execution created → Job created, p95", 0.05),
    "to_done_p95_s": ("execution created → Completed, one at a time, p95", 0.6),
    "validation_p95_s": ("validation incl. policy + dry run, p95 (histogram bucket bound)", 0.03),
    "policy_embedded_p99_s": ("policy decision embedded, p99", 0.0005),
    "policy_opa_p99_s": ("policy decision OPA, p99", 0.005),
    "burst_real_done_s": ("executions at once with real Jobs → all Completed (s)", 90.0),
    "burst_dry_done_s": ("dryRun executions at once → all terminal (s)", 15.0),
    "controller_cpu_per_execution_s": ("controller CPU per execution (whole run)", 0.01),
    "runner_cpu_s": ("Job pod (runner) CPU per action", 0.15),
    "runner_rss_mb": ("Job pod (runner) peak RSS (MB)", 40.0),
    "controller_rss_peak_mb": ("controller peak RSS (MB)", 150.0),
    "writes_per_execution": ("API writes per execution incl. Events (real burst)", 10.0),
    "gets_per_execution": ("API GETs per execution (real burst)", 3.0),
    "reconciles_per_execution": ("reconciles per execution (real burst)", 8.0),
    "baseline_ratio_latency": ("kexec / baseline latency, p95 (created → Completed vs dry run + patch)", None),
    "baseline_ratio_requests": ("kexec / baseline API requests per change", None),
}


def version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def merge(run: Path) -> dict[str, Any]:
    ctl = json.loads((run / "controller.json").read_text())
    runner = json.loads((run / "runner.json").read_text())
    policy = json.loads((run / "policy.json").read_text())
    lat, dry, real, base = ctl["latency"], ctl.get("dry_run_burst") or {}, ctl.get("burst") or {}, ctl["baseline"]
    n_all = lat["n"] + dry.get("n", 0) + real.get("n", 0)
    per = real.get("api_per_execution") or {}
    return {
        "to_job_p95_s": lat["to_job_p95"],
        "to_done_p95_s": lat["to_done_p95"],
        "validation_p95_s": ctl["validation_p95"],
        "policy_embedded_p99_s": policy["policy_embedded_p99_s"],
        "policy_opa_p99_s": policy["policy_opa_p99_s"],
        "burst_real_n": real.get("n", 0),
        "burst_real_done_s": real.get("all_done_s"),
        "burst_real_completed": real.get("completed"),
        "burst_dry_n": dry.get("n", 0),
        "burst_dry_done_s": dry.get("all_done_s"),
        "controller_cpu_per_execution_s": ctl["controller_cpu_s"] / n_all if n_all else None,
        "runner_cpu_s": runner["runner_cpu_s"],
        "runner_rss_mb": runner["runner_rss_mb"],
        "controller_rss_peak_mb": ctl["rss_peak_mb"],
        "controller_rss_idle_mb": ctl["rss_idle"].get("VmRSS_mb"),
        "writes_per_execution": real.get("writes_per_execution"),
        "gets_per_execution": real.get("gets_per_execution"),
        "reconciles_per_execution": real.get("reconciles_per_execution"),
        "baseline_p95_s": base["p95"],
        "baseline_ratio_latency": lat["to_done_p95"] / base["p95"],
        "baseline_ratio_requests": (sum(per.values()) / base["requests_per_change"]) if per else None,
    }


def table(result: dict[str, Any], quick: bool) -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [f"# kexec bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{' (--quick)' if quick else ''}",
             "",
             f"Machine: {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}; "
             f"{version([str(ROOT / '.venv/bin/python'), '-c', 'import regopy; print(regopy.__version__)'])} regopy; "
             f"kube-apiserver {version([os.environ.get('KEXEC_BIN_DIR', '') + '/kube-apiserver', '--version'])}; "
             f"commit {version(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'])}",
             f"Bursts: {result['burst_real_n']} real, {result['burst_dry_n']} dryRun.", "",
             "| measure | kexec goal | measured | met |", "|---|---|---|---|"]
    for key, (what, goal) in GOALS.items():
        value = result.get(key)
        shown = "—" if value is None else f"{value:.4g}"
        met = "—" if goal is None or value is None else ("yes" if value <= goal else "**no**")
        lines.append(f"| {what} (`{key}`) | {'—' if goal is None else f'≤ {goal:g}'} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="where latest[-quick].json and the dated table go")
    args = ap.parse_args()
    result = merge(Path(args.run_dir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # --quick never replaces the full run's latest.json
    (out / f"latest{'-quick' if args.quick else ''}.json").write_text(
        json.dumps(result, indent=1, sort_keys=True) + "\n")
    text = table(result, args.quick)
    (out / f"{time.strftime('%Y-%m-%d', time.gmtime())}{'-quick' if args.quick else ''}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
