"""A 12th action, defined here and only here, is accepted everywhere with no other edit.

The action registry (kexec.domain.actions.ACTIONS) is the one list of actions: the
CRD schema, the per-action RBAC, `kexec actions`, the safety policy (from the
action's facts) and the runner all derive from it. The synthetic action below is
registered for the duration of a test and removed afterwards.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kexec.adapters.fakes import FakeCluster, ManualClock
from kexec.adapters.kubernetes import crd, rbac
from kexec.adapters.policy.bundle import load_policy_dir
from kexec.adapters.policy.embedded import EmbeddedPolicy
from kexec.application.policy_input import build_policy_input
from kexec.application.ports.cluster import Identity
from kexec.application.run_action import RunAction, RunRequest
from kexec.application.snapshot import read_snapshot
from kexec.domain.actions import ACTIONS, Action, Context, RollbackSpec
from kexec.domain.errors import ValidationError
from kexec.domain.execution import API_VERSION, KIND, Execution
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import Check, Mutation, ObjectRef, Patch, Rule, Snapshot, dig
from kexec.domain.spec import parse_spec
from kexec.entrypoints.cli import cli, validation_errors

POLICIES = Path(__file__).resolve().parents[2] / "policies"
NS = "shop"


@dataclass(frozen=True)
class StatefulSetScale:
    namespace: str
    stateful_set: str
    replicas: int


class ScaleStatefulSet(Action[StatefulSetScale]):
    """The synthetic 12th action: set a StatefulSet's replicas."""

    name = "scale_statefulset"
    key = "scaleStatefulSet"
    description = "Set a StatefulSet's replicas."
    default_timeout_seconds = 120
    target_kind = "StatefulSet"
    effects = ("replicas",)
    params_doc = (
        Param("namespace", "label", "namespace of the target"),
        Param("statefulSet", "name", "StatefulSet name"),
        Param("replicas", "integer", "desired replicas", minimum=0, maximum=1000),
    )
    rules = (Rule(("apps",), ("statefulsets",), ("get", "patch")),)

    def _parse(self, v: Mapping[str, Any], f: Fields) -> StatefulSetScale:
        return StatefulSetScale(v["namespace"], v["statefulSet"], v["replicas"])

    def to_dict(self, p: StatefulSetScale) -> dict[str, Any]:
        return {"namespace": p.namespace, "statefulSet": p.stateful_set, "replicas": p.replicas}

    def target(self, p: StatefulSetScale) -> ObjectRef:
        return ObjectRef("StatefulSet", p.namespace, p.stateful_set)

    def policy_change(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        return {"replicas": parameters.get("replicas")}

    def plan(self, p: StatefulSetScale, snap: Snapshot, ctx: Context) -> list[Mutation]:
        return [Patch(self.target(p), "merge", {"spec": {"replicas": p.replicas}})]

    def postconditions(
        self, p: StatefulSetScale, snap: Snapshot, result: Mapping[str, Any]
    ) -> list[Check]:
        now = dig(snap.get("target"), "spec", "replicas")
        return [Check("ReplicasSet", now == p.replicas, f"spec.replicas={now}")]

    def rollback(self, p: StatefulSetScale, before: Snapshot, ctx: Context) -> RollbackSpec:
        previous = dig(before.get("target"), "spec", "replicas", default=1)
        return RollbackSpec(True, self.name, {**self.to_dict(p), "replicas": previous})


TWELFTH = ScaleStatefulSet()


def _rebuild_crd() -> None:
    """The CRD package builds its models from the registry when it loads: load it again."""
    from kexec.adapters.kubernetes.crd import cel, models, parameters

    for module in (cel, parameters, models, crd):
        importlib.reload(module)


@pytest.fixture
def registered() -> Iterator[Action[Any]]:
    """The 12th action in the registry; the CRD models (built from the registry when the
    module loads) are rebuilt with it, and without it afterwards."""
    assert TWELFTH.name not in ACTIONS and len(ACTIONS) == 11
    ACTIONS[TWELFTH.name] = TWELFTH
    try:
        _rebuild_crd()
        yield TWELFTH
    finally:
        del ACTIONS[TWELFTH.name]
        _rebuild_crd()
    assert TWELFTH.name not in crd.openapi_schema()["properties"]["spec"]["properties"]["action"]["enum"]


def _document(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "scale-db", "namespace": NS},
        "spec": {
            "action": TWELFTH.name,
            "parameters": {TWELFTH.key: {"namespace": NS, "statefulSet": "db", "replicas": replicas}},
        },
    }


def _statefulset(replicas: int, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": NS, "labels": dict(labels)},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "db",
                                                                             "image": "db:1"}]}}},
    }


def test_the_generated_crd_schema_accepts_it(registered: Action[Any]) -> None:
    spec = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert TWELFTH.name in spec["properties"]["action"]["enum"]
    params = spec["properties"]["parameters"]["properties"][TWELFTH.key]
    assert set(params["properties"]) == {"namespace", "statefulSet", "replicas"}
    assert params["properties"]["replicas"]["maximum"] == 1000
    rule = spec["x-kubernetes-validations"][0]["rule"]
    assert f"self.action == '{TWELFTH.name}' && has(self.parameters.{TWELFTH.key})" in rule
    assert crd.validate_manifest(_document(3)) == []
    assert any("replicas" in e for e in crd.validate_manifest(_document(1001)))
    # `kexec validate` (schema + domain) accepts it too.
    assert validation_errors(_document(3)) == []


