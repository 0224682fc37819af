"""All 11 actions, end to end on the real control plane (issue 4).

The controller runs as its own least-privilege ServiceAccount in a subprocess;
Job pods run `kexec runner` as the per-action ServiceAccount (simulator).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.harness import GROUP_PATH, NS_CTRL, Kexec

pytestmark = pytest.mark.cluster


def deployment(ns: str, name: str, replicas: int = 1, image: str = "nginx:1",
               **extra_spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": image}],
                                           **extra_spec}}}}


def fresh_ns(kexec: Kexec, prefix: str, **labels: str) -> str:
    return kexec.namespace(f"{prefix}-{uuid.uuid4().hex[:5]}", **labels)


def ready_deployment(kexec: Kexec, ns: str, name: str, replicas: int = 1, **kw: Any) -> dict[str, Any]:
    kexec.apply(deployment(ns, name, replicas, **kw))

    def ready() -> bool:
        dep = kexec.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
        st = dep.get("status") or {}
        return st.get("readyReplicas", 0) == replicas and st.get("updatedReplicas", 0) == replicas
    kexec.until(ready, 60, f"deployment {ns}/{name} ready")
    return dict(kexec.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"))


def pdb_at_limit(kexec: Kexec, ns: str, name: str) -> None:
    """Wait until the disruption controller has computed the PDB: no disruption allowed."""
    def at_limit() -> bool:
        pdb = kexec.api("GET", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}")
        st = pdb.get("status") or {}
        return (st.get("observedGeneration") == pdb["metadata"]["generation"]
                and st.get("currentHealthy") == 1 and st.get("disruptionsAllowed") == 0)
    kexec.until(at_limit, 30, f"pdb {ns}/{name} at its limit")


def guarded_pod_on(kexec: Kexec, ns: str, name: str, node: str) -> None:
    """One pod of Deployment ``name`` pinned to ``node``, its PDB allowing no disruption."""
    ready_deployment(kexec, ns, name, 1, nodeSelector={"kubernetes.io/hostname": node})
    kexec.apply({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                 "metadata": {"name": name, "namespace": ns},
                 "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": name}}}})
    pdb_at_limit(kexec, ns, name)


def uncordon(kexec: Kexec, node: str) -> None:
    kexec.api("PATCH", f"/api/v1/nodes/{node}", {"spec": {"unschedulable": None}},
              content_type="application/merge-patch+json")


def run(kexec: Kexec, ns: str, action: str, params: dict[str, Any], wait_s: float = 90,
        **spec: Any) -> dict[str, Any]:
    """Create an execution (spec fields as keywords) and wait until it is terminal."""
    name = kexec.create(ns, action, params, **spec)
    return kexec.wait(ns, name, timeout=wait_s)


def kexec_cli(kexec: Kexec, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("kexec")), *args,
                           "--kubeconfig", str(kexec.cp.kubeconfig)],
                          capture_output=True, text=True, timeout=60)


def dep(kexec: Kexec, ns: str, name: str) -> dict[str, Any]:
    return dict(kexec.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"))


# --- success paths, one per action ------------------------------------------------------

def test_scale_deployment_and_kexec_rollback(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "scale")
    ready_deployment(kexec, ns, "web", 1)
    obj = run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 3})
    st = obj["status"]
    assert st["phase"] == "Completed", st
    assert dep(kexec, ns, "web")["status"]["readyReplicas"] == 3
    assert [t["phase"] for t in st["phaseTransitions"]] == [
        "Pending", "Validating", "Preparing", "Executing", "Verifying", "Completed"]
    assert st["validation"]["dryRun"]["success"] is True
    assert st["validation"]["policy"]["allowed"] is True
    assert st["execution"]["attempts"] == 1
    assert st["rollback"] == {"available": True, "action": "scale_deployment",
                              "parameters": {"scaleDeployment": {"namespace": ns, "deployment": "web", "replicas": 1}}}
    assert st["target"] == f"Deployment/{ns}/web"
    job = kexec.jobs_for(ns, obj["metadata"]["name"])[0]
    assert job["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "kexec-scale-deployment"
    sc = job["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    # kexec rollback NAME creates the inverse execution, which restores the replicas.
    out = kexec_cli(kexec, "rollback", obj["metadata"]["name"], "-n", ns)
    assert out.returncode == 0, out.stderr
    undo = kexec.wait(ns, f"{obj['metadata']['name']}-rollback", timeout=90)
    assert undo["status"]["phase"] == "Completed"
    assert undo["spec"]["rollbackOf"] == obj["metadata"]["name"]
    assert dep(kexec, ns, "web")["spec"]["replicas"] == 1


def test_rollout_restart(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "restart")
    ready_deployment(kexec, ns, "web", 2)
    obj = run(kexec, ns, "rollout_restart", {"namespace": ns, "deployment": "web"})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    ann = dep(kexec, ns, "web")["spec"]["template"]["metadata"]["annotations"]
    assert ann["kexec.kubernaut.io/restarted-by"] == obj["metadata"]["uid"]
    assert "kubectl.kubernetes.io/restartedAt" in ann


def test_delete_pod_is_replaced(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "delpod")
    ready_deployment(kexec, ns, "web", 1)
    pod = kexec.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app=web")["items"][0]
    name = pod["metadata"]["name"]
    obj = run(kexec, ns, "delete_pod", {"namespace": ns, "pod": name, "gracePeriodSeconds": 0})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    code, _ = kexec.try_api("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
    assert code == 404
    kexec.until(lambda: len([p for p in kexec.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app=web")["items"]
                             if p["metadata"]["name"] != name]) == 1, 30, "replacement pod")


def test_patch_deployment(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "patch")
    ready_deployment(kexec, ns, "web", 1)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}}
    obj = run(kexec, ns, "patch_deployment", {"namespace": ns, "deployment": "web",
                                                "patchType": "strategic", "patch": patch})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert dep(kexec, ns, "web")["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2"
    assert obj["status"]["rollback"]["parameters"]["patchDeployment"]["patchType"] == "json"


def test_cordon_then_uncordon(kexec: Kexec) -> None:
    node = "sim-node-3"
    obj = run(kexec, NS_CTRL, "cordon_node", {"node": node})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert kexec.api("GET", f"/api/v1/nodes/{node}")["spec"].get("unschedulable") is True
    assert obj["status"]["rollback"]["action"] == "uncordon_node"
    obj = run(kexec, NS_CTRL, "uncordon_node", {"node": node})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert not kexec.api("GET", f"/api/v1/nodes/{node}")["spec"].get("unschedulable")


def test_drain_evicts_and_a_pdb_at_its_limit_blocks_until_timeout(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "drain")
    node = "sim-node-2"
    guarded_pod_on(kexec, ns, "guarded", node)
    try:
        t0 = time.monotonic()
        blocked = run(kexec, NS_CTRL, "drain_node", {"node": node}, timeout="12s")
        assert blocked["status"]["phase"] == "Failed", blocked["status"]
        assert blocked["status"]["reason"] in ("EvictionBlocked", "DeadlineExceeded"), blocked["status"]["message"]
        assert time.monotonic() - t0 >= 6
        assert kexec.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app=guarded")["items"], \
            "the PDB must keep the pod"
        # Without the PDB the drain evicts through the Eviction API.
        kexec.api("DELETE", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/guarded")
        ok = run(kexec, NS_CTRL, "drain_node", {"node": node})
        assert ok["status"]["phase"] == "Completed", ok["status"]
        left = kexec.api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={node}")["items"]
        assert [p for p in left if p["metadata"]["namespace"] == ns] == []
        assert kexec.api("GET", f"/api/v1/nodes/{node}")["spec"].get("unschedulable") is True
    finally:
        uncordon(kexec, node)


def test_update_configmap(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "cm")
    kexec.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": ns},
                 "data": {"mode": "slow"}})
    obj = run(kexec, ns, "update_configmap", {"namespace": ns, "configMap": "cfg",
                                                "data": {"mode": "fast", "extra": "1"}})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    cm = kexec.api("GET", f"/api/v1/namespaces/{ns}/configmaps/cfg")
    assert cm["data"] == {"mode": "fast", "extra": "1"}
    assert obj["status"]["rollback"]["parameters"]["updateConfigMap"]["data"] == {"mode": "slow", "extra": None}


def test_update_secret_never_leaks_a_value(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "secret")
    old, new = "OLD-s3cr3t-value-4711", "NEW-s3cr3t-value-0815"

    def secret(name: str, value: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                "data": {"password": base64.b64encode(value.encode()).decode()}}
    kexec.apply(secret("db", old))
    kexec.apply(secret("db-rotated", new))
    obj = run(kexec, ns, "update_secret", {"namespace": ns, "secret": "db",
                                             "sourceSecretRef": {"name": "db-rotated"}})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    got = kexec.api("GET", f"/api/v1/namespaces/{ns}/secrets/db")["data"]["password"]
    assert base64.b64decode(got).decode() == new
    backup = obj["status"]["rollback"]["parameters"]["updateSecret"]["sourceSecretRef"]["name"]
    kept = kexec.api("GET", f"/api/v1/namespaces/{ns}/secrets/{backup}")
    assert base64.b64decode(kept["data"]["password"]).decode() == old
    assert kept["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    events = kexec.events_for(ns, obj["metadata"]["name"])
    job = kexec.jobs_for(ns, obj["metadata"]["name"])[0]
    everything = json.dumps([obj, events, job]) + kexec.controller_log()
    sim_log = Path(kexec.cp.log_dir or "/tmp") / "simulator.log"
    everything += sim_log.read_text(errors="replace") if sim_log.exists() else ""
    for value in (old, new, base64.b64encode(old.encode()).decode(),
                  base64.b64encode(new.encode()).decode()):
        assert value not in everything


def test_apply_manifest_creates_and_rollback_deletes(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "apply")
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": ns},
                "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    obj = run(kexec, ns, "apply_manifest", {"manifest": manifest})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    svc = kexec.api("GET", f"/api/v1/namespaces/{ns}/services/svc")
    assert svc["spec"]["ports"][0]["port"] == 80
    assert obj["status"]["rollback"]["parameters"]["applyManifest"]["delete"] is True
    assert kexec_cli(kexec, "rollback", obj["metadata"]["name"], "-n", ns).returncode == 0
    undo = kexec.wait(ns, f"{obj['metadata']['name']}-rollback")
    assert undo["status"]["phase"] == "Completed", undo["status"]
    assert kexec.try_api("GET", f"/api/v1/namespaces/{ns}/services/svc")[0] == 404


def test_rollback_deployment_restores_previous_revision(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "undo")
    ready_deployment(kexec, ns, "web", 1, image="nginx:1")
    ready_deployment(kexec, ns, "web", 1, image="nginx:2")
    kexec.until(lambda: dep(kexec, ns, "web")["metadata"]["annotations"].get(
        "deployment.kubernetes.io/revision") == "2", 30, "revision 2")
    obj = run(kexec, ns, "rollback_deployment", {"namespace": ns, "deployment": "web"})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert dep(kexec, ns, "web")["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1"
    assert obj["status"]["rollback"]["parameters"]["rollbackDeployment"]["toRevision"] == 2


# --- failure paths -------------------------------------------------------------------------

def test_missing_target_fails_without_a_job(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "missing")
    obj = run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "nope", "replicas": 2})
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Failed", "TargetNotFound")
    assert kexec.jobs_for(ns, obj["metadata"]["name"]) == []


def test_invalid_parameters_are_rejected_by_the_crd(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "invalid")
    body = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1", "kind": "KubernetesExecution",
            "metadata": {"name": "too-many"},
            "spec": {"action": "scale_deployment",
                     "parameters": {"scaleDeployment": {"namespace": ns, "deployment": "w",
                                                        "replicas": 5000}}}}
    code, err = kexec.try_api("POST", f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions", body)
    assert code == 422
    assert "replicas" in json.dumps(err)


def test_dry_run_rejected_by_admission(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "admission")
    ready_deployment(kexec, ns, "web", 1)
    policy = f"deny-latest-{ns}"
    kexec.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                 "metadata": {"name": policy},
                 "spec": {"failurePolicy": "Fail",
                          "matchConstraints": {"resourceRules": [{
                              "apiGroups": ["apps"], "apiVersions": ["v1"],
                              "operations": ["UPDATE"], "resources": ["deployments"]}]},
                          "validations": [{"expression": "object.spec.template.spec.containers.all("
                                                         "c, !c.image.endsWith(':latest'))",
                                           "message": "images must be pinned, not :latest"}]}})
    kexec.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                 "metadata": {"name": policy},
                 "spec": {"policyName": policy, "validationActions": ["Deny"],
                          "matchResources": {"namespaceSelector": {"matchLabels": {
                              "kubernetes.io/metadata.name": ns}}}}})
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:latest"}]}}}}
    try:
        deadline = time.monotonic() + 30
        while True:  # the policy takes a moment to become active
            obj = run(kexec, ns, "patch_deployment", {"namespace": ns, "deployment": "web",
                                                        "patchType": "strategic", "patch": patch})
            if obj["status"].get("reason") == "DryRunFailed" or time.monotonic() > deadline:
                break
            ready_deployment(kexec, ns, "web", 1)  # undo and try again
        assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Failed", "DryRunFailed"), obj["status"]
        assert "pinned" in obj["status"]["validation"]["dryRun"]["errors"][0]
        assert kexec.jobs_for(ns, obj["metadata"]["name"]) == []
    finally:
        kexec.kubectl("delete", "validatingadmissionpolicybinding", policy, check=False)
        kexec.kubectl("delete", "validatingadmissionpolicy", policy, check=False)


def test_rbac_isolation_between_action_identities(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "rbac")
    ready_deployment(kexec, ns, "web", 1)
    assert run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "web",
                                                "replicas": 2})["status"]["phase"] == "Completed"
    token = kexec.token_for(ns, "kexec-scale-deployment")
    pod = kexec.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app=web")["items"][0]["metadata"]["name"]
    # Zero standing privilege: once its execution ended, not even its own operation is allowed
    # (the binding existed only while the execution needed it) ...
    kexec.until(lambda: kexec.as_token(
        token, "GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web/scale") == 403, 10,
        "the per-action binding to be gone")
    # ... and other actions' operations are Forbidden by the real apiserver.
    assert kexec.as_token(token, "DELETE", f"/api/v1/namespaces/{ns}/pods/{pod}") == 403
    assert kexec.as_token(token, "PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/web",
                          {"spec": {"paused": True}}) == 403
    assert kexec.as_token(token, "GET", f"/api/v1/namespaces/{ns}/secrets") == 403
    assert kexec.as_token(token, "PATCH", "/api/v1/nodes/sim-node-1",
                          {"spec": {"unschedulable": True}}) == 403
    # ... and so is its own operation in another namespace.
    assert kexec.as_token(token, "GET", f"/apis/apps/v1/namespaces/{NS_CTRL}/deployments") == 403


def test_untrusted_namespace_cannot_act_elsewhere(kexec: Kexec) -> None:
    mine, other = fresh_ns(kexec, "tenant"), fresh_ns(kexec, "victim")
    ready_deployment(kexec, other, "web", 1)
    obj = run(kexec, mine, "scale_deployment", {"namespace": other, "deployment": "web", "replicas": 4})
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Failed", "NamespaceNotAllowed")
    assert dep(kexec, other, "web")["spec"]["replicas"] == 1
    node = run(kexec, mine, "cordon_node", {"node": "sim-node-1"})
    assert node["status"]["reason"] == "NamespaceNotAllowed"
    assert not kexec.api("GET", "/api/v1/nodes/sim-node-1")["spec"].get("unschedulable")


def test_policy_denial_names_the_rule_and_creates_no_job(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "deny")
    ready_deployment(kexec, ns, "web", 1)
    obj = run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 500})
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Failed", "PolicyDenied")
    assert "max_replicas" in obj["status"]["message"]
    assert kexec.jobs_for(ns, obj["metadata"]["name"]) == []


def test_approval_gate_and_kexec_approve(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "prod", environment="production")
    ready_deployment(kexec, ns, "web", 1)
    name = kexec.create(ns, "rollout_restart", {"namespace": ns, "deployment": "web"})
    obj = kexec.wait(ns, name, ("WaitingApproval",), timeout=30)
    assert obj["status"]["validation"]["policy"]["requiresApproval"] is True
    time.sleep(1.5)
    assert kexec.jobs_for(ns, name) == []
    out = kexec_cli(kexec, "approve", name, "-n", ns, "--as", "alice")
    assert out.returncode == 0, out.stderr
    obj = kexec.wait(ns, name, timeout=90)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    approved = next(c for c in obj["status"]["conditions"] if c["type"] == "Approved")
    assert approved["status"] == "True" and "alice" in approved["message"]


def test_dry_run_true_changes_nothing(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "dryrun")
    ready_deployment(kexec, ns, "web", 1)
    obj = run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 3},
              dryRun=True)
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Completed", "DryRunSucceeded")
    assert dep(kexec, ns, "web")["spec"]["replicas"] == 1
    assert kexec.jobs_for(ns, obj["metadata"]["name"]) == []


def test_postcondition_failure_goes_rollback_ready(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "verify")
    # Pods that can never be scheduled: the scale happens, the postcondition cannot pass.
    ready_deployment(kexec, ns, "web", 0, nodeSelector={"kubernetes.io/hostname": "no-such-node"})
    obj = run(kexec, ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 2},
              timeout="15s")
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("RollbackReady", "PostconditionFailed")
    assert obj["status"]["rollback"]["available"] is True


def test_permanent_failure_is_not_retried(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "perm")
    kexec.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": ns},
                 "data": {"a": "1"}})
    # Changed between validation and run (approval wait): the runner refuses, exit 2.
    kexec.namespace(ns, environment="production")
    name = kexec.create(ns, "update_configmap", {"namespace": ns, "configMap": "cfg",
                                                 "data": {"a": "2"}}, maxRetries=3)
    kexec.wait(ns, name, ("WaitingApproval",), timeout=30)
    kexec.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": ns},
                 "data": {"a": "someone-else"}})
    assert kexec_cli(kexec, "approve", name, "-n", ns, "--as", "alice").returncode == 0
    obj = kexec.wait(ns, name, timeout=60)
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Failed", "TargetChanged"), obj["status"]
    assert obj["status"]["execution"]["attempts"] == 1
    assert kexec.api("GET", f"/api/v1/namespaces/{ns}/configmaps/cfg")["data"] == {"a": "someone-else"}


def test_two_executions_on_one_target_run_one_after_the_other(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "serial")
    ready_deployment(kexec, ns, "web", 1)
    first = kexec.create(ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 2})
    second = kexec.create(ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 3})
    a, b = kexec.wait(ns, first), kexec.wait(ns, second)
    assert a["status"]["phase"] == b["status"]["phase"] == "Completed"
    # Never at the same time: the later Job starts only after the earlier execution finished.
    # (Created in the same second, creation order falls back to the name.)
    spans = sorted([(kexec.jobs_for(ns, x["metadata"]["name"])[0]["metadata"]["creationTimestamp"],
                     x["status"]["execution"]["completionTime"], x) for x in (a, b)],
                   key=lambda t: t[0])
    assert spans[1][0] >= spans[0][1]
    last = spans[1][2]["spec"]["parameters"]["scaleDeployment"]["replicas"]
    assert dep(kexec, ns, "web")["spec"]["replicas"] == last


def test_controller_restart_mid_execution_makes_exactly_one_job(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "restart-ctl")
    node = "sim-node-1"
    guarded_pod_on(kexec, ns, "held", node)
    try:
        name = kexec.create(NS_CTRL, "drain_node", {"node": node}, timeout="60s")
        kexec.wait(NS_CTRL, name, ("Executing", "Verifying", "Completed"), timeout=30)
        proc = kexec.procs[0]
        kexec.stop_controller(proc, kill=True)  # SIGKILL mid-execution
        kexec.procs.remove(proc)
        kexec.start_controller("e2e-1", "--no-leader-elect", http_port=0)
        kexec.api("DELETE", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/held")
        obj = kexec.wait(NS_CTRL, name, timeout=90)
        assert obj["status"]["phase"] == "Completed", obj["status"]
        assert len(kexec.jobs_for(NS_CTRL, name)) == 1
    finally:
        uncordon(kexec, node)


MISSING = {
    "scale_deployment": ({"deployment": "ghost", "replicas": 2}, "TargetNotFound"),
    "rollout_restart": ({"deployment": "ghost"}, "TargetNotFound"),
    "delete_pod": ({"pod": "ghost"}, "TargetNotFound"),
    "patch_deployment": ({"deployment": "ghost", "patchType": "merge",
                          "patch": {"spec": {"paused": True}}}, "TargetNotFound"),
    "cordon_node": ({"node": "ghost-node"}, "TargetNotFound"),
    "drain_node": ({"node": "ghost-node"}, "TargetNotFound"),
    "uncordon_node": ({"node": "ghost-node"}, "TargetNotFound"),
    "update_configmap": ({"configMap": "ghost", "data": {"a": "b"}}, "TargetNotFound"),
    "update_secret": ({"secret": "ghost", "sourceSecretRef": {"name": "ghost-src"}}, "TargetNotFound"),
    "apply_manifest": ({"manifest": {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": "ghost", "namespace": "NS"}},
                        "delete": True}, "TargetNotFound"),
    "rollback_deployment": ({"deployment": "ghost"}, "TargetNotFound"),
}


@pytest.mark.parametrize("action", sorted(MISSING))
def test_every_action_fails_cleanly_on_a_missing_target(kexec: Kexec, action: str) -> None:
    ns = fresh_ns(kexec, "ghost")
    params, reason = MISSING[action]
    node_action = action.endswith("_node")
    params = json.loads(json.dumps(params).replace('"NS"', f'"{ns}"'))
    if not node_action and action != "apply_manifest":
        params = {"namespace": ns, **params}
    where = NS_CTRL if node_action else ns
    obj = run(kexec, where, action, params)
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Failed", reason), obj["status"]
    assert obj["status"]["message"]
    assert kexec.jobs_for(where, obj["metadata"]["name"]) == []
