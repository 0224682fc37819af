"""The KubernetesExecution aggregate: spec parsing, and a typed status that
changes only through the aggregate's intent methods (each records a phase
transition together with its condition and reason)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kexec.domain.phases import Phase, check_transition, is_terminal
from kexec.domain.resources import Check
from kexec.domain.spec import spec_hash
from kexec.domain.status import (
    MAX_TRANSITIONS,
    Approval,
    Condition,
    DryRunResult,
    ExecutionStatus,
    JobRun,
    Transition,
    Validation,
)

GROUP = "kubernetesexecution.kubernaut.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "KubernetesExecution"
PLURAL = "kubernetesexecutions"
FINALIZER = f"{GROUP}/audit"


# Written by the cluster's admission (deploy/base/admission.yaml), never by a client: who created
# the execution, as the API server authenticated them.
REQUESTED_BY = f"{GROUP}/requested-by"
REQUESTED_BY_GROUPS = f"{GROUP}/requested-by-groups"
def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class Execution:
    """One KubernetesExecution: identity, raw spec, and a typed status.

    The status changes only through the intent methods below; each checks the
    phase table and records the transition with its reason and condition.
    """

    namespace: str
    name: str
    uid: str = ""
    generation: int = 1
    resource_version: str = ""
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    finalizers: list[str] = field(default_factory=list)
    deleting: bool = False
    spec: dict[str, Any] = field(default_factory=dict)
    status: ExecutionStatus = field(default_factory=ExecutionStatus)
    # (generation, target) memo: the target depends on the spec only, and every
    # validation compares it with every other execution's.
    target_memo: tuple[int, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def phase(self) -> Phase | None:
        return self.status.phase

    @property
    def terminal(self) -> bool:
        return is_terminal(self.phase)

    @property
    def job_run(self) -> JobRun:
        if self.status.job_run is None:
            self.status.job_run = JobRun()
        return self.status.job_run

    @property
    def validation(self) -> Validation:
        if self.status.validation is None:
            self.status.validation = Validation()
        return self.status.validation

    def copy(self) -> Execution:
        return replace(self, labels=dict(self.labels), annotations=dict(self.annotations),
                       finalizers=list(self.finalizers), spec=copy.deepcopy(self.spec),
                       status=copy.deepcopy(self.status), target_memo=None)

    # --- identity facts -----------------------------------------------------------------

    @property
    def requester(self) -> str:
        """The creating user as admission recorded it ("" when admission did not run)."""
        return self.annotations.get(REQUESTED_BY, "")

    @property
    def requester_groups(self) -> tuple[str, ...]:
        raw = self.annotations.get(REQUESTED_BY_GROUPS, "")
        return tuple(g for g in raw.split(",") if g)

    def spec_matches_validation(self) -> bool:
        """What runs is what was checked: the spec still hashes to the validated one."""
        v = self.status.validation
        return v is not None and bool(v.spec_hash) and v.spec_hash == spec_hash(self.spec)

    # --- bookkeeping primitives -------------------------------------------------------

    def _transition(self, to: Phase, reason: str, message: str, now: datetime) -> None:
        st = self.status
        check_transition(st.phase, to)
        st.phase, st.reason, st.message = to, reason, message
        st.transitions.append(Transition(st.next_seq, to, now, reason, message))
        # Bounded: keep the first entry (creation) and the most recent ones; seq stays
        # stable (the audit trail is keyed by it).
        if len(st.transitions) > MAX_TRANSITIONS:
            del st.transitions[1 : len(st.transitions) - MAX_TRANSITIONS + 1]

    def set_condition(self, ctype: str, value: bool | None, reason: str, message: str,
                      now: datetime) -> None:
        """Kubernetes convention: lastTransitionTime moves only when the status flips."""
        state = "Unknown" if value is None else ("True" if value else "False")
        cond = self.status.condition(ctype)
        if cond is None:
            self.status.conditions.append(
                Condition(ctype, state, reason, message, now, self.generation))
            return
        if cond.status != state:
            cond.last_transition_time = now
        cond.status, cond.reason, cond.message = state, reason, message
        cond.observed_generation = self.generation

    def _enter(self, phase: Phase, now: datetime) -> None:
        """Record the intermediate phases a single step passes through."""
        if self.phase is None:
            self._transition(Phase.PENDING, "Created", "", now)
        if self.phase is Phase.PENDING and phase is not Phase.PENDING:
            self._transition(Phase.VALIDATING, "Validating", "", now)

    # --- intent methods -----------------------------------------------------------------

    def hold(self, reason: str, message: str, now: datetime,
             phase: Phase = Phase.PENDING) -> None:
        """Wait (in Pending, or Validating) with a reason saying why."""
        self._enter(phase, now)
        self.status.reason, self.status.message = reason, message

    def storm_braked(self, message: str, now: datetime) -> None:
        """Held by its action's storm brake: the condition says so (hold gives the reason)."""
        self.set_condition("StormBrake", True, "StormBrake", message, now)

    def storm_brake_cleared(self, now: datetime) -> bool:
        """Going on after the brake held it; True when it had held it."""
        cond = self.status.condition("StormBrake")
        if cond is None or cond.status != "True":
            return False
        self.set_condition("StormBrake", False, "BrakeClear",
                           "the storm brake was released or its window passed", now)
        return True

    def fail(self, reason: str, message: str, now: datetime) -> None:
        self._enter(Phase.FAILED, now)
        run = self.job_run
        run.completion_time = run.completion_time or now
        self._transition(Phase.FAILED, reason, message, now)

    def reject(self, gate: str, reason: str, message: str, now: datetime) -> None:
        """A check failed: its condition says so, and the execution ends Failed."""
        self.set_condition(gate, False, reason, message, now)
        self.fail(reason, message, now)

    def record_requester(self, user: str) -> None:
        self.status.requested_by = user

    def record_preconditions(self, checks: list[Check]) -> None:
        self.validation.preconditions = list(checks)

    def policy_unavailable(self, message: str, now: datetime) -> None:
        """Fail closed: nothing proceeds without a decision (stays Validating)."""
        self.set_condition("PolicyAllowed", None, "PolicyEngineUnavailable", message, now)
        self.hold("PolicyEngineUnavailable", f"policy engine unavailable: {message}", now,
                  phase=Phase.VALIDATING)

    def policy_decided(self, decision: dict[str, Any], allowed: bool, detail: str,
                       now: datetime) -> None:
        self.validation.policy = decision
        if allowed:
            self.set_condition("PolicyAllowed", True, "PolicyAllowed", detail, now)
        else:
            self.set_condition("PolicyAllowed", False, "PolicyDenied", detail, now)

    def dry_run_failed(self, result: DryRunResult, now: datetime) -> None:
        self.validation.dry_run = result
        self.reject("Validated", "DryRunFailed", result.errors[0] if result.errors else "", now)

    def validated(self, *, dry_run: DryRunResult, guard: dict[str, str],
                  before: dict[str, Any] | None, requires_approval: bool, now: datetime) -> None:
        """Validation passed: pin the spec, then dry-run exit, approval gate or Preparing."""
        v = self.validation
        v.dry_run, v.guard, v.before = dry_run, guard, before
        v.spec_hash, v.generation = spec_hash(self.spec), self.generation
        self.set_condition("Validated", True, "Validated", "parameters, target, preconditions, "
                           "policy and server-side dry run passed", now)
        self._enter(Phase.VALIDATING, now)
        if bool(self.spec.get("dryRun")):
            self.set_condition("Executed", False, "DryRun", "dryRun: nothing was changed", now)
            self._transition(Phase.COMPLETED, "DryRunSucceeded",
                             "validation passed; dryRun: nothing was changed", now)
        elif requires_approval:
            self.set_condition("Approved", False, "ApprovalRequired", "waiting for approval", now)
            self._transition(Phase.WAITING_APPROVAL, "ApprovalRequired",
                             "policy requires approval by a second person: "
                             "`kexec approve` (spec.approvalReceived + spec.approvedBy)", now)
        else:
            self._transition(Phase.PREPARING, "Validated", "", now)

    def approved(self, by: str, now: datetime) -> None:
        self.status.approval = Approval(by, now)
        self.set_condition("Approved", True, "Approved", f"approved by {by}", now)
        self._transition(Phase.PREPARING, "Approved", f"approved by {by}", now)

    def approval_refused(self, message: str, now: datetime) -> None:
        """An approval that does not count: still waiting, and the condition says why."""
        self.set_condition("Approved", False, "ApprovalNotValid", message, now)
        self.status.message = message

    def approval_timed_out(self, seconds: int, now: datetime) -> None:
        self.set_condition("Approved", False, "ApprovalTimeout", "no approval in time", now)
        self.fail("ApprovalTimeout", f"not approved within {seconds}s", now)

    def launched(self, job_name: str, deadline: datetime, now: datetime) -> None:
        run = self.job_run
        run.job_name, run.start_time, run.attempts, run.deadline = job_name, now, 0, deadline
        self._transition(Phase.EXECUTING, "JobCreated", f"job {job_name}", now)

    def job_observed(self, *, attempts: int, pod_name: str, exit_code: int | None,
                     finished: bool, report: dict[str, Any], now: datetime) -> None:
        """What the Job and the runner's report say (changes, rollback), redacted."""
        run = self.job_run
        run.attempts = attempts
        run.pod_name = pod_name or run.pod_name
        if exit_code is not None:
            run.exit_code = exit_code
        if finished:
            run.completion_time = now
        if report:
            run.report = report
            run.resources_affected = list(report.get("changes") or [])
            if isinstance(report.get("rollback"), dict):
                self.status.rollback = report["rollback"]

    def changes_reconstructed(self, changes: list[dict[str, Any]],
                              rollback: dict[str, Any]) -> None:
        """The runner stopped without a report: what changed, as the controller judged it
        from the before-state captured at validation and the state now."""
        self.job_run.resources_affected = list(changes)
        self.status.rollback = rollback

    def progress_observed(self, progress: dict[str, Any], now: datetime) -> None:
        """How far the running action is (drain: pods evicted, left, and what blocks them)."""
        run = self.job_run
        base = run.progress.get("podsTotal") if run.progress else None
        total = base if isinstance(base, int) else progress.get("podsLeft", 0)
        left = progress.get("podsLeft", 0)
        run.progress = {"podsTotal": total, "podsEvicted": max(0, total - left), **progress,
                        "updated": iso(now)}

    def job_succeeded(self, now: datetime) -> None:
        self.set_condition("Executed", True, "JobSucceeded", f"job {self.job_run.job_name}", now)
        self._transition(Phase.VERIFYING, "JobSucceeded", "", now)

    def job_failed(self, reason: str, message: str, now: datetime) -> None:
        self.reject("Executed", reason, message, now)

    def checked(self, checks: list[Check]) -> bool:
        """Record the postconditions seen now; True when they changed."""
        changed = [c.to_status() for c in checks] != [
            c.to_status() for c in self.status.postconditions]
        self.status.postconditions = list(checks)
        return changed

    def verified(self, now: datetime) -> None:
        self.set_condition("Verified", True, "PostconditionsPassed", "", now)
        self.job_run.completion_time = now
        self._transition(Phase.COMPLETED, "Succeeded", "", now)

    def verification_failed(self, message: str, now: datetime) -> None:
        """After a change: RollbackReady when a rollback exists, else Failed."""
        self.set_condition("Verified", False, "PostconditionFailed", message, now)
        self.job_run.completion_time = now
        if (self.status.rollback or {}).get("available"):
            self._transition(Phase.ROLLBACK_READY, "PostconditionFailed",
                             f"{message}; use `kexec rollback {self.name}` to undo", now)
        else:
            self.fail("PostconditionFailed", message, now)
