from __future__ import annotations

from kexec.application.ports.cluster import Conflict, ExecutionStore, NotFound
from kexec.domain.execution import Execution
from kexec.domain.phases import Phase


class ApproveExecution:
    """Approve as the caller's own identity: spec.approvalReceived + spec.approvedBy.

    An approval counts only when given after validation, so an approval already present
    (e.g. set at creation) is withdrawn and given again. Conflict-retried.
    """

    def __init__(self, cluster: ExecutionStore) -> None:
        self.cluster = cluster

    async def __call__(self, namespace: str, name: str, approver: str) -> Execution:
        if not approver:
            raise ValueError("the approver's username is unknown")
        for _ in range(5):
            ex = await self.cluster.get_execution(namespace, name)
            if ex is None:
                raise NotFound(f"kubernetesexecution {namespace}/{name} not found")
            if ex.phase is not Phase.WAITING_APPROVAL:
                raise ValueError(f"{ex.key} is {ex.phase or 'new'}: only an execution in "
                                 "WaitingApproval can be approved")
            validated = ex.status.validation.generation if ex.status.validation else 0
            mine = ex.spec.get("approvalReceived") and ex.spec.get("approvedBy") == approver
            if mine and ex.generation > validated:
                return ex  # already given, after validation: nothing to write
            try:
                if mine:  # present since before validation: it does not count, give it anew
                    ex.spec["approvalReceived"] = False
                    ex = await self.cluster.update_execution(ex)
                ex.spec["approvalReceived"] = True
                ex.spec["approvedBy"] = approver
                return await self.cluster.update_execution(ex)
            except Conflict:
                continue
        raise Conflict(f"{namespace}/{name} kept changing; try again")
