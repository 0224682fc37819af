"""The Metrics port: what the use cases report, with bounded labels only.

Labels are actions (the registry's names), phases, reasons, results and policy rule
names — never an execution's name, namespace or UID. The Prometheus adapter lives in
``kexec.adapters.metrics``; ``NoMetrics`` is the default and ``RecordedMetrics``
(adapters.fakes) records calls for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Metrics(Protocol):
    def transition(self, action: str, phase: str, reason: str) -> None:
        """An execution entered ``phase`` (one call per recorded transition)."""

    def execution_finished(self, action: str, result: str, seconds: float) -> None:
        """Terminal: ``result`` is the terminal phase; ``seconds`` since creation."""

    def job_created(self, seconds: float) -> None:
        """Binding + Job creation latency of one launch."""

    def job_finished(self, action: str, result: str, seconds: float) -> None:
        """The Job's run time (start to completion), ``result`` success|failure."""

    def dry_run(self, result: str, seconds: float) -> None:
        """One server-side dry run: ``result`` success|failure."""

    def policy_decided(self, result: str, seconds: float, denied_rules: Sequence[str]) -> None:
        """One policy evaluation: ``result`` allow|deny|unavailable; the rules that denied."""

    def rbac_prepared(self, seconds: float) -> None:
        """Acquiring the per-action identity binding for one execution."""

    def audit_written(self, confirmed: bool) -> None:
        """One audit write attempt from a step: confirmed by the store or not (outboxed)."""

    def storm_brake(self, action: str, engaged: bool) -> None:
        """The storm brake of ``action`` engaged (tripped) or cleared."""


class NoMetrics:
    """Reports nothing (the default of the use cases)."""

    def transition(self, action: str, phase: str, reason: str) -> None:
        pass

    def execution_finished(self, action: str, result: str, seconds: float) -> None:
        pass

    def job_created(self, seconds: float) -> None:
        pass

    def job_finished(self, action: str, result: str, seconds: float) -> None:
        pass

    def dry_run(self, result: str, seconds: float) -> None:
        pass

    def policy_decided(self, result: str, seconds: float, denied_rules: Sequence[str]) -> None:
        pass

    def rbac_prepared(self, seconds: float) -> None:
        pass

    def audit_written(self, confirmed: bool) -> None:
        pass

    def storm_brake(self, action: str, engaged: bool) -> None:
        pass
