"""RunAction (the runner's use case) called directly: the outcomes a Job reports when the
world is not what validation saw, and how cluster errors become report reasons."""

from __future__ import annotations

from typing import Any

from tests.unit.world import NS, World

from kexec.adapters.fakes import FakeCluster
from kexec.application.ports.cluster import Conflict, NotFound, TooManyRequests
from kexec.application.run_action import RunAction, RunReport, RunRequest
from kexec.domain.actions import Context
from kexec.domain.resources import Evict, Mutation

CTX = Context("ex", NS, "uid-1")
SCALE = {"namespace": NS, "deployment": "web", "replicas": 3}


def request(action: str, parameters: dict[str, Any], **kw: Any) -> RunRequest:
    return RunRequest(action, parameters, CTX, **kw)


async def run(world: World, req: RunRequest, cluster: FakeCluster | None = None) -> RunReport:
    return await RunAction(cluster or world.cluster, world.clock, world.clock.sleep)(req)


class Failing(FakeCluster):
    """The fake cluster (same objects), except that every write raises ``error``."""

    def __init__(self, world: World, error: Exception) -> None:
        super().__init__(world.clock)
        self.objects = world.cluster.objects
        self.error = error

    async def mutate(self, mutation: Mutation, **kw: Any) -> Any:
        raise self.error


async def test_unknown_action_and_invalid_parameters_are_reported_not_raised() -> None:
    w = World()
    unknown = await run(w, request("reboot_cluster", {}))
    assert (unknown.success, unknown.reason, unknown.message) == (False, "UnknownAction", "reboot_cluster")
    bad = await run(w, request("scale_deployment", {**SCALE, "replicas": 5000}))
    assert (bad.success, bad.reason) == (False, "InvalidParameters")
    assert "spec.parameters.scaleDeployment.replicas" in bad.message
    assert w.cluster.obj("Deployment", NS, "web")["spec"]["replicas"] == 2


async def test_guard_mismatch_refuses_before_any_write() -> None:
    w = World()
    report = await run(w, request("scale_deployment", SCALE, guard={"generation": "7"}))
    assert (report.success, report.reason) == (False, "TargetChanged")
    assert report.message == "metadata.generation is 1, validation saw 7"
    assert w.cluster.obj("Deployment", NS, "web")["spec"]["replicas"] == 2


async def test_a_target_gone_since_validation_fails_its_precondition() -> None:
    w = World()
    report = await run(w, request("scale_deployment", {**SCALE, "deployment": "gone"}))
    assert (report.success, report.reason) == (False, "PreconditionFailed")
    assert report.message == "TargetExists: target not found"


async def test_a_conflict_in_the_write_itself_is_target_changed() -> None:
    w = World()
    cluster = Failing(w, Conflict("deployments web: the object has been modified"))
    report = await run(w, request("scale_deployment", SCALE), cluster)
    assert (report.success, report.reason) == (False, "TargetChanged")
    assert "has been modified" in report.message


async def test_cluster_errors_and_timeouts_keep_their_retryability() -> None:
    w = World()
    throttled = await run(w, request("scale_deployment", SCALE), Failing(w, TooManyRequests("slow down")))
    assert (throttled.reason, throttled.retryable) == ("TooManyRequests", True)
    assert throttled.to_dict()["retryable"] is True
    gone = await run(w, request("scale_deployment", SCALE), Failing(w, NotFound("gone")))
    assert (gone.reason, gone.retryable) == ("NotFound", False)
    slow = await run(w, request("scale_deployment", SCALE), Failing(w, TimeoutError("read timed out")))
    assert (slow.success, slow.reason, slow.message, slow.retryable) == (False, "Timeout", "read timed out", True)


