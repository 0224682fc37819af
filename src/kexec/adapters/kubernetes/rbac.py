"""RBAC for kexec, generated from the domain's per-action rules.

Two identities matter:

* the controller (ServiceAccount ``kubernetes-executor-sa`` in ``kubernaut-system``): watches
  executions, writes their status, creates Jobs, and *prepares* each run. It never
  holds the power of the actions itself: it may only ``bind`` the per-action
  ClusterRoles (by name) and ``impersonate`` the per-action ServiceAccounts (by name)
  for reads and server-side dry runs.
* one ServiceAccount per action, ``kexec-<action-with-dashes>``, created at run time by
  the controller in the execution's namespace and bound to ClusterRole
  ``kexec-action-<action-with-dashes>`` by a RoleBinding in the target namespace
  (namespaced actions) or a ClusterRoleBinding (node actions). The Job pod runs as
  that ServiceAccount and needs nothing else.
"""

from __future__ import annotations

from typing import Any

from kexec.domain.actions import ACTIONS, Action
from kexec.domain.execution import GROUP, PLURAL
from kexec.domain.naming import (
    BRAKE_CONFIGMAP,
    CONTROLLER_NAMESPACE,
    cluster_role_for,
    service_account_for,
)
from kexec.domain.resources import Rule

CONTROLLER_NAME = "kexec-controller"
CONTROLLER_SERVICE_ACCOUNT = "kubernetes-executor-sa"  # the name the design gives it
RBAC_API = "rbac.authorization.k8s.io/v1"
PART_OF = {"app.kubernetes.io/part-of": "kexec"}


# deploy/base/admission.yaml: who requested an execution, and who may approve it.
ADMISSION_POLICY_NAMES = ("kexec-requester", "kexec-trust")
ADMISSION_RESOURCES = (
    "mutatingadmissionpolicies",
    "mutatingadmissionpolicybindings",
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
)


def _dashed(action: str) -> str:
    return action.replace("_", "-")


action_role_name = cluster_role_for
action_service_account = service_account_for


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kexec", "app.kubernetes.io/component": component, **PART_OF}


def _rule(
    groups: tuple[str, ...],
    resources: tuple[str, ...],
    verbs: tuple[str, ...],
    names: tuple[str, ...] = (),
) -> dict[str, Any]:
    return Rule(groups, resources, verbs, names).to_k8s()


def action_cluster_role(action: Action[Any]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": {
            "name": action_role_name(action.name),
            "labels": {**_labels("action"), "kubernetesexecution.kubernaut.io/action": action.name},
            "annotations": {
                "kubernetesexecution.kubernaut.io/scope": "cluster"
                if action.node_action
                else "target-namespace",
            },
        },
        "rules": [r.to_k8s() for r in action.rules],
    }


def action_cluster_roles() -> list[dict[str, Any]]:
    """One ClusterRole per action, from ``Action.rules`` (registry order)."""
    return [action_cluster_role(a) for a in ACTIONS.values()]


def controller_cluster_role() -> dict[str, Any]:
    """Least privilege, cluster-wide part of the controller's permissions."""
    roles = tuple(action_role_name(a) for a in ACTIONS)
    accounts = tuple(action_service_account(a) for a in ACTIONS)
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": {"name": CONTROLLER_NAME, "labels": _labels("controller")},
        "rules": [
            _rule((GROUP,), (PLURAL,), ("get", "list", "watch", "update", "patch")),
            _rule((GROUP,), (f"{PLURAL}/status",), ("update", "patch")),
            _rule((GROUP,), (f"{PLURAL}/finalizers",), ("update",)),
            _rule(("batch",), ("jobs",), ("create", "get", "list", "watch", "delete")),
            # Job pods: their termination message carries the runner's report (watched).
            _rule(("",), ("pods",), ("get", "list", "watch")),
            _rule(("",), ("events",), ("create", "patch")),
            _rule(("events.k8s.io",), ("events",), ("create", "patch")),
            # Per-action identities, prepared at run time.
            _rule(("",), ("serviceaccounts",), ("create", "get")),
            # ... bound only while an execution needs them, then removed (zero standing
            # privilege); listed to clean up after a crash.
            _rule(
                ("rbac.authorization.k8s.io",),
                ("rolebindings", "clusterrolebindings"),
                ("create", "get", "list", "delete"),
            ),
            # Bind only the per-action roles; never escalate to anything else.
            _rule(("rbac.authorization.k8s.io",), ("clusterroles",), ("bind",), roles),
            # Reads and server-side dry runs run AS the action's ServiceAccount.
            _rule(("",), ("serviceaccounts",), ("impersonate",), accounts),
            # Policy facts (nodes, namespaces: watch-fed caches, always fresh for the rules).
            _rule(("",), ("nodes",), ("get", "list", "watch")),
            _rule(("",), ("namespaces",), ("get", "list", "watch")),
            # The requester's own permissions (no escalation), and authenticated /metrics.
            _rule(("authentication.k8s.io",), ("tokenreviews",), ("create",)),
            _rule(("authorization.k8s.io",), ("subjectaccessreviews",), ("create",)),
            # The admission policies that stamp the requester and check approvals are in force.
            _rule(
                ("admissionregistration.k8s.io",),
                ADMISSION_RESOURCES,
                ("get",),
                ADMISSION_POLICY_NAMES,
            ),
        ],
    }


