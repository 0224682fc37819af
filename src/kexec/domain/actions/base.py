"""The shape every action module fills in, in one place.

An action is a class with class-level facts (name, timeout, RBAC rules) and
pure functions over plain data: parse the parameters, say what to read,
judge preconditions, plan the exact mutations, judge postconditions, derive
the rollback. Adding an action = one module + one line in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from kexec.domain.errors import FieldError, ValidationError
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import Change, Check, Get, Mutation, ObjectRef, Read, Rule, Snapshot

P = TypeVar("P")


@dataclass(frozen=True)
class Context:
    """Facts about the execution an action may need (names, uid, time)."""

    execution_name: str
    execution_namespace: str
    execution_uid: str
    now_iso: str = ""


@dataclass(frozen=True)
class RollbackSpec:
    """A ready-to-use spec for the inverse execution (status.rollback)."""

    available: bool
    action: str = ""
    parameters: Mapping[str, Any] | None = None
    note: str = ""

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"available": self.available}
        if self.action:
            out["action"] = self.action
        if self.parameters is not None:
            out["parameters"] = dict(self.parameters)
        if self.note:
            out["note"] = self.note
        return out


NO_ROLLBACK = RollbackSpec(available=False)


class Action(ABC, Generic[P]):
    name: ClassVar[str]  # snake_case, the spec.action value
    key: ClassVar[str]  # camelCase, the one key of spec.parameters
    description: ClassVar[str]
    default_timeout_seconds: ClassVar[int]
    rules: ClassVar[tuple[Rule, ...]]
    params_doc: ClassVar[tuple[Param, ...]]
    node_action: ClassVar[bool] = False

    # --- facts the safety policy decides on (policy_facts; never the action's name) ----
    # The kind of the target; "" when the parameters name it (a manifest).
    target_kind: ClassVar[str]
    # What it changes: "replicas", "podTemplate", "deploymentSpec", "deletesPod",
    # "nodeSchedulability", "evictsPods", "configData", "secretData", "manifest", ...
    effects: ClassVar[tuple[str, ...]]
    # Disrupts running workloads whatever its parameters (scaling down is judged per execution).
    destructive: ClassVar[bool] = False
    # Changes configuration or credentials that workloads read.
    sensitive: ClassVar[bool] = False
    # Takes a node out of scheduling / puts one back.
    removes_capacity: ClassVar[bool] = False
    restores_capacity: ClassVar[bool] = False

    # --- parameters -----------------------------------------------------------------
    def parse(self, raw: Any) -> P:
        """Validate raw camelCase parameters; raise ValidationError naming every bad field.

        Each parameter is read and checked by its declaration in ``params_doc`` (type,
        range, required, default: the one statement of those rules, which the CRD
        schema is generated from too); ``_parse`` adds the action's own checks.
        """
        errors: list[FieldError] = []
        fields = Fields(raw, f"spec.parameters.{self.key}", errors)
        values = {p.name: fields.param(p) for p in self.params_doc}
        params = self._parse(values, fields)
        fields.reject_unknown()
        if errors:
            raise ValidationError(errors)
        return params

    @abstractmethod
    def _parse(self, v: Mapping[str, Any], f: Fields) -> P:
        """The parameters from their checked values ``v`` (by camelCase name); further
        checks append to ``f.errors``."""

    @abstractmethod
    def to_dict(self, params: P) -> dict[str, Any]:
        """Back to the camelCase parameter object (round-trips through parse)."""

    # --- target and reads -----------------------------------------------------------
    @abstractmethod
    def target(self, params: P) -> ObjectRef: ...

    def reads(self, params: P) -> tuple[Read, ...]:
        """What to read before deciding; "target" is always the target object."""
        return (Get("target", self.target(params)),)

    def operations(self, params: P) -> tuple[Rule, ...]:
        """The RBAC rules this execution's own operations need (a requester in an untrusted
        namespace must hold them). Default: all of ``rules``."""
        return self.rules

    # --- judgement --------------------------------------------------------------------
    def preconditions(self, params: P, snap: Snapshot) -> list[Check]:
        return [self._exists(snap)]

    @abstractmethod
    def plan(self, params: P, snap: Snapshot, ctx: Context) -> list[Mutation]:
        """The exact mutations; dry-run at validation, performed by the runner."""

    @abstractmethod
    def postconditions(self, params: P, snap: Snapshot, result: Mapping[str, Any]) -> list[Check]:
        """Judge the state after the change; ``result`` is the runner's report."""

    @abstractmethod
    def rollback(self, params: P, before: Snapshot, ctx: Context) -> RollbackSpec: ...

    def summarize(self, obj: Any) -> dict[str, Any]:
        """A short, redacted summary of the target for status and audit."""
        return {}

    def report(self, params: P, before: Snapshot) -> dict[str, Any]:
        """Extra facts the runner reports for the postconditions (e.g. a template hash)."""
        return {}

    # Drain waits in the runner until its pods are gone (kubectl drain semantics).
    wait_in_runner: ClassVar[bool] = False

    def changes(self, params: P, before: Snapshot, after: Snapshot) -> list[Change]:
        ref = self.target(params)
        return [
            Change(
                ref.kind,
                ref.namespace,
                ref.name,
                self.name,
                self.summarize(before.get("target")),
                self.summarize(after.get("target")),
            )
        ]

    # --- partial failure: the whole truth ------------------------------------------------
    def compensate(self, params: P, before: Snapshot) -> list[Mutation]:
        """What the runner undoes by itself when the action cannot finish after it began
        changing the cluster (drain: uncordon when ``uncordonOnFailure``). Default: nothing."""
        return []

    def failure_changes(self, params: P, before: Snapshot, after: Snapshot,
                        compensated: bool) -> list[Change]:
        """Every change made before the action stopped (called only once a mutation was
        performed), including the compensation itself."""
        return self.changes(params, before, after)

    def failure_rollback(self, params: P, before: Snapshot, ctx: Context,
                         compensated: bool) -> RollbackSpec:
        return self.rollback(params, before, ctx)

    def reconstruct(self, params: P, before: Mapping[str, Any],
                    now: Snapshot) -> tuple[list[Change], RollbackSpec] | None:
        """A runner that died without a report: what changed, judged from the summary
        captured at validation (``before``) and the state now. None = cannot tell."""
        return None

    # --- progress (watched by the controller while the Job runs) --------------------------
    def progress_reads(self, params: P) -> tuple[Read, ...]:
        return ()

    def progress(self, params: P, snap: Snapshot) -> dict[str, Any] | None:
        """How far the action is, from a read of ``progress_reads`` (None = nothing to show)."""
        return None

    def guard(self, params: P, snap: Snapshot) -> dict[str, str]:
        """What must still hold when the runner acts (else it refuses: TargetChanged).

        Objects with a spec are guarded by metadata.generation (status churn is
        fine); data objects by resourceVersion.
        """
        obj = snap.get("target")
        if not isinstance(obj, dict):
            return {}
        m = obj.get("metadata", {})
        if "generation" in m:
            return {"generation": str(m["generation"])}
        return {"resourceVersion": str(m.get("resourceVersion", ""))}

    # --- policy facts ---------------------------------------------------------------------
    @classmethod
    def policy_facts(cls) -> dict[str, Any]:
        """The action as the policy sees it (input.action, policies/README.md)."""
        return {
            "name": cls.name,
            "targetKind": cls.target_kind,
            "clusterScoped": cls.node_action,
            "destructive": cls.destructive,
            "sensitive": cls.sensitive,
            "removesCapacity": cls.removes_capacity,
            "restoresCapacity": cls.restores_capacity,
            "changes": list(cls.effects),
        }

    def policy_change(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """What this execution asks for, normalized (input.change), from its camelCase
        parameters: "replicas" (the replica count it sets), "images" (it may set container
        images), "labels" (labels it sets on the target). Tolerates malformed parameters."""
        return {}

    # --- helpers ------------------------------------------------------------------------
    def _exists(self, snap: Snapshot) -> Check:
        found = snap.get("target") is not None
        return Check("TargetExists", found, "" if found else "target not found")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "action": cls.name,
            "parameters": [dict(p.__dict__, enum=list(p.enum)) for p in cls.params_doc],
            "rules": [r.to_k8s() for r in cls.rules],
            "timeoutSeconds": cls.default_timeout_seconds,
            "nodeAction": cls.node_action,
            "policyFacts": cls.policy_facts(),
            "description": cls.description,
        }
