"""What every reconcile step shares: its dependencies, the hold/fail/commit endings."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from kexec.application.audit_record import execution_record, transitions
from kexec.application.brake import StormBrake
from kexec.application.grants import NEEDS_BINDING, Grants, TargetClaims
from kexec.application.limits import HOLDS_SLOT, STORM_BRAKE, Limits
from kexec.application.ports.audit import AuditPort, AuditUnavailable
from kexec.application.ports.clock import Clock
from kexec.application.ports.cluster import ClusterPort, Identity
from kexec.application.ports.metrics import Metrics, NoMetrics
from kexec.application.ports.policy import PolicyPort, PolicyUnavailable
from kexec.application.settings import Settings
from kexec.domain.actions import ACTIONS
from kexec.domain.execution import FINALIZER, Execution
from kexec.domain.phases import Phase
from kexec.domain.policy import PolicyDecision
from kexec.domain.safety import target_of

log = logging.getLogger("kexec.application.reconcile")


@dataclass(frozen=True)
class StepResult:
    """What the caller (the work queue) should do next."""

    requeue_after: float | None = None  # seconds; None = wait for the next event
    wrote: bool = False
    resource_version: str = ""  # of our last write, when wrote


DONE = StepResult()
# An ended execution whose trail the audit store has not confirmed yet looks again this
# often (the outbox re-sends meanwhile, and wakes it when it gets through).
AUDIT_RECHECK_SECONDS = 5.0


def action_label(ex: Execution) -> str:
    """The action as a metric label: a registered action's name, else "unknown" (bounded)."""
    action = ex.spec.get("action")
    return action if isinstance(action, str) and action in ACTIONS else "unknown"


class _TimedPolicy:
    """The policy port, reporting each decision's result, duration and denying rules."""

    def __init__(self, policy: PolicyPort, metrics: Metrics) -> None:
        self.inner = policy
        self.metrics = metrics

    async def decide(self, input_document: dict[str, Any]) -> PolicyDecision:
        start = time.monotonic()
        try:
            decision = await self.inner.decide(input_document)
        except PolicyUnavailable:
            self.metrics.policy_decided("unavailable", time.monotonic() - start, ())
            raise
        self.metrics.policy_decided(
            "allow" if decision.allowed else "deny", time.monotonic() - start,
            sorted({v.rule for v in decision.violations}) if not decision.allowed else ())
        return decision


class _TimedGrants(Grants):
    """Grants, reporting how long preparing the per-action identity (RBAC) takes."""

    def __init__(self, cluster: ClusterPort, settings: Settings, metrics: Metrics) -> None:
        super().__init__(cluster, settings)
        self.metrics = metrics

    async def acquire(self, ex: Execution, action: str, target_namespace: str) -> Identity:
        start = time.monotonic()
        try:
            return await super().acquire(ex, action, target_namespace)
        finally:
            self.metrics.rbac_prepared(time.monotonic() - start)


