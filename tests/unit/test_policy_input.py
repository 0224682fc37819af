"""The policy input: action facts from the registry, the normalized change, the trusted
namespaces; and the policy itself names no action."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kexec.adapters.policy.bundle import load_policy_dir
from kexec.adapters.policy.embedded import CompiledPolicy
from kexec.application.policy_input import _read_by_policy, build_policy_input, change_facts
from kexec.domain.actions import ACTIONS
from kexec.domain.actions.patch_deployment import patch_change
from kexec.domain.execution import Execution
from kexec.domain.spec import parse_spec

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in patch.items()}}
    return copy.deepcopy(patch)


def _fixtures() -> dict[str, dict[str, Any]]:
    bases = json.loads((POLICIES / "testdata" / "bases.json").read_text())["bases"]
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((POLICIES / "testdata").glob("cases_*.json")):
        for name, case in json.loads(path.read_text())["cases"].items():
            out[name] = _merge(bases[case["base"]], case["input"])
    return out


def test_every_fixture_carries_the_facts_the_registry_derives() -> None:
    checked = 0
    for name, doc in _fixtures().items():
        action = ACTIONS.get(doc["execution"].get("action", ""))
        if action is None:
            continue  # unknown_action fixtures
        assert doc["action"] == action.policy_facts(), name
        assert doc["change"] == change_facts(action, doc["execution"]["parameters"]), name
        checked += 1
    assert checked >= 80


def _names_and_keys() -> set[str]:
    return {n for a in ACTIONS.values() for n in (a.name, a.key)}


def test_policies_name_no_action() -> None:
    # One source for the list of actions: the registry. Rego modules (tests aside)
    # and the knobs decide on facts only.
    pattern = re.compile("|".join(sorted(_names_and_keys())))
    modules = [p for p in POLICIES.rglob("*.rego") if not p.name.endswith("_test.rego")]
    assert modules
    for path in [*modules, POLICIES / "data.json"]:
        found = pattern.findall(path.read_text())
        assert not found, f"{path.relative_to(POLICIES)} names actions: {sorted(set(found))}"


def test_build_policy_input_carries_facts_change_and_trusted_namespaces() -> None:
    spec = {"action": "scale_deployment",
            "parameters": {"scaleDeployment": {"namespace": "shop", "deployment": "web",
                                               "replicas": 4}}}
    ex = Execution("shop", "exec-1", spec=spec)
    _parsed, action, params = parse_spec(spec)
    target = {"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop",
                                                 "labels": {"app": "web"}},
              "spec": {"replicas": 2}}
    doc = build_policy_input(ex, action, params, {"target": target}, {}, {"shop": 1},
                             datetime(2025, 6, 11, 10, 30, tzinfo=UTC),
                             {"kubernaut-system", "ops"})
    assert doc["action"] == {
        "name": "scale_deployment", "targetKind": "Deployment", "clusterScoped": False,
        "destructive": False, "sensitive": False, "removesCapacity": False,
        "restoresCapacity": False, "changes": ["replicas"],
    }
    assert doc["change"] == {"replicas": 4, "images": False, "labels": {}}
    assert doc["controller"] == {"trustedNamespaces": ["kubernaut-system", "ops"]}
    assert doc["target"]["labels"] == {"app": "web"}
    decision = CompiledPolicy(load_policy_dir(POLICIES), pool_size=1).decide(doc)
    assert decision.allowed and not decision.requires_approval


def test_build_policy_input_carries_only_what_the_rules_read() -> None:
    spec = {"action": "delete_pod", "parameters": {"deletePod": {"namespace": "shop", "pod": "web-1"}}}
    ex = Execution("shop", "exec-1", spec=spec, labels={"team": "a"})
    _parsed, action, params = parse_spec(spec)
    owners = [{"kind": "ReplicaSet", "name": "web-1a", "controller": True}]
    target = {"kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "uid": "u",
                                          "ownerReferences": owners, "annotations": {"a": "b"}},
              "spec": {"containers": [{"name": "web", "image": "web:1"}]}, "status": {"phase": "Running"}}
    doc = build_policy_input(ex, action, params, {"target": target}, {},
                             {"shop": 2, "other": 4, "idle": 0}, datetime(2025, 6, 11, 10, 30, tzinfo=UTC))
    assert doc["target"]["object"] == {"metadata": {"ownerReferences": owners}}
    assert doc["cluster"]["activeExecutions"] == {"shop": 2}  # only the rate limit's namespace
    assert doc["execution"]["parameters"] == {}  # the rules read input.change
    assert set(doc["execution"]) == {"name", "namespace", "action", "parameters", "annotations"}
    deployment = {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3, "paused": False}}
    secret = {"kind": "Secret", "metadata": {"name": "tls"}, "data": {"key": "c2VjcmV0"}}
    assert _read_by_policy(deployment) == {"spec": {"replicas": 3}}
    assert _read_by_policy(secret) == {}
    assert _read_by_policy(None) == {}


@pytest.mark.parametrize(
    ("patch", "replicas", "images"),
    [
        ({"spec": {"replicas": 7}}, 7, False),
        ({"spec": {"replicas": "7"}}, None, False),
        ({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:2"}]}}}}, None, True),
        ({"metadata": {"annotations": {"a": "b"}}}, None, False),
        ({}, None, False),
        ([{"op": "replace", "path": "/spec/replicas", "value": 3},
          {"op": "add", "path": "/spec/replicas", "value": 5}], 5, False),
        ([{"op": "remove", "path": "/spec/replicas"}], None, False),
        ([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "x"}], None, True),
        ([{"op": "move", "from": "/spec/template/spec/initContainers/0", "path": "/metadata/x"}],
         None, True),
        ([{"op": "replace", "path": "/spec", "value": {}}], None, True),
        ([{"op": "add", "path": "/spec/template/metadata/annotations/a", "value": "b"}], None, False),
        ([], None, False),
        ("spec:\n  replicas: 3", None, True),
        (None, None, True),
    ],
)
def test_patch_change_reads_replicas_and_images(patch: Any, replicas: Any, images: bool) -> None:
    assert patch_change(patch) == {"replicas": replicas, "images": images}


def test_manifest_change_reads_replicas_of_scalable_kinds_and_labels() -> None:
    apply = ACTIONS["apply_manifest"]
    deployment = {"kind": "Deployment", "metadata": {"labels": {"tier": "gold"}},
                  "spec": {"replicas": 0}}
    assert change_facts(apply, {"manifest": deployment}) == {
        "replicas": 0, "images": False, "labels": {"tier": "gold"}}
    service = {"kind": "Service", "metadata": {}, "spec": {"replicas": 3}}
    assert change_facts(apply, {"manifest": service})["replicas"] is None
    assert change_facts(apply, {"manifest": "not-an-object"}) == {
        "replicas": None, "images": False, "labels": {}}
