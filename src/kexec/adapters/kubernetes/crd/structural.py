"""pydantic's JSON Schema → a Kubernetes *structural* OpenAPI v3 schema.

``$ref`` inlined, no ``title``, ``Optional`` → omitted (or ``nullable`` inside maps), no
``additionalProperties: false`` (the apiserver prunes unknown fields instead), free-form
JSON → ``x-kubernetes-preserve-unknown-fields``; keys in the order a reader expects.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

PRESERVE = "x-kubernetes-preserve-unknown-fields"
VALIDATIONS = "x-kubernetes-validations"

_KEY_ORDER = (
    "type",
    "description",
    "format",
    "enum",
    "default",
    "nullable",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
)
_DROP = {"title", "$defs"}
_RULE_ORDER = ("rule", "message", "messageExpression", "fieldPath", "reason")


def _resolve(node: dict[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**_resolve(copy.deepcopy(target), defs), **node}
        merged.pop("$ref")
        return merged
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:  # pydantic's "$ref + siblings" form
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return {**_resolve(all_of[0], defs), **rest}
    return node


def _structural(node: Any, defs: Mapping[str, Any], *, property_: bool = False) -> Any:
    if not isinstance(node, dict):
        return node
    node = _resolve(dict(node), defs)
    any_of = node.get("anyOf")
    if isinstance(any_of, list):
        others = [s for s in any_of if s != {"type": "null"}]
        if len(others) != 1:
            raise ValueError(f"cannot express anyOf {any_of} in a structural schema")
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        optional = property_ and "default" in outer and outer["default"] is None
        node = {**_resolve(dict(others[0]), defs), **outer}
        if optional:
            node.pop("default")  # optional field: absent, not null
        elif len(others) != len(any_of):
            node["nullable"] = True
    if node.get("default", 0) is None:
        node.pop("default")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs, property_=True) for k, v in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if value is False:
                continue  # forbidden in CRDs; unknown fields are pruned instead
            if value is True or value == {}:
                out[PRESERVE] = True
                continue
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        kinds = {type(v) for v in out["enum"]}
        if kinds == {str}:
            out["type"] = "string"
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    head = [k for k in _KEY_ORDER if k in node]
    tail = sorted(k for k in node if k not in _KEY_ORDER)
    out = {k: node[k] for k in head + tail}
    if VALIDATIONS in out:  # pydantic sorts keys; put the rule first for readers
        out[VALIDATIONS] = [
            {k: r[k] for k in (*_RULE_ORDER, *sorted(set(r) - set(_RULE_ORDER))) if k in r}
            for r in out[VALIDATIONS]
        ]
    return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema as a Kubernetes structural OpenAPI v3 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    problems = structural_problems(schema)
    if problems:
        raise ValueError(f"{model.__name__} is not structural: {problems}")
    return schema


def structural_problems(schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Violations of the structural-schema rules this generator can produce (empty = ok)."""
    problems: list[str] = []
    where = path or "<root>"
    for bad in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const"):
        if bad in schema:
            problems.append(f"{where}: has {bad}")
    if (
        "type" not in schema
        and not schema.get(PRESERVE)
        and not schema.get("x-kubernetes-int-or-string")
    ):
        problems.append(f"{where}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties together")
    if schema.get("additionalProperties") in (True, False):
        problems.append(f"{where}: boolean additionalProperties")
    for name, sub in (schema.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), Mapping):
        problems += structural_problems(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), Mapping):
        problems += structural_problems(schema["items"], f"{path}[]")
    return problems
