"""AuditPort contract: the in-memory fake and PostgresAudit on a real PostgreSQL server.

Every test runs against both. What each store holds is read back through its own read
side (``InMemoryAudit.execution``/``transitions``, ``PostgresAudit.get``), so a test
compares what was stored, not only what the port answers. The PostgreSQL cases need the
session server of tests/support/postgres.py and FAIL when it cannot start.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest

from devstack.controlplane import free_port
from kexec.adapters.audit.memory import InMemoryAudit
from kexec.adapters.audit.postgres import PostgresAudit, create_pool
from kexec.application.ports.audit import (
    AuditPort,
    AuditUnavailable,
    ExecutionRecord,
    TransitionRecord,
)

PHASES = ["Pending", "Validating", "Preparing", "Executing", "Verifying", "Completed"]
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


class Store(Protocol):
    """The port plus a way to read back what it holds (each implementation's own)."""

    @property
    def port(self) -> AuditPort: ...

    async def stored(self, uid: str) -> tuple[ExecutionRecord | None, list[TransitionRecord]]: ...


@dataclass
class MemoryStore:
    port: InMemoryAudit

    async def stored(self, uid: str) -> tuple[ExecutionRecord | None, list[TransitionRecord]]:
        return self.port.execution(uid), self.port.transitions(uid)


@dataclass
class PostgresStore:
    port: PostgresAudit

    async def stored(self, uid: str) -> tuple[ExecutionRecord | None, list[TransitionRecord]]:
        found = await self.port.get(uid)
        if not found:
            return None, []
        (one,) = found
        return one.record, list(one.transitions)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore(InMemoryAudit())
        return
    dsn: str = request.getfixturevalue("pg_audit_dsn")
    pool = await create_pool(dsn, min_size=1, max_size=4, lazy_on_failure=False)
    try:
        yield PostgresStore(PostgresAudit(pool))
    finally:
        await pool.close()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def unavailable(request: pytest.FixtureRequest) -> AsyncIterator[AuditPort]:
    """A store that cannot be reached: the fake switched off, PostgreSQL at a dead port."""
    if request.param == "memory":
        down = InMemoryAudit()
        down.down = True
        yield down
        return
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/kexec?connect_timeout=1"
    pool = await create_pool(dsn, min_size=1, max_size=1, connect_timeout=1)  # lazy: no server
    try:
        yield PostgresAudit(pool, command_timeout=1)
    finally:
        await pool.close()


def transitions(uid: str, upto: int, *, frm: int = 0, reason: str = "Reason") -> list[TransitionRecord]:
    return [
        TransitionRecord(
            execution_uid=uid, seq=i, time=T0 + timedelta(seconds=i),
            from_phase=PHASES[i - 1] if i else "", to_phase=PHASES[i],
            reason=f"{reason}{i}", message=f"step {i}", controller="kexec-0",
        )
        for i in range(frm, upto + 1)
    ]  # fmt: skip


def row(uid: str, seq: int, **changes: Any) -> ExecutionRecord:
    terminal = seq == len(PHASES) - 1
    rec = ExecutionRecord(
        execution_uid=uid, name=f"exec-{uid[:8]}", namespace="team-a",
        action="scale_deployment",
        parameters={"namespace": "team-a", "deployment": "web", "replicas": 3},
        target_namespace="team-a", target_kind="Deployment", target_name="web",
        phase=PHASES[seq], reason=f"Reason{seq}", message=f"step {seq}", created_at=T0,
        success=True if terminal else None,
        started_at=T0 + timedelta(seconds=3) if seq >= 3 else None,
        completed_at=T0 + timedelta(seconds=5) if terminal else None,
        job_name="job-1" if seq >= 3 else "", attempts=1 if seq >= 3 else 0, max_retries=2,
        policy_decision={"allowed": True, "requiresApproval": False, "violations": []},
        extra={"note": "x"},
    )  # fmt: skip
    return replace(rec, **changes)


@pytest.fixture
def uid() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------- the contract


async def test_record_stores_the_row_and_the_transitions(store: Store, uid: str) -> None:
    await store.port.record(row(uid, 2), transitions(uid, 2))
    stored_row, stored_ts = await store.stored(uid)
    assert stored_row == row(uid, 2)
    assert stored_ts == transitions(uid, 2)
    assert await store.port.confirmed_transitions(uid) == 3


async def test_re_sending_is_idempotent_on_uid_and_seq(store: Store, uid: str) -> None:
    for _ in range(3):
        await store.port.record(row(uid, 2), transitions(uid, 2))
    assert await store.port.confirmed_transitions(uid) == 3
    assert [t.seq for t in (await store.stored(uid))[1]] == [0, 1, 2]


async def test_growing_history_adds_only_the_new_transitions(store: Store, uid: str) -> None:
    await store.port.record(row(uid, 1), transitions(uid, 1))
    await store.port.record(row(uid, 4), transitions(uid, 4))
    await store.port.record(row(uid, 5), transitions(uid, 5, frm=5))  # only the newest one
    stored_row, stored_ts = await store.stored(uid)
    assert stored_ts == transitions(uid, 5)
    assert stored_row == row(uid, 5)
    assert await store.port.confirmed_transitions(uid) == 6


async def test_a_stored_transition_is_never_rewritten(store: Store, uid: str) -> None:
    await store.port.record(row(uid, 2), transitions(uid, 2))
    await store.port.record(row(uid, 2), transitions(uid, 2, reason="Rewritten"))
    assert (await store.stored(uid))[1] == transitions(uid, 2)


async def test_duplicate_seqs_in_one_call_store_one_transition_the_last(store: Store, uid: str) -> None:
    first, second = transitions(uid, 1), transitions(uid, 1, frm=1, reason="Later")
    await store.port.record(row(uid, 1), [*first, *second])
    assert await store.port.confirmed_transitions(uid) == 2
    assert (await store.stored(uid))[1] == [first[0], second[0]]


async def test_the_row_never_moves_backwards(store: Store, uid: str) -> None:
    await store.port.record(row(uid, 4), transitions(uid, 4))
    await store.port.record(row(uid, 1, message="late re-send"), transitions(uid, 1))  # late snapshot
    stored_row, _ = await store.stored(uid)
    assert stored_row == row(uid, 4)
    assert await store.port.confirmed_transitions(uid) == 5


async def test_a_late_snapshot_still_adds_transitions_the_store_lacks(store: Store, uid: str) -> None:
    await store.port.record(row(uid, 4), transitions(uid, 4, frm=4))
    await store.port.record(row(uid, 2), transitions(uid, 2))
    stored_row, stored_ts = await store.stored(uid)
    assert stored_row == row(uid, 4)
    assert [t.seq for t in stored_ts] == [0, 1, 2, 4]


async def test_the_same_seq_again_overwrites_the_row(store: Store, uid: str) -> None:
    await store.port.record(row(uid, 3), transitions(uid, 3))
    await store.port.record(row(uid, 3, pod_name="pod-1", attempts=2), transitions(uid, 3))
    assert (await store.stored(uid))[0] == row(uid, 3, pod_name="pod-1", attempts=2)


async def test_a_record_without_transitions_only_creates_a_missing_row(store: Store, uid: str) -> None:
    await store.port.record(row(uid, 0), [])
    assert (await store.stored(uid))[0] == row(uid, 0)
    assert await store.port.confirmed_transitions(uid) == 0
    await store.port.record(row(uid, 2), transitions(uid, 2))
    await store.port.record(row(uid, 0, message="no transitions"), [])
    assert (await store.stored(uid))[0] == row(uid, 2)


async def test_created_at_is_never_changed(store: Store, uid: str) -> None:
    await store.port.record(row(uid, 1), transitions(uid, 1))
    await store.port.record(row(uid, 3, created_at=T0 + timedelta(hours=1)), transitions(uid, 3))
    stored_row, _ = await store.stored(uid)
    assert stored_row == row(uid, 3)


async def test_a_transition_of_another_execution_is_refused_and_nothing_stored(
    store: Store, uid: str
) -> None:
    with pytest.raises(ValueError, match="recorded with execution"):
        await store.port.record(row(uid, 1), [*transitions(uid, 0), *transitions("someone-else", 1, frm=1)])
    assert await store.stored(uid) == (None, [])
    assert await store.port.confirmed_transitions(uid) == 0


async def test_an_unknown_execution_has_no_confirmed_transitions(store: Store, uid: str) -> None:
    assert await store.port.confirmed_transitions(uid) == 0


async def test_an_unreachable_store_raises_audit_unavailable(unavailable: AuditPort, uid: str) -> None:
    with pytest.raises(AuditUnavailable):
        await unavailable.record(row(uid, 1), transitions(uid, 1))
    with pytest.raises(AuditUnavailable):
        await unavailable.confirmed_transitions(uid)
