from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class AuditUnavailable(Exception):
    """The audit store could not confirm a write; the caller re-sends later."""


@dataclass(frozen=True)
class TransitionRecord:
    """One phase transition. Unique key: (execution_uid, seq)."""

    execution_uid: str
    seq: int  # 0-based position in the execution's transition history
    time: datetime
    from_phase: str  # "" for the first transition
    to_phase: str
    reason: str
    message: str
    controller: str  # identity of the controller replica that made it


@dataclass(frozen=True)
class ExecutionRecord:
    """The one-row summary of an execution (upserted on every transition).

    Every value is already redacted: no secret value may reach this record.
    """

    execution_uid: str
    name: str
    namespace: str
    action: str
    parameters: dict[str, Any]
    target_namespace: str
    target_kind: str
    target_name: str
    phase: str
    reason: str
    message: str
    created_at: datetime
    workflow_name: str = ""
    workflow_namespace: str = ""
    step_number: int | None = None
    success: bool | None = None  # None while not terminal
    started_at: datetime | None = None
    completed_at: datetime | None = None
    job_name: str = ""
    pod_name: str = ""
    exit_code: int | None = None
    attempts: int = 0
    max_retries: int = 0
    dry_run: bool = False
    policy_decision: dict[str, Any] | None = None
    dry_run_result: dict[str, Any] | None = None
    rollback: dict[str, Any] | None = None
    rollback_of: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def transitions_by_seq(
    execution: ExecutionRecord, transitions: Sequence[TransitionRecord]
) -> dict[int, TransitionRecord]:
    """One record() call's transitions keyed by seq (the last of a duplicated seq wins, as
    in PostgreSQL). A transition of another execution is the caller's bug: ValueError."""
    uid = execution.execution_uid
    by_seq: dict[int, TransitionRecord] = {}
    for t in transitions:
        if t.execution_uid != uid:
            raise ValueError(f"transition of {t.execution_uid!r} recorded with execution {uid!r}")
        by_seq[t.seq] = t
    return by_seq


class AuditPort(Protocol):
    """Append-only audit trail. Every write is idempotent.

    ``record`` upserts the execution row and inserts the transitions that the
    store does not have yet (unique on execution_uid + seq), in one
    transaction. Sending the same transitions again is harmless, which is what
    makes replay after an outage or a restart safe.
    """

    async def record(
        self, execution: ExecutionRecord, transitions: Sequence[TransitionRecord]
    ) -> None:
        """Raise AuditUnavailable when the write was not confirmed."""
        ...

    async def confirmed_transitions(self, execution_uid: str) -> int:
        """How many transitions of this execution the store holds (for finalizer release)."""
        ...
