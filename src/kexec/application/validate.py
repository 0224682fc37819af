"""The validation step: Pending/Validating → WaitingApproval, Preparing, Completed or Failed.

One step, one status write. Nothing in the cluster changes before every
check that needs no cluster access has passed; the only change validation
makes is the per-action binding (removed again unless the execution goes on).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kexec.application.brake import Release, read_releases, record_release
from kexec.application.limits import DEFERRED, QUEUED
from kexec.application.policy_input import build_policy_input
from kexec.application.ports.audit import AuditUnavailable
from kexec.application.ports.cluster import ClusterError, TooManyRequests
from kexec.application.ports.policy import PolicyUnavailable
from kexec.application.snapshot import read_snapshot, snapshot_objects
from kexec.application.step import StepBase, StepResult
from kexec.domain.actions import Action, Context
from kexec.domain.errors import SafetyViolation, ValidationError
from kexec.domain.execution import Execution, iso
from kexec.domain.phases import Phase
from kexec.domain.policy import PolicyDecision
from kexec.domain.resources import Evict, Snapshot
from kexec.domain.safety import (
    check_namespace,
    check_target_cluster,
    holder_of,
    redact,
    requester_permissions,
    secret_values,
)
from kexec.domain.spec import ExecutionSpec, parse_spec
from kexec.domain.status import DryRunResult

log = logging.getLogger("kexec.application.validate")


class ValidationStep(StepBase):
    async def _validate(self, ex: Execution) -> StepResult:
        now = self.clock.now()
        new = ex.copy()
        if await self.cluster.paused():
            return await self._hold(ex, "Paused", "the global kill switch pauses new executions",
                                    self.settings.requeue_paused_seconds)
        try:
            spec, action, params = parse_spec(ex.spec)
        except ValidationError as exc:
            new.reject("Validated", exc.reason, str(exc), now)
            return await self._commit(ex, new)
        # The requester, as the API server authenticated them (admission), never a value
        # the client chose; without it nothing runs.
        missing = await self.cluster.admission_installed()
        if missing or not ex.requester:
            why = missing or ("the execution carries no requester stamp: it was created "
                              "before kexec's admission policies were in force")
            new.reject("Validated", "RequesterUnknown",
                       f"the requester cannot be established: {why}", now)
            return await self._commit(ex, new)
        new.record_requester(ex.requester)
        trusted = ex.namespace in self.settings.trusted
        try:
            check_target_cluster(spec)
            check_namespace(ex.namespace, action, action.target(params), self.settings.trusted)
        except SafetyViolation as exc:
            new.reject("Validated", exc.reason, exc.message, now)
            return await self._commit(ex, new)

        # Not terminal: what the target, the slots and the queues depend on. The ended ones
        # too only when the storm brake or the cooldown counts them for this action.
        live = await self.cluster.list_executions(active=True)
        holder = holder_of(ex, live)
        if holder is not None:
            return await self._hold(ex, "TargetBusy",
                                    f"waiting for {holder.key} which acts on the same target",
                                    self.settings.requeue_busy_seconds, new=new)
        busy = self.claims.claim(action.target(params).key, ex)
        if busy:
            return await self._hold(ex, "TargetBusy",
                                    f"waiting for {busy} which acts on the same target",
                                    self.settings.requeue_busy_seconds, new=new)
        others = (await self.cluster.list_executions()
                  if self._counts_history(ex, action) else live)
        cooldown = self.brake.cooldown(ex, others, now)
        if cooldown is not None:
            return await self._hold(ex, cooldown.reason, cooldown.message,
                                    cooldown.requeue_seconds, new=new)
        if not self.limits.ready:
            self.limits.rebuild(live)  # before admitting anything in this term
        nodes = await self._schedulable_nodes(action)
        braked = self.brake.check(ex, others, now, None)
        if braked is not None:  # tripped: has an operator released it?
            release = (await self._brake_releases(now)).get(action.name)
            braked = self.brake.check(ex, others, now, release) if release else braked
        if braked is not None:
            self.limits.wait(ex, f"brake/{action.name}")
            new.storm_braked(braked.message, now)
            if ex.status.reason != braked.reason:  # once per execution held (the alert
                # KexecStormBrakeTripped counts kexec_phase_transitions{reason="StormBrake"})
                self.metrics.transition(action.name, Phase.PENDING.value, braked.reason)
            return await self._hold(ex, braked.reason, braked.message, braked.requeue_seconds,
                                    new=new)
        # Out of the brake's queue (on, or into a limit's queue): the next ones look again.
        cleared = new.storm_brake_cleared(now)
        # From the brake check to here nothing awaits: a burst cannot overtake the count.
        queued = self.limits.admit(ex, live, nodes, reserve=True)
        if queued is None:
            self.brake.started(ex, now)
        if cleared:
            self.limits.on_free(ex)
        if queued is not None:
            return await self._hold(ex, QUEUED, queued, self.limits.settings.recheck_seconds,
                                    new=new)
        if not trusted:
            # No privilege escalation: kexec does for a requester only what they may do.
            wanted = requester_permissions(action, params)
            answers = await asyncio.gather(*(  # one round trip's wait, not one per verb
                self.cluster.access_allowed(ex.requester, ex.requester_groups, p) for p in wanted))
            denied = [str(p) for p, ok in zip(wanted, answers, strict=True) if not ok]
            if denied:
                new.reject("Validated", "RequesterForbidden",
                           f"{ex.requester} may not do this themselves: missing "
                           + "; ".join(denied), now)
                return await self._commit(ex, new)

        target = action.target(params)
        try:
            identity = await self.grants.acquire(new, action.name, target.namespace)
            snap = await read_snapshot(self.cluster, action.reads(params), identity)
        except ClusterError as exc:
            if exc.retryable:
                raise
            return await self._fail(ex, new, "TargetUnreadable", f"{target}: {exc.message}")
        secrets = secret_values(snapshot_objects(snap))

        checks = action.preconditions(params, snap)
        new.record_preconditions(checks)
        failed = [c for c in checks if not c.passed]
        if failed:
            reason = "TargetNotFound" if failed[0].name == "TargetExists" else "PreconditionFailed"
            msg = redact("; ".join(f"{c.name}: {c.message}" for c in failed), secrets)
            new.reject("Validated", reason, msg, now)
            return await self._commit(ex, new)

        decision = await self._decide(ex, spec, action, params, snap, now)
        if isinstance(decision, str):
            new.policy_unavailable(decision, now)
            return await self._hold(ex, new.status.reason, new.status.message,
                                    self.settings.requeue_policy_unavailable_seconds, new=new,
                                    phase=Phase.VALIDATING)
        if decision.allowed and decision.defer:
            # Not now (a maintenance window): wait in Pending, ask the policy again later;
            # it did not start (its slots and its place in the brake's count go back).
            self.brake.forget(ex)
            result = await self._hold(ex, DEFERRED, "deferred by the policy: "
                                      + "; ".join(decision.defer),
                                      self.limits.settings.deferred_recheck_seconds, new=new)
            self.limits.on_free(ex)  # the slots it had taken for a moment
            return result
        rules = ", ".join(sorted({v.rule for v in decision.violations})) or "policy"
        detail = "; ".join(f"{v.rule}: {v.message}" for v in decision.violations)
        new.policy_decided(decision.to_status(), decision.allowed,
                           detail if not decision.allowed else
                           ("approval required" if decision.requires_approval else ""), now)
        if not decision.allowed:
            return await self._fail(ex, new, "PolicyDenied", f"denied by {rules}: {detail}")

        started = time.monotonic()
        dry = await self._dry_run(ex, action, params, snap, identity, secrets, now)
        self.metrics.dry_run("success" if dry.success else "failure", time.monotonic() - started)
        if not dry.success:
            new.dry_run_failed(dry, now)
            return await self._commit(ex, new)
        progress = action.progress(params, snap)
        if progress is not None:
            new.progress_observed(progress, now)  # the baseline: pods to evict
        new.validated(dry_run=dry, guard=action.guard(params, snap),
                      before=redact(action.summarize(snap.get("target")), secrets),
                      requires_approval=decision.requires_approval, now=now)
        return await self._commit(ex, new)

    def _counts_history(self, ex: Execution, action: Action[Any]) -> bool:
        """Whether the storm brake or the cooldown looks at ended executions for ``ex``
        (both pass a dry run and an action they are off for without looking)."""
        return not ex.spec.get("dryRun") and (
            self.brake.enabled(action.name) or self.limits.settings.cooldown(action.name) > 0)

    async def _brake_releases(self, now: Any) -> dict[str, Release]:
        """The operator's releases (read at most every few seconds); each one seen is
        recorded in the audit trail once."""
        releases = self.brake.cached_releases(now)
        if releases is not None:
            return releases
        try:
            releases = await read_releases(self.cluster, self.settings.controller_namespace)
        except ClusterError as exc:  # the brake stays engaged: fail safe
            log.warning("storm brake releases unreadable: %s", exc)
            releases = {}
        self.brake.remember_releases(now, releases)
        for release in releases.values():
            if self.brake.unrecorded(release):
                try:
                    await record_release(self.audit, release,
                                         self.settings.controller_namespace,
                                         self.settings.controller_id)
                    self.brake.recorded(release)
                except AuditUnavailable as exc:
                    log.warning("audit of %s not confirmed: %s", release.audit_uid, exc)
        return releases

    async def _decide(self, ex: Execution, spec: ExecutionSpec, action: Action[Any], params: Any,
                      snap: Snapshot, now: Any) -> PolicyDecision | str:
        """The policy's decision, or why the engine could not give one."""
        facts = await self.cluster.cluster_facts(action.target(params).namespace)
        doc = build_policy_input(ex, action, params, snap, facts,
                                 self.limits.active_by_namespace(ex.uid), now,
                                 self.settings.trusted)
        try:
            return await self.policy.decide(doc)
        except PolicyUnavailable as exc:
            return str(exc)  # fail closed: nothing proceeds without a decision

    async def _schedulable_nodes(self, action: Action[Any]) -> int:
        if not action.removes_capacity:
            return 0
        facts = await self.cluster.cluster_facts("")
        return sum(1 for n in facts.get("nodes") or []
                   if n.get("ready") and not n.get("unschedulable"))

    async def _dry_run(self, ex: Execution, action: Action[Any], params: Any, snap: Snapshot,
                       identity: Any, secrets: set[str], now: Any) -> DryRunResult:
        """The exact mutations, server-side, as the action's own identity."""
        dry = DryRunResult()
        ctx = Context(ex.name, ex.namespace, ex.uid, iso(now))
        try:
            for mutation in action.plan(params, snap, ctx):
                try:
                    await self.cluster.mutate(mutation, identity=identity, dry_run=True)
                except TooManyRequests as exc:
                    if not isinstance(mutation, Evict):
                        raise
                    # A PodDisruptionBudget at its limit now; the runner waits for it.
                    dry.warnings.append(f"{mutation.ref}: {exc.message}")
        except ClusterError as exc:
            if exc.retryable:
                raise
            dry.success = False
            dry.errors.append(redact(f"{exc.reason}: {exc.message}", secrets))
        return dry

