"""Object references, reads and mutations: what an action asks of the cluster, as data.

The domain never talks to Kubernetes; it describes what to read and what to
change, and adapters carry it out (for real, as a server-side dry run, or in
the in-memory fake).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("Deployment", "apps", "v1", "deployments"),
        Kind("ReplicaSet", "apps", "v1", "replicasets"),
        Kind("StatefulSet", "apps", "v1", "statefulsets"),
        Kind("DaemonSet", "apps", "v1", "daemonsets"),
        Kind("Pod", "", "v1", "pods"),
        Kind("Node", "", "v1", "nodes", namespaced=False),
        Kind("Namespace", "", "v1", "namespaces", namespaced=False),
        Kind("ConfigMap", "", "v1", "configmaps"),
        Kind("Secret", "", "v1", "secrets"),
        Kind("Service", "", "v1", "services"),
        Kind("ServiceAccount", "", "v1", "serviceaccounts"),
        Kind("Job", "batch", "v1", "jobs"),
        Kind("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets"),
        Kind("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers"),
        Kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies"),
        Kind("RoleBinding", "rbac.authorization.k8s.io", "v1", "rolebindings"),
        Kind("ClusterRoleBinding", "rbac.authorization.k8s.io", "v1", "clusterrolebindings",
             namespaced=False),
    )
}


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class Get:
    """Read one object into the snapshot under ``name`` (None when absent)."""

    name: str
    ref: ObjectRef


@dataclass(frozen=True)
class List:
    """List objects into the snapshot under ``name``."""

    name: str
    kind: str
    namespace: str = ""  # "" = all namespaces for namespaced kinds
    field_selector: str = ""
    label_selector: str = ""


Read = Get | List
Snapshot = dict[str, Any]  # read name → object (dict), None, or list of objects

PatchType = Literal["merge", "strategic", "json", "apply"]


@dataclass(frozen=True)
class Patch:
    ref: ObjectRef
    patch_type: PatchType
    body: Any
    subresource: str = ""


@dataclass(frozen=True)
class Create:
    ref: ObjectRef
    body: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    ref: ObjectRef
    grace_period_seconds: int | None = None
    uid: str = ""  # precondition: delete only this incarnation


@dataclass(frozen=True)
class Evict:
    """Eviction API (honours PodDisruptionBudgets); never a plain delete."""

    ref: ObjectRef
    grace_period_seconds: int | None = None


Mutation = Patch | Create | Delete | Evict


@dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule, as data (the per-action ClusterRoles are generated from it)."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        return out


@dataclass(frozen=True)
class Check:
    """The result of one precondition or postcondition."""

    name: str
    passed: bool
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message}


@dataclass(frozen=True)
class Change:
    """One resource an action affected, with redacted before/after summaries."""

    kind: str
    namespace: str
    name: str
    operation: str
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)

    def to_status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "operation": self.operation,
            "before": self.before,
            "after": self.after,
        }


def meta(obj: Any) -> dict[str, Any]:
    """``obj.metadata`` or {} — objects are plain JSON dicts."""
    if isinstance(obj, dict):
        m = obj.get("metadata")
        if isinstance(m, dict):
            return m
    return {}


def dig(obj: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj
