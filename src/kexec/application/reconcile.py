"""ReconcileExecution: level-triggered, one idempotent step per call.

Each call reads the execution as given, decides the single next step from
its phase, and ends in one aggregate method and one commit: a status write
guarded by resourceVersion (a stale object gets Conflict and changes
nothing), an Event and an audit record. Calling it again with the same
object makes no second change: Job names are deterministic, ensure-operations
are idempotent, and the status write is guarded.

The steps live in ``validate.py`` (Pending/Validating) and ``run_steps.py``
(approval, Job, verification); `step.py` holds what they share.
"""

from __future__ import annotations

from kexec.application.grants import NEEDS_BINDING
from kexec.application.run_steps import RunSteps, job_name
from kexec.application.step import DONE, StepResult
from kexec.application.validate import ValidationStep
from kexec.domain.execution import FINALIZER, Execution
from kexec.domain.phases import Phase

__all__ = ["DONE", "PINNED", "ReconcileExecution", "StepResult", "job_name"]

# After validation, what runs must be what was checked (the spec hash).
PINNED = frozenset({Phase.WAITING_APPROVAL, Phase.PREPARING, Phase.VERIFYING})


class ReconcileExecution(ValidationStep, RunSteps):
    async def __call__(self, ex: Execution) -> StepResult:
        if ex.deleting:
            self.claims.release(ex)
            self.limits.ended(ex)
            if ex.phase is None or ex.phase in NEEDS_BINDING:  # deleted before it ended
                await self.grants.release(ex, await self.cluster.list_executions(active=True))
            return await self._release(ex)
        if ex.terminal:
            return await self._release(ex) if FINALIZER in ex.finalizers else DONE
        if FINALIZER not in ex.finalizers:
            # Deletion waits until the audit trail holds every transition. Bookkeeping,
            # not a step: go on with the fresh object it returns.
            ex = ex.copy()
            ex.finalizers.append(FINALIZER)
            ex = await self.cluster.update_execution(ex)
        phase = ex.phase
        if phase in PINNED and not ex.spec_matches_validation():
            new = ex.copy()
            new.fail("SpecChanged", "the spec differs from the one that was validated; "
                     "nothing more is done (create a new execution instead)", self.clock.now())
            return await self._commit(ex, new)
        if phase in (None, Phase.PENDING, Phase.VALIDATING):
            return await self._validate(ex)
        if phase is Phase.WAITING_APPROVAL:
            return await self._await_approval(ex)
        if phase is Phase.PREPARING:
            return await self._launch(ex)
        if phase is Phase.EXECUTING:
            return await self._watch_job(ex)
        if phase is Phase.VERIFYING:
            return await self._verify(ex)
        return DONE

    async def collect_garbage(self) -> int:
        """A new term: rebuild the limits' slots from the executions' phases (before
        anything is admitted), and remove bindings no execution needs (a crashed
        leader's leftovers)."""
        executions = await self.cluster.list_executions()
        self.limits.rebuild(executions)
        return await self.grants.collect_garbage(executions)

