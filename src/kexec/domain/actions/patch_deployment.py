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
# A patch may change the spec (pod template, replicas, rollout settings), labels and
# annotations - never the object's identity, ownership, lifecycle or status. One list,
# whatever the patch type (README "patch_deployment").
FORBIDDEN_PATHS = ("/status", "/apiVersion", "/kind", "/metadata/name", "/metadata/namespace",
                   "/metadata/uid", "/metadata/resourceVersion", "/metadata/generation",
                   "/metadata/ownerReferences", "/metadata/finalizers",
                   "/metadata/managedFields", "/metadata/creationTimestamp",
                   "/metadata/deletionTimestamp", "/metadata/deletionGracePeriodSeconds")
_JSON_OPS = ("add", "remove", "replace", "test", "move", "copy")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _object_paths(patch: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The paths an object (merge/strategic) patch writes, down to where a rule could apply."""
    out = []
    for key, value in patch.items():
        path = f"{prefix}/{_escape(str(key))}"
        if prefix == "" and key == "metadata" and isinstance(value, Mapping):
            out.extend(_object_paths(value, path))  # merged, not replaced: judge its keys
        else:
            out.append(path)
    return out


def forbidden(paths: list[str]) -> list[str]:
    """Which of ``paths`` a patch may not touch (a path that contains one counts too)."""
    bad = []
    for path in paths:
        if path in ("", "/", "/metadata") or any(
                path == f or path.startswith(f + "/") for f in FORBIDDEN_PATHS):
            bad.append(path or "/")
    return bad

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
                        if not ok or op.get("op") not in _JSON_OPS:
                            f.errors.append(FieldError(f"{path}[{i}]", "invalid JSON patch op"))
                            continue
                        touched = [op["path"]] + ([str(op.get("from", ""))] if op["op"] == "move"
                                                  else [])
                        for bad in forbidden(touched):
                            f.errors.append(FieldError(f"{path}[{i}]", f"may not touch {bad}"))
            elif patch_type:
                if not isinstance(patch, dict) or not patch:
                    f.errors.append(FieldError(path, "must be a non-empty object"))
                else:
                    for bad in forbidden(_object_paths(patch)):
                        dotted = bad.replace("/", ".").replace("~1", "/").replace("~0", "~")
                        f.errors.append(FieldError(f"{path}{dotted}", "may not be patched"))
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
