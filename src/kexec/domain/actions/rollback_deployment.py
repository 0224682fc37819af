from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions._workload import REVISION, deployment_summary, rollout_complete
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import (
    Check,
    Get,
    List,
    Mutation,
    ObjectRef,
    Patch,
    Read,
    Rule,
    Snapshot,
    dig,
    meta,
)

HASH_LABEL = "pod-template-hash"


@dataclass(frozen=True)
class RollbackParams:
    namespace: str
    deployment: str
    to_revision: int  # 0 = the previous revision


def revision(obj: Any) -> int:
    try:
        return int((meta(obj).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def owned_replicasets(dep: Any, replicasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    uid = meta(dep).get("uid")
    return sorted(
        (rs for rs in replicasets
         if any(o.get("uid") == uid for o in meta(rs).get("ownerReferences") or [])),
        key=revision,
    )


def pod_template(rs: dict[str, Any]) -> dict[str, Any]:
    """The ReplicaSet's template without the hash label, as `kubectl rollout undo` uses it."""
    template = copy.deepcopy(dig(rs, "spec", "template", default={}))
    labels = (template.get("metadata") or {}).get("labels") or {}
    labels.pop(HASH_LABEL, None)
    return dict(template)


class RollbackDeployment(Action[RollbackParams]):
    name = "rollback_deployment"
    key = "rollbackDeployment"
    target_kind = "Deployment"
    effects = ("podTemplate",)
    destructive = True
    description = "Roll a Deployment back to an earlier revision (`kubectl rollout undo`)."
    default_timeout_seconds = 300
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("deployment", "name", "Deployment name"),
        Param("toRevision", "integer", "revision; 0 = the previous one", required=False,
              minimum=0, maximum=2**31 - 1, default=0),
    )
    rules = (
        Rule(("apps",), ("deployments",), ("get", "patch")),
        Rule(("apps",), ("replicasets",), ("get", "list")),
    )

    def _parse(self, v: Mapping[str, Any], f: Fields) -> RollbackParams:
        return RollbackParams(v["namespace"], v["deployment"], v["toRevision"])

    def to_dict(self, p: RollbackParams) -> dict[str, Any]:
        return {"namespace": p.namespace, "deployment": p.deployment, "toRevision": p.to_revision}

    def target(self, p: RollbackParams) -> ObjectRef:
        return ObjectRef("Deployment", p.namespace, p.deployment)

    def reads(self, p: RollbackParams) -> tuple[Read, ...]:
        return (Get("target", self.target(p)), List("replicasets", "ReplicaSet", p.namespace))

    def chosen(self, p: RollbackParams, snap: Snapshot) -> dict[str, Any] | None:
        dep = snap.get("target")
        if dep is None:
            return None
        sets = owned_replicasets(dep, snap.get("replicasets") or [])
        current = revision(dep)
        if p.to_revision == 0:
            older = [rs for rs in sets if revision(rs) < current]
            return older[-1] if older else None
        return next((rs for rs in sets if revision(rs) == p.to_revision), None)

    def preconditions(self, p: RollbackParams, snap: Snapshot) -> list[Check]:
        checks = [self._exists(snap)]
        if snap.get("target") is not None:
            rs = self.chosen(p, snap)
            want = p.to_revision or "previous"
            checks.append(Check("RevisionExists", rs is not None,
                                "" if rs else f"revision {want} not found"))
            if rs is not None:
                same = revision(rs) == revision(snap["target"])
                checks.append(Check("RevisionDiffers", not same,
                                    "already at that revision" if same else ""))
        return checks

    def plan(self, p: RollbackParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        rs = self.chosen(p, snap)
        if rs is None:
            return []
        ops = [{"op": "replace", "path": "/spec/template", "value": pod_template(rs)}]
        return [Patch(self.target(p), "json", ops)]

    def postconditions(self, p: RollbackParams, snap: Snapshot, result: Mapping[str, Any]) -> list[Check]:
        dep = snap.get("target")
        want = result.get("templateHash", "")
        sets = owned_replicasets(dep, snap.get("replicasets") or [])
        newest = sets[-1] if sets else None
        got = (meta(newest).get("labels") or {}).get(HASH_LABEL, "") if newest else ""
        return [
            Check("RevisionActive", bool(want) and got == want, f"active template hash {got}"),
            rollout_complete(dep),
        ]

    def rollback(self, p: RollbackParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        current = revision(before.get("target"))
        if not current:
            return RollbackSpec(False, note="current revision unknown")
        return RollbackSpec(True, self.name, {"namespace": p.namespace,
                                              "deployment": p.deployment, "toRevision": current})

    def report(self, p: RollbackParams, snap: Snapshot) -> dict[str, Any]:
        rs = self.chosen(p, snap)
        return {"templateHash": (meta(rs).get("labels") or {}).get(HASH_LABEL, "") if rs else ""}

    def summarize(self, obj: Any) -> dict[str, Any]:
        return deployment_summary(obj)
