"""Lease-based leader election (``coordination.k8s.io/v1`` Lease), client-go semantics.

Why not ``kubernetes_asyncio.leaderelection`` (v36): it has no release (a standby waits
the full lease duration after every rollout), no per-request timeout (a hung renew can
outlive the lease: two leaders), formats times with naive local ``datetime`` + "Z"
(wrong outside UTC; drops microseconds), and logs every optimistic-concurrency
conflict as an exception. This is the same algorithm, small and explicit:

* A candidate GETs the Lease every ``retry_period`` (small jitter). It takes it when it
  does not exist (create), when ``holderIdentity`` is empty (released), or when the
  record has not changed for ``leaseDurationSeconds`` *as measured on the local
  monotonic clock since this candidate first saw that record* (no cross-node clock
  comparison, like client-go's ``observedTime``). Writes carry the resourceVersion, so
  of two racing candidates exactly one wins (the other gets 409 Conflict).
* The leader renews every ``retry_period``. If it cannot renew within
  ``renew_deadline`` (< lease duration), or sees another holder, it stops leading at
  once: ``is_leader`` turns False, the leading task is cancelled and awaited, then
  ``on_stopped_leading`` runs. Stopping by ``retry_period + renew_deadline`` after the
  last successful renew keeps it ahead of any standby's ``lease_duration``.
* On a graceful stop (``run`` cancelled, or the leading coroutine raising),
  the leader releases the Lease (empty holder, ``leaseDurationSeconds: 1``) *after*
  its work has stopped, so a standby takes over within one ``retry_period``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from kexec.runtime.backoff import Backoff, poll

__all__ = ["LeaderElector", "default_identity"]

log = logging.getLogger(__name__)


def default_identity() -> str:
    """``$POD_NAME`` (or the hostname) plus a random suffix: unique per process."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _micro_time(dt: datetime) -> str:
    # metav1.MicroTime: RFC 3339 with exactly 6 fractional digits
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Elect one leader among processes sharing ``namespace/name`` (a Lease)."""

    def __init__(
        self,
        api_client: ApiClient,
        namespace: str,
        name: str,
        identity: str | None = None,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        request_timeout: float | None = None,
        release_on_cancel: bool = True,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period > 0")
        self.api_client = api_client
        self.namespace, self.name = namespace, name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.request_timeout = request_timeout or min(5.0, renew_deadline / 2)
        self.release_on_cancel = release_on_cancel
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._is_leader = False
        self._running = False  # inside run(), leading
        self._lease: dict[str, Any] | None = None  # last Lease read or written
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, rv) last seen
        self._observed_at = 0.0  # monotonic time _observed changed
        self._last_renew = 0.0  # monotonic time of our last successful write
        self.observed_holder: str | None = None

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    # ------------------------------------------------------------------ main loop

    async def run(
        self,
        on_started_leading: Callable[[], Awaitable[Any]],
        on_stopped_leading: Callable[[], Any] | None = None,
    ) -> None:
        """Wait to become leader, then run ``on_started_leading()`` as a task while leading.

        Returning from ``on_started_leading`` does not end leadership (it may just set
        things up); raising does: the lease is released and the exception re-raised.
        ``run`` returns when leadership is lost (renew failed within ``renew_deadline``,
        or another holder appeared); the leading task is cancelled and awaited first,
        then ``on_stopped_leading()`` (sync or async) runs. Cancelling ``run`` stops the
        work, releases the lease (if ``release_on_cancel``) and re-raises
        CancelledError. After a loss, exit the process (controller-runtime does) or call
        ``run`` again to stand by.
        """
        await self._acquire()
        self._is_leader = self._running = True
        log.info("%s: became leader of lease %s/%s", self.identity, self.namespace, self.name)
        leading = asyncio.create_task(_as_coroutine(on_started_leading), name="leading")
        renewing = asyncio.create_task(self._renew_loop(), name="lease-renew")
        release = True
        try:
            pending = {leading, renewing}
            while renewing in pending:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if leading.done() and (leading.cancelled() or leading.exception()):
                    break  # the work failed: step down
            if renewing.done():
                release = False  # lost: the lease is not ours to release
        except asyncio.CancelledError:
            release = self.release_on_cancel
            raise
        finally:
            self._is_leader = self._running = False
            for task in (renewing, leading):
                task.cancel()
            # the work must have stopped before anyone else may start
            await asyncio.gather(renewing, leading, return_exceptions=True)
            if release:
                try:
                    async with asyncio.timeout(self.request_timeout * 2):
                        await self.release()
                except Exception as e:  # best effort: the lease expires anyway
                    log.warning("%s: releasing lease failed: %s", self.identity, e)
            log.info("%s: stopped leading", self.identity)
            if on_stopped_leading is not None:
                result = on_stopped_leading()
                if inspect.isawaitable(result):
                    await result
        if not leading.cancelled() and leading.exception() is not None:
            raise leading.exception()  # type: ignore[misc]

    async def _acquire(self) -> None:
        # Poll every retry_period, jittered up to 20% longer (client-go's JitterUntil):
        # a constant delay of 1.2 * retry_period, shortened by up to 1/6 of it.
        period = 1.2 * self.retry_period
        await poll(self._try_acquire_or_renew, backoff=Backoff(period, period, jitter=1 / 6))

    async def _renew_loop(self) -> None:
        """Returns when leadership is lost."""
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                async with asyncio.timeout(self.renew_deadline):
                    while not await self._try_acquire_or_renew():
                        if self.observed_holder not in (None, self.identity):
                            log.warning("%s: lease taken by %s", self.identity,
                                        self.observed_holder)
                            return
                        await asyncio.sleep(self.retry_period)
            except TimeoutError:
                log.warning("%s: could not renew lease within %.0fs: stepping down",
                            self.identity, self.renew_deadline)
                return

    # ------------------------------------------------------------------ lease I/O

    async def _try_acquire_or_renew(self) -> bool:
        try:
            return await self._try_acquire_or_renew_once()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.info("%s: lease %s/%s attempt failed: %s", self.identity, self.namespace,
                     self.name, e)
            return False

    async def _try_acquire_or_renew_once(self) -> bool:
        now = datetime.now(UTC)
        # fast path: the leader writes over the lease it last wrote, no GET
        if self._is_leader and self._lease is not None:
            if await self._write(self._renewed(self._lease, now)):
                return True
        status, lease = await self._request("GET", f"{self._path}/{self.name}")
        if status == 404:
            return await self._create(now)
        if status != 200:
            raise _api_error(status, lease)
        self._lease = lease
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self.observed_holder = holder or None
        record = (holder, spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
        mono = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, mono
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and self._observed_at + duration > mono:
            return False  # someone else holds a lease that has not expired
        return await self._write(self._renewed(lease, now))

    def _renewed(self, lease: dict[str, Any], now: datetime) -> dict[str, Any]:
        spec = dict(lease.get("spec") or {})
        ours = spec.get("holderIdentity") == self.identity
        if not ours:
            spec["acquireTime"] = _micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(self.lease_duration)
        spec["renewTime"] = _micro_time(now)
        return {**lease, "spec": spec}

    async def _create(self, now: datetime) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        status, lease = await self._request("POST", self._path, body)
        if status == 409:
            return False  # another candidate created it first
        if status not in (200, 201):
            raise _api_error(status, lease)
        self._took(lease)
        return True

    async def _write(self, lease: dict[str, Any]) -> bool:
        status, result = await self._request("PUT", f"{self._path}/{self.name}", lease)
        if status == 409:
            self._lease = None  # stale: re-read next time
            return False
        if status != 200:
            raise _api_error(status, result)
        self._took(result)
        return True

    def _took(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        self._last_renew = time.monotonic()
        spec = lease.get("spec") or {}
        self.observed_holder = spec.get("holderIdentity") or None
        self._observed = (spec.get("holderIdentity") or "", spec.get("renewTime"),
                          lease["metadata"].get("resourceVersion"))
        self._observed_at = self._last_renew

    async def release(self) -> bool:
        """Give the lease up now (empty holder) if we hold it. For after ``run`` has
        returned (``run`` itself releases on a graceful stop); while ``run`` is leading,
        cancel it instead. Returns True if released."""
        if self._running:
            raise RuntimeError("release() while run() is leading: cancel run() instead")
        self._is_leader = False
        for _ in range(2):
            lease = self._lease
            if lease is None:
                status, lease = await self._request("GET", f"{self._path}/{self.name}")
                if status != 200:
                    return False
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return False
            now = _micro_time(datetime.now(UTC))
            spec.pop("holderIdentity", None)
            spec.update(leaseDurationSeconds=1, acquireTime=now, renewTime=now)
            status, result = await self._request(
                "PUT", f"{self._path}/{self.name}", {**lease, "spec": spec}
            )
            if status == 200:
                self._lease = None
                self.observed_holder = None
                log.info("%s: released lease %s/%s", self.identity, self.namespace, self.name)
                return True
            if status != 409:
                raise _api_error(status, result)
            self._lease = None  # conflict: re-read and try once more
        return False

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        resp = await self.api_client.call_api(
            path, method, body=body,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=self.request_timeout,
        )
        try:
            data = await resp.read()
        finally:
            resp.release()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data.decode("utf-8", "replace")}
        return resp.status, decoded


async def _as_coroutine(fn: Callable[[], Awaitable[Any]]) -> Any:
    return await fn()


def _api_error(status: int, body: dict[str, Any]) -> ApiException:
    e = ApiException(status=status, reason=str(body.get("reason") or ""))
    e.body = json.dumps(body)  # type: ignore[assignment]  # str, as call_api does
    return e
