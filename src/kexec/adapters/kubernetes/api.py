"""The Kubernetes API as kexec uses it, through kubernetes-asyncio: one shared ApiClient,
raw JSON in and out (objects stay plain dicts, as the domain expects), a client-side timeout
on every call, and impersonation of the per-action ServiceAccount for reads and server-side
dry runs. ``read`` and ``mutate`` (``RunnerCluster``) are shaped in ``requests.py``, shared
with the runner's standard-library transport (``stdlib_client.py``).
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
from kexec.adapters.kubernetes.requests import (
    ApiCall,
    RunnerCalls,
    execution_path,
    path_for,
)
from kexec.application.ports.cluster import AlreadyExists, Identity, Unavailable
from kexec.domain.execution import Execution

__all__ = ["KubernetesApi", "execution_path", "path_for"]

log = logging.getLogger(__name__)


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


def request_kind(call: ApiCall) -> str:
    """What a request costs the API server: a read, a write it persists, a dry run, or a
    review (SubjectAccessReview, TokenReview, SelfSubjectReview: answered, never stored)."""
    if call.method == "GET":
        return "read"
    if ("dryRun", "All") in call.query:
        return "dry_run"
    if call.method == "POST" and call.path.endswith("reviews"):
        return "review"
    return "write"


class KubernetesApi(RunnerCalls):
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
        execution_cache: Callable[[bool], Iterable[Execution]] | None = None,
        node_cache: Callable[[], Iterable[dict[str, Any]]] | None = None,
        job_cache: Callable[[str], dict[str, Any] | None] | None = None,
        pod_cache: Callable[[], Iterable[dict[str, Any]]] | None = None,
        namespace_cache: Callable[[str], dict[str, Any] | None] | None = None,
        config_cache: Callable[[], dict[str, Any] | None] | None = None,
        facts_ttl: float = 2.0,
        admission_ttl: float = 5.0,  # a deleted kexec-trust is noticed within this (trust model)
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
        # What the controller's watches hold, read instead of a GET (None: no watch, GET):
        self.job_cache = job_cache  # "namespace/name" → the Job as the watch last saw it
        self.pod_cache = pod_cache  # the Jobs' pods
        self.namespace_cache = namespace_cache  # name → the Namespace
        self.config_cache = config_cache  # the kill-switch ConfigMap (None: absent)
        self.admission_ttl = admission_ttl  # how long "admission is installed" is believed
        self._service_accounts: set[tuple[str, str]] = set()  # known to exist
        self._admission_until = 0.0  # monotonic time until which the answer below holds
        self._admission_missing = ""
        self._facts = _TTL(facts_ttl)
        self._api_calls = (Counter("kexec_api_requests_total",
                                   "Kubernetes API requests made by kexec, by HTTP method",
                                   ["method"], registry=registry)
                           if registry is not None else None)
        self._api_kinds = (Counter("kexec_api_request_kinds_total",
                                   "Kubernetes API requests made by kexec: read, write (persisted"
                                   ", Events included), dry_run, review (access and token "
                                   "reviews: nothing stored)", ["kind"], registry=registry)
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
        return await self.send(ApiCall(method, path, tuple(query), body, content_type, identity),
                               request_timeout)

    async def send(self, call: ApiCall, request_timeout: float | None = None) -> Any:
        if self._api_calls is not None and self._api_kinds is not None:
            self._api_calls.labels(call.method).inc()
            self._api_kinds.labels(request_kind(call)).inc()
        try:
            data = await self.api.call_api(
                call.path, call.method, query_params=list(call.query), header_params=call.headers(),
                body=call.body, response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=True,
                _request_timeout=request_timeout or self.timeout,
            )
        except ApiException as exc:
            raise classify(exc.status, exc.body) from None
        except (TimeoutError, OSError) as exc:
            raise Unavailable(f"{call.method} {call.path}: {exc or type(exc).__name__}") from None
        return data

    async def _create(self, path: str, body: dict[str, Any]) -> bool:
        """Create unless it exists; True when this call created it."""
        try:
            await self.request("POST", path, body=body)
            return True
        except AlreadyExists:
            return False
