"""A list-then-watch informer for any Kubernetes resource, keeping a local cache.

Choice of transport: raw HTTP through the shared ``ApiClient.call_api`` with
``_preload_content=False`` -- one code path for core and custom resources, plain
``dict`` objects (no model deserialization, so what handlers see is exactly the API's
JSON), and full control over what ``kubernetes_asyncio.watch.Watch`` gets wrong for a
long-running controller: it opens a second ``ApiClient`` per ``Watch``, retries a 410
only once, hands BOOKMARKs through as raw dicts and has no inactivity timeout.

Protocol (client-go's reflector):

1. **List** (paginated, ``limit``/``continue``), store every object in :attr:`Informer.cache`
   keyed ``namespace/name`` (or ``name`` when cluster-scoped), emit ``ADDED`` for each,
   then set :attr:`has_synced` (so once it is set, handlers have seen the first list).
   On a *re*-list, emit ``ADDED``/``MODIFIED`` for what is new or changed and a
   synthetic ``DELETED`` (last known state) for what disappeared meanwhile.
2. **Watch** from the list's resourceVersion with ``allowWatchBookmarks=true`` and a
   jittered server-side ``timeoutSeconds``; every event moves the resourceVersion on;
   BOOKMARKs only move the resourceVersion; a stream that ends (server timeout) is
   re-opened from the last resourceVersion without a list.
3. **Dead streams**: no line for ``inactivity_timeout`` seconds (or the stream outliving
   its server timeout by ``grace``) closes the connection and re-watches.
4. **410 Gone** (an ``ERROR`` event or HTTP status): the resourceVersion is too old --
   re-list (step 1), immediately.
5. **Other errors** (network, 5xx, 403 while RBAC settles, ...): exponential backoff with
   jitter (:class:`kexec.runtime.backoff.Backoff`, 0.5 s .. 30 s), then re-watch from the
   last resourceVersion (or re-list if there is none yet).

``transform`` (client-go's ``SetTransform``) rewrites each object before it is cached
and handed out, e.g. :func:`drop_managed_fields`: what nobody reads need not be held.

Handlers are ``on_event(type, obj)``, sync or async, ``type`` in ``ADDED``, ``MODIFIED``,
``DELETED``; they run after the cache is updated. They should be quick (enqueue a key);
an exception in one is logged and does not stop the informer.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from kexec.runtime.backoff import Backoff

__all__ = ["EventHandler", "Informer", "InformerStats", "drop_managed_fields", "object_key",
           "resource_path"]

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict[str, Any]], Awaitable[None] | None]

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


def object_key(obj: dict[str, Any]) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects (client-go's key)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


def drop_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without ``metadata.managedFields`` (server-side apply bookkeeping: often
    the largest part of an object, and never what a controller decides on)."""
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


def resource_path(group: str, version: str, plural: str, namespace: str | None = None) -> str:
    """REST collection path: ``/api/v1/...`` for the core group, ``/apis/g/v/...`` else."""
    base = f"/api/{version}" if group in ("", "core") else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    return f"{base}/{plural}"


class _Expired(Exception):
    """The watched/listed resourceVersion is gone (HTTP 410): re-list."""


@dataclass
class InformerStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    expired: int = 0  # 410s seen
    inactivity_timeouts: int = 0
    errors: int = 0