def test_the_rbac_generator_emits_its_cluster_role(registered: Action[Any]) -> None:
    roles = {r["metadata"]["name"]: r for r in rbac.action_cluster_roles()}
    role = roles[rbac.action_role_name(TWELFTH.name)]
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["statefulsets"],
                              "verbs": ["get", "patch"]}]
    assert role["metadata"]["annotations"]["kubernetesexecution.kubernaut.io/scope"] == "target-namespace"
    assert len(roles) == 12


def test_kexec_actions_lists_it(registered: Action[Any]) -> None:
    result = CliRunner().invoke(cli, ["actions", "-o", "json"])
    assert result.exit_code == 0, result.output
    listed = {a["action"]: a for a in json.loads(result.output)}
    assert len(listed) == 12
    assert [p["name"] for p in listed[TWELFTH.name]["parameters"]] == ["namespace", "statefulSet",
                                                                       "replicas"]
    assert listed[TWELFTH.name]["policyFacts"]["changes"] == ["replicas"]
    table = CliRunner().invoke(cli, ["actions"])
    assert table.exit_code == 0 and TWELFTH.name in table.output and "12 actions" in table.output


def _decide(replicas: int, current: int, namespace_labels: dict[str, str] | None = None,
            **target_labels: str) -> Any:
    doc = _document(replicas)
    _spec, action, params = parse_spec(doc["spec"])
    assert action is TWELFTH
    ex = Execution(NS, doc["metadata"]["name"], spec=doc["spec"])
    facts = {"namespace": {"name": NS, "labels": namespace_labels or {}},
             "nodes": [{"name": f"node-{i}", "ready": True, "unschedulable": False,
                        "controlPlane": False} for i in range(3)]}
    policy_input = build_policy_input(
        ex, action, params, {"target": _statefulset(current, **target_labels)}, facts, {},
        datetime(2025, 6, 11, 10, 30, tzinfo=UTC), {"kubernaut-system"})
    engine = EmbeddedPolicy(load_policy_dir(POLICIES))
    try:
        return engine.decide_blocking(policy_input)
    finally:
        engine.close()


def test_the_real_policy_decides_on_its_facts(registered: Action[Any]) -> None:
    allowed = _decide(5, current=3)
    assert allowed.allowed and not allowed.requires_approval, allowed.violations
    # The replica rules apply through input.change.replicas, whatever the action.
    too_many = _decide(101, current=3)
    assert {v.rule for v in too_many.violations} == {"max_replicas"}
    critical = _decide(0, current=3, **{"kubernaut.io/critical": "true"})
    assert {v.rule for v in critical.violations} == {"critical_scale_to_zero"}
    # Scaling down in production is destructive: approval.
    down = _decide(1, current=3, namespace_labels={"environment": "production"})
    assert down.allowed and down.requires_approval


async def test_the_runner_executes_its_plan(registered: Action[Any]) -> None:
    clock = ManualClock()
    cluster = FakeCluster(clock)
    cluster.add(_statefulset(3))
    doc = _document(5)
    _, action, params = parse_spec(doc["spec"])
    identity = Identity(NS, "kexec-scale-statefulset")
    await cluster.ensure_identity(identity, action.name, NS)  # grants exactly its rules
    before = await read_snapshot(cluster, action.reads(params))
    report = await RunAction(cluster.view(identity), clock)(RunRequest(  # type: ignore[arg-type]
        action=action.name,
        parameters=doc["spec"]["parameters"][action.key],
        context=Context("scale-db", NS, "uid-12"),
        guard=action.guard(params, before),
    ))
    assert report.success, report.to_dict()
    assert dig(cluster.obj("StatefulSet", NS, "db"), "spec", "replicas") == 5
    after = await read_snapshot(cluster, action.reads(params))
    assert all(c.passed for c in action.postconditions(params, after, report.to_dict()))
    assert report.rollback == {"available": True, "action": TWELFTH.name, "parameters": {
        TWELFTH.key: {"namespace": NS, "statefulSet": "db", "replicas": 3}}}


def test_its_parameter_rules_are_stated_once_in_its_params_doc() -> None:
    # Action.parse checks each value by its Param (the CRD schema is generated from the
    # same declarations): changing the declaration changes the check, _parse is untouched.
    with pytest.raises(ValidationError) as err:
        TWELFTH.parse({"namespace": NS, "statefulSet": "db", "replicas": 1001})
    assert str(err.value.errors[0]) == (
        "spec.parameters.scaleStatefulSet.replicas: must be between 0 and 1000, got 1001")

    class SmallStatefulSetScale(ScaleStatefulSet):
        params_doc = (*ScaleStatefulSet.params_doc[:2],
                      replace(ScaleStatefulSet.params_doc[2], maximum=10))

    small = SmallStatefulSetScale()
    assert small.parse({"namespace": NS, "statefulSet": "db", "replicas": 10}).replicas == 10
    with pytest.raises(ValidationError) as err:
        small.parse({"namespace": NS, "statefulSet": "Not_A_Name", "replicas": 11, "x": 1})
    assert [str(e) for e in err.value.errors] == [
        "spec.parameters.scaleStatefulSet.statefulSet: 'Not_A_Name' is not a valid Kubernetes "
        "name (DNS-1123 subdomain)",
        "spec.parameters.scaleStatefulSet.replicas: must be between 0 and 10, got 11",
        "spec.parameters.scaleStatefulSet.x: unknown field",
    ]
