"""What every reconcile step shares: its dependencies, the hold/fail/commit endings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kexec.application.audit_record import execution_record, transitions
from kexec.application.grants import NEEDS_BINDING, Grants, TargetClaims
from kexec.application.limits import HOLDS_SLOT, Limits
from kexec.application.ports.audit import AuditPort, AuditUnavailable
from kexec.application.ports.clock import Clock
from kexec.application.ports.cluster import ClusterPort
from kexec.application.ports.policy import PolicyPort
from kexec.application.settings import Settings
from kexec.domain.execution import Execution
from kexec.domain.phases import Phase
from kexec.domain.safety import target_of

log = logging.getLogger("kexec.application.reconcile")


@dataclass(frozen=True)
class StepResult:
    """What the caller (the work queue) should do next."""

    requeue_after: float | None = None  # seconds; None = wait for the next event
    wrote: bool = False
    resource_version: str = ""  # of our last write, when wrote


DONE = StepResult()
class StepBase:
    def __init__(
        self,
        cluster: ClusterPort,
        policy: PolicyPort,
        audit: AuditPort,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self.cluster = cluster
        self.policy = policy
        self.audit = audit
        self.clock = clock
        self.settings = settings
        self.grants = Grants(cluster, settings)
        self.claims = TargetClaims()
        self.limits = Limits(settings.limits, settings.policy_data)

    # --- shared by the steps --------------------------------------------------------------

    async def _hold(self, ex: Execution, reason: str, message: str, requeue: float, *,
                    new: Execution | None = None, phase: Phase = Phase.PENDING) -> StepResult:
        """Stay (or enter Pending/Validating) with a reason; write only when it changed."""
        new = new or ex.copy()
        new.hold(reason, message, self.clock.now(), phase)
        if new.status == ex.status:
            return StepResult(requeue_after=requeue)
        result = await self._commit(ex, new, event=ex.status.reason != reason)
        return StepResult(requeue_after=requeue, wrote=result.wrote,
                          resource_version=result.resource_version)

    async def _fail(self, ex: Execution, new: Execution, reason: str, message: str) -> StepResult:
        new.fail(reason, message, self.clock.now())
        return await self._commit(ex, new)

    async def _commit(self, ex: Execution, new: Execution, *, event: bool = True,
                      requeue: float | None = 0) -> StepResult:
        new.status.observed_generation = ex.generation
        target = target_of(new)
        if target is not None:
            new.status.target = target.key  # the Target printer column
        saved = await self.cluster.update_status(new)
        if saved.terminal:
            self.limits.ended(saved)  # frees its slots, wakes the executions queued behind
        elif saved.phase not in HOLDS_SLOT:
            self.limits.release(saved)  # did not get past validation (held, queued)
        if event and saved.phase is not None:
            warning = saved.phase in (Phase.FAILED, Phase.ROLLBACK_READY)
            await self.cluster.emit_event(
                saved, "Warning" if warning else "Normal", saved.status.reason,
                f"{saved.phase.value}: {saved.status.message}".rstrip(": "))
        await self.record_audit(saved)
        if saved.terminal:
            self.claims.release(saved)
        if saved.phase not in NEEDS_BINDING and ex.phase in NEEDS_BINDING | {None, Phase.PENDING}:
            # Left the phases that use the identity: drop its binding when nobody needs it.
            await self.grants.release(saved, await self.cluster.list_executions())
        return StepResult(requeue_after=None if saved.terminal else requeue, wrote=True,
                          resource_version=saved.resource_version)

    async def record_audit(self, ex: Execution) -> bool:
        """Send the execution's summary and transitions; True once the store confirms all."""
        try:
            await self.audit.record(execution_record(ex),
                                    transitions(ex, self.settings.controller_id))
            return True
        except AuditUnavailable as exc:
            log.warning("audit write for %s not confirmed: %s", ex.key, exc)
            return False

