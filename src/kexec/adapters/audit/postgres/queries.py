"""The read side of the audit store: the queries behind ``kexec audit`` and retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from kexec.adapters.audit.postgres.migrations import (
    EVENTS_TABLE,
    EXECUTION_COLUMNS,
    EXECUTIONS_TABLE,
)
from kexec.adapters.audit.postgres.pool import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    Conn,
    close_pool,
    create_pool,
    run,
    utc,
)
from kexec.application.ports.audit import ExecutionRecord, TransitionRecord

Result = Literal["success", "failure", "pending"]


@dataclass(frozen=True)
class StoredExecution:
    """An execution as the audit store holds it, with its transitions when asked for."""

    record: ExecutionRecord
    last_seq: int
    updated_at: datetime
    duration_ms: int | None
    transition_count: int
    transitions: tuple[TransitionRecord, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (datetimes as ISO 8601 strings)."""
        out = _jsonable(asdict(self.record))
        out.update(
            last_seq=self.last_seq,
            updated_at=self.updated_at.isoformat(),
            duration_ms=self.duration_ms,
            transition_count=self.transition_count,
        )
        out["transitions"] = [_jsonable(asdict(t)) for t in self.transitions]
        return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}


@dataclass(frozen=True)
class PruneResult:
    executions: int
    events: int


_SELECT_EXECUTION = f"""
SELECT a.*, (SELECT count(*) FROM {EVENTS_TABLE} e WHERE e.execution_uid = a.execution_uid)
       AS transition_count
FROM {EXECUTIONS_TABLE} a
"""


class AuditQueries:
    """The read queries of ``kexec audit`` over an asyncpg pool (errors: AuditUnavailable)."""

    def __init__(
        self, pool: asyncpg.Pool, *, command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    ) -> None:
        self._pool = pool
        self._timeout = command_timeout

    async def get(
        self, name: str, namespace: str | None = None, *, limit: int = 10
    ) -> list[StoredExecution]:
        """Executions called ``name`` (or whose uid is ``name``), newest first, with their
        transitions. A name can be reused after deletion, hence a list."""

        async def op(conn: Conn) -> list[StoredExecution]:
            rows = await conn.fetch(
                _SELECT_EXECUTION
                + """ WHERE (a.name = $1 OR a.execution_uid = $1)
                      AND ($2::text IS NULL OR a.namespace = $2)
                      ORDER BY a.created_at DESC, a.execution_uid LIMIT $3""",
                name,
                namespace,
                limit,
                timeout=self._timeout,
            )
            if not rows:
                return []
            uids = [r["execution_uid"] for r in rows]
            events = await conn.fetch(
                f"""SELECT * FROM {EVENTS_TABLE} WHERE execution_uid = ANY($1::text[])
                    ORDER BY execution_uid, seq""",
                uids,
                timeout=self._timeout,
            )
            grouped: dict[str, list[TransitionRecord]] = {u: [] for u in uids}
            for ev in events:
                grouped[ev["execution_uid"]].append(_transition_from_row(ev))
            return [_execution_from_row(r, tuple(grouped[r["execution_uid"]])) for r in rows]

        return await run(self._pool, self._timeout, "query", op)

    async def query(
        self,
        *,
        since: datetime | None = None,
        action: str | None = None,
        namespace: str | None = None,
        result: Result | None = None,
        limit: int = 50,
    ) -> list[StoredExecution]:
        """Executions newest first (without their transitions), filtered."""
        success: bool | None = None
        if result == "success":
            success = True
        elif result == "failure":
            success = False
        elif result not in (None, "pending"):
            raise ValueError(f"result must be success, failure or pending, not {result!r}")

        async def op(conn: Conn) -> list[StoredExecution]:
            rows = await conn.fetch(
                _SELECT_EXECUTION
                + """ WHERE ($1::timestamptz IS NULL OR a.created_at >= $1)
                      AND ($2::text IS NULL OR a.action = $2)
                      AND ($3::text IS NULL OR a.namespace = $3)
                      AND ($4::text IS NULL
                           OR ($4 = 'pending' AND a.success IS NULL)
                           OR a.success = $5::boolean)
                      ORDER BY a.created_at DESC, a.execution_uid LIMIT $6""",
                utc(since),
                action,
                namespace,
                result,
                success,
                limit,
                timeout=self._timeout,
            )
            return [_execution_from_row(r, ()) for r in rows]

        return await run(self._pool, self._timeout, "query", op)

    async def prune(self, older_than: timedelta) -> PruneResult:
        """Retention: delete executions created more than ``older_than`` ago with their
        events (``prune_audit`` in SQL; refuses less than one day)."""
        if older_than < timedelta(days=1):
            raise ValueError(f"retention must be at least 1 day, not {older_than}")

        async def op(conn: Conn) -> PruneResult:
            row = await conn.fetchrow(
                "SELECT * FROM prune_audit($1::interval)", older_than, timeout=self._timeout * 6
            )
            assert row is not None  # prune_audit returns exactly one row
            return PruneResult(executions=int(row["executions"]), events=int(row["events"]))

        return await run(self._pool, self._timeout, "prune", op)


def _transition_from_row(r: asyncpg.Record) -> TransitionRecord:
    return TransitionRecord(
        execution_uid=r["execution_uid"],
        seq=r["seq"],
        time=r["time"],
        from_phase=r["from_phase"],
        to_phase=r["to_phase"],
        reason=r["reason"],
        message=r["message"],
        controller=r["controller"],
    )


def _execution_from_row(
    r: asyncpg.Record, transitions: tuple[TransitionRecord, ...]
) -> StoredExecution:
    record = ExecutionRecord(**{c: r[c] for c in EXECUTION_COLUMNS})
    return StoredExecution(
        record=record,
        last_seq=r["last_seq"],
        updated_at=r["updated_at"],
        duration_ms=r["duration_ms"],
        transition_count=int(r["transition_count"]),
        transitions=transitions,
    )


@asynccontextmanager
async def open_audit(
    dsn: str,
    *,
    max_size: int = 2,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncIterator[AuditQueries]:
    """Short-lived audit queries (the CLI): fails fast with AuditUnavailable."""
    pool = await create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        command_timeout=command_timeout,
        connect_timeout=connect_timeout,
        lazy_on_failure=False,
    )
    try:
        yield AuditQueries(pool, command_timeout=command_timeout)
    finally:
        await close_pool(pool, grace=command_timeout)
