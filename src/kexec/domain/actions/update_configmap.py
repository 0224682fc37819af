from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.errors import FieldError
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import Check, Mutation, ObjectRef, Patch, Rule, Snapshot, meta

_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def valid_data_key(key: str) -> bool:
    return 0 < len(key) <= 253 and set(key) <= _KEY_CHARS and key not in (".", "..")


@dataclass(frozen=True)
class ConfigMapParams:
    namespace: str
    config_map: str
    # key → new value; None removes the key (JSON merge-patch semantics)
    data: Mapping[str, str | None]


class UpdateConfigMap(Action[ConfigMapParams]):
    name = "update_configmap"
    key = "updateConfigMap"
    target_kind = "ConfigMap"
    effects = ("configData",)
    sensitive = True
    description = "Set (or, with null, remove) keys of a ConfigMap's data."
    default_timeout_seconds = 60
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("configMap", "name", "ConfigMap name"),
        Param("data", "stringmap", "keys to set; null removes the key"),
    )
    rules = (Rule(("",), ("configmaps",), ("get", "patch", "update")),)

    def _parse(self, v: Mapping[str, Any], f: Fields) -> ConfigMapParams:
        data = v["data"]
        path = f"{f.path}.data"
        if "data" in f.raw and not data:
            f.errors.append(FieldError(path, "must have at least one key"))
        for k, value in data.items():
            if not isinstance(k, str) or not valid_data_key(k):
                f.errors.append(FieldError(f"{path}.{k}", "invalid ConfigMap key"))
            elif value is not None and not isinstance(value, str):
                f.errors.append(FieldError(f"{path}.{k}", "value must be a string or null"))
        return ConfigMapParams(v["namespace"], v["configMap"], dict(data))

    def to_dict(self, p: ConfigMapParams) -> dict[str, Any]:
        return {"namespace": p.namespace, "configMap": p.config_map, "data": dict(p.data)}

    def target(self, p: ConfigMapParams) -> ObjectRef:
        return ObjectRef("ConfigMap", p.namespace, p.config_map)

    def plan(self, p: ConfigMapParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        rv = meta(snap.get("target")).get("resourceVersion", "")
        # resourceVersion in a merge patch makes it conditional: the recorded
        # rollback is exact because nothing changed between read and write.
        body = {"metadata": {"resourceVersion": rv}, "data": dict(p.data)}
        return [Patch(self.target(p), "merge", body)]

    def postconditions(
        self, p: ConfigMapParams, snap: Snapshot, result: Mapping[str, Any]
    ) -> list[Check]:
        data = (snap.get("target") or {}).get("data") or {}
        wrong = [k for k, v in p.data.items() if data.get(k) != v]
        return [Check("DataApplied", not wrong, f"keys differ: {', '.join(wrong)}" if wrong else "")]

    def rollback(self, p: ConfigMapParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        old = (before.get("target") or {}).get("data") or {}
        restore = {k: old.get(k) for k in p.data}
        return RollbackSpec(True, self.name, {**self.to_dict(p), "data": restore})

    def summarize(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            return {}
        return {"keys": sorted((obj.get("data") or {}).keys()),
                "resourceVersion": meta(obj).get("resourceVersion", "")}
