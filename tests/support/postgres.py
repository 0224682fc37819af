"""pytest fixtures on a throw-away PostgreSQL server (:class:`devstack.postgres.PostgresServer`).

Register with ``pytest_plugins = ["tests.support.postgres"]`` (tests/conftest.py) or ``-p``:

- ``postgres_server`` (session): the running server; FAILS (never skips) when
  PostgreSQL cannot be started.
- ``pg_dsn`` (function): DSN of a fresh, empty database, dropped after the test.
- ``pg_audit_dsn`` (function): DSN of a fresh database with the kexec audit schema
  migrated (copied from a template database migrated once per session).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import re
from collections.abc import Iterator

import pytest

from devstack.postgres import PostgresServer

# ---------------------------------------------------------------------- pytest fixtures

_db_counter = itertools.count(1)


def _db_name(prefix: str, test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9_]+", "_", test_name.lower()).strip("_")
    return f"{prefix}{next(_db_counter)}_{slug}"[:63]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except Exception as e:  # never skip: a missing database is a failure
        server.stop()
        pytest.fail(f"PostgreSQL test server could not be started: {e}", pytrace=False)
    yield server
    server.stop()


def _ensure_running(server: PostgresServer) -> None:
    if not server.running:  # a test stopped it (outage) and did not restart it
        server.start_server()


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test."""
    _ensure_running(postgres_server)
    name = _db_name("t", request.node.name)
    yield postgres_server.create_database(name)
    _ensure_running(postgres_server)
    postgres_server.drop_database(name)


_AUDIT_TEMPLATE = "kexec_audit_template"


@pytest.fixture(scope="session")
def _audit_template(postgres_server: PostgresServer) -> str:
    from kexec.adapters.audit.postgres import migrate

    dsn = postgres_server.create_database(_AUDIT_TEMPLATE)
    # Our own event loop, in a thread: never collide with pytest-asyncio's loop.
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        ex.submit(asyncio.run, migrate(dsn)).result(timeout=120)
    return _AUDIT_TEMPLATE


@pytest.fixture
def pg_audit_dsn(
    postgres_server: PostgresServer, _audit_template: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh database with the audit schema applied."""
    _ensure_running(postgres_server)
    name = _db_name("a", request.node.name)
    yield postgres_server.create_database(name, template=_audit_template)
    _ensure_running(postgres_server)
    postgres_server.drop_database(name)
