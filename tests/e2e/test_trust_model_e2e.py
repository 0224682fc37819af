"""Attacks on kexec's trust model, on the real control plane (DESIGN.md "trust model").

Every attacker is a real user with only their own RBAC: requests are made with
the admin's credential *impersonating* them, so the API server authorizes each
one as that user, never as the admin. Each test asserts the cluster afterwards.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from devstack.harness import APPROVER, GROUP_PATH, NS_CTRL, Kexec
from tests.e2e.test_actions_e2e import dep, fresh_ns, kexec_cli, ready_deployment

pytestmark = pytest.mark.cluster

RBAC = "rbac.authorization.k8s.io"
RESTART_AT = "kubectl.kubernetes.io/restartedAt"


def as_user(kexec: Kexec, user: str, method: str, path: str, body: Any = None,
            content_type: str = "application/json") -> tuple[int, Any]:
    """One request authorized as ``user`` (impersonation), answering (HTTP code, body)."""
    ctx = ssl.create_default_context(cafile=str(kexec.cp.ca_file))
    ctx.load_cert_chain(str(kexec.cp.admin_cert_file), str(kexec.cp.admin_key_file))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(str(kexec.cp.server) + path, data=data, method=method)
    req.add_header("Impersonate-User", user)
    req.add_header("Impersonate-Group", "system:authenticated")
    req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return int(exc.code), json.loads(raw)
        except ValueError:
            return int(exc.code), raw.decode(errors="replace")


def grant(kexec: Kexec, ns: str, user: str, role: str, *, cluster_role: bool = True) -> None:
    kexec.apply({"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
                 "metadata": {"name": f"{user}-{role}", "namespace": ns},
                 "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole" if cluster_role else "Role",
                             "name": role},
                 "subjects": [{"apiGroup": RBAC, "kind": "User", "name": user}]})


def deployments_role(kexec: Kexec, ns: str, name: str, verbs: list[str],
                     resources: tuple[str, ...] = ("deployments", "deployments/scale")) -> None:
    kexec.apply({"apiVersion": f"{RBAC}/v1", "kind": "Role",
                 "metadata": {"name": name, "namespace": ns},
                 "rules": [{"apiGroups": ["apps"], "resources": list(resources), "verbs": verbs}]})


def create_as(kexec: Kexec, user: str, ns: str, action: str, params: dict[str, Any],
              **spec: Any) -> str:
    from kexec.domain.actions import ACTIONS

    name = f"{action.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1",
            "kind": "KubernetesExecution", "metadata": {"name": name},
            "spec": {"action": action, "parameters": {ACTIONS[action].key: params}, **spec}}
    code, answer = as_user(kexec, user, "POST", f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions",
                           body)
    assert code == 201, answer
    return name


def patch_as(kexec: Kexec, user: str, ns: str, name: str, patch: dict[str, Any]) -> tuple[int, Any]:
    return as_user(kexec, user, "PATCH", f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions/{name}",
                   patch, "application/merge-patch+json")


def can(kexec: Kexec, user: str, verb: str, resource: str, ns: str = "", group: str = "",
        subresource: str = "") -> bool:
    attrs = {"verb": verb, "resource": resource, "group": group}
    if ns:
        attrs["namespace"] = ns
    if subresource:
        attrs["subresource"] = subresource
    groups = ["system:serviceaccounts", "system:authenticated"]
    if user.startswith("system:serviceaccount:"):
        groups.append("system:serviceaccounts:" + user.split(":")[2])
    review = kexec.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                       {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                        "spec": {"user": user, "groups": groups, "resourceAttributes": attrs}})
    return bool(review["status"].get("allowed"))


def eventually_not(check: Any, seconds: float = 10) -> bool:
    """True once ``check()`` is false (RBAC changes reach the authorizer in a moment)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return True
        time.sleep(0.2)
    return False


def kexec_bindings(kexec: Kexec, ns: str) -> list[str]:
    items = kexec.api("GET", f"/apis/{RBAC}/v1/namespaces/{ns}/rolebindings"
                             "?labelSelector=app.kubernetes.io/managed-by=kexec")["items"]
    return [b["metadata"]["name"] for b in items]


def team(kexec: Kexec, prefix: str, user: str, **labels: str) -> str:
    """A namespace where ``user`` may create and edit executions (kexec-edit) and restart
    Deployments themselves, with a ready Deployment web."""
    ns = fresh_ns(kexec, prefix, **labels)
    grant(kexec, ns, user, "kexec-edit")
    deployments_role(kexec, ns, "restart", ["get", "list", "patch"], ("deployments",))
    grant(kexec, ns, user, "restart", cluster_role=False)
    ready_deployment(kexec, ns, "web", 1)
    return ns


