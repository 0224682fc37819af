"""The local dev stack behind hack/run-local.sh: kexec on a real local control plane.

Brings up the control plane, the node simulator (3 nodes), PostgreSQL and the controller
(its own ServiceAccount, trusted namespace kubernaut-system), writes the admin kubeconfig
to STATE_DIR/kubeconfig (the control plane's run dirs go there too), runs the example
executions unless --no-examples, prints a line ``ready`` and runs until Ctrl-C or SIGTERM;
then it tears everything down and exits 0. --once: exit after the examples.
--in-cluster: the controller is installed from the image ($KEXEC_IMAGE_ROOTFS, built by
hack/build-image.sh) by ``kubectl apply -k deploy/overlays/local`` (devstack/install.py): two
replicas run by the node simulator from the image, instead of a local process.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from devstack.controlplane import ControlPlane
from devstack.harness import NS_CTRL, Kexec
from devstack.image_runner import Image, images_from_env
from devstack.install import InCluster, write_kustomization
from devstack.postgres import PostgresServer
from devstack.simulator import NodeSimulator

ROOT = Path(__file__).resolve().parents[1]
DEMO = "demo"


def seed(k: Kexec) -> None:
    k.namespace(DEMO)
    k.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": DEMO},
             "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                      "template": {"metadata": {"labels": {"app": "web"}},
                                   "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})
    k.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": DEMO},
             "data": {"LOG_LEVEL": "info"}})
    for name, value in (("db-credentials", "old-password"), ("db-credentials-next", "new-password")):
        k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": DEMO},
                 "data": {"password": base64.b64encode(value.encode()).decode()}})
    k.until(lambda: (k.api("GET", f"/apis/apps/v1/namespaces/{DEMO}/deployments/web").get("status") or {})
            .get("readyReplicas") == 2, 60, "demo deployment ready")


def examples(k: Kexec) -> list[tuple[str, str]]:
    """(namespace, name) of each example, run one after the other like an orchestrator would."""
    def a_web_pod() -> dict[str, Any]:  # picked when its step runs: earlier steps replace pods
        pods = k.api("GET", f"/api/v1/namespaces/{DEMO}/pods?labelSelector=app=web")["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return {"namespace": DEMO, "pod": live[0]["metadata"]["name"]}

    steps: list[tuple[str, str, Any, dict[str, Any]]] = [
        (DEMO, "scale_deployment", {"namespace": DEMO, "deployment": "web", "replicas": 4}, {}),
        (DEMO, "update_configmap", {"namespace": DEMO, "configMap": "web-config", "data": {"LOG_LEVEL": "debug"}}, {}),
        (DEMO, "update_secret", {"namespace": DEMO, "secret": "db-credentials",
                                 "sourceSecretRef": {"name": "db-credentials-next"}}, {}),
        (DEMO, "patch_deployment", {"namespace": DEMO, "deployment": "web", "patchType": "strategic",
                                    "patch": {"spec": {"template": {"spec": {"containers": [
                                        {"name": "web", "image": "nginx:1.28"}]}}}}}, {}),
        (DEMO, "rollback_deployment", {"namespace": DEMO, "deployment": "web"}, {}),
        (DEMO, "rollout_restart", {"namespace": DEMO, "deployment": "web"}, {}),
        (DEMO, "delete_pod", a_web_pod, {}),
        (DEMO, "apply_manifest", {"manifest": {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                               "metadata": {"name": "web", "namespace": DEMO},
                                               "spec": {"maxUnavailable": 1,
                                                        "selector": {"matchLabels": {"app": "web"}}}}}, {}),
        (NS_CTRL, "cordon_node", {"node": "sim-node-3"}, {}),
        (NS_CTRL, "uncordon_node", {"node": "sim-node-3"}, {}),
        (NS_CTRL, "drain_node", {"node": "sim-node-3"}, {}),
        (NS_CTRL, "uncordon_node", {"node": "sim-node-3"}, {}),
        (DEMO, "scale_deployment", {"namespace": DEMO, "deployment": "web", "replicas": 500}, {}),  # denied
        (DEMO, "scale_deployment", {"namespace": DEMO, "deployment": "web", "replicas": 1},
         {"dryRun": True}),
    ]
    done = []
    for ns, action, params, spec in steps:
        name = k.create(ns, action, params() if callable(params) else params, **spec)
        obj = k.wait(ns, name, timeout=120)
        st = obj["status"]
        print(f"  {ns + '/' + name:44} {st['phase']:10} {st.get('reason', '')}", flush=True)
        done.append((ns, name))
    return done


class Stop(Exception):
    """Ctrl-C or SIGTERM: tear the stack down and exit 0."""


def _stop(signum: int, _frame: FrameType | None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # teardown runs once, uninterrupted
        signal.signal(sig, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="exit after the examples")
    parser.add_argument("--no-examples", action="store_true", help="bring the stack up without running the examples")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".kexec",
                        help="kubeconfig and control-plane run dirs (default: .kexec/ in the repo)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--in-cluster", action="store_true",
                        help="install the controller from the image with kubectl apply -k deploy/overlays/local")
    args = parser.parse_args()
    images: dict[str, str | Path | Image] = {}
    if args.in_cluster:
        images.update(images_from_env())
        if not images:
            parser.error("--in-cluster needs $KEXEC_IMAGE_ROOTFS (hack/run-local.sh builds the image)")
    # Before anything starts, so the devstack's own SIGTERM cleanup hook stays out of the way.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    t0 = time.monotonic()
    state_dir: Path = args.state_dir.resolve()
    kubeconfig = state_dir / "kubeconfig"
    k: Kexec | None = None
    sim: NodeSimulator | None = None
    try:
        with ControlPlane(state_dir=state_dir) as cp, PostgresServer() as pg:
            assert cp.kubeconfig is not None
            if args.in_cluster and cp.bin_dir is not None:
                images["opa"] = Image.binary(cp.bin_dir / "opa", state_dir / "opa-image")
            sim = NodeSimulator(cp.kubeconfig, nodes=args.nodes, log_dir=cp.log_dir, images=images)
            sim.start()
            try:
                k = Kexec(cp, pg.dsn)
                if args.in_cluster:
                    installed = InCluster(cp)
                    print(installed.apply(write_kustomization(state_dir / "kustomize", pg.dsn)), end="")
                    pods = installed.wait_ready(2, timeout=180)
                    leader = installed.wait_leader({p["metadata"]["name"] for p in pods})
                    k.await_admission()
                    shown = ", ".join(f"{p['metadata']['name']} ({p['status']['podIP']})" for p in pods)
                    print(f"controller pods {shown} Ready from the image; leader {leader}; logs: {cp.log_dir}/pods/")
                else:
                    k.install()
                    k.start_controller("local", "--no-leader-elect")
                kubeconfig.unlink(missing_ok=True)
                shutil.copyfile(cp.kubeconfig, kubeconfig)
                kubeconfig.chmod(0o600)
                print(f"control plane, simulator, PostgreSQL and controller up in {time.monotonic() - t0:.1f}s")
                print(f"  kubeconfig: {kubeconfig}\n  logs:       {cp.log_dir}\n  audit DSN:  {pg.dsn}")
                if not args.in_cluster:
                    print(f"  metrics:    http://127.0.0.1:{k.http_port}/metrics (bearer token required)")
                print()
                if not args.no_examples:
                    seed(k)
                    print("examples (kubectl get kexec -A shows them too):")
                    examples(k)
                    print("\n" + k.kubectl("get", "kexec", "-A").stdout)
                    print(f"audit trail:  .venv/bin/kexec audit --dsn '{pg.dsn}'")
                    print(f"try:          {cp.bin_dir}/kubectl --kubeconfig {kubeconfig} get kexec -A -o wide")
                if args.once:
                    return 0
                print("\ncontroller running; create KubernetesExecutions (see deploy/examples). "
                      "Ctrl-C or SIGTERM stops.")
                print("ready", flush=True)
                while all(p.poll() is None for p in k.procs):
                    time.sleep(1)
                print(json.dumps({"controller": "exited", "log": str(k.log_dir)}), flush=True)
                return 1
            finally:
                if k is not None:
                    k.stop()
                sim.stop()
                kubeconfig.unlink(missing_ok=True)  # the cluster it points at is gone
    except Stop as stop:
        print(f"{stop}: stack stopped", file=sys.stderr, flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
