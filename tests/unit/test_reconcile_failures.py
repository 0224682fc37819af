"""Every failure path of the phase machine, on the fakes."""

from __future__ import annotations

from tests.unit.world import NS, TRUSTED, World, wire

from kexec.adapters.policy.fake import FakePolicy
from kexec.application.approve import ApproveExecution
from kexec.application.reconcile import job_name
from kexec.application.rollback import CreateRollback
from kexec.domain.phases import Phase

SCALE = {"namespace": NS, "deployment": "web", "replicas": 4}
APPROVAL = FakePolicy.allowing(requires_approval=True).decision


async def test_invalid_parameters_fail_with_the_field() -> None:
    w = World()
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 5000})
    ex = await w.drive()
    assert ex.phase is Phase.FAILED
    assert wire(ex)["reason"] == "InvalidParameters"
    assert "spec.parameters.scaleDeployment.replicas" in wire(ex)["message"]
    assert not w.cluster.jobs


async def test_missing_target_fails() -> None:
    w = World()
    await w.create("scale_deployment", {**SCALE, "deployment": "nope"})
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "TargetNotFound")


async def test_precondition_failed_bare_pod() -> None:
    w = World()
    w.cluster.add({"kind": "Pod", "metadata": {"name": "bare", "namespace": NS}, "spec": {}})
    await w.create("delete_pod", {"namespace": NS, "pod": "bare"})
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "PreconditionFailed")
    assert w.cluster.obj("Pod", NS, "bare") is not None


async def test_policy_denied_names_the_rule_and_creates_no_job() -> None:
    w = World()
    w.policy.set_decision(FakePolicy.denying("replica_bounds", "max 3 replicas").decision)
    await w.create("scale_deployment", SCALE)
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "PolicyDenied")
    assert "replica_bounds" in wire(ex)["message"]
    assert wire(ex)["validation"]["policy"]["allowed"] is False
    assert not w.cluster.jobs


async def test_policy_unavailable_fails_closed_then_continues() -> None:
    w = World()
    w.policy.set_unavailable("connection refused")
    await w.create("scale_deployment", SCALE)
    for _ in range(3):
        await w.step()
    ex = await w.get()
    assert ex.phase is Phase.VALIDATING
    assert wire(ex)["reason"] == "PolicyEngineUnavailable"
    assert not w.cluster.jobs
    w.policy.set_available()
    ex = await w.drive()
    assert ex.phase is Phase.COMPLETED


async def test_approval_required_waits_then_approved() -> None:
    w = World()
    w.policy.set_decision(APPROVAL)
    await w.create("scale_deployment", SCALE)
    for _ in range(4):
        await w.step()
    ex = await w.get()
    assert ex.phase is Phase.WAITING_APPROVAL
    assert not w.cluster.jobs
    await ApproveExecution(w.cluster)(NS, "ex", approver="alice")
    ex = await w.drive()
    assert ex.phase is Phase.COMPLETED
    approved = next(c for c in wire(ex)["conditions"] if c["type"] == "Approved")
    assert approved["status"] == "True" and "alice" in approved["message"]


async def test_approval_times_out() -> None:
    w = World()
    w.policy.set_decision(APPROVAL)
    await w.create("scale_deployment", SCALE)
    await w.step()
    await w.step()
    w.clock.advance(3601)
    await w.step()
    ex = await w.get()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "ApprovalTimeout")
    assert not w.cluster.jobs


async def test_dry_run_rejected_by_admission() -> None:
    w = World()
    w.cluster.reject("Deployment", "images must come from the internal registry")
    await w.create("patch_deployment", {"namespace": NS, "deployment": "web", "patchType": "merge",
                                        "patch": {"spec": {"paused": True}}})
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "DryRunFailed")
    assert wire(ex)["validation"]["dryRun"]["success"] is False
    assert "internal registry" in wire(ex)["validation"]["dryRun"]["errors"][0]
    assert not w.cluster.jobs


