"""The Metrics port on prometheus-client, plus the controller's own gauges.

Every family is named ``kexec_*`` and labelled only by bounded values: actions (the
registry), phases, reasons, results, policy rules. Registered on an injected registry.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kexec.domain.phases import Phase

# Seconds: sub-second API work up to executions that drain nodes for an hour.
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RUN_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

_TERMINAL = {Phase.COMPLETED.value, Phase.FAILED.value, Phase.ROLLBACK_READY.value}


def _version() -> str:
    try:
        return version("kexec")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class PrometheusMetrics:
    """``Metrics`` for the controller, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.executions = Counter(
            "kexec_executions", "Executions that reached a terminal phase, by action and "
            "result (Completed, Failed, RollbackReady)", ["action", "result"], registry=r)
        self.execution_seconds = Histogram(
            "kexec_execution_duration_seconds", "Creation to terminal phase, by action",
            ["action"], buckets=_RUN_BUCKETS, registry=r)
        self.transitions = Counter(
            "kexec_phase_transitions", "Phase transitions recorded, by phase entered and reason",
            ["phase", "reason"], registry=r)
        self.job_creation = Histogram(
            "kexec_job_creation_seconds", "Entering Preparing to the Job created (binding and "
            "Job create included)", buckets=_STEP_BUCKETS, registry=r)
        self.job_seconds = Histogram(
            "kexec_job_duration_seconds", "The Job's run time (start to completion), by action "
            "and result", ["action", "result"], buckets=_RUN_BUCKETS, registry=r)
        self.dry_runs = Counter(
            "kexec_dry_run_validations", "Server-side dry runs of an execution's plan, by result",
            ["result"], registry=r)
        self.dry_run_seconds = Histogram(
            "kexec_dry_run_duration_seconds", "Duration of one execution's server-side dry run",
            buckets=_STEP_BUCKETS, registry=r)
        self.policy = Counter(
            "kexec_policy_decisions", "Policy evaluations, by result (allow, deny, unavailable)",
            ["result"], registry=r)
        self.policy_seconds = Histogram(
            "kexec_policy_decision_duration_seconds", "Duration of one policy evaluation",
            buckets=_STEP_BUCKETS, registry=r)
        self.denials = Counter(
            "kexec_policy_denials", "Policy denials, by the rule that denied", ["rule"],
            registry=r)
        self.rbac_seconds = Histogram(
            "kexec_rbac_preparation_seconds", "Acquiring an execution's per-action identity "
            "(RoleBinding/ClusterRoleBinding)", buckets=_STEP_BUCKETS, registry=r)
        self.audit_writes = Counter(
            "kexec_audit_writes", "Audit writes from the steps, by result (confirmed, "
            "unconfirmed: buffered in the outbox and re-sent)", ["result"], registry=r)
        self.brake_engaged = Gauge(
            "kexec_storm_brake_engaged", "1 while the storm brake of an action holds its new "
            "executions (Pending/StormBrake)", ["action"], registry=r)
        self.brake_trips = Counter(
            "kexec_storm_brake_trips", "Times the storm brake of an action engaged", ["action"],
            registry=r)

    def transition(self, action: str, phase: str, reason: str) -> None:
        self.transitions.labels(phase, reason).inc()

    def execution_finished(self, action: str, result: str, seconds: float) -> None:
        self.executions.labels(action, result).inc()
        self.execution_seconds.labels(action).observe(seconds)

    def job_created(self, seconds: float) -> None:
        self.job_creation.observe(seconds)

    def job_finished(self, action: str, result: str, seconds: float) -> None:
        self.job_seconds.labels(action, result).observe(seconds)

    def dry_run(self, result: str, seconds: float) -> None:
        self.dry_runs.labels(result).inc()
        self.dry_run_seconds.observe(seconds)

    def policy_decided(self, result: str, seconds: float, denied_rules: Sequence[str]) -> None:
        self.policy.labels(result).inc()
        self.policy_seconds.observe(seconds)
        for rule in denied_rules:
            self.denials.labels(rule).inc()

    def rbac_prepared(self, seconds: float) -> None:
        self.rbac_seconds.observe(seconds)

    def audit_written(self, confirmed: bool) -> None:
        self.audit_writes.labels("confirmed" if confirmed else "unconfirmed").inc()

    def storm_brake(self, action: str, engaged: bool) -> None:
        self.brake_engaged.labels(action).set(1 if engaged else 0)
        if engaged:
            self.brake_trips.labels(action).inc()


class ActiveExecutions(Collector):
    """``kexec_active_executions{phase}``: non-terminal executions in the informer cache,
    counted at scrape time (every phase present, 0 when none)."""

    def __init__(self, phases: Callable[[], Iterable[str]]) -> None:
        self.phases = phases

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = {p.value: 0 for p in Phase if p.value not in _TERMINAL}
        counts["New"] = 0
        for phase in self.phases():
            if phase in counts:
                counts[phase] += 1
        family = GaugeMetricFamily("kexec_active_executions",
                                   "Executions not yet terminal, by phase", labels=["phase"])
        for phase, n in sorted(counts.items()):
            family.add_metric([phase], n)
        yield family


class QueuedExecutions(Collector):
    """``kexec_queued_executions{limit}``: executions held in Pending/Queued, by the kind of
    limit they wait for, counted at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("kexec_queued_executions",
                                   "Executions waiting for a concurrency limit, by limit",
                                   labels=["limit"])
        for limit, n in sorted(self.counts().items()):
            family.add_metric([limit], n)
        yield family


def controller_gauges(registry: CollectorRegistry) -> Gauge:
    """Build info (set once) and the leader gauge (returned: 1 leading, 0 not)."""
    Info("kexec_build", "kexec version and Python runtime", registry=registry).info(
        {"version": _version(), "python": platform.python_version()})
    leader = Gauge("kexec_leader", "1 while this replica holds the Lease and reconciles",
                   registry=registry)
    leader.set(0)
    return leader


def phases_of(objects: Iterable[dict[str, object]]) -> list[str]:
    """The phase of each wire object (``New`` before the first status write)."""
    out = []
    for obj in objects:
        status = obj.get("status")
        phase = status.get("phase") if isinstance(status, dict) else None
        out.append(str(phase) if phase else "New")
    return out
