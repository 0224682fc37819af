"""What one Job pod's process costs (DESIGN.md §4: ≤ 0.15 s CPU, ≤ 40 MB peak RSS).

    .venv/bin/python bench/runner_cost.py [--repeat 5] [--runner "kexec runner"] [--json]

Starts the local control plane, makes a Deployment, a ConfigMap and a Node, and runs the
runner exactly as the simulator runs a Job pod (the action's ServiceAccount and
per-action ClusterRole, a TokenRequest kubeconfig, the controller's ``KEXEC_*`` orders)
for scale_deployment, patch_deployment, cordon_node and update_configmap. Each run makes
a real change (the value alternates). CPU (user + system) and peak RSS (``ru_maxrss``)
are the child's own, from ``os.wait4`` in a tiny parent (``python -S``, ≈ 9 MB): Linux
carries the forking parent's RSS high-water mark into the child's ``ru_maxrss`` across
exec, so forking from this (≈ 40 MB) process would report its size instead of the
runner's. Prints a markdown table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.controlplane import ControlPlane, get_bin_dir
from kexec.domain.actions import ACTIONS
from kexec.domain.naming import cluster_role_for, service_account_for
from kexec.domain.spec import spec_hash

ROOT = Path(__file__).resolve().parents[1]
NS = "bench-runner"
NODE = "bench-node"
ACTIONS_MEASURED = ("scale_deployment", "patch_deployment", "cordon_node", "update_configmap")


# fork + exec + wait4 from a process that has loaded (almost) nothing: argv = [out, cmd...]
SHIM = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write("%d %f %d" % (os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime, ru.ru_maxrss))
"""


