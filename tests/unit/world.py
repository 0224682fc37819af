"""A small world for use-case tests: the fakes wired as the container wires them."""

from __future__ import annotations

import base64
from typing import Any

from kexec.adapters.audit.memory import InMemoryAudit
from kexec.adapters.fakes import FakeCluster, ManualClock
from kexec.adapters.kubernetes.wire import status_to_wire
from kexec.adapters.policy.fake import FakePolicy
from kexec.application.reconcile import ReconcileExecution, StepResult
from kexec.application.settings import Settings
from kexec.domain.execution import FINALIZER, Execution
from kexec.domain.phases import Phase

NS = "team-a"
TRUSTED = "kubernaut-system"


def wire(ex: Execution) -> dict[str, Any]:
    """The status as the API server (and kubectl) shows it."""
    return status_to_wire(ex.status)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def deployment(name: str, replicas: int = 2, image: str = "nginx:1.0", **labels: str) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


class World:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.cluster = FakeCluster(self.clock)
        self.policy = FakePolicy()
        self.audit = InMemoryAudit()
        self.settings = Settings(controller_namespace=TRUSTED,
                                 trusted_namespaces=frozenset({TRUSTED}))
        self.reconcile = ReconcileExecution(self.cluster, self.policy, self.audit, self.clock,
                                            self.settings)
        c = self.cluster
        c.add({"kind": "Namespace", "metadata": {"name": NS, "labels": {"environment": "dev"}}})
        c.add({"kind": "Namespace", "metadata": {"name": TRUSTED}})
        for i in (1, 2, 3):
            c.add({"kind": "Node", "metadata": {"name": f"node-{i}"}, "spec": {},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        c.add(deployment("web"))
        rs = next(o for (k, _, _), o in c.objects.items() if k == "ReplicaSet")
        c.add({"kind": "Pod", "metadata": {"name": "web-1", "namespace": NS, "ownerReferences": [
            {"kind": "ReplicaSet", "name": rs["metadata"]["name"], "uid": rs["metadata"]["uid"],
             "controller": True}]}, "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running"}})
        c.add({"kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": NS},
               "data": {"mode": "slow", "keep": "yes"}})
        c.add({"kind": "Secret", "metadata": {"name": "creds", "namespace": NS},
               "data": {"password": b64("old-password-value")}})
        c.add({"kind": "Secret", "metadata": {"name": "creds-new", "namespace": NS},
               "data": {"password": b64("new-password-value"), "user": b64("svc-user")}})

    async def create(self, action: str, params: dict[str, Any], *, name: str = "ex",
                     namespace: str = NS, **spec: Any) -> Execution:
        from kexec.domain.actions import ACTIONS

        key = ACTIONS[action].key if action in ACTIONS else "x"
        body = {"action": action, "parameters": {key: params}, **spec}
        return await self.cluster.create_execution(Execution(namespace, name, spec=body))

    async def get(self, name: str = "ex", namespace: str = NS) -> Execution:
        ex = await self.cluster.get_execution(namespace, name)
        assert ex is not None
        return ex

    async def step(self, name: str = "ex", namespace: str = NS) -> StepResult:
        return await self.reconcile(await self.get(name, namespace))

    async def drive(self, name: str = "ex", namespace: str = NS, *, max_steps: int = 60,
                    run_jobs: bool = True) -> Execution:
        """Reconcile as the controller would until terminal and released, or stuck."""
        for _ in range(max_steps):
            ex = await self.cluster.get_execution(namespace, name)
            assert ex is not None
            if ex.terminal and FINALIZER not in ex.finalizers:
                return ex
            result = await self.reconcile(ex)
            if run_jobs and ex.phase is Phase.EXECUTING:
                await self.cluster.run_jobs()
            if result.requeue_after is None and not result.wrote:
                return await self.get(name, namespace)
            if result.requeue_after:
                self.clock.advance(min(result.requeue_after, 5.0))
        return await self.get(name, namespace)

    def phases(self, ex: Execution) -> list[str]:
        return [t["phase"] for t in wire(ex).get("phaseTransitions", [])]
