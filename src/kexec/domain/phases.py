"""The phase state machine of a KubernetesExecution (DESIGN.md, "phases")."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    WAITING_APPROVAL = "WaitingApproval"
    PREPARING = "Preparing"
    EXECUTING = "Executing"
    VERIFYING = "Verifying"
    COMPLETED = "Completed"
    FAILED = "Failed"
    ROLLBACK_READY = "RollbackReady"


TERMINAL: frozenset[Phase] = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.ROLLBACK_READY})

# The explicit transition table. Any non-terminal phase may also go to Failed.
_FORWARD: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.VALIDATING}),
    # Validating → Completed is the dryRun: true exit.
    Phase.VALIDATING: frozenset({Phase.WAITING_APPROVAL, Phase.PREPARING, Phase.COMPLETED}),
    Phase.WAITING_APPROVAL: frozenset({Phase.PREPARING}),
    Phase.PREPARING: frozenset({Phase.EXECUTING}),
    Phase.EXECUTING: frozenset({Phase.VERIFYING}),
    Phase.VERIFYING: frozenset({Phase.COMPLETED, Phase.ROLLBACK_READY}),
}

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    phase: (_FORWARD.get(phase, frozenset()) | ({Phase.FAILED} if phase not in TERMINAL else set()))
    for phase in Phase
}


class IllegalTransition(Exception):
    def __init__(self, src: Phase | None, dst: Phase) -> None:
        super().__init__(f"illegal phase transition {src or '<new>'} -> {dst}")
        self.src = src
        self.dst = dst


def check_transition(src: Phase | None, dst: Phase) -> None:
    """Raise IllegalTransition unless src → dst is in the table (None = a new object)."""
    if src is None:
        if dst is not Phase.PENDING:
            raise IllegalTransition(src, dst)
        return
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(src, dst)


def is_terminal(phase: Phase | None) -> bool:
    return phase in TERMINAL