async def test_job_failed_is_retried_up_to_max_retries() -> None:
    w = World()
    ex = await w.create("scale_deployment", SCALE, maxRetries=2)
    w.cluster.job_outcomes[job_name(ex)] = [1, 1, 1]
    ex = await w.drive()
    assert (ex.phase, wire(ex)["execution"]["attempts"]) == (Phase.FAILED, 3)
    assert len(w.cluster.jobs) == 1


async def test_job_retry_then_success() -> None:
    w = World()
    ex = await w.create("scale_deployment", SCALE, maxRetries=2)
    w.cluster.job_outcomes[job_name(ex)] = [1]  # then the real runner
    ex = await w.drive()
    assert (ex.phase, wire(ex)["execution"]["attempts"]) == (Phase.COMPLETED, 2)


async def test_deadline_exceeded() -> None:
    w = World()
    ex = await w.create("scale_deployment", SCALE, timeout="30s")
    await w.drive(run_jobs=False, max_steps=4)
    ex = await w.get()
    assert ex.phase is Phase.EXECUTING
    w.cluster.expire_job(NS, job_name(ex))
    ex = await w.drive(run_jobs=False)
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "DeadlineExceeded")


async def test_deadline_exceeded_when_job_never_reports() -> None:
    w = World()
    await w.create("scale_deployment", SCALE, timeout="30s")
    ex = await w.drive(run_jobs=False, max_steps=100)
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "DeadlineExceeded")


async def test_postcondition_failed_goes_rollback_ready_and_rollback_restores() -> None:
    w = World()
    w.cluster.auto_settle = False  # pods never become ready
    await w.create("scale_deployment", SCALE, timeout="60s")
    ex = await w.drive(max_steps=80)
    assert (ex.phase, wire(ex)["reason"]) == (Phase.ROLLBACK_READY, "PostconditionFailed")
    assert w.cluster.obj("Deployment", NS, "web")["spec"]["replicas"] == 4
    w.cluster.auto_settle = True
    undo = await CreateRollback(w.cluster)(NS, "ex")
    assert undo.spec["rollbackOf"] == "ex"
    done = await w.drive(name=undo.name)
    assert done.phase is Phase.COMPLETED
    assert w.cluster.obj("Deployment", NS, "web")["spec"]["replicas"] == 2


async def test_target_changed_between_validation_and_run_is_refused() -> None:
    w = World()
    w.policy.set_decision(APPROVAL)
    await w.create("update_configmap", {"namespace": NS, "configMap": "cfg", "data": {"a": "b"}})
    await w.step()
    await w.step()
    cm = w.cluster.objects[("ConfigMap", NS, "cfg")]
    cm["metadata"]["resourceVersion"] = "999999"  # someone else edited it
    await ApproveExecution(w.cluster)(NS, "ex", approver="bob")
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "TargetChanged")
    assert "a" not in w.cluster.obj("ConfigMap", NS, "cfg")["data"]


async def test_drain_blocked_by_pdb_until_timeout() -> None:
    w = World()
    w.cluster.block_eviction(NS, "web-1")
    await w.create("drain_node", {"node": "node-1"}, namespace=TRUSTED, timeout="60s")
    ex = await w.drive(namespace=TRUSTED, max_steps=80)
    assert ex.phase is Phase.FAILED
    assert wire(ex)["reason"] == "EvictionBlocked"
    assert wire(ex)["execution"]["attempts"] == 1  # permanent: no retry past the deadline
    assert w.cluster.obj("Pod", NS, "web-1") is not None


async def test_kill_switch_pauses_new_executions() -> None:
    w = World()
    w.cluster.kill_switch = True
    await w.create("scale_deployment", SCALE)
    for _ in range(3):
        await w.step()
    ex = await w.get()
    assert wire(ex)["reason"] == "Paused" and not w.cluster.jobs
    w.cluster.kill_switch = False
    assert (await w.drive()).phase is Phase.COMPLETED


async def test_target_cluster_must_be_empty() -> None:
    w = World()
    await w.create("scale_deployment", SCALE, targetCluster="prod-eu")
    ex = await w.drive()
    assert (ex.phase, wire(ex)["reason"]) == (Phase.FAILED, "UnsupportedTargetCluster")
