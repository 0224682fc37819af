"""RecordedMetrics: the Metrics port as a list of calls, for tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RecordedMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def named(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]

    def transition(self, action: str, phase: str, reason: str) -> None:
        self.calls.append(("transition", (action, phase, reason)))

    def execution_finished(self, action: str, result: str, seconds: float) -> None:
        self.calls.append(("execution_finished", (action, result, seconds)))

    def job_created(self, seconds: float) -> None:
        self.calls.append(("job_created", (seconds,)))

    def job_finished(self, action: str, result: str, seconds: float) -> None:
        self.calls.append(("job_finished", (action, result, seconds)))

    def dry_run(self, result: str, seconds: float) -> None:
        self.calls.append(("dry_run", (result, seconds)))

    def policy_decided(self, result: str, seconds: float, denied_rules: Sequence[str]) -> None:
        self.calls.append(("policy_decided", (result, seconds, tuple(denied_rules))))

    def rbac_prepared(self, seconds: float) -> None:
        self.calls.append(("rbac_prepared", (seconds,)))

    def audit_written(self, confirmed: bool) -> None:
        self.calls.append(("audit_written", (confirmed,)))

    def storm_brake(self, action: str, engaged: bool) -> None:
        self.calls.append(("storm_brake", (action, engaged)))
