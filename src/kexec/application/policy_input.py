"""The policy input document (schema documented in policies/README.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from kexec.domain.actions import Action
from kexec.domain.execution import Execution, iso
from kexec.domain.resources import Snapshot, meta
from kexec.domain.spec import ExecutionSpec


def _visible(obj: Any) -> Any:
    """The target as the policy may see it: Secrets without their data."""
    if not isinstance(obj, dict):
        return {}
    if obj.get("kind", "Secret") == "Secret" and ("data" in obj or "stringData" in obj):
        return {k: v for k, v in obj.items() if k not in ("data", "stringData")}
    return obj


def change_facts(action: Action[Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """input.change: what the execution asks for, whatever the action (fixed shape)."""
    return {"replicas": None, "images": False, "labels": {}, **action.policy_change(parameters)}


def build_policy_input(
    ex: Execution,
    spec: ExecutionSpec,
    action: Action[Any],
    params: Any,
    snap: Snapshot,
    facts: dict[str, Any],
    active_by_namespace: dict[str, int],
    now: datetime,
    trusted_namespaces: Iterable[str] = (),
) -> dict[str, Any]:
    """The policy input; ``trusted_namespaces`` are the controller's (settings), the only
    namespaces whose executions may act on other namespaces or cluster-scoped targets."""
    target = action.target(params)
    obj = snap.get("target")
    m = meta(obj)
    parameters = action.to_dict(params)
    return {
        "action": action.policy_facts(),
        "change": change_facts(action, parameters),
        "controller": {"trustedNamespaces": sorted(set(trusted_namespaces))},
        "execution": {
            "name": ex.name,
            "namespace": ex.namespace,
            "action": action.name,
            "parameters": parameters,
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
