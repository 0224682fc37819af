"""PostgresAudit: the AuditPort on PostgreSQL (idempotent writes, optional auto-migration).

Callers (``OutboxAudit``) re-send after ``AuditUnavailable``, which is safe because every
write is idempotent on (execution_uid, seq).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from kexec.adapters.audit.postgres.migrations import (
    EVENTS_TABLE,
    EXECUTION_COLUMNS,
    EXECUTIONS_TABLE,
    MigrationError,
    migrate,
)
from kexec.adapters.audit.postgres.pool import DEFAULT_COMMAND_TIMEOUT, Conn, log, run, utc, without_nul
from kexec.adapters.audit.postgres.queries import AuditQueries
from kexec.application.ports.audit import (
    AuditUnavailable,
    ExecutionRecord,
    TransitionRecord,
    transitions_by_seq,
)

_N = len(EXECUTION_COLUMNS)
# created_at (the object's creationTimestamp) is never changed once written.
_UPDATED = [c for c in EXECUTION_COLUMNS if c not in ("execution_uid", "created_at")]

_RECORD_SQL = f"""
WITH upsert AS (
    INSERT INTO {EXECUTIONS_TABLE} AS a ({", ".join(EXECUTION_COLUMNS)}, last_seq, updated_at)
    VALUES ({", ".join(f"${i + 1}" for i in range(_N))}, ${_N + 1}, now())
    ON CONFLICT (execution_uid) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in _UPDATED)},
        last_seq = EXCLUDED.last_seq,
        updated_at = now()
    -- never move a row backwards: an older (re-sent, late) snapshot does not win
    WHERE a.last_seq <= EXCLUDED.last_seq
    RETURNING 1
), events AS (
    INSERT INTO {EVENTS_TABLE}
        (execution_uid, seq, time, from_phase, to_phase, reason, message, controller)
    SELECT $1, t.seq, t.time, t.from_phase, t.to_phase, t.reason, t.message, t.controller
    FROM unnest(${_N + 2}::integer[], ${_N + 3}::timestamptz[], ${_N + 4}::text[],
                ${_N + 5}::text[], ${_N + 6}::text[], ${_N + 7}::text[], ${_N + 8}::text[])
         AS t(seq, time, from_phase, to_phase, reason, message, controller)
    ORDER BY t.seq
    ON CONFLICT (execution_uid, seq) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM upsert) AS row_written, (SELECT count(*) FROM events) AS inserted
"""


class PostgresAudit(AuditQueries):
    """AuditPort over an asyncpg pool (it can run the ``kexec audit`` queries too).

    With ``auto_migrate`` the schema is brought up to date before the first write (once
    per instance, retried on the next write after a failure), so a controller that starts
    while the database is down needs no separate migration step.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        auto_migrate: bool = False,
    ) -> None:
        super().__init__(pool, command_timeout=command_timeout)
        self._auto_migrate = auto_migrate
        self._migrated = False
        self._migrate_lock = asyncio.Lock()

    async def _ensure_schema(self) -> None:
        if self._migrated or not self._auto_migrate:
            return
        async with self._migrate_lock:
            if self._migrated:
                return
            try:
                await migrate(self._pool, max_seconds=max(self._timeout, 30.0))
            except MigrationError as e:
                # Not an outage, but the write cannot be confirmed either: the caller
                # keeps the record and retries; the log says why.
                log.error("audit schema migration failed: %s", e)
                raise AuditUnavailable(str(e)) from e
            self._migrated = True

    async def record(
        self, execution: ExecutionRecord, transitions: Sequence[TransitionRecord]
    ) -> None:
        """Upsert the execution row and insert the missing transitions in one statement.

        The row is only overwritten when the newest seq in ``transitions`` is >= the
        row's ``last_seq``; a call without transitions creates the row if absent and
        never overwrites one.
        """
        by_seq = transitions_by_seq(execution, transitions)
        ordered = [by_seq[s] for s in sorted(by_seq)]
        last_seq = ordered[-1].seq if ordered else -1
        e = execution
        args: list[Any] = [
            e.execution_uid, e.name, e.namespace, e.workflow_name, e.workflow_namespace,
            e.step_number, e.action, e.parameters, e.target_namespace, e.target_kind,
            e.target_name, e.phase, e.success, e.reason, e.message, utc(e.started_at),
            utc(e.completed_at), e.job_name, e.pod_name, e.exit_code, e.attempts,
            e.max_retries, e.dry_run, e.policy_decision, e.dry_run_result, e.rollback,
            e.rollback_of, e.extra, utc(e.created_at),
            last_seq,
            [t.seq for t in ordered],
            [utc(t.time) for t in ordered],
            [t.from_phase for t in ordered],
            [t.to_phase for t in ordered],
            [t.reason for t in ordered],
            [t.message for t in ordered],
            [t.controller for t in ordered],
        ]  # fmt: skip
        args = [without_nul(a) for a in args]  # text columns refuse U+0000 too (e.g. a workflow name)
        await self._ensure_schema()

        async def op(conn: Conn) -> None:
            await conn.fetchrow(_RECORD_SQL, *args, timeout=self._timeout)

        await run(self._pool, self._timeout, "write", op)

    async def confirmed_transitions(self, execution_uid: str) -> int:
        async def op(conn: Conn) -> int:
            n = await conn.fetchval(
                f"SELECT count(*) FROM {EVENTS_TABLE} WHERE execution_uid = $1",
                execution_uid,
                timeout=self._timeout,
            )
            return int(n)

        return await run(self._pool, self._timeout, "read", op)
