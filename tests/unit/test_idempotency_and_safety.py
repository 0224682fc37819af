"""Reconcile twice at every step: no second change. Safety rules without policy."""

from __future__ import annotations

import pytest
from tests.unit.world import NS, TRUSTED, World, b64, wire

from kexec.adapters.policy.fake import FakePolicy
from kexec.application.ports.cluster import Conflict
from kexec.domain.actions import ACTIONS
from kexec.domain.errors import SafetyViolation
from kexec.domain.execution import FINALIZER, Execution
from kexec.domain.phases import Phase
from kexec.domain.resources import ObjectRef
from kexec.domain.safety import REDACTED, check_namespace, holder_of, redact, secret_values
from kexec.domain.status import ExecutionStatus

SCALE = {"namespace": NS, "deployment": "web", "replicas": 4}


async def test_reconcile_twice_at_every_step_changes_nothing_twice() -> None:
    w = World()
    await w.create("scale_deployment", SCALE)
    seen: list[str] = []
    for _ in range(30):
        ex = await w.get()
        if ex.terminal and not ex.finalizers:
            break
        await w.reconcile(ex)
        writes = w.cluster.counter.writes
        jobs = len(w.cluster.jobs)
        audited = w.audit.transition_count()
        events = len(w.cluster.events)
        # The same (now stale) object again: the guarded write refuses, nothing else moves.
        try:
            await w.reconcile(ex)
        except Conflict:
            pass
        assert len(w.cluster.jobs) == jobs
        assert w.audit.transition_count() == audited
        assert len(w.cluster.events) == events
        assert w.cluster.counter.writes - writes <= 1  # at most the refused status write
        seen.append(str(ex.phase))
        if ex.phase is Phase.EXECUTING:
            await w.cluster.run_jobs()
    ex = await w.get()
    assert ex.phase is Phase.COMPLETED
    assert len(w.cluster.jobs) == 1
    assert len(w.audit.transitions(ex.uid)) == 6


async def test_crash_between_job_creation_and_status_write_makes_one_job() -> None:
    w = World()
    await w.create("scale_deployment", SCALE)
    while (await w.get()).phase is not Phase.PREPARING:
        await w.step()
    ex = await w.get()
    real = w.cluster.update_status

    async def crash(_: Execution) -> Execution:
        raise ConnectionError("controller died")

    w.cluster.update_status = crash  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await w.reconcile(ex)
    w.cluster.update_status = real  # type: ignore[method-assign]
    assert len(w.cluster.jobs) == 1
    ex = await w.drive()
    assert ex.phase is Phase.COMPLETED and len(w.cluster.jobs) == 1


async def test_waiting_steps_write_nothing() -> None:
    w = World()
    w.policy.set_decision(FakePolicy.allowing(requires_approval=True).decision)
    await w.create("scale_deployment", SCALE)
    await w.step()
    await w.step()
    writes = w.cluster.counter.writes
    for _ in range(5):
        await w.step()
    assert w.cluster.counter.writes == writes


async def test_untrusted_namespace_may_not_target_another_namespace() -> None:
    w = World()
    await w.create("scale_deployment", {**SCALE, "namespace": "other"})
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "NamespaceNotAllowed")
    assert not w.cluster.jobs


async def test_node_actions_only_from_trusted_namespaces() -> None:
    w = World()
    await w.create("cordon_node", {"node": "node-1"})
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "NamespaceNotAllowed")
    assert not w.cluster.obj("Node", "", "node-1")["spec"].get("unschedulable")


def test_trusted_namespace_may_act_elsewhere() -> None:
    check_namespace(TRUSTED, ACTIONS["scale_deployment"], ObjectRef("Deployment", NS, "x"),
                    [TRUSTED])
    with pytest.raises(SafetyViolation):
        check_namespace(NS, ACTIONS["drain_node"], ObjectRef("Node", "", "n"), [TRUSTED])


async def test_one_execution_per_target_runs_in_creation_order() -> None:
    w = World()
    await w.create("scale_deployment", SCALE, name="first")
    w.clock.advance(1)
    await w.create("scale_deployment", {**SCALE, "replicas": 6}, name="second")
    await w.step("second")  # adds the audit finalizer
    await w.step("second")
    second = await w.get("second")
    assert wire(second)["reason"] == "TargetBusy" and not w.cluster.jobs
    first = await w.drive("first")
    assert first.phase is Phase.COMPLETED
    second = await w.drive("second")
    assert second.phase is Phase.COMPLETED
    assert w.cluster.obj("Deployment", NS, "web")["spec"]["replicas"] == 6


def test_holder_ignores_terminal_and_other_targets() -> None:
    def ex(name: str, replicas: int, phase: str = "", dep: str = "web") -> Execution:
        spec = {"action": "scale_deployment",
                "parameters": {"scaleDeployment": {"namespace": NS, "deployment": dep,
                                                   "replicas": replicas}}}
        e = Execution(NS, name, uid=name, spec=spec, status=ExecutionStatus(phase=Phase(phase) if phase else None))
        return e

    a, b = ex("a", 1, "Completed"), ex("b", 2, dep="other")
    c = ex("c", 3)
    assert holder_of(c, [a, b, c]) is None


def test_redaction_blanks_secret_data_and_known_values() -> None:
    secret = {"kind": "Secret", "data": {"token": b64("tok-123456")}}
    values = secret_values([secret])
    out = redact({"obj": secret, "msg": "failed with tok-123456 inside"}, values)
    assert out["obj"]["data"] == {"token": REDACTED}
    assert out["msg"] == f"failed with {REDACTED} inside"


async def test_the_audit_finalizer_comes_from_admission_and_is_added_when_missing() -> None:
    w = World()
    await w.create("scale_deployment", SCALE, name="stamped")
    assert FINALIZER in (await w.get("stamped")).finalizers  # kexec-requester adds it
    puts = w.cluster.counter.by_kind["KubernetesExecution"]  # the create
    await w.step("stamped")
    assert w.cluster.counter.by_kind["KubernetesExecution"] == puts  # no PUT for it
    # Without admission (or on an older object) the controller adds it before any status
    # write, so even the fail-closed transition is kept until the audit store has it.
    w.cluster.admission_missing = "mutatingadmissionpolicy 'kexec-requester' is not installed"
    await w.create("scale_deployment", SCALE, name="bare")
    assert FINALIZER not in (await w.get("bare")).finalizers
    puts = w.cluster.counter.by_kind["KubernetesExecution"]
    await w.step("bare")
    bare = await w.get("bare")
    assert (bare.phase, wire(bare)["reason"]) == (Phase.FAILED, "RequesterUnknown")
    # added, then dropped in the same step: the store confirmed the trail at once
    assert w.cluster.counter.by_kind["KubernetesExecution"] == puts + 2
    assert FINALIZER not in bare.finalizers
    assert await w.audit.confirmed_transitions(bare.uid) == bare.status.next_seq
