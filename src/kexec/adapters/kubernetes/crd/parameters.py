"""The per-action parameter models, generated from the domain's ``Param`` data.

``Action.params_doc`` states each parameter rule once; this module only translates it
into pydantic field types, so a 12th action needs no change here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from kexec.adapters.kubernetes.crd.structural import PRESERVE
from kexec.domain.actions import ACTIONS, Action, Param

LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# --- reusable field types -------------------------------------------------------------------

Label = Annotated[str, Field(pattern=LABEL_PATTERN, max_length=63)]
SubdomainName = Annotated[str, Field(pattern=SUBDOMAIN_PATTERN, max_length=253)]


def _object_or_array(value: Any) -> Any:
    if not isinstance(value, dict | list):
        raise ValueError("must be an object or an array")
    return value


# Free-form JSON object (kept verbatim by the apiserver).
FreeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", PRESERVE: True}),
]
# An object OR an array: a structural schema allows an untyped node only with
# x-kubernetes-preserve-unknown-fields, so the shape check is the domain's job.
FreeJson = Annotated[
    Any,
    AfterValidator(_object_or_array),
    WithJsonSchema({PRESERVE: True}),
]
# Values are strings; null deletes the key (update_configmap).
StringMap = Annotated[
    dict[str, str | None],
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": "string", "nullable": True}}
    ),
]

STRICT_CLOSED = ConfigDict(extra="forbid", strict=True)


class NameRef(BaseModel):
    """A reference to an object by name (same namespace)."""

    model_config = STRICT_CLOSED
    name: SubdomainName


# --- parameter models -----------------------------------------------------------------------


def _camel(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))


def _py_name(param: str) -> str:
    # Aliases carry the wire name; python names just must not shadow BaseModel attributes.
    return "p_" + re.sub(r"[^0-9a-zA-Z_]", "_", param)


def _param_type(p: Param) -> Any:
    if p.type == "label":
        return Label
    if p.type == "name":
        return SubdomainName
    if p.type == "integer":
        return Annotated[int, Field(ge=p.minimum, le=p.maximum)]
    if p.type == "boolean":
        return bool
    if p.type == "enum":
        if not p.enum:
            raise ValueError(f"enum parameter {p.name!r} has no values")
        return Literal[p.enum]
    if p.type == "object":
        return FreeObject
    if p.type == "patch":
        return FreeJson
    if p.type == "stringmap":
        return StringMap
    if p.type == "ref":
        return NameRef
    raise ValueError(f"parameter {p.name!r}: unknown Param type {p.type!r}")


def _param_field(p: Param) -> tuple[Any, Any]:
    annotation = _param_type(p)
    desc = p.description or None
    if p.required:
        return annotation, Field(..., alias=p.name, description=desc)
    if p.default is not None:
        return annotation, Field(p.default, alias=p.name, description=desc)
    return annotation | None, Field(None, alias=p.name, description=desc)


def parameters_model(action: Action[Any]) -> type[BaseModel]:
    """The pydantic model of ``spec.parameters.<action.key>``, generated from ``params_doc``."""
    fields = {_py_name(p.name): _param_field(p) for p in action.params_doc}
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{_camel(action.name)}Parameters",
        __config__=ConfigDict(
            extra="forbid", strict=True, json_schema_extra={"description": action.description}
        ),
        **fields,
    )
    return model


PARAMETER_MODELS: dict[str, type[BaseModel]] = {
    name: parameters_model(action) for name, action in ACTIONS.items()
}


def _build_parameters() -> type[BaseModel]:
    fields = {
        a.key: (PARAMETER_MODELS[a.name] | None, Field(None, alias=a.key)) for a in ACTIONS.values()
    }
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        "Parameters",
        __config__=ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={
                "description": "Exactly one key: the camelCase name of spec.action, "
                "e.g. {scaleDeployment: {...}}.",
                "minProperties": 1,
                "maxProperties": 1,
            },
        ),
        **fields,
    )
    return model


# spec.parameters: one optional key per action (the spec model checks that exactly one is set).
Parameters = _build_parameters()
