"""The Kubernetes API as kexec uses it, through kubernetes-asyncio: one shared ApiClient,
raw JSON in and out (objects stay plain dicts, as the domain expects), a client-side timeout
on every call, and impersonation of the per-action ServiceAccount for reads and server-side
dry runs. This is all the runner needs (``RunnerCluster``: read and mutate).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import Counter

from kexec.adapters.kubernetes.errors import classify
from kexec.application.ports.cluster import (
    AlreadyExists,
    ClusterError,
    Identity,
    Unavailable,
)
from kexec.domain.execution import GROUP, PLURAL, VERSION, Execution
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

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}
def path_for(kind: str, namespace: str = "", name: str = "", subresource: str = "") -> str:
    info = KINDS[kind]
    base = f"/apis/{info.group}/{info.version}" if info.group else f"/api/{info.version}"
    if info.namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{info.plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


def execution_path(namespace: str = "", name: str = "", subresource: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{PLURAL}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


class _TTL:
    """A tiny time-based cache for facts read on every validation (nodes, namespaces)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._data: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        hit = self._data.get(key)
        if hit and time.monotonic() - hit[0] < self.seconds:
            return hit[1]
        return None

    def put(self, key: str, value: Any) -> None:
        self._data[key] = (time.monotonic(), value)


class KubernetesApi:
    def __init__(
        self,
        api: ApiClient,
        *,
        controller_namespace: str = "kubernaut-system",
        image: str = "kexec:latest",
        runner_command: Sequence[str] = ("kexec", "runner"),
        request_timeout: float = 10.0,
        config_map: str = "kexec-config",
        field_manager: str = "kexec",
        execution_cache: Callable[[], Iterable[dict[str, Any]]] | None = None,
        node_cache: Callable[[], Iterable[dict[str, Any]]] | None = None,
        facts_ttl: float = 2.0,
        registry: Any = None,
    ) -> None:
        self.api = api
        self.controller_namespace = controller_namespace
        self.image = image
        self.runner_command = list(runner_command)
        self.timeout = request_timeout
        self.config_map = config_map
        self.field_manager = field_manager
        self.execution_cache = execution_cache
        self.node_cache = node_cache
        self._converted: dict[str, tuple[Any, Execution]] = {}
        self._facts = _TTL(facts_ttl)
        self._api_calls = (Counter("kexec_api_requests_total",
                                   "Kubernetes API requests made by kexec, by HTTP method",
                                   ["method"], registry=registry)
                           if registry is not None else None)

    # --- transport -------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, Any]] = (),
        body: Any = None,
        content_type: str = "application/json",
        identity: Identity | None = None,
        request_timeout: float | None = None,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if identity is not None:
            headers["Impersonate-User"] = identity.username
        if self._api_calls is not None:
            self._api_calls.labels(method).inc()
        try:
            data = await self.api.call_api(
                path, method, query_params=list(query), header_params=headers, body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=True,
                _request_timeout=request_timeout or self.timeout,
            )
        except ApiException as exc:
            raise classify(exc.status, exc.body) from None
        except (TimeoutError, OSError) as exc:
            raise Unavailable(f"{method} {path}: {exc or type(exc).__name__}") from None
        return data

    # --- reads -----------------------------------------------------------------------

    async def read(self, read: Read, identity: Identity | None = None) -> Any:
        if isinstance(read, Get):
            ref = read.ref
            try:
                obj = await self.request("GET", path_for(ref.kind, ref.namespace, ref.name),
                                         identity=identity)
            except ClusterError as exc:
                if exc.status == 404:
                    return None
                raise
            return obj
        assert isinstance(read, List)
        query = []
        if read.field_selector:
            query.append(("fieldSelector", read.field_selector))
        if read.label_selector:
            query.append(("labelSelector", read.label_selector))
        doc = await self.request("GET", path_for(read.kind, read.namespace), query=query,
                                 identity=identity)
        info = KINDS[read.kind]
        items = list(doc.get("items") or [])
        for item in items:  # list items carry no kind; the domain reads it
            item.setdefault("kind", read.kind)
            item.setdefault("apiVersion", info.api_version)
        return items

    # --- writes ------------------------------------------------------------------------

    async def mutate(
        self, mutation: Mutation, *, identity: Identity | None = None, dry_run: bool = False
    ) -> Any:
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
            return await self.request("POST", path_for("Pod", ref.namespace, ref.name, "eviction"),
                                      query=query, body=body, identity=identity)
        if isinstance(mutation, Delete):
            opts: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions",
                                    "propagationPolicy": "Background"}
            if mutation.grace_period_seconds is not None:
                opts["gracePeriodSeconds"] = mutation.grace_period_seconds
            if mutation.uid:
                opts["preconditions"] = {"uid": mutation.uid}
            if dry_run:
                opts["dryRun"] = ["All"]
            return await self.request("DELETE", path_for(ref.kind, ref.namespace, ref.name),
                                      query=query, body=opts, identity=identity)
        if isinstance(mutation, Create):
            return await self.request("POST", path_for(ref.kind, ref.namespace), query=query,
                                      body=mutation.body, identity=identity)
        assert isinstance(mutation, Patch)
        if mutation.patch_type == "apply":
            query += [("fieldManager", self.field_manager), ("force", "true")]
        return await self.request(
            "PATCH", path_for(ref.kind, ref.namespace, ref.name, mutation.subresource),
            query=query, body=mutation.body, content_type=CONTENT_TYPES[mutation.patch_type],
            identity=identity)

    async def _create(self, path: str, body: dict[str, Any]) -> bool:
        """Create unless it exists; True when this call created it."""
        try:
            await self.request("POST", path, body=body)
            return True
        except AlreadyExists:
            return False
