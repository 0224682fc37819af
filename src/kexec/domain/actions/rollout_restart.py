from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions._workload import deployment_summary, rollout_complete
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import Check, Mutation, ObjectRef, Patch, Rule, Snapshot, dig

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
RESTARTED_BY = "kexec.kubernaut.io/restarted-by"


@dataclass(frozen=True)
class RestartParams:
    namespace: str
    deployment: str


class RolloutRestart(Action[RestartParams]):
    name = "rollout_restart"
    key = "rolloutRestart"
    target_kind = "Deployment"
    effects = ("podTemplate",)
    destructive = True
    description = "Restart a Deployment's pods like `kubectl rollout restart`."
    default_timeout_seconds = 300
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("deployment", "name", "Deployment name"),
    )
    rules = (Rule(("apps",), ("deployments",), ("get", "patch")),)

    def _parse(self, v: Mapping[str, Any], f: Fields) -> RestartParams:
        return RestartParams(v["namespace"], v["deployment"])

    def to_dict(self, p: RestartParams) -> dict[str, Any]:
        return {"namespace": p.namespace, "deployment": p.deployment}

    def target(self, p: RestartParams) -> ObjectRef:
        return ObjectRef("Deployment", p.namespace, p.deployment)

    def plan(self, p: RestartParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        annotations = {RESTARTED_AT: ctx.now_iso, RESTARTED_BY: ctx.execution_uid}
        body = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
        return [Patch(self.target(p), "merge", body)]

    def postconditions(
        self, p: RestartParams, snap: Snapshot, result: Mapping[str, Any]
    ) -> list[Check]:
        dep = snap.get("target")
        by = dig(dep, "spec", "template", "metadata", "annotations", RESTARTED_BY)
        want = result.get("executionUid", "")
        return [
            Check("RestartRequested", bool(want) and by == want, f"{RESTARTED_BY}={by}"),
            rollout_complete(dep),
        ]

    def rollback(self, p: RestartParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        return RollbackSpec(False, note="a restart is its own undo")

    def summarize(self, obj: Any) -> dict[str, Any]:
        out = deployment_summary(obj)
        out["restartedAt"] = dig(obj, "spec", "template", "metadata", "annotations", RESTARTED_AT)
        return out
