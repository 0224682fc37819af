"""`kexec approve` and `kexec rollback` use cases: refusals, idempotency, conflict retries."""

from __future__ import annotations

import pytest
from tests.unit.world import NS, World

from kexec.adapters.fakes import FakeCluster
from kexec.adapters.policy.fake import FakePolicy
from kexec.application.approve import ApproveExecution
from kexec.application.ports.cluster import Conflict, NotFound
from kexec.application.rollback import CreateRollback, NoRollback
from kexec.domain.execution import Execution
from kexec.domain.phases import Phase

SCALE = {"namespace": NS, "deployment": "web", "replicas": 4}


class Contended(FakeCluster):
    """Another writer updates the execution just before each of our first ``n`` updates."""

    def __init__(self, world: World, n: int) -> None:
        super().__init__(world.clock)
        self.executions = world.cluster.executions
        self.left = n

    async def update_execution(self, execution: Execution) -> Execution:
        if self.left:
            self.left -= 1
            other = await self.get_execution(execution.namespace, execution.name)
            assert other is not None
            other.labels["touched"] = str(self.left)
            await super().update_execution(other)
        return await super().update_execution(execution)


async def waiting(w: World, name: str = "ex") -> None:
    w.policy.set_decision(FakePolicy.allowing(requires_approval=True).decision)
    await w.create("scale_deployment", SCALE, name=name)
    for _ in range(4):
        await w.step(name)
    assert (await w.get(name)).phase is Phase.WAITING_APPROVAL


async def test_approve_sets_the_gate_and_a_second_approval_writes_nothing() -> None:
    w = World()
    await waiting(w)
    ex = await ApproveExecution(w.cluster)(NS, "ex", approver="alice")
    assert (ex.spec["approvalReceived"], ex.spec["approvedBy"]) == (True, "alice")
    again = await ApproveExecution(w.cluster)(NS, "ex", approver="alice")
    assert again.resource_version == ex.resource_version


async def test_approve_refuses_a_missing_or_finished_execution() -> None:
    w = World()
    with pytest.raises(NotFound, match=f"{NS}/nope"):
        await ApproveExecution(w.cluster)(NS, "nope", approver="alice")
    await w.create("scale_deployment", SCALE)
    assert (await w.drive()).phase is Phase.COMPLETED
    with pytest.raises(ValueError, match="only an execution in WaitingApproval"):
        await ApproveExecution(w.cluster)(NS, "ex", approver="alice")
    with pytest.raises(ValueError, match="username is unknown"):
        await ApproveExecution(w.cluster)(NS, "ex", approver="")


async def test_approve_retries_on_conflict_then_gives_up() -> None:
    w = World()
    await waiting(w)
    ex = await ApproveExecution(Contended(w, 2))(NS, "ex", approver="bob")
    assert ex.spec["approvedBy"] == "bob" and ex.labels["touched"] == "0"
    w = World()  # a fresh target: the first one is held by "ex"
    await waiting(w, "busy")
    with pytest.raises(Conflict, match="kept changing"):
        await ApproveExecution(Contended(w, 5))(NS, "busy", approver="bob")
    assert "approvalReceived" not in (await w.get("busy")).spec


async def test_rollback_refuses_a_missing_execution_or_one_without_a_rollback() -> None:
    w = World()
    with pytest.raises(NotFound, match=f"{NS}/nope"):
        await CreateRollback(w.cluster)(NS, "nope")
    await w.create("scale_deployment", SCALE)
    with pytest.raises(NoRollback, match="no rollback recorded"):
        await CreateRollback(w.cluster)(NS, "ex")


async def test_rollback_creates_the_inverse_execution_once() -> None:
    w = World()
    await w.create("scale_deployment", SCALE, maxRetries=1)
    assert (await w.drive()).phase is Phase.COMPLETED
    undo = await CreateRollback(w.cluster)(NS, "ex")
    assert undo.name == "ex-rollback"
    assert undo.spec == {
        "action": "scale_deployment",
        "parameters": {"scaleDeployment": {"namespace": NS, "deployment": "web", "replicas": 2}},
        "rollbackOf": "ex",
        "maxRetries": 1,
    }
    assert undo.labels == {"kubernetesexecution.kubernaut.io/rollback-of": "ex"}
    again = await CreateRollback(w.cluster)(NS, "ex")
    assert (again.uid, len(w.cluster.executions)) == (undo.uid, 2)
