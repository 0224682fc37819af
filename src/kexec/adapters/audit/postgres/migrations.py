"""The audit schema: its tables and the versioned migrations that create them.

The SQL lives in ``kexec/adapters/audit/migrations/NNNN_name.sql``; applied versions and
their checksums are kept in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import asyncpg

from kexec.adapters.audit.postgres.pool import (
    DEFAULT_CONNECT_TIMEOUT,
    DRIVER_ERRORS,
    Conn,
    close_quietly,
    describe,
)
from kexec.application.ports.audit import AuditUnavailable

EXECUTIONS_TABLE = "kubernetes_execution_audit"
EVENTS_TABLE = "kubernetes_execution_audit_events"
MIGRATIONS_TABLE = "schema_migrations"
# pg_advisory_xact_lock key for migrations: the bytes of "kexecmig" as a signed bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"kexecmig", "big", signed=True)

# The columns of EXECUTIONS_TABLE that hold an ExecutionRecord's fields (same names).
EXECUTION_COLUMNS = (
    "execution_uid", "name", "namespace", "workflow_name", "workflow_namespace",
    "step_number", "action", "parameters", "target_namespace", "target_kind",
    "target_name", "phase", "success", "reason", "message", "started_at",
    "completed_at", "job_name", "pod_name", "exit_code", "attempts", "max_retries",
    "dry_run", "policy_decision", "dry_run_result", "rollback", "rollback_of",
    "extra", "created_at",
)  # fmt: skip


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date (an applied migration was edited, bad SQL)."""


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


async def _migrate_on(conn: Conn, migrations: Sequence[Migration]) -> list[int]:
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


_CONNECTION_CLASS_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
)


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
            own = await asyncpg.connect(pool_or_dsn, timeout=DEFAULT_CONNECT_TIMEOUT)
            try:
                return await asyncio.wait_for(_migrate_on(own, migs), max_seconds)
            finally:
                await close_quietly(own)
        async with pool_or_dsn.acquire(timeout=max_seconds) as borrowed:
            return await asyncio.wait_for(_migrate_on(borrowed, migs), max_seconds)
    except MigrationError:
        raise
    except asyncpg.PostgresError as e:
        if isinstance(e, _CONNECTION_CLASS_ERRORS):
            raise AuditUnavailable(f"audit database unavailable: {describe(e)}") from e
        raise MigrationError(f"audit schema migration failed: {describe(e)}") from e
    except DRIVER_ERRORS as e:
        raise AuditUnavailable(f"audit database unavailable: {describe(e)}") from e
