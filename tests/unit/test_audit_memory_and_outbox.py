"""InMemoryAudit (the fake) and OutboxAudit (buffer + re-send) against the fake."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from kexec.adapters.audit.memory import InMemoryAudit
from kexec.adapters.audit.outbox import OutboxAudit
from kexec.application.ports.audit import AuditUnavailable, ExecutionRecord, TransitionRecord

PHASES = ["Pending", "Validating", "Preparing", "Executing", "Verifying", "Completed"]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def transitions(uid: str, upto: int) -> list[TransitionRecord]:
    """Transitions 0..upto of a straight-through execution."""
    return [
        TransitionRecord(
            execution_uid=uid,
            seq=i,
            time=T0 + timedelta(seconds=i),
            from_phase=PHASES[i - 1] if i else "",
            to_phase=PHASES[i],
            reason=f"Reason{i}",
            message=f"step {i}",
            controller="kexec-0",
        )
        for i in range(upto + 1)
    ]


def execution(uid: str, seq: int, **changes: object) -> ExecutionRecord:
    """The execution snapshot right after transition ``seq``."""
    terminal = seq == len(PHASES) - 1
    rec = ExecutionRecord(
        execution_uid=uid,
        name=f"exec-{uid}",
        namespace="team-a",
        action="scale_deployment",
        parameters={"scaleDeployment": {"namespace": "team-a", "deployment": "web", "replicas": 3}},
        target_namespace="team-a",
        target_kind="Deployment",
        target_name="web",
        phase=PHASES[seq],
        reason=f"Reason{seq}",
        message=f"step {seq}",
        created_at=T0,
        success=True if terminal else None,
        attempts=1 if seq >= 3 else 0,
    )
    return replace(rec, **changes)  # type: ignore[arg-type]


def gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("kexec_audit_unconfirmed_records")


async def record_all(store: object, uid: str, upto: int) -> None:
    for seq in range(upto + 1):
        await store.record(execution(uid, seq), transitions(uid, seq))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- the fake


class TestInMemoryAudit:
    async def test_idempotent_on_uid_and_seq(self) -> None:
        store = InMemoryAudit()
        await store.record(execution("u1", 2), transitions("u1", 2))
        await store.record(execution("u1", 2), transitions("u1", 2))
        assert await store.confirmed_transitions("u1") == 3
        assert [t.seq for t in store.transitions("u1")] == [0, 1, 2]
        assert store.transition_count() == 3

    async def test_a_late_older_record_does_not_move_the_row_backwards(self) -> None:
        store = InMemoryAudit()
        await store.record(execution("u1", 5), transitions("u1", 5))
        await store.record(execution("u1", 2), transitions("u1", 2))
        row = store.execution("u1")
        assert row is not None and row.phase == "Completed" and row.success is True
        # the same seq with newer details does update
        await store.record(execution("u1", 5, attempts=3), transitions("u1", 5)[-1:])
        assert store.execution("u1").attempts == 3  # type: ignore[union-attr]
        # no transitions at all: creates a missing row, never overwrites
        await store.record(execution("u1", 0, phase="Pending"), [])
        assert store.execution("u1").phase == "Completed"  # type: ignore[union-attr]

    async def test_down_raises_and_stores_nothing(self) -> None:
        store = InMemoryAudit()
        store.down = True
        with pytest.raises(AuditUnavailable):
            await store.record(execution("u1", 0), transitions("u1", 0))
        with pytest.raises(AuditUnavailable):
            await store.confirmed_transitions("u1")
        store.down = False
        assert await store.confirmed_transitions("u1") == 0
        store.fail_next(1)
        with pytest.raises(AuditUnavailable):
            await store.record(execution("u1", 0), transitions("u1", 0))
        await store.record(execution("u1", 0), transitions("u1", 0))
        assert await store.confirmed_transitions("u1") == 1

    async def test_rejects_transitions_of_another_execution(self) -> None:
        with pytest.raises(ValueError):
            await InMemoryAudit().record(execution("u1", 0), transitions("u2", 0))


# ---------------------------------------------------------------------- the outbox


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def store() -> InMemoryAudit:
    return InMemoryAudit()


@pytest.fixture
async def outbox(store: InMemoryAudit, registry: CollectorRegistry):  # type: ignore[no-untyped-def]
    box = OutboxAudit(store, registry=registry, min_backoff=0.01, max_backoff=0.05)
    await box.start()
    yield box
    await box.stop(grace=1)


class TestOutboxHealthy:
    async def test_writes_inline_when_the_store_is_up(
        self, store: InMemoryAudit, registry: CollectorRegistry
    ) -> None:
        box = OutboxAudit(store, registry=registry)  # not even started
        await box.record(execution("u1", 0), transitions("u1", 0))
        assert store.transitions("u1") == transitions("u1", 0)
        assert box.pending() == 0 and gauge(registry) == 0

    async def test_resending_confirmed_transitions_costs_no_round_trip(
        self, store: InMemoryAudit, outbox: OutboxAudit
    ) -> None:
        await record_all(outbox, "u1", 5)
        calls = store.calls
        for seq in range(6):  # a controller restart replays the whole history
            await outbox.record(execution("u1", seq), transitions("u1", seq))
        await outbox.record(execution("u1", 5), transitions("u1", 5))
        assert store.calls == calls
        assert store.transition_count() == 6

    async def test_an_execution_only_change_is_sent_with_its_newest_transition(
        self, store: InMemoryAudit, outbox: OutboxAudit
    ) -> None:
        await record_all(outbox, "u1", 3)
        calls = store.calls
        await outbox.record(execution("u1", 3, attempts=2), transitions("u1", 3))
        assert store.calls == calls + 1
        assert store.execution("u1").attempts == 2  # type: ignore[union-attr]
        assert store.last_seq("u1") == 3  # the carrier transition told the store where it is
        assert store.transition_count() == 4

    async def test_forget_makes_the_next_resend_a_round_trip(
        self, store: InMemoryAudit, outbox: OutboxAudit
    ) -> None:
        await record_all(outbox, "u1", 1)
        outbox.forget("u1")
        calls = store.calls
        await outbox.record(execution("u1", 1), transitions("u1", 1))
        assert store.calls == calls + 1 and store.transition_count() == 2

    async def test_rejects_transitions_of_another_execution(self, outbox: OutboxAudit) -> None:
        with pytest.raises(ValueError):
            await outbox.record(execution("u1", 0), transitions("u2", 0))


class TestOutboxOutage:
    async def test_record_never_raises_and_buffers_while_down(
        self, store: InMemoryAudit, outbox: OutboxAudit, registry: CollectorRegistry
    ) -> None:
        await record_all(outbox, "u1", 1)
        store.down = True
        started = time.monotonic()
        await outbox.record(execution("u1", 2), transitions("u1", 2))
        await record_all(outbox, "u2", 3)
        assert time.monotonic() - started < 0.5
        assert outbox.pending() == 1 + 4
        assert outbox.pending_executions() == 2
        assert gauge(registry) == 5
        assert registry.get_sample_value("kexec_audit_unconfirmed_executions") == 2
        assert outbox.degraded

        store.down = False
        assert await outbox.flush(max_wait=2)
        assert outbox.pending() == 0 and gauge(registry) == 0 and not outbox.degraded
        assert [t.seq for t in store.transitions("u1")] == [0, 1, 2]
        assert [t.seq for t in store.transitions("u2")] == [0, 1, 2, 3]
        assert store.execution("u1").phase == PHASES[2]  # type: ignore[union-attr]
        assert store.execution("u2").phase == PHASES[3]  # type: ignore[union-attr]

    async def test_a_confirmation_after_an_outage_is_announced_per_execution(
        self, store: InMemoryAudit, outbox: OutboxAudit
    ) -> None:
        confirmed: list[str] = []
        outbox.on_confirmed = confirmed.append
        await record_all(outbox, "u1", 1)
        assert confirmed == ["u1", "u1"]  # each record confirmed inline
        confirmed.clear()
        store.down = True
        await outbox.record(execution("u1", 2), transitions("u1", 2))
        await record_all(outbox, "u2", 3)
        assert confirmed == []  # nothing confirmed while the store is down
        store.down = False
        assert await outbox.flush(max_wait=2)
        assert sorted(confirmed) == ["u1", "u2"]  # once each, when the re-send got through

    async def test_while_degraded_record_does_not_touch_the_store(
        self, store: InMemoryAudit, registry: CollectorRegistry
    ) -> None:
        box = OutboxAudit(store, registry=registry, min_backoff=5, max_backoff=5)
        await box.start()
        try:
            store.down = True
            await box.record(execution("u1", 0), transitions("u1", 0))  # fails inline
            await asyncio.sleep(0.05)  # the flusher tries once, then sleeps 5 s
            calls = store.calls
            for seq in range(1, 6):
                await box.record(execution("u1", seq), transitions("u1", seq))
            assert store.calls == calls
            assert box.pending() == 6
            store.down = False
            assert await box.flush(max_wait=2)  # flush cuts the backoff short
            assert store.transition_count() == 6
            assert store.execution("u1").phase == "Completed"  # type: ignore[union-attr]
        finally:
            await box.stop(grace=1)

    async def test_newest_snapshot_wins_and_transitions_merge_by_seq(
        self, store: InMemoryAudit, outbox: OutboxAudit
    ) -> None:
        store.down = True
        await outbox.record(execution("u1", 4), transitions("u1", 4)[3:])  # seqs 3, 4
        await outbox.record(execution("u1", 2), transitions("u1", 2))  # older, late: 0, 1, 2
        await outbox.record(execution("u1", 4, attempts=2), transitions("u1", 4)[4:])
        assert outbox.pending() == 5
        store.down = False
        assert await outbox.flush(max_wait=2)
        assert [t.seq for t in store.transitions("u1")] == [0, 1, 2, 3, 4]
        row = store.execution("u1")
        assert row is not None and row.phase == "Verifying" and row.attempts == 2

    async def test_backoff_grows_while_down(
        self, store: InMemoryAudit, registry: CollectorRegistry
    ) -> None:
        box = OutboxAudit(store, registry=registry, min_backoff=0.02, max_backoff=0.16)
        await box.start()
        try:
            store.down = True
            await box.record(execution("u1", 0), transitions("u1", 0))
            calls = store.calls
            await asyncio.sleep(0.6)
            attempts = store.calls - calls
            # 0.02 .. 0.16 with jitter: about 0.02+0.04+0.08+0.16+0.16 in 0.6 s; never a busy loop
            assert 2 <= attempts <= 8, attempts
        finally:
            store.down = False
            await box.stop(grace=1)
        assert store.transition_count() == 1  # stop() made a last attempt

    async def test_a_poisoned_record_does_not_starve_the_others(
        self, registry: CollectorRegistry
    ) -> None:
        class Poisoned(InMemoryAudit):
            async def record(
                self, execution: ExecutionRecord, transitions: Sequence[TransitionRecord]
            ) -> None:
                if execution.execution_uid == "bad":
                    raise AuditUnavailable("check constraint violated")
                await super().record(execution, transitions)

        store = Poisoned()
        box = OutboxAudit(store, registry=registry, min_backoff=0.01, max_backoff=0.05)
        await box.start()
        try:
            store.down = True
            await record_all(box, "bad", 1)
            for uid in ("a", "b", "c"):
                await record_all(box, uid, 2)
            store.down = False
            await asyncio.sleep(0.3)
            assert store.transition_count() == 9
            assert box.pending() == 2  # only the poisoned one is left
        finally:
            await box.stop(grace=1)

    async def test_an_unexpected_error_of_the_inner_port_is_contained(
        self, registry: CollectorRegistry
    ) -> None:
        class Broken(InMemoryAudit):
            broken = True

            async def record(
                self, execution: ExecutionRecord, transitions: Sequence[TransitionRecord]
            ) -> None:
                if self.broken:
                    raise RuntimeError("bug")
                await super().record(execution, transitions)

        store = Broken()
        box = OutboxAudit(store, registry=registry, min_backoff=0.01, max_backoff=0.05)
        await box.start()
        try:
            await box.record(execution("u1", 0), transitions("u1", 0))  # does not raise
            assert box.pending() == 1
            store.broken = False
            assert await box.flush(max_wait=2)
            assert store.transition_count() == 1
        finally:
            await box.stop(grace=1)

    async def test_stop_returns_in_time_while_down_and_keeps_the_records(
        self, registry: CollectorRegistry
    ) -> None:
        store = InMemoryAudit(latency=0.2)
        box = OutboxAudit(store, registry=registry, min_backoff=0.01, max_backoff=0.05)
        await box.start()
        store.down = True
        await box.record(execution("u1", 0), transitions("u1", 0))
        started = time.monotonic()
        await box.stop(grace=0.5)
        assert time.monotonic() - started < 1.0
        assert box.pending() == 1

    async def test_confirmed_transitions_asks_the_store(
        self, store: InMemoryAudit, outbox: OutboxAudit
    ) -> None:
        await record_all(outbox, "u1", 2)
        assert await outbox.confirmed_transitions("u1") == 3
        store.down = True
        with pytest.raises(AuditUnavailable):
            await outbox.confirmed_transitions("u1")

    @pytest.mark.parametrize("latency", [0.0, 0.002])
    @pytest.mark.parametrize("seed", range(4))
    async def test_flaky_store_every_transition_exactly_once(
        self, seed: int, latency: float, registry: CollectorRegistry
    ) -> None:
        """Random outages and random interleaving of 30 executions written concurrently
        (with latency, writes are in flight while new records merge in): at the end every
        transition is in the store once and every row is at its newest."""
        rng = random.Random(seed)
        store = InMemoryAudit(latency=latency)
        box = OutboxAudit(store, registry=registry, min_backoff=0.005, max_backoff=0.02)
        await box.start()

        async def flapper() -> None:
            for _ in range(20):
                store.down = rng.random() < 0.5
                await asyncio.sleep(rng.uniform(0, 0.01))
            store.down = False

        async def one_execution(uid: str) -> None:
            for seq in range(6):
                sent = transitions(uid, seq)
                if rng.random() < 0.3:
                    sent = sent[-1:]  # sometimes only the new transition
                await box.record(execution(uid, seq), sent)
                await asyncio.sleep(rng.uniform(0, 0.005))

        try:
            await asyncio.gather(flapper(), *(one_execution(f"u{i}") for i in range(30)))
            assert await box.flush(max_wait=5)
        finally:
            await box.stop(grace=1)
        assert store.transition_count() == 30 * 6
        for i in range(30):
            assert [t.seq for t in store.transitions(f"u{i}")] == list(range(6))
            assert store.execution(f"u{i}").phase == "Completed"  # type: ignore[union-attr]
        assert box.pending() == 0
