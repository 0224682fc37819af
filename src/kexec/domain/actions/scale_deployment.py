from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions._workload import deployment_summary, rollout_complete
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import Check, Mutation, ObjectRef, Patch, Rule, Snapshot, dig


@dataclass(frozen=True)
class ScaleParams:
    namespace: str
    deployment: str
    replicas: int


class ScaleDeployment(Action[ScaleParams]):
    name = "scale_deployment"
    key = "scaleDeployment"
    target_kind = "Deployment"
    effects = ("replicas",)
    description = "Set a Deployment's replicas through the scale subresource."
    default_timeout_seconds = 120
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("deployment", "name", "Deployment name"),
        Param("replicas", "integer", "desired replicas", minimum=0, maximum=1000),
    )
    rules = (
        Rule(("apps",), ("deployments",), ("get",)),
        Rule(("apps",), ("deployments/scale",), ("get", "update", "patch")),
    )

    def _parse(self, v: Mapping[str, Any], f: Fields) -> ScaleParams:
        return ScaleParams(v["namespace"], v["deployment"], v["replicas"])

    def to_dict(self, p: ScaleParams) -> dict[str, Any]:
        return {"namespace": p.namespace, "deployment": p.deployment, "replicas": p.replicas}

    def policy_change(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        return {"replicas": parameters.get("replicas")}

    def target(self, p: ScaleParams) -> ObjectRef:
        return ObjectRef("Deployment", p.namespace, p.deployment)

    def plan(self, p: ScaleParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        return [Patch(self.target(p), "merge", {"spec": {"replicas": p.replicas}}, "scale")]

    def postconditions(
        self, p: ScaleParams, snap: Snapshot, result: Mapping[str, Any]
    ) -> list[Check]:
        dep = snap.get("target")
        spec = dig(dep, "spec", "replicas")
        return [
            Check("ReplicasSet", spec == p.replicas, f"spec.replicas={spec}, want {p.replicas}"),
            rollout_complete(dep, p.replicas),
        ]

    def rollback(self, p: ScaleParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        previous = dig(before.get("target"), "spec", "replicas", default=1)
        return RollbackSpec(True, self.name, {**self.to_dict(p), "replicas": previous})

    def summarize(self, obj: Any) -> dict[str, Any]:
        return deployment_summary(obj)
