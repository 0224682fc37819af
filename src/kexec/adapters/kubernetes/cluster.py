"""ClusterPort on a real Kubernetes API server, through kubernetes-asyncio.

One shared ApiClient; raw JSON in and out (objects stay plain dicts, as the
domain expects); a client-side timeout on every call; impersonation of the
per-action ServiceAccount for reads and server-side dry runs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import Counter

from kexec.adapters.kubernetes.errors import classify
from kexec.adapters.kubernetes.rbac import ADMISSION_POLICY_NAMES
from kexec.adapters.kubernetes.wire import from_execution, to_execution
from kexec.application.ports.cluster import (
    AlreadyExists,
    ClusterError,
    Identity,
    JobRequest,
    JobState,
    NotFound,
    Unavailable,
)
from kexec.domain.actions import ACTIONS
from kexec.domain.execution import API_VERSION, GROUP, KIND, PLURAL, VERSION, Execution, iso
from kexec.domain.resources import (
    KINDS,
    Create,
    Delete,
    Evict,
    Get,
    List,
    Mutation,
    ObjectRef,
    Patch,
    Read,
    Replace,
)
from kexec.domain.safety import Permission
from kexec.runtime.backoff import Backoff, poll

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}
JOB_LABEL = "batch.kubernetes.io/job-name"
MANAGED_BY = "app.kubernetes.io/managed-by=kexec"
ADMISSION_API = "/apis/admissionregistration.k8s.io/v1"
ADMISSION_OBJECTS = tuple(
    (resource, name)
    for name, kinds in zip(ADMISSION_POLICY_NAMES, (("mutatingadmissionpolicies",
                                                     "mutatingadmissionpolicybindings"),
                                                    ("validatingadmissionpolicies",
                                                     "validatingadmissionpolicybindings")),
                           strict=True)
    for resource in kinds
)
RUNNER_CONTAINER = "runner"


def action_role(action: str) -> str:
    return "kexec-action-" + action.replace("_", "-")


def path_for(kind: str, namespace: str = "", name: str = "", subresource: str = "") -> str:
    info = KINDS[kind]
    base = f"/apis/{info.group}/{info.version}" if info.group else f"/api/{info.version}"
    if info.namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{info.plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


def execution_path(namespace: str = "", name: str = "", subresource: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{PLURAL}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


class _TTL:
    """A tiny time-based cache for facts read on every validation (nodes, namespaces)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._data: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        hit = self._data.get(key)
        if hit and time.monotonic() - hit[0] < self.seconds:
            return hit[1]
        return None

    def put(self, key: str, value: Any) -> None:
        self._data[key] = (time.monotonic(), value)


