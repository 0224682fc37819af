"""The KubernetesExecution wire models: spec, status, the whole object.

They become the CRD's schema (``crd.openapi_schema``) and check a document client-side
(:func:`validate_manifest`, used by ``kexec validate`` next to the domain's
``parse_spec``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from kexec.adapters.kubernetes.crd.cel import (
    MAX_TIMEOUT,
    SPEC_IMMUTABLE,
    TIMEOUT_BOUNDS,
    parameters_match_action,
)
from kexec.adapters.kubernetes.crd.parameters import STRICT_CLOSED, Label, Parameters, SubdomainName
from kexec.adapters.kubernetes.crd.structural import PRESERVE, VALIDATIONS
from kexec.domain.actions import ACTIONS
from kexec.domain.execution import API_VERSION, KIND
from kexec.domain.fields import DURATION_PATTERN, parse_duration
from kexec.domain.phases import Phase
from kexec.domain.spec import MAX_TIMEOUT_SECONDS

if TYPE_CHECKING:
    ActionName = str
    PhaseName = str
else:  # built from the registry / the Phase enum
    ActionName = Literal[tuple(ACTIONS)]
    PhaseName = Literal[tuple(p.value for p in Phase)]


# --- spec -----------------------------------------------------------------------------------


class WorkflowExecutionRef(BaseModel):
    """The parent WorkflowExecution (recorded in audit)."""

    model_config = STRICT_CLOSED
    name: SubdomainName
    namespace: Label | None = None


class ExecutionSpecModel(BaseModel):
    """What to do: one action with its parameters, and how to run it."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={VALIDATIONS: [parameters_match_action(ACTIONS.values()),
                                         SPEC_IMMUTABLE]},
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
                json_schema_extra={VALIDATIONS: [TIMEOUT_BOUNDS]},
            ),
        ]
        | None
    ) = Field(
        None,
        description=f"Overall deadline, e.g. 90s, 5m (max {MAX_TIMEOUT}); default per action.",
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
            raise ValueError(f"must be between 1s and {MAX_TIMEOUT}")
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
