"""KubernetesExecution objects to and from their wire JSON — the one place that knows it.

The status field names follow DESIGN.md ("status"): the Job run is
``status.execution`` on the wire. Everything written goes through
``redact`` once more, as a last safety net for secret data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kexec.domain.execution import API_VERSION, KIND, Execution, iso, parse_time
from kexec.domain.phases import Phase
from kexec.domain.resources import Check
from kexec.domain.safety import redact
from kexec.domain.status import (
    Approval,
    Condition,
    DryRunResult,
    ExecutionStatus,
    JobRun,
    Transition,
    Validation,
)


def _t(value: datetime | None) -> str | None:
    return iso(value) if value is not None else None


def _phase(value: Any) -> Phase | None:
    try:
        return Phase(value) if value else None
    except ValueError:
        return None


def _checks(items: Any) -> list[Check]:
    return [Check(str(c.get("name", "")), bool(c.get("passed")), str(c.get("message", "")))
            for c in items or [] if isinstance(c, dict)]


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --- status --------------------------------------------------------------------------------


def status_to_wire(st: ExecutionStatus) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if st.phase is not None:
        out["phase"] = st.phase.value
    out["reason"], out["message"] = st.reason, st.message
    if st.target:
        out["target"] = st.target
    if st.observed_generation:
        out["observedGeneration"] = st.observed_generation
    if st.requested_by:
        out["requestedBy"] = st.requested_by
    if st.approval is not None:
        out["approval"] = {"by": st.approval.by, "at": iso(st.approval.at)}
    if st.conditions:
        out["conditions"] = [{
            "type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
            "lastTransitionTime": iso(c.last_transition_time),
            "observedGeneration": c.observed_generation,
        } for c in st.conditions]
    if st.validation is not None:
        v = st.validation
        val: dict[str, Any] = {}
        if v.preconditions:
            val["preconditions"] = [c.to_status() for c in v.preconditions]
        if v.policy is not None:
            val["policy"] = v.policy
        if v.dry_run is not None:
            d = v.dry_run
            val["dryRun"] = {"performed": d.performed, "success": d.success,
                             "warnings": list(d.warnings), "errors": list(d.errors)}
        if v.guard:
            val["guard"] = dict(v.guard)
        if v.before is not None:
            val["before"] = v.before
        if v.spec_hash:
            val["specHash"] = v.spec_hash
            val["generation"] = v.generation
        out["validation"] = val
    if st.job_run is not None:
        r = st.job_run
        run = _compact({
            "jobName": r.job_name or None, "startTime": _t(r.start_time),
            "deadline": _t(r.deadline), "completionTime": _t(r.completion_time),
            "podName": r.pod_name or None, "exitCode": r.exit_code,
            "report": r.report or None,
        })
        if r.job_name:
            run["attempts"] = r.attempts
        if r.report or r.resources_affected:
            run["resourcesAffected"] = list(r.resources_affected)
        if r.progress:
            run["progress"] = dict(r.progress)
        out["execution"] = run
    if st.postconditions:
        out["postconditions"] = [c.to_status() for c in st.postconditions]
    if st.rollback is not None:
        out["rollback"] = st.rollback
    if st.transitions:
        out["phaseTransitions"] = [{
            "seq": t.seq, "phase": t.phase.value, "time": iso(t.time), "reason": t.reason,
            "message": t.message,
        } for t in st.transitions]
    redacted: dict[str, Any] = redact(out)
    return redacted


def status_from_wire(raw: Any) -> ExecutionStatus:
    if not isinstance(raw, dict):
        return ExecutionStatus()
    now = datetime.now(UTC)
    st = ExecutionStatus(
        phase=_phase(raw.get("phase")),
        reason=str(raw.get("reason") or ""),
        message=str(raw.get("message") or ""),
        target=str(raw.get("target") or ""),
        observed_generation=int(raw.get("observedGeneration") or 0),
        requested_by=str(raw.get("requestedBy") or ""),
        postconditions=_checks(raw.get("postconditions")),
        rollback=raw.get("rollback") if isinstance(raw.get("rollback"), dict) else None,
    )
    approval = raw.get("approval")
    if isinstance(approval, dict) and approval.get("by"):
        st.approval = Approval(str(approval["by"]), parse_time(approval.get("at")) or now)
    for c in raw.get("conditions") or []:
        if isinstance(c, dict) and c.get("type"):
            st.conditions.append(Condition(
                str(c["type"]), str(c.get("status", "Unknown")), str(c.get("reason", "")),
                str(c.get("message", "")), parse_time(c.get("lastTransitionTime")) or now,
                int(c.get("observedGeneration") or 0)))
    val = raw.get("validation")
    if isinstance(val, dict):
        dry = val.get("dryRun")
        st.validation = Validation(
            policy=val.get("policy") if isinstance(val.get("policy"), dict) else None,
            dry_run=DryRunResult(bool(dry.get("performed", True)), bool(dry.get("success")),
                                 [str(w) for w in dry.get("warnings") or []],
                                 [str(e) for e in dry.get("errors") or []])
            if isinstance(dry, dict) else None,
            preconditions=_checks(val.get("preconditions")),
            guard={str(k): str(v) for k, v in (val.get("guard") or {}).items()},
            before=val.get("before") if isinstance(val.get("before"), dict) else None,
            spec_hash=str(val.get("specHash") or ""),
            generation=int(val.get("generation") or 0),
        )
    run = raw.get("execution")
    if isinstance(run, dict):
        st.job_run = JobRun(
            job_name=str(run.get("jobName") or ""),
            start_time=parse_time(run.get("startTime")),
            deadline=parse_time(run.get("deadline")),
            completion_time=parse_time(run.get("completionTime")),
            attempts=int(run.get("attempts") or 0),
            pod_name=str(run.get("podName") or ""),
            exit_code=run.get("exitCode") if isinstance(run.get("exitCode"), int) else None,
            report=dict(run["report"]) if isinstance(run.get("report"), dict) else {},
            resources_affected=[c for c in run.get("resourcesAffected") or []
                                if isinstance(c, dict)],
            progress=dict(run["progress"]) if isinstance(run.get("progress"), dict) else {},
        )
    for index, t in enumerate(raw.get("phaseTransitions") or []):
        phase = _phase(t.get("phase")) if isinstance(t, dict) else None
        if phase is not None:
            st.transitions.append(Transition(
                int(t.get("seq", index)), phase, parse_time(t.get("time")) or now,
                str(t.get("reason", "")), str(t.get("message", ""))))
    return st


# --- whole objects -------------------------------------------------------------------------


def to_execution(obj: dict[str, Any]) -> Execution:
    m = obj.get("metadata") or {}
    return Execution(
        namespace=m.get("namespace", ""),
        name=m.get("name", ""),
        uid=m.get("uid", ""),
        generation=int(m.get("generation", 1) or 1),
        resource_version=m.get("resourceVersion", ""),
        created=parse_time(m.get("creationTimestamp")) or datetime.now(UTC),
        labels=dict(m.get("labels") or {}),
        annotations=dict(m.get("annotations") or {}),
        finalizers=list(m.get("finalizers") or []),
        deleting=bool(m.get("deletionTimestamp")),
        spec=dict(obj.get("spec") or {}),
        status=status_from_wire(obj.get("status")),
    )


def from_execution(ex: Execution) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": ex.name, "namespace": ex.namespace}
    if ex.resource_version:
        meta["resourceVersion"] = ex.resource_version
    if ex.uid:
        meta["uid"] = ex.uid
    if ex.labels:
        meta["labels"] = ex.labels
    if ex.annotations:
        meta["annotations"] = ex.annotations
    meta["finalizers"] = ex.finalizers
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
                           "spec": ex.spec}
    status = status_to_wire(ex.status)
    if status.get("phase") or len(status) > 2:
        out["status"] = status
    return out


# --- the controller's watch cache ----------------------------------------------------------

CACHED = "execution"  # where a cached entry keeps its converted execution


def cached_execution(obj: dict[str, Any]) -> dict[str, Any]:
    """What the controller's execution informer keeps of a watched object (its transform):
    the execution converted once per change — every validation reads them all — beside the
    fields the informer and the phase gauges read (name, namespace, resourceVersion,
    phase). The wire dict itself is not kept."""
    meta = obj.get("metadata") or {}
    status = obj.get("status")
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion", "uid")
                         if k in meta},
            "status": {"phase": status.get("phase")} if isinstance(status, dict) else {},
            CACHED: to_execution(obj)}


def execution_of(cached: dict[str, Any]) -> Execution:
    """The execution of a ``cached_execution`` entry (shared: copy it before changing it)."""
    ex: Execution = cached[CACHED]
    return ex
