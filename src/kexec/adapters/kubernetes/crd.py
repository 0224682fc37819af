"""The KubernetesExecution CRD: pydantic models ARE the schema (one source of truth).

The per-action parameter models are generated from the domain's ``Param`` data
(``Action.params_doc``), so a 12th action needs no change here. The same models

* validate documents client-side (:func:`validate_manifest`, used by ``kexec validate``
  next to the domain's ``parse_spec``), and
* become the CRD's OpenAPI v3 schema (:func:`crd_manifest`), after conversion of
  pydantic's JSON Schema into a Kubernetes *structural* schema: ``$ref`` inlined,
  no ``title``, ``Optional`` → omitted (or ``nullable`` inside maps), no
  ``additionalProperties: false`` (the apiserver prunes unknown fields instead),
  free-form JSON → ``x-kubernetes-preserve-unknown-fields``.

Rules the apiserver enforces itself: ranges, patterns and enums from the models,
plus CEL (``x-kubernetes-validations``) for "the one parameters key matches
``action``" and "timeout is 1s..15m".
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from kexec.domain.actions import ACTIONS, Action, Param
from kexec.domain.execution import API_VERSION, GROUP, KIND, MAX_TIMEOUT_SECONDS, PLURAL, VERSION
from kexec.domain.fields import format_duration, parse_duration
from kexec.domain.phases import Phase

CRD_NAME = f"{PLURAL}.{GROUP}"
SINGULAR = KIND.lower()
SHORT_NAMES = ("kexec",)
CATEGORIES = ("kubernaut",)

LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
PRESERVE = "x-kubernetes-preserve-unknown-fields"
VALIDATIONS = "x-kubernetes-validations"

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

_STRICT_CLOSED = ConfigDict(extra="forbid", strict=True)


class NameRef(BaseModel):
    """A reference to an object by name (same namespace)."""

    model_config = _STRICT_CLOSED
    name: SubdomainName


# --- parameter models, generated from the domain's Param data -------------------------------


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


def _match_rule(actions: Iterable[Action[Any]]) -> str:
    """CEL: the one key of spec.parameters is the camelCase name of spec.action."""
    return " || ".join(
        f"(self.action == '{a.name}' && has(self.parameters.{a.key}))" for a in actions
    )


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


Parameters = _build_parameters()

if TYPE_CHECKING:
    ActionName = str
    PhaseName = str
else:  # built from the registry / the Phase enum
    ActionName = Literal[tuple(ACTIONS)]
    PhaseName = Literal[tuple(p.value for p in Phase)]


# --- spec -----------------------------------------------------------------------------------


class WorkflowExecutionRef(BaseModel):
    """The parent WorkflowExecution (recorded in audit)."""

    model_config = _STRICT_CLOSED
    name: SubdomainName
    namespace: Label | None = None


_MAX_TIMEOUT = format_duration(MAX_TIMEOUT_SECONDS)
# Every spec field but the approval fields is pinned at creation ("what was checked is
# what runs"); a unit test proves this list and APPROVAL_FIELDS cover the whole spec.
PINNED_FIELDS = ("action", "parameters", "workflowExecutionRef", "stepNumber", "targetCluster",
                 "maxRetries", "timeout", "dryRun", "rollbackOf")


def _immutable_rule(fields: Iterable[str]) -> str:
    return " && ".join(
        f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
        for f in fields
    )


class ExecutionSpecModel(BaseModel):
    """What to do: one action with its parameters, and how to run it."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            VALIDATIONS: [
                {
                    "rule": _match_rule(ACTIONS.values()),
                    "message": "spec.parameters must have exactly one key, the camelCase "
                    "name of spec.action (e.g. scaleDeployment for scale_deployment)",
                    "fieldPath": ".parameters",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": _immutable_rule(PINNED_FIELDS),
                    "message": "spec is immutable after creation, except spec.approvalReceived "
                    "and spec.approvedBy",
                    "reason": "FieldValueForbidden",
                },
            ]
        },
    )

    # maxLength keeps the CEL cost estimate of the rule above small.
    action: ActionName = Field(
        description="The action to perform (snake_case).", json_schema_extra={"maxLength": 63}
    )
    parameters: Parameters = Field(  # type: ignore[valid-type]
        description="The action's parameters under its camelCase key."
    )
    workflow_execution_ref: WorkflowExecutionRef | None = Field(None, alias="workflowExecutionRef")
    step_number: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = Field(
        None, alias="stepNumber", description="Step of the parent workflow."
    )
    target_cluster: Annotated[str, Field(max_length=253)] | None = Field(
        None,
        alias="targetCluster",
        description='Only "" (the local cluster) is supported in v1alpha1.',
    )
    max_retries: Annotated[int, Field(ge=0, le=5)] = Field(
        2, alias="maxRetries", description="Job backoffLimit."
    )
    timeout: (
        Annotated[
            str,
            Field(
                pattern=DURATION_PATTERN,
                min_length=2,
                max_length=16,
                json_schema_extra={
                    VALIDATIONS: [
                        {
                            # Guarded by the pattern so a malformed value reports only
                            # the pattern error, not a CEL conversion error as well.
                            "rule": f"!self.matches('{DURATION_PATTERN}') || "
                            f"(duration(self) >= duration('1s') && "
                            f"duration(self) <= duration('{_MAX_TIMEOUT}'))",
                            "message": f"must be between 1s and {_MAX_TIMEOUT}",
                        }
                    ]
                },
            ),
        ]
        | None
    ) = Field(
        None,
        description=f"Overall deadline, e.g. 90s, 5m (max {_MAX_TIMEOUT}); default per action.",
    )
    dry_run: bool = Field(False, alias="dryRun", description="Validate only, then complete.")
    approval_received: bool | None = Field(
        None, alias="approvalReceived", description="Approval gate (see status.phase)."
    )
    approved_by: Annotated[str, Field(max_length=253)] | None = Field(None, alias="approvedBy")
    rollback_of: SubdomainName | None = Field(
        None, alias="rollbackOf", description="The execution this one undoes."
    )

    @field_validator("parameters", mode="after")
    @classmethod
    def _one_key_matching_action(cls, value: BaseModel, info: ValidationInfo) -> BaseModel:
        present = [
            f.alias or name
            for name, f in type(value).model_fields.items()
            if getattr(value, name) is not None
        ]
        action = ACTIONS.get(str(info.data.get("action", "")))
        if action is not None and present != [action.key]:
            raise ValueError(
                f"must have exactly one key {action.key!r} matching action "
                f"{action.name!r}, got {present}"
            )
        if action is None and len(present) != 1:
            raise ValueError(f"must have exactly one key, got {present}")
        return value

    @field_validator("timeout", mode="after")
    @classmethod
    def _timeout_bounds(cls, value: str | None) -> str | None:
        # The CEL rule of the CRD, client-side.
        if value is not None and not 1 <= parse_duration(value) <= MAX_TIMEOUT_SECONDS:
            raise ValueError(f"must be between 1s and {_MAX_TIMEOUT}")
        return value