async def test_drain_treats_a_pod_already_gone_as_evicted() -> None:
    w = World()

    class Vanishing(FakeCluster):
        async def mutate(self, mutation: Mutation, **kw: Any) -> Any:
            if isinstance(mutation, Evict):
                del self.objects[("Pod", NS, mutation.ref.name)]  # gone before the eviction
            return await super().mutate(mutation, **kw)

    cluster = Vanishing(w.clock)
    cluster.objects = w.cluster.objects
    report = await run(w, request("drain_node", {"node": "node-1"}), cluster)
    assert (report.success, report.reason) == (True, "Succeeded")
    assert w.cluster.obj("Node", "", "node-1")["spec"]["unschedulable"] is True
    assert w.cluster.obj("Pod", NS, "web-1") is None


async def test_drain_waits_for_the_pods_of_a_terminating_namespace_instead_of_evicting_them() -> None:
    """NamespaceLifecycle refuses evictions in a namespace being deleted; like kubectl drain,
    its pods (with or without a controller) are left to the namespace controller and waited
    for until they are being deleted -- not evicted, not reported as evicted."""
    w = World()
    w.cluster.add({"kind": "Namespace", "metadata": {"name": "old"}, "status": {"phase": "Terminating"}})
    w.cluster.add({"kind": "Pod", "metadata": {"name": "bare", "namespace": "old"},
                   "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}})
    evicted: list[str] = []

    class NamespaceLifecycle(FakeCluster):
        reads = 0

        async def read(self, r: Any, *args: Any, **kw: Any) -> Any:
            self.reads += 1
            if self.reads == 8:  # the namespace controller gets to the pod
                self.objects[("Pod", "old", "bare")]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            return await super().read(r, *args, **kw)

        async def mutate(self, mutation: Mutation, **kw: Any) -> Any:
            if isinstance(mutation, Evict):
                assert mutation.ref.namespace != "old", "evicted in a terminating namespace"
                evicted.append(mutation.ref.name)
            return await super().mutate(mutation, **kw)

    cluster = NamespaceLifecycle(w.clock)
    cluster.objects = w.cluster.objects
    report = await run(w, request("drain_node", {"node": "node-1"}), cluster)
    assert (report.success, report.reason) == (True, "Succeeded")
    assert evicted == ["web-1"]
    assert {(c["kind"], c.get("name"), c["operation"]) for c in report.changes} == {
        ("Node", "node-1", "cordon"), ("Pod", "web-1", "evict")}
    assert cluster.reads >= 8  # it waited for the namespace controller


async def test_drain_blocked_by_a_disruption_budget_gives_up_at_the_deadline() -> None:
    w = World()
    w.cluster.block_eviction(NS, "web-1")
    start = w.clock.now()
    report = await run(w, request("drain_node", {"node": "node-1"}, deadline_seconds=30))
    assert (report.success, report.reason, report.retryable) == (False, "EvictionBlocked", False)
    assert "disruption budget" in report.message
    assert 30 <= (w.clock.now() - start).total_seconds() < 40
    assert w.cluster.obj("Pod", NS, "web-1") is not None


async def test_drain_whose_pods_never_leave_times_out_with_its_rollback() -> None:
    w = World()

    class Ignoring(FakeCluster):
        async def mutate(self, mutation: Mutation, **kw: Any) -> Any:
            if isinstance(mutation, Evict):
                return None  # accepted, but the pod stays (e.g. a stuck finalizer)
            return await super().mutate(mutation, **kw)

    cluster = Ignoring(w.clock)
    cluster.objects = w.cluster.objects
    params = {"node": "node-1", "uncordonOnFailure": False}
    report = await run(w, request("drain_node", params, deadline_seconds=20), cluster)
    assert (report.success, report.reason) == (False, "Timeout")
    assert report.message == "NoEvictablePodsLeft: still running: team-a/web-1"
    assert report.changes[0]["after"] == {"unschedulable": True}
    assert report.rollback == {"available": True, "action": "uncordon_node",
                               "parameters": {"uncordonNode": {"node": "node-1"}}}
    assert w.cluster.obj("Node", "", "node-1")["spec"]["unschedulable"] is True
