"""Audit write throughput: N executions x 6 transitions through PostgresAudit.

Each execution is written the way the controller writes it: one ``record()`` call per
phase transition, carrying the execution snapshot and the transition history so far.
Runs against a throw-away server (devstack/postgres.py) unless --dsn is given.

    .venv/bin/python bench/audit_throughput.py [--executions 2000] [--concurrency 1,10,50]
        [--pool 10] [--dsn postgresql://...]

--durable runs the throw-away server with fsync and synchronous_commit on (the test
server has them off). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from kexec.adapters.audit.outbox import OutboxAudit
from kexec.adapters.audit.postgres import PostgresAudit, create_pool, migrate
from kexec.application.ports.audit import AuditPort, ExecutionRecord, TransitionRecord

PHASES = ["Pending", "Validating", "Preparing", "Executing", "Verifying", "Completed"]


def snapshot(uid: str, seq: int, t0: datetime) -> tuple[ExecutionRecord, list[TransitionRecord]]:
    ts = [
        TransitionRecord(uid, i, t0 + timedelta(milliseconds=10 * i), PHASES[i - 1] if i else "",
                         PHASES[i], f"Reason{i}", f"phase {PHASES[i]}", "kexec-bench")
        for i in range(seq + 1)
    ]  # fmt: skip
    terminal = seq == len(PHASES) - 1
    rec = ExecutionRecord(
        execution_uid=uid, name=f"bench-{uid[:8]}", namespace="bench", action="scale_deployment",
        parameters={"scaleDeployment": {"namespace": "bench", "deployment": "web", "replicas": 3}},
        target_namespace="bench", target_kind="Deployment", target_name="web",
        phase=PHASES[seq], reason=f"Reason{seq}", message=f"phase {PHASES[seq]}", created_at=t0,
        success=True if terminal else None, attempts=1 if seq >= 3 else 0, max_retries=2,
        started_at=t0 if seq >= 3 else None,
        completed_at=t0 + timedelta(seconds=1) if terminal else None,
        policy_decision={"allowed": True, "requiresApproval": False, "violations": []},
        dry_run_result={"performed": True, "success": True, "warnings": []},
    )  # fmt: skip
    return rec, ts


@dataclass
class Row:
    writer: str
    concurrency: int
    pool: int
    executions: int
    calls: int
    transitions: int
    seconds: float
    latencies: list[float]

    def markdown(self) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        return (
            f"| {self.writer} | {self.concurrency} | {self.pool} | {self.executions} | "
            f"{self.calls} | {self.seconds:.2f} | {self.calls / self.seconds:,.0f} | "
            f"{self.transitions / self.seconds:,.0f} | {p50:.2f} | {p99:.2f} |"
        )


async def run(dsn: str, writer: str, executions: int, concurrency: int, pool_size: int) -> Row:
    pool = await create_pool(dsn, min_size=pool_size, max_size=pool_size)
    store: AuditPort = PostgresAudit(pool)
    outbox: OutboxAudit | None = None
    if writer == "OutboxAudit(PostgresAudit)":
        outbox = OutboxAudit(store, registry=CollectorRegistry())
        await outbox.start()
        store = outbox
    t0 = datetime.now(UTC)
    uids = [str(uuid.uuid4()) for _ in range(executions)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for u in uids:
        queue.put_nowait(u)
    latencies: list[float] = []

    async def worker() -> None:
        while True:
            try:
                uid = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            for seq in range(len(PHASES)):
                rec, ts = snapshot(uid, seq, t0)
                started = time.perf_counter()
                await store.record(rec, ts)
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if outbox is not None:
        assert await outbox.flush(max_wait=60)
    seconds = time.perf_counter() - started
    if outbox is not None:
        await outbox.stop()
    async with pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM kubernetes_execution_audit_events WHERE execution_uid = ANY($1)",
            uids,
        )
    await pool.close()
    assert n == executions * len(PHASES), n
    return Row(writer, concurrency, pool_size, executions, executions * len(PHASES), n, seconds,
               latencies)  # fmt: skip


async def main_async(args: argparse.Namespace, dsn: str) -> list[Row]:
    await migrate(dsn)
    rows = []
    for writer in ("PostgresAudit", "OutboxAudit(PostgresAudit)"):
        for c in args.concurrency:
            rows.append(await run(dsn, writer, args.executions, c, args.pool))
            print(rows[-1].markdown(), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 10, 50])  # fmt: skip
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--dsn", help="use this database instead of a throw-away server")
    parser.add_argument(
        "--durable",
        action="store_true",
        help="throw-away server with fsync, synchronous_commit, full_page_writes on",
    )
    args = parser.parse_args()

    server = None
    dsn = args.dsn
    if dsn is None:
        from devstack.postgres import PostgresServer

        durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        server = PostgresServer(settings=durable if args.durable else None).start()
        dsn = server.dsn
    try:
        rows = asyncio.run(main_async(args, dsn))
    finally:
        if server is not None:
            server.stop()
    print(
        "| writer | concurrent tasks | pool | executions | record() calls | seconds | calls/s "
        "| transitions/s | p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())
    if server is not None:
        mode = (
            "fsync=on, synchronous_commit=on"
            if args.durable
            else "fsync=off, synchronous_commit=off"
        )
        print(
            f"\n(throw-away server: {mode}; "
            "one record() per transition carrying the history so far)"
        )


if __name__ == "__main__":
    main()
