"""RunAction: what the runner does inside the Job pod, under the action's identity.

Read, check the guard captured at validation, check preconditions, perform
the planned mutations, (for drain) wait, then report what changed and how
to undo it. The report is redacted: it becomes the Job's termination message.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kexec.application.ports.clock import Clock
from kexec.application.ports.cluster import ClusterError, Conflict, NotFound, RunnerCluster, TooManyRequests
from kexec.application.snapshot import read_snapshot, snapshot_objects
from kexec.domain.actions import ACTIONS, Action, Context, rollback_status
from kexec.domain.errors import ValidationError
from kexec.domain.resources import Evict, Mutation, Snapshot
from kexec.domain.safety import redact, secret_values
from kexec.domain.spec import spec_hash

# Exit codes of the runner: the Job's podFailurePolicy fails the Job at once on PERMANENT.
EXIT_OK = 0
EXIT_RETRYABLE = 1
EXIT_PERMANENT = 2


@dataclass(frozen=True)
class RunRequest:
    action: str
    parameters: Mapping[str, Any]
    context: Context
    guard: Mapping[str, str] = field(default_factory=dict)
    deadline_seconds: float = 60.0


class SpecMismatch(ValueError):
    """The orders do not hash to the validated spec: the runner refuses to act."""


def request_from_env(env: Mapping[str, str]) -> RunRequest:
    """The runner's orders, from the Job's environment (written by the controller).

    KEXEC_SPEC is the validated spec (approval fields excluded) and KEXEC_SPEC_HASH its
    hash from validation: what runs is what was checked, or nothing runs.
    """
    spec = json.loads(env["KEXEC_SPEC"])
    if spec_hash(spec) != env.get("KEXEC_SPEC_HASH"):
        raise SpecMismatch("the orders do not match the validated spec (KEXEC_SPEC_HASH)")
    action = ACTIONS[spec["action"]]
    return RunRequest(
        action=action.name,
        parameters=spec["parameters"][action.key],
        context=Context(env["KEXEC_EXECUTION_NAME"], env["KEXEC_EXECUTION_NAMESPACE"],
                        env["KEXEC_EXECUTION_UID"], env.get("KEXEC_STARTED_AT", "")),
        guard=json.loads(env.get("KEXEC_GUARD") or "{}"),
        # Leave a margin so the report is written before activeDeadlineSeconds kills us.
        deadline_seconds=max(1.0, float(env.get("KEXEC_DEADLINE_SECONDS", "60")) - 5),
    )


@dataclass
class RunReport:
    success: bool
    retryable: bool = False
    reason: str = ""
    message: str = ""
    execution_uid: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    rollback: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.success:
            return EXIT_OK
        return EXIT_RETRYABLE if self.retryable else EXIT_PERMANENT

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "success": self.success,
            "reason": self.reason,
            "message": self.message,
            "executionUid": self.execution_uid,
            "before": self.before,
            "after": self.after,
            "changes": self.changes,
        }
        if not self.success:
            out["retryable"] = self.retryable
        if self.rollback is not None:
            out["rollback"] = self.rollback
        out.update(self.extra)
        return out


def guard_mismatch(guard: Mapping[str, str], snap: Snapshot) -> str:
    """Why the target no longer is what validation saw ("" when it still is)."""
    obj = snap.get("target")
    if guard.get("absent") == "true":
        return "" if obj is None else "the object was created after validation"
    if not guard:
        return ""
    if obj is None:
        return "the target disappeared after validation"
    meta = obj.get("metadata") or {}
    for key, want in guard.items():
        have = str(meta.get(key, ""))
        if have != want:
            return f"metadata.{key} is {have}, validation saw {want}"
    return ""


async def event_loop_sleep(seconds: float) -> None:
    """asyncio.sleep, imported when first needed: the runner passes a blocking sleep and so
    never loads asyncio (≈ 30 ms CPU and 9 MB at start, DESIGN.md §4)."""
    import asyncio

    await asyncio.sleep(seconds)


class EvictionBlocked(ClusterError):
    """Evictions still refused (PodDisruptionBudget) when the deadline came."""

    status, reason, retryable = 429, "EvictionBlocked", False


class RunAction:
    def __init__(
        self,
        cluster: RunnerCluster,
        clock: Clock,
        sleep: Callable[[float], Awaitable[None]] = event_loop_sleep,
    ) -> None:
        self.cluster = cluster
        self.clock = clock
        self.sleep = sleep

    async def __call__(self, req: RunRequest) -> RunReport:
        action = ACTIONS.get(req.action)
        uid = req.context.execution_uid
        if action is None:
            return RunReport(False, reason="UnknownAction", message=req.action, execution_uid=uid)
        try:
            params = action.parse(req.parameters)
        except ValidationError as exc:
            return RunReport(False, reason="InvalidParameters", message=str(exc), execution_uid=uid)
        start = self.clock.now()

        def remaining() -> float:
            return req.deadline_seconds - (self.clock.now() - start).total_seconds()

        before: Snapshot = {}
        secrets: set[str] = set()
        report = RunReport(False, execution_uid=uid)
        performed: list[Mutation] = []
        try:
            before = await read_snapshot(self.cluster, action.reads(params))
            secrets = secret_values(snapshot_objects(before))
            report.before = action.summarize(before.get("target"))
            changed = guard_mismatch(req.guard, before)
            if changed:
                report.reason, report.message = "TargetChanged", changed
                return self._redacted(report, secrets)
            failed = [c for c in action.preconditions(params, before) if not c.passed]
            if failed:
                report.reason = "PreconditionFailed"
                report.message = "; ".join(f"{c.name}: {c.message}" for c in failed)
                return self._redacted(report, secrets)
            for mutation in action.plan(params, before, req.context):
                await self._perform(mutation, remaining)
                performed.append(mutation)
            after = await read_snapshot(self.cluster, action.reads(params))
            if action.wait_in_runner:
                while not all(c.passed for c in action.postconditions(params, after, {})):
                    if remaining() <= 0:
                        report.reason = "Timeout"
                        report.message = "; ".join(
                            f"{c.name}: {c.message}"
                            for c in action.postconditions(params, after, {}) if not c.passed)
                        await self._tell_the_truth(report, action, params, before, req)
                        return self._redacted(report, secrets)
                    await self.sleep(min(1.0, max(remaining(), 0.01)))
                    after = await read_snapshot(self.cluster, action.reads(params))
            report.success = True
            report.reason = "Succeeded"
            report.after = action.summarize(after.get("target"))
            report.changes = [c.to_status() for c in action.changes(params, before, after)]
            report.rollback = rollback_status(action.rollback(params, before, req.context))
            report.extra = action.report(params, before)
        except Conflict as exc:
            # A resourceVersion guard in the mutation itself: someone changed the target.
            report.reason, report.message = "TargetChanged", exc.message
        except ClusterError as exc:
            report.reason, report.message, report.retryable = exc.reason, exc.message, exc.retryable
        except TimeoutError as exc:
            report.reason, report.message, report.retryable = "Timeout", str(exc), True
        if not report.success and performed:
            await self._tell_the_truth(report, action, params, before, req)
        return self._redacted(report, secrets)

    async def _tell_the_truth(self, report: RunReport, action: Action[Any], params: Any,
                              before: Snapshot, req: RunRequest) -> None:
        """The action began changing the cluster and cannot finish: undo what it undoes by
        itself (drain: uncordonOnFailure), then report every change made, that one too,
        and the rollback of what is left."""
        compensated = False
        try:
            for mutation in action.compensate(params, before):
                await self.cluster.mutate(mutation)
                compensated = True
        except (ClusterError, TimeoutError) as exc:
            report.message = f"{report.message}; could not undo by itself: {exc}"
        try:
            after = await read_snapshot(self.cluster, action.reads(params))
        except (ClusterError, TimeoutError):
            after = {}
        report.after = action.summarize(after.get("target"))
        report.changes = [c.to_status()
                          for c in action.failure_changes(params, before, after, compensated)]
        report.rollback = rollback_status(
            action.failure_rollback(params, before, req.context, compensated))

    async def _perform(self, mutation: Any, remaining: Callable[[], float]) -> None:
        delay = 0.2
        while True:
            try:
                await self.cluster.mutate(mutation)
                return
            except NotFound:
                if isinstance(mutation, Evict):
                    return  # already gone: that is what eviction wanted
                raise
            except TooManyRequests as exc:
                # An eviction a PodDisruptionBudget refuses now: retry until the deadline.
                if not isinstance(mutation, Evict):
                    raise
                if remaining() <= 0:
                    raise EvictionBlocked(f"{mutation.ref}: {exc.message}") from exc
                await self.sleep(min(delay, max(remaining(), 0.01)))
                delay = min(delay * 2, 5.0)

    @staticmethod
    def _redacted(report: RunReport, secrets: set[str]) -> RunReport:
        safe = redact(report.to_dict(), secrets)
        report.message = safe["message"]
        report.before, report.after, report.changes = safe["before"], safe["after"], safe["changes"]
        report.rollback = safe.get("rollback")
        return report

