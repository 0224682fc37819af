"""ReconcileExecution: level-triggered, one idempotent step per call.

Each call reads the execution as given, decides the single next step from
its phase, performs it, writes status once (optimistic concurrency: a stale
object gets Conflict and changes nothing), records the transition in the
audit trail and emits an Event. Calling it again with the same object makes
no second change: Job names are deterministic, ensure-operations are
idempotent, and the status write is guarded by resourceVersion.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kexec.application.audit_record import execution_record, transitions
from kexec.application.policy_input import build_policy_input
from kexec.application.ports.audit import AuditPort, AuditUnavailable
from kexec.application.ports.clock import Clock
from kexec.application.ports.cluster import (
    ClusterError,
    ClusterPort,
    Identity,
    JobRequest,
    JobState,
    TooManyRequests,
)
from kexec.application.ports.policy import PolicyPort, PolicyUnavailable
from kexec.application.settings import Settings
from kexec.application.snapshot import read_snapshot, snapshot_objects
from kexec.domain.actions import Action, Context
from kexec.domain.errors import SafetyViolation, ValidationError
from kexec.domain.execution import (
    FINALIZER,
    Execution,
    entered,
    iso,
    parse_spec,
    parse_time,
    set_condition,
    transition,
)
from kexec.domain.phases import Phase
from kexec.domain.resources import Evict
from kexec.domain.safety import (
    check_namespace,
    check_target_cluster,
    holder_of,
    redact,
    secret_values,
    target_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """What the caller (the work queue) should do next."""

    requeue_after: float | None = None  # seconds; None = wait for the next event
    wrote: bool = False
    resource_version: str = ""  # of our last write, when wrote


DONE = StepResult()


def identity_for(ex_namespace: str, action: str, settings: Settings) -> Identity:
    return Identity(ex_namespace, settings.service_account_prefix + action.replace("_", "-"))


def job_name(ex: Execution) -> str:
    """Deterministic: one Job per execution attempt, whatever the number of reconciles."""
    digest = hashlib.sha256(ex.uid.encode()).hexdigest()[:8]
    return f"{ex.name[:50].rstrip('-.')}-{digest}"


class ReconcileExecution:
    def __init__(
        self,
        cluster: ClusterPort,
        policy: PolicyPort,
        audit: AuditPort,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self.cluster = cluster
        self.policy = policy
        self.audit = audit
        self.clock = clock
        self.settings = settings

    async def __call__(self, ex: Execution) -> StepResult:
        if ex.deleting:
            return await self._release(ex)
        if ex.terminal:
            return await self._release(ex) if FINALIZER in ex.finalizers else DONE
        if FINALIZER not in ex.finalizers:
            # Deletion waits until the audit trail holds every transition. Bookkeeping,
            # not a step: go on with the fresh object it returns.
            ex = ex.copy()
            ex.finalizers.append(FINALIZER)
            ex = await self.cluster.update_execution(ex)
        phase = ex.phase
        if phase in (None, Phase.PENDING, Phase.VALIDATING):
            return await self._validate(ex)
        if phase is Phase.WAITING_APPROVAL:
            return await self._await_approval(ex)
        if phase is Phase.PREPARING:
            return await self._launch(ex)
        if phase is Phase.EXECUTING:
            return await self._watch_job(ex)
        if phase is Phase.VERIFYING:
            return await self._verify(ex)
        return DONE

    # --- steps ------------------------------------------------------------------------

    async def _validate(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        new = ex.copy()
        st = new.status
        if await self.cluster.paused():
            return await self._hold(ex, "Paused", "the global kill switch pauses new executions",
                                    self.settings.requeue_paused_seconds)
        try:
            spec, action, params = parse_spec(ex.spec)
        except ValidationError as exc:
            set_condition(st, "Validated", False, exc.reason, str(exc), now, ex.generation)
            return await self._fail(ex, new, exc.reason, str(exc))
        try:
            check_target_cluster(spec)
            check_namespace(ex.namespace, action, action.target(params),
                            self.settings.trusted_namespaces | {self.settings.controller_namespace})
        except SafetyViolation as exc:
            set_condition(st, "Validated", False, exc.reason, exc.message, now, ex.generation)
            return await self._fail(ex, new, exc.reason, exc.message)

        others = await self.cluster.list_executions()
        holder = holder_of(ex, others)
        if holder is not None:
            return await self._hold(ex, "TargetBusy",
                                    f"waiting for {holder.key} which acts on the same target",
                                    self.settings.requeue_busy_seconds)

        identity = identity_for(ex.namespace, action.name, self.settings)
        target = action.target(params)
        try:
            await self.cluster.ensure_identity(identity, action.name, target.namespace)
            snap = await read_snapshot(self.cluster, action.reads(params), identity)
        except ClusterError as exc:
            if exc.retryable:
                raise
            set_condition(st, "Validated", False, exc.reason, exc.message, now, ex.generation)
            return await self._fail(ex, new, "TargetUnreadable", f"{target}: {exc.message}")
        secrets = secret_values(snapshot_objects(snap))

        checks = action.preconditions(params, snap)
        st.setdefault("validation", {})["preconditions"] = [c.to_status() for c in checks]
        failed = [c for c in checks if not c.passed]
        if failed:
            reason = "TargetNotFound" if failed[0].name == "TargetExists" else "PreconditionFailed"
            msg = "; ".join(f"{c.name}: {c.message}" for c in failed)
            set_condition(st, "Validated", False, reason, msg, now, ex.generation)
            return await self._fail(ex, new, reason, redact(msg, secrets))

        active = _active_by_namespace(others, ex)
        facts = await self.cluster.cluster_facts(target.namespace)
        doc = build_policy_input(ex, spec, action, params, snap, facts, active, now,
                                 self.settings.trusted_namespaces | {self.settings.controller_namespace})
        try:
            decision = await self.policy.decide(doc)
        except PolicyUnavailable as exc:
            # Fail closed: nothing proceeds without a decision; retry later.
            set_condition(st, "PolicyAllowed", None, "PolicyEngineUnavailable", str(exc), now,
                          ex.generation)
            return await self._hold(
                ex, "PolicyEngineUnavailable", f"policy engine unavailable: {exc}",
                self.settings.requeue_policy_unavailable_seconds, new=new, phase=Phase.VALIDATING)
        st["validation"]["policy"] = decision.to_status()
        if not decision.allowed:
            rules = ", ".join(sorted({v.rule for v in decision.violations})) or "policy"
            detail = "; ".join(f"{v.rule}: {v.message}" for v in decision.violations)
            set_condition(st, "PolicyAllowed", False, "PolicyDenied", detail, now, ex.generation)
            return await self._fail(ex, new, "PolicyDenied", f"denied by {rules}: {detail}")
        set_condition(st, "PolicyAllowed", True, "PolicyAllowed",
                      "approval required" if decision.requires_approval else "", now, ex.generation)

        ctx = self._context(ex, now)
        dry: dict[str, Any] = {"performed": True, "success": True, "warnings": [], "errors": []}
        st["validation"]["dryRun"] = dry
        try:
            for mutation in action.plan(params, snap, ctx):
                try:
                    await self.cluster.mutate(mutation, identity=identity, dry_run=True)
                except TooManyRequests as exc:
                    if not isinstance(mutation, Evict):
                        raise
                    # A PodDisruptionBudget at its limit now; the runner waits for it.
                    dry["warnings"].append(f"{mutation.ref}: {exc.message}")
        except ClusterError as exc:
            if exc.retryable:
                raise
            dry.update(success=False, errors=[redact(f"{exc.reason}: {exc.message}", secrets)])
            set_condition(st, "Validated", False, "DryRunFailed", dry["errors"][0], now,
                          ex.generation)
            return await self._fail(ex, new, "DryRunFailed", dry["errors"][0])

        st["validation"]["guard"] = action.guard(params, snap)
        st["validation"]["before"] = redact(action.summarize(snap.get("target")), secrets)
        set_condition(st, "Validated", True, "Validated", "parameters, target, preconditions, "
                      "policy and server-side dry run passed", now, ex.generation)
        self._enter(new, Phase.VALIDATING, "Validating", "", now)
        if spec.dry_run:
            set_condition(st, "Executed", False, "DryRun", "dryRun: nothing was changed", now,
                          ex.generation)
            transition(st, Phase.COMPLETED, "DryRunSucceeded",
                       "validation passed; dryRun: nothing was changed", now)
        elif decision.requires_approval and not spec.approval_received:
            set_condition(st, "Approved", False, "ApprovalRequired", "waiting for approval", now,
                          ex.generation)
            transition(st, Phase.WAITING_APPROVAL, "ApprovalRequired",
                       "policy requires approval: set spec.approvalReceived", now)
        else:
            if decision.requires_approval:
                set_condition(st, "Approved", True, "Approved", spec.approved_by, now,
                              ex.generation)
            transition(st, Phase.PREPARING, "Validated", "", now)
        return await self._commit(ex, new)

    async def _await_approval(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        new = ex.copy()
        spec_approved = bool(ex.spec.get("approvalReceived"))
        if spec_approved:
            by = str(ex.spec.get("approvedBy") or "")
            set_condition(new.status, "Approved", True, "Approved",
                          f"approved by {by}" if by else "approved", now, ex.generation)
            transition(new.status, Phase.PREPARING, "Approved", by, now)
            return await self._commit(ex, new)
        since = entered(ex.status, Phase.WAITING_APPROVAL) or now
        left = self.settings.approval_timeout_seconds - (now - since).total_seconds()
        if left <= 0:
            set_condition(new.status, "Approved", False, "ApprovalTimeout",
                          "no approval in time", now, ex.generation)
            return await self._fail(ex, new, "ApprovalTimeout",
                                    f"not approved within {self.settings.approval_timeout_seconds}s")
        return StepResult(requeue_after=left)

    async def _launch(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        if await self.cluster.paused():
            return await self._hold(ex, "Paused", "the global kill switch pauses new executions",
                                    self.settings.requeue_paused_seconds, phase=Phase.PREPARING)
        spec = parse_spec(ex.spec)[0]
        timeout = spec.effective_timeout()
        name = await self._create_job(ex, timeout)
        new = ex.copy()
        run = new.status.setdefault("execution", {})
        run.update(jobName=name, startTime=iso(now), attempts=0,
                   deadline=iso(now + timedelta(seconds=timeout)))
        transition(new.status, Phase.EXECUTING, "JobCreated", f"job {name}", now)
        return await self._commit(ex, new)

    async def _create_job(self, ex: Execution, seconds: int) -> str:
        """Ensure the identity, then create the attempt's Job (idempotent: fixed name)."""
        spec, action, params = parse_spec(ex.spec)
        identity = identity_for(ex.namespace, action.name, self.settings)
        await self.cluster.ensure_identity(identity, action.name, action.target(params).namespace)
        name = (ex.status.get("execution") or {}).get("jobName") or job_name(ex)
        guard = ex.status.get("validation", {}).get("guard") or {}
        await self.cluster.create_job(JobRequest(
            namespace=ex.namespace,
            name=name,
            execution_name=ex.name,
            execution_uid=ex.uid,
            service_account=identity.service_account,
            env=runner_env(ex, action, spec.parameters, guard, seconds, self.clock.now()),
            backoff_limit=spec.max_retries,
            active_deadline_seconds=seconds,
            ttl_seconds_after_finished=self.settings.job_ttl_seconds,
            labels={"kubernetesexecution.kubernaut.io/execution": ex.name[:63],
                    "kubernetesexecution.kubernaut.io/action": action.name.replace("_", "-")},
            avoid_nodes=_avoid(action, params),
        ))
        return name

    async def _watch_job(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        run = ex.status.get("execution") or {}
        name = run.get("jobName") or job_name(ex)
        job = await self.cluster.get_job(ex.namespace, name)
        deadline = parse_time(run.get("deadline")) or now
        if job is None:
            if now < deadline:
                # Lost before it reported (e.g. deleted by hand): the same name again.
                return await self._launch_again(ex)
            return await self._fail(ex, ex.copy(), "JobLost", f"job {name} disappeared")
        if not job.finished:
            if now > deadline + timedelta(seconds=self.settings.deadline_grace_seconds):
                return await self._fail(ex, self._with_job(ex, job), "DeadlineExceeded",
                                        "the Job did not finish within the timeout")
            # Attempts are recorded when the Job finishes: no status write per pod start.
            return StepResult(requeue_after=self.settings.requeue_poll_seconds)
        new = self._with_job(ex, job)
        report = job.report or {}
        if job.success:
            set_condition(new.status, "Executed", True, "JobSucceeded", f"job {name}", now,
                          ex.generation)
            transition(new.status, Phase.VERIFYING, "JobSucceeded", "", now)
            return await self._commit(ex, new)
        reason = "DeadlineExceeded" if job.reason == "DeadlineExceeded" else (
            str(report.get("reason") or job.reason or "JobFailed"))
        message = str(report.get("message") or job.message or "the Job failed")
        set_condition(new.status, "Executed", False, reason, message, now, ex.generation)
        return await self._fail(ex, new, reason, message)

    async def _verify(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        _, action, params = parse_spec(ex.spec)
        identity = identity_for(ex.namespace, action.name, self.settings)
        snap = await read_snapshot(self.cluster, action.reads(params), identity)
        report = (ex.status.get("execution") or {}).get("report") or {}
        checks = action.postconditions(params, snap, report)
        new = ex.copy()
        new.status["postconditions"] = [redact(c.to_status()) for c in checks]
        if all(c.passed for c in checks):
            set_condition(new.status, "Verified", True, "PostconditionsPassed", "", now,
                          ex.generation)
            new.status.setdefault("execution", {})["completionTime"] = iso(now)
            transition(new.status, Phase.COMPLETED, "Succeeded", "", now)
            return await self._commit(ex, new)
        deadline = parse_time((ex.status.get("execution") or {}).get("deadline")) or now
        if now < deadline:
            if new.status["postconditions"] != ex.status.get("postconditions"):
                return await self._commit(ex, new, event=False, requeue=1.0)
            return StepResult(requeue_after=self.settings.requeue_poll_seconds)
        msg = "; ".join(f"{c.name}: {c.message}" for c in checks if not c.passed)
        set_condition(new.status, "Verified", False, "PostconditionFailed", msg, now, ex.generation)
        new.status.setdefault("execution", {})["completionTime"] = iso(now)
        rollback = ex.status.get("rollback") or {}
        if rollback.get("available"):
            transition(new.status, Phase.ROLLBACK_READY, "PostconditionFailed",
                       f"{msg}; use `kexec rollback {ex.name}` to undo", now)
            return await self._commit(ex, new, warning=True)
        return await self._fail(ex, new, "PostconditionFailed", msg)

    # --- helpers ------------------------------------------------------------------------

    async def _launch_again(self, ex: Execution) -> StepResult:
        """The Job vanished before reporting (deleted by hand): the same name again."""
        deadline = parse_time((ex.status.get("execution") or {}).get("deadline"))
        left = (deadline - self.clock.now()).total_seconds() if deadline else 1
        await self._create_job(ex, max(1, int(left)))
        return StepResult(requeue_after=self.settings.requeue_poll_seconds)

    def _with_job(self, ex: Execution, job: JobState) -> Execution:
        new = ex.copy()
        run = new.status.setdefault("execution", {})
        run["attempts"] = job.attempts
        if job.pod_name:
            run["podName"] = job.pod_name
        if job.exit_code is not None:
            run["exitCode"] = job.exit_code
        if job.finished:
            run["completionTime"] = iso(self.clock.now())
        report = redact(dict(job.report or {}))
        if report:
            run["report"] = report
            run["resourcesAffected"] = report.get("changes", [])
            if isinstance(report.get("rollback"), dict):
                new.status["rollback"] = report["rollback"]
        return new

    def _context(self, ex: Execution, now: datetime) -> Context:
        return Context(ex.name, ex.namespace, ex.uid, iso(now))

    def _enter(self, new: Execution, phase: Phase, reason: str, message: str, now: datetime) -> None:
        """Record the intermediate phases a single step passes through."""
        if new.phase is None:
            transition(new.status, Phase.PENDING, "Created", "", now)
        if new.phase is Phase.PENDING and phase is not Phase.PENDING:
            transition(new.status, Phase.VALIDATING, reason, message, now)

    async def _hold(
        self,
        ex: Execution,
        reason: str,
        message: str,
        requeue: float,
        *,
        new: Execution | None = None,
        phase: Phase = Phase.PENDING,
    ) -> StepResult:
        """Stay (or enter Pending/Validating) with a reason; write only when it changed."""
        now = self.clock.now()
        new = new or ex.copy()
        self._enter(new, phase, "Validating", "", now)
        new.status["reason"], new.status["message"] = reason, message
        if new.status == ex.status:
            return StepResult(requeue_after=requeue)
        result = await self._commit(ex, new, event=ex.status.get("reason") != reason)
        return StepResult(requeue_after=requeue, wrote=result.wrote,
                          resource_version=result.resource_version)

    async def _fail(self, ex: Execution, new: Execution, reason: str, message: str) -> StepResult:
        now = self.clock.now()
        self._enter(new, Phase.FAILED, "Validating", "", now)
        new.status.setdefault("execution", {}).setdefault("completionTime", iso(now))
        transition(new.status, Phase.FAILED, reason, message, now)
        return await self._commit(ex, new, warning=True)

    async def _commit(
        self,
        ex: Execution,
        new: Execution,
        *,
        event: bool = True,
        warning: bool = False,
        requeue: float | None = 0,
    ) -> StepResult:
        new.status["observedGeneration"] = ex.generation
        target = target_of(new)
        if target is not None:
            new.status["target"] = target.key  # the Target printer column
        new.status = redact(new.status)
        saved = await self.cluster.update_status(new)
        if event and saved.phase is not None:
            kind = "Warning" if warning else "Normal"
            await self.cluster.emit_event(
                saved, kind, str(saved.status.get("reason", "")),
                f"{saved.phase.value}: {saved.status.get('message', '')}".rstrip(": "))
        await self.record_audit(saved)
        return StepResult(requeue_after=None if saved.terminal else requeue, wrote=True,
                          resource_version=saved.resource_version)

    async def record_audit(self, ex: Execution) -> bool:
        """Send the execution's summary and transitions; True once the store confirms all."""
        try:
            await self.audit.record(execution_record(ex),
                                    transitions(ex, self.settings.controller_id))
            return True
        except AuditUnavailable as exc:
            log.warning("audit write for %s not confirmed: %s", ex.key, exc)
            return False

    async def _release(self, ex: Execution) -> StepResult:
        """Drop the audit finalizer once the store holds every transition."""
        if FINALIZER not in ex.finalizers:
            return DONE
        await self.record_audit(ex)
        history = ex.status.get("phaseTransitions") or []
        want = int(history[-1].get("seq", len(history) - 1)) + 1 if history else 0
        try:
            have = await self.audit.confirmed_transitions(ex.uid)
        except AuditUnavailable:
            return StepResult(requeue_after=5.0)
        if have < want:
            return StepResult(requeue_after=5.0)
        new = ex.copy()
        new.finalizers.remove(FINALIZER)
        saved = await self.cluster.update_execution(new)
        return StepResult(wrote=True, resource_version=saved.resource_version)


def runner_env(
    ex: Execution,
    action: Action[Any],
    parameters: Any,
    guard: dict[str, str],
    deadline_seconds: int,
    now: datetime,
) -> dict[str, str]:
    import json

    return {
        "KEXEC_ACTION": action.name,
        "KEXEC_PARAMETERS": json.dumps(dict(parameters), sort_keys=True),
        "KEXEC_EXECUTION_NAME": ex.name,
        "KEXEC_EXECUTION_NAMESPACE": ex.namespace,
        "KEXEC_EXECUTION_UID": ex.uid,
        "KEXEC_GUARD": json.dumps(guard, sort_keys=True),
        "KEXEC_DEADLINE_SECONDS": str(deadline_seconds),
        "KEXEC_STARTED_AT": iso(now),
    }



def _avoid(action: Action[Any], params: Any) -> tuple[str, ...]:
    """A node action's Job never runs on the node it cordons or drains."""
    target = action.target(params)
    return (target.name,) if target.kind == "Node" else ()


def _active_by_namespace(others: list[Execution], ex: Execution) -> dict[str, int]:
    counts: dict[str, int] = {}
    for other in others:
        if other.uid != ex.uid and not other.terminal and other.phase not in (None, Phase.PENDING):
            counts[other.namespace] = counts.get(other.namespace, 0) + 1
    return counts
