"""Rate limiters for the work queue (client-go's ``DefaultControllerRateLimiter``): per-key
exponential backoff, an overall token bucket, and the max of several."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

from kexec.runtime.backoff import delay

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class RateLimiter(Protocol[K_contra]):
    def when(self, key: K_contra) -> float:
        """Seconds to wait before the key may be retried (records one more failure)."""
        ...

    def forget(self, key: K_contra) -> None:
        """Stop tracking the key (it succeeded)."""
        ...

    def num_requeues(self, key: K_contra) -> int:
        """Failures recorded for the key since the last :meth:`forget`."""
        ...


class ItemExponentialFailureRateLimiter(Generic[K]):
    """``base * 2**failures`` per key, capped at ``max_delay`` (first retry waits ``base``)."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 60.0) -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures: dict[K, int] = {}

    def when(self, key: K) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        return delay(failures, base=self.base_delay, cap=self.max_delay)

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self._failures.get(key, 0)


class BucketRateLimiter(Generic[K]):
    """Overall token bucket (``qps`` refill, ``burst`` capacity), reservation style.

    Like ``golang.org/x/time/rate``'s ``Reserve().Delay()``: every call takes a token,
    possibly going into debt, and the returned delay is the time until that token
    exists. So a storm of retries is spread out at ``qps`` instead of all firing at once.
    """

    def __init__(
        self, qps: float = 50.0, burst: int = 300, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("need qps > 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def when(self, key: K) -> float:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, key: K) -> None:
        pass

    def num_requeues(self, key: K) -> int:
        return 0


class MaxOfRateLimiter(Generic[K]):
    """The longest delay of several limiters (all of them record the failure)."""

    def __init__(self, *limiters: RateLimiter[K]) -> None:
        if not limiters:
            raise ValueError("need at least one limiter")
        self.limiters = limiters

    def when(self, key: K) -> float:
        return max(limiter.when(key) for limiter in self.limiters)

    def forget(self, key: K) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        return max(limiter.num_requeues(key) for limiter in self.limiters)


def default_rate_limiter(
    base_delay: float = 0.005, max_delay: float = 60.0, qps: float = 50.0, burst: int = 300
) -> MaxOfRateLimiter[K]:
    """client-go's ``DefaultControllerRateLimiter``: per-key exponential + overall bucket."""
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(base_delay, max_delay), BucketRateLimiter(qps, burst)
    )


# --------------------------------------------------------------------------- queue


