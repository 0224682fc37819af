"""Build the audit records of an execution from its (already redacted) status."""

from __future__ import annotations

from typing import Any

from kexec.application.ports.audit import ExecutionRecord, TransitionRecord
from kexec.domain.execution import Execution
from kexec.domain.phases import Phase
from kexec.domain.safety import target_of
from kexec.domain.status import JobRun, Validation


def transitions(ex: Execution, controller: str) -> list[TransitionRecord]:
    out: list[TransitionRecord] = []
    previous = ""
    for item in ex.status.transitions:
        out.append(TransitionRecord(
            execution_uid=ex.uid, seq=item.seq, time=item.time, from_phase=previous,
            to_phase=item.phase.value, reason=item.reason, message=item.message,
            controller=controller,
        ))
        previous = item.phase.value
    return out


def execution_record(ex: Execution) -> ExecutionRecord:
    spec: dict[str, Any] = ex.spec
    status = ex.status
    params = spec.get("parameters") or {}
    inner: Any = next(iter(params.values()), {}) if isinstance(params, dict) and params else {}
    target = target_of(ex)
    run = status.job_run or JobRun()
    report = run.report
    phase = ex.phase
    terminal = ex.terminal
    wf = spec.get("workflowExecutionRef") or {}
    validation = status.validation or Validation()
    dry = validation.dry_run
    return ExecutionRecord(
        execution_uid=ex.uid,
        name=ex.name,
        namespace=ex.namespace,
        action=str(spec.get("action", "")),
        parameters=inner if isinstance(inner, dict) else {},
        target_namespace=target.namespace if target else "",
        target_kind=target.kind if target else "",
        target_name=target.name if target else "",
        phase=phase.value if phase else "",
        reason=status.reason,
        message=status.message,
        created_at=ex.created,
        workflow_name=str(wf.get("name", "")) if isinstance(wf, dict) else "",
        workflow_namespace=str(wf.get("namespace", "")) if isinstance(wf, dict) else "",
        step_number=spec.get("stepNumber"),
        success=(phase is Phase.COMPLETED) if terminal else None,
        started_at=run.start_time,
        completed_at=run.completion_time,
        job_name=run.job_name,
        pod_name=run.pod_name,
        exit_code=run.exit_code,
        attempts=run.attempts,
        max_retries=int(spec.get("maxRetries", 2) or 0),
        dry_run=bool(spec.get("dryRun", False)),
        policy_decision=validation.policy,
        dry_run_result=None if dry is None else {
            "performed": dry.performed, "success": dry.success, "warnings": list(dry.warnings),
            "errors": list(dry.errors)},
        rollback=status.rollback,
        rollback_of=str(spec.get("rollbackOf", "")),
        extra=_extra(ex, report),
    )


def _extra(ex: Execution, report: dict[str, Any]) -> dict[str, Any]:
    """Who asked, who approved, and what changed."""
    out: dict[str, Any] = {}
    if report:
        out["changes"] = report.get("changes", [])
    if ex.status.requested_by:
        out["requestedBy"] = ex.status.requested_by
    if ex.status.approval is not None:
        out["approvedBy"] = ex.status.approval.by
    return out