def test_edit_after_validation_cannot_redirect_or_self_approve(kexec: Kexec) -> None:
    """The attack of the issue: validated for team/web, edited to victim/db, self-approved."""
    victim = fresh_ns(kexec, "victim")
    ready_deployment(kexec, victim, "db", 1)
    before = dep(kexec, victim, "db")
    ns = team(kexec, "team", "mallory", environment="production")
    name = create_as(kexec, "mallory", ns, "rollout_restart", {"namespace": ns, "deployment": "web"})
    kexec.wait(ns, name, ("WaitingApproval",), timeout=30)

    code, answer = patch_as(kexec, "mallory", ns, name, {"spec": {"parameters": {"rolloutRestart": {
        "namespace": victim, "deployment": "db"}}}})
    assert code == 422 and "immutable" in json.dumps(answer), answer
    code, answer = patch_as(kexec, "mallory", ns, name, {"spec": {"approvalReceived": True,
                                                                  "approvedBy": "mallory"}})
    assert code == 403 and "may not approve" in json.dumps(answer), answer
    code, answer = patch_as(kexec, "mallory", ns, name, {"metadata": {"annotations": {
        "kubernetesexecution.kubernaut.io/requested-by": "someone-else"}}})
    assert code == 403, answer

    time.sleep(2)
    obj = kexec.get(ns, name)
    assert obj["status"]["phase"] == "WaitingApproval"
    assert obj["spec"]["parameters"]["rolloutRestart"]["namespace"] == ns
    assert kexec.jobs_for(ns, name) == []
    after = dep(kexec, victim, "db")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert RESTART_AT not in (after["spec"]["template"]["metadata"].get("annotations") or {})
    assert kexec_bindings(kexec, victim) == []
    assert not can(kexec, f"system:serviceaccount:{ns}:kexec-rollout-restart", "patch",
                   "deployments", victim, "apps")
    # Nor does a binding for the execution's own namespace stand while it only waits.
    assert eventually_not(lambda: bool(kexec_bindings(kexec, ns)))


