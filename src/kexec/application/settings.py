from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kexec.application.limits import LimitSettings
from kexec.domain.naming import CONTROLLER_NAMESPACE


@dataclass(frozen=True)
class Settings:
    """Controller behaviour the use cases need (from flags/env in the entrypoints)."""

    controller_namespace: str = CONTROLLER_NAMESPACE
    trusted_namespaces: frozenset[str] = frozenset({CONTROLLER_NAMESPACE})
    controller_id: str = "kexec"
    approval_timeout_seconds: int = 3600
    job_ttl_seconds: int = 3600
    # Extra seconds the controller waits past the deadline for the Job to report.
    deadline_grace_seconds: int = 10
    requeue_busy_seconds: float = 2.0
    requeue_poll_seconds: float = 1.0
    requeue_policy_unavailable_seconds: float = 5.0
    requeue_paused_seconds: float = 10.0
    # Drain progress in status: at most one write per this many seconds.
    progress_interval_seconds: float = 3.0
    # Approval by the requester themselves counts only when this is set.
    allow_self_approval: bool = False
    # Concurrency limits (queue, never fail): knobs of the policy data.
    limits: LimitSettings = field(default_factory=LimitSettings)
    # The live policy data document, when the engine has one (hot reload of the knobs).
    policy_data: Callable[[], Mapping[str, Any]] | None = None

    @property
    def trusted(self) -> frozenset[str]:
        """Namespaces whose executions may act elsewhere (the controller's own included)."""
        return self.trusted_namespaces | {self.controller_namespace}
