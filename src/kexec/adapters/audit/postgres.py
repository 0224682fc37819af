"""The audit trail in PostgreSQL (asyncpg): the AuditPort adapter, its pool and migrations.

Every driver, OS or timeout error leaves this module as ``AuditUnavailable``;
callers (``OutboxAudit``) re-send later, which is safe because every write is
idempotent on (execution_uid, seq).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Literal, TypeVar

import asyncpg

from kexec.application.ports.audit import AuditUnavailable, ExecutionRecord, TransitionRecord

log = logging.getLogger("kexec.audit")

EXECUTIONS_TABLE = "kubernetes_execution_audit"
EVENTS_TABLE = "kubernetes_execution_audit_events"
MIGRATIONS_TABLE = "schema_migrations"
# pg_advisory_xact_lock key for migrations: the bytes of "kexecmig" as a signed bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"kexecmig", "big", signed=True)

DEFAULT_COMMAND_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0

# What a driver can throw at us when the database is away, slow or broken.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

# ...plus ValueError: a DSN is parsed lazily by a pool created without connections.
_RUN_ERRORS: tuple[type[BaseException], ...] = (*_DRIVER_ERRORS, ValueError)

T = TypeVar("T")
Result = Literal["success", "failure", "pending"]


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date (an applied migration was edited, bad SQL)."""


# --------------------------------------------------------------------------- pool


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"), sort_keys=True)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pool ``init``: json/jsonb values travel as Python objects."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=_dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    lazy_on_failure: bool = True,
) -> asyncpg.Pool:
    """Create the pool; with ``lazy_on_failure`` a database that is down now does not stop
    the caller from starting: the pool is created with no connection and connects on use."""
    kwargs: dict[str, Any] = dict(
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=connect_timeout,
        init=init_connection,
        server_settings={"application_name": "kexec-audit"},
    )
    try:
        return await asyncpg.create_pool(dsn, min_size=min_size, **kwargs)
    except (asyncpg.exceptions.ClientConfigurationError, ValueError) as e:
        # a malformed DSN is a configuration error, not an outage: fail the start loudly
        raise ValueError(f"invalid audit database DSN: {e}") from None
    except _DRIVER_ERRORS as e:
        if not lazy_on_failure or min_size == 0:
            raise AuditUnavailable(f"cannot connect to the audit database: {_describe(e)}") from e
        log.warning("audit database unreachable at start (%s); connecting lazily", _describe(e))
        return await asyncpg.create_pool(dsn, min_size=0, **kwargs)


async def audit_pool(
    dsn: str,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncIterator[asyncpg.Pool]:
    """Async generator for a dependency-injector ``providers.Resource``: yields the pool,
    closes it on shutdown. Never fails at start because the database is down."""
    pool = await create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        connect_timeout=connect_timeout,
    )
    try:
        yield pool
    finally:
        await close_pool(pool, grace=command_timeout)


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


_MIGRATION_FILE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")


def load_migrations() -> list[Migration]:
    """The packaged migrations, ordered by version (``NNNN_name.sql``)."""
    found: list[Migration] = []
    root = resources.files("kexec.adapters.audit").joinpath("migrations")
    for entry in root.iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return found


async def _migrate_on(conn: asyncpg.Connection, migrations: Sequence[Migration]) -> list[int]:
    applied_now: list[int] = []
    async with conn.transaction():
        # Serializes replicas: the second one waits here, then sees the versions applied.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
        )
        rows = await conn.fetch(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE}")
        applied = {r["version"]: r for r in rows}
        for mig in migrations:
            row = applied.get(mig.version)
            if row is not None:
                if row["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} was edited after it was "
                        "applied; add a new migration instead"
                    )
                continue
            await conn.execute(mig.sql)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
                mig.version,
                mig.name,
                mig.checksum,
            )
            applied_now.append(mig.version)
    return applied_now


