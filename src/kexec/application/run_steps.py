"""The steps after validation: approval, the Job, verification."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime, timedelta

from kexec.application.ports.cluster import ClusterError, JobRequest, JobState
from kexec.application.snapshot import read_snapshot
from kexec.application.step import StepBase, StepResult
from kexec.domain.actions import rollback_status
from kexec.domain.execution import Execution, iso, parse_time
from kexec.domain.phases import Phase
from kexec.domain.resources import Check
from kexec.domain.safety import check_namespace, redact
from kexec.domain.spec import APPROVAL_FIELDS, parse_spec, spec_hash


def job_name(ex: Execution) -> str:
    """Deterministic: one Job per execution, whatever the number of reconciles."""
    digest = hashlib.sha256(ex.uid.encode()).hexdigest()[:8]
    return f"{ex.name[:50].rstrip('-.')}-{digest}"


class RunSteps(StepBase):
    async def _await_approval(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        new = ex.copy()
        refusal = self._approval_refusal(ex)
        if refusal is None:
            new.approved(str(ex.spec.get("approvedBy")), now)
            return await self._commit(ex, new)
        since = ex.status.entered(ex.phase) if ex.phase else None
        left = self.settings.approval_timeout_seconds - (now - (since or now)).total_seconds()
        if left <= 0:
            new.approval_timed_out(self.settings.approval_timeout_seconds, now)
            return await self._commit(ex, new)
        if refusal:
            new.approval_refused(refusal, now)
            if new.status != ex.status:
                await self._commit(ex, new)
        return StepResult(requeue_after=left)

    def _approval_refusal(self, ex: Execution) -> str | None:
        """None when a valid approval is present; else why not ("" = none given yet).

        An approval counts only when given after validation (the spec's generation moved
        past the validated one; approval fields are the only spec fields that may change),
        by a user other than the requester. That the approver is who approvedBy says and
        holds the `approve` verb is enforced by kexec's admission policy, whose presence
        validation checked.
        """
        spec = ex.spec
        if not spec.get("approvalReceived"):
            return ""
        by = str(spec.get("approvedBy") or "")
        validated = ex.status.validation.generation if ex.status.validation else 0
        if ex.generation <= validated:
            return ("an approval present before validation does not count: approve again "
                    "(`kexec approve`)")
        if not by:
            return "spec.approvedBy is empty: the approver must name themselves"
        if by == ex.status.requested_by and not self.settings.allow_self_approval:
            return f"{by} requested this execution and may not approve it themselves"
        return None

    async def _launch(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        if await self.cluster.paused():
            return await self._hold(ex, "Paused", "the global kill switch pauses new executions",
                                    self.settings.requeue_paused_seconds, phase=Phase.PREPARING)
        spec = parse_spec(ex.spec)[0]
        timeout = spec.effective_timeout()
        name = await self._create_job(ex, timeout)
        new = ex.copy()
        new.launched(name, now + timedelta(seconds=timeout), now)
        return await self._commit(ex, new)

    async def _create_job(self, ex: Execution, seconds: int) -> str:
        """Bind the identity, then create the Job (idempotent: fixed name). The namespace
        rule and the target are derived again from the validated spec."""
        spec, action, params = parse_spec(ex.spec)
        target = action.target(params)
        check_namespace(ex.namespace, action, target, self.settings.trusted)
        identity = await self.grants.acquire(ex, action.name, target.namespace)
        name = ex.job_run.job_name or job_name(ex)
        guard = ex.status.validation.guard if ex.status.validation else {}
        await self.cluster.create_job(JobRequest(
            namespace=ex.namespace,
            name=name,
            execution_name=ex.name,
            execution_uid=ex.uid,
            service_account=identity.service_account,
            env=runner_env(ex, guard, seconds, self.clock.now()),
            backoff_limit=spec.max_retries,
            active_deadline_seconds=seconds,
            ttl_seconds_after_finished=self.settings.job_ttl_seconds,
            labels={"kubernetesexecution.kubernaut.io/execution": ex.name[:63],
                    "kubernetesexecution.kubernaut.io/action": action.name.replace("_", "-")},
            avoid_nodes=(target.name,) if target.kind == "Node" else (),
        ))
        return name

    async def _watch_job(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        run = ex.job_run
        name = run.job_name or job_name(ex)
        job = await self.cluster.get_job(ex.namespace, name)
        deadline = run.deadline or now
        if job is None:
            if now < deadline:
                # Lost before it reported (e.g. deleted by hand): the same name again.
                await self._create_job(ex, max(1, int((deadline - now).total_seconds())))
                return StepResult(requeue_after=self.settings.requeue_poll_seconds)
            new = ex.copy()
            await self._reconstruct(new)
            return await self._fail(ex, new, "JobLost", f"job {name} disappeared")
        if not job.finished:
            if now > deadline + timedelta(seconds=self.settings.deadline_grace_seconds):
                new = self._with_job(ex, job, now)
                await self._reconstruct(new)
                return await self._fail(ex, new, "DeadlineExceeded",
                                        "the Job did not finish within the timeout")
            # Attempts are recorded when the Job finishes: no status write per pod start.
            return await self._watch_progress(ex, now)
        new = self._with_job(ex, job, now)
        if job.success:
            new.job_succeeded(now)
            return await self._verify(ex, new)
        report = job.report or {}
        reason = "DeadlineExceeded" if job.reason == "DeadlineExceeded" else (
            str(report.get("reason") or job.reason or "JobFailed"))
        message = str(report.get("message") or job.message or "the Job failed")
        await self._reconstruct(new)
        new.job_failed(reason, message, now)
        return await self._commit(ex, new)

    async def _reconstruct(self, new: Execution) -> None:
        """A runner killed mid-action (deadline, pod deleted) left no report: judge what
        changed from the before-state captured at validation and the state now."""
        if "changes" in new.job_run.report:  # the runner told it itself
            return
        _, action, params = parse_spec(new.spec)
        before = new.status.validation.before if new.status.validation else None
        if before is None:
            return
        identity = await self.grants.acquire(new, action.name, action.target(params).namespace)
        try:
            snap = await read_snapshot(self.cluster, action.reads(params), identity)
        except ClusterError as exc:
            if exc.retryable:
                raise
            return
        found = action.reconstruct(params, before, snap)
        if found is not None:
            changes, rollback = found
            new.changes_reconstructed([c.to_status() for c in changes], rollback_status(rollback))

    async def _watch_progress(self, ex: Execution, now: datetime) -> StepResult:
        """While the Job runs: the action's progress from the cluster (drain: pods evicted,
        left, the PodDisruptionBudget blocking each), written at most every few seconds;
        an Event names the blockers when they change."""
        poll = StepResult(requeue_after=self.settings.requeue_poll_seconds)
        _, action, params = parse_spec(ex.spec)
        reads = action.progress_reads(params)
        if not reads:
            # Nothing to watch but the Job, whose end is an event: wake at its deadline only.
            left = ((ex.job_run.deadline or now) - now).total_seconds()
            return StepResult(requeue_after=max(self.settings.requeue_poll_seconds,
                                                left + self.settings.deadline_grace_seconds + 1))
        last = parse_time(ex.job_run.progress.get("updated")) if ex.job_run.progress else None
        if last is not None and (now - last).total_seconds() < self.settings.progress_interval_seconds:
            return poll
        identity = await self.grants.acquire(ex, action.name, action.target(params).namespace)
        try:
            snap = await read_snapshot(self.cluster, reads, identity)
        except ClusterError as exc:
            if exc.retryable:
                raise
            return poll
        progress = action.progress(params, snap)
        if progress is None:
            return poll
        new = ex.copy()
        new.progress_observed(progress, now)
        before = {k: v for k, v in ex.job_run.progress.items() if k != "updated"}
        after = {k: v for k, v in new.job_run.progress.items() if k != "updated"}
        if before == after and last is not None:
            return poll
        blockers = sorted({b["podDisruptionBudget"] for b in progress.get("blocked") or []})
        if blockers and blockers != sorted({b["podDisruptionBudget"]
                                            for b in before.get("blocked") or []}):
            await self.cluster.emit_event(
                ex, "Warning", "EvictionBlocked",
                f"evictions blocked by PodDisruptionBudget {', '.join(blockers)} "
                f"({progress.get('podsLeft', 0)} pods left)")
        result = await self._commit(ex, new, event=False,
                                    requeue=self.settings.requeue_poll_seconds)
        return StepResult(requeue_after=self.settings.requeue_poll_seconds, wrote=result.wrote,
                          resource_version=result.resource_version)

    def _with_job(self, ex: Execution, job: JobState, now: datetime) -> Execution:
        new = ex.copy()
        new.job_observed(attempts=job.attempts, pod_name=job.pod_name, exit_code=job.exit_code,
                         finished=job.finished, report=redact(dict(job.report or {})), now=now)
        return new

    async def _verify(self, ex: Execution, entered: Execution | None = None) -> StepResult:
        """Check the postconditions. ``entered``: ``ex`` just moved to Verifying (its Job
        succeeded), not written yet — when the postconditions hold at once, Verifying and
        Completed are one status write (two transitions, two Events)."""
        now = self.clock.now()
        _, action, params = parse_spec(ex.spec)
        identity = await self.grants.acquire(ex, action.name, action.target(params).namespace)
        snap = await read_snapshot(self.cluster, action.reads(params), identity)
        new = entered or ex.copy()
        checks = [redact_check(c) for c in action.postconditions(params, snap, new.job_run.report)]
        changed = new.checked(checks)
        if all(c.passed for c in checks):
            new.verified(now)
            return await self._commit(ex, new)
        if now < (new.job_run.deadline or now):
            if entered is not None:
                return await self._commit(ex, new, requeue=1.0)
            if changed:
                return await self._commit(ex, new, event=False, requeue=1.0)
            return StepResult(requeue_after=self.settings.requeue_poll_seconds)
        new.verification_failed("; ".join(f"{c.name}: {c.message}" for c in checks
                                          if not c.passed), now)
        return await self._commit(ex, new)


def redact_check(check: Check) -> Check:
    return replace(check, message=redact(check.message))


def runner_env(ex: Execution, guard: dict[str, str], deadline_seconds: int,
               now: datetime) -> dict[str, str]:
    """The runner's orders: the validated spec and its hash (RunAction checks them)."""
    pinned = {k: v for k, v in ex.spec.items() if k not in APPROVAL_FIELDS}
    return {
        "KEXEC_SPEC": json.dumps(pinned, sort_keys=True, separators=(",", ":")),
        "KEXEC_EXECUTION_NAME": ex.name,
        "KEXEC_EXECUTION_NAMESPACE": ex.namespace,
        "KEXEC_EXECUTION_UID": ex.uid,
        "KEXEC_GUARD": json.dumps(guard, sort_keys=True),
        "KEXEC_DEADLINE_SECONDS": str(deadline_seconds),
        "KEXEC_STARTED_AT": iso(now),
        "KEXEC_SPEC_HASH": spec_hash(ex.spec),
    }
