"""The trust model on the fakes: spec pinned, requester known, no escalation, real
approvals, zero standing privilege (the real-server attacks are in tests/e2e)."""

from __future__ import annotations

from typing import Any

from tests.unit.world import NS, TRUSTED, World, wire

from kexec.adapters.policy.fake import FakePolicy
from kexec.application.approve import ApproveExecution
from kexec.domain.phases import Phase
from kexec.domain.resources import Rule

SCALE = {"namespace": NS, "deployment": "web", "replicas": 5}


def approval_world() -> World:
    w = World()
    w.policy.set_decision(FakePolicy.allowing(requires_approval=True).decision)
    return w


async def wait_for_approval(w: World) -> None:
    for _ in range(4):
        await w.step()
    assert (await w.get()).phase is Phase.WAITING_APPROVAL


def replicas(w: World) -> int:
    obj = w.cluster.obj("Deployment", NS, "web")
    assert obj is not None
    return int(obj["spec"]["replicas"])


async def test_spec_changed_after_validation_fails_and_changes_nothing() -> None:
    w = approval_world()
    w.cluster.immutable_spec = False  # a CRD without the immutability rule: defence in depth
    await w.create("scale_deployment", SCALE)
    await wait_for_approval(w)
    ex = await w.get()
    ex.spec["parameters"]["scaleDeployment"]["replicas"] = 0
    ex.spec["approvalReceived"], ex.spec["approvedBy"] = True, "bob"
    await w.cluster.update_execution(ex)
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "SpecChanged")
    assert replicas(w) == 2 and not w.cluster.jobs
    assert not w.cluster.bindings


async def test_the_fake_refuses_spec_edits_like_the_crd() -> None:
    w = World()
    await w.create("scale_deployment", SCALE)
    ex = await w.get()
    ex.spec["parameters"]["scaleDeployment"]["replicas"] = 0
    try:
        await w.cluster.update_execution(ex)
    except Exception as exc:
        assert "only spec.approvalReceived" in str(exc)
    else:
        raise AssertionError("the spec edit was accepted")


async def test_no_admission_stamp_fails_closed() -> None:
    w = World()
    w.cluster.admission_missing = "mutatingadmissionpolicy 'kexec-requester' is not installed"
    await w.create("scale_deployment", SCALE)
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "RequesterUnknown")
    assert "kexec-requester" in wire(ex)["message"]
    assert replicas(w) == 2 and not w.cluster.bindings


async def test_requester_without_permission_is_refused_before_anything_changes() -> None:
    w = World()
    w.cluster.acting_user = "carol"
    w.cluster.user_rules = {"carol": [(NS, Rule(("apps",), ("deployments",), ("get",)))]}
    await w.create("scale_deployment", SCALE)
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "RequesterForbidden")
    assert "update deployments/scale.apps 'web'" in wire(ex)["message"]
    assert replicas(w) == 2 and not w.cluster.jobs
    assert not w.cluster.service_accounts and not w.cluster.bindings


async def test_requester_with_permission_runs_and_is_recorded() -> None:
    w = World()
    w.cluster.acting_user = "dave"
    w.cluster.user_rules = {"dave": [(NS, Rule(("apps",), ("deployments", "deployments/scale"),
                                               ("get", "update", "patch")))]}
    await w.create("scale_deployment", SCALE)
    ex = await w.drive()
    assert ex.phase is Phase.COMPLETED and replicas(w) == 5
    assert wire(ex)["requestedBy"] == "dave"
    record = w.audit.execution(ex.uid)
    assert record is not None and record.extra["requestedBy"] == "dave"


async def test_trusted_namespace_skips_the_requester_check() -> None:
    w = World()
    w.cluster.acting_user = "orchestrator"
    w.cluster.user_rules = {}  # may do nothing themselves
    await w.create("scale_deployment", SCALE, namespace=TRUSTED)
    ex = await w.drive(namespace=TRUSTED)
    assert ex.phase is Phase.COMPLETED and replicas(w) == 5


async def test_approval_present_at_creation_does_not_count() -> None:
    w = approval_world()
    await w.create("scale_deployment", SCALE, approvalReceived=True, approvedBy="bob")
    await wait_for_approval(w)
    ex = await w.drive()
    assert ex.phase is Phase.WAITING_APPROVAL and not w.cluster.jobs
    assert "before validation does not count" in wire(ex)["message"]
    await ApproveExecution(w.cluster)(NS, "ex", approver="bob")  # withdraws, approves again
    ex = await w.drive()
    assert ex.phase is Phase.COMPLETED and wire(ex)["approval"]["by"] == "bob"


async def test_requester_cannot_approve_their_own_execution() -> None:
    w = approval_world()
    await w.create("scale_deployment", SCALE)
    await wait_for_approval(w)
    await ApproveExecution(w.cluster)(NS, "ex", approver="orchestrator")
    ex = await w.drive()
    assert ex.phase is Phase.WAITING_APPROVAL and not w.cluster.jobs
    approved = next(c for c in wire(ex)["conditions"] if c["type"] == "Approved")
    assert approved["reason"] == "ApprovalNotValid"