async def migrate(
    pool_or_dsn: asyncpg.Pool | str,
    *,
    max_seconds: float = 60.0,
    migrations: Sequence[Migration] | None = None,
) -> list[int]:
    """Bring the schema up to date; returns the versions applied now (empty when current).

    Idempotent and safe to run from every replica at once. Raises AuditUnavailable when
    the database cannot be reached, MigrationError when a migration cannot be applied.
    """
    migs = list(migrations) if migrations is not None else load_migrations()
    try:
        if isinstance(pool_or_dsn, str):
            conn = await asyncpg.connect(pool_or_dsn, timeout=DEFAULT_CONNECT_TIMEOUT)
            try:
                return await asyncio.wait_for(_migrate_on(conn, migs), max_seconds)
            finally:
                await _close_quietly(conn)
        async with pool_or_dsn.acquire(timeout=max_seconds) as conn:
            return await asyncio.wait_for(_migrate_on(conn, migs), max_seconds)
    except MigrationError:
        raise
    except asyncpg.PostgresError as e:
        if isinstance(e, _CONNECTION_CLASS_ERRORS):
            raise AuditUnavailable(f"audit database unavailable: {_describe(e)}") from e
        raise MigrationError(f"audit schema migration failed: {_describe(e)}") from e
    except _DRIVER_ERRORS as e:
        raise AuditUnavailable(f"audit database unavailable: {_describe(e)}") from e


_CONNECTION_CLASS_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
)


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2.0)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except _DRIVER_ERRORS:
        conn.terminate()


async def close_pool(pool: asyncpg.Pool, grace: float = DEFAULT_COMMAND_TIMEOUT) -> None:
    """Close gracefully (waits for released connections), terminate after ``grace``."""
    try:
        await asyncio.wait_for(pool.close(), timeout=grace)
    except asyncio.CancelledError:
        pool.terminate()
        raise
    except _DRIVER_ERRORS:
        pool.terminate()


# --------------------------------------------------------------------------- read models


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


# --------------------------------------------------------------------------- the adapter


