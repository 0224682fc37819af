"""Audit trail adapters (docs/audit.md).

- ``postgres``: PostgresAudit (asyncpg), the pool resource, versioned migrations, the
  read queries of ``kexec audit``;
- ``outbox``: OutboxAudit, which buffers and re-sends through an outage;
- ``memory``: InMemoryAudit, the fake for tests.

Import the submodule you need; this package imports nothing itself so that the fake
does not pull in asyncpg and the adapter does not pull in the fake.
"""