def parameters(action: str, i: int) -> dict[str, Any]:
    """The i-th run's parameters: each run changes something."""
    if action == "scale_deployment":
        return {"namespace": NS, "deployment": "web", "replicas": 1 + i % 2}
    if action == "patch_deployment":
        return {"namespace": NS, "deployment": "web", "patchType": "merge",
                "patch": {"metadata": {"annotations": {"bench/run": str(i)}}}}
    if action == "cordon_node":
        return {"node": NODE}
    return {"namespace": NS, "configMap": "cfg", "data": {"key": f"value-{i}"}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, cp: ControlPlane, work: Path) -> None:
        self.cp = cp
        self.work = work
        assert cp.ca_file is not None
        self.ca_data = base64.b64encode(cp.ca_file.read_bytes()).decode()

    def apply(self, obj: dict[str, Any]) -> None:
        self.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(obj))

    def setup(self) -> None:
        self.cp.kubectl("apply", "--server-side", "-f", str(ROOT / "deploy/base/rbac/actions.yaml"))
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        self.apply({"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": NODE, "labels": {"kubernetes.io/hostname": NODE}}})
        self.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": NS},
                    "data": {"key": "start"}})
        self.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": NS},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                             "template": {"metadata": {"labels": {"app": "web"}},
                                          "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})

    def kubeconfig(self, action: str) -> Path:
        """The action's ServiceAccount, bound to its ClusterRole, as a pod's kubeconfig."""
        sa = service_account_for(action)
        self.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": NS}})
        subject = [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]
        role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role_for(action)}
        if ACTIONS[action].target_kind == "Node":
            self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                        "metadata": {"name": f"bench-{sa}"}, "roleRef": role, "subjects": subject})
        else:
            self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": {"name": sa, "namespace": NS}, "roleRef": role, "subjects": subject})
        token = self.cp.api("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{sa}/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"expirationSeconds": 3600}})["status"]["token"]
        path = self.work / f"{action}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.cp.server,
                                                       "certificate-authority-data": self.ca_data}}],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "user": "pod", "namespace": NS}}],
            "current-context": "pod",
        }))
        return path

    def env(self, action: str, i: int, kubeconfig: Path) -> dict[str, str]:
        spec = {"action": action, "parameters": {ACTIONS[action].key: parameters(action, i)}}
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH", "MALLOC_ARENA_MAX")}
        env.update({
            "HOME": str(self.work),
            "KUBECONFIG": str(kubeconfig),
            "KEXEC_TERMINATION_LOG": str(self.work / "termination-log"),
            "KEXEC_SPEC": json.dumps(spec, sort_keys=True, separators=(",", ":")),
            "KEXEC_SPEC_HASH": spec_hash(spec),
            "KEXEC_EXECUTION_NAME": f"bench-{i}",
            "KEXEC_EXECUTION_NAMESPACE": NS,
            "KEXEC_EXECUTION_UID": f"00000000-0000-0000-0000-{i:012d}",
            "KEXEC_GUARD": "{}",
            "KEXEC_DEADLINE_SECONDS": "60",
            "KEXEC_STARTED_AT": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        return env

    def run_once(self, argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
        """(CPU s, peak RSS MB, wall s) of one runner process; fails loudly unless it succeeded."""
        usage = self.work / "usage"
        usage.write_text("")
        (self.work / "termination-log").write_text("")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-S", "-c", SHIM, str(usage), *argv], env=env, cwd=self.work,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        wall = time.monotonic() - t0
        code, cpu, maxrss_kb = usage.read_text().split() or ("-1", "0", "0")
        report = json.loads((self.work / "termination-log").read_text() or "{}")
        if proc.returncode or code != "0" or not report.get("success"):
            raise AssertionError(f"{shlex.join(argv)} exited {code}: {proc.stdout.decode(errors='replace')}")
        return float(cpu), int(maxrss_kb) / 1024, wall


def measure(argv: list[str], repeat: int, bench: Bench) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for action in ACTIONS_MEASURED:
        kubeconfig = bench.kubeconfig(action)
        cpu, rss, wall = [], [], []
        for i in range(repeat):
            if action == "cordon_node":  # uncordon between runs (not measured)
                bench.cp.api("PATCH", f"/api/v1/nodes/{NODE}", {"spec": {"unschedulable": False}},
                             content_type="application/merge-patch+json")
            c, r, w = bench.run_once(argv, bench.env(action, i, kubeconfig))
            cpu.append(c)
            rss.append(r)
            wall.append(w)
        results[action] = {"cpu_s_median": percentile(cpu, 0.5), "cpu_s_max": max(cpu),
                           "rss_mb_median": percentile(rss, 0.5), "rss_mb_max": max(rss),
                           "wall_s_median": percentile(wall, 0.5), "runs": repeat}
    return results


def summary(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The numbers bench/results/latest.json carries: the worst action's medians."""
    return {"runner_cpu_s": round(max(r["cpu_s_median"] for r in results.values()), 3),
            "runner_rss_mb": round(max(r["rss_mb_max"] for r in results.values()), 1)}


def table(argv: list[str], results: dict[str, dict[str, float]]) -> str:
    lines = [f"runner: `{shlex.join(argv)}` (goal: ≤ 0.15 s CPU, ≤ 40 MB peak RSS)", "",
             "| action | CPU median / max (s) | peak RSS median / max (MB) | wall median (s) |",
             "|---|---|---|---|"]
    for action, r in results.items():
        lines.append(f"| {action} | {r['cpu_s_median']:.3f} / {r['cpu_s_max']:.3f} | "
                     f"{r['rss_mb_median']:.1f} / {r['rss_mb_max']:.1f} | {r['wall_s_median']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="runs per action")
    ap.add_argument("--runner", action="append",
                    help="a runner command line to measure (repeatable; default: this venv's `kexec runner`)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    runners = [shlex.split(r) for r in args.runner or [f"{Path(sys.executable).with_name('kexec')} runner"]]
    with ControlPlane(bin_dir=get_bin_dir()) as cp, tempfile.TemporaryDirectory(prefix="kexec-runner-bench-") as tmp:
        bench = Bench(cp, Path(tmp))
        bench.setup()
        measured = [(argv, measure(argv, args.repeat, bench)) for argv in runners]
    if args.json:
        docs = [{"runner": argv, "actions": results, **summary(results)} for argv, results in measured]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    else:
        for argv, results in measured:
            print(table(argv, results))
            print()
            print(json.dumps(summary(results)))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
