from __future__ import annotations

from kexec.application.ports.cluster import ExecutionStore, NotFound
from kexec.domain.actions import ACTIONS, rollback_parameters
from kexec.domain.execution import Execution


class NoRollback(Exception):
    pass


class CreateRollback:
    """Create the inverse execution from ``status.rollback`` of a finished one."""

    def __init__(self, cluster: ExecutionStore) -> None:
        self.cluster = cluster

    async def __call__(self, namespace: str, name: str) -> Execution:
        ex = await self.cluster.get_execution(namespace, name)
        if ex is None:
            raise NotFound(f"kubernetesexecution {namespace}/{name} not found")
        rollback = ex.status.rollback or {}
        if not rollback.get("available"):
            why = rollback.get("note") or "no rollback recorded"
            raise NoRollback(f"{ex.key} has no rollback available: {why}")
        action = ACTIONS[rollback["action"]]
        undo_name = f"{name[:50]}-rollback"
        existing = await self.cluster.get_execution(namespace, undo_name)
        if existing is not None and existing.spec.get("rollbackOf") == name:
            return existing  # idempotent: one rollback per execution
        spec = {
            "action": action.name,
            "parameters": {action.key: rollback_parameters(action, rollback.get("parameters"))},
            "rollbackOf": name,
            "maxRetries": ex.spec.get("maxRetries", 2),
        }
        labels = {"kubernetesexecution.kubernaut.io/rollback-of": name[:63]}
        return await self.cluster.create_execution(
            Execution(namespace, undo_name, labels=labels, spec=spec))
