"""Scenario 7: the RBAC matrix. Each action's ServiceAccount (``kexec-<action>``), bound the
way the controller binds it while an execution runs (a RoleBinding to the action's
ClusterRole in the target namespace; a ClusterRoleBinding for node actions), may do its
own operations and none of any other action's: every operation of every other action that
its own rules do not also grant is Forbidden by the real API server -- asked twice, as a
SubjectAccessReview and as the real request made with the ServiceAccount's token
(mutations with ``dryRun=All``, so nothing would change even if one got through)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devstack.harness import Kexec
from kexec.domain.actions import ACTIONS
from kexec.domain.naming import cluster_role_for, service_account_for
from tests.reliability.conftest import Reliability, record

pytestmark = pytest.mark.cluster

Op = tuple[str, str, str]  # (api group, resource[/subresource], verb)
NODE_RESOURCES = {"nodes"}


def ops(action: str) -> set[Op]:
    return {(g, r, v) for rule in ACTIONS[action].rules for g in rule.api_groups for r in rule.resources
            for v in rule.verbs}


def allowed_by_review(k: Kexec, user: str, ns: str, op: Op) -> bool:
    group, resource, verb = op
    base, _, sub = resource.partition("/")
    attrs = {"group": group, "resource": base, "verb": verb, "name": "" if verb in ("list", "create") else "rel-x"}
    if sub:
        attrs["subresource"] = sub
    if base not in NODE_RESOURCES:
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
    coll = f"{prefix}/{base}" if base in NODE_RESOURCES else f"{prefix}/namespaces/{ns}/{base}"
    obj = f"{coll}/rel-x" + (f"/{sub}" if sub else "")
    method, path, body = {
        "get": ("GET", obj, None), "list": ("GET", coll, None),
        "watch": ("GET", coll + "?watch=1&timeoutSeconds=1", None),
        "create": ("POST", (obj if sub else coll) + "?dryRun=All", {}),
        "update": ("PUT", obj + "?dryRun=All", {}), "patch": ("PATCH", obj + "?dryRun=All", {}),
        "delete": ("DELETE", obj + "?dryRun=All", None),
    }[verb]
    return k.as_token(token, method, path, body)


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
        checked = denied = granted_own = own = shared = 0
        escapes: list[str] = []
        missing_own: list[str] = []
        for a in ACTIONS:
            user = f"system:serviceaccount:{ns}:{service_account_for(a)}"
            token = k.token_for(ns, service_account_for(a))
            mine = ops(a)
            for op in sorted(mine):
                own += 1
                # granted by the review, and the real request is not refused (404/422: no rel-x)
                ok = allowed_by_review(k, user, ns, op) and real_request(k, token, ns, op) != 403
                granted_own += ok
                if not ok:
                    missing_own.append(f"{a}: {op}")
            for b in ACTIONS:
                if b == a:
                    continue
                for op in sorted(ops(b)):
                    if op in mine:
                        shared += 1  # the same operation is this action's own too
                        continue
                    checked += 1
                    review = allowed_by_review(k, user, ns, op)
                    code = real_request(k, token, ns, op)
                    if not review and code == 403:
                        denied += 1
                    else:
                        escapes.append(f"{a} may {op} of {b}: review={review} http={code}")
        record("rbac_matrix", checked, denied, 0, 0, time.monotonic() - t0, escapes=len(escapes),
               own_operations=own, own_granted=granted_own, shared_skipped=shared)
        assert not escapes, escapes[:10]
        assert denied == checked > 0
        assert granted_own == own, missing_own  # the bindings were in force: the matrix is not vacuous
    finally:
        for kind, name in bindings:
            k.kubectl("delete", kind, name, check=False)
        k.kubectl("delete", "namespace", ns, "--wait=false", check=False)
