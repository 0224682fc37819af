"""Safety rules that need no policy engine (DESIGN.md, "safety defaults")."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions import Action
from kexec.domain.errors import SafetyViolation
from kexec.domain.execution import Execution
from kexec.domain.phases import Phase
from kexec.domain.resources import KINDS, ObjectRef
from kexec.domain.spec import ExecutionSpec, parse_spec

REDACTED = "[REDACTED]"
# Past validation: the execution's checks were made against the target as it is now.
HOLDS_TARGET = frozenset({Phase.WAITING_APPROVAL, Phase.PREPARING, Phase.EXECUTING,
                          Phase.VERIFYING})
_NAMED_VERBS = frozenset({"get", "update", "patch", "delete"})


@dataclass(frozen=True)
class Permission:
    """One operation as the authorizer sees it (a SubjectAccessReview's resourceAttributes)."""

    group: str
    resource: str
    verb: str
    namespace: str = ""
    name: str = ""
    subresource: str = ""

    def __str__(self) -> str:
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        group = f".{self.group}" if self.group else ""
        named = f" {self.name!r}" if self.name else ""
        where = f" in namespace {self.namespace!r}" if self.namespace else " cluster-wide"
        return f"{self.verb} {res}{group}{named}{where}"


def requester_permissions(action: Action[Any], params: Any) -> list[Permission]:
    """What a requester in an untrusted namespace must be allowed to do themselves for kexec
    to do it for them: each of the action's own operations, on the target's namespace (and
    on the target by name where the verb names one)."""
    target = action.target(params)
    plural = KINDS[target.kind].plural
    out: list[Permission] = []
    for rule in action.operations(params):
        for resource in rule.resources:
            base, _, sub = resource.partition("/")
            for group in rule.api_groups:
                for verb in rule.verbs:
                    name = target.name if base == plural and verb in _NAMED_VERBS else ""
                    out.append(Permission(group, base, verb, target.namespace, name, sub))
    return out


def check_target_cluster(spec: ExecutionSpec) -> None:
    if spec.target_cluster:
        raise SafetyViolation(
            "UnsupportedTargetCluster",
            f"targetCluster {spec.target_cluster!r} is not supported: "
            "v1 acts only on the local cluster (leave it empty)",
        )


def check_namespace(
    execution_namespace: str, action: Action[Any], target: ObjectRef, trusted: Iterable[str]
) -> None:
    """An execution acts only on its own namespace unless it lives in a trusted one.

    This stops anyone who may create a KubernetesExecution from borrowing the
    controller's power in namespaces (or on nodes) they could not touch.
    """
    if execution_namespace in set(trusted):
        return
    if action.node_action or not target.namespace:
        raise SafetyViolation(
            "NamespaceNotAllowed",
            f"{action.name} acts on cluster-scoped {target.kind} and may only run from a "
            f"trusted namespace, not {execution_namespace!r}",
        )
    if target.namespace != execution_namespace:
        raise SafetyViolation(
            "NamespaceNotAllowed",
            f"an execution in {execution_namespace!r} may act only on its own namespace, "
            f"not on {target.namespace!r}",
        )


def target_of(execution: Execution) -> ObjectRef | None:
    """The target an execution mutates, or None when its spec is invalid."""
    memo = execution.target_memo
    if memo is not None and memo[0] == execution.generation:
        return memo[1]  # type: ignore[no-any-return]
    try:
        _, action, params = parse_spec(execution.spec)
        target: ObjectRef | None = action.target(params)
    except Exception:  # invalid specs hold no target
        target = None
    execution.target_memo = (execution.generation, target)
    return target


def holder_of(execution: Execution, others: Iterable[Execution]) -> Execution | None:
    """The execution ahead of this one on the same target, if any.

    One that already passed validation holds the target whatever its age; among the
    others, creation order (name, then uid, break ties), so every replica and every
    worker computes the same answer and two executions never mutate a target at once.
    """
    target = target_of(execution)
    if target is None:
        return None
    mine = (execution.created, execution.name, execution.uid)
    holding = execution.phase in HOLDS_TARGET
    ahead = [
        other
        for other in others
        if target_of(other) == target  # the selective test first
        and other.uid != execution.uid
        and not other.terminal
        and not other.deleting
        and (other.phase in HOLDS_TARGET
             or (not holding and (other.created, other.name, other.uid) < mine))
    ]
    return min(ahead, key=lambda e: (e.created, e.name), default=None)


def secret_values(objects: Iterable[Any]) -> set[str]:
    """Every value (base64 and decoded) held in the Secrets among ``objects``."""
    values: set[str] = set()
    for obj in objects:
        if not isinstance(obj, Mapping) or obj.get("kind", "Secret") != "Secret":
            continue
        for value in list((obj.get("data") or {}).values()) + list(
            (obj.get("stringData") or {}).values()
        ):
            if not isinstance(value, str) or len(value) < 4:
                continue
            values.add(value)
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except Exception:
                continue
            if len(decoded) >= 4:
                values.add(decoded)
    return values


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``value`` fit to be recorded: Secret data blanked, known values masked.

    Applied to everything that reaches status, events, logs and audit.
    """
    known = sorted(set(secrets), key=len, reverse=True)
    return _redact(value, known)


def _redact(value: Any, known: list[str]) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        is_secret = value.get("kind") == "Secret"
        for k, v in value.items():
            if is_secret and k in ("data", "stringData") and isinstance(v, Mapping):
                out[k] = {key: REDACTED for key in v}
            else:
                out[k] = _redact(v, known)
        return out
    if isinstance(value, list | tuple):
        return [_redact(v, known) for v in value]
    if isinstance(value, str) and known:
        for secret in known:
            if secret in value:
                value = value.replace(secret, REDACTED)
    return value