class KubernetesCluster:
    def __init__(
        self,
        api: ApiClient,
        *,
        controller_namespace: str = "kubernaut-system",
        image: str = "kexec:latest",
        runner_command: Sequence[str] = ("kexec", "runner"),
        request_timeout: float = 10.0,
        config_map: str = "kexec-config",
        field_manager: str = "kexec",
        execution_cache: Callable[[], Iterable[dict[str, Any]]] | None = None,
        node_cache: Callable[[], Iterable[dict[str, Any]]] | None = None,
        facts_ttl: float = 2.0,
        registry: Any = None,
    ) -> None:
        self.api = api
        self.controller_namespace = controller_namespace
        self.image = image
        self.runner_command = list(runner_command)
        self.timeout = request_timeout
        self.config_map = config_map
        self.field_manager = field_manager
        self.execution_cache = execution_cache
        self.node_cache = node_cache
        self._converted: dict[str, tuple[Any, Execution]] = {}
        self._facts = _TTL(facts_ttl)
        self._api_calls = (Counter("kexec_api_requests_total",
                                   "Kubernetes API requests made by kexec, by HTTP method",
                                   ["method"], registry=registry)
                           if registry is not None else None)

    # --- transport -------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, Any]] = (),
        body: Any = None,
        content_type: str = "application/json",
        identity: Identity | None = None,
        request_timeout: float | None = None,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if identity is not None:
            headers["Impersonate-User"] = identity.username
        if self._api_calls is not None:
            self._api_calls.labels(method).inc()
        try:
            data = await self.api.call_api(
                path, method, query_params=list(query), header_params=headers, body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=True,
                _request_timeout=request_timeout or self.timeout,
            )
        except ApiException as exc:
            raise classify(exc.status, exc.body) from None
        except (TimeoutError, OSError) as exc:
            raise Unavailable(f"{method} {path}: {exc or type(exc).__name__}") from None
        return data

    # --- reads -----------------------------------------------------------------------

    async def read(self, read: Read, identity: Identity | None = None) -> Any:
        if isinstance(read, Get):
            ref = read.ref
            try:
                obj = await self.request("GET", path_for(ref.kind, ref.namespace, ref.name),
                                         identity=identity)
            except ClusterError as exc:
                if exc.status == 404:
                    return None
                raise
            return obj
        assert isinstance(read, List)
        query = []
        if read.field_selector:
            query.append(("fieldSelector", read.field_selector))
        if read.label_selector:
            query.append(("labelSelector", read.label_selector))
        doc = await self.request("GET", path_for(read.kind, read.namespace), query=query,
                                 identity=identity)
        info = KINDS[read.kind]
        items = list(doc.get("items") or [])
        for item in items:  # list items carry no kind; the domain reads it
            item.setdefault("kind", read.kind)
            item.setdefault("apiVersion", info.api_version)
        return items

    # --- writes ------------------------------------------------------------------------

    async def mutate(
        self, mutation: Mutation, *, identity: Identity | None = None, dry_run: bool = False
    ) -> Any:
        ref = mutation.ref
        query: list[tuple[str, Any]] = [("dryRun", "All")] if dry_run else []
        if isinstance(mutation, Evict):
            body: dict[str, Any] = {
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": ref.name, "namespace": ref.namespace},
            }
            options: dict[str, Any] = {}
            if mutation.grace_period_seconds is not None:
                options["gracePeriodSeconds"] = mutation.grace_period_seconds
            if dry_run:
                options["dryRun"] = ["All"]
            if options:
                body["deleteOptions"] = options
            return await self.request("POST", path_for("Pod", ref.namespace, ref.name, "eviction"),
                                      query=query, body=body, identity=identity)
        if isinstance(mutation, Delete):
            opts: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions",
                                    "propagationPolicy": "Background"}
            if mutation.grace_period_seconds is not None:
                opts["gracePeriodSeconds"] = mutation.grace_period_seconds
            if mutation.uid:
                opts["preconditions"] = {"uid": mutation.uid}
            if dry_run:
                opts["dryRun"] = ["All"]
            return await self.request("DELETE", path_for(ref.kind, ref.namespace, ref.name),
                                      query=query, body=opts, identity=identity)
        if isinstance(mutation, Create):
            return await self.request("POST", path_for(ref.kind, ref.namespace), query=query,
                                      body=mutation.body, identity=identity)
        if isinstance(mutation, Replace):
            return await self.request(
                "PUT", path_for(ref.kind, ref.namespace, ref.name, mutation.subresource),
                query=query, body=mutation.body, identity=identity)
        assert isinstance(mutation, Patch)
        if mutation.patch_type == "apply":
            query += [("fieldManager", self.field_manager), ("force", "true")]
        return await self.request(
            "PATCH", path_for(ref.kind, ref.namespace, ref.name, mutation.subresource),
            query=query, body=mutation.body, content_type=CONTENT_TYPES[mutation.patch_type],
            identity=identity)

    async def _create(self, path: str, body: dict[str, Any]) -> bool:
        """Create unless it exists; True when this call created it."""
        try:
            await self.request("POST", path, body=body)
            return True
        except AlreadyExists:
            return False

    async def _await_rbac(self, identity: Identity, action: str, namespace: str) -> None:
        """A new binding takes a moment to reach the authorizer: wait until it does, so
        the dry run that follows is not refused by a race (SubjectAccessReview)."""
        rule = ACTIONS[action].rules[0]
        base, _, sub = rule.resources[0].partition("/")
        permission = Permission(rule.api_groups[0], base, rule.verbs[0], namespace, "", sub)
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{identity.namespace}",
                  "system:authenticated")
        if not await poll(lambda: self.access_allowed(identity.username, groups, permission),
                          backoff=Backoff(0.05, 0.5), within=5.0):
            log.warning("binding of %s to %s not effective after 5s", identity.username, action)

    async def ensure_identity(self, identity: Identity, action: str, target_namespace: str) -> None:
        labels = {"app.kubernetes.io/managed-by": "kexec"}
        await self._create(path_for("ServiceAccount", identity.namespace), {
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": identity.service_account, "namespace": identity.namespace,
                         "labels": labels},
        })
        name = self._binding_name(identity, action)
        binding = {
            "metadata": {"name": name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": action_role(action)},
            "subjects": [{"kind": "ServiceAccount", "name": identity.service_account,
                          "namespace": identity.namespace}],
        }
        if target_namespace:
            binding["metadata"]["namespace"] = target_namespace
            created = await self._create(path_for("RoleBinding", target_namespace),
                                         {"apiVersion": "rbac.authorization.k8s.io/v1",
                                          "kind": "RoleBinding", **binding})
        else:
            created = await self._create(path_for("ClusterRoleBinding"),
                                         {"apiVersion": "rbac.authorization.k8s.io/v1",
                                          "kind": "ClusterRoleBinding", **binding})
        if created:
            await self._await_rbac(identity, action, target_namespace)

    def _binding_name(self, identity: Identity, action: str) -> str:
        return f"{action_role(action)}-{identity.namespace}"[:253]

    async def revoke_identity(self, identity: Identity, action: str, target_namespace: str) -> None:
        name = self._binding_name(identity, action)
        path = (path_for("RoleBinding", target_namespace, name) if target_namespace
                else path_for("ClusterRoleBinding", "", name))
        try:
            await self.request("DELETE", path)
        except NotFound:
            pass

    async def identity_grants(self) -> list[tuple[Identity, str, str]]:
        by_role = {action_role(a): a for a in ACTIONS}
        out: list[tuple[Identity, str, str]] = []
        for kind in ("RoleBinding", "ClusterRoleBinding"):
            doc = await self.request("GET", path_for(kind),
                                     query=[("labelSelector", MANAGED_BY)])
            for item in doc.get("items") or []:
                action = by_role.get((item.get("roleRef") or {}).get("name", ""))
                subjects = item.get("subjects") or []
                if action is None or len(subjects) != 1:
                    continue
                sa = subjects[0]
                out.append((Identity(sa.get("namespace", ""), sa.get("name", "")), action,
                            (item.get("metadata") or {}).get("namespace", "")))
        return out

    async def access_allowed(self, user: str, groups: tuple[str, ...],
                             permission: Permission) -> bool:
        attrs = {k: v for k, v in (
            ("group", permission.group), ("resource", permission.resource),
            ("verb", permission.verb), ("namespace", permission.namespace),
            ("name", permission.name), ("subresource", permission.subresource)) if v}
        attrs.setdefault("group", "")
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "groups": list(groups), "resourceAttributes": attrs}}
        answer = await self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                    body=review)
        return bool((answer.get("status") or {}).get("allowed"))

    async def admission_installed(self) -> str:
        cached = self._facts.get("admission")
        if cached is None:
            cached = ""
            for resource, name in ADMISSION_OBJECTS:
                try:
                    await self.request("GET", f"{ADMISSION_API}/{resource}/{name}")
                except NotFound:
                    cached = (f"{resource[:-1]} {name!r} is not installed (deploy/admission.yaml); "
                              "executions cannot run without it")
                    break
            self._facts.put("admission", cached)
        return str(cached)

    async def whoami(self) -> str:
        """The username this client authenticates as (SelfSubjectReview)."""
        doc = await self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                 body={"apiVersion": "authentication.k8s.io/v1",
                                       "kind": "SelfSubjectReview"})
        return str(((doc.get("status") or {}).get("userInfo") or {}).get("username", ""))

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
        job = await self.read(Get("job", _ref("Job", namespace, name)))
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
        pods = await self.read(List("pods", "Pod", namespace, label_selector=f"{JOB_LABEL}={name}"))
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

    # --- executions ---------------------------------------------------------------------

    async def list_executions(self) -> list[Execution]:
        if self.execution_cache is not None:
            # Converted once per resourceVersion: every validation reads them all.
            out, seen = [], {}
            for obj in self.execution_cache():
                meta = obj.get("metadata") or {}
                key, rv = f"{meta.get('namespace')}/{meta.get('name')}", meta.get("resourceVersion")
                hit = self._converted.get(key)
                ex = hit[1] if hit and hit[0] == rv else to_execution(obj)
                seen[key] = (rv, ex)
                out.append(ex)
            self._converted = seen
            return out
        doc = await self.request("GET", execution_path())
        return [to_execution(o) for o in doc.get("items") or []]

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
        (a watch-fed node cache when the controller gives one, else a list)."""
        if self.node_cache is not None:
            items = list(self.node_cache())
        else:
            items = await self.read(List("nodes", "Node"))
        ns_fact: dict[str, Any] = {"name": namespace, "labels": {}}
        if namespace:
            obj = await self.read(Get("ns", ObjectRef("Namespace", "", namespace)))
            ns_fact["labels"] = dict(((obj or {}).get("metadata") or {}).get("labels") or {})
        return {"nodes": [_node_fact(n) for n in items], "namespace": ns_fact}

    async def paused(self) -> bool:
        cached = self._facts.get("paused")
        if cached is None:
            cm = await self.read(Get("cm", _ref("ConfigMap", self.controller_namespace,
                                                 self.config_map)))
            cached = str(((cm or {}).get("data") or {}).get("paused", "")).lower() == "true"
            self._facts.put("paused", cached)
        return bool(cached)


def _ref(kind: str, namespace: str, name: str) -> ObjectRef:
    return ObjectRef(kind, namespace, name)


def _avoid_nodes(nodes: Sequence[str]) -> dict[str, Any]:
    if not nodes:
        return {}
    term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn",
                                  "values": list(nodes)}]}
    return {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}}


def _node_fact(node: dict[str, Any]) -> dict[str, Any]:
    conditions = (node.get("status") or {}).get("conditions") or []
    labels = (node.get("metadata") or {}).get("labels") or {}
    return {
        "name": node["metadata"]["name"],
        "ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
        "controlPlane": "node-role.kubernetes.io/control-plane" in labels,
    }

