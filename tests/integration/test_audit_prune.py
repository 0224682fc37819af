"""`kexec audit prune` on the real PostgreSQL: the retention the CronJob runs."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import yaml
from click.testing import CliRunner
from tests.integration.test_audit_postgres import NOW, execution, transitions

from kexec.adapters.audit.postgres import PostgresAudit, create_pool
from kexec.entrypoints.cli import cli

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


async def _seed(dsn: str) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        store = PostgresAudit(pool)
        old = NOW - timedelta(days=40)
        for uid in ("old0", "old1"):
            await store.record(execution(uid, 5, created_at=old), transitions(uid, 5, t0=old))
        await store.record(execution("new0", 5), transitions("new0", 5))
    finally:
        await pool.close()


async def _uids(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT DISTINCT execution_uid FROM kubernetes_execution_audit_events")
        return {r["execution_uid"] for r in rows}
    finally:
        await conn.close()


def test_prune_deletes_what_is_older_than_the_window_and_nothing_else(pg_audit_dsn: str) -> None:
    asyncio.run(_seed(pg_audit_dsn))
    runner = CliRunner()
    kept = runner.invoke(cli, ["audit", "prune", "--older-than", "90d", "--dsn", pg_audit_dsn])
    assert kept.exit_code == 0, kept.output
    assert kept.output.startswith("pruned 0 executions and 0 events")
    assert asyncio.run(_uids(pg_audit_dsn)) == {"old0", "old1", "new0"}

    pruned = runner.invoke(cli, ["audit", "prune", "--older-than", "4w", "--dsn", pg_audit_dsn])
    assert pruned.exit_code == 0, pruned.output
    assert pruned.output.startswith("pruned 2 executions and 12 events")
    assert asyncio.run(_uids(pg_audit_dsn)) == {"new0"}
    # Reading still works the old way (NAME is not a subcommand).
    shown = runner.invoke(cli, ["audit", "exec-new0", "--dsn", pg_audit_dsn])
    assert shown.exit_code == 0 and "exec-new0" in shown.output, shown.output


def test_prune_refuses_short_windows_and_reports_an_unreachable_database(
        pg_audit_dsn: str) -> None:
    runner = CliRunner()
    short = runner.invoke(cli, ["audit", "prune", "--older-than", "12h", "--dsn", pg_audit_dsn])
    assert short.exit_code == 2 and "at least 1 day" in short.output
    down = runner.invoke(cli, ["audit", "prune", "--older-than", "90d", "--timeout", "1", "--dsn",
                               "postgresql://kexec:s3cret@127.0.0.1:1/none"])
    assert down.exit_code == 1
    assert "cannot prune the audit database at 127.0.0.1:1/none" in down.output
    assert "s3cret" not in down.output


def test_the_cronjob_runs_the_prune_command_daily() -> None:
    job = yaml.safe_load((ROOT / "deploy" / "base" / "audit-prune-cronjob.yaml").read_text())
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["kexec", "audit", "prune"]
    assert "--older-than" in container["command"]
    assert any(e["name"] == "KEXEC_AUDIT_DSN" and "secretKeyRef" in e["valueFrom"]
               for e in container["env"])
    kustomization = yaml.safe_load((ROOT / "deploy" / "base" / "kustomization.yaml").read_text())
    assert "audit-prune-cronjob.yaml" in kustomization["resources"]
