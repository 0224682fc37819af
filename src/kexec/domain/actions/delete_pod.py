from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions._workload import controller_of
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import Check, Delete, Mutation, ObjectRef, Rule, Snapshot, dig, meta


@dataclass(frozen=True)
class DeletePodParams:
    namespace: str
    pod: str
    grace_period_seconds: int | None


class DeletePod(Action[DeletePodParams]):
    name = "delete_pod"
    key = "deletePod"
    target_kind = "Pod"
    effects = ("deletesPod",)
    destructive = True
    description = "Delete one Pod that has a controller (its owner recreates it)."
    default_timeout_seconds = 120
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("pod", "name", "Pod name"),
        Param("gracePeriodSeconds", "integer", "pod termination grace period", required=False,
              minimum=0, maximum=3600),
    )
    rules = (Rule(("",), ("pods",), ("get", "delete")),)

    def _parse(self, v: Mapping[str, Any], f: Fields) -> DeletePodParams:
        return DeletePodParams(v["namespace"], v["pod"], v["gracePeriodSeconds"])

    def to_dict(self, p: DeletePodParams) -> dict[str, Any]:
        out: dict[str, Any] = {"namespace": p.namespace, "pod": p.pod}
        if p.grace_period_seconds is not None:
            out["gracePeriodSeconds"] = p.grace_period_seconds
        return out

    def target(self, p: DeletePodParams) -> ObjectRef:
        return ObjectRef("Pod", p.namespace, p.pod)

    def preconditions(self, p: DeletePodParams, snap: Snapshot) -> list[Check]:
        pod = snap.get("target")
        checks = [self._exists(snap)]
        if pod is not None:
            owner = controller_of(pod)
            checks.append(
                Check(
                    "HasController",
                    owner is not None,
                    f"owned by {owner['kind']}/{owner['name']}"
                    if owner
                    else "bare pod without a controller would not come back",
                )
            )
        return checks

    def plan(self, p: DeletePodParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        uid = str(meta(snap.get("target")).get("uid", ""))
        return [Delete(self.target(p), p.grace_period_seconds, uid)]

    def postconditions(
        self, p: DeletePodParams, snap: Snapshot, result: Mapping[str, Any]
    ) -> list[Check]:
        pod = snap.get("target")
        old_uid = result.get("before", {}).get("uid", "")
        gone = pod is None or meta(pod).get("uid") != old_uid
        return [Check("PodReplaced", gone, "old pod gone" if gone else "old pod still present")]

    def rollback(self, p: DeletePodParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        return RollbackSpec(False, note="the pod's controller recreates it")

    def summarize(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            return {}
        return {
            "uid": meta(obj).get("uid", ""),
            "phase": dig(obj, "status", "phase", default=""),
            "node": dig(obj, "spec", "nodeName", default=""),
        }
