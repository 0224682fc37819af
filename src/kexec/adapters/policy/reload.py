"""Hot-reloadable safety policy: a PolicyPort whose policy set can be swapped at run time.

:class:`ReloadablePolicy` holds the current compiled policy set (embedded
engine). :meth:`ReloadablePolicy.load` validates a candidate completely
(parse, compile, full configuration check, smoke evaluations — see
:class:`kexec.adapters.policy.embedded.CompiledPolicy`) before swapping it in
atomically; a broken candidate raises PolicyLoadError and the last good policy
stays active. In-flight decisions finish on the policy they started with.

:class:`ConfigMapPolicySource` feeds it from the ``safety-policies`` ConfigMap:
list, then watch from the list's resourceVersion (bookmarks, server-side
timeout, client-side inactivity timeout, relist on 410 Gone), and fall back to
the baked-in policies when the ConfigMap is absent or deleted.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from kexec.adapters.policy.bundle import (
    DATA_FILE,
    PolicyLoadError,
    PolicySet,
    load_default_policy_set,
    policy_set_from_sources,
)
from kexec.adapters.policy.embedded import (
    DEFAULT_POOL_SIZE,
    ENGINE,
    CompiledPolicy,
    new_policy_executor,
)
from kexec.application.ports.policy import PolicyUnavailable
from kexec.domain.policy import PolicyDecision

__all__ = [
    "ConfigMapClient",
    "ConfigMapPolicySource",
    "KubernetesConfigMapClient",
    "PolicyLoadError",
    "ReloadablePolicy",
    "WatchExpired",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIGMAP_NAME = "safety-policies"


class ReloadablePolicy:
    """PolicyPort (embedded engine) over a policy set that can be replaced at run time.

    ``registry``: where ``kexec_policy_reload_total{result}`` (success,
    failure, unchanged) and ``kexec_policy_version_info{version,source}`` are
    registered — pass ``prometheus_client.REGISTRY`` in the controller; the
    default ``None`` keeps them unregistered (tests build many instances).
    Raises PolicyLoadError if ``initial`` (default: the baked-in set) is invalid.
    """

    engine = ENGINE

    def __init__(
        self,
        initial: PolicySet | None = None,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        registry: CollectorRegistry | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._pool_size = pool_size
        self._load_lock = threading.Lock()  # one compile at a time
        self._reloads = Counter(
            "kexec_policy_reload",
            "Safety policy (re)loads by result: success, failure, unchanged",
            ["result"],
            registry=registry,
        )
        self._version_info = Gauge(
            "kexec_policy_version_info",
            "The active safety policy set (value 1), by content hash and source",
            ["version", "source"],
            registry=registry,
        )
        self.last_error: str | None = None
        self._compiled = CompiledPolicy(
            initial if initial is not None else load_default_policy_set(), pool_size=pool_size
        )
        self._publish_version()
        self._own_executor = executor is None
        self._executor = executor or new_policy_executor(pool_size)

    # --- state -------------------------------------------------------------

    @property
    def version(self) -> str:
        """Content hash of the active policy set."""
        return self._compiled.version

    @property
    def policy_set(self) -> PolicySet:
        return self._compiled.policy_set

    @property
    def source(self) -> str:
        return self._compiled.policy_set.source

    def _publish_version(self) -> None:
        self._version_info.clear()
        self._version_info.labels(version=self.version, source=self.source or "unknown").set(1)

    # --- loading -------------------------------------------------------------

    def load(
        self,
        modules: Mapping[str, str],
        data: Mapping[str, Any] | str | bytes | None = None,
        *,
        source: str = "",
    ) -> bool:
        """Validate and activate a candidate; True if the active policy changed.

        Raises PolicyLoadError (message says why) and keeps the current policy
        when the candidate is invalid. Blocking (compiling takes 0.1 to 0.3 s):
        from async code use ``await asyncio.to_thread(policy.load, ...)``.
        """
        try:
            candidate = policy_set_from_sources(modules, data, source=source)
        except PolicyLoadError as exc:
            self._failed(str(exc))
            raise
        return self.load_policy_set(candidate)

    def load_policy_set(self, candidate: PolicySet) -> bool:
        """Like :meth:`load`, for a ready-made PolicySet."""
        with self._load_lock:
            if candidate.version == self.version:
                self._reloads.labels(result="unchanged").inc()
                self.last_error = None
                return False
            try:
                compiled = CompiledPolicy(candidate, pool_size=self._pool_size)
            except PolicyLoadError as exc:
                self._failed(str(exc))
                raise
            self._compiled = compiled  # atomic swap; running decisions keep the old one
            self.last_error = None
            self._reloads.labels(result="success").inc()
            self._publish_version()
            log.info("safety policy %s active (source %s)", compiled.version, candidate.source)
            return True

    def _failed(self, message: str) -> None:
        self.last_error = message
        self._reloads.labels(result="failure").inc()
        log.warning("safety policy rejected, keeping %s: %s", self.version, message)

    # --- PolicyPort -------------------------------------------------------------

    async def decide(self, input_document: dict[str, Any]) -> PolicyDecision:
        compiled = self._compiled
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, compiled.decide, input_document)
        except RuntimeError as exc:  # executor shut down
            raise PolicyUnavailable(f"embedded policy engine is not running: {exc}") from exc

    def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)


# --- the ConfigMap source -----------------------------------------------------------


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


class ConfigMapClient(Protocol):
    """The two Kubernetes calls the source needs; objects are plain JSON dicts."""

    async def get(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        """The ConfigMap (None if absent) and the list's resourceVersion."""
        ...

    def watch(
        self,
        namespace: str,
        name: str,
        resource_version: str,
        *,
        timeout_seconds: int,
        inactivity_timeout: float,
    ) -> AsyncIterator[dict[str, Any]]:
        """Raw watch events ``{"type", "object"}`` (BOOKMARK and ERROR included).

        Ends when the server closes the stream; raises TimeoutError when no
        line arrives within ``inactivity_timeout``; raises WatchExpired on an
        HTTP 410.
        """
        ...


