from __future__ import annotations

from kexec.application.ports.cluster import ClusterPort, Conflict, NotFound
from kexec.domain.execution import Execution


class ApproveExecution:
    """Set spec.approvalReceived (and approvedBy); conflict-retried, idempotent."""

    def __init__(self, cluster: ClusterPort) -> None:
        self.cluster = cluster

    async def __call__(self, namespace: str, name: str, approver: str = "") -> Execution:
        for _ in range(5):
            ex = await self.cluster.get_execution(namespace, name)
            if ex is None:
                raise NotFound(f"kubernetesexecution {namespace}/{name} not found")
            if ex.terminal:
                raise ValueError(f"{ex.key} is {ex.status.get('phase')}: nothing to approve")
            if ex.spec.get("approvalReceived") and ex.spec.get("approvedBy", "") == approver:
                return ex
            ex.spec["approvalReceived"] = True
            if approver:
                ex.spec["approvedBy"] = approver
            try:
                return await self.cluster.update_execution(ex)
            except Conflict:
                continue
        raise Conflict(f"{namespace}/{name} kept changing; try again")
