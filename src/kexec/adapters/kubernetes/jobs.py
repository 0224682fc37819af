"""The Job that carries an action out: its manifest (ownerReference, podFailurePolicy,
restricted pod security), and its state with the runner's report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kexec.adapters.kubernetes.api import KubernetesApi, path_for
from kexec.application.ports.cluster import (
    JobRequest,
    JobState,
)
from kexec.domain.execution import API_VERSION, KIND
from kexec.domain.resources import (
    Get,
    List,
    ObjectRef,
)

JOB_LABEL = "batch.kubernetes.io/job-name"
RUNNER_CONTAINER = "runner"



class Jobs(KubernetesApi):
    # --- Jobs ----------------------------------------------------------------------------

    def job_manifest(self, job: JobRequest) -> dict[str, Any]:
        labels = {"app.kubernetes.io/managed-by": "kexec", **job.labels}
        env = [{"name": k, "value": v} for k, v in sorted(job.env.items())]
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": job.name,
                "namespace": job.namespace,
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": API_VERSION, "kind": KIND, "name": job.execution_name,
                    "uid": job.execution_uid, "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": {
                "backoffLimit": job.backoff_limit,
                "activeDeadlineSeconds": job.active_deadline_seconds,
                "ttlSecondsAfterFinished": job.ttl_seconds_after_finished,
                "podFailurePolicy": {"rules": [
                    # Exit code 2 = permanent failure: no retry.
                    {"action": "FailJob", "onExitCodes": {
                        "containerName": RUNNER_CONTAINER, "operator": "In", "values": [2]}},
                    # Pod disruptions do not count against maxRetries.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        **_avoid_nodes(job.avoid_nodes),
                        "serviceAccountName": job.service_account,
                        "restartPolicy": "Never",
                        "enableServiceLinks": False,
                        "securityContext": {
                            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": RUNNER_CONTAINER,
                            "image": self.image,
                            "command": self.runner_command,
                            "env": env,
                            "terminationMessagePolicy": "File",
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }],
                    },
                },
            },
        }

    async def create_job(self, job: JobRequest) -> None:
        await self._create(path_for("Job", job.namespace), self.job_manifest(job))

    async def get_job(self, namespace: str, name: str) -> JobState | None:
        # The controller's watch-fed Job cache when it has the Job (each change of the Job is
        # an event that wakes the execution anyway); a GET otherwise: just created and not
        # yet seen, or really gone.
        job = self.job_cache(f"{namespace}/{name}") if self.job_cache is not None else None
        if job is None:
            job = await self.read(Get("job", ObjectRef("Job", namespace, name)))
        if job is None:
            return None
        status = job.get("status") or {}
        finished, success, reason, message = False, False, "", ""
        for cond in status.get("conditions") or []:
            if cond.get("status") != "True":
                continue
            if cond.get("type") == "Complete":
                finished, success = True, True
            elif cond.get("type") == "Failed":
                finished, reason, message = True, cond.get("reason", ""), cond.get("message", "")
        state = JobState(name=name, active=int(status.get("active", 0) or 0),
                         succeeded=int(status.get("succeeded", 0) or 0),
                         failed=int(status.get("failed", 0) or 0), finished=finished,
                         success=success, reason=reason, message=message)
        if not finished:
            return state
        pods = self._cached_pods(namespace, name)
        if not pods:  # not watched, or the watch has not shown the pod's end yet
            pods = await self.read(List("pods", "Pod", namespace,
                                        label_selector=f"{JOB_LABEL}={name}"))
        pods.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp", ""))
        pod_name, exit_code, report = "", None, None
        for pod in reversed(pods):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated")
                if cs.get("name") == RUNNER_CONTAINER and term:
                    pod_name = pod["metadata"]["name"]
                    exit_code = term.get("exitCode")
                    try:
                        parsed = json.loads(term.get("message") or "")
                        report = parsed if isinstance(parsed, dict) else None
                    except ValueError:
                        report = {"message": (term.get("message") or "")[:1024]}
                    break
            if pod_name:
                break
        return JobState(name=name, active=state.active, succeeded=state.succeeded,
                        failed=state.failed, finished=True, success=success, reason=reason,
                        message=message, pod_name=pod_name, exit_code=exit_code, report=report)

    def _cached_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The Job's pods from the watch, if one of them shows the runner's end."""
        if self.pod_cache is None:
            return []
        pods = [p for p in self.pod_cache()
                if (p.get("metadata") or {}).get("namespace") == namespace
                and ((p.get("metadata") or {}).get("labels") or {}).get(JOB_LABEL) == job]
        ended = any(cs.get("name") == RUNNER_CONTAINER and (cs.get("state") or {}).get("terminated")
                    for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or [])
        return pods if ended else []


def lean_job(job: dict[str, Any]) -> dict[str, Any]:
    """What ``get_job`` reads of a watched Job (its status), for the controller's cache: the
    pod template with the runner's orders stays on the server."""
    meta = {k: v for k, v in (job.get("metadata") or {}).items() if k != "managedFields"}
    return {"apiVersion": job.get("apiVersion"), "kind": job.get("kind"), "metadata": meta,
            "status": job.get("status") or {}}


def lean_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """What ``get_job`` reads of a watched Job pod: its name, labels, creation time and the
    containers' states (the runner's termination message)."""
    meta = pod.get("metadata") or {}
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "labels", "resourceVersion",
                                              "creationTimestamp") if k in meta},
            "status": {"containerStatuses": [{"name": cs.get("name"), "state": cs.get("state")}
                                             for cs in statuses]}}


def _avoid_nodes(nodes: Sequence[str]) -> dict[str, Any]:
    if not nodes:
        return {}
    term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn",
                                  "values": list(nodes)}]}
    return {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}}


