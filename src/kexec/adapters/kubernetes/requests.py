"""The Kubernetes API calls of the ``RunnerCluster`` port, as data, on the standard library.

What a read or a mutation becomes on the wire (method, path, query, body, content type,
impersonation) and what its answer means (a Get's 404 is "absent"; list items get their
kind back) is decided here once. A transport only sends an ``ApiCall`` and raises the
port's ``ClusterError``s (``errors.classify``): ``KubernetesApi`` sends through
kubernetes-asyncio (the controller), ``StdlibApi`` through ``http.client`` (the runner in
a Job pod, which must start light).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kexec.application.ports.cluster import ClusterError, Identity
from kexec.domain.execution import GROUP, PLURAL, VERSION
from kexec.domain.resources import (
    KINDS,
    Create,
    Delete,
    Evict,
    Get,
    List,
    Mutation,
    Patch,
    Read,
)

CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


def _resource_path(base: str, namespace: str, plural: str, name: str, subresource: str) -> str:
    path = f"{base}/namespaces/{namespace}" if namespace else base
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def path_for(kind: str, namespace: str = "", name: str = "", subresource: str = "") -> str:
    info = KINDS[kind]
    base = f"/apis/{info.group}/{info.version}" if info.group else f"/api/{info.version}"
    return _resource_path(base, namespace if info.namespaced else "", info.plural, name,
                          subresource)


def execution_path(namespace: str = "", name: str = "", subresource: str = "") -> str:
    return _resource_path(f"/apis/{GROUP}/{VERSION}", namespace, PLURAL, name, subresource)


@dataclass(frozen=True)
class ApiCall:
    """One request to kube-apiserver; the body is JSON-serialisable (or None)."""

    method: str
    path: str
    query: tuple[tuple[str, Any], ...] = ()
    body: Any = None
    content_type: str = "application/json"
    identity: Identity | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": self.content_type}
        if self.identity is not None:
            headers["Impersonate-User"] = self.identity.username
        return headers


def read_call(read: Read, identity: Identity | None = None) -> ApiCall:
    if isinstance(read, Get):
        ref = read.ref
        return ApiCall("GET", path_for(ref.kind, ref.namespace, ref.name), identity=identity)
    assert isinstance(read, List)
    query: list[tuple[str, Any]] = []
    if read.field_selector:
        query.append(("fieldSelector", read.field_selector))
    if read.label_selector:
        query.append(("labelSelector", read.label_selector))
    return ApiCall("GET", path_for(read.kind, read.namespace), tuple(query), identity=identity)


def read_answer(read: Read, doc: Any) -> Any:
    """A Get answers the object; a List its items, each with its kind and apiVersion."""
    if isinstance(read, Get):
        return doc
    info = KINDS[read.kind]
    items = list(doc.get("items") or [])
    for item in items:  # list items carry no kind; the domain reads it
        item.setdefault("kind", read.kind)
        item.setdefault("apiVersion", info.api_version)
    return items


def mutation_call(
    mutation: Mutation,
    *,
    identity: Identity | None = None,
    dry_run: bool = False,
    field_manager: str = "kexec",
) -> ApiCall:
    ref = mutation.ref
    query: list[tuple[str, Any]] = [("dryRun", "All")] if dry_run else []
    if isinstance(mutation, Evict):
        body: dict[str, Any] = {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": ref.name, "namespace": ref.namespace},
        }
        options: dict[str, Any] = {}
        if mutation.grace_period_seconds is not None:
            options["gracePeriodSeconds"] = mutation.grace_period_seconds
        if dry_run:
            options["dryRun"] = ["All"]
        if options:
            body["deleteOptions"] = options
        return ApiCall("POST", path_for("Pod", ref.namespace, ref.name, "eviction"),
                       tuple(query), body, identity=identity)
    if isinstance(mutation, Delete):
        opts: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions",
                                "propagationPolicy": "Background"}
        if mutation.grace_period_seconds is not None:
            opts["gracePeriodSeconds"] = mutation.grace_period_seconds
        if mutation.uid:
            opts["preconditions"] = {"uid": mutation.uid}
        if dry_run:
            opts["dryRun"] = ["All"]
        return ApiCall("DELETE", path_for(ref.kind, ref.namespace, ref.name),
                       tuple(query), opts, identity=identity)
    if isinstance(mutation, Create):
        return ApiCall("POST", path_for(ref.kind, ref.namespace), tuple(query), mutation.body,
                       identity=identity)
    assert isinstance(mutation, Patch)
    if mutation.patch_type == "apply":
        query += [("fieldManager", field_manager), ("force", "true")]
    return ApiCall("PATCH", path_for(ref.kind, ref.namespace, ref.name, mutation.subresource),
                   tuple(query), mutation.body, CONTENT_TYPES[mutation.patch_type], identity)


class RunnerCalls:
    """``RunnerCluster`` (read, mutate) for any transport that implements ``send``."""

    field_manager = "kexec"

    async def send(self, call: ApiCall) -> Any:
        """Send one call; answer the decoded JSON; raise ``ClusterError``s."""
        raise NotImplementedError

    async def read(self, read: Read, identity: Identity | None = None) -> Any:
        try:
            doc = await self.send(read_call(read, identity))
        except ClusterError as exc:
            if exc.status == 404 and isinstance(read, Get):
                return None
            raise
        return read_answer(read, doc)

    async def mutate(
        self, mutation: Mutation, *, identity: Identity | None = None, dry_run: bool = False
    ) -> Any:
        return await self.send(mutation_call(mutation, identity=identity, dry_run=dry_run,
                                             field_manager=self.field_manager))
