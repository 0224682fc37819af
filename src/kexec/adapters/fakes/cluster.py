"""An in-memory Kubernetes API that behaves like the real one where it matters.

resourceVersion and 409 conflicts, 404, 403 per identity from the actions'
RBAC rules, server-side dry run that validates but does not persist,
admission rejections on demand, PodDisruptionBudgets that block evictions,
a tiny deployment controller (status, ReplicaSets and revisions), and Jobs
whose pods run a handler — by default the real RunAction use case under the
Job's ServiceAccount — or whose outcomes the test dictates.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from kexec.adapters.fakes.api import FakeApi, FakeJob
from kexec.adapters.fakes.objects import rbac_allows
from kexec.adapters.kubernetes.wire import status_from_wire, status_to_wire
from kexec.application.ports.cluster import (
    AlreadyExists,
    Conflict,
    Identity,
    Invalid,
    JobRequest,
    JobState,
    NotFound,
)
from kexec.application.run_action import (
    EXIT_PERMANENT,
    RunAction,
    RunReport,
    SpecMismatch,
    request_from_env,
)
from kexec.domain.actions import ACTIONS
from kexec.domain.execution import (
    API_VERSION,
    FINALIZER,
    KIND,
    REQUESTED_BY,
    REQUESTED_BY_GROUPS,
    Execution,
)
from kexec.domain.resources import (
    Mutation,
    Read,
)
from kexec.domain.safety import Permission
from kexec.domain.spec import APPROVAL_FIELDS


class FakeCluster(FakeApi):
    # --- identities (RBAC from the actions' rules) --------------------------------------

    async def ensure_identity(self, identity: Identity, action: str, target_namespace: str) -> None:
        if (identity.namespace, identity.service_account) not in self.service_accounts:
            self._write("ServiceAccount")
            self.service_accounts.add((identity.namespace, identity.service_account))
        binding = (identity.username, action, target_namespace)
        if binding not in self.bindings:
            self._write("RoleBinding")
            self.bindings.add(binding)
            for rule in ACTIONS[action].rules:
                self.grants.setdefault(identity.username, []).append((target_namespace, rule))
            # The runner also reads its own pod's namespace facts; nothing else.

    async def revoke_identity(self, identity: Identity, action: str, target_namespace: str) -> None:
        binding = (identity.username, action, target_namespace)
        if binding in self.bindings:
            self._write("RoleBinding")
            self.bindings.discard(binding)
            rules = set(ACTIONS[action].rules)
            self.grants[identity.username] = [
                (scope, rule) for scope, rule in self.grants.get(identity.username, [])
                if not (scope == target_namespace and rule in rules)]

    async def identity_grants(self) -> list[tuple[Identity, str, str]]:
        out = []
        for username, action, target_namespace in sorted(self.bindings):
            _, _, namespace, name = username.split(":", 3)
            out.append((Identity(namespace, name), action, target_namespace))
        return out

    async def access_allowed(self, user: str, groups: tuple[str, ...],
                             permission: Permission) -> bool:
        if self.user_rules is None:
            return True
        p = permission
        resource = p.resource + (f"/{p.subresource}" if p.subresource else "")
        return rbac_allows(self.user_rules.get(user, []), p.group, resource, p.verb,
                           p.namespace, p.name)

    async def admission_installed(self) -> str:
        return self.admission_missing

    def view(self, identity: Identity) -> _IdentityView:
        """The cluster as one identity sees it (what the runner in a Job pod gets)."""
        return _IdentityView(self, identity)

    # --- Jobs ----------------------------------------------------------------------------

    async def create_job(self, job: JobRequest) -> None:
        key = (job.namespace, job.name)
        if key in self.jobs:
            return
        self._write("Job")
        self.jobs[key] = FakeJob(job, active=1)
        self.add({"apiVersion": "batch/v1", "kind": "Job", "metadata": {
            "name": job.name, "namespace": job.namespace,
            "labels": {"app.kubernetes.io/managed-by": "kexec", **job.labels},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND, "name": job.execution_name,
                                 "uid": job.execution_uid, "controller": True}]},
            "spec": {"backoffLimit": job.backoff_limit,
                     "activeDeadlineSeconds": job.active_deadline_seconds}})

    async def get_job(self, namespace: str, name: str) -> JobState | None:
        job = self.jobs.get((namespace, name))
        if job is None:
            return None
        return JobState(
            name=name, active=job.active, succeeded=job.succeeded, failed=job.failed,
            finished=job.finished, success=job.success, reason=job.reason,
            message=str((job.report or {}).get("message", "")),
            # like the real adapter: the pod and its report are read once the Job finished
            pod_name=f"{name}-pod-{job.succeeded + job.failed}" if job.finished else "",
            exit_code=job.exit_code, report=copy.deepcopy(job.report),
        )

    async def run_jobs(self) -> int:
        """Run every unfinished Job to its end, like the Job controller would. Returns count."""
        ran = 0
        for job in list(self.jobs.values()):
            if job.finished:
                continue
            ran += 1
            while not job.finished:
                await self._run_attempt(job)
        return ran

    async def _run_attempt(self, job: FakeJob) -> None:
        forced = self.job_outcomes.get(job.request.name)
        if forced:
            code = forced.pop(0)
            report = {"success": code == 0, "reason": "Forced", "message": f"exit {code}"}
        else:
            run = await (self.job_handler or run_in_pod)(job.request, self)
            code, report = run.exit_code, run.to_dict()
        job.report, job.exit_code = report, code
        if code == 0:
            job.succeeded += 1
            job.active, job.finished, job.success, job.reason = 0, True, True, "Completed"
            return
        job.failed += 1
        if code == EXIT_PERMANENT:
            job.active, job.finished, job.reason = 0, True, "PodFailurePolicy"
        elif job.failed > job.request.backoff_limit:
            job.active, job.finished, job.reason = 0, True, "BackoffLimitExceeded"

    def expire_job(self, namespace: str, name: str) -> None:
        """activeDeadlineSeconds passed: the Job controller fails the Job."""
        job = self.jobs[(namespace, name)]
        job.active, job.finished, job.success, job.reason = 0, True, False, "DeadlineExceeded"
        job.report = {"success": False, "reason": "DeadlineExceeded",
                      "message": "Job was active longer than specified deadline"}

    # --- executions ----------------------------------------------------------------------

    async def list_executions(self, *, active: bool = False) -> list[Execution]:
        return [e.copy() for e in self.executions.values() if not (active and e.terminal)]

    async def get_execution(self, namespace: str, name: str) -> Execution | None:
        found = self.executions.get((namespace, name))
        return found.copy() if found else None

    async def create_execution(self, execution: Execution) -> Execution:
        key = (execution.namespace, execution.name)
        if key in self.executions:
            raise AlreadyExists(f"kubernetesexecution {execution.key} already exists")
        new = execution.copy()
        new.annotations[REQUESTED_BY] = self.acting_user
        new.annotations[REQUESTED_BY_GROUPS] = ",".join(self.acting_groups)
        if not self.admission_missing and FINALIZER not in new.finalizers:
            new.finalizers.append(FINALIZER)  # kexec-requester adds the audit finalizer
        new.uid = new.uid or str(uuid.uuid4())
        new.resource_version = str(next(self._rv))
        new.created = self.clock.now()
        self._write("KubernetesExecution")
        self.executions[key] = new
        return new.copy()

    async def update_execution(self, execution: Execution) -> Execution:
        stored = self._check_rv(execution)
        if self.immutable_spec and _pinned(execution.spec) != _pinned(stored.spec):
            raise Invalid("spec: Invalid value: only spec.approvalReceived and spec.approvedBy "
                          "may change after creation")
        if execution.annotations.get(REQUESTED_BY) != stored.annotations.get(REQUESTED_BY):
            raise Invalid(f"metadata.annotations[{REQUESTED_BY}]: is set by admission only")
        if execution.spec != stored.spec:
            stored.generation += 1
        stored.spec = copy.deepcopy(execution.spec)
        stored.finalizers = list(execution.finalizers)
        stored.labels, stored.annotations = dict(execution.labels), dict(execution.annotations)
        stored.resource_version = str(next(self._rv))
        self._write("KubernetesExecution")
        if stored.deleting and not stored.finalizers:
            del self.executions[(stored.namespace, stored.name)]
        return stored.copy()

    async def update_status(self, execution: Execution) -> Execution:
        stored = self._check_rv(execution)
        # Through the wire form, as the API server stores it (redacted, typed again).
        stored.status = status_from_wire(status_to_wire(execution.status))
        stored.resource_version = str(next(self._rv))
        self._write("KubernetesExecution/status")
        return stored.copy()

    async def delete_execution(self, namespace: str, name: str) -> None:
        stored = self.executions[(namespace, name)]
        if stored.finalizers:
            stored.deleting = True
            stored.resource_version = str(next(self._rv))
        else:
            del self.executions[(namespace, name)]

    def _check_rv(self, execution: Execution) -> Execution:
        stored = self.executions.get((execution.namespace, execution.name))
        if stored is None:
            raise NotFound(f"kubernetesexecution {execution.key} not found")
        if execution.resource_version != stored.resource_version:
            raise Conflict(f"kubernetesexecution {execution.key}: the object has been modified")
        return stored

    async def emit_event(self, execution: Execution, type_: str, reason: str, message: str) -> None:
        self._write("Event")
        self.events.append((execution.key, type_, reason, message))

    async def cluster_facts(self, namespace: str) -> dict[str, Any]:
        nodes = []
        for (kind, _, name), node in sorted(self.objects.items()):
            if kind != "Node":
                continue
            conditions = (node.get("status") or {}).get("conditions") or []
            labels = node["metadata"].get("labels") or {}
            nodes.append({
                "name": name,
                "ready": any(c.get("type") == "Ready" and c.get("status") == "True"
                             for c in conditions),
                "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
                "controlPlane": "node-role.kubernetes.io/control-plane" in labels,
            })
        ns = self.objects.get(("Namespace", "", namespace)) if namespace else None
        labels = (ns or {}).get("metadata", {}).get("labels") or {}
        return {"nodes": nodes, "namespace": {"name": namespace, "labels": dict(labels)}}

    async def paused(self) -> bool:
        return self.kill_switch


def _pinned(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in APPROVAL_FIELDS}


class _IdentityView:
    """Reads and writes as one identity; everything else passes through."""

    def __init__(self, cluster: FakeCluster, identity: Identity) -> None:
        self._cluster = cluster
        self._identity = identity

    async def read(self, read: Read, identity: Identity | None = None) -> Any:
        return await self._cluster.read(read, self._identity)

    async def mutate(
        self, mutation: Mutation, *, identity: Identity | None = None, dry_run: bool = False
    ) -> Any:
        return await self._cluster.mutate(mutation, identity=self._identity, dry_run=dry_run)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cluster, name)


async def run_in_pod(job: JobRequest, cluster: FakeCluster) -> RunReport:
    """What the Job's pod does: the real RunAction, as the Job's ServiceAccount."""
    identity = Identity(job.namespace, job.service_account)
    clock = cluster.clock

    async def sleep(seconds: float) -> None:
        advance = getattr(clock, "advance", None)
        if advance is not None:
            advance(seconds)

    try:
        request = request_from_env(job.env)
    except SpecMismatch as exc:
        return RunReport(False, reason="SpecChanged", message=str(exc))
    return await RunAction(cluster.view(identity), clock, sleep)(request)


