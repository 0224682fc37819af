"""Helpers shared by the Deployment and Node actions."""

from __future__ import annotations

from typing import Any

from kexec.domain.resources import Check, dig, meta

REVISION = "deployment.kubernetes.io/revision"


def deployment_summary(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {}
    containers = dig(obj, "spec", "template", "spec", "containers", default=[]) or []
    return {
        "replicas": dig(obj, "spec", "replicas", default=1),
        "readyReplicas": dig(obj, "status", "readyReplicas", default=0),
        "generation": meta(obj).get("generation", 0),
        "revision": meta(obj).get("annotations", {}).get(REVISION, ""),
        "images": [c.get("image", "") for c in containers if isinstance(c, dict)],
    }


def rollout_complete(obj: Any, want_replicas: int | None = None) -> Check:
    """Same test as `kubectl rollout status`: new spec observed, all updated and available."""
    if not isinstance(obj, dict):
        return Check("RolloutComplete", False, "deployment not found")
    spec_replicas = dig(obj, "spec", "replicas", default=1)
    want = spec_replicas if want_replicas is None else want_replicas
    status = obj.get("status") or {}
    observed = status.get("observedGeneration", 0) >= meta(obj).get("generation", 0)
    updated = status.get("updatedReplicas", 0)
    ready = status.get("readyReplicas", 0)
    available = status.get("availableReplicas", 0)
    total = status.get("replicas", 0)
    ok = (
        observed
        and spec_replicas == want
        and updated == want
        and ready == want
        and available == want
        and total == want
    )
    msg = (
        f"observed={observed} replicas={spec_replicas}/{want} updated={updated} "
        f"ready={ready} available={available} total={total}"
    )
    return Check("RolloutComplete", ok, msg)


def replica_count(value: Any) -> int | float | None:
    """A replica count a change asks for, if it is a number at all (the API rejects the rest)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def node_summary(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {}
    return {"unschedulable": bool(dig(obj, "spec", "unschedulable", default=False))}


def is_unschedulable(obj: Any) -> bool:
    return bool(dig(obj, "spec", "unschedulable", default=False))


def controller_of(obj: Any) -> dict[str, Any] | None:
    for ref in meta(obj).get("ownerReferences", []) or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return ref
    return None
