"""The policy input document (schema documented in policies/README.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from kexec.domain.actions import Action
from kexec.domain.execution import Execution, iso
from kexec.domain.resources import Snapshot, meta


def _read_by_policy(obj: Any) -> dict[str, Any]:
    """input.target.object: the parts of the current object the rules read
    (``metadata.ownerReferences``, ``spec.replicas``), as they are.

    Only what a decision depends on is handed to the engine: the embedded engine
    converts every node of the input on every decision, and a real object (status,
    template, annotations) is most of it. Secrets' data is never included."""
    if not isinstance(obj, dict):
        return {}
    view: dict[str, Any] = {}
    metadata = obj.get("metadata")
    if isinstance(metadata, dict) and "ownerReferences" in metadata:
        view["metadata"] = {"ownerReferences": metadata["ownerReferences"]}
    spec = obj.get("spec")
    if isinstance(spec, dict) and "replicas" in spec:
        view["spec"] = {"replicas": spec["replicas"]}
    return view


def change_facts(action: Action[Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """input.change: what the execution asks for, whatever the action (fixed shape)."""
    return {"replicas": None, "images": False, "labels": {}, **action.policy_change(parameters)}


def build_policy_input(
    ex: Execution,
    action: Action[Any],
    params: Any,
    snap: Snapshot,
    facts: dict[str, Any],
    active_by_namespace: dict[str, int],
    now: datetime,
    trusted_namespaces: Iterable[str] = (),
) -> dict[str, Any]:
    """The policy input; ``trusted_namespaces`` are the controller's (settings), the only
    namespaces whose executions may act on other namespaces or cluster-scoped targets.

    It carries what the rules read and no more (policies/README.md, "The input
    document"): the engine's cost grows with the input's size."""
    target = action.target(params)
    obj = snap.get("target")
    m = meta(obj)
    active = active_by_namespace.get(ex.namespace, 0)
    return {
        "action": action.policy_facts(),
        "change": change_facts(action, action.to_dict(params)),
        "controller": {"trustedNamespaces": sorted(set(trusted_namespaces))},
        "execution": {
            "name": ex.name,
            "namespace": ex.namespace,
            "action": action.name,
            "parameters": {},
            "annotations": dict(ex.annotations),
        },
        "target": {
            "kind": target.kind,
            "namespace": target.namespace,
            "name": target.name,
            "labels": dict(m.get("labels") or {}),
            "object": _read_by_policy(obj),
        },
        "namespace": facts.get("namespace") or {"name": target.namespace, "labels": {}},
        "cluster": {
            "nodes": facts.get("nodes") or [],
            "activeExecutions": {ex.namespace: active} if active else {},
        },
        "time": {
            "now": iso(now),
            "weekday": now.weekday(),
            "hour": now.hour,
            "minute": now.minute,
        },
    }
