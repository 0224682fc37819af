"""Per-action identities: bindings made and removed (zero standing privilege), access
reviews, and the admission policies kexec's trust model needs."""

from __future__ import annotations

import logging
import time
from typing import Any

from kexec.adapters.kubernetes.api import KubernetesApi, path_for
from kexec.adapters.kubernetes.rbac import ADMISSION_POLICY_NAMES
from kexec.application.ports.cluster import (
    Identity,
    NotFound,
)
from kexec.domain.actions import ACTIONS
from kexec.domain.naming import cluster_role_for
from kexec.domain.safety import Permission
from kexec.runtime.backoff import Backoff, poll

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by=kexec"
ADMISSION_API = "/apis/admissionregistration.k8s.io/v1"
ADMISSION_OBJECTS = tuple(
    (resource, name)
    for name, kinds in zip(ADMISSION_POLICY_NAMES, (("mutatingadmissionpolicies",
                                                     "mutatingadmissionpolicybindings"),
                                                    ("validatingadmissionpolicies",
                                                     "validatingadmissionpolicybindings")),
                           strict=True)
    for resource in kinds
)

class Identities(KubernetesApi):
    async def _await_rbac(self, identity: Identity, action: str, namespace: str) -> None:
        """A new binding takes a moment to reach the authorizer: wait until it does, so
        the dry run that follows is not refused by a race (SubjectAccessReview)."""
        rule = ACTIONS[action].rules[0]
        base, _, sub = rule.resources[0].partition("/")
        permission = Permission(rule.api_groups[0], base, rule.verbs[0], namespace, "", sub)
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{identity.namespace}",
                  "system:authenticated")
        if not await poll(lambda: self.access_allowed(identity.username, groups, permission),
                          backoff=Backoff(0.05, 0.5), within=5.0):
            log.warning("binding of %s to %s not effective after 5s", identity.username, action)

    async def ensure_identity(self, identity: Identity, action: str, target_namespace: str) -> None:
        labels = {"app.kubernetes.io/managed-by": "kexec"}
        account = (identity.namespace, identity.service_account)
        if account not in self._service_accounts:  # kexec never deletes them
            await self._create(path_for("ServiceAccount", identity.namespace), {
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": identity.service_account, "namespace": identity.namespace,
                             "labels": labels},
            })
            self._service_accounts.add(account)
        name = self._binding_name(identity, action)
        metadata: dict[str, Any] = {"name": name, "labels": labels}
        binding: dict[str, Any] = {
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": cluster_role_for(action)},
            "subjects": [{"kind": "ServiceAccount", "name": identity.service_account,
                          "namespace": identity.namespace}],
        }
        if target_namespace:
            metadata["namespace"] = target_namespace
            created = await self._create(path_for("RoleBinding", target_namespace),
                                         {"apiVersion": "rbac.authorization.k8s.io/v1",
                                          "kind": "RoleBinding", **binding})
        else:
            created = await self._create(path_for("ClusterRoleBinding"),
                                         {"apiVersion": "rbac.authorization.k8s.io/v1",
                                          "kind": "ClusterRoleBinding", **binding})
        if created:
            await self._await_rbac(identity, action, target_namespace)

    def _binding_name(self, identity: Identity, action: str) -> str:
        return f"{cluster_role_for(action)}-{identity.namespace}"[:253]

    async def revoke_identity(self, identity: Identity, action: str, target_namespace: str) -> None:
        name = self._binding_name(identity, action)
        path = (path_for("RoleBinding", target_namespace, name) if target_namespace
                else path_for("ClusterRoleBinding", "", name))
        try:
            await self.request("DELETE", path)
        except NotFound:
            pass

    async def identity_grants(self) -> list[tuple[Identity, str, str]]:
        by_role = {cluster_role_for(a): a for a in ACTIONS}
        out: list[tuple[Identity, str, str]] = []
        for kind in ("RoleBinding", "ClusterRoleBinding"):
            doc = await self.request("GET", path_for(kind),
                                     query=[("labelSelector", MANAGED_BY)])
            for item in doc.get("items") or []:
                action = by_role.get((item.get("roleRef") or {}).get("name", ""))
                subjects = item.get("subjects") or []
                if action is None or len(subjects) != 1:
                    continue
                sa = subjects[0]
                out.append((Identity(sa.get("namespace", ""), sa.get("name", "")), action,
                            (item.get("metadata") or {}).get("namespace", "")))
        return out

    async def access_allowed(self, user: str, groups: tuple[str, ...],
                             permission: Permission) -> bool:
        attrs = {k: v for k, v in (
            ("group", permission.group), ("resource", permission.resource),
            ("verb", permission.verb), ("namespace", permission.namespace),
            ("name", permission.name), ("subresource", permission.subresource)) if v}
        attrs.setdefault("group", "")
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "groups": list(groups), "resourceAttributes": attrs}}
        answer = await self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                    body=review)
        return bool((answer.get("status") or {}).get("allowed"))

    async def admission_installed(self) -> str:
        """"" when kexec's admission objects are installed, else what is missing. Once found,
        believed for ``admission_ttl`` seconds; while missing, asked again after
        ``facts_ttl`` (so installing them is seen at once)."""
        now = time.monotonic()
        if now < self._admission_until:
            return self._admission_missing
        missing = ""
        for resource, name in ADMISSION_OBJECTS:
            try:
                await self.request("GET", f"{ADMISSION_API}/{resource}/{name}")
            except NotFound:
                missing = (f"{resource[:-1]} {name!r} is not installed (deploy/base/admission.yaml); "
                           "executions cannot run without it")
                break
        self._admission_missing = missing
        self._admission_until = now + (self._facts.seconds if missing else self.admission_ttl)
        return missing

    async def whoami(self) -> str:
        """The username this client authenticates as (SelfSubjectReview)."""
        doc = await self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                 body={"apiVersion": "authentication.k8s.io/v1",
                                       "kind": "SelfSubjectReview"})
        return str(((doc.get("status") or {}).get("userInfo") or {}).get("username", ""))

