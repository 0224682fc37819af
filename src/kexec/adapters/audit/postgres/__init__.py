"""The audit trail in PostgreSQL (asyncpg).

* ``pool``: the pool resource, json codecs, driver errors → ``AuditUnavailable``;
* ``migrations``: the tables and the versioned, checksummed migrations;
* ``writer``: ``PostgresAudit``, the AuditPort (idempotent on (execution_uid, seq));
* ``queries``: the read side of ``kexec audit`` (get, query, prune).
"""

from __future__ import annotations

from kexec.adapters.audit.postgres.migrations import (
    EVENTS_TABLE,
    EXECUTIONS_TABLE,
    Migration,
    MigrationError,
    load_migrations,
    migrate,
)
from kexec.adapters.audit.postgres.pool import audit_pool, close_pool, create_pool
from kexec.adapters.audit.postgres.queries import StoredExecution, open_audit
from kexec.adapters.audit.postgres.writer import PostgresAudit

__all__ = [
    "EVENTS_TABLE",
    "EXECUTIONS_TABLE",
    "Migration",
    "MigrationError",
    "PostgresAudit",
    "StoredExecution",
    "audit_pool",
    "close_pool",
    "create_pool",
    "load_migrations",
    "migrate",
    "open_audit",
]
