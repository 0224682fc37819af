"""A rate-limited, deduplicating work queue for asyncio (client-go's workqueue semantics).

Guarantees:

* **Dedup** -- a key added several times before a worker takes it is handed out once.
* **Per-key exclusivity** -- a key being processed (between :meth:`WorkQueue.get` and
  :meth:`WorkQueue.done`) is never handed to a second worker. Adding it meanwhile
  marks it dirty; :meth:`WorkQueue.done` puts it back in the queue, once.
* **Delays** -- :meth:`WorkQueue.add_after` keeps one timer per key (the earliest wins).
* **Rate limiting** -- :meth:`WorkQueue.add_rate_limited` waits ``max(per-key
  exponential backoff, overall token bucket)``, like client-go's
  ``DefaultControllerRateLimiter``; :meth:`WorkQueue.forget` resets the key's backoff.
* **Shutdown** -- :meth:`WorkQueue.shutdown` refuses new adds, cancels pending delayed
  adds and *drops keys not yet started*: a controller that lost leadership or got
  SIGTERM must stop acting, and level-triggered reconciles lose nothing (the next
  owner relists). In-flight keys finish; :func:`run_workers` returns once they have.

Everything runs on one event loop; nothing here is thread-safe (nor needs to be).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry

from kexec.runtime.metrics import workqueue_metrics
from kexec.runtime.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimiter,
    default_rate_limiter,
)

__all__ = [
    "BucketRateLimiter",
    "ItemExponentialFailureRateLimiter",
    "MaxOfRateLimiter",
    "QueueShutDown",
    "RateLimiter",
    "WorkQueue",
    "default_rate_limiter",
    "run_workers",
]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class QueueShutDown(Exception):
    """Raised by :meth:`WorkQueue.get` once the queue is shut down."""


# --------------------------------------------------------------------------- rate limiters


class WorkQueue(Generic[K]):
    """See the module docstring. ``name`` labels the queue's metrics."""

    def __init__(
        self,
        name: str = "default",
        rate_limiter: RateLimiter[K] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.rate_limiter: RateLimiter[K] = rate_limiter or default_rate_limiter()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: dict[K, float] = {}  # key -> monotonic start time
        self._added_at: dict[K, float] = {}  # key -> monotonic time it entered _queue
        self._waiting: dict[K, tuple[float, asyncio.TimerHandle]] = {}  # add_after timers
        self._getters: deque[asyncio.Future[None]] = deque()
        self._idle: asyncio.Event | None = None
        self._shutting_down = False

        m = workqueue_metrics(registry if registry is not None else REGISTRY)
        self._m_depth = m.depth.labels(name)
        self._m_adds = m.adds.labels(name)
        self._m_retries = m.retries.labels(name)
        self._m_queue_duration = m.queue_duration.labels(name)
        self._m_work_duration = m.work_duration.labels(name)
        self._m_depth.set(0)
        # Computed at scrape time; weak so the registry does not keep queues alive.
        ref = weakref.ref(self)

        def unfinished() -> float:
            q = ref()
            return q._unfinished_seconds() if q is not None else 0.0

        def longest() -> float:
            q = ref()
            return q._longest_running_seconds() if q is not None else 0.0

        m.unfinished_work.labels(name).set_function(unfinished)
        m.longest_running.labels(name).set_function(longest)

    # ------------------------------------------------------------------ adding

    def add(self, key: K) -> None:
        """Queue ``key`` (no-op if already queued, or shut down; re-queued after ``done``
        if a worker holds it now)."""
        if self._shutting_down or key in self._dirty:
            return
        self._m_adds.inc()
        self._dirty.add(key)
        if key in self._processing:
            return  # done() re-queues it: one worker per key at a time
        self._push(key)

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds. If it is already waiting, the earlier
        deadline wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        ready_at = loop.time() + delay
        waiting = self._waiting.get(key)
        if waiting is not None:
            if waiting[0] <= ready_at:
                return
            waiting[1].cancel()
        handle = loop.call_at(ready_at, self._fire, key)
        self._waiting[key] = (ready_at, handle)

    def add_rate_limited(self, key: K) -> None:
        """Queue ``key`` once the rate limiter allows it (records a failure)."""
        if self._shutting_down:
            return
        self._m_retries.inc()
        self.add_after(key, self.rate_limiter.when(key))

    def forget(self, key: K) -> None:
        """Reset the key's backoff (call on success). Does not dequeue it."""
        self.rate_limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        return self.rate_limiter.num_requeues(key)

    # ------------------------------------------------------------------ taking

    async def get(self) -> K:
        """Wait for a key and take it (the caller must call :meth:`done` with it).

        Raises :class:`QueueShutDown` once the queue is shut down.
        """
        while not self._queue:
            if self._shutting_down:
                raise QueueShutDown(self.name)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                try:
                    self._getters.remove(waiter)
                except ValueError:
                    pass
                if waiter.done() and not waiter.cancelled():
                    self._wakeup_next()  # pass our wake-up on to another getter
                raise
        if self._shutting_down:
            raise QueueShutDown(self.name)
        key = self._queue.popleft()
        now = time.monotonic()
        self._m_depth.set(len(self._queue))
        added = self._added_at.pop(key, None)
        if added is not None:
            self._m_queue_duration.observe(now - added)
        self._processing[key] = now
        self._dirty.discard(key)
        if self._idle is not None:
            self._idle.clear()
        return key

    def done(self, key: K) -> None:
        """Release ``key``; if it was added meanwhile, it goes back into the queue."""
        started = self._processing.pop(key, None)
        if started is None:
            return
        self._m_work_duration.observe(time.monotonic() - started)
        if key in self._dirty and not self._shutting_down:
            self._push(key)
        if not self._processing and self._idle is not None:
            self._idle.set()

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Refuse new keys, drop pending and delayed ones, wake every waiting worker."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        self._queue.clear()
        self._dirty.clear()
        self._added_at.clear()
        self._m_depth.set(0)
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    async def wait_idle(self) -> None:
        """Wait until no key is being processed."""
        if not self._processing:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()
        await self._idle.wait()

    def __len__(self) -> int:
        """Keys ready to be taken (not counting delayed or in-flight keys)."""
        return len(self._queue)

    @property
    def processing(self) -> frozenset[K]:
        return frozenset(self._processing)

    @property
    def delayed(self) -> int:
        """Keys waiting for an ``add_after``/``add_rate_limited`` timer."""
        return len(self._waiting)

    # ------------------------------------------------------------------ internals

    def _push(self, key: K) -> None:
        self._queue.append(key)
        self._added_at[key] = time.monotonic()
        self._m_depth.set(len(self._queue))
        self._wakeup_next()

    def _wakeup_next(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _fire(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    # These two run at scrape time, possibly in another thread (the /metrics handler
    # renders off the event loop): copy the values first (atomic under the GIL).
    def _unfinished_seconds(self) -> float:
        now = time.monotonic()
        return sum(now - t for t in tuple(self._processing.values()))

    def _longest_running_seconds(self) -> float:
        started = tuple(self._processing.values())
        return time.monotonic() - min(started) if started else 0.0


# --------------------------------------------------------------------------- workers

async def run_workers(
    queue: WorkQueue[K],
    handler: Callable[[K], Awaitable[float | None]],
    workers: int,
    *,
    logger: logging.Logger | None = None,
) -> None:
    """Run ``workers`` concurrent workers over ``queue`` until it is shut down.

    ``handler(key)`` returns seconds after which to requeue the key, or ``None`` when
    done with it (its backoff is forgotten either way); raising re-adds the key
    rate-limited (exponential backoff) and logs the exception with the key.
    Returns when the queue is shut down and every in-flight handler has finished.
    Cancelling this coroutine cancels the in-flight handlers.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    lg = logger or log

    async def worker() -> None:
        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            try:
                requeue_after = await handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                lg.exception(
                    "reconcile of %r failed (queue %s, retry %d)",
                    key, queue.name, queue.num_requeues(key) + 1,
                )
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
                if requeue_after is not None:
                    queue.add_after(key, requeue_after)
            finally:
                queue.done(key)

    async with asyncio.TaskGroup() as tg:
        for i in range(workers):
            tg.create_task(worker(), name=f"{queue.name}-worker-{i}")