def test_forged_requester_is_overwritten_by_admission(kexec: Kexec) -> None:
    ns = team(kexec, "forge", "mallory")
    body = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1",
            "kind": "KubernetesExecution",
            "metadata": {"name": "forged", "annotations": {
                "kubernetesexecution.kubernaut.io/requested-by": "system:admin"}},
            "spec": {"action": "rollout_restart", "dryRun": True,
                     "parameters": {"rolloutRestart": {"namespace": ns, "deployment": "web"}}}}
    code, answer = as_user(kexec, "mallory", "POST",
                           f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions", body)
    assert code == 201, answer
    obj = kexec.wait(ns, "forged", timeout=30)
    assert obj["metadata"]["annotations"]["kubernetesexecution.kubernaut.io/requested-by"] == "mallory"
    assert obj["status"]["requestedBy"] == "mallory"


def test_approval_at_creation_does_not_count_and_a_second_person_approves(kexec: Kexec) -> None:
    ns = team(kexec, "precreated", "mallory", environment="production")
    name = create_as(kexec, "mallory", ns, "rollout_restart", {"namespace": ns, "deployment": "web"},
                     approvalReceived=True, approvedBy=APPROVER)
    kexec.wait(ns, name, ("WaitingApproval",), timeout=30)
    time.sleep(2)
    obj = kexec.get(ns, name)
    assert obj["status"]["phase"] == "WaitingApproval"
    assert kexec.jobs_for(ns, name) == []
    assert RESTART_AT not in (dep(kexec, ns, "web")["spec"]["template"]["metadata"].get(
        "annotations") or {})

    out = kexec_cli(kexec, "approve", name, "-n", ns, "--as", APPROVER)
    assert out.returncode == 0, out.stderr
    obj = kexec.wait(ns, name, timeout=90)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["approval"]["by"] == APPROVER
    assert obj["status"]["requestedBy"] == "mallory"
    assert RESTART_AT in dep(kexec, ns, "web")["spec"]["template"]["metadata"]["annotations"]


def test_requester_cannot_approve_their_own_execution(kexec: Kexec) -> None:
    ns = team(kexec, "selfapprove", "mallory", environment="production")
    grant(kexec, ns, "mallory", "kexec-approver")  # may approve others' executions here
    name = create_as(kexec, "mallory", ns, "rollout_restart", {"namespace": ns, "deployment": "web"})
    kexec.wait(ns, name, ("WaitingApproval",), timeout=30)
    code, answer = patch_as(kexec, "mallory", ns, name, {"spec": {"approvalReceived": True,
                                                                  "approvedBy": "mallory"}})
    assert code == 200, answer  # admission lets an approver record it ...

    def refused() -> bool:
        cond = next((c for c in kexec.get(ns, name)["status"].get("conditions", [])
                     if c["type"] == "Approved"), {})
        return cond.get("reason") == "ApprovalNotValid"
    kexec.until(refused, 20, "the self-approval to be refused")
    time.sleep(1)  # ... but the controller does not count it
    assert kexec.get(ns, name)["status"]["phase"] == "WaitingApproval"
    assert kexec.jobs_for(ns, name) == []
    assert RESTART_AT not in (dep(kexec, ns, "web")["spec"]["template"]["metadata"].get(
        "annotations") or {})


def test_user_without_approve_verb_cannot_approve(kexec: Kexec) -> None:
    ns = team(kexec, "noapprove", "mallory", environment="production")
    grant(kexec, ns, "bob", "kexec-edit")  # may edit executions, may not approve
    name = create_as(kexec, "mallory", ns, "rollout_restart", {"namespace": ns, "deployment": "web"})
    kexec.wait(ns, name, ("WaitingApproval",), timeout=30)
    code, answer = patch_as(kexec, "bob", ns, name, {"spec": {"approvalReceived": True,
                                                              "approvedBy": "bob"}})
    assert code == 403 and "bob may not approve" in json.dumps(answer), answer
    out = kexec_cli(kexec, "approve", name, "-n", ns, "--as", "bob")
    assert out.returncode != 0 and "may not approve" in out.stderr
    time.sleep(1.5)
    assert kexec.get(ns, name)["status"]["phase"] == "WaitingApproval"
    assert kexec.jobs_for(ns, name) == []


def test_requester_without_the_permission_cannot_borrow_kexec(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "borrow")
    ready_deployment(kexec, ns, "web", 1)
    grant(kexec, ns, "carol", "kexec-edit")  # may create executions, may not scale
    name = create_as(kexec, "carol", ns, "scale_deployment",
                     {"namespace": ns, "deployment": "web", "replicas": 3})
    obj = kexec.wait(ns, name, timeout=30)
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Failed", "RequesterForbidden")
    assert "deployments/scale" in obj["status"]["message"]
    assert dep(kexec, ns, "web")["spec"]["replicas"] == 1
    assert kexec.jobs_for(ns, name) == []
    assert kexec_bindings(kexec, ns) == []


def test_requester_with_the_permission_runs_and_no_privilege_stays(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "mayscale")
    ready_deployment(kexec, ns, "web", 1)
    grant(kexec, ns, "dave", "kexec-edit")
    deployments_role(kexec, ns, "scaler", ["get", "update", "patch"])
    grant(kexec, ns, "dave", "scaler", cluster_role=False)
    name = create_as(kexec, "dave", ns, "scale_deployment",
                     {"namespace": ns, "deployment": "web", "replicas": 2})
    obj = kexec.wait(ns, name, timeout=90)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["requestedBy"] == "dave"
    assert dep(kexec, ns, "web")["spec"]["replicas"] == 2
    sa = f"system:serviceaccount:{ns}:kexec-scale-deployment"
    assert eventually_not(lambda: can(kexec, sa, "patch", "deployments", ns, "apps", "scale"))
    assert kexec_bindings(kexec, ns) == []


def test_node_action_leaves_no_cluster_role_binding(kexec: Kexec) -> None:
    node = "sim-node-2"
    name = kexec.create(NS_CTRL, "cordon_node", {"node": node})
    obj = kexec.wait(NS_CTRL, name, timeout=90)
    try:
        assert obj["status"]["phase"] == "Completed", obj["status"]
        assert kexec.api("GET", f"/api/v1/nodes/{node}")["spec"].get("unschedulable") is True
        sa = f"system:serviceaccount:{NS_CTRL}:kexec-cordon-node"
        assert eventually_not(lambda: can(kexec, sa, "patch", "nodes"))
        code, _ = kexec.try_api(
            "GET", f"/apis/{RBAC}/v1/clusterrolebindings/kexec-action-cordon-node-{NS_CTRL}")
        assert code == 404
    finally:
        kexec.api("PATCH", f"/api/v1/nodes/{node}", {"spec": {"unschedulable": None}},
                  content_type="application/merge-patch+json")