def _utc(value: datetime | None) -> datetime | None:
    """asyncpg reads naive datetimes as UTC already; make it explicit."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


_EXECUTION_COLUMNS = (
    "execution_uid", "name", "namespace", "workflow_name", "workflow_namespace",
    "step_number", "action", "parameters", "target_namespace", "target_kind",
    "target_name", "phase", "success", "reason", "message", "started_at",
    "completed_at", "job_name", "pod_name", "exit_code", "attempts", "max_retries",
    "dry_run", "policy_decision", "dry_run_result", "rollback", "rollback_of",
    "extra", "created_at",
)  # fmt: skip

_N = len(_EXECUTION_COLUMNS)
# created_at (the object's creationTimestamp) is never changed once written.
_UPDATED = [c for c in _EXECUTION_COLUMNS if c not in ("execution_uid", "created_at")]

_RECORD_SQL = f"""
WITH upsert AS (
    INSERT INTO {EXECUTIONS_TABLE} AS a ({", ".join(_EXECUTION_COLUMNS)}, last_seq, updated_at)
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

_SELECT_EXECUTION = f"""
SELECT a.*, (SELECT count(*) FROM {EVENTS_TABLE} e WHERE e.execution_uid = a.execution_uid)
       AS transition_count
FROM {EXECUTIONS_TABLE} a
"""


class PostgresAudit:
    """AuditPort over an asyncpg pool, plus the read queries of ``kexec audit``.

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
        self._pool = pool
        self._timeout = command_timeout
        self._auto_migrate = auto_migrate
        self._migrated = False
        self._migrate_lock = asyncio.Lock()

    # ------------------------------------------------------------------ helpers

    async def _run(self, what: str, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return await op(conn)
        except _RUN_ERRORS as e:
            raise AuditUnavailable(f"audit {what} failed: {_describe(e)}") from e

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

    # ------------------------------------------------------------------ AuditPort

    async def record(
        self, execution: ExecutionRecord, transitions: Sequence[TransitionRecord]
    ) -> None:
        """Upsert the execution row and insert the missing transitions in one statement.

        The row is only overwritten when the newest seq in ``transitions`` is >= the
        row's ``last_seq``; a call without transitions creates the row if absent and
        never overwrites one.
        """
        uid = execution.execution_uid
        by_seq: dict[int, TransitionRecord] = {}
        for t in transitions:
            if t.execution_uid != uid:
                raise ValueError(
                    f"transition of {t.execution_uid!r} recorded with execution {uid!r}"
                )
            by_seq[t.seq] = t
        ordered = [by_seq[s] for s in sorted(by_seq)]
        last_seq = ordered[-1].seq if ordered else -1
        e = execution
        args: list[Any] = [
            e.execution_uid, e.name, e.namespace, e.workflow_name, e.workflow_namespace,
            e.step_number, e.action, e.parameters, e.target_namespace, e.target_kind,
            e.target_name, e.phase, e.success, e.reason, e.message, _utc(e.started_at),
            _utc(e.completed_at), e.job_name, e.pod_name, e.exit_code, e.attempts,
            e.max_retries, e.dry_run, e.policy_decision, e.dry_run_result, e.rollback,
            e.rollback_of, e.extra, _utc(e.created_at),
            last_seq,
            [t.seq for t in ordered],
            [_utc(t.time) for t in ordered],
            [t.from_phase for t in ordered],
            [t.to_phase for t in ordered],
            [t.reason for t in ordered],
            [t.message for t in ordered],
            [t.controller for t in ordered],
        ]  # fmt: skip
        await self._ensure_schema()

        async def op(conn: asyncpg.Connection) -> None:
            await conn.fetchrow(_RECORD_SQL, *args, timeout=self._timeout)

        await self._run("write", op)

    async def confirmed_transitions(self, execution_uid: str) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            n = await conn.fetchval(
                f"SELECT count(*) FROM {EVENTS_TABLE} WHERE execution_uid = $1",
                execution_uid,
                timeout=self._timeout,
            )
            return int(n)

        return await self._run("read", op)

    # ------------------------------------------------------------------ queries

    async def get(
        self, name: str, namespace: str | None = None, *, limit: int = 10
    ) -> list[StoredExecution]:
        """Executions called ``name`` (or whose uid is ``name``), newest first, with their
        transitions. A name can be reused after deletion, hence a list."""

        async def op(conn: asyncpg.Connection) -> list[StoredExecution]:
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

        return await self._run("query", op)

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

        async def op(conn: asyncpg.Connection) -> list[StoredExecution]:
            rows = await conn.fetch(
                _SELECT_EXECUTION
                + """ WHERE ($1::timestamptz IS NULL OR a.created_at >= $1)
                      AND ($2::text IS NULL OR a.action = $2)
                      AND ($3::text IS NULL OR a.namespace = $3)
                      AND ($4::text IS NULL
                           OR ($4 = 'pending' AND a.success IS NULL)
                           OR a.success = $5::boolean)
                      ORDER BY a.created_at DESC, a.execution_uid LIMIT $6""",
                _utc(since),
                action,
                namespace,
                result,
                success,
                limit,
                timeout=self._timeout,
            )
            return [_execution_from_row(r, ()) for r in rows]

        return await self._run("query", op)

    async def prune(self, older_than: timedelta) -> PruneResult:
        """Retention: delete executions created more than ``older_than`` ago with their
        events (``prune_audit`` in SQL; refuses less than one day)."""
        if older_than < timedelta(days=1):
            raise ValueError(f"retention must be at least 1 day, not {older_than}")

        async def op(conn: asyncpg.Connection) -> PruneResult:
            row = await conn.fetchrow(
                "SELECT * FROM prune_audit($1::interval)", older_than, timeout=self._timeout * 6
            )
            return PruneResult(executions=int(row["executions"]), events=int(row["events"]))

        return await self._run("prune", op)


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
    record = ExecutionRecord(**{c: r[c] for c in _EXECUTION_COLUMNS})
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
) -> AsyncIterator[PostgresAudit]:
    """A short-lived PostgresAudit (the CLI): fails fast with AuditUnavailable."""
    pool = await create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        command_timeout=command_timeout,
        connect_timeout=connect_timeout,
        lazy_on_failure=False,
    )
    try:
        yield PostgresAudit(pool, command_timeout=command_timeout)
    finally:
        await close_pool(pool, grace=command_timeout)
