"""The parameter rules of apply_manifest and patch_deployment, and apply_manifest's
judgement (guard, postconditions, rollback) on plain data."""

from __future__ import annotations

from typing import Any

import pytest

from kexec.domain.actions import ACTIONS, Context
from kexec.domain.errors import ValidationError
from kexec.domain.resources import Delete, Patch

APPLY = ACTIONS["apply_manifest"]
PATCH = ACTIONS["patch_deployment"]
CTX = Context("ex", "team-a", "uid-1")
CM: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "cfg", "namespace": "team-a"}, "data": {"k": "v"}}


def errors(action: Any, raw: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as err:
        action.parse(raw)
    return {e.path: e.message for e in err.value.errors}


M = "spec.parameters.applyManifest.manifest"


@pytest.mark.parametrize(
    ("manifest", "path", "message"),
    [
        ({**CM, "apiVersion": "apps/v1"}, f"{M}.apiVersion", "must be v1"),
        ({"apiVersion": "v1", "kind": "ConfigMap"}, f"{M}.metadata", "is required"),
        ({**CM, "metadata": {"name": "Bad_Name", "namespace": "team-a"}}, f"{M}.metadata.name",
         "valid name required"),
        ({**CM, "metadata": {"name": "cfg"}}, f"{M}.metadata.namespace", "valid namespace required"),
        ({**CM, "metadata": {**CM["metadata"], "uid": "u"}}, f"{M}.metadata.uid", "must not be set"),
        ({**CM, "metadata": {**CM["metadata"], "resourceVersion": "1"}}, f"{M}.metadata.resourceVersion",
         "must not be set"),
    ],
)
def test_apply_manifest_names_the_bad_manifest_field(manifest: dict[str, Any], path: str,
                                                     message: str) -> None:
    assert errors(APPLY, {"manifest": manifest}).get(path) == message


def test_apply_creates_then_its_rollback_deletes_exactly_that_object() -> None:
    p = APPLY.parse({"manifest": CM})
    assert APPLY.preconditions(p, {"target": None}) == []  # apply creates when absent
    assert APPLY.guard(p, {"target": None}) == {"absent": "true"}
    assert APPLY.plan(p, {"target": None}, CTX) == [Patch(APPLY.target(p), "apply", CM)]
    undo = APPLY.rollback(p, {"target": None}, CTX)
    assert (undo.available, undo.parameters) == (True, {"delete": True, "manifest": {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "team-a"}}})
    applied = {**CM, "metadata": {**CM["metadata"], "resourceVersion": "9"}, "data": {"k": "v", "x": "y"}}
    assert [c.passed for c in APPLY.postconditions(p, {"target": applied}, {})] == [True]
    assert [c.passed for c in APPLY.postconditions(p, {"target": {**CM, "data": {}}}, {})] == [False]


def test_apply_over_an_existing_object_rolls_back_to_its_server_free_copy() -> None:
    p = APPLY.parse({"manifest": CM})
    before = {**CM, "status": {"x": 1}, "metadata": {
        **CM["metadata"], "uid": "u1", "resourceVersion": "5", "managedFields": [{}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}}
    undo = APPLY.rollback(p, {"target": before}, CTX)
    assert undo.parameters == {"manifest": CM}
    assert APPLY.summarize(before) == {"exists": True, "resourceVersion": "5", "generation": 0}
    assert APPLY.summarize(None) == {"exists": False}


def test_delete_needs_the_object_and_guards_its_uid() -> None:
    p = APPLY.parse({"manifest": CM, "delete": True})
    assert [c.name for c in APPLY.preconditions(p, {"target": None}) if not c.passed] == ["TargetExists"]
    live = {**CM, "metadata": {**CM["metadata"], "uid": "u1"}}
    assert APPLY.plan(p, {"target": live}, CTX) == [Delete(APPLY.target(p), uid="u1")]
    assert [c.passed for c in APPLY.postconditions(p, {"target": None}, {})] == [True]
    assert APPLY.rollback(p, {"target": live}, CTX).parameters == {"manifest": CM}
    nothing = APPLY.rollback(p, {"target": None}, CTX)
    assert (nothing.available, nothing.note) == (False, "nothing was deleted")


P = "spec.parameters.patchDeployment.patch"
BASE = {"namespace": "team-a", "deployment": "web"}


@pytest.mark.parametrize(
    ("patch_type", "patch", "path", "message"),
    [
        ("json", {"op": "add"}, P, "a json patch must be a non-empty array"),
        ("json", [], P, "a json patch must be a non-empty array"),
        ("json", [{"op": "frobnicate", "path": "/spec"}], f"{P}[0]", "invalid JSON patch op"),
        ("json", [{"op": "replace"}], f"{P}[0]", "invalid JSON patch op"),
        ("json", [{"op": "replace", "path": "/status/replicas", "value": 1}], f"{P}[0]",
         "may not touch /status/replicas"),
        ("merge", [], P, "must be a non-empty object"),
        ("strategic", {}, P, "must be a non-empty object"),
        ("merge", {"status": {"replicas": 1}}, f"{P}.status", "may not be patched"),
        ("merge", {"metadata": {"name": "other"}}, f"{P}.metadata.name", "may not be patched"),
    ],
)
def test_patch_deployment_refuses_patches_that_escape_the_spec(patch_type: str, patch: Any,
                                                               path: str, message: str) -> None:
    raw = {**BASE, "patchType": patch_type, "patch": patch}
    assert errors(PATCH, raw).get(path) == message


def test_patch_deployment_rollback_replaces_the_whole_previous_spec() -> None:
    p = PATCH.parse({**BASE, "patchType": "merge", "patch": {"spec": {"paused": True}}})
    before = {"kind": "Deployment", "metadata": {"name": "web", "namespace": "team-a"},
              "spec": {"replicas": 2, "paused": False}}
    undo = PATCH.rollback(p, {"target": before}, CTX)
    assert undo.available and undo.action == "patch_deployment"
    assert undo.parameters is not None
    assert undo.parameters["patch"] == [{"op": "replace", "path": "/spec",
                                         "value": {"replicas": 2, "paused": False}}]
    missing = PATCH.rollback(p, {"target": None}, CTX)
    assert (missing.available, missing.note) == (False, "no previous spec captured")
