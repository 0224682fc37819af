"""Hot-reloadable safety policy: a PolicyPort whose policy set can be swapped at run time.

:class:`ReloadablePolicy` holds the current compiled policy set (embedded
engine). :meth:`ReloadablePolicy.load` validates a candidate completely
(parse, compile, full configuration check, smoke evaluations — see
:class:`kexec.adapters.policy.embedded.CompiledPolicy`) before swapping it in
atomically; a broken candidate raises PolicyLoadError and the last good policy
stays active. In-flight decisions finish on the policy they started with.

:class:`ConfigMapPolicySource` feeds it from the ``safety-policies`` ConfigMap
through the runtime Informer (list, then watch from the list's resourceVersion,
bookmarks, server-side timeout, client-side inactivity timeout, relist on 410
Gone), and falls back to the baked-in policies when the ConfigMap is absent or
deleted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes_asyncio.client import ApiClient
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
from kexec.runtime.informer import Informer

__all__ = [
    "ConfigMapPolicySource",
    "PolicyLoadError",
    "ReloadablePolicy",
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
            self.rejected(str(exc))
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
                self.rejected(str(exc))
                raise
            self._compiled = compiled  # atomic swap; running decisions keep the old one
            self.last_error = None
            self._reloads.labels(result="success").inc()
            self._publish_version()
            log.info("safety policy %s active (source %s)", compiled.version, candidate.source)
            return True

    def rejected(self, message: str) -> None:
        """Count a candidate rejected before or while compiling (kept: the current policy)."""
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

    The ConfigMap is followed by a :class:`kexec.runtime.informer.Informer` on
    ``api_client`` (field selector on its name): list, then watch from the list's
    resourceVersion, bookmarks, server-side timeout, client-side inactivity timeout,
    relist on 410 Gone, backoff from ``retry_initial`` to ``retry_max`` on errors.
    """

    def __init__(
        self,
        policy: ReloadablePolicy,
        api_client: ApiClient,
        *,
        namespace: str,
        name: str = DEFAULT_CONFIGMAP_NAME,
        fallback: PolicySet | None = None,
        on_error: ErrorCallback | None = None,
        on_change: ChangeCallback | None = None,
        watch_timeout_seconds: int = 300,
        inactivity_timeout: float | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        self._policy = policy
        self.namespace = namespace
        self.name = name
        # The baked-in set: what the policy was built with, unless given.
        self._fallback = fallback if fallback is not None else policy.policy_set
        self._on_error = on_error
        self._on_change = on_change
        self._failed_version: str | None = None
        self.last_error: str | None = None
        #: Set once the first list has been applied (ready to serve decisions).
        self.synced = asyncio.Event()
        self.informer = Informer(
            api_client,
            "",
            "v1",
            "configmaps",
            namespace=namespace,
            field_selector=f"metadata.name={name}",
            on_event=self.handle_event,
            timeout_seconds=watch_timeout_seconds,
            inactivity_timeout=inactivity_timeout,
            backoff_base=retry_initial,
            backoff_max=retry_max,
            name=f"configmap {namespace}/{name}",
        )

    # --- running ------------------------------------------------------------

    async def run(self) -> None:
        """Follow the ConfigMap forever (until cancelled)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.informer.run(), name="policy-configmap-informer")
            await self.informer.wait_synced()  # the first list went through handle_event
            if self.informer.get(f"{self.namespace}/{self.name}") is None:
                await self.apply(None)  # absent at start: the baked-in policy
            self.synced.set()

    async def handle_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Apply one informer event (ADDED, MODIFIED, DELETED) of the ConfigMap."""
        metadata = obj.get("metadata")
        if isinstance(metadata, Mapping) and metadata.get("name") not in (None, self.name):
            return  # not ours (the field selector should prevent it)
        if event_type in ("ADDED", "MODIFIED"):
            await self.apply(obj)
        elif event_type == "DELETED":
            await self.apply(None)

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
        except PolicyLoadError as exc:  # e.g. malformed data.json: rejected before compiling
            key = f"invalid:{_configmap_rv(obj)}"
            if key != self._failed_version:
                self._policy.rejected(str(exc))
            await self._report(f"{what} rejected: {exc}", key=key)
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
