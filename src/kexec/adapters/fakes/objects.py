"""Object semantics of the API server, in miniature: merge, strategic and JSON patches,
server-side apply's field removal, label and field selectors, PodDisruptionBudget math."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

from kexec.application.ports.cluster import (
    Invalid,
)
from kexec.domain.resources import Rule

Key = tuple[str, str, str]
STATUS_KINDS = frozenset({"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Pod", "Node",
                          "Namespace", "Service", "Job", "PodDisruptionBudget",
                          "HorizontalPodAutoscaler"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# patchMergeKey of list fields (k8s.io/api struct tags): a strategic merge patch merges
# these lists item by item; every other list is replaced, as in a JSON merge patch.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "env": "name", "volumes": "name", "volumeMounts": "mountPath",
              "ports": "containerPort", "imagePullSecrets": "name", "conditions": "type"}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch for the lists in MERGE_KEYS (``$patch: delete``
    removes an item); otherwise an RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        key = MERGE_KEYS.get(k)
        if v is None:
            out.pop(k, None)
        elif (key and isinstance(v, list) and isinstance(out.get(k), list)
              and all(isinstance(i, dict) and key in i for i in v)):
            merged = list(out[k])
            for item in v:
                at = next((n for n, c in enumerate(merged)
                           if isinstance(c, dict) and c.get(key) == item[key]), None)
                if item.get("$patch") == "delete":
                    if at is not None:
                        del merged[at]
                elif at is None:
                    merged.append(strategic_merge_patch({}, item))
                else:
                    merged[at] = strategic_merge_patch(merged[at], item)
            out[k] = merged
        else:
            out[k] = strategic_merge_patch(out.get(k), v)
    return out


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch, all operations (the ``jsonpatch`` library); a failed ``test``,
    a missing path or parent is Invalid (HTTP 422), as on the real API server."""
    try:
        return jsonpatch.apply_patch(target, ops)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise Invalid(f"the server rejected our request due to an error in our request: {exc}") from None


def _unapply(obj: Any, before: Any, now: Any) -> Any:
    """Server-side apply by one field manager: fields it applied before and no longer
    applies are removed (other writers' fields stay). Maps only; lists are replaced."""
    if not (isinstance(obj, dict) and isinstance(before, dict)):
        return obj
    out = dict(obj)
    for k, v in before.items():
        if not isinstance(now, dict) or k not in now:
            out.pop(k, None)
        elif k in out:
            out[k] = _unapply(out[k], v, now[k])
    return out


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) matches ``labels``."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value, values = e["key"] in labels, labels.get(e["key"]), e.get("values") or []
        ok = {"In": has and value in values, "NotIn": not has or value not in values,
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


_TERM = re.compile(r"^\s*(!?)([^!=\s]+)\s*(?:(==|=|!=)\s*(\S*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _labels_match(selector: str, labels: dict[str, str]) -> bool:
    """A label selector string: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``,
    ``k notin (a,b)``, comma-separated (all must hold)."""
    for term in re.split(r",(?![^()]*\))", selector):
        m = _TERM.match(term)
        if m is None:
            raise Invalid(f"unable to parse requirement: {term!r}")
        bang, key, op, value, set_op, values = m.groups()
        has, got = key in labels, labels.get(key)
        choices = {v.strip() for v in (values or "").split(",")}
        ok = (not has if bang else
              got == value if op in ("=", "==") else
              got != value if op == "!=" else
              has and got in choices if set_op == "in" else
              got not in choices if set_op == "notin" else has)
        if not ok:
            return False
    return True


def _fields_match(selector: str, obj: dict[str, Any]) -> bool:
    """A field selector string: ``path=value``, ``path==value``, ``path!=value``, comma-separated."""
    for term in selector.split(","):
        path, op, want = re.split(r"(==|!=|=)", term, maxsplit=1)
        value: Any = obj
        for part in path.strip().split("."):
            value = value.get(part) if isinstance(value, dict) else None
        text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        if (text == want.strip()) != (op != "!="):
            return False
    return True


def _scaled(value: Any, total: int) -> int:
    """An int-or-percent of ``total``, rounded up (as the disruption controller does)."""
    if isinstance(value, str) and value.endswith("%"):
        return -(-int(value[:-1]) * total // 100)
    return int(value)


@dataclass
class _Counter:
    writes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str) -> None:
        self.writes += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1




def rbac_allows(grants: Iterable[tuple[str, Rule]], group: str, resource: str, verb: str,
                namespace: str, name: str) -> bool:
    """RBAC as the authorizer judges it: a grant scoped to "" is cluster-wide."""
    return any((not scope or scope == namespace) and group in rule.api_groups
               and resource in rule.resources and verb in rule.verbs
               and (not rule.resource_names or name in rule.resource_names)
               for scope, rule in grants)
