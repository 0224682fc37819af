"""WorkQueue: dedup, per-key exclusivity, backoff, delays, shutdown, run_workers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from kexec.runtime.workqueue import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    QueueShutDown,
    WorkQueue,
    run_workers,
)


def make_queue(name: str = "test", base: float = 0.005, max_delay: float = 60.0,
               registry: CollectorRegistry | None = None) -> WorkQueue[str]:
    return WorkQueue(
        name,
        rate_limiter=MaxOfRateLimiter(
            ItemExponentialFailureRateLimiter(base, max_delay), BucketRateLimiter(1e6, 10**6)
        ),
        registry=registry or CollectorRegistry(),
    )


async def get_now(q: WorkQueue[str], within: float = 0.5) -> str:
    return await asyncio.wait_for(q.get(), within)


async def nothing_ready(q: WorkQueue[str], wait: float = 0.02) -> bool:
    try:
        await asyncio.wait_for(q.get(), wait)
    except TimeoutError:
        return True
    return False


# --------------------------------------------------------------------------- basics


async def test_dedup_before_processing() -> None:
    q = make_queue()
    for _ in range(5):
        q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    assert [await get_now(q), await get_now(q)] == ["a", "b"]  # FIFO, once each
    assert await nothing_ready(q)


async def test_add_while_processing_requeues_once_after_done() -> None:
    q = make_queue()
    q.add("a")
    key = await get_now(q)
    q.add("a")
    q.add("a")
    assert len(q) == 0, "a key being processed must not be handed out again"
    assert await nothing_ready(q)
    q.done(key)
    assert len(q) == 1
    assert await get_now(q) == "a"
    q.done("a")
    assert len(q) == 0


async def test_done_without_re_add_does_not_requeue() -> None:
    q = make_queue()
    q.add("a")
    q.done(await get_now(q))
    assert len(q) == 0 and not q.processing


async def test_exclusivity_under_concurrency() -> None:
    """Many workers, few keys, keys re-added constantly: never two workers on one key."""
    q = make_queue()
    keys = [f"k{i}" for i in range(5)]
    active: Counter[str] = Counter()
    processed: Counter[str] = Counter()
    max_seen = 0
    rng = random.Random(7)

    async def handler(key: str) -> float | None:
        nonlocal max_seen
        active[key] += 1
        max_seen = max(max_seen, active[key])
        await asyncio.sleep(rng.random() * 0.002)
        q.add(rng.choice(keys))  # handlers re-adding keys (their own included)
        await asyncio.sleep(0)
        active[key] -= 1
        processed[key] += 1
        return None

    async def producer() -> None:
        for _ in range(400):
            q.add(rng.choice(keys))
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        q.shutdown()

    await asyncio.wait_for(asyncio.gather(run_workers(q, handler, workers=16), producer()), 5)
    assert max_seen == 1, f"a key was processed by {max_seen} workers at once"
    assert set(processed) == set(keys)
    assert sum(processed.values()) >= len(keys)


# --------------------------------------------------------------------------- rate limiting


def test_exponential_backoff_grows_caps_and_forgets() -> None:
    rl: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(0.005, 60.0)
    delays = [rl.when("a") for _ in range(16)]
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert delays[-1] == 60.0
    assert rl.num_requeues("a") == 16
    assert rl.when("b") == 0.005, "backoff is per key"
    for _ in range(100):
        rl.when("a")
    assert rl.when("a") == 60.0  # no overflow at large exponents
    rl.forget("a")
    assert rl.num_requeues("a") == 0
    assert rl.when("a") == 0.005


def test_token_bucket_allows_burst_then_spreads_at_qps() -> None:
    now = [100.0]
    rl: BucketRateLimiter[str] = BucketRateLimiter(qps=10, burst=3, clock=lambda: now[0])
    assert [rl.when("x") for _ in range(3)] == [0, 0, 0]
    assert [round(rl.when("x"), 6) for _ in range(3)] == [0.1, 0.2, 0.3]
    now[0] += 1.0  # refills the debt (0.3 s) and then the burst, capped at 3 tokens
    assert [rl.when("x") for _ in range(3)] == [0, 0, 0]
    assert round(rl.when("x"), 6) == 0.1


def test_max_of_limiters() -> None:
    now = [0.0]
    rl: MaxOfRateLimiter[str] = MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(0.005, 60.0),
        BucketRateLimiter(1, 1, clock=lambda: now[0]),
    )
    assert rl.when("a") == 0.005  # bucket has a token: the per-key backoff wins
    assert rl.when("b") == 1.0  # bucket empty: its delay wins
    assert rl.num_requeues("a") == 1
    rl.forget("a")
    assert rl.num_requeues("a") == 0


async def test_add_rate_limited_waits_and_forget_resets() -> None:
    q = make_queue(base=0.04)
    q.add_rate_limited("a")  # 40 ms
    assert await nothing_ready(q, 0.02)
    t0 = time.monotonic()
    assert await get_now(q) == "a"
    q.done("a")
    q.add_rate_limited("a")  # 80 ms now
    t1 = time.monotonic()
    assert await get_now(q) == "a"
    waited = time.monotonic() - t1
    assert waited >= 0.07, waited
    assert q.num_requeues("a") == 2
    q.done("a")
    q.forget("a")
    assert q.num_requeues("a") == 0
    q.add_rate_limited("a")
    t2 = time.monotonic()
    assert await get_now(q) == "a"
    assert time.monotonic() - t2 < 0.07
    assert t0 > 0


# --------------------------------------------------------------------------- delays


async def test_add_after_orders_by_deadline() -> None:
    q = make_queue()
    q.add_after("late", 0.06)
    q.add_after("early", 0.02)
    q.add_after("mid", 0.04)
    q.add_after("now", 0)
    assert q.delayed == 3
    got = [await get_now(q) for _ in range(4)]
    assert got == ["now", "early", "mid", "late"]
    assert q.delayed == 0


async def test_add_after_keeps_earliest_deadline_and_dedups() -> None:
    q = make_queue()
    q.add_after("a", 0.03)
    q.add_after("a", 5.0)  # later: ignored
    q.add_after("a", 0.01)  # earlier: replaces
    assert q.delayed == 1
    assert await get_now(q, 0.2) == "a"
    q.done("a")
    assert await nothing_ready(q, 0.05), "the replaced timers must not fire again"


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_wakes_waiting_getters_and_drops_pending() -> None:
    q = make_queue()
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.add_after("delayed", 0.01)
    q.shutdown()
    for g in getters:
        with pytest.raises(QueueShutDown):
            await asyncio.wait_for(g, 0.5)
    q.add("late")
    assert len(q) == 0
    await asyncio.sleep(0.03)
    assert len(q) == 0 and q.delayed == 0, "delayed adds are cancelled by shutdown"


async def test_run_workers_shutdown_drains_in_flight_cleanly() -> None:
    q = make_queue()
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def handler(key: str) -> float | None:
        started.set()
        await release.wait()
        finished.append(key)
        return None

    runner = asyncio.create_task(run_workers(q, handler, workers=1))
    q.add("in-flight")
    await asyncio.wait_for(started.wait(), 0.5)
    q.add("never-started")  # queued behind the busy single worker
    q.add_after("delayed", 0.01)
    assert len(q) == 1
    q.shutdown()
    q.add("after-shutdown")
    assert not runner.done(), "run_workers waits for in-flight handlers"
    release.set()
    await asyncio.wait_for(runner, 1)
    await asyncio.sleep(0.02)
    assert finished == ["in-flight"], "pending keys are dropped, in-flight ones finish"
    assert not q.processing and len(q) == 0 and q.delayed == 0


async def test_run_workers_requeue_after_error_and_logging(
        caplog: pytest.LogCaptureFixture) -> None:
    reg = CollectorRegistry()
    q = make_queue(base=0.001, registry=reg)
    calls: Counter[str] = Counter()
    settled = asyncio.Event()

    async def handler(key: str) -> float | None:
        calls[key] += 1
        if calls["flaky"] >= 3 and calls["periodic"] >= 2:
            settled.set()
        if key == "flaky" and calls[key] < 3:
            raise RuntimeError("boom")
        if key == "periodic" and calls[key] < 2:
            return 0.01
        return None

    runner = asyncio.create_task(run_workers(q, handler, workers=2))
    with caplog.at_level(logging.ERROR):
        q.add("flaky")
        q.add("periodic")
        await asyncio.wait_for(settled.wait(), 1)
        await asyncio.sleep(0.03)
    q.shutdown()
    await asyncio.wait_for(runner, 1)
    assert calls == {"flaky": 3, "periodic": 2}
    assert q.num_requeues("flaky") == 0, "success forgets the backoff"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("'flaky'" in r.getMessage() for r in errors)
    assert all(r.exc_info and "boom" in str(r.exc_info[1]) for r in errors)
    assert reg.get_sample_value("workqueue_retries_total", {"name": "test"}) == 2
    assert reg.get_sample_value("workqueue_adds_total", {"name": "test"}) == 5
    assert reg.get_sample_value("workqueue_work_duration_seconds_count", {"name": "test"}) == 5


async def test_metrics_depth_and_latency() -> None:
    reg = CollectorRegistry()
    q = make_queue("m", registry=reg)
    q.add("a")
    q.add("b")
    q.add("a")
    assert reg.get_sample_value("workqueue_depth", {"name": "m"}) == 2
    assert reg.get_sample_value("workqueue_adds_total", {"name": "m"}) == 2
    await asyncio.sleep(0.01)
    key = await get_now(q)
    assert reg.get_sample_value("workqueue_depth", {"name": "m"}) == 1
    assert reg.get_sample_value("workqueue_queue_duration_seconds_count", {"name": "m"}) == 1
    assert reg.get_sample_value("workqueue_queue_duration_seconds_sum", {"name": "m"}) >= 0.009
    await asyncio.sleep(0.01)
    assert reg.get_sample_value("workqueue_longest_running_processor_seconds", {"name": "m"}) > 0
    q.done(key)
    assert reg.get_sample_value("workqueue_longest_running_processor_seconds", {"name": "m"}) == 0
    # a second queue on the same registry shares the families (no duplicate error)
    q2 = make_queue("other", registry=reg)
    q2.add("x")
    assert reg.get_sample_value("workqueue_depth", {"name": "other"}) == 1