# --- status ---------------------------------------------------------------------------------


class ConditionModel(BaseModel):
    """A Kubernetes condition (metav1.Condition)."""

    model_config = ConfigDict(extra="forbid")
    type: Annotated[str, Field(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024)] | None = None
    message: Annotated[str, Field(max_length=32768)] | None = None
    last_transition_time: (
        Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})] | None
    ) = Field(None, alias="lastTransitionTime")
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        None, alias="observedGeneration"
    )


# Controller-owned status parts kept verbatim (their shape is the domain's business).
StatusObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object", PRESERVE: True})]
StatusList = Annotated[
    list[dict[str, Any]],
    WithJsonSchema({"type": "array", "items": {"type": "object", PRESERVE: True}}),
]


class ExecutionStatusModel(BaseModel):
    """status of a KubernetesExecution (written by the controller only)."""

    # Typed where it matters (printer columns, phase enum, conditions), open for the
    # rest so a new status field is never silently pruned by the apiserver.
    model_config = ConfigDict(extra="allow", json_schema_extra={PRESERVE: True})

    phase: PhaseName | None = None
    reason: str | None = Field(None, description="Machine-readable reason (CamelCase).")
    message: str | None = None
    target: str | None = Field(None, description='Printable target, e.g. "Deployment/ns/name".')
    observed_generation: int | None = Field(None, alias="observedGeneration")
    conditions: (
        Annotated[
            list[ConditionModel],
            Field(
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["type"],
                }
            ),
        ]
        | None
    ) = None
    validation: StatusObject | None = Field(None, description="policy, dryRun, preconditions.")
    execution: StatusObject | None = Field(
        None, description="jobName, startTime, completionTime, attempts, resourcesAffected."
    )
    postconditions: StatusList | None = Field(
        None, description="{name, passed, message} per postcondition."
    )
    rollback: StatusObject | None = Field(
        None, description="{available, action, parameters}: the inverse execution's spec."
    )
    phase_transitions: StatusList | None = Field(
        None, alias="phaseTransitions", description="{phase, time, ...}, bounded."
    )


