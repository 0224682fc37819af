"""kexec installed as users install it, on a control plane of its own.

``kubectl kustomize`` renders the base and every overlay and ``kubectl apply --dry-run=server
-k`` accepts them; ``kubectl apply -k`` of deploy/overlays/local (with the live audit DSN) runs both
controller replicas from the image (the node simulator runs their containers under bwrap,
each pod on its own loopback IP, and honours their probes); one leads, executions created
with kubectl complete, deleting the leader hands over within the lease duration + 5 s; with
the OPA sidecar component the policy is decided by the sidecar.

Uses $KEXEC_IMAGE_ROOTFS when set (hack/test.sh exports it), else runs hack/build-image.sh.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.controlplane import ControlPlane
from devstack.image_runner import Image
from devstack.install import NS_CTRL, InCluster, write_kustomization
from devstack.postgres import PostgresServer
from devstack.simulator import NodeSimulator

pytestmark = [pytest.mark.cluster, pytest.mark.image]

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = ("deploy", "deploy/base", "deploy/overlays/local", "deploy/overlays/opa-sidecar")
GROUP_PATH = "/apis/kubernetesexecution.kubernaut.io/v1alpha1"


@dataclass
class Stack:
    cp: ControlPlane
    sim: NodeSimulator
    dsn: str
    work: Path
    install: InCluster

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.install.kubectl(*args, input=input)


@pytest.fixture(scope="module")
def stack(bin_dir: Path, kexec_image_rootfs: Path, postgres_server: PostgresServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A control plane of its own (the session's runs the harness's controller), two
    simulated nodes that run the kexec image and opa, and a database of its own."""
    work = tmp_path_factory.mktemp("install")
    cp = ControlPlane(bin_dir=bin_dir, state_dir=work / "cp")
    cp.start()
    assert cp.kubeconfig is not None
    sim = NodeSimulator(cp.kubeconfig, nodes=2, log_dir=work / "logs", work_dir=work / "sim",
                        images={"kexec": kexec_image_rootfs, "opa": Image.binary(bin_dir / "opa", work / "opa-image")})
    try:
        sim.start()
        dsn = postgres_server.create_database(f"kexec_install_{uuid.uuid4().hex[:6]}")
        yield Stack(cp, sim, dsn, work, InCluster(cp))
    finally:
        sim.stop()
        cp.stop()


def test_kustomizations_render_and_pass_a_server_side_dry_run(stack: Stack) -> None:
    for path in KUSTOMIZATIONS:
        docs = [d for d in yaml.safe_load_all(stack.kubectl("kustomize", str(REPO / path))) if d]
        kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for needed in (("PodDisruptionBudget", "kexec-controller"), ("NetworkPolicy", "kexec-controller"),
                       ("ConfigMap", "safety-policies"), ("Deployment", "kexec-controller"),
                       ("CustomResourceDefinition", "kubernetesexecutions.kubernetesexecution.kubernaut.io")):
            assert needed in kinds, (path, needed)
        dep = next(d for d in docs if d["kind"] == "Deployment")
        containers = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
        assert sorted(containers) == (["controller", "opa"] if path.endswith("opa-sidecar") else ["controller"])
        env = {e["name"]: e.get("value") for e in containers["controller"]["env"]}
        assert env["KEXEC_IMAGE"] == containers["controller"]["image"]  # Jobs run the controller's image
    # Namespaced objects need their namespace to exist for a server-side dry run.
    stack.kubectl("create", "namespace", NS_CTRL)
    for path in KUSTOMIZATIONS:
        out = stack.kubectl("apply", "--dry-run=server", "-k", str(REPO / path))
        assert "deployment.apps/kexec-controller created (server dry run)" in out, out


def create_execution(stack: Stack, namespace: str, action: str, key: str, params: dict[str, Any]) -> str:
    name = f"{action.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1", "kind": "KubernetesExecution",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"action": action, "parameters": {key: params}}}))
    return name


def wait_terminal(stack: Stack, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = json.loads(stack.kubectl("get", "kexec", "-n", namespace, name, "-o", "json"))
        status = obj.get("status") or {}
        if status.get("phase") in ("Completed", "Failed", "RollbackReady"):
            return status
        time.sleep(0.3)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (stack.work / "logs" / "pods").glob("*controller*"))
    raise AssertionError(f"{namespace}/{name} not terminal after {timeout}s: {json.dumps(status)}\n{logs}")


def demo_namespace(stack: Stack) -> str:
    ns = f"demo-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", ns)
    stack.kubectl("create", "deployment", "web", "-n", ns, "--image=nginx:1.27", "--replicas=1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dep = stack.cp.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web")
        if (dep.get("status") or {}).get("readyReplicas") == 1:
            return ns
        time.sleep(0.3)
    raise AssertionError("demo deployment not ready")


def await_admission(stack: Stack) -> None:
    probe = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1", "kind": "KubernetesExecution",
             "metadata": {"name": "admission-probe"},
             "spec": {"action": "cordon_node", "parameters": {"cordonNode": {"node": "x"}}}}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            obj = stack.cp.api("POST", f"{GROUP_PATH}/namespaces/{NS_CTRL}/kubernetesexecutions?dryRun=All", probe)
        except urllib.error.HTTPError:
            obj = {}
        if "kubernetesexecution.kubernaut.io/requested-by" in ((obj.get("metadata") or {}).get("annotations") or {}):
            return
        time.sleep(0.2)
    raise AssertionError("admission policies not in force")


