"""Scenario 7: the RBAC matrix. Each action's ServiceAccount (``kexec-<action>``), bound the
way the controller binds it while an execution runs (a RoleBinding to the action's
ClusterRole in the target namespace; a ClusterRoleBinding for node actions), may do its
own operations and none of any other action's: every operation of every other action that
its own rules do not also grant is Forbidden by the real API server -- asked twice, as a
SubjectAccessReview and as the real request made with the ServiceAccount's token
(mutations with ``dryRun=All``, so nothing would change even if one got through).

``rbac_matrix_live``: the same, for the identities of real executions while they run, their
bindings made by the controller -- a ``drain_node`` held by a PodDisruptionBudget (a node
action: ClusterRoleBinding) and a ``scale_deployment`` waiting in Verifying for a pod that
cannot be scheduled (RoleBinding) -- and once they have ended, their own operations are
Forbidden again (zero standing privilege)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from devstack.harness import NS_CTRL, Kexec
from kexec.domain.actions import ACTIONS
from kexec.domain.naming import cluster_role_for, service_account_for
from tests.e2e.test_actions_e2e import guarded_pod_on, uncordon
from tests.reliability.conftest import Reliability, record

pytestmark = pytest.mark.cluster

Op = tuple[str, str, str]  # (api group, resource[/subresource], verb)
CLUSTER_RESOURCES = {"nodes", "namespaces"}


def ops(action: str) -> set[Op]:
    return {(g, r, v) for rule in ACTIONS[action].rules for g in rule.api_groups for r in rule.resources
            for v in rule.verbs}


def allowed_by_review(k: Kexec, user: str, ns: str, op: Op) -> bool:
    group, resource, verb = op
    base, _, sub = resource.partition("/")
    attrs = {"group": group, "resource": base, "verb": verb, "name": "" if verb in ("list", "create") else "rel-x"}
    if sub:
        attrs["subresource"] = sub
    if base not in CLUSTER_RESOURCES:
        attrs["namespace"] = ns
    sa_ns = user.split(":")[2]
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa_ns}",
                                                "system:authenticated"],
                       "resourceAttributes": {k: v for k, v in attrs.items() if v}}}
    return bool(k.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)["status"].get("allowed"))


def real_request(k: Kexec, token: str, ns: str, op: Op) -> int:
    """The HTTP status of doing ``op`` with ``token`` (on an object named rel-x)."""
    group, resource, verb = op
    base, _, sub = resource.partition("/")
    prefix = "/api/v1" if group == "" else f"/apis/{group}/{'v2' if group == 'autoscaling' else 'v1'}"
    coll = f"{prefix}/{base}" if base in CLUSTER_RESOURCES else f"{prefix}/namespaces/{ns}/{base}"
    obj = f"{coll}/rel-x" + (f"/{sub}" if sub else "")
    method, path, body = {
        "get": ("GET", obj, None), "list": ("GET", coll, None),
        "watch": ("GET", coll + "?watch=1&timeoutSeconds=1", None),
        "create": ("POST", (obj if sub else coll) + "?dryRun=All", {}),
        "update": ("PUT", obj + "?dryRun=All", {}), "patch": ("PATCH", obj + "?dryRun=All", {}),
        "delete": ("DELETE", obj + "?dryRun=All", None),
    }[verb]
    return k.as_token(token, method, path, body)


@dataclass
class Tally:
    checked: int = 0
    denied: int = 0
    own: int = 0
    granted_own: int = 0
    shared: int = 0
    escapes: list[str] = field(default_factory=list)
    missing_own: list[str] = field(default_factory=list)


def check_identity(k: Kexec, tally: Tally, a: str, sa_ns: str, ns: str) -> None:
    """Action ``a``'s ServiceAccount of ``sa_ns``, on namespace ``ns``: its own operations
    granted, every other action's it does not share Forbidden (review and real request)."""
    user = f"system:serviceaccount:{sa_ns}:{service_account_for(a)}"
    token = k.token_for(sa_ns, service_account_for(a))
    mine = ops(a)
    for op in sorted(mine):
        tally.own += 1
        # granted by the review, and the real request is not refused (404/422: no rel-x)
        ok = allowed_by_review(k, user, ns, op) and real_request(k, token, ns, op) != 403
        tally.granted_own += ok
        if not ok:
            tally.missing_own.append(f"{a}: {op}")
    for b in ACTIONS:
        if b == a:
            continue
        for op in sorted(ops(b)):
            if op in mine:
                tally.shared += 1  # the same operation is this action's own too
                continue
            tally.checked += 1
            review = allowed_by_review(k, user, ns, op)
            code = real_request(k, token, ns, op)
            if not review and code == 403:
                tally.denied += 1
            else:
                tally.escapes.append(f"{a} may {op} of {b}: review={review} http={code}")


