"""In-memory AuditPort fake for tests: the same semantics as PostgresAudit.

- idempotent on (execution_uid, seq): a transition is stored once, re-sends are no-ops
  (of one seq sent twice in a call, the last is stored);
- the execution row is only overwritten by a record whose newest seq is >= the stored
  one (a record without transitions only creates a missing row);
- ``down = True`` (or ``fail_next(n)``) makes every call raise AuditUnavailable, like a
  database outage; nothing is stored by a failed call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kexec.application.ports.audit import (
    AuditUnavailable,
    ExecutionRecord,
    TransitionRecord,
    transitions_by_seq,
)


@dataclass
class _Row:
    record: ExecutionRecord
    last_seq: int


class InMemoryAudit:
    def __init__(self, *, latency: float = 0.0) -> None:
        self.down = False
        self.latency = latency
        self._fail_next = 0
        self._rows: dict[str, _Row] = {}
        self._events: dict[str, dict[int, TransitionRecord]] = {}
        #: calls that reached the "database" (successful or refused while down)
        self.calls = 0
        #: successful record() calls
        self.writes = 0

    def fail_next(self, n: int = 1) -> None:
        """The next ``n`` calls raise AuditUnavailable (a transient failure)."""
        self._fail_next += n

    async def _reach(self) -> None:
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.down:
            raise AuditUnavailable("audit store is down (fake)")
        if self._fail_next:
            self._fail_next -= 1
            raise AuditUnavailable("audit store failed (fake, transient)")

    async def record(
        self, execution: ExecutionRecord, transitions: Sequence[TransitionRecord]
    ) -> None:
        uid = execution.execution_uid
        by_seq = transitions_by_seq(execution, transitions)
        await self._reach()
        last_seq = max(by_seq, default=-1)
        row = self._rows.get(uid)
        if row is None:
            self._rows[uid] = _Row(execution, last_seq)
        elif row.last_seq <= last_seq:
            # created_at is never changed once written (as in PostgreSQL)
            if execution.created_at != row.record.created_at:
                execution = replace(execution, created_at=row.record.created_at)
            self._rows[uid] = _Row(execution, last_seq)
        events = self._events.setdefault(uid, {})
        # Within one call the last of a duplicated seq is the one stored (as in PostgreSQL);
        # a seq already stored is never rewritten.
        for seq, t in by_seq.items():
            events.setdefault(seq, t)
        self.writes += 1

    async def confirmed_transitions(self, execution_uid: str) -> int:
        await self._reach()
        return len(self._events.get(execution_uid, {}))

    # ------------------------------------------------------------------ inspection

    def execution(self, execution_uid: str) -> ExecutionRecord | None:
        row = self._rows.get(execution_uid)
        return row.record if row else None

    def last_seq(self, execution_uid: str) -> int | None:
        row = self._rows.get(execution_uid)
        return row.last_seq if row else None

    def transitions(self, execution_uid: str) -> list[TransitionRecord]:
        events = self._events.get(execution_uid, {})
        return [events[s] for s in sorted(events)]

    def executions(self) -> list[ExecutionRecord]:
        return [row.record for row in self._rows.values()]

    def transition_count(self) -> int:
        return sum(len(e) for e in self._events.values())
