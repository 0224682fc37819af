"""Storm brake and cooldown: executions of a storming action wait, never fail."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from tests.unit.world import NS, TRUSTED, World, deployment

from kexec.adapters.fakes.metrics import RecordedMetrics
from kexec.application.brake import ReleaseBrake, StormBrake, parse_releases
from kexec.application.limits import LimitSettings
from kexec.application.reconcile import ReconcileExecution
from kexec.application.settings import Settings
from kexec.domain.execution import Execution, iso
from kexec.domain.naming import BRAKE_CONFIGMAP
from kexec.domain.phases import Phase


def braked_world(**knobs: Any) -> tuple[World, RecordedMetrics]:
    w = World()
    metrics = RecordedMetrics()
    limits = LimitSettings(**{"per_namespace": 50, "storm_window_seconds": 600, **knobs})
    settings = Settings(controller_namespace=TRUSTED, trusted_namespaces=frozenset({TRUSTED}),
                        limits=limits, controller_id="c-1")
    w.reconcile = ReconcileExecution(w.cluster, w.policy, w.audit, w.clock, settings, metrics)
    w.cluster.add({"kind": "ConfigMap", "metadata": {"name": BRAKE_CONFIGMAP,
                                                     "namespace": TRUSTED}})
    return w, metrics


async def scale(w: World, i: int, **spec: Any) -> str:
    w.cluster.add(deployment(f"app{i}"))
    await w.create("scale_deployment", {"namespace": NS, "deployment": f"app{i}",
                                        "replicas": 3}, name=f"s{i}", **spec)
    w.clock.advance(1)
    return f"s{i}"


async def test_more_than_n_executions_in_the_window_trip_the_brake_until_it_passes() -> None:
    w, metrics = braked_world(storm_executions=3)
    names = [await scale(w, i) for i in range(5)]
    for name in names:
        await w.step(name)
    assert [(await w.get(n)).phase for n in names[:3]] == [Phase.PREPARING] * 3
    fourth, fifth = await w.get("s3"), await w.get("s4")
    assert (fourth.phase, fourth.status.reason) == (Phase.PENDING, "StormBrake")
    assert "storm brake on scale_deployment: 3 executions started in the last 600s " \
           "(at most 3)" in fourth.status.message
    assert "kexec brake release scale_deployment" in fourth.status.message
    assert "position 1" in fourth.status.message and "position 2" in fifth.status.message
    cond = fourth.status.condition("StormBrake")
    assert cond is not None and cond.status == "True"
    assert (f"{NS}/s3", "Warning", "StormBrake") in [e[:3] for e in w.cluster.events]
    assert metrics.named("storm_brake") == [("scale_deployment", True)]
    held = [a for a in metrics.named("transition") if a[2] == "StormBrake"]
    assert held == [("scale_deployment", "Pending", "StormBrake")] * 2  # for the alert
    assert w.reconcile.limits.queued_by_limit()["brake"] == 2
    # Nothing holds it but time: the head looks again when the oldest start leaves the
    # window (not sooner than its recheck), the second is woken by the head.
    result = await w.step("s3")
    assert result.requeue_after is not None and result.requeue_after <= 10
    assert (await w.step("s4")).requeue_after == 30
    # Other actions are not braked.
    await w.create("rollout_restart", {"namespace": NS, "deployment": "web"}, name="other")
    await w.step("other")
    assert (await w.get("other")).phase is Phase.PREPARING
    # The window passes: the head goes on (its condition says so) and wakes the next.
    woken: list[str] = []
    w.reconcile.limits.on_free = lambda ex: woken.extend(w.reconcile.limits.behind(ex))
    w.clock.advance(600)
    await w.step("s3")
    fourth = await w.get("s3")
    assert fourth.phase is Phase.PREPARING
    cond = fourth.status.condition("StormBrake")
    assert cond is not None and (cond.status, cond.reason) == ("False", "BrakeClear")
    assert woken == [f"{NS}/s4"]
    assert metrics.named("storm_brake")[-1] == ("scale_deployment", False)


async def test_an_operator_release_lets_them_go_and_is_audited() -> None:
    w, _ = braked_world(storm_executions=2)
    names = [await scale(w, i) for i in range(4)]
    for name in names:
        await w.step(name)
    assert (await w.get("s2")).status.reason == "StormBrake"
    release = await ReleaseBrake(w.cluster, TRUSTED)("scale_deployment", "alice", w.clock.now())
    cm = w.cluster.obj("ConfigMap", TRUSTED, BRAKE_CONFIGMAP)
    assert parse_releases(cm) == {"scale_deployment": release}
    w.clock.advance(3)  # past the cached read
    await w.step("s2")
    await w.step("s3")
    assert [(await w.get(n)).phase for n in ("s2", "s3")] == [Phase.PREPARING] * 2
    # Only what started after the release counts: the next one waits again.
    await scale(w, 9)
    await w.step("s9")
    assert (await w.get("s9")).status.reason == "StormBrake"
    record = w.audit.execution(release.audit_uid)
    assert record is not None and record.action == "scale_deployment"
    assert record.reason == "StormBrakeReleased" and "released by alice" in record.message
    assert [t.to_phase for t in w.audit.transitions(release.audit_uid)] == ["BrakeReleased"]


async def test_failed_runs_trip_the_brake_rejections_do_not() -> None:
    w, _ = braked_world(storm_failures=2)
    for i in range(3):  # rejected at validation: the action never ran
        await w.create("scale_deployment", {"namespace": NS, "deployment": f"none{i}",
                                            "replicas": 3}, name=f"r{i}")
        await w.drive(f"r{i}")
    assert (await w.get("r2")).status.reason == "TargetNotFound"
    for i in range(2):  # two runs that failed
        await w.create("scale_deployment", {"namespace": NS, "deployment": "web",
                                            "replicas": 3}, name=f"f{i}")
        ex = await w.get(f"f{i}")
        ex.job_run.job_name = f"job-f{i}"
        ex.fail("BackoffLimitExceeded", "the Job failed", w.clock.now())
        await w.cluster.update_status(ex)
    name = await scale(w, 1)
    await w.step(name)
    ex = await w.get(name)
    assert (ex.phase, ex.status.reason) == (Phase.PENDING, "StormBrake")
    assert "2 failed in the last 600s (2 trip the brake)" in ex.status.message
    w.clock.advance(601)
    await w.step(name)
    assert (await w.get(name)).phase is Phase.PREPARING


async def test_dry_runs_are_neither_braked_nor_counted() -> None:
    w, _ = braked_world(storm_executions=1)
    for i in range(3):
        await scale(w, i, dryRun=True)
        await w.step(f"s{i}")
    assert [(await w.get(f"s{i}")).phase for i in range(3)] == [Phase.COMPLETED] * 3
    await scale(w, 5)
    await w.step("s5")
    assert (await w.get("s5")).phase is Phase.PREPARING


def test_a_burst_cannot_overtake_the_count_while_the_cache_lags() -> None:
    brake = StormBrake(lambda: LimitSettings(storm_executions=2), RecordedMetrics())
    spec = {"action": "rollout_restart",
            "parameters": {"rolloutRestart": {"namespace": NS, "deployment": "web"}}}
    now = World().clock.now()
    burst = [Execution(NS, f"b{i}", uid=f"u{i}", spec=spec, created=now) for i in range(3)]
    # The cache still shows every one of them new (no status): only the in-process table
    # knows the first two went through.
    for ex in burst[:2]:
        assert brake.check(ex, burst, now, None) is None
        brake.started(ex, now)
    assert brake.check(burst[2], burst, now, None) is not None
    brake.forget(burst[0])  # deferred after all: it did not start
    assert brake.check(burst[2], burst, now, None) is None


async def test_a_target_remediated_a_moment_ago_waits_out_the_cooldown() -> None:
    w, _ = braked_world(cooldown_seconds=30, cooldown_per_action={"rollout_restart": 0})
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 3},
                   name="first")
    assert (await w.drive("first")).phase is Phase.COMPLETED
    done = (await w.get("first")).status.entered(Phase.COMPLETED)
    assert done is not None
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 4},
                   name="again")
    result = await w.step("again")
    again = await w.get("again")
    assert (again.phase, again.status.reason) == (Phase.PENDING, "Cooldown")
    until = done + timedelta(seconds=30)
    assert f"waits until {iso(until)}" in again.status.message
    assert "remediated by team-a/first" in again.status.message
    assert result.requeue_after is not None and 0 < result.requeue_after <= 30.5
    w.clock.advance((until - w.clock.now()).total_seconds() + 1)
    assert (await w.drive("again")).phase is Phase.COMPLETED
    # A rollback, another action on the same target (its cooldown 0 here): no wait.
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 2},
                   name="undo", rollbackOf="again")
    assert (await w.drive("undo")).phase is Phase.COMPLETED
    await w.create("rollout_restart", {"namespace": NS, "deployment": "web"}, name="restart")
    await w.step("restart")
    assert (await w.get("restart")).phase is Phase.PREPARING


def test_brake_and_cooldown_knobs_come_from_the_policy_data() -> None:
    from pathlib import Path

    data = json.loads((Path(__file__).parents[2] / "policies" / "data.json").read_text())
    knobs = LimitSettings.from_data(data)
    assert knobs.storm_limits("drain_node") == (20, 5)
    assert (knobs.storm_window_seconds, knobs.cooldown("drain_node")) == (600, 30)
    tuned = LimitSettings.from_data({"kexec": {"limits": {
        "storm_brake": {"executions_per_window": 20,
                        "per_action": {"drain_node": {"executions_per_window": 3}}},
        "cooldown": {"default_seconds": 10, "per_action": {"drain_node": 300}}}}})
    assert tuned.storm_limits("drain_node") == (3, 0)
    assert tuned.storm_limits("scale_deployment") == (20, 0)
    assert (tuned.cooldown("drain_node"), tuned.cooldown("cordon_node")) == (300, 10)
    assert LimitSettings.from_data({}).storm_limits("drain_node") == (0, 0)  # absent: off


def test_malformed_releases_are_ignored() -> None:
    cm = {"data": {"a": "not json", "b": json.dumps({"releasedBy": "x"}),
                   "c": json.dumps({"releasedAt": "2026-01-01T00:00:00Z", "releasedBy": "bob"})}}
    assert list(parse_releases(cm)) == ["c"]
    assert parse_releases(None) == {}


def test_the_brake_gauge_and_trips_counter() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from kexec.adapters.metrics import PrometheusMetrics

    registry = CollectorRegistry()
    m = PrometheusMetrics(registry)
    m.storm_brake("drain_node", True)
    m.storm_brake("drain_node", False)
    m.storm_brake("drain_node", True)
    text = generate_latest(registry).decode()
    assert 'kexec_storm_brake_engaged{action="drain_node"} 1.0' in text
    assert 'kexec_storm_brake_trips_total{action="drain_node"} 2.0' in text


async def test_a_policy_deferral_queues_the_execution_and_it_is_asked_again() -> None:
    from kexec.domain.policy import PolicyDecision

    w, _ = braked_world(storm_executions=5, deferred_recheck_seconds=45)
    w.policy.set_decision(PolicyDecision(
        allowed=True, defer=("maintenance window db-upgrade is in effect",)))
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 3})
    result = await w.step()
    ex = await w.get()
    assert (ex.phase, ex.status.reason) == (Phase.PENDING, "Deferred")
    assert ex.status.message == "deferred by the policy: maintenance window db-upgrade is " \
                                "in effect"
    assert result.requeue_after == 45
    assert (f"{NS}/ex", "Normal", "Deferred") in [e[:3] for e in w.cluster.events]
    # It did not start: it holds no slot and the brake does not count it.
    assert not w.reconcile.limits.holds(ex)
    assert w.reconcile.brake.check(ex, [], w.clock.now(), None) is None
    assert await w.cluster.identity_grants() == []
    # The window ends: asked again, it goes on.
    w.policy.set_decision(PolicyDecision(allowed=True))
    w.clock.advance(45)
    assert (await w.drive()).phase is Phase.COMPLETED


def test_the_decision_document_carries_defer_reasons() -> None:
    from kexec.domain.policy import PolicyDecision

    doc = {"allow": True, "requires_approval": False, "violations": [],
           "defer": ["b window", "a window"]}
    assert PolicyDecision.from_document(doc, "x").defer == ("a window", "b window")
    assert PolicyDecision.from_document({"allow": True}, "x").defer == ()


async def test_released_into_a_full_limit_it_queues_and_the_next_one_looks_again() -> None:
    w, _ = braked_world(storm_executions=2, per_namespace=2)
    names = [await scale(w, i) for i in range(4)]
    for name in names:
        await w.step(name)
    assert [(await w.get(n)).status.reason for n in names[2:]] == ["StormBrake"] * 2
    woken: list[str] = []
    w.reconcile.limits.on_free = lambda ex: woken.extend(w.reconcile.limits.behind(ex))
    w.clock.advance(601)  # the window passes; the two first still hold both slots
    await w.step("s2")
    head = await w.get("s2")
    assert (head.phase, head.status.reason) == (Phase.PENDING, "Queued")
    cond = head.status.condition("StormBrake")
    assert cond is not None and cond.status == "False"
    assert f"{NS}/s3" in woken


async def test_a_new_leader_counts_the_same_and_keeps_the_release() -> None:
    w, metrics = braked_world(storm_executions=2)
    names = [await scale(w, i) for i in range(4)]
    for name in names[:3]:
        await w.step(name)
    assert (await w.get("s2")).status.reason == "StormBrake"
    # Leader change: a fresh process with empty tables counts from the executions.
    settings = w.reconcile.settings
    w.reconcile = ReconcileExecution(w.cluster, w.policy, w.audit, w.clock, settings, metrics)
    await w.reconcile.collect_garbage()
    await w.step("s3")
    assert (await w.get("s3")).status.reason == "StormBrake"
    assert "position 2" in (await w.get("s3")).status.message
    # A release made before the change is in the cluster: the new leader honours it.
    await ReleaseBrake(w.cluster, TRUSTED)("scale_deployment", "alice", w.clock.now())
    w.clock.advance(1)
    w.reconcile = ReconcileExecution(w.cluster, w.policy, w.audit, w.clock, settings, metrics)
    await w.step("s2")
    await w.step("s3")
    assert [(await w.get(n)).phase for n in ("s2", "s3")] == [Phase.PREPARING] * 2
