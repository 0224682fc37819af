"""The typed status of a KubernetesExecution and its parts.

Plain dataclasses: the aggregate (``execution.Execution``) changes them
through its intent methods; the Kubernetes adapter converts them to and from
the wire JSON (``adapters/kubernetes/wire.py``) in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kexec.domain.phases import Phase
from kexec.domain.resources import Check

MAX_TRANSITIONS = 32
CONDITION_TYPES = ("Validated", "PolicyAllowed", "Approved", "Executed", "Verified")


@dataclass
class Condition:
    """Kubernetes condition convention (metav1.Condition)."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition_time: datetime
    observed_generation: int


@dataclass
class Transition:
    """One entry of status.phaseTransitions; ``seq`` is stable (the audit key)."""

    seq: int
    phase: Phase
    time: datetime
    reason: str = ""
    message: str = ""


@dataclass
class DryRunResult:
    performed: bool = True
    success: bool = True
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Validation:
    """What validation found, and what the later steps must hold on to."""

    policy: dict[str, Any] | None = None  # PolicyDecision.to_status()
    dry_run: DryRunResult | None = None
    preconditions: list[Check] = field(default_factory=list)
    guard: dict[str, str] = field(default_factory=dict)
    before: dict[str, Any] | None = None
    # The hash of the spec that was validated (approval fields excluded) and the
    # generation it had: later steps act only on that spec.
    spec_hash: str = ""
    generation: int = 0


@dataclass
class JobRun:
    """The Job that carries the action out (status.execution on the wire)."""

    job_name: str = ""
    start_time: datetime | None = None
    deadline: datetime | None = None
    completion_time: datetime | None = None
    attempts: int = 0
    pod_name: str = ""
    exit_code: int | None = None
    report: dict[str, Any] = field(default_factory=dict)
    resources_affected: list[dict[str, Any]] = field(default_factory=list)
    # While the Job runs (drain): podsTotal, podsEvicted, podsLeft, blocked, updated.
    progress: dict[str, Any] = field(default_factory=dict)


@dataclass
class Approval:
    by: str
    at: datetime


@dataclass
class ExecutionStatus:
    phase: Phase | None = None
    reason: str = ""
    message: str = ""
    target: str = ""
    observed_generation: int = 0
    conditions: list[Condition] = field(default_factory=list)
    validation: Validation | None = None
    job_run: JobRun | None = None
    postconditions: list[Check] = field(default_factory=list)
    rollback: dict[str, Any] | None = None
    requested_by: str = ""
    approval: Approval | None = None
    transitions: list[Transition] = field(default_factory=list)

    def condition(self, ctype: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == ctype), None)

    def entered(self, phase: Phase) -> datetime | None:
        """When the execution last entered ``phase``."""
        for item in reversed(self.transitions):
            if item.phase is phase:
                return item.time
        return None

    @property
    def next_seq(self) -> int:
        return self.transitions[-1].seq + 1 if self.transitions else 0
