"""The policy input document (schema documented in policies/README.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kexec.domain.actions import Action
from kexec.domain.execution import Execution, ExecutionSpec, iso
from kexec.domain.resources import Snapshot, meta


def _visible(obj: Any) -> Any:
    """The target as the policy may see it: Secrets without their data."""
    if not isinstance(obj, dict):
        return {}
    if obj.get("kind", "Secret") == "Secret" and ("data" in obj or "stringData" in obj):
        return {k: v for k, v in obj.items() if k not in ("data", "stringData")}
    return obj


def build_policy_input(
    ex: Execution,
    spec: ExecutionSpec,
    action: Action[Any],
    params: Any,
    snap: Snapshot,
    facts: dict[str, Any],
    active_by_namespace: dict[str, int],
    now: datetime,
) -> dict[str, Any]:
    target = action.target(params)
    obj = snap.get("target")
    m = meta(obj)
    return {
        "execution": {
            "name": ex.name,
            "namespace": ex.namespace,
            "action": action.name,
            "parameters": action.to_dict(params),
            "labels": dict(ex.labels),
            "annotations": dict(ex.annotations),
            "dryRun": spec.dry_run,
            "rollbackOf": spec.rollback_of,
        },
        "target": {
            "kind": target.kind,
            "namespace": target.namespace,
            "name": target.name,
            "exists": obj is not None,
            "labels": dict(m.get("labels") or {}),
            "annotations": dict(m.get("annotations") or {}),
            "object": _visible(obj),
        },
        "namespace": facts.get("namespace") or {"name": target.namespace, "labels": {}},
        "cluster": {
            "nodes": facts.get("nodes") or [],
            "activeExecutions": active_by_namespace,
        },
        "time": {
            "now": iso(now),
            "weekday": now.weekday(),
            "hour": now.hour,
            "minute": now.minute,
        },
    }
