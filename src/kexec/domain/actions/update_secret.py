from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import (
    Check,
    Create,
    Get,
    Mutation,
    ObjectRef,
    Patch,
    Read,
    Rule,
    Snapshot,
    meta,
)

BACKUP_LABEL = "kexec.kubernaut.io/rollback-of"


def backup_name(ctx: Context) -> str:
    return f"kexec-before-{ctx.execution_uid[:13]}".rstrip("-")


@dataclass(frozen=True)
class SecretParams:
    namespace: str
    secret: str
    source: str


class UpdateSecret(Action[SecretParams]):
    """Replace a Secret's data with a source Secret's; values never leave the cluster."""

    name = "update_secret"
    key = "updateSecret"
    target_kind = "Secret"
    effects = ("secretData",)
    description = "Replace a Secret's data with the data of a source Secret (same namespace)."
    default_timeout_seconds = 60
    sensitive = True
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("secret", "name", "Secret name"),
        Param("sourceSecretRef", "ref", "a Secret in the same namespace holding the new data"),
    )
    # create: the previous data is kept in a Secret owned by the execution.
    rules = (Rule(("",), ("secrets",), ("get", "patch", "update", "create")),)

    def _parse(self, v: Mapping[str, Any], f: Fields) -> SecretParams:
        return SecretParams(v["namespace"], v["secret"], v["sourceSecretRef"])

    def to_dict(self, p: SecretParams) -> dict[str, Any]:
        return {"namespace": p.namespace, "secret": p.secret, "sourceSecretRef": {"name": p.source}}

    def target(self, p: SecretParams) -> ObjectRef:
        return ObjectRef("Secret", p.namespace, p.secret)

    def reads(self, p: SecretParams) -> tuple[Read, ...]:
        return (
            Get("target", self.target(p)),
            Get("source", ObjectRef("Secret", p.namespace, p.source)),
        )

    def preconditions(self, p: SecretParams, snap: Snapshot) -> list[Check]:
        src = snap.get("source") is not None
        return [
            self._exists(snap),
            Check("SourceExists", src, "" if src else f"source secret {p.source!r} not found"),
            Check("SourceDiffers", p.source != p.secret, "source and target must differ"),
        ]

    def plan(self, p: SecretParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        target = snap.get("target") or {}
        old = target.get("data") or {}
        new = (snap.get("source") or {}).get("data") or {}
        data: dict[str, Any] = {k: None for k in old if k not in new}
        data.update(new)
        m = meta(target)
        owner = {
            "apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1",
            "kind": "KubernetesExecution",
            "name": ctx.execution_name,
            "uid": ctx.execution_uid,
        }
        backup = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": target.get("type", "Opaque"),
            "metadata": {
                "name": backup_name(ctx),
                "namespace": p.namespace,
                "labels": {BACKUP_LABEL: ctx.execution_uid[:63]},
                # Owned only where ownership is possible (same namespace).
                "ownerReferences": [owner] if ctx.execution_namespace == p.namespace else [],
            },
            "data": dict(old),
        }
        return [
            Create(ObjectRef("Secret", p.namespace, backup_name(ctx)), backup),
            Patch(
                self.target(p),
                "merge",
                {"metadata": {"resourceVersion": m.get("resourceVersion", "")}, "data": data},
            ),
        ]

    def postconditions(self, p: SecretParams, snap: Snapshot, result: Mapping[str, Any]) -> list[Check]:
        now = (snap.get("target") or {}).get("data") or {}
        want = (snap.get("source") or {}).get("data") or {}
        return [Check("DataMatchesSource", now == want, "" if now == want else "data differs")]

    def rollback(self, p: SecretParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        return RollbackSpec(
            True,
            self.name,
            {"namespace": p.namespace, "secret": p.secret,
             "sourceSecretRef": {"name": backup_name(ctx)}},
            note="previous data kept in a Secret owned by the execution",
        )

    def summarize(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            return {}
        return {"keys": sorted((obj.get("data") or {}).keys()),
                "resourceVersion": meta(obj).get("resourceVersion", "")}
