"""The Metrics port: what the steps report, and its Prometheus adapter (bounded labels)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest
from tests.unit.world import NS, World

from kexec.adapters.fakes.metrics import RecordedMetrics
from kexec.adapters.metrics import ActiveExecutions, PrometheusMetrics, controller_gauges, phases_of
from kexec.application.reconcile import ReconcileExecution
from kexec.application.run_steps import job_name
from kexec.domain.phases import Phase
from kexec.domain.policy import PolicyDecision, Violation


def metered(w: World, metrics: object) -> World:
    w.reconcile = ReconcileExecution(w.cluster, w.policy, w.audit, w.clock, w.settings,
                                     metrics)  # type: ignore[arg-type]
    return w


async def test_a_completed_execution_reports_each_transition_job_and_end() -> None:
    rec = RecordedMetrics()
    w = metered(World(), rec)
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 5})
    ex = await w.drive()
    assert ex.phase is not None and ex.phase.value == "Completed"
    entered = [phase for _, phase, _ in rec.named("transition")]
    assert entered == w.phases(ex)  # one call per recorded transition, none twice
    assert all(action == "scale_deployment" for action, _, _ in rec.named("transition"))
    assert rec.named("execution_finished")[0][:2] == ("scale_deployment", "Completed")
    assert len(rec.named("execution_finished")) == 1
    assert [r for r, _, _ in rec.named("policy_decided")] == ["allow"]
    assert [r for r, _ in rec.named("dry_run")] == ["success"]
    assert len(rec.named("job_created")) == 1
    assert [(a, r) for a, r, _ in rec.named("job_finished")] == [("scale_deployment", "success")]
    assert rec.named("rbac_prepared")
    assert rec.named("audit_written") and all(ok for (ok,) in rec.named("audit_written"))


async def test_a_denial_reports_its_rules_and_the_failure() -> None:
    rec = RecordedMetrics()
    w = metered(World(), rec)
    w.policy.set_decision(PolicyDecision(allowed=False, violations=(
        Violation("max_replicas", "too many"), Violation("max_replicas", "again"))))
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 5})
    ex = await w.drive()
    assert ex.phase is not None and ex.phase.value == "Failed"
    assert rec.named("policy_decided")[0][0] == "deny"
    assert rec.named("policy_decided")[0][2] == ("max_replicas",)
    assert rec.named("execution_finished")[0][:2] == ("scale_deployment", "Failed")
    assert ("scale_deployment", "Failed", "PolicyDenied") in rec.named("transition")
    assert not rec.named("job_created")


async def test_prometheus_exposition_has_the_design_metrics_without_names() -> None:
    registry = CollectorRegistry()
    w = metered(World(), PrometheusMetrics(registry))
    controller_gauges(registry).set(1)
    registry.register(ActiveExecutions(lambda: phases_of(
        [{"status": {"phase": "Executing"}}, {}, {"status": {"phase": "Completed"}}])))
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 5},
                   name="secret-name-xyz")
    await w.drive("secret-name-xyz")
    text = generate_latest(registry).decode()
    for line in (
        'kexec_executions_total{action="scale_deployment",result="Completed"} 1.0',
        'kexec_phase_transitions_total{phase="Completed",reason="Succeeded"} 1.0',
        'kexec_policy_decisions_total{result="allow"} 1.0',
        'kexec_dry_run_validations_total{result="success"} 1.0',
        'kexec_job_creation_seconds_count 1.0',
        'kexec_job_duration_seconds_count{action="scale_deployment",result="success"} 1.0',
        'kexec_execution_duration_seconds_count{action="scale_deployment"} 1.0',
        'kexec_active_executions{phase="Executing"} 1.0',
        'kexec_active_executions{phase="New"} 1.0',
        'kexec_active_executions{phase="Pending"} 0.0',
        'kexec_leader 1.0',
        'kexec_audit_writes_total{result="confirmed"}',
        'kexec_build_info{',
        'kexec_rbac_preparation_seconds_count',
        'kexec_policy_decision_duration_seconds_count 1.0',
        'kexec_dry_run_duration_seconds_count 1.0',
    ):
        assert line in text, line
    assert "secret-name-xyz" not in text
    assert 'phase="Completed"' not in text.split("kexec_active_executions")[-1]


def test_unknown_actions_are_one_label() -> None:
    from kexec.application.step import action_label
    from kexec.domain.execution import Execution

    assert action_label(Execution(NS, "a", spec={"action": "x" * 50})) == "unknown"
    assert action_label(Execution(NS, "a", spec={"action": "drain_node"})) == "drain_node"


async def test_one_readable_event_per_status_write() -> None:
    w = World()
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 5})
    ex = await w.drive()
    events = [(kind, reason, message) for key, kind, reason, message in w.cluster.events
              if key == ex.key]
    # The Job succeeded and the postconditions held at once: one write, one Event.
    assert [reason for _, reason, _ in events] == ["Validated", "JobCreated", "Succeeded"]
    assert all(kind == "Normal" and "\n" not in message for kind, _, message in events)
    assert events[0][2].startswith("New → Preparing: validated")
    assert events[1][2].startswith("Preparing → Executing: Job ex-")
    assert re.fullmatch(r"Executing → Completed: Job ex-\w+ succeeded; done: the "
                        r"postconditions hold", events[-1][2])
    assert [t.phase for t in ex.status.transitions][-2:] == [Phase.VERIFYING, Phase.COMPLETED]


async def test_a_failed_jobs_event_says_it_failed() -> None:
    w = World()
    ex = await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 5},
                        maxRetries=0)
    w.cluster.job_outcomes[job_name(ex)] = [1]
    ex = await w.drive()
    (kind, message), = [(k, m) for key, k, _, m in w.cluster.events if key == ex.key][-1:]
    assert (ex.phase, kind) == (Phase.FAILED, "Warning")
    assert message.startswith("Executing → Failed: failed") and "succeeded" not in message


async def test_postconditions_that_take_time_write_verifying_first() -> None:
    w = World()
    w.cluster.auto_settle = False  # the new pods are not ready yet
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 5},
                   timeout="60s")
    for _ in range(10):
        if (await w.get()).phase is Phase.VERIFYING:
            break
        result = await w.step()
        if (await w.get()).phase is Phase.EXECUTING:
            await w.cluster.run_jobs()
    ex = await w.get()
    assert ex.phase is Phase.VERIFYING and result.requeue_after == 1.0
    assert not all(c.passed for c in ex.status.postconditions)  # recorded in that write
    w.cluster.auto_settle = True
    w.cluster.add(w.cluster.obj("Deployment", NS, "web"))  # the pods become ready
    ex = await w.drive()
    assert ex.phase is Phase.COMPLETED
    events = [(reason, message) for key, _, reason, message in w.cluster.events
              if key == ex.key]
    assert [reason for reason, _ in events] == ["Validated", "JobCreated", "JobSucceeded",
                                                "Succeeded"]
    assert events[2][1].startswith("Executing → Verifying: Job ex-")
    assert events[-1][1] == "Verifying → Completed: done: the postconditions hold"


async def test_a_denial_event_is_a_warning_that_says_why() -> None:
    w = World()
    w.policy.set_decision(PolicyDecision(allowed=False, violations=(
        Violation("max_replicas", "at most 10 replicas"),)))
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 50})
    await w.drive()
    (_, kind, reason, message), = w.cluster.events
    assert (kind, reason) == ("Warning", "PolicyDenied")
    assert message.startswith("New → Failed: failed (denied by max_replicas: ")
    assert "at most 10 replicas" in message
