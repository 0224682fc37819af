"""The asyncpg pool of the audit store: creation, json codecs, shutdown, error mapping.

Every driver, OS or timeout error leaves the ``postgres`` package as ``AuditUnavailable``
(:func:`run`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from kexec.application.ports.audit import AuditUnavailable

log = logging.getLogger("kexec.audit")

DEFAULT_COMMAND_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0

# What a driver can throw at us when the database is away, slow or broken.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

# ...plus ValueError: a DSN is parsed lazily by a pool created without connections.
_RUN_ERRORS: tuple[type[BaseException], ...] = (*DRIVER_ERRORS, ValueError)

T = TypeVar("T")
# A connection of its own (migrations from a DSN) or one borrowed from the pool.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy


def describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def utc(value: datetime | None) -> datetime | None:
    """asyncpg reads naive datetimes as UTC already; make it explicit."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


async def run(
    pool: asyncpg.Pool,
    acquire_timeout: float,
    what: str,
    op: Callable[[Conn], Awaitable[T]],
) -> T:
    """``op`` on a pooled connection; any driver error becomes ``AuditUnavailable``."""
    try:
        async with pool.acquire(timeout=acquire_timeout) as conn:
            return await op(conn)
    except _RUN_ERRORS as e:
        raise AuditUnavailable(f"audit {what} failed: {describe(e)}") from e


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def without_nul(value: Any) -> Any:
    """PostgreSQL's text and jsonb refuse U+0000, which JSON (and the API server) allow: stored
    as U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nul(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(without_nul(value), default=_json_default, separators=(",", ":"), sort_keys=True)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pool ``init``: json/jsonb values travel as Python objects."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=_dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool ``reset``: nothing beyond what asyncpg always does on release (an open
    transaction is rolled back). The audit store leaves no session state behind — no SET,
    LISTEN or cursor, and its advisory lock is transaction-scoped — so the default
    ``RESET ALL; UNLISTEN *; CLOSE ALL; SELECT pg_advisory_unlock_all()`` would only cost
    a round trip per write."""
    return None


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
        reset=keep_session,
        server_settings={"application_name": "kexec-audit"},
    )
    try:
        return await asyncpg.create_pool(dsn, min_size=min_size, **kwargs)
    except (asyncpg.exceptions.ClientConfigurationError, ValueError) as e:
        # a malformed DSN is a configuration error, not an outage: fail the start loudly
        raise ValueError(f"invalid audit database DSN: {e}") from None
    except DRIVER_ERRORS as e:
        if not lazy_on_failure or min_size == 0:
            raise AuditUnavailable(f"cannot connect to the audit database: {describe(e)}") from e
        log.warning("audit database unreachable at start (%s); connecting lazily", describe(e))
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


async def close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2.0)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except DRIVER_ERRORS:
        conn.terminate()


async def close_pool(pool: asyncpg.Pool, grace: float = DEFAULT_COMMAND_TIMEOUT) -> None:
    """Close gracefully (waits for released connections), terminate after ``grace``."""
    try:
        await asyncio.wait_for(pool.close(), timeout=grace)
    except asyncio.CancelledError:
        pool.terminate()
        raise
    except DRIVER_ERRORS:
        pool.terminate()
