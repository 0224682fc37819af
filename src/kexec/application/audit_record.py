"""Build the audit records of an execution from its (already redacted) status."""

from __future__ import annotations

from typing import Any

from kexec.application.ports.audit import ExecutionRecord, TransitionRecord
from kexec.domain.execution import Execution, parse_time
from kexec.domain.phases import Phase
from kexec.domain.safety import target_of


def transitions(ex: Execution, controller: str) -> list[TransitionRecord]:
    out: list[TransitionRecord] = []
    previous = ""
    for index, item in enumerate(ex.status.get("phaseTransitions") or []):
        seq = int(item.get("seq", index))
        when = parse_time(item.get("time")) or ex.created
        out.append(TransitionRecord(
            execution_uid=ex.uid, seq=seq, time=when, from_phase=previous,
            to_phase=str(item.get("phase", "")), reason=str(item.get("reason", "")),
            message=str(item.get("message", "")), controller=controller,
        ))
        previous = str(item.get("phase", ""))
    return out


def execution_record(ex: Execution) -> ExecutionRecord:
    spec: dict[str, Any] = ex.spec
    status = ex.status
    params = spec.get("parameters") or {}
    inner: Any = next(iter(params.values()), {}) if isinstance(params, dict) and params else {}
    target = target_of(ex)
    run = status.get("execution") or {}
    report = run.get("report") or {}
    phase = ex.phase
    terminal = ex.terminal
    wf = spec.get("workflowExecutionRef") or {}
    validation = status.get("validation") or {}
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
        reason=str(status.get("reason", "")),
        message=str(status.get("message", "")),
        created_at=ex.created,
        workflow_name=str(wf.get("name", "")) if isinstance(wf, dict) else "",
        workflow_namespace=str(wf.get("namespace", "")) if isinstance(wf, dict) else "",
        step_number=spec.get("stepNumber"),
        success=(phase is Phase.COMPLETED) if terminal else None,
        started_at=parse_time(run.get("startTime")),
        completed_at=parse_time(run.get("completionTime")),
        job_name=str(run.get("jobName", "")),
        pod_name=str(run.get("podName", "")),
        exit_code=run.get("exitCode"),
        attempts=int(run.get("attempts", 0) or 0),
        max_retries=int(spec.get("maxRetries", 2) or 0),
        dry_run=bool(spec.get("dryRun", False)),
        policy_decision=validation.get("policy"),
        dry_run_result=validation.get("dryRun"),
        rollback=status.get("rollback"),
        rollback_of=str(spec.get("rollbackOf", "")),
        extra={"changes": report.get("changes", [])} if report else {},
    )