class KubernetesConfigMapClient:
    """ConfigMapClient on a shared kubernetes_asyncio ``ApiClient``.

    The watch reads the raw stream itself (``_preload_content=False``) instead
    of ``kubernetes_asyncio.watch.Watch``, which opens its own ApiClient and
    retries a 410 only once.
    """

    def __init__(self, api_client: Any, *, request_timeout: float = 10.0, connect_timeout: float = 5.0) -> None:
        from kubernetes_asyncio.client import CoreV1Api

        self._api_client = api_client
        self._core = CoreV1Api(api_client)
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout

    async def get(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        result = await self._core.list_namespaced_config_map(
            namespace,
            field_selector=f"metadata.name={name}",
            _request_timeout=self._request_timeout,
        )
        items = list(result.items or [])
        obj = self._api_client.sanitize_for_serialization(items[0]) if items else None
        return obj, str(result.metadata.resource_version or "")

    async def watch(
        self,
        namespace: str,
        name: str,
        resource_version: str,
        *,
        timeout_seconds: int,
        inactivity_timeout: float,
    ) -> AsyncIterator[dict[str, Any]]:
        import aiohttp
        from kubernetes_asyncio.client.exceptions import ApiException

        response: Any = await self._core.list_namespaced_config_map(
            namespace,
            field_selector=f"metadata.name={name}",
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self._connect_timeout,
                sock_connect=self._connect_timeout,
                sock_read=inactivity_timeout,
            ),
        )
        try:
            if response.status == 410:
                raise WatchExpired(f"watch from resourceVersion {resource_version}: 410 Gone")
            if response.status != 200:
                body = (await response.read())[:300].decode(errors="replace")
                raise ApiException(status=response.status, reason=body)
            while True:
                line = await asyncio.wait_for(response.content.readline(), inactivity_timeout)
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            response.close()


ErrorCallback = Callable[[str], Awaitable[None] | None]
ChangeCallback = Callable[[str], Awaitable[None] | None]


def _configmap_rv(obj: Mapping[str, Any] | None) -> str:
    if not isinstance(obj, Mapping):
        return ""
    metadata = obj.get("metadata")
    return str(metadata.get("resourceVersion") or "") if isinstance(metadata, Mapping) else ""


