from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from kexec.domain.actions._workload import deployment_summary, rollout_complete
from kexec.domain.actions.base import Action, Context, Param, RollbackSpec
from kexec.domain.errors import FieldError
from kexec.domain.fields import Fields
from kexec.domain.resources import (
    Check,
    Mutation,
    ObjectRef,
    Patch,
    PatchType,
    Rule,
    Snapshot,
    dig,
)

PATCH_TYPES: tuple[PatchType, ...] = ("strategic", "merge", "json")
# A patch may change the pod template and rollout settings, never identity or status.
_FORBIDDEN_TOP = ("status", "apiVersion", "kind")
_FORBIDDEN_META = ("name", "namespace", "uid", "resourceVersion", "ownerReferences", "finalizers")


@dataclass(frozen=True)
class PatchDeploymentParams:
    namespace: str
    deployment: str
    patch_type: PatchType
    patch: Any


class PatchDeployment(Action[PatchDeploymentParams]):
    name = "patch_deployment"
    key = "patchDeployment"
    description = "Patch a Deployment's spec (strategic, merge or JSON patch)."
    default_timeout_seconds = 300
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("deployment", "name", "Deployment name"),
        Param("patchType", "enum", "patch format", enum=PATCH_TYPES),
        Param("patch", "patch", "object for strategic/merge, array for json"),
    )
    rules = (Rule(("apps",), ("deployments",), ("get", "patch")),)

    def _parse(self, f: Fields) -> PatchDeploymentParams:
        patch_type = f.choice("patchType", PATCH_TYPES)
        patch = f.any("patch")
        path = f"{f.path}.patch"
        if patch is not None:
            if patch_type == "json":
                if not isinstance(patch, list) or not patch:
                    f.errors.append(FieldError(path, "a json patch must be a non-empty array"))
                else:
                    for i, op in enumerate(patch):
                        ok = isinstance(op, dict) and isinstance(op.get("path"), str)
                        if not ok or op.get("op") not in ("add", "remove", "replace", "test",
                                                           "move", "copy"):
                            f.errors.append(FieldError(f"{path}[{i}]", "invalid JSON patch op"))
                        elif op["path"].startswith(("/status", "/metadata/name",
                                                    "/metadata/namespace", "/metadata/uid")):
                            f.errors.append(FieldError(f"{path}[{i}]", "may not change that path"))
            elif patch_type:
                if not isinstance(patch, dict) or not patch:
                    f.errors.append(FieldError(path, "must be a non-empty object"))
                else:
                    for key in _FORBIDDEN_TOP:
                        if key in patch:
                            f.errors.append(FieldError(f"{path}.{key}", "may not be patched"))
                    for key in _FORBIDDEN_META:
                        if key in (patch.get("metadata") or {}):
                            f.errors.append(FieldError(f"{path}.metadata.{key}", "may not be patched"))
        return PatchDeploymentParams(f.namespace(), f.name("deployment"),
                                     cast(PatchType, patch_type or "merge"), patch)

    def to_dict(self, p: PatchDeploymentParams) -> dict[str, Any]:
        return {
            "namespace": p.namespace,
            "deployment": p.deployment,
            "patchType": p.patch_type,
            "patch": p.patch,
        }

    def target(self, p: PatchDeploymentParams) -> ObjectRef:
        return ObjectRef("Deployment", p.namespace, p.deployment)

    def plan(self, p: PatchDeploymentParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        return [Patch(self.target(p), p.patch_type, p.patch)]

    def postconditions(
        self, p: PatchDeploymentParams, snap: Snapshot, result: Mapping[str, Any]
    ) -> list[Check]:
        return [rollout_complete(snap.get("target"))]

    def rollback(self, p: PatchDeploymentParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        spec = dig(before.get("target"), "spec")
        if not isinstance(spec, dict):
            return RollbackSpec(False, note="no previous spec captured")
        # Replacing the whole spec restores it exactly, whatever the patch touched.
        restore = [{"op": "replace", "path": "/spec", "value": spec}]
        return RollbackSpec(
            True,
            self.name,
            {"namespace": p.namespace, "deployment": p.deployment, "patchType": "json",
             "patch": restore},
        )

    def summarize(self, obj: Any) -> dict[str, Any]:
        return deployment_summary(obj)
