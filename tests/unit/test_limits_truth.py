"""A failure tells the whole truth: every change made before it stopped, and its rollback."""

from __future__ import annotations

from tests.unit.world import NS, TRUSTED, World, wire

from kexec.application.reconcile import job_name
from kexec.application.rollback import CreateRollback
from kexec.domain.phases import Phase


def ops(ex: object) -> list[tuple[str, str]]:
    return [(c["operation"], c["name"]) for c in wire(ex)["execution"]["resourcesAffected"]]  # type: ignore[arg-type]


def pdb(w: World) -> None:
    w.cluster.block_eviction(NS, "web-1")
    w.cluster.add({"kind": "PodDisruptionBudget", "metadata": {"name": "web-pdb", "namespace": NS},
                   "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
                   "status": {"disruptionsAllowed": 0}})
    w.cluster.objects[("Pod", NS, "web-1")]["metadata"]["labels"] = {"app": "web"}


async def test_blocked_drain_uncordons_by_itself_and_records_both_changes() -> None:
    w = World()
    pdb(w)
    await w.create("drain_node", {"node": "node-1"}, namespace=TRUSTED, timeout="60s")
    ex = await w.drive(namespace=TRUSTED, max_steps=80)
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "EvictionBlocked")
    assert not w.cluster.obj("Node", "", "node-1")["spec"].get("unschedulable")
    assert ops(ex) == [("cordon", "node-1"), ("uncordon", "node-1")]
    assert wire(ex)["rollback"]["available"] is False
    assert "uncordonOnFailure" in wire(ex)["rollback"]["note"]


async def test_blocked_drain_without_uncordon_offers_uncordon_in_the_spec_form() -> None:
    w = World()
    pdb(w)
    await w.create("drain_node", {"node": "node-1", "uncordonOnFailure": False},
                   namespace=TRUSTED, timeout="60s")
    ex = await w.drive(namespace=TRUSTED, max_steps=80)
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "EvictionBlocked")
    assert w.cluster.obj("Node", "", "node-1")["spec"]["unschedulable"] is True
    assert ops(ex) == [("cordon", "node-1")]
    assert wire(ex)["rollback"] == {"available": True, "action": "uncordon_node",
                                    "parameters": {"uncordonNode": {"node": "node-1"}}}
    undo = await CreateRollback(w.cluster)(TRUSTED, "ex")
    assert undo.spec["parameters"] == {"uncordonNode": {"node": "node-1"}}
    done = await w.drive(name=undo.name, namespace=TRUSTED)
    assert done.phase is Phase.COMPLETED
    assert w.cluster.obj("Node", "", "node-1")["spec"]["unschedulable"] is False


async def test_successful_drain_reports_the_cordon_and_each_eviction() -> None:
    w = World()
    await w.create("drain_node", {"node": "node-1"}, namespace=TRUSTED)
    ex = await w.drive(namespace=TRUSTED)
    assert ex.phase is Phase.COMPLETED
    assert ops(ex) == [("cordon", "node-1"), ("evict", "web-1")]


async def test_runner_killed_mid_drain_the_controller_reconstructs_the_cordon() -> None:
    w = World()
    await w.create("drain_node", {"node": "node-1"}, namespace=TRUSTED, timeout="60s")
    ex = await w.drive(namespace=TRUSTED, run_jobs=False, max_steps=4)
    assert ex.phase is Phase.EXECUTING
    # The runner cordoned, then its pod was killed: no report.
    w.cluster.objects[("Node", "", "node-1")]["spec"]["unschedulable"] = True
    w.cluster.expire_job(TRUSTED, job_name(ex))
    ex = await w.drive(namespace=TRUSTED, run_jobs=False)
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "DeadlineExceeded")
    assert ops(ex) == [("cordon", "node-1")]
    assert wire(ex)["rollback"]["action"] == "uncordon_node"
    assert wire(ex)["rollback"]["parameters"] == {"uncordonNode": {"node": "node-1"}}


async def test_drain_progress_names_the_blocking_pdb_and_an_event_says_so() -> None:
    w = World()
    pdb(w)
    await w.create("drain_node", {"node": "node-1"}, namespace=TRUSTED, timeout="60s")
    ex = await w.drive(namespace=TRUSTED, run_jobs=False, max_steps=4)
    assert ex.phase is Phase.EXECUTING
    w.clock.advance(5)
    await w.step(namespace=TRUSTED)
    ex = await w.get(namespace=TRUSTED)
    progress = wire(ex)["execution"]["progress"]
    assert progress["podsTotal"] == 1 and progress["podsLeft"] == 1
    assert progress["podsEvicted"] == 0
    assert progress["blocked"] == [{"pod": f"{NS}/web-1", "podDisruptionBudget": f"{NS}/web-pdb"}]
    assert any(e[2] == "EvictionBlocked" and f"{NS}/web-pdb" in e[3] for e in w.cluster.events)
    # At most every few seconds: an immediate second look writes nothing.
    rv = ex.resource_version
    await w.step(namespace=TRUSTED)
    assert (await w.get(namespace=TRUSTED)).resource_version == rv