class Informer:
    """Keeps :attr:`cache` in sync with one resource collection (see module docstring).

    ``api_client`` is shared (one aiohttp session for the whole process). ``namespace``
    None watches all namespaces (or a cluster-scoped resource).
    """

    def __init__(
        self,
        api_client: ApiClient,
        group: str,
        version: str,
        plural: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_event: EventHandler | None = None,
        timeout_seconds: int = 300,
        inactivity_timeout: float | None = None,
        grace: float = 30.0,
        page_size: int = 500,
        request_timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        name: str | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.api_client = api_client
        self.transform = transform
        self.group, self.version, self.plural = group, version, plural
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.path = resource_path(group, version, plural, namespace)
        self.timeout_seconds = timeout_seconds
        self.grace = grace
        # Bookmarks arrive about once a minute and the server closes the stream at
        # timeoutSeconds, so silence longer than that means the stream is dead.
        self.inactivity_timeout = inactivity_timeout
        self.page_size = page_size
        self.request_timeout = request_timeout
        self._backoff = Backoff(backoff_base, backoff_max, jitter=0.5)
        self.name = name or (f"{plural}.{group}" if group else plural)

        self.cache: dict[str, dict[str, Any]] = {}
        self.has_synced = asyncio.Event()
        self.resource_version: str | None = None
        self.stats = InformerStats()
        self._handlers: list[EventHandler] = [on_event] if on_event else []
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public API

    def add_handler(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key)

    def start(self) -> asyncio.Task[None]:
        """Run in a background task (idempotent). Resumes from :attr:`resource_version`
        if it is set (a previous run), else lists first."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"informer-{self.name}")
        return self._task

    async def stop(self) -> None:
        """Cancel the background task and wait for it; the cache is kept as is."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def wait_synced(self) -> None:
        """Wait for the first list (wrap in ``asyncio.timeout`` to bound it)."""
        await self.has_synced.wait()

    async def run(self) -> None:
        """List and watch forever (until cancelled)."""
        while True:
            try:
                if self.resource_version is None:
                    await self._list_and_replace()
                if await self._watch_once():
                    self._backoff.reset()
                else:
                    # The stream ended at once without a single line: do not spin on it.
                    await asyncio.sleep(self._backoff.next())
            except _Expired:
                self.stats.expired += 1
                log.info("%s: resourceVersion %s expired (410): re-listing",
                         self.name, self.resource_version)
                self.resource_version = None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.stats.errors += 1
                delay = self._backoff.next()
                log.warning("%s: list/watch failed (%s: %s); retrying in %.1fs",
                            self.name, type(e).__name__, _short(e), delay)
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------ list

    async def _list_and_replace(self) -> None:
        items: dict[str, dict[str, Any]] = {}
        cont: str | None = None
        rv = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", self.page_size), *self._selectors()]
            if cont:
                query.append(("continue", cont))
            body = await self._get_json(query)
            api_version = body.get("apiVersion")
            list_kind = str(body.get("kind", ""))
            kind = list_kind[: -len("List")] if list_kind.endswith("List") else None
            for obj in body.get("items") or []:
                # list items come without apiVersion/kind; make them look like watch objects
                if api_version:
                    obj.setdefault("apiVersion", api_version)
                if kind:
                    obj.setdefault("kind", kind)
                if self.transform is not None:
                    obj = self.transform(obj)
                items[object_key(obj)] = obj
            meta = body.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or "")
            cont = meta.get("continue") or None
            if not cont:
                break
        self.stats.lists += 1
        events = self._replace(items)
        self.resource_version = rv
        log.debug("%s: listed %d objects at resourceVersion %s", self.name, len(items), rv)
        for event_type, obj in events:
            await self._emit(event_type, obj)
        self.has_synced.set()

    def _replace(self, items: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """Swap the cache content in place; return the events the swap implies."""
        events: list[tuple[str, dict[str, Any]]] = []
        for key, obj in items.items():
            old = self.cache.get(key)
            if old is None:
                events.append((ADDED, obj))
            elif _rv(old) != _rv(obj):
                events.append((MODIFIED, obj))
        for key in [k for k in self.cache if k not in items]:
            events.append((DELETED, self.cache[key]))  # synthetic: last known state
            del self.cache[key]
        self.cache.update(items)
        return events

    async def _get_json(self, query: list[tuple[str, Any]]) -> dict[str, Any]:
        resp = await self.api_client.call_api(
            self.path, "GET", query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=self.request_timeout,
        )
        try:
            data = await resp.read()
            if resp.status == 410:
                raise _Expired()
            if resp.status != 200:
                raise _api_error(resp.status, resp.reason, data)
            result: dict[str, Any] = json.loads(data)
            return result
        finally:
            resp.release()

    # ------------------------------------------------------------------ watch

    async def _watch_once(self) -> bool:
        """One watch request. False if it looked unhealthy: ended within a second
        without delivering a single line."""
        timeout = int(self.timeout_seconds * (1 + random.random()))  # client-go: [t, 2t)
        inactivity = self.inactivity_timeout or (timeout + self.grace)
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", timeout),
            *self._selectors(),
        ]
        if self.resource_version:
            query.append(("resourceVersion", self.resource_version))
        self.stats.watches += 1
        got_line = False
        started = time.monotonic()
        resp = await self.api_client.call_api(
            self.path, "GET", query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False,
            # connect and per-read timeouts; the stream as a whole is bounded below
            _request_timeout=aiohttp.ClientTimeout(
                connect=self.request_timeout, sock_connect=self.request_timeout,
                sock_read=inactivity),
        )
        try:
            if resp.status != 200:
                data = await resp.read()
                if resp.status == 410:
                    raise _Expired()
                raise _api_error(resp.status, resp.reason, data)
            async with asyncio.timeout(timeout + self.grace):
                while True:
                    try:
                        async with asyncio.timeout(inactivity):
                            line = await resp.content.readline()
                    except TimeoutError:
                        self.stats.inactivity_timeouts += 1
                        log.info("%s: watch silent for %.0fs: reconnecting", self.name, inactivity)
                        return got_line or time.monotonic() - started >= 1.0
                    if not line:
                        # the server closed the stream (timeoutSeconds)
                        return got_line or time.monotonic() - started >= 1.0
                    if not line.strip():
                        continue
                    got_line = True
                    await self._handle_line(line)
        except TimeoutError:
            # the whole stream outlived timeoutSeconds + grace: treat as dead
            self.stats.inactivity_timeouts += 1
            log.info("%s: watch open for %.0fs, beyond its server timeout: reconnecting",
                     self.name, time.monotonic() - started)
            return got_line or time.monotonic() - started >= 1.0
        finally:
            resp.close()

    async def _handle_line(self, line: bytes) -> None:
        event = json.loads(line)
        event_type = event.get("type")
        obj = event.get("object") or {}
        if event_type == ERROR:
            code = obj.get("code")
            if code == 410:
                raise _Expired()
            reason = f"{obj.get('reason')}: {obj.get('message')}"
            raise ApiException(status=code or 0, reason=reason)
        rv = _rv(obj)
        if event_type == BOOKMARK:
            self.stats.bookmarks += 1
            if rv:
                self.resource_version = rv
            return
        if event_type not in (ADDED, MODIFIED, DELETED):
            log.warning("%s: ignoring unknown watch event type %r", self.name, event_type)
            return
        if self.transform is not None:
            obj = self.transform(obj)
        key = object_key(obj)
        if event_type == DELETED:
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        if rv:
            self.resource_version = rv
        self.stats.events += 1
        await self._emit(event_type, obj)

    # ------------------------------------------------------------------ helpers

    async def _emit(self, event_type: str, obj: dict[str, Any]) -> None:
        for handler in self._handlers:
            try:
                result = handler(event_type, obj)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: %s handler failed for %s", self.name, event_type,
                              object_key(obj))

    def _selectors(self) -> Iterable[tuple[str, str]]:
        if self.label_selector:
            yield ("labelSelector", self.label_selector)
        if self.field_selector:
            yield ("fieldSelector", self.field_selector)


def _rv(obj: dict[str, Any]) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv else None


def _api_error(status: int, reason: str | None, body: bytes) -> ApiException:
    e = ApiException(status=status, reason=reason)
    e.body = body.decode("utf-8", "replace")  # type: ignore[assignment]  # as call_api does
    return e


def _short(e: BaseException) -> str:
    s = str(e).replace("\n", " ")
    return s if len(s) <= 300 else s[:300] + "..."
