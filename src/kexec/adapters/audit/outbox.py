"""OutboxAudit: an AuditPort whose ``record`` never fails on an outage.

It wraps any AuditPort (PostgresAudit in production). ``record`` tries the write
at once while the store is healthy; when the store cannot confirm it, the record
stays in memory and a background task re-sends it with backoff (0.5 s doubling to
30 s) until it is confirmed. Durability across a crash does not come from this
buffer but from the Kubernetes object itself (``status.phaseTransitions``): the
controller replays every execution at start and keeps a finalizer until
``confirmed_transitions(uid)`` covers all its transitions (docs/audit.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from kexec.application.ports.audit import (
    AuditPort,
    AuditUnavailable,
    ExecutionRecord,
    TransitionRecord,
    transitions_by_seq,
)
from kexec.runtime.backoff import Backoff, poll

log = logging.getLogger("kexec.audit")


@dataclass
class _Pending:
    """What the store has not confirmed yet for one execution."""

    execution: ExecutionRecord
    exec_seq: int  # newest seq among the transitions that came with ``execution``
    carrier: TransitionRecord | None  # the transition with seq == exec_seq
    execution_unconfirmed: bool
    transitions: dict[int, TransitionRecord] = field(default_factory=dict)


@dataclass
class _Confirmed:
    """What the store has confirmed for one execution (so re-sends cost nothing)."""

    watermark: int = -1  # every seq <= watermark is confirmed
    above: set[int] = field(default_factory=set)  # confirmed seqs beyond a gap
    execution: ExecutionRecord | None = None
    exec_seq: int = -1

    def has(self, seq: int) -> bool:
        return seq <= self.watermark or seq in self.above

    def add(self, seq: int) -> None:
        if seq <= self.watermark:
            return
        self.above.add(seq)
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)


class OutboxAudit:
    """AuditPort decorator: buffer unconfirmed writes, re-send until confirmed.

    Semantics:

    - ``record`` never raises AuditUnavailable (nor any error of the inner port). While
      the store is healthy it writes inline; otherwise, or when that write fails, it
      keeps the record and returns at once (no waiting on a dead database).
    - Per execution uid the newest snapshot wins (the one whose transitions reach the
      highest seq; on a tie the later call), and transitions are merged by seq.
    - It remembers what the store confirmed (transition seqs and the last execution
      snapshot per uid, for up to ``max_tracked`` uids), so re-sending confirmed data
      costs no round trip. When only the execution snapshot changed, the newest
      transition is sent along with it (a no-op insert) so the store can order it.
    - Writes of one uid are serialized; different uids are flushed concurrently.
    - ``confirmed_transitions`` asks the inner store (raises AuditUnavailable while
      it is down): the finalizer decision must rest on what the database holds.
    """

    def __init__(
        self,
        inner: AuditPort,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        flush_concurrency: int = 4,
        max_tracked: int = 100_000,
    ) -> None:
        self._inner = inner
        self._backoff = Backoff(min_backoff, max_backoff, jitter=0.2)
        self._concurrency = max(1, flush_concurrency)
        self._max_tracked = max_tracked
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._confirmed: OrderedDict[str, _Confirmed] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._degraded = False
        self._degraded_since = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # something to send
        self._kick = asyncio.Event()  # cut a backoff sleep short (flush/stop)
        self._stopping = asyncio.Event()
        # Called with an execution uid once everything sent for it is confirmed (the
        # controller wakes an ended execution waiting to drop its audit finalizer).
        self.on_confirmed: Callable[[str], None] | None = None
        self._records_gauge = Gauge(
            "kexec_audit_unconfirmed_records",
            "Phase-transition records not yet confirmed by the audit store",
            registry=registry,
        )
        self._records_gauge.set_function(lambda: float(self.pending()))
        self._executions_gauge = Gauge(
            "kexec_audit_unconfirmed_executions",
            "Executions with audit data not yet confirmed by the audit store",
            registry=registry,
        )
        self._executions_gauge.set_function(lambda: float(self.pending_executions()))

    # ------------------------------------------------------------------ state

    def pending(self) -> int:
        """Number of transition records the store has not confirmed. Also read by /metrics
        from a worker thread: the values are copied in one step (no Python code runs while
        the C-level copy iterates), so a write on the event loop cannot break the iteration
        ("OrderedDict mutated during iteration" made a scrape answer 500)."""
        return sum(len(p.transitions) for p in tuple(self._pending.values()))

    def pending_executions(self) -> int:
        """Number of executions with anything unconfirmed (a transition or the row)."""
        return len(self._pending)

    @property
    def degraded(self) -> bool:
        """True after a failed write, until a write succeeds again."""
        return self._degraded

    def forget(self, execution_uid: str) -> None:
        """Drop what is remembered as confirmed for this uid (e.g. the object is gone).
        Unconfirmed data is never dropped."""
        self._confirmed.pop(execution_uid, None)

    # ------------------------------------------------------------------ AuditPort

    async def record(
        self, execution: ExecutionRecord, transitions: Sequence[TransitionRecord]
    ) -> None:
        uid = execution.execution_uid
        by_seq = transitions_by_seq(execution, transitions)
        top = by_seq[max(by_seq)] if by_seq else None
        seq = top.seq if top else -1

        conf = self._confirmed.get(uid)
        new = {s: t for s, t in by_seq.items() if conf is None or not conf.has(s)}
        if conf is None or conf.execution is None:
            execution_needed = True
        else:
            execution_needed = seq > conf.exec_seq or (
                seq == conf.exec_seq and execution != conf.execution
            )

        entry = self._pending.get(uid)
        if entry is None:
            if not new and not execution_needed:
                return  # all confirmed already: no round trip
            entry = _Pending(execution, seq, top, execution_needed, new)
            self._pending[uid] = entry
        else:
            if execution_needed and seq >= entry.exec_seq:
                entry.execution, entry.exec_seq, entry.carrier = execution, seq, top
                entry.execution_unconfirmed = True
            entry.transitions.update(new)

        if self._degraded and self._task is not None and not self._task.done():
            self._wake.set()  # the flusher owns the retries; do not wait on a dead store
            return
        if not await self._try_send(uid):
            self._wake.set()

    async def confirmed_transitions(self, execution_uid: str) -> int:
        return await self._inner.confirmed_transitions(execution_uid)

    # ------------------------------------------------------------------ sending

    @contextlib.asynccontextmanager
    async def _uid_lock(self, uid: str) -> AsyncIterator[None]:
        lock, refs = self._locks.get(uid) or (asyncio.Lock(), 0)
        self._locks[uid] = (lock, refs + 1)
        try:
            async with lock:
                yield
        finally:
            lock, refs = self._locks[uid]
            if refs <= 1:
                del self._locks[uid]
            else:
                self._locks[uid] = (lock, refs - 1)

    async def _send(self, uid: str) -> None:
        """Send what is pending for ``uid``; raises AuditUnavailable (or a bug) on failure."""
        async with self._uid_lock(uid):
            entry = self._pending.get(uid)
            if entry is None:
                return
            execution, exec_seq = entry.execution, entry.exec_seq
            sent = dict(entry.transitions)
            payload = dict(sent)
            if entry.carrier is not None:
                payload.setdefault(entry.carrier.seq, entry.carrier)
            await self._inner.record(execution, [payload[s] for s in sorted(payload)])

            conf = self._confirmed.get(uid)
            if conf is None:
                conf = self._confirmed[uid] = _Confirmed()
                while len(self._confirmed) > self._max_tracked:
                    self._confirmed.popitem(last=False)
            else:
                self._confirmed.move_to_end(uid)
            for s in payload:
                conf.add(s)
            if conf.execution is None or exec_seq >= conf.exec_seq:
                conf.execution, conf.exec_seq = execution, exec_seq

            # ``entry`` may have been merged into while we awaited: drop only what we sent
            # (records are frozen values: an equal one that arrived meanwhile is confirmed too).
            for s, t in sent.items():
                if entry.transitions.get(s) == t:
                    del entry.transitions[s]
            if entry.exec_seq == exec_seq and entry.execution == execution:
                entry.execution_unconfirmed = False
            if not entry.transitions and not entry.execution_unconfirmed:
                self._pending.pop(uid, None)
                if self.on_confirmed is not None:
                    self.on_confirmed(uid)

    async def _try_send(self, uid: str) -> bool:
        try:
            await self._send(uid)
        except AuditUnavailable as e:
            self._set_degraded(str(e))
            return False
        except Exception as e:  # a bug in the inner port must not stop the controller
            log.exception("audit write of %s failed unexpectedly", uid)
            self._set_degraded(f"{type(e).__name__}: {e}")
            return False
        if self._degraded:
            self._degraded = False
            log.warning(
                "audit store is back after %.1fs; %d transition records still to re-send",
                time.monotonic() - self._degraded_since,
                self.pending(),
            )
        return True

    def _set_degraded(self, why: str) -> None:
        if not self._degraded:
            self._degraded = True
            self._degraded_since = time.monotonic()
            log.warning("audit store unavailable, buffering records in memory: %s", why)

    # ------------------------------------------------------------------ background flush

    async def start(self) -> None:
        """Start the background flush task (idempotent)."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="kexec-audit-outbox")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the flush task after one last attempt to send what is pending (bounded by
        ``grace`` seconds). What is still unconfirmed then is left to the controller's replay."""
        self._stopping.set()
        self._kick.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pending:
            log.warning(
                "audit outbox stopped with %d unconfirmed transition records "
                "(they are replayed from the Kubernetes objects at the next start)",
                self.pending(),
            )

    async def flush(self, max_wait: float = 10.0) -> bool:
        """Wait until nothing is pending (cutting a backoff sleep short); True if drained."""

        async def drained() -> bool:
            if not self._pending:
                return True
            if self._task is None or self._task.done():
                await self._flush_round()
            else:
                self._wake.set()
                self._kick.set()
            return not self._pending

        return await poll(drained, backoff=Backoff(0.01, 0.01), within=max_wait)

    async def _run(self) -> None:
        self._backoff.reset()
        while not self._stopping.is_set():
            if not self._pending:
                self._wake.clear()
                if not self._pending:
                    await _wait_any(self._wake, self._stopping)
                continue
            self._kick.clear()
            sent, failed = await self._flush_round()
            if not failed:
                self._backoff.reset()
                continue
            # When some were sent the store answers (something is wrong with one record):
            # retry soon, without growing the backoff.
            delay = self._backoff.delay(1) if sent else self._backoff.next()
            await _wait_any(self._kick, self._stopping, at_most=delay)
        # one last round on the way out
        if self._pending:
            await self._flush_round()

    async def _flush_round(self) -> tuple[int, int]:
        """Try every pending uid (``flush_concurrency`` at a time), oldest first; stop at the
        first failed batch and move the failed uids to the back, so one poisoned record
        cannot starve the others."""
        uids = list(self._pending)
        sent = failed = 0
        for i in range(0, len(uids), self._concurrency):
            batch = uids[i : i + self._concurrency]
            results = await asyncio.gather(*(self._try_send(u) for u in batch))
            for uid, ok in zip(batch, results, strict=True):
                if ok:
                    sent += 1
                else:
                    failed += 1
                    if uid in self._pending:
                        self._pending.move_to_end(uid)
            if failed:
                break
        return sent, failed


async def _wait_any(*events: asyncio.Event, at_most: float | None = None) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=at_most, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
