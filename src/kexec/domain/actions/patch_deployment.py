from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from kexec.domain.actions._workload import deployment_summary, replica_count, rollout_complete
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.errors import FieldError
from kexec.domain.fields import Fields, Param
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

# JSON-patch paths that may change a container image: the containers lists and anything above.
_IMAGE_PARENTS = ("", "/spec", "/spec/template", "/spec/template/spec")
_CONTAINER_LISTS = ("/spec/template/spec/containers", "/spec/template/spec/initContainers",
                    "/spec/template/spec/ephemeralContainers")


def _has_image_key(value: Any) -> bool:
    if isinstance(value, dict):
        return "image" in value or any(_has_image_key(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_image_key(v) for v in value)
    return False


def _image_path(path: Any) -> bool:
    return isinstance(path, str) and (path in _IMAGE_PARENTS or path.startswith(_CONTAINER_LISTS))


def patch_change(patch: Any) -> dict[str, Any]:
    """The replica count a patch sets and whether it may set an image (a patch that is
    neither an object nor a list cannot be inspected: it may)."""
    if isinstance(patch, dict):
        spec = patch.get("spec")
        return {"replicas": replica_count(spec.get("replicas")) if isinstance(spec, dict) else None,
                "images": _has_image_key(patch)}
    if isinstance(patch, list):
        ops = [op for op in patch if isinstance(op, dict)]
        counts = [replica_count(op.get("value")) for op in ops
                  if op.get("op") in ("add", "replace") and op.get("path") == "/spec/replicas"]
        return {"replicas": counts[-1] if counts else None,
                "images": any(_image_path(op.get(k)) for op in ops for k in ("path", "from"))}
    return {"replicas": None, "images": True}


@dataclass(frozen=True)
class PatchDeploymentParams:
    namespace: str
    deployment: str
    patch_type: PatchType
    patch: Any


class PatchDeployment(Action[PatchDeploymentParams]):
    name = "patch_deployment"
    key = "patchDeployment"
    target_kind = "Deployment"
    effects = ("deploymentSpec", "replicas", "podTemplate")
    destructive = True
    description = "Patch a Deployment's spec (strategic, merge or JSON patch)."
    default_timeout_seconds = 300
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("deployment", "name", "Deployment name"),
        Param("patchType", "enum", "patch format", enum=PATCH_TYPES),
        Param("patch", "patch", "object for strategic/merge, array for json"),
    )
    rules = (Rule(("apps",), ("deployments",), ("get", "patch")),)

    def _parse(self, v: Mapping[str, Any], f: Fields) -> PatchDeploymentParams:
        patch_type, patch = v["patchType"], v["patch"]
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
        return PatchDeploymentParams(v["namespace"], v["deployment"],
                                     cast(PatchType, patch_type or "merge"), patch)

    def policy_change(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        return patch_change(parameters.get("patch"))

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
