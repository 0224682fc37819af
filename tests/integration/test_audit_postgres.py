"""The audit trail against a real PostgreSQL server (devstack/postgres.py)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from devstack.postgres import PostgresServer, free_port
from kexec.adapters.audit.outbox import OutboxAudit
from kexec.adapters.audit.postgres import (
    EVENTS_TABLE,
    EXECUTIONS_TABLE,
    Migration,
    MigrationError,
    PostgresAudit,
    audit_pool,
    close_pool,
    create_pool,
    load_migrations,
    migrate,
)
from kexec.application.ports.audit import AuditUnavailable, ExecutionRecord, TransitionRecord
from kexec.entrypoints.cli_audit import audit

pytestmark = pytest.mark.postgres

PHASES = ["Pending", "Validating", "Preparing", "Executing", "Verifying", "Completed"]
NOW = datetime.now(UTC).replace(microsecond=0)


def transitions(uid: str, upto: int, t0: datetime = NOW) -> list[TransitionRecord]:
    return [
        TransitionRecord(
            execution_uid=uid,
            seq=i,
            time=t0 + timedelta(seconds=i),
            from_phase=PHASES[i - 1] if i else "",
            to_phase=PHASES[i],
            reason=f"Reason{i}",
            message=f"step {i}",
            controller="kexec-0",
        )
        for i in range(upto + 1)
    ]


def execution(
    uid: str, seq: int, *, created_at: datetime = NOW, **changes: object
) -> ExecutionRecord:
    terminal = seq == len(PHASES) - 1
    rec = ExecutionRecord(
        execution_uid=uid,
        name=f"exec-{uid}",
        namespace="team-a",
        action="scale_deployment",
        parameters={"scaleDeployment": {"namespace": "team-a", "deployment": "web", "replicas": 3}},
        target_namespace="team-a",
        target_kind="Deployment",
        target_name="web",
        phase=PHASES[seq],
        reason=f"Reason{seq}",
        message=f"step {seq}",
        created_at=created_at,
        success=True if terminal else None,
        started_at=created_at + timedelta(seconds=3) if seq >= 3 else None,
        completed_at=created_at + timedelta(seconds=5, milliseconds=250) if terminal else None,
        job_name="exec-job-1" if seq >= 3 else "",
        attempts=1 if seq >= 3 else 0,
        max_retries=2,
        policy_decision={"allowed": True, "requiresApproval": False, "violations": []},
        dry_run_result={"performed": True, "success": True, "warnings": []},
        rollback={"available": True, "action": "scale_deployment"} if terminal else None,
    )
    return replace(rec, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def pool(pg_audit_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(pg_audit_dsn, min_size=1, max_size=10)
    yield p
    await p.close()


@pytest.fixture
def store(pool: asyncpg.Pool) -> PostgresAudit:
    return PostgresAudit(pool)


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def event_keys(dsn: str) -> list[tuple[str, int]]:
    rows = await fetch(dsn, f"SELECT execution_uid, seq FROM {EVENTS_TABLE}")
    return [(r["execution_uid"], r["seq"]) for r in rows]


# ---------------------------------------------------------------------- migrations


async def test_migrate_from_empty_then_again_is_a_no_op(pg_dsn: str) -> None:
    assert await migrate(pg_dsn) == [m.version for m in load_migrations()]
    assert await migrate(pg_dsn) == []
    pool = await create_pool(pg_dsn)
    try:
        assert await migrate(pool) == []
    finally:
        await pool.close()
    rows = await fetch(pg_dsn, "SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["checksum"]) for r in rows] == [
        (m.version, m.checksum) for m in load_migrations()
    ]
    tables = {
        r["tablename"]
        for r in await fetch(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    }
    assert {EXECUTIONS_TABLE, EVENTS_TABLE, "schema_migrations"} <= tables


async def test_concurrent_migrations_are_serialized(pg_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(pg_dsn) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], [1]]
    rows = await fetch(pg_dsn, "SELECT count(*) AS n FROM schema_migrations")
    assert rows[0]["n"] == len(load_migrations())


async def test_an_edited_applied_migration_is_refused(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    edited = [replace(m, sql=m.sql + "\n-- edited") for m in load_migrations()]
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await migrate(pg_dsn, migrations=edited)


async def test_a_failing_migration_applies_nothing(pg_dsn: str) -> None:
    broken = [*load_migrations(), Migration(9999, "broken", "SELECT * FROM no_such_table;")]
    with pytest.raises(MigrationError):
        await migrate(pg_dsn, migrations=broken)
    rows = await fetch(pg_dsn, "SELECT to_regclass('schema_migrations') AS t")
    assert rows[0]["t"] is None  # the whole run was one transaction


# ---------------------------------------------------------------------- writes


async def test_same_record_twice_is_one_row_each(store: PostgresAudit, pg_audit_dsn: str) -> None:
    for _ in range(2):
        await store.record(execution("u1", 2), transitions("u1", 2))
    assert sorted(await event_keys(pg_audit_dsn)) == [("u1", 0), ("u1", 1), ("u1", 2)]
    rows = await fetch(pg_audit_dsn, f"SELECT * FROM {EXECUTIONS_TABLE}")
    assert len(rows) == 1 and rows[0]["phase"] == "Preparing" and rows[0]["last_seq"] == 2
    assert await store.confirmed_transitions("u1") == 3
    assert await store.confirmed_transitions("nope") == 0


async def test_columns_round_trip(store: PostgresAudit) -> None:
    rec = execution(
        "u1", 5, workflow_name="wf", workflow_namespace="ops", step_number=2, exit_code=0,
        pod_name="exec-job-1-abc", dry_run=False, rollback_of="older", extra={"k": [1, 2]},
    )  # fmt: skip
    await store.record(rec, transitions("u1", 5))
    [got] = await store.get("exec-u1", "team-a")
    assert got.record == rec
    assert got.transitions == tuple(transitions("u1", 5))
    assert got.duration_ms == 2250 and got.last_seq == 5 and got.transition_count == 6


async def test_a_nul_character_in_text_and_json_is_stored_as_a_replacement(
        store: PostgresAudit, pg_audit_dsn: str) -> None:
    """PostgreSQL refuses U+0000 in text and jsonb; the API server does not (found by the long
    fuzz run: a record carrying one was re-sent forever and kept the outbox degraded)."""
    rec = execution("u1", 2, message="bad \x00 value", target_name="web\x00",
                    parameters={"k\x00": "v\x00"})
    moved = [replace(t, message="m\x00") for t in transitions("u1", 2)]
    await store.record(rec, moved)
    [got] = await store.get("exec-u1", "team-a")
    assert got.record.message == "bad \ufffd value" and got.record.target_name == "web\ufffd"
    assert got.record.parameters == {"k\ufffd": "v\ufffd"}
    assert {t.message for t in got.transitions} == {"m\ufffd"}
    assert await store.confirmed_transitions("u1") == 3


async def test_a_late_older_record_does_not_move_the_row_backwards(
    store: PostgresAudit, pg_audit_dsn: str
) -> None:
    await store.record(execution("u1", 5), transitions("u1", 5))
    await store.record(execution("u1", 2), transitions("u1", 2))  # re-sent, late
    await store.record(execution("u1", 0), [])  # no transitions: never overwrites
    [row] = await fetch(pg_audit_dsn, f"SELECT * FROM {EXECUTIONS_TABLE}")
    assert (row["phase"], row["success"], row["last_seq"]) == ("Completed", True, 5)
    await store.record(execution("u1", 5, attempts=2), transitions("u1", 5)[-1:])  # same seq
    [row] = await fetch(pg_audit_dsn, f"SELECT * FROM {EXECUTIONS_TABLE}")
    assert (row["phase"], row["attempts"]) == ("Completed", 2)
    assert len(await event_keys(pg_audit_dsn)) == 6


async def test_two_concurrent_writers_write_every_transition_exactly_once(
    pg_audit_dsn: str,
) -> None:
    """Two controllers (two pools) both send the cumulative history of 150 executions,
    interleaved at random, 16 tasks each."""
    uids = [f"c{i}" for i in range(150)]
    pools = [await create_pool(pg_audit_dsn, min_size=2, max_size=8) for _ in range(2)]
    try:

        async def writer(p: asyncpg.Pool, seed: int) -> None:
            rng = random.Random(seed)
            s = PostgresAudit(p)
            calls = [(u, seq) for u in uids for seq in range(6)]
            rng.shuffle(calls)
            sem = asyncio.Semaphore(16)

            async def one(u: str, seq: int) -> None:
                async with sem:
                    await s.record(execution(u, seq), transitions(u, seq))

            await asyncio.gather(*(one(u, seq) for u, seq in calls))

        await asyncio.gather(writer(pools[0], 1), writer(pools[1], 2))
    finally:
        for p in pools:
            await p.close()
    keys = await event_keys(pg_audit_dsn)
    assert len(keys) == len(set(keys)) == 150 * 6
    rows = await fetch(pg_audit_dsn, f"SELECT phase, last_seq FROM {EXECUTIONS_TABLE}")
    assert len(rows) == 150
    assert {(r["phase"], r["last_seq"]) for r in rows} == {("Completed", 5)}


async def test_driver_errors_become_audit_unavailable(pg_dsn: str) -> None:
    # schema missing
    p = await create_pool(pg_dsn)
    try:
        with pytest.raises(AuditUnavailable, match="UndefinedTable"):
            await PostgresAudit(p).record(execution("u1", 0), transitions("u1", 0))
        # auto_migrate brings the schema up to date before the first write
        s = PostgresAudit(p, auto_migrate=True)
        await s.record(execution("u1", 0), transitions("u1", 0))
        assert await s.confirmed_transitions("u1") == 1
    finally:
        await p.close()
    # nothing listens: the pool resource still starts (lazily), writes raise AuditUnavailable
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    gen = audit_pool(dead, connect_timeout=1, command_timeout=1)
    dead_pool = await gen.__anext__()
    try:
        with pytest.raises(AuditUnavailable):
            await PostgresAudit(dead_pool, command_timeout=1).record(
                execution("u1", 0), transitions("u1", 0)
            )
        with pytest.raises(AuditUnavailable):
            await migrate(dead)
    finally:
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()


async def test_a_silent_server_times_out_and_the_outbox_stops_waiting_on_it() -> None:
    """A blackholed database (accepts, never answers): every call gives up after its
    timeout with AuditUnavailable, and once degraded the outbox does not wait at all."""
    writers: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dsn = f"postgresql://postgres@127.0.0.1:{port}/kexec"
    try:
        started = time.monotonic()
        p = await create_pool(dsn, command_timeout=0.5, connect_timeout=0.5)  # lazy fallback
        assert time.monotonic() - started < 1.5
        store = PostgresAudit(p, command_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(AuditUnavailable):
            await store.record(execution("u1", 0), transitions("u1", 0))
        assert time.monotonic() - started < 1.5

        box = OutboxAudit(store, registry=CollectorRegistry(), min_backoff=5, max_backoff=5)
        await box.start()
        await box.record(execution("u1", 0), transitions("u1", 0))  # pays one timeout
        started = time.monotonic()
        for seq in range(1, 6):
            await box.record(execution("u1", seq), transitions("u1", seq))
        assert time.monotonic() - started < 0.1
        assert box.pending() == 6
        await box.stop(grace=0.2)
        await close_pool(p, grace=0.5)
    finally:
        for w in writers:
            w.close()
        server.close()


async def test_a_stopped_server_is_survived_by_the_outbox(
    postgres_server: PostgresServer, pg_audit_dsn: str
) -> None:
    """Write, stop the server, keep writing, restart: every transition exactly once.

    o0-o19 are written before the stop, o20-o49 (and the first half of o50-o59) while
    the server is down, the rest after the restart; b0-b19 write all along, so some of
    their writes are in flight when the server goes away (commit outcome unknown)."""
    registry = CollectorRegistry()
    p = await create_pool(
        pg_audit_dsn, min_size=2, max_size=10, command_timeout=2, connect_timeout=2
    )
    box = OutboxAudit(PostgresAudit(p, command_timeout=2), registry=registry,
                      min_backoff=0.05, max_backoff=0.5)  # fmt: skip
    await box.start()
    slowest = 0.0
    pending_max = 0
    down = False
    during = 0

    async def write(uid: str, seqs: range) -> int:
        nonlocal slowest, during
        for seq in seqs:
            started = time.monotonic()
            await box.record(execution(uid, seq), transitions(uid, seq))
            slowest = max(slowest, time.monotonic() - started)
            during += down
        return len(seqs)

    async def background() -> None:
        for seq in range(6):
            await asyncio.gather(*(write(f"b{i}", range(seq, seq + 1)) for i in range(20)))
            await asyncio.sleep(0.15)

    async def monitor() -> None:
        nonlocal pending_max
        while True:
            pending_max = max(pending_max, box.pending())
            assert registry.get_sample_value("kexec_audit_unconfirmed_records") == box.pending()
            await asyncio.sleep(0.005)

    mon = asyncio.create_task(monitor())
    try:
        before = sum(await asyncio.gather(*(write(f"o{i}", range(6)) for i in range(20))))
        assert box.pending() == 0
        bg = asyncio.create_task(background())
        await asyncio.sleep(0.05)

        down = True
        await asyncio.to_thread(postgres_server.stop_server)
        await asyncio.gather(*(write(f"o{i}", range(6)) for i in range(20, 50)))
        await asyncio.gather(*(write(f"o{i}", range(3)) for i in range(50, 60)))
        await asyncio.sleep(0.3)  # the flusher keeps failing meanwhile
        assert box.pending() > 0 and box.degraded
        with pytest.raises(AuditUnavailable):
            await box.confirmed_transitions("o0")

        await asyncio.to_thread(postgres_server.start_server)
        down = False
        restarted = time.monotonic()
        await asyncio.gather(*(write(f"o{i}", range(3, 6)) for i in range(50, 60)))
        await bg
        assert await box.flush(max_wait=20)
        drain = time.monotonic() - restarted
    finally:
        mon.cancel()
        await box.stop()
        await p.close()

    print(
        f"\noutage: {before} records confirmed before the stop; {during} record() calls "
        f"while the server was down; pending max {pending_max}; drained {drain:.2f}s after "
        f"the restart; slowest record() {slowest * 1000:.0f} ms"
    )
    assert during >= 30 * 6 + 10 * 3 and pending_max >= 30 * 6 + 10 * 3
    assert slowest < 1.0  # record() never waits on the dead database
    assert box.pending() == 0
    assert registry.get_sample_value("kexec_audit_unconfirmed_records") == 0
    keys = await event_keys(pg_audit_dsn)
    assert len(keys) == len(set(keys)) == 80 * 6
    rows = await fetch(pg_audit_dsn, f"SELECT phase, last_seq FROM {EXECUTIONS_TABLE}")
    assert len(rows) == 80 and {(r["phase"], r["last_seq"]) for r in rows} == {("Completed", 5)}
    p = await create_pool(pg_audit_dsn)
    try:
        for uid in ("o0", "o35", "o55", "b7"):
            assert await PostgresAudit(p).confirmed_transitions(uid) == 6
    finally:
        await p.close()


async def test_secret_values_never_reach_the_database(
    postgres_server: PostgresServer, store: PostgresAudit, pg_audit_dsn: str
) -> None:
    """update_secret, run by the real application use case over the fakes
    (tests/unit/world.py): the new values come from a source Secret holding a marker, the
    old values (another marker) go to a backup Secret. Every record the application sends
    is written to PostgreSQL; neither marker, plain or base64, is anywhere in the dump."""
    from tests.unit.world import NS, World, b64, wire

    new_marker = f"kexec-new-secret-{uuid.uuid4().hex}"
    old_marker = f"kexec-old-secret-{uuid.uuid4().hex}"
    w = World()
    w.cluster.add({"kind": "Secret", "metadata": {"name": "db-creds", "namespace": NS},
                   "data": {"password": b64(old_marker)}})  # fmt: skip
    w.cluster.add({"kind": "Secret", "metadata": {"name": "db-creds-next", "namespace": NS},
                   "data": {"password": b64(new_marker)}})  # fmt: skip
    sent: list[tuple[ExecutionRecord, list[TransitionRecord]]] = []
    app_record = w.audit.record

    async def capture(e: ExecutionRecord, ts: Sequence[TransitionRecord]) -> None:
        sent.append((e, list(ts)))
        await app_record(e, ts)

    w.audit.record = capture  # type: ignore[method-assign]
    await w.create("update_secret", {"namespace": NS, "secret": "db-creds",
                                     "sourceSecretRef": {"name": "db-creds-next"}})  # fmt: skip
    ex = await w.drive()
    assert wire(ex)["phase"] == "Completed", wire(ex)
    assert w.cluster.obj("Secret", NS, "db-creds")["data"]["password"] == b64(new_marker)
    # Every transition the application produced was sent (the number of record() calls is
    # an implementation detail: one status write can carry several transitions).
    assert {t.seq for _, ts in sent for t in ts} == set(range(6))

    for e, ts in sent:
        await store.record(e, ts)
    [stored] = await store.get(ex.name, NS)
    assert stored.record.action == "update_secret" and stored.transition_count == 6

    dump = await asyncio.to_thread(postgres_server.dump, pg_audit_dsn.rsplit("/", 1)[1])
    backup = wire(ex)["rollback"]["parameters"]["updateSecret"]["sourceSecretRef"]["name"]
    assert "db-creds-next" in dump and backup in dump  # the grep does see the rows
    for needle in (new_marker, old_marker, b64(new_marker), b64(old_marker)):
        assert needle not in dump
    rows = await fetch(
        pg_audit_dsn,
        f"""SELECT a::text AS t FROM {EXECUTIONS_TABLE} a
            UNION ALL SELECT e::text FROM {EVENTS_TABLE} e""",
    )
    assert len(rows) == 7
    assert all(new_marker not in r["t"] and old_marker not in r["t"] for r in rows)


# ---------------------------------------------------------------------- append-only, retention


async def test_events_are_append_only(store: PostgresAudit, pg_audit_dsn: str) -> None:
    await store.record(execution("u1", 1), transitions("u1", 1))
    conn = await asyncpg.connect(pg_audit_dsn)
    try:
        for sql in (
            f"UPDATE {EVENTS_TABLE} SET message = 'x'",
            f"DELETE FROM {EVENTS_TABLE}",
            f"TRUNCATE {EVENTS_TABLE} CASCADE",
            f"DELETE FROM {EXECUTIONS_TABLE}",
            f"TRUNCATE {EXECUTIONS_TABLE} CASCADE",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()
    assert len(await event_keys(pg_audit_dsn)) == 2


async def test_retention_prunes_old_executions_with_their_events(
    store: PostgresAudit, pg_audit_dsn: str
) -> None:
    old = NOW - timedelta(days=100)
    for i in range(3):
        await store.record(
            execution(f"old{i}", 5, created_at=old), transitions(f"old{i}", 5, t0=old)
        )
    for i in range(2):
        await store.record(execution(f"new{i}", 5), transitions(f"new{i}", 5))

    result = await store.prune(timedelta(days=90))
    assert (result.executions, result.events) == (3, 18)
    assert {u for u, _ in await event_keys(pg_audit_dsn)} == {"new0", "new1"}
    assert len(await store.query()) == 2
    assert (await store.prune(timedelta(days=90))).executions == 0
    with pytest.raises(ValueError, match="at least 1 day"):
        await store.prune(timedelta(hours=1))
    conn = await asyncpg.connect(pg_audit_dsn)
    try:  # the SQL function refuses too, for whoever calls it directly
        with pytest.raises(asyncpg.InvalidParameterValueError, match="at least 1 day"):
            await conn.fetch("SELECT * FROM prune_audit('1 hour')")
    finally:
        await conn.close()
    assert len(await event_keys(pg_audit_dsn)) == 12


# ---------------------------------------------------------------------- queries and the CLI


async def _populate(dsn: str) -> None:
    p = await create_pool(dsn)
    try:
        s = PostgresAudit(p)
        await s.record(execution("a1", 5, created_at=NOW - timedelta(days=3)),
                       transitions("a1", 5, t0=NOW - timedelta(days=3)))  # fmt: skip
        await s.record(
            execution("a2", 5, action="drain_node", namespace="ops", success=False,
                      phase="Failed", reason="EvictionBlocked", target_kind="Node",
                      target_namespace="", target_name="node-1"),
            transitions("a2", 5),
        )  # fmt: skip
        await s.record(execution("a3", 2), transitions("a3", 2))
        # the same name again later (the object was deleted and re-created)
        await s.record(
            execution("a4", 5, name="exec-a1", created_at=NOW - timedelta(hours=1)),
            transitions("a4", 5),
        )
    finally:
        await p.close()


def _invoke(dsn: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(audit, [*args, "--dsn", dsn])
    return result.exit_code, result.stdout, result.stderr


def test_query_filters(pg_audit_dsn: str) -> None:
    asyncio.run(_populate(pg_audit_dsn))

    async def run() -> None:
        p = await create_pool(pg_audit_dsn)
        try:
            s = PostgresAudit(p)

            def uids(rows: list) -> list[str]:  # type: ignore[type-arg]
                return [r.record.execution_uid for r in rows]

            assert uids(await s.query()) == ["a2", "a3", "a4", "a1"]  # newest first
            assert uids(await s.query(since=NOW - timedelta(days=1))) == ["a2", "a3", "a4"]
            assert uids(await s.query(action="drain_node")) == ["a2"]
            assert uids(await s.query(namespace="team-a", limit=2)) == ["a3", "a4"]
            assert uids(await s.query(result="failure")) == ["a2"]
            assert uids(await s.query(result="pending")) == ["a3"]
            assert uids(await s.query(result="success")) == ["a4", "a1"]
            assert uids(await s.get("exec-a1")) == ["a4", "a1"]
            assert uids(await s.get("a1")) == ["a1"]  # by uid
            assert uids(await s.get("exec-a1", "elsewhere")) == []
        finally:
            await p.close()

    asyncio.run(run())


def test_cli_list_table_and_json(pg_audit_dsn: str) -> None:
    asyncio.run(_populate(pg_audit_dsn))
    code, out, err = _invoke(pg_audit_dsn)
    assert code == 0, err
    assert "ACTION" in out and "drain_node" in out and "EvictionBlocked" in out
    assert "4 execution(s)" in out

    code, out, err = _invoke(pg_audit_dsn, "--result", "failure", "-o", "json")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["execution_uid"] == "a2" and row["success"] is False
    assert row["namespace"] == "ops" and row["duration_ms"] == 2250

    code, out, err = _invoke(pg_audit_dsn, "--since", "2d", "--action", "scale_deployment",
                             "-o", "json")  # fmt: skip
    assert code == 0, err
    assert [r["execution_uid"] for r in json.loads(out)] == ["a3", "a4"]

    since = (NOW - timedelta(days=4)).date().isoformat()
    code, out, _ = _invoke(pg_audit_dsn, "--since", since, "-n", "team-a", "-o", "json")
    assert [r["execution_uid"] for r in json.loads(out)] == ["a3", "a4", "a1"]


def test_cli_single_execution_table_and_json(pg_audit_dsn: str) -> None:
    asyncio.run(_populate(pg_audit_dsn))
    code, out, err = _invoke(pg_audit_dsn, "exec-a2", "-n", "ops")
    assert code == 0, err
    assert "Transitions (6)" in out and "EvictionBlocked" in out and "node-1" in out
    for phase in PHASES:
        assert phase in out

    code, out, err = _invoke(pg_audit_dsn, "exec-a1", "-o", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["execution_uid"] == "a4"  # the newest of that name
    assert [t["seq"] for t in doc["transitions"]] == list(range(6))
    assert doc["parameters"]["scaleDeployment"]["replicas"] == 3

    code, out, err = _invoke(pg_audit_dsn, "exec-a1")
    assert "1 older execution(s)" in out

    code, out, err = _invoke(pg_audit_dsn, "no-such-exec")
    assert code == 1 and "no audit record" in err


def test_cli_unreachable_database_is_a_clear_error() -> None:
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/kexec"
    result = CliRunner().invoke(audit, ["--dsn", dsn, "--timeout", "2"])
    assert result.exit_code == 1
    assert "cannot read the audit database at 127.0.0.1" in result.stderr
    assert "hunter2" not in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)

    result = CliRunner().invoke(audit, [], env={"KEXEC_AUDIT_DSN": ""})
    assert result.exit_code == 2 and "KEXEC_AUDIT_DSN" in result.stderr