class ConfigMapPolicySource:
    """Keeps a ReloadablePolicy in step with the ``safety-policies`` ConfigMap.

    The ConfigMap's ``*.rego`` keys are the modules and its ``data.json`` key
    the data document; either may be omitted, and the baked-in one is used
    instead (so a ConfigMap with only ``data.json`` just tunes the knobs). An
    absent or deleted ConfigMap means the baked-in policy set. A broken update
    calls ``on_error(message)`` (the controller emits an Event / condition) and
    the last good policy stays active; the same broken content is reported
    once. ``on_change(version)`` is called after a new policy became active.
    ``fallback`` (the baked-in set) defaults to the set ``policy`` holds when the
    source is created.
    """

    def __init__(
        self,
        policy: ReloadablePolicy,
        api_client: Any = None,
        *,
        namespace: str,
        name: str = DEFAULT_CONFIGMAP_NAME,
        client: ConfigMapClient | None = None,
        fallback: PolicySet | None = None,
        on_error: ErrorCallback | None = None,
        on_change: ChangeCallback | None = None,
        watch_timeout_seconds: int = 300,
        inactivity_timeout: float = 330.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        if client is None:
            if api_client is None:
                raise ValueError("ConfigMapPolicySource needs an api_client or a client")
            client = KubernetesConfigMapClient(api_client)
        self._policy = policy
        self._client = client
        self.namespace = namespace
        self.name = name
        # The baked-in set: what the policy was built with, unless given.
        self._fallback = fallback if fallback is not None else policy.policy_set
        self._on_error = on_error
        self._on_change = on_change
        self._watch_timeout_seconds = watch_timeout_seconds
        self._inactivity_timeout = inactivity_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._failed_version: str | None = None
        self.last_error: str | None = None
        #: Set once the first list has been applied (ready to serve decisions).
        self.synced = asyncio.Event()

    # --- running ------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, forever (until cancelled)."""
        delay = self._retry_initial
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self.resync()
                resource_version = await self.watch_once(resource_version)
                delay = self._retry_initial
            except asyncio.CancelledError:
                raise
            except WatchExpired as exc:
                log.info("policy ConfigMap watch expired (%s); relisting", exc)
                resource_version = None
            except TimeoutError:
                log.warning("policy ConfigMap watch went silent; relisting")
                resource_version = None
            except Exception as exc:
                log.warning(
                    "policy ConfigMap %s/%s: %s: %s; retrying in %.0fs",
                    self.namespace,
                    self.name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                resource_version = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)

    async def resync(self) -> str:
        """List the ConfigMap, apply what is there (or the fallback); the list's resourceVersion."""
        obj, resource_version = await self._client.get(self.namespace, self.name)
        await self.apply(obj)
        self.synced.set()
        return resource_version

    async def watch_once(self, resource_version: str) -> str:
        """Follow one watch request; the resourceVersion to continue from.

        Raises WatchExpired (relist), TimeoutError (dead stream: relist).
        """
        stream = self._client.watch(
            self.namespace,
            self.name,
            resource_version,
            timeout_seconds=self._watch_timeout_seconds,
            inactivity_timeout=self._inactivity_timeout,
        )
        try:
            async for event in stream:
                resource_version = await self.handle_event(event, resource_version)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return resource_version

    async def handle_event(self, event: Mapping[str, Any], resource_version: str) -> str:
        """Apply one raw watch event; the resourceVersion to continue from."""
        kind = event.get("type")
        obj = event.get("object")
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, Mapping) else None
            if code == 410:
                raise WatchExpired(str(obj.get("message", "")) if isinstance(obj, Mapping) else "")
            raise RuntimeError(f"watch error event: {obj}")
        new_rv = _configmap_rv(obj) or resource_version
        if kind == "BOOKMARK":
            return new_rv
        if not isinstance(obj, Mapping):
            return new_rv
        metadata = obj.get("metadata")
        if isinstance(metadata, Mapping) and metadata.get("name") not in (None, self.name):
            return new_rv  # not ours (the field selector should prevent it)
        if kind in ("ADDED", "MODIFIED"):
            await self.apply(obj)
        elif kind == "DELETED":
            await self.apply(None)
        return new_rv

    # --- applying ---------------------------------------------------------------

    def _fallback_set(self) -> PolicySet:
        return self._fallback

    def candidate(self, obj: Mapping[str, Any] | None) -> PolicySet:
        """The policy set a ConfigMap (None: absent) stands for. Raises PolicyLoadError."""
        fallback = self._fallback_set()
        if obj is None:
            return fallback
        raw = obj.get("data")
        data = raw if isinstance(raw, Mapping) else {}
        modules = {k: v for k, v in data.items() if k.endswith(".rego")}
        source = f"configmap:{self.namespace}/{self.name}@{_configmap_rv(obj)}"
        return policy_set_from_sources(
            modules or dict(fallback.modules),
            data[DATA_FILE] if DATA_FILE in data else fallback.data,
            source=source,
        )

    async def apply(self, obj: Mapping[str, Any] | None) -> None:
        """Make the policy match ``obj``; report a broken candidate once."""
        what = f"ConfigMap {self.namespace}/{self.name}" + (
            f" (resourceVersion {_configmap_rv(obj)})" if obj is not None else " (absent)"
        )
        try:
            candidate = self.candidate(obj)
        except PolicyLoadError as exc:
            await self._report(f"{what} rejected: {exc}", key=f"invalid:{_configmap_rv(obj)}")
            return
        if candidate.version == self._failed_version:
            return  # already reported
        try:
            changed = await asyncio.to_thread(self._policy.load_policy_set, candidate)
        except PolicyLoadError as exc:
            await self._report(
                f"{what} rejected, keeping policy {self._policy.version}: {exc}",
                key=candidate.version,
            )
            return
        self._failed_version = None
        self.last_error = None
        if changed and self._on_change is not None:
            await self._call(self._on_change, self._policy.version)

    async def _report(self, message: str, *, key: str) -> None:
        if key == self._failed_version:
            return
        self._failed_version = key
        self.last_error = message
        log.warning("%s", message)
        if self._on_error is not None:
            await self._call(self._on_error, message)

    @staticmethod
    async def _call(callback: Callable[[str], Awaitable[None] | None], value: str) -> None:
        try:
            result = callback(value)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a callback must not stop the source
            log.exception("policy source callback failed")
