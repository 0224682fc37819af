from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions._workload import replica_count
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.errors import FieldError
from kexec.domain.fields import Fields, Param, is_dns1123_label, is_dns1123_subdomain
from kexec.domain.resources import (
    KINDS,
    Check,
    Delete,
    Mutation,
    ObjectRef,
    Patch,
    Rule,
    Snapshot,
    meta,
)

# Kinds a manifest may have. Secrets are excluded on purpose: their values
# would travel through the execution spec. Policy may narrow this further.
ALLOWED_KINDS: tuple[str, ...] = (
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Service",
)
_SCALABLE = ("Deployment", "StatefulSet", "ReplicaSet")
_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                  "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")


def _rules() -> tuple[Rule, ...]:
    by_group: dict[str, list[str]] = {}
    for name in ALLOWED_KINDS:
        by_group.setdefault(KINDS[name].group, []).append(KINDS[name].plural)
    return tuple(
        Rule((group,), tuple(sorted(plurals)), ("get", "create", "patch", "delete"))
        for group, plurals in sorted(by_group.items())
    )


def restorable(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as it can be applied again: no status, no server-owned metadata."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    m = out.get("metadata") or {}
    for key in _SERVER_FIELDS:
        m.pop(key, None)
    annotations = m.get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    annotations.pop("deployment.kubernetes.io/revision", None)
    if not annotations:
        m.pop("annotations", None)
    return out


@dataclass(frozen=True)
class ManifestParams:
    manifest: Mapping[str, Any]
    delete: bool  # delete the named object instead (the rollback of a create)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", ""))


class ApplyManifest(Action[ManifestParams]):
    name = "apply_manifest"
    key = "applyManifest"
    target_kind = ""  # the manifest's kind
    effects = ("manifest",)
    destructive = True
    description = "Server-side apply one object of an allow-listed kind (or delete it)."
    default_timeout_seconds = 300
    params_doc = (
        Param("manifest", "object", f"one object; kind in {', '.join(ALLOWED_KINDS)}; "
              "metadata.namespace required"),
        Param("delete", "boolean", "delete the named object instead", required=False,
              default=False),
    )
    rules = _rules()

    def operations(self, params: ManifestParams) -> tuple[Rule, ...]:
        info = KINDS[params.kind]
        return (Rule((info.group,), (info.plural,), ("get", "create", "patch", "delete")),)

    def _parse(self, v: Mapping[str, Any], f: Fields) -> ManifestParams:
        manifest, delete = v["manifest"], v["delete"]
        path = f"{f.path}.manifest"
        if manifest:
            kind = manifest.get("kind")
            if kind not in ALLOWED_KINDS:
                f.errors.append(FieldError(f"{path}.kind",
                                           f"{kind!r} is not allowed ({', '.join(ALLOWED_KINDS)})"))
            elif manifest.get("apiVersion") != KINDS[str(kind)].api_version:
                f.errors.append(FieldError(f"{path}.apiVersion",
                                           f"must be {KINDS[str(kind)].api_version}"))
            m = manifest.get("metadata")
            if not isinstance(m, Mapping):
                f.errors.append(FieldError(f"{path}.metadata", "is required"))
            else:
                if not isinstance(m.get("name"), str) or not is_dns1123_subdomain(m["name"]):
                    f.errors.append(FieldError(f"{path}.metadata.name", "valid name required"))
                if not isinstance(m.get("namespace"), str) or not is_dns1123_label(m["namespace"]):
                    f.errors.append(FieldError(f"{path}.metadata.namespace",
                                               "valid namespace required"))
                for key in ("uid", "resourceVersion", "ownerReferences"):
                    if key in m:
                        f.errors.append(FieldError(f"{path}.metadata.{key}", "must not be set"))
        return ManifestParams(dict(manifest), delete)

    def policy_change(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        manifest = parameters.get("manifest")
        if not isinstance(manifest, Mapping):
            return {}
        spec, m = manifest.get("spec"), manifest.get("metadata")
        replicas = (replica_count(spec.get("replicas"))
                    if manifest.get("kind") in _SCALABLE and isinstance(spec, Mapping) else None)
        labels = m.get("labels") if isinstance(m, Mapping) else None
        return {"replicas": replicas, "labels": dict(labels) if isinstance(labels, Mapping) else {}}

    def to_dict(self, p: ManifestParams) -> dict[str, Any]:
        out: dict[str, Any] = {"manifest": dict(p.manifest)}
        if p.delete:
            out["delete"] = True
        return out

    def target(self, p: ManifestParams) -> ObjectRef:
        m = p.manifest.get("metadata") or {}
        return ObjectRef(p.kind, str(m.get("namespace", "")), str(m.get("name", "")))

    def preconditions(self, p: ManifestParams, snap: Snapshot) -> list[Check]:
        # Applying creates when absent; only a delete needs the object to exist.
        return [self._exists(snap)] if p.delete else []

    def plan(self, p: ManifestParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        if p.delete:
            return [Delete(self.target(p), uid=str(meta(snap.get("target")).get("uid", "")))]
        return [Patch(self.target(p), "apply", dict(p.manifest))]

    def postconditions(self, p: ManifestParams, snap: Snapshot, result: Mapping[str, Any]) -> list[Check]:
        obj = snap.get("target")
        if p.delete:
            return [Check("Deleted", obj is None or bool(meta(obj).get("deletionTimestamp")), "")]
        return [Check("Applied", obj is not None and _contains(obj, dict(p.manifest)), "")]

    def rollback(self, p: ManifestParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        prev = before.get("target")
        if p.delete:
            if prev is None:
                return RollbackSpec(False, note="nothing was deleted")
            return RollbackSpec(True, self.name, {"manifest": restorable(prev)})
        if prev is None:
            return RollbackSpec(True, self.name, {"manifest": _ident(p.manifest), "delete": True},
                                note="the object was created; rollback deletes it")
        return RollbackSpec(True, self.name, {"manifest": restorable(prev)})

    def guard(self, p: ManifestParams, snap: Snapshot) -> dict[str, str]:
        return super().guard(p, snap) if snap.get("target") is not None else {"absent": "true"}

    def summarize(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            return {"exists": False}
        m = meta(obj)
        return {"exists": True, "resourceVersion": m.get("resourceVersion", ""),
                "generation": m.get("generation", 0)}


def _ident(manifest: Mapping[str, Any]) -> dict[str, Any]:
    m = manifest.get("metadata") or {}
    return {"apiVersion": manifest.get("apiVersion"), "kind": manifest.get("kind"),
            "metadata": {"name": m.get("name"), "namespace": m.get("namespace")}}


def _contains(actual: Any, wanted: Any) -> bool:
    """Every field of ``wanted`` is present in ``actual`` (server defaults may add more)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            _contains(actual.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (isinstance(actual, list) and len(actual) == len(wanted)
                and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True)))
    if isinstance(wanted, int | float) and isinstance(actual, str):
        return str(wanted) == actual
    return bool(actual == wanted)
