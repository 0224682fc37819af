"""The composition root wires the real graph; tests override it with fakes."""

from __future__ import annotations

from dependency_injector import providers
from tests.unit.world import NS, World

from kexec.adapters.audit.memory import InMemoryAudit
from kexec.adapters.policy.fake import FakePolicy
from kexec.domain.phases import Phase
from kexec.entrypoints.container import build_container, start_resources, stop_resources


async def test_container_with_fakes_runs_an_execution_to_completed() -> None:
    world = World()  # seeds a fake cluster with a Deployment
    container = build_container(namespace="kubernaut-system")
    # Override before resources start: no kubeconfig, no database needed.
    container.api.override(providers.Object(None))
    container.audit_pool.override(providers.Object(None))
    container.cluster.override(providers.Object(world.cluster))
    container.clock.override(providers.Object(world.clock))
    audit = InMemoryAudit()
    container.audit.override(providers.Object(audit))
    container.policy.override(providers.Object(FakePolicy()))
    await start_resources(container)
    try:
        reconcile = container.reconcile()
        assert reconcile.cluster is world.cluster
        world.reconcile = reconcile
        await world.create("scale_deployment", {"namespace": NS, "deployment": "web",
                                                "replicas": 3})
        ex = await world.drive()
        assert ex.phase is Phase.COMPLETED
        assert world.cluster.obj("Deployment", NS, "web")["spec"]["replicas"] == 3
        assert len(audit.transitions(ex.uid)) == 6
    finally:
        await stop_resources(container)
