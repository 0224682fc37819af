"""The one backoff schedule and the poll helper (kexec.runtime.backoff)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kexec.runtime.backoff import Backoff, delay, delays, poll


def test_doubles_from_base_up_to_the_cap() -> None:
    assert list(itertools.islice(delays(base=0.5, cap=5.0), 6)) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert delay(3, base=1.0, cap=100.0, factor=3.0) == 9.0
    assert delay(10_000, base=0.5, cap=30.0) == 30.0  # no float overflow


def test_jitter_only_shortens() -> None:
    assert delay(1, base=2.0, cap=2.0, jitter=0.5, rand=lambda: 0.0) == 2.0
    assert delay(1, base=2.0, cap=2.0, jitter=0.5, rand=lambda: 1.0) == 1.0
    assert delay(1, base=2.0, cap=2.0, jitter=0.2, rand=lambda: 0.5) == pytest.approx(1.8)


@given(
    attempt=st.integers(1, 5000),
    base=st.floats(0.001, 10),
    spread=st.floats(1, 1000),
    factor=st.floats(1, 10),
    jitter=st.floats(0, 1),
    r=st.floats(0, 1),
)
def test_every_delay_lies_between_the_jittered_and_the_plain_bound(
    attempt: int, base: float, spread: float, factor: float, jitter: float, r: float
) -> None:
    cap = base * spread
    plain = delay(attempt, base=base, cap=cap, factor=factor)
    jittered = delay(attempt, base=base, cap=cap, factor=factor, jitter=jitter, rand=lambda: r)
    assert base <= plain <= cap
    assert plain * (1 - jitter) - 1e-9 <= jittered <= plain


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0, "cap": 1}, {"base": 2, "cap": 1}, {"base": 1, "cap": 2, "factor": 0.5},
     {"base": 1, "cap": 2, "jitter": 1.5}],
)
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
    with pytest.raises(ValueError):
        delay(1, **kwargs)


def test_backoff_counts_failures_and_resets() -> None:
    b = Backoff(0.1, 1.0)
    assert [b.next() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert b.failures == 5
    assert b.delay(1) == pytest.approx(0.1) and b.failures == 5  # delay() does not count
    b.reset()
    assert b.failures == 0 and b.next() == pytest.approx(0.1)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_poll_returns_true_once_the_check_holds() -> None:
    t = FakeTime()
    answers = iter([False, False, True])

    async def check() -> bool:
        return next(answers)

    assert await poll(check, backoff=Backoff(0.05, 0.1), within=10, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == pytest.approx([0.05, 0.1])


async def test_poll_gives_up_at_the_deadline_after_a_last_check() -> None:
    t = FakeTime()
    checks: list[float] = []

    async def check() -> bool:
        checks.append(t.now)
        return False

    assert not await poll(check, backoff=Backoff(0.4, 1.0), within=1.0, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == pytest.approx([0.4, 0.6])  # the second sleep is cut at the deadline
    assert checks == pytest.approx([0.0, 0.4, 1.0])


async def test_poll_without_timeout_and_check_errors_propagate() -> None:
    t = FakeTime()
    calls = 0

    async def check() -> bool:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("boom")
        return False

    with pytest.raises(RuntimeError, match="boom"):
        await poll(check, backoff=Backoff(1, 1), sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [1, 1, 1]
