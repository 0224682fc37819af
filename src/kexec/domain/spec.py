"""The spec of a KubernetesExecution: parsing with field-addressed errors, and its hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions import ACTIONS, Action
from kexec.domain.errors import FieldError, ValidationError
from kexec.domain.fields import Fields, format_duration, parse_duration

MAX_TIMEOUT_SECONDS = 15 * 60
# The only spec fields that may change after creation (the CRD refuses other edits).
APPROVAL_FIELDS = ("approvalReceived", "approvedBy")


def spec_hash(raw_spec: Mapping[str, Any]) -> str:
    """The hash of everything an execution asks for: the spec without the approval fields."""
    pinned = {k: v for k, v in raw_spec.items() if k not in APPROVAL_FIELDS}
    blob = json.dumps(pinned, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()



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


