"""One exponential backoff for every retry loop (informer, work queue, outbox, polls).

Retry number ``attempt`` (1-based) waits ``min(cap, base * factor ** (attempt - 1))``,
shortened by a random fraction of at most ``jitter``: the delay lies in
``[d * (1 - jitter), d]``, so ``cap`` is a true upper bound and retries of many
clients spread out instead of firing together.

* :func:`delay` -- the pure schedule (inject ``rand`` to make it deterministic).
* :func:`delays` -- the same as an endless iterator.
* :class:`Backoff` -- the schedule plus a failure count: ``next()`` after a failure,
  ``reset()`` after a success.
* :func:`poll` -- call an async check until it holds or a timeout passes, sleeping the
  backoff in between (never past the deadline).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["Backoff", "delay", "delays", "poll"]

Rand = Callable[[], float]


def delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    factor: float = 2.0,
    jitter: float = 0.0,
    rand: Rand = random.random,
) -> float:
    """Seconds to wait before retry ``attempt`` (1-based); see the module docstring."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    _check(base, cap, factor, jitter)
    try:
        d = min(base * factor ** (attempt - 1), cap)
    except OverflowError:  # factor ** attempt beyond a float: long past the cap
        d = cap
    return d * (1.0 - jitter * rand()) if jitter else d


def delays(
    *,
    base: float,
    cap: float,
    factor: float = 2.0,
    jitter: float = 0.0,
    rand: Rand = random.random,
) -> Iterator[float]:
    """The delays of retries 1, 2, 3, ... (endless)."""
    _check(base, cap, factor, jitter)
    for attempt in itertools.count(1):
        yield delay(attempt, base=base, cap=cap, factor=factor, jitter=jitter, rand=rand)


def _check(base: float, cap: float, factor: float, jitter: float) -> None:
    if not 0 < base <= cap:
        raise ValueError("need 0 < base <= cap")
    if factor < 1:
        raise ValueError("need factor >= 1")
    if not 0 <= jitter <= 1:
        raise ValueError("need 0 <= jitter <= 1")


class Backoff:
    """The schedule of :func:`delay` with a failure count (one per retry loop)."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        rand: Rand = random.random,
    ) -> None:
        _check(base, cap, factor, jitter)
        self.base, self.cap, self.factor, self.jitter = base, cap, factor, jitter
        self._rand = rand
        self.failures = 0

    def delay(self, attempt: int) -> float:
        """The delay of retry ``attempt`` (does not count a failure)."""
        return delay(attempt, base=self.base, cap=self.cap, factor=self.factor,
                     jitter=self.jitter, rand=self._rand)

    def next(self) -> float:
        """Count one more failure; the delay before the retry it calls for."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """A success: the next failure waits ``base`` again."""
        self.failures = 0


async def poll(
    check: Callable[[], Awaitable[bool]],
    *,
    backoff: Backoff,
    within: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Await ``check()`` until it returns True (then True), or until ``within`` seconds
    have passed (then False, after one last check at the deadline). Between checks it
    sleeps ``backoff.next()``, cut short at the deadline. Exceptions of ``check``
    propagate (wrap it to retry on them)."""
    deadline = None if within is None else clock() + within
    while True:
        if await check():
            return True
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                return False
            await sleep(min(backoff.next(), left))
        else:
            await sleep(backoff.next())
