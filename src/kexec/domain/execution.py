"""The KubernetesExecution as the domain sees it: spec parsing, status bookkeeping.

Status stays in its wire form (a JSON dict) so it round-trips exactly; the
functions here are the only writers of its fields.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kexec.domain.actions import ACTIONS, Action
from kexec.domain.errors import FieldError, ValidationError
from kexec.domain.fields import Fields, format_duration, parse_duration
from kexec.domain.phases import Phase, check_transition, is_terminal

GROUP = "kubernetesexecution.kubernaut.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "KubernetesExecution"
PLURAL = "kubernetesexecutions"
FINALIZER = f"{GROUP}/audit"
MAX_TIMEOUT_SECONDS = 15 * 60
MAX_TRANSITIONS = 32
CONDITION_TYPES = ("Validated", "PolicyAllowed", "Approved", "Executed", "Verified")


@dataclass(frozen=True)
class ExecutionSpec:
    action: str
    parameters: Mapping[str, Any]  # the inner parameter object (camelCase)
    max_retries: int = 2
    timeout_seconds: int = 0  # 0 = the action's default
    dry_run: bool = False
    approval_received: bool = False
    approved_by: str = ""
    target_cluster: str = ""
    rollback_of: str = ""
    workflow_name: str = ""
    workflow_namespace: str = ""
    step_number: int | None = None

    def effective_timeout(self) -> int:
        action = ACTIONS.get(self.action)
        default = action.default_timeout_seconds if action else 60
        return self.timeout_seconds or default


def parse_spec(raw: Any) -> tuple[ExecutionSpec, Action[Any], Any]:
    """Validate a raw spec: shape, action, parameters. Returns (spec, action, params).

    Raises ValidationError listing every bad field (paths start with "spec.").
    """
    errors: list[FieldError] = []
    f = Fields(raw, "spec", errors)
    action_name = f.choice("action", tuple(ACTIONS))
    action = ACTIONS.get(action_name)
    params_raw = f.mapping("parameters")
    inner: Any = None
    if action is not None and params_raw:
        keys = list(params_raw)
        if keys != [action.key]:
            errors.append(
                FieldError("spec.parameters",
                           f"must have exactly one key {action.key!r} matching action "
                           f"{action_name!r}, got {keys}")
            )
        else:
            inner = params_raw[action.key]
    max_retries = f.integer("maxRetries", 0, 5, default=2)
    timeout = 0
    raw_timeout = f.raw.get("timeout")
    f._seen.add("timeout")
    if raw_timeout is not None:
        try:
            timeout = parse_duration(raw_timeout)
            if not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
                errors.append(FieldError("spec.timeout", f"must be between 1s and 15m, got {raw_timeout}"))
        except ValueError as exc:
            errors.append(FieldError("spec.timeout", str(exc)))
    dry_run = f.boolean("dryRun", False)
    approved = f.boolean("approvalReceived", False)
    approved_by = f.raw.get("approvedBy") or ""
    f._seen.add("approvedBy")
    target_cluster = f.raw.get("targetCluster") or ""
    f._seen.add("targetCluster")
    rollback_of = f.raw.get("rollbackOf") or ""
    f._seen.add("rollbackOf")
    step = f.optional_integer("stepNumber", 1, 2**31 - 1)
    wf = f.raw.get("workflowExecutionRef") or {}
    f._seen.add("workflowExecutionRef")
    if not isinstance(wf, Mapping):
        errors.append(FieldError("spec.workflowExecutionRef", "must be an object"))
        wf = {}
    f.reject_unknown()
    params = None
    if action is not None and inner is not None:
        try:
            params = action.parse(inner)
        except ValidationError as exc:
            errors.extend(exc.errors)
    if errors or action is None:
        raise ValidationError(errors or [FieldError("spec.action", "is required")])
    spec = ExecutionSpec(
        action=action_name,
        parameters=dict(inner),
        max_retries=max_retries,
        timeout_seconds=timeout,
        dry_run=dry_run,
        approval_received=approved,
        approved_by=str(approved_by),
        target_cluster=str(target_cluster),
        rollback_of=str(rollback_of),
        workflow_name=str(wf.get("name", "")),
        workflow_namespace=str(wf.get("namespace", "")),
        step_number=step,
    )
    return spec, action, params


def spec_to_dict(spec: ExecutionSpec) -> dict[str, Any]:
    action = ACTIONS[spec.action]
    out: dict[str, Any] = {
        "action": spec.action,
        "parameters": {action.key: dict(spec.parameters)},
        "maxRetries": spec.max_retries,
    }
    if spec.timeout_seconds:
        out["timeout"] = format_duration(spec.timeout_seconds)
    if spec.dry_run:
        out["dryRun"] = True
    if spec.rollback_of:
        out["rollbackOf"] = spec.rollback_of
    return out


@dataclass
class Execution:
    """One KubernetesExecution object: identity, raw spec, and wire-form status."""

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
    status: dict[str, Any] = field(default_factory=dict)
    # (generation, target) memo: the target depends on the spec only, and every
    # validation compares it with every other execution's.
    target_memo: tuple[int, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def phase(self) -> Phase | None:
        raw = self.status.get("phase")
        try:
            return Phase(raw) if raw else None
        except ValueError:
            return None

    @property
    def terminal(self) -> bool:
        return is_terminal(self.phase)

    def copy(self) -> Execution:
        return replace(self, labels=dict(self.labels), annotations=dict(self.annotations),
                       finalizers=list(self.finalizers), spec=copy.deepcopy(self.spec),
                       status=copy.deepcopy(self.status), target_memo=None)


# --- status bookkeeping (pure functions over the wire-form status dict) ---------------


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def transition(
    status: dict[str, Any], to: Phase, reason: str, message: str, now: datetime
) -> None:
    """Move status to phase ``to``, checking the table and recording the transition."""
    current = status.get("phase")
    src = Phase(current) if current else None
    check_transition(src, to)
    status["phase"] = to.value
    status["reason"] = reason
    status["message"] = message
    history = status.setdefault("phaseTransitions", [])
    seq = int(history[-1].get("seq", len(history) - 1)) + 1 if history else 0
    history.append({"seq": seq, "phase": to.value, "time": iso(now), "reason": reason,
                    "message": message})
    # Bounded: keep the first entry (creation) and the most recent ones; seq stays stable
    # (the audit trail is keyed by it). Seven transitions is the usual life.
    if len(history) > MAX_TRANSITIONS:
        del history[1 : len(history) - MAX_TRANSITIONS + 1]


def entered(status: Mapping[str, Any], phase: Phase) -> datetime | None:
    """When the execution last entered ``phase``."""
    for item in reversed(status.get("phaseTransitions") or []):
        if item.get("phase") == phase.value:
            return parse_time(item.get("time"))
    return None


def set_condition(
    status: dict[str, Any],
    ctype: str,
    value: bool | None,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> None:
    """Kubernetes condition convention: lastTransitionTime moves only when status flips."""
    state = "Unknown" if value is None else ("True" if value else "False")
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    for cond in conditions:
        if cond.get("type") == ctype:
            if cond.get("status") != state:
                cond["lastTransitionTime"] = iso(now)
            cond.update(status=state, reason=reason, message=message,
                        observedGeneration=generation)
            return
    conditions.append({
        "type": ctype, "status": state, "reason": reason, "message": message,
        "lastTransitionTime": iso(now), "observedGeneration": generation,
    })


def condition(status: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None
