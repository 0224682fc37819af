"""The CEL rules (``x-kubernetes-validations``) the apiserver enforces itself.

"The one parameters key matches ``action``" and "timeout is 1s..15m"; the spec model
attaches them to its schema and checks the same rules client-side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kexec.domain.actions import Action
from kexec.domain.fields import DURATION_PATTERN, format_duration
from kexec.domain.spec import MAX_TIMEOUT_SECONDS

MAX_TIMEOUT = format_duration(MAX_TIMEOUT_SECONDS)


def parameters_match_action(actions: Iterable[Action[Any]]) -> dict[str, Any]:
    """On spec: the one key of spec.parameters is the camelCase name of spec.action."""
    return {
        "rule": " || ".join(
            f"(self.action == '{a.name}' && has(self.parameters.{a.key}))" for a in actions
        ),
        "message": "spec.parameters must have exactly one key, the camelCase "
        "name of spec.action (e.g. scaleDeployment for scale_deployment)",
        "fieldPath": ".parameters",
        "reason": "FieldValueInvalid",
    }


# On spec.timeout. Guarded by the pattern so a malformed value reports only the pattern
# error, not a CEL conversion error as well.
TIMEOUT_BOUNDS: dict[str, Any] = {
    "rule": f"!self.matches('{DURATION_PATTERN}') || "
    f"(duration(self) >= duration('1s') && "
    f"duration(self) <= duration('{MAX_TIMEOUT}'))",
    "message": f"must be between 1s and {MAX_TIMEOUT}",
}


# Every spec field but the approval fields is pinned at creation ("what was checked is
# what runs"); a unit test proves this list and APPROVAL_FIELDS cover the whole spec.
PINNED_FIELDS = ("action", "parameters", "workflowExecutionRef", "stepNumber", "targetCluster",
                 "maxRetries", "timeout", "dryRun", "rollbackOf")

# On spec (a transition rule: updates only).
SPEC_IMMUTABLE: dict[str, Any] = {
    "rule": " && ".join(
        f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
        for f in PINNED_FIELDS
    ),
    "message": "spec is immutable after creation, except spec.approvalReceived and "
    "spec.approvedBy",
    "reason": "FieldValueForbidden",
}
