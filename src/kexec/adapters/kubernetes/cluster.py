"""ClusterPort on a real Kubernetes API server: the API (api.py), identities
(identities.py), Jobs (jobs.py), and the executions, Events and policy facts here."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from kexec.adapters.kubernetes.api import execution_path
from kexec.adapters.kubernetes.identities import Identities
from kexec.adapters.kubernetes.jobs import Jobs
from kexec.adapters.kubernetes.wire import from_execution, to_execution
from kexec.application.ports.cluster import (
    ClusterError,
)
from kexec.domain.execution import API_VERSION, KIND, Execution, iso
from kexec.domain.resources import (
    Get,
    List,
    ObjectRef,
)

log = logging.getLogger(__name__)


class KubernetesCluster(Identities, Jobs):
    # --- executions ---------------------------------------------------------------------

    async def list_executions(self, *, active: bool = False) -> list[Execution]:
        if self.execution_cache is not None:  # the watch's, converted once per change
            return list(self.execution_cache(active))
        doc = await self.request("GET", execution_path())
        found = [to_execution(o) for o in doc.get("items") or []]
        return [e for e in found if not e.terminal] if active else found

    async def get_execution(self, namespace: str, name: str) -> Execution | None:
        try:
            return to_execution(await self.request("GET", execution_path(namespace, name)))
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise

    async def create_execution(self, execution: Execution) -> Execution:
        body = from_execution(execution)
        body["metadata"].pop("finalizers", None)
        body.pop("status", None)
        return to_execution(await self.request("POST", execution_path(execution.namespace),
                                               body=body))

    async def update_execution(self, execution: Execution) -> Execution:
        body = from_execution(execution)
        body.pop("status", None)
        return to_execution(await self.request(
            "PUT", execution_path(execution.namespace, execution.name), body=body))

    async def update_status(self, execution: Execution) -> Execution:
        return to_execution(await self.request(
            "PUT", execution_path(execution.namespace, execution.name, "status"),
            body=from_execution(execution)))

    async def emit_event(self, execution: Execution, type_: str, reason: str, message: str) -> None:
        await self.event({"apiVersion": API_VERSION, "kind": KIND, "name": execution.name,
                          "namespace": execution.namespace, "uid": execution.uid,
                          "resourceVersion": execution.resource_version},
                         type_, reason, message)

    async def event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event about ``involved`` (best effort: failures are logged)."""
        now = iso(datetime.now(UTC))
        namespace = involved.get("namespace") or self.controller_namespace
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{str(involved.get('name'))[:200]}.{uuid.uuid4().hex[:12]}",
                         "namespace": namespace},
            "involvedObject": involved,
            "reason": (reason or "Update")[:128], "message": message[:1024], "type": type_,
            "source": {"component": "kexec"}, "reportingComponent": "kexec",
            "reportingInstance": "kexec", "action": "Reconcile",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)
        except ClusterError as exc:
            log.warning("event about %s not recorded: %s", involved.get("name"), exc)

    async def cluster_facts(self, namespace: str) -> dict[str, Any]:
        """Nodes and the target namespace's labels, fresh: safety rules decide on them
        (watch-fed caches when the controller gives them, else a list and a GET)."""
        if self.node_cache is not None:
            items = list(self.node_cache())
        else:
            items = await self.read(List("nodes", "Node"))
        ns_fact: dict[str, Any] = {"name": namespace, "labels": {}}
        if namespace:
            obj = (self.namespace_cache(namespace) if self.namespace_cache is not None
                   else await self.read(Get("ns", ObjectRef("Namespace", "", namespace))))
            ns_fact["labels"] = dict(((obj or {}).get("metadata") or {}).get("labels") or {})
        return {"nodes": [_node_fact(n) for n in items], "namespace": ns_fact}

    async def paused(self) -> bool:
        if self.config_cache is not None:  # watched: as fresh as the watch
            cm = self.config_cache()
            return str(((cm or {}).get("data") or {}).get("paused", "")).lower() == "true"
        cached = self._facts.get("paused")
        if cached is None:
            cm = await self.read(Get("cm", ObjectRef("ConfigMap", self.controller_namespace,
                                                 self.config_map)))
            cached = str(((cm or {}).get("data") or {}).get("paused", "")).lower() == "true"
            self._facts.put("paused", cached)
        return bool(cached)


def _node_fact(node: dict[str, Any]) -> dict[str, Any]:
    conditions = (node.get("status") or {}).get("conditions") or []
    labels = (node.get("metadata") or {}).get("labels") or {}
    return {
        "name": node["metadata"]["name"],
        "ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
        "controlPlane": "node-role.kubernetes.io/control-plane" in labels,
    }