def test_rbac_matrix(rel: Reliability) -> None:
    t0 = time.monotonic()
    k = rel.k
    ns = rel.ns("rbac")
    bindings: list[tuple[str, str]] = []
    try:
        for a in ACTIONS:
            sa = service_account_for(a)
            k.kubectl("create", "serviceaccount", sa, "-n", ns)
            body: dict[str, Any] = {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "metadata": {"name": f"rel-rbac-{cluster_role_for(a)}-{ns}"[:253]},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": cluster_role_for(a)},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}
            if ACTIONS[a].node_action:
                k.apply(dict(body, kind="ClusterRoleBinding"))
                bindings.append(("clusterrolebinding", body["metadata"]["name"]))
            else:
                k.apply(dict(body, kind="RoleBinding", metadata=dict(body["metadata"], namespace=ns)))
        time.sleep(1)  # the authorizer's cache
        t = Tally()
        for a in ACTIONS:
            check_identity(k, t, a, ns, ns)
        record("rbac_matrix", t.checked, t.denied, 0, 0, time.monotonic() - t0, escapes=len(t.escapes),
               own_operations=t.own, own_granted=t.granted_own, shared_skipped=t.shared)
        assert not t.escapes, t.escapes[:10]
        assert t.denied == t.checked > 0
        assert t.granted_own == t.own, t.missing_own  # the bindings were in force: the matrix is not vacuous
    finally:
        for kind, name in bindings:
            k.kubectl("delete", kind, name, check=False)
        k.kubectl("delete", "namespace", ns, "--wait=false", check=False)


NODE = "sim-node-3"


def test_rbac_matrix_while_executions_run(rel: Reliability) -> None:
    t0 = time.monotonic()
    k = rel.k
    k.replace_controllers(("rel-rbac-live", ("--no-leader-elect",), 0))
    ns = rel.ns("rbaclive")
    guarded_pod_on(k, ns, "held", NODE)  # the drain evicts nothing: the PDB holds it
    k.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "stuck", "namespace": ns},
             "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "stuck"}},
                      "template": {"metadata": {"labels": {"app": "stuck"}},
                                   "spec": {"nodeSelector": {"kubernetes.io/hostname": "nowhere"},
                                            "containers": [{"name": "app", "image": "nginx:1"}]}}}})
    drain = k.create(NS_CTRL, "drain_node", {"node": NODE}, timeout="120s")
    scale = k.create(ns, "scale_deployment", {"namespace": ns, "deployment": "stuck", "replicas": 1},
                     timeout="120s")
    t = Tally()
    after: list[str] = []
    try:
        def live() -> bool:
            d, s = k.get(NS_CTRL, drain).get("status") or {}, k.get(ns, scale).get("status") or {}
            for name, st in ((drain, d), (scale, s)):
                if st.get("phase") in ("Completed", "Failed", "RollbackReady"):
                    raise AssertionError(f"{name} ended: {st.get('phase')} {st.get('reason')}: {st.get('message')}")
            blocked = bool(((d.get("execution") or {}).get("progress") or {}).get("blocked"))
            return d.get("phase") == "Executing" and blocked and s.get("phase") == "Verifying"
        k.until(live, 90, "the drain held by its PDB and the scale waiting in Verifying")
        check_identity(k, t, "drain_node", NS_CTRL, ns)
        check_identity(k, t, "scale_deployment", ns, ns)
        still = k.get(NS_CTRL, drain)["status"]["phase"], k.get(ns, scale)["status"]["phase"]
        assert still == ("Executing", "Verifying"), f"the checks outlived an execution: {still}"
        # let both finish: the PDB goes, the stuck pod may run anywhere
        k.api("DELETE", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/held")
        k.api("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/stuck",
              [{"op": "remove", "path": "/spec/template/spec/nodeSelector"}],
              content_type="application/json-patch+json")
        phases = (k.wait(NS_CTRL, drain, timeout=120)["status"]["phase"],
                  k.wait(ns, scale, timeout=120)["status"]["phase"])
        assert phases == ("Completed", "Completed"), phases

        def unbound() -> bool:  # zero standing privilege: their own operations Forbidden again
            user = f"system:serviceaccount:{NS_CTRL}:{service_account_for('drain_node')}"
            other = f"system:serviceaccount:{ns}:{service_account_for('scale_deployment')}"
            after[:] = [f"{u} {op}" for u, a in ((user, "drain_node"), (other, "scale_deployment"))
                        for op in sorted(ops(a)) if allowed_by_review(k, u, ns, op)]
            return not after
        k.until(unbound, 30, "the bindings removed after the executions")
    finally:
        record("rbac_matrix_live", t.checked, t.denied, 0, 0, time.monotonic() - t0, escapes=len(t.escapes),
               own_operations=t.own, own_granted=t.granted_own, still_granted_after=len(after))
        uncordon(k, NODE)
        k.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    assert not t.escapes, t.escapes[:10]
    assert t.denied == t.checked > 0
    assert t.granted_own == t.own, t.missing_own  # the controller's bindings were live