def test_local_overlay_runs_two_replicas_from_the_image_and_hands_over(stack: Stack) -> None:
    t0 = time.monotonic()
    stack.install.apply(write_kustomization(stack.work / "local", stack.dsn))
    pods = stack.install.wait_ready(2, timeout=150)
    print(f"\n2 controller pods Ready {time.monotonic() - t0:.1f}s after kubectl apply -k")
    names = {p["metadata"]["name"] for p in pods}
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ip.startswith("127.") for ip in ips), ips  # each pod its own IP
    for pod in pods:  # the probes went to the pod's own address; the readiness probe made it Ready
        statuses = pod["status"]["containerStatuses"]
        assert [(s["name"], s["ready"], s["started"]) for s in statuses] == [("controller", True, True)]
    leader = stack.install.wait_leader(names)
    await_admission(stack)

    ns = demo_namespace(stack)
    name = create_execution(stack, ns, "scale_deployment", "scaleDeployment",
                            {"namespace": ns, "deployment": "web", "replicas": 2})
    status = wait_terminal(stack, ns, name)
    assert (status["phase"], status.get("reason")) == ("Completed", "Succeeded"), status
    selector = f"kubernetesexecution.kubernaut.io/execution={name}"
    job_pods = stack.cp.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")
    assert job_pods["items"], "the execution ran no Job pod"
    assert job_pods["items"][0]["spec"]["containers"][0]["image"] == "localhost/kexec:dev"

    # Hand-over: delete the leader pod (graceful: it releases the Lease on SIGTERM).
    duration = stack.install.lease_duration()
    t_delete = time.monotonic()
    stack.kubectl("delete", "pod", "-n", NS_CTRL, leader, "--wait=false")
    # The other replica, or the one the ReplicaSet just made (both standbys race for the Lease).
    other = stack.install.wait_leader(timeout=duration + 5, not_=leader)
    handover = time.monotonic() - t_delete
    print(f"leader {leader} deleted; {other} holds the Lease after {handover:.2f}s (lease {duration:.0f}s)")
    assert handover <= duration + 5
    assert other in {p["metadata"]["name"] for p in stack.install.pods()}
    name = create_execution(stack, ns, "scale_deployment", "scaleDeployment",
                            {"namespace": ns, "deployment": "web", "replicas": 1})
    status = wait_terminal(stack, ns, name)
    assert (status["phase"], status.get("reason")) == ("Completed", "Succeeded"), status
    stack.install.wait_ready(2, timeout=120)  # the Deployment replaced the deleted pod


def test_opa_sidecar_decides_the_policy(stack: Stack) -> None:
    # One replica: the simulator's pods share the host network, so two sidecars cannot both
    # listen on localhost:8181 (on a cluster each pod has its own localhost).
    stack.install.apply(write_kustomization(stack.work / "opa", stack.dsn, opa_sidecar=True, replicas=1))
    (pod,) = stack.install.wait_ready(1, timeout=180, containers=2)
    pod_name = pod["metadata"]["name"]
    assert {s["name"]: s["ready"] for s in pod["status"]["containerStatuses"]} == {"controller": True, "opa": True}
    stack.install.wait_leader({pod_name})
    ns = demo_namespace(stack)
    name = create_execution(stack, ns, "scale_deployment", "scaleDeployment",
                            {"namespace": ns, "deployment": "web", "replicas": 500})
    status = wait_terminal(stack, ns, name)
    assert (status["phase"], status.get("reason")) == ("Failed", "PolicyDenied"), status
    # The decision came from the sidecar: its decision log has this execution's input and a deny.
    log = (stack.work / "logs" / "pods" / f"{NS_CTRL}_{pod_name}_opa.log").read_text(errors="replace")
    decisions = [json.loads(line) for line in log.splitlines()
                 if line.startswith("{") and '"decision_id"' in line]
    mine = [d for d in decisions if name in json.dumps(d.get("input"))]
    assert mine, f"no OPA decision for {name} in the sidecar's log:\n{log[-3000:]}"
    assert mine[-1]["result"]["allow"] is False
    assert any(v["rule"] == "max_replicas" for v in mine[-1]["result"]["violations"]), mine[-1]["result"]
    assert re.search(r'"path":\s*"kexec/safety/decision"', json.dumps(mine[-1])), mine[-1]


def test_probes_decide_readiness_and_a_failing_liveness_probe_restarts_the_container(stack: Stack) -> None:
    ns = f"probes-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", ns)
    probe = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2}
    stack.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": ns},
        "spec": {"automountServiceAccountToken": False, "containers": [{
            "name": "web", "image": "localhost/kexec:dev",
            "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8000"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "web", "containerPort": 8000}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "web"}, **probe},
            "livenessProbe": {"httpGet": {"path": "/missing", "port": 8000}, "initialDelaySeconds": 2, **probe},
        }]}}))
    deadline = time.monotonic() + 60
    seen_ready, restarts = False, 0
    while time.monotonic() < deadline and not (seen_ready and restarts >= 1):
        pod = stack.cp.api("GET", f"/api/v1/namespaces/{ns}/pods/web")
        seen_ready = seen_ready or InCluster.ready(pod)  # GET / answers 200: Ready
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        restarts = int(statuses[0].get("restartCount") or 0)  # GET /missing answers 404: restarted
        time.sleep(0.2)
    assert seen_ready and restarts >= 1, (seen_ready, restarts)
    assert statuses[0]["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM'd by the liveness probe
    stack.kubectl("delete", "namespace", ns, "--wait=false")