# --- the whole object (client-side validation) -----------------------------------------------


class ObjectMetaModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: SubdomainName | None = None
    generate_name: str | None = Field(None, alias="generateName")
    namespace: Label | None = None

    @model_validator(mode="after")
    def _named(self) -> ObjectMetaModel:
        if not self.name and not self.generate_name:
            raise ValueError("name (or generateName) is required")
        return self


class KubernetesExecutionModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_version: Literal[API_VERSION] = Field(alias="apiVersion")  # type: ignore[valid-type]
    kind: Literal[KIND]  # type: ignore[valid-type]
    metadata: ObjectMetaModel
    spec: ExecutionSpecModel
    status: ExecutionStatusModel | None = None


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("dict[str,any]", "list[any]"):
            continue  # pydantic's validator-wrapper steps, not fields
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "is required",
}


def validate_manifest(doc: Any) -> list[str]:
    """Validate a KubernetesExecution document against the CRD models.

    Returns ``"<field path>: <message>"`` strings (empty when valid), e.g.
    ``spec.parameters.scaleDeployment.replicas: Input should be less than or equal to 1000``.
    The CLI combines this with the domain's ``parse_spec`` (semantic checks).
    """
    if not isinstance(doc, Mapping):
        return ["<document>: must be an object"]
    try:
        KubernetesExecutionModel.model_validate(dict(doc))
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            path = _loc(err["loc"]) or "<document>"
            msg = _MESSAGES.get(err["type"], err["msg"])
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            errors.append(f"{path}: {msg}")
        return errors
    return []


# --- pydantic JSON Schema → Kubernetes structural schema -------------------------------------

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


_RULE_ORDER = ("rule", "message", "messageExpression", "fieldPath", "reason")


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
    schema = _structural(raw, defs)
    problems = structural_problems(schema)
    if problems:
        raise ValueError(f"{model.__name__} is not structural: {problems}")
    return schema  # type: ignore[no-any-return]


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


# --- the CRD --------------------------------------------------------------------------------

PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Action", "type": "string", "jsonPath": ".spec.action"},
    {"name": "Target", "type": "string", "jsonPath": ".status.target"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
)


def openapi_schema() -> dict[str, Any]:
    """The version's openAPIV3Schema (root object; metadata is the apiserver's)."""
    spec = structural_schema(ExecutionSpecModel)
    status = structural_schema(ExecutionStatusModel)
    return {
        "type": "object",
        "description": "KubernetesExecution executes one remediation action safely: validate "
        "(parameters, target, policy, server-side dry run), optionally wait for approval, run "
        "in a Job under a least-privilege ServiceAccount, verify, and offer a rollback.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd_manifest() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of KubernetesExecution."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kexec", "app.kubernetes.io/part-of": "kexec"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "selectableFields": [{"jsonPath": ".spec.action"}],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


__all__ = [
    "CRD_NAME",
    "PARAMETER_MODELS",
    "ExecutionSpecModel",
    "ExecutionStatusModel",
    "KubernetesExecutionModel",
    "crd_manifest",
    "openapi_schema",
    "parameters_model",
    "structural_problems",
    "structural_schema",
    "validate_manifest",
]
