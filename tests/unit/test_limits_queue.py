"""Limits queue, never fail: slots reserved when leaving Validating, creation order."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.world import NS, TRUSTED, World, deployment, wire

from kexec.application.limits import HOLDS_SLOT, LimitSettings
from kexec.application.reconcile import ReconcileExecution
from kexec.application.settings import Settings
from kexec.domain.execution import FINALIZER
from kexec.domain.phases import Phase


async def settle(w: World, names: list[str], namespace: str = NS, *, rounds: int = 200,
                 most: int = 5) -> int:
    """Reconcile every execution round-robin, run Jobs now and then; return the peak
    number of executions holding a slot at once (asserting it never passes ``most``)."""
    peak = 0
    for i in range(rounds):
        for name in names:
            ex = await w.get(name, namespace)
            if ex.terminal and FINALIZER not in ex.finalizers:
                continue
            await w.reconcile(ex)
            active = [e for e in await w.cluster.list_executions() if e.phase in HOLDS_SLOT]
            peak = max(peak, len(active))
            assert len(active) <= most, [e.name for e in active]
            limits = w.reconcile.limits  # the running count of slots matches the table
            recount: dict[str, int] = {}
            for held in limits._slots.values():
                for limit in held:
                    recount[limit.key] = recount.get(limit.key, 0) + 1
            assert limits._used == recount
        if i % 3 == 2:
            await w.cluster.run_jobs()
        w.clock.advance(1.0)
        done = [await w.get(n, namespace) for n in names]
        if all(e.terminal for e in done):
            break
    return peak


async def create_scales(w: World, n: int, prefix: str = "ex", app: str = "web",
                        *, step: bool = False) -> list[str]:
    """``n`` scale_deployment executions on Deployments of their own, one second apart
    (creation order), each reconciled once when ``step``."""
    names = []
    for i in range(n):
        w.cluster.add(deployment(f"{app}{i}"))
        await w.create("scale_deployment", {"namespace": NS, "deployment": f"{app}{i}",
                                            "replicas": 3}, name=f"{prefix}{i}")
        w.clock.advance(1)
        if step:
            await w.step(f"{prefix}{i}")
        names.append(f"{prefix}{i}")
    return names


def with_settings(w: World, settings: Settings) -> ReconcileExecution:
    """A fresh reconciler (a new process, e.g. after a leader change) with these settings."""
    w.reconcile = ReconcileExecution(w.cluster, w.policy, w.audit, w.clock, settings)
    return w.reconcile


async def test_nine_at_once_in_one_namespace_all_complete_never_more_than_five() -> None:
    w = World()
    names = await create_scales(w, 9)
    # First pass: five get slots, four wait in Pending / Queued naming the limit.
    for name in names:
        await w.step(name)
    waiting = [await w.get(n) for n in names[5:]]
    assert all(e.phase is Phase.PENDING and e.status.reason == "Queued" for e in waiting)
    assert "namespace team-a" in waiting[0].status.message
    assert [("position 1" in e.status.message) for e in waiting] == [True, False, False, False]
    assert "position 4" in waiting[3].status.message
    peak = await settle(w, names)
    assert peak == 5
    assert [(await w.get(n)).phase for n in names] == [Phase.COMPLETED] * 9
    # Creation order: the queued ones started after the first five, in order.
    started = [(await w.get(n)).status.entered(Phase.PREPARING) for n in names]
    assert started[5:] == sorted(started[5:]) and min(started[5:]) > max(started[:5]) - timedelta(0)


async def test_node_limit_one_cordon_at_a_time_and_the_end_wakes_the_next() -> None:
    w = World()
    woken: list[str] = []
    w.reconcile.limits.on_free = lambda ex: woken.extend(w.reconcile.limits.behind(ex))
    names = []
    for i in (1, 2, 3):
        await w.create("cordon_node", {"node": f"node-{i}"}, name=f"c{i}", namespace=TRUSTED)
        names.append(f"c{i}")
        w.clock.advance(1)
    for name in names:
        await w.step(name, TRUSTED)
    second = await w.get("c2", TRUSTED)
    assert (second.phase, second.status.reason) == (Phase.PENDING, "Queued")
    assert "nodes cordoned or draining at once" in second.status.message
    # The first ends: its step frees the slot and names the head of the queue.
    await w.drive("c1", TRUSTED)
    assert woken[0] == f"{TRUSTED}/c2"
    peak = await settle(w, names, TRUSTED, most=1)
    assert peak == 1
    assert [(await w.get(n, TRUSTED)).phase for n in names] == [Phase.COMPLETED] * 3


async def test_a_new_leader_rebuilds_the_slots_before_admitting() -> None:
    w = World()
    await create_scales(w, 3)
    settings = Settings(controller_namespace=TRUSTED, trusted_namespaces=frozenset({TRUSTED}),
                        limits=LimitSettings(per_namespace=2))
    with_settings(w, settings)
    await w.step("ex0")
    await w.step("ex1")
    assert (await w.get("ex1")).phase is Phase.PREPARING
    # Leader change: a fresh process knows nothing until it rebuilds from the phases.
    await with_settings(w, settings).collect_garbage()
    await w.step("ex2")
    ex2 = await w.get("ex2")
    assert (ex2.phase, ex2.status.reason) == (Phase.PENDING, "Queued")
    assert "2 of 2 in use" in wire(ex2)["message"]


def test_limit_knobs_come_from_the_policy_data() -> None:
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parents[2] / "policies" / "data.json").read_text())
    knobs = LimitSettings.from_data(data)
    assert knobs.per_namespace == data["kexec"]["config"]["max_concurrent_per_namespace"] == 5
    assert knobs.nodes_at_once == 1
    assert LimitSettings.from_data({"kexec": {"limits": {
        "max_concurrent_per_action": {"drain_node": 2}}}}).per_action == {"drain_node": 2}


async def test_the_knobs_follow_the_live_policy_data() -> None:
    w = World()
    data = {"kexec": {"config": {"max_concurrent_per_namespace": 1}}}
    settings = Settings(controller_namespace=TRUSTED, trusted_namespaces=frozenset({TRUSTED}),
                        policy_data=lambda: data)
    with_settings(w, settings)
    await create_scales(w, 2, step=True)
    assert (await w.get("ex1")).status.reason == "Queued"
    data = {"kexec": {"config": {"max_concurrent_per_namespace": 2}}}  # a policy reload
    await w.step("ex1")
    assert (await w.get("ex1")).phase is Phase.PREPARING


async def test_queued_executions_are_counted_by_limit_for_the_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from kexec.adapters.metrics import QueuedExecutions

    w = World()
    for name in await create_scales(w, 7, "q", "app"):
        await w.step(name)
    assert w.reconcile.limits.queued_by_limit() == {"namespace": 2, "action": 0, "nodes": 0}
    registry = CollectorRegistry()
    registry.register(QueuedExecutions(w.reconcile.limits.queued_by_limit))
    text = generate_latest(registry).decode()
    assert 'kexec_queued_executions{limit="namespace"} 2.0' in text
    await settle(w, [f"q{i}" for i in range(7)])
    assert w.reconcile.limits.queued_by_limit() == {"namespace": 0, "action": 0, "nodes": 0}