def controller_role() -> dict[str, Any]:
    """Namespaced part: kill switch / policy ConfigMaps and leader election, own namespace only."""
    return {
        "apiVersion": RBAC_API,
        "kind": "Role",
        "metadata": {
            "name": CONTROLLER_NAME,
            "namespace": CONTROLLER_NAMESPACE,
            "labels": _labels("controller"),
        },
        "rules": [
            _rule(("",), ("configmaps",), ("get", "list", "watch")),
            _rule(("coordination.k8s.io",), ("leases",), ("get", "create", "update")),
        ],
    }


def _subjects() -> list[dict[str, str]]:
    return [{"kind": "ServiceAccount", "name": CONTROLLER_SERVICE_ACCOUNT, "namespace": CONTROLLER_NAMESPACE}]


def controller_cluster_role_binding() -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": CONTROLLER_NAME, "labels": _labels("controller")},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": CONTROLLER_NAME,
        },
        "subjects": _subjects(),
    }


def controller_role_binding() -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": {
            "name": CONTROLLER_NAME,
            "namespace": CONTROLLER_NAMESPACE,
            "labels": _labels("controller"),
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": CONTROLLER_NAME,
        },
        "subjects": _subjects(),
    }


def user_cluster_roles() -> list[dict[str, Any]]:
    """Roles for people: view (aggregated into ``view``) and edit (bind it explicitly).

    Editing is deliberately NOT aggregated into ``edit``/``admin``: setting
    ``spec.approvalReceived`` is an approval, so grant it on purpose.
    """
    view_verbs = ("get", "list", "watch")
    return [
        {
            "apiVersion": RBAC_API,
            "kind": "ClusterRole",
            "metadata": {
                "name": "kexec-view",
                "labels": {
                    **_labels("user"),
                    "rbac.authorization.k8s.io/aggregate-to-view": "true",
                },
            },
            "rules": [_rule((GROUP,), (PLURAL, f"{PLURAL}/status"), view_verbs)],
        },
        {
            "apiVersion": RBAC_API,
            "kind": "ClusterRole",
            "metadata": {"name": "kexec-edit", "labels": _labels("user")},
            "rules": [
                _rule(
                    (GROUP,),
                    (PLURAL,),
                    ("get", "list", "watch", "create", "update", "patch", "delete"),
                ),
                _rule((GROUP,), (f"{PLURAL}/status",), view_verbs),
            ],
        },
        {
            # Approval by a second person (like CertificateSigningRequest approval): only the
            # verb; an approver also needs patch on executions (kexec-edit) to record it.
            "apiVersion": RBAC_API,
            "kind": "ClusterRole",
            "metadata": {"name": "kexec-approver", "labels": _labels("user")},
            "rules": [_rule((GROUP,), (PLURAL,), ("approve",))],
        },
        {
            "apiVersion": RBAC_API,
            "kind": "ClusterRole",
            "metadata": {"name": "kexec-metrics-reader", "labels": _labels("metrics")},
            "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
        },
    ]


def brake_release() -> list[dict[str, Any]]:
    """``kexec brake release ACTION`` writes a key of one ConfigMap (shipped empty, so the
    operator needs no ``create``): Role ``kexec-brake-releaser``, bind it to operators."""
    return [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": BRAKE_CONFIGMAP, "namespace": CONTROLLER_NAMESPACE,
                      "labels": _labels("controller")}},
        {"apiVersion": RBAC_API, "kind": "Role",
         "metadata": {"name": "kexec-brake-releaser", "namespace": CONTROLLER_NAMESPACE,
                      "labels": _labels("user")},
         "rules": [_rule(("",), ("configmaps",), ("get", "patch"), (BRAKE_CONFIGMAP,))]},
    ]


def controller_rbac() -> list[dict[str, Any]]:
    """Everything deploy/base/rbac/controller.yaml holds, in apply order."""
    return [
        controller_cluster_role(),
        controller_cluster_role_binding(),
        controller_role(),
        controller_role_binding(),
        *user_cluster_roles(),
        *brake_release(),
    ]


__all__ = [
    "CONTROLLER_NAME",
    "CONTROLLER_NAMESPACE",
    "CONTROLLER_SERVICE_ACCOUNT",
    "action_cluster_role",
    "action_cluster_roles",
    "action_role_name",
    "action_service_account",
    "controller_cluster_role",
    "controller_rbac",
    "controller_role",
]