class StepBase:
    def __init__(
        self,
        cluster: ClusterPort,
        policy: PolicyPort,
        audit: AuditPort,
        clock: Clock,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics: Metrics = metrics or NoMetrics()
        self.cluster = cluster
        self.policy: PolicyPort = _TimedPolicy(policy, self.metrics)
        self.audit = audit
        self.clock = clock
        self.settings = settings
        self.grants: Grants = _TimedGrants(cluster, settings, self.metrics)
        self.claims = TargetClaims()
        self.limits = Limits(settings.limits, settings.policy_data)
        self.brake = StormBrake(lambda: self.limits.settings, self.metrics)

    # --- shared by the steps --------------------------------------------------------------

    async def _hold(self, ex: Execution, reason: str, message: str, requeue: float, *,
                    new: Execution | None = None, phase: Phase = Phase.PENDING) -> StepResult:
        """Stay (or enter Pending/Validating) with a reason; write only when it changed."""
        new = new or ex.copy()
        new.hold(reason, message, self.clock.now(), phase)
        if new.status == ex.status:
            return StepResult(requeue_after=requeue)
        result = await self._commit(ex, new, event=ex.status.reason != reason)
        return StepResult(requeue_after=requeue, wrote=result.wrote,
                          resource_version=result.resource_version)

    async def _fail(self, ex: Execution, new: Execution, reason: str, message: str) -> StepResult:
        new.fail(reason, message, self.clock.now())
        return await self._commit(ex, new)

    async def _commit(self, ex: Execution, new: Execution, *, event: bool = True,
                      requeue: float | None = 0) -> StepResult:
        new.status.observed_generation = ex.generation
        target = target_of(new)
        if target is not None:
            new.status.target = target.key  # the Target printer column
        saved = await self.cluster.update_status(new)
        if saved.terminal:
            self.limits.ended(saved)  # frees its slots, wakes the executions queued behind
        elif saved.phase not in HOLDS_SLOT:
            self.limits.release(saved)  # did not get past validation (held, queued)
        if event and saved.phase is not None:
            warning = (saved.phase in (Phase.FAILED, Phase.ROLLBACK_READY)
                       or saved.status.reason == STORM_BRAKE)
            await self.cluster.emit_event(
                saved, "Warning" if warning else "Normal", saved.status.reason or
                saved.phase.value, event_message(ex, saved))
        if saved.phase is not None and (event or saved.phase is not ex.phase):
            log.info("%s", event_message(ex, saved), extra=log_fields(saved))
        self._observe(ex, saved)
        await self.record_audit(saved)
        if saved.terminal:
            self.claims.release(saved)
        if saved.phase not in NEEDS_BINDING and ex.phase in NEEDS_BINDING | {None, Phase.PENDING}:
            # Left the phases that use the identity: drop its binding when nobody needs it.
            await self.grants.release(saved, await self.cluster.list_executions(active=True))
        if saved.terminal:
            # Ended: let deletion through as soon as the trail is complete (in this same
            # step when the store confirmed it already, as it does while healthy).
            released = await self._release(saved)
            return released if released.wrote else StepResult(
                requeue_after=released.requeue_after, wrote=True,
                resource_version=saved.resource_version)
        return StepResult(requeue_after=requeue, wrote=True,
                          resource_version=saved.resource_version)

    async def _release(self, ex: Execution) -> StepResult:
        """Drop the audit finalizer once the store holds every transition."""
        if FINALIZER not in ex.finalizers:
            return DONE
        await self.record_audit(ex)
        want = ex.status.next_seq
        try:
            have = await self.audit.confirmed_transitions(ex.uid)
        except AuditUnavailable:
            return StepResult(requeue_after=AUDIT_RECHECK_SECONDS)
        if have < want:
            return StepResult(requeue_after=AUDIT_RECHECK_SECONDS)
        new = ex.copy()
        new.finalizers.remove(FINALIZER)
        saved = await self.cluster.update_execution(new)
        return StepResult(wrote=True, resource_version=saved.resource_version)

    def _observe(self, ex: Execution, saved: Execution) -> None:
        """Metrics of what this write changed: transitions, the Job, the end."""
        action = action_label(saved)
        seen = {t.seq for t in ex.status.transitions}
        for t in saved.status.transitions:
            if t.seq not in seen:
                self.metrics.transition(action, t.phase.value, t.reason or "None")
        before, after = ex.status.job_run, saved.status.job_run
        if after and after.job_name and not (before and before.job_name):
            since = saved.status.entered(Phase.PREPARING)
            if since is not None:
                self.metrics.job_created(max(0.0, (self.clock.now() - since).total_seconds()))
        if (after and after.start_time and after.completion_time
                and not (before and before.completion_time)):
            self.metrics.job_finished(
                action, "failure" if saved.phase is Phase.FAILED else "success",
                (after.completion_time - after.start_time).total_seconds())
        if saved.terminal and not ex.terminal and saved.phase is not None:
            ended = saved.status.entered(saved.phase) or self.clock.now()
            self.metrics.execution_finished(action, saved.phase.value,
                                            max(0.0, (ended - saved.created).total_seconds()))

    async def record_audit(self, ex: Execution) -> bool:
        """Send the execution's summary and transitions; True once the store confirms all."""
        try:
            await self.audit.record(execution_record(ex),
                                    transitions(ex, self.settings.controller_id))
            self.metrics.audit_written(True)
            return True
        except AuditUnavailable as exc:
            log.warning("audit write for %s not confirmed: %s", ex.key, exc,
                        extra=log_fields(ex))
            self.metrics.audit_written(False)
            return False


def log_fields(ex: Execution) -> dict[str, Any]:
    """The structured fields of a log line about one execution (never spec values)."""
    return {"execution": ex.name, "namespace": ex.namespace, "uid": ex.uid,
            "action": action_label(ex), "phase": ex.phase.value if ex.phase else "New",
            "reason": ex.status.reason}


# What a human reads in `kubectl describe`, by the phase entered.
_JOB_SUCCEEDED = "Job {job} succeeded"
_EVENT_TEXT = {
    Phase.PENDING: "waiting",
    Phase.VALIDATING: "validating",
    Phase.WAITING_APPROVAL: "validated; waiting for a second person to approve "
                            "(kexec approve)",
    Phase.PREPARING: "validated (policy allowed, dry run passed); preparing the action's "
                     "identity and Job",
    Phase.EXECUTING: "Job {job} started",
    Phase.VERIFYING: _JOB_SUCCEEDED + "; checking the postconditions",
    Phase.COMPLETED: "done: the postconditions hold",
    Phase.FAILED: "failed",
    Phase.ROLLBACK_READY: "postconditions failed; a rollback is ready (kexec rollback {name})",
}


def event_message(ex: Execution, saved: Execution) -> str:
    """One line: what happened (phase change or not) and why, e.g.
    ``Validating → Failed: denied by no_production_drain: ...``."""
    assert saved.phase is not None
    job = saved.status.job_run.job_name if saved.status.job_run else ""
    what = _EVENT_TEXT.get(saved.phase, saved.phase.value).format(job=job, name=saved.name)
    if saved.phase is Phase.COMPLETED and saved.status.validation and \
            saved.spec.get("dryRun"):
        what = "dry run passed: nothing was changed"
    elif saved.phase is not Phase.VERIFYING and any(
            t.phase is Phase.VERIFYING for t in saved.status.transitions
            if t.seq >= ex.status.next_seq):
        # One write through Verifying (the postconditions checked at once): say both.
        what = f"{_JOB_SUCCEEDED.format(job=job)}; {what}"
    moved = f"{ex.phase.value if ex.phase else 'New'} → {saved.phase.value}" \
        if ex.phase is not saved.phase else saved.phase.value
    detail = " ".join(saved.status.message.split())
    line = f"{moved}: {what}" + (
        f" ({detail})" if detail and detail.lower() not in what.lower() else "")
    return line if len(line) <= 1000 else line[:997] + "..."