async def test_bindings_exist_only_while_needed() -> None:
    w = World()
    await w.create("scale_deployment", SCALE, name="a")
    await w.create("scale_deployment", {**SCALE, "deployment": "web", "replicas": 3}, name="b")
    await w.step("a")
    await w.step("a")
    assert w.cluster.bindings  # a validated and is about to run
    ex = await w.drive("a")
    assert ex.phase is Phase.COMPLETED
    ex = await w.drive("b")
    assert ex.phase is Phase.COMPLETED
    assert not w.cluster.bindings  # nothing stands after the last one
    assert not w.cluster.grants.get(
        f"system:serviceaccount:{NS}:kexec-scale-deployment")


async def test_waiting_for_approval_holds_no_binding() -> None:
    w = approval_world()
    await w.create("scale_deployment", SCALE)
    await wait_for_approval(w)
    assert not w.cluster.bindings


async def test_leftover_bindings_are_collected() -> None:
    w = World()
    from kexec.application.grants import identity_for

    await w.cluster.ensure_identity(identity_for(NS, "scale_deployment", w.settings),
                                    "scale_deployment", NS)
    assert w.cluster.bindings
    assert await w.reconcile.collect_garbage() == 1
    assert not w.cluster.bindings


def test_patch_guards_agree_whatever_the_patch_type() -> None:
    import pytest

    from kexec.domain.actions import ACTIONS
    from kexec.domain.errors import ValidationError

    action = ACTIONS["patch_deployment"]
    base = {"namespace": NS, "deployment": "web"}
    owner = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"}]
    attempts = [
        ("json", [{"op": "add", "path": "/metadata/ownerReferences", "value": owner}]),
        ("json", [{"op": "replace", "path": "/metadata", "value": {"name": "web"}}]),
        ("json", [{"op": "remove", "path": "/metadata/finalizers/0"}]),
        ("json", [{"op": "move", "from": "/status", "path": "/spec/x"}]),
        ("merge", {"metadata": {"ownerReferences": owner}}),
        ("strategic", {"metadata": {"finalizers": ["x"]}}),
        ("merge", {"status": {"replicas": 0}}),
    ]
    for patch_type, patch in attempts:
        with pytest.raises(ValidationError, match=r"may not (touch /|be patched)"):
            action.parse({**base, "patchType": patch_type, "patch": patch})
    for patch_type, patch in [
        ("json", [{"op": "replace", "path": "/spec/replicas", "value": 2}]),
        ("json", [{"op": "add", "path": "/metadata/labels/x", "value": "y"}]),
        ("merge", {"metadata": {"annotations": {"a": "b"}}, "spec": {"paused": False}}),
    ]:
        action.parse({**base, "patchType": patch_type, "patch": patch})


def test_a_validated_execution_holds_its_target_whatever_the_creation_order() -> None:
    from datetime import UTC, datetime

    from kexec.domain.execution import Execution
    from kexec.domain.safety import holder_of
    from kexec.domain.status import ExecutionStatus

    spec = {"action": "scale_deployment", "parameters": {"scaleDeployment": SCALE}}
    when = datetime(2026, 1, 1, tzinfo=UTC)
    # Created in the same second; "b" sorts first by name, but "z" already validated.
    running = Execution(NS, "z", uid="z", created=when, spec=spec,
                        status=ExecutionStatus(phase=Phase.PREPARING))
    later = Execution(NS, "b", uid="b", created=when, spec=spec)
    assert holder_of(later, [running, later]) is running
    assert holder_of(running, [running, later]) is None


async def test_two_validations_behind_a_stale_cache_never_both_pass() -> None:
    """The cache may not show a write yet: the claim keeps the second one waiting."""
    w = World()
    await w.create("scale_deployment", SCALE, name="y-first")
    stale = [await w.get("y-first")]  # the cache has not seen the second one yet
    real = w.cluster.list_executions

    async def cached(*, active: bool = False) -> list[Any]:
        return [e.copy() for e in stale if not (active and e.terminal)]

    w.cluster.list_executions = cached  # type: ignore[method-assign]
    await w.step("y-first")
    await w.step("y-first")
    assert (await w.get("y-first")).phase is Phase.EXECUTING
    await w.create("scale_deployment", {**SCALE, "replicas": 3}, name="x-second")
    stale = [await w.get("x-second")]  # ... nor the first one's progress (it sorts after)
    stale[0].status.phase = Phase.PENDING
    await w.step("x-second")
    ex = await w.get("x-second")
    assert (ex.phase, wire(ex)["reason"]) == (Phase.PENDING, "TargetBusy")
    assert "y-first" in wire(ex)["message"]
    w.cluster.list_executions = real  # type: ignore[method-assign]
    assert (await w.drive("y-first")).phase is Phase.COMPLETED
    assert (await w.drive("x-second")).phase is Phase.COMPLETED


def test_allow_self_approval_reaches_the_settings() -> None:
    from kexec.entrypoints.container import build_container

    assert build_container().settings().allow_self_approval is False
    assert build_container(allow_self_approval=True).settings().allow_self_approval is True
