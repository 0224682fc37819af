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
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

from kexec.application.ports.clock import Clock
from kexec.application.ports.cluster import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Identity,
    Invalid,
    JobRequest,
    JobState,
    NotFound,
    TooManyRequests,
)
from kexec.application.run_action import EXIT_PERMANENT, RunAction, RunReport, RunRequest
from kexec.domain.actions import ACTIONS, Context
from kexec.domain.actions.rollback_deployment import HASH_LABEL, REVISION
from kexec.domain.execution import API_VERSION, KIND, Execution, iso
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
    Rule,
)

Key = tuple[str, str, str]
# Kinds with a status subresource (their main resource ignores status writes).
STATUS_KINDS = frozenset({"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Pod", "Node",
                          "Namespace", "Service", "Job", "PodDisruptionBudget",
                          "HorizontalPodAutoscaler"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# patchMergeKey of list fields (k8s.io/api struct tags): a strategic merge patch merges
# these lists item by item; every other list is replaced, as in a JSON merge patch.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "env": "name", "volumes": "name", "volumeMounts": "mountPath",
              "ports": "containerPort", "imagePullSecrets": "name", "conditions": "type"}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch for the lists in MERGE_KEYS (``$patch: delete``
    removes an item); otherwise an RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        key = MERGE_KEYS.get(k)
        if v is None:
            out.pop(k, None)
        elif (key and isinstance(v, list) and isinstance(out.get(k), list)
              and all(isinstance(i, dict) and key in i for i in v)):
            merged = list(out[k])
            for item in v:
                at = next((n for n, c in enumerate(merged)
                           if isinstance(c, dict) and c.get(key) == item[key]), None)
                if item.get("$patch") == "delete":
                    if at is not None:
                        del merged[at]
                elif at is None:
                    merged.append(strategic_merge_patch({}, item))
                else:
                    merged[at] = strategic_merge_patch(merged[at], item)
            out[k] = merged
        else:
            out[k] = strategic_merge_patch(out.get(k), v)
    return out


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch, all operations (the ``jsonpatch`` library); a failed ``test``,
    a missing path or parent is Invalid (HTTP 422), as on the real API server."""
    try:
        return jsonpatch.apply_patch(target, ops)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise Invalid(f"the server rejected our request due to an error in our request: {exc}") from None


def _unapply(obj: Any, before: Any, now: Any) -> Any:
    """Server-side apply by one field manager: fields it applied before and no longer
    applies are removed (other writers' fields stay). Maps only; lists are replaced."""
    if not (isinstance(obj, dict) and isinstance(before, dict)):
        return obj
    out = dict(obj)
    for k, v in before.items():
        if not isinstance(now, dict) or k not in now:
            out.pop(k, None)
        elif k in out:
            out[k] = _unapply(out[k], v, now[k])
    return out


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) matches ``labels``."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value, values = e["key"] in labels, labels.get(e["key"]), e.get("values") or []
        ok = {"In": has and value in values, "NotIn": not has or value not in values,
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


_TERM = re.compile(r"^\s*(!?)([^!=\s]+)\s*(?:(==|=|!=)\s*(\S*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _labels_match(selector: str, labels: dict[str, str]) -> bool:
    """A label selector string: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``,
    ``k notin (a,b)``, comma-separated (all must hold)."""
    for term in re.split(r",(?![^()]*\))", selector):
        m = _TERM.match(term)
        if m is None:
            raise Invalid(f"unable to parse requirement: {term!r}")
        bang, key, op, value, set_op, values = m.groups()
        has, got = key in labels, labels.get(key)
        choices = {v.strip() for v in (values or "").split(",")}
        ok = (not has if bang else
              got == value if op in ("=", "==") else
              got != value if op == "!=" else
              has and got in choices if set_op == "in" else
              got not in choices if set_op == "notin" else has)
        if not ok:
            return False
    return True


def _fields_match(selector: str, obj: dict[str, Any]) -> bool:
    """A field selector string: ``path=value``, ``path==value``, ``path!=value``, comma-separated."""
    for term in selector.split(","):
        path, op, want = re.split(r"(==|!=|=)", term, maxsplit=1)
        value: Any = obj
        for part in path.strip().split("."):
            value = value.get(part) if isinstance(value, dict) else None
        text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        if (text == want.strip()) != (op != "!="):
            return False
    return True


def _scaled(value: Any, total: int) -> int:
    """An int-or-percent of ``total``, rounded up (as the disruption controller does)."""
    if isinstance(value, str) and value.endswith("%"):
        return -(-int(value[:-1]) * total // 100)
    return int(value)


@dataclass
class FakeJob:
    request: JobRequest
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    finished: bool = False
    success: bool = False
    reason: str = ""
    report: dict[str, Any] | None = None
    exit_code: int | None = None


JobHandler = Callable[[JobRequest, "FakeCluster"], Awaitable[RunReport]]


@dataclass
class _Counter:
    writes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str) -> None:
        self.writes += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


class FakeCluster:
    def __init__(self, clock: Clock, *, auto_settle: bool = True) -> None:
        self.clock = clock
        self.auto_settle = auto_settle
        self.objects: dict[Key, dict[str, Any]] = {}
        self.executions: dict[tuple[str, str], Execution] = {}
        self.jobs: dict[tuple[str, str], FakeJob] = {}
        self.events: list[tuple[str, str, str, str]] = []  # (execution key, type, reason, msg)
        self.grants: dict[str, list[tuple[str, Rule]]] = {}  # username → (namespace|"", rule)
        self.bindings: set[tuple[str, str, str]] = set()
        self.service_accounts: set[tuple[str, str]] = set()
        self.rejections: dict[str, str] = {}  # kind → admission message
        self.blocked_evictions: set[Key] = set()  # pods a PDB protects
        self.applied: dict[Key, tuple[str, Any]] = {}  # server-side apply: (uid, last body)
        self.job_outcomes: dict[str, list[int]] = {}  # job name → exit codes per attempt
        self.job_handler: JobHandler | None = None
        self.kill_switch = False
        self.counter = _Counter()
        self._rv = itertools.count(1000)

    # --- seeding helpers (tests) ------------------------------------------------------

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        kind = obj["kind"]
        info = KINDS[kind]
        obj.setdefault("apiVersion", info.api_version)
        m = obj.setdefault("metadata", {})
        if not info.namespaced:
            m.pop("namespace", None)
        m.setdefault("uid", str(uuid.uuid4()))
        m["resourceVersion"] = str(next(self._rv))
        m.setdefault("creationTimestamp", iso(self.clock.now()))
        if "spec" in obj and kind not in ("Pod", "Node"):
            m.setdefault("generation", 1)
        self.objects[self._key(kind, m.get("namespace", ""), m["name"])] = obj
        if kind == "Deployment" and self.auto_settle:
            self._settle_deployment(obj)
        return copy.deepcopy(obj)

    def obj(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def reject(self, kind: str, message: str) -> None:
        """Admission rejects every write (and dry run) of this kind."""
        self.rejections[kind] = message

    def block_eviction(self, namespace: str, pod: str) -> None:
        self.blocked_evictions.add(("Pod", namespace, pod))

    # --- ClusterPort: reads -------------------------------------------------------------

    async def read(self, read: Read, identity: Identity | None = None) -> Any:
        if isinstance(read, Get):
            ref = read.ref
            self._authorize(identity, ref.kind, ref.namespace, "get", ref.name)
            return self.obj(ref.kind, ref.namespace, ref.name)
        assert isinstance(read, List)
        self._authorize(identity, read.kind, read.namespace, "list", "")
        out = []
        for (kind, ns, _), obj in sorted(self.objects.items()):
            if kind != read.kind or (read.namespace and ns != read.namespace):
                continue
            if read.field_selector and not _fields_match(read.field_selector, obj):
                continue
            if read.label_selector and not _labels_match(
                    read.label_selector, obj["metadata"].get("labels") or {}):
                continue
            out.append(copy.deepcopy(obj))
        return out

    # --- ClusterPort: writes ------------------------------------------------------------

    async def mutate(
        self, mutation: Mutation, *, identity: Identity | None = None, dry_run: bool = False
    ) -> Any:
        ref = mutation.ref
        key = self._key(ref.kind, ref.namespace, ref.name)
        if isinstance(mutation, Evict):
            self._authorize(identity, "Pod", ref.namespace, "create", ref.name, "eviction")
            if key not in self.objects:
                raise NotFound(f"pods {ref.name!r} not found")
            if key in self.blocked_evictions or self._disruption_budget_spent(self.objects[key]):
                raise TooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.")
            if not dry_run:
                self._write("Pod")
                del self.objects[key]
            return None
        if isinstance(mutation, Delete):
            self._authorize(identity, ref.kind, ref.namespace, "delete", ref.name)
            current = self.objects.get(key)
            if current is None:
                raise NotFound(f"{ref} not found")
            if mutation.uid and current["metadata"]["uid"] != mutation.uid:
                raise Conflict(f"{ref}: precondition failed: uid")
            self._admit(ref.kind)
            if not dry_run:
                self._write(ref.kind)
                del self.objects[key]
            return None
        if isinstance(mutation, Create):
            self._authorize(identity, ref.kind, ref.namespace, "create", "")
            if key in self.objects:
                raise AlreadyExists(f"{ref} already exists")
            self._namespace_exists(ref)
            body = copy.deepcopy(mutation.body)
            if KINDS[ref.kind].namespaced:  # the request's namespace, as the apiserver does
                if body.setdefault("metadata", {}).setdefault("namespace", ref.namespace) != ref.namespace:
                    raise Invalid("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            self._admit(ref.kind)
            if dry_run:
                return body
            self._write(ref.kind)
            return self.add(body)
        verb = "update" if isinstance(mutation, Replace) else "patch"
        sub = mutation.subresource
        current = self.objects.get(key)
        if isinstance(mutation, Patch) and mutation.patch_type == "apply":
            self._authorize(identity, ref.kind, ref.namespace, "patch", ref.name)
            if current is None:
                self._authorize(identity, ref.kind, ref.namespace, "create", "")
                self._namespace_exists(ref)
            base = current or {}
            last = self.applied.get(key)
            if current is not None and last and last[0] == current["metadata"]["uid"]:
                base = _unapply(base, last[1], mutation.body)
            new = merge_patch(base, mutation.body)
        else:
            self._authorize(identity, ref.kind, ref.namespace, verb, ref.name, sub)
            if current is None:
                raise NotFound(f"{ref} not found")
            body = mutation.body
            if isinstance(mutation, Replace):
                want_rv = (body.get("metadata") or {}).get("resourceVersion")
                new = copy.deepcopy(body)
            elif mutation.patch_type == "json":
                want_rv = None
                new = json_patch(current, body)
            else:
                want_rv = (body.get("metadata") or {}).get("resourceVersion")
                new = (strategic_merge_patch if mutation.patch_type == "strategic" else merge_patch)(
                    current, body)
            if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                raise Conflict(f"{ref}: the object has been modified")
        if current is not None and ref.kind in STATUS_KINDS and sub in ("", "status"):
            # The main resource ignores status; the status subresource writes only status.
            part = new.get("status")
            new = copy.deepcopy(current) if sub == "status" else new
            new.pop("status", None)
            status = part if sub == "status" else current.get("status")
            if status is not None:
                new["status"] = copy.deepcopy(status)
        self._admit(ref.kind)
        self._validate(ref.kind, new)
        if dry_run:
            return new
        self._write(ref.kind)
        stored = self._store(ref, current, new)
        if isinstance(mutation, Patch) and mutation.patch_type == "apply":
            self.applied[key] = (stored["metadata"]["uid"], copy.deepcopy(mutation.body))
        return stored

    def _store(self, ref: ObjectRef, current: dict[str, Any] | None, new: dict[str, Any]) -> Any:
        if current is None:
            new.setdefault("apiVersion", KINDS[ref.kind].api_version)
            new.setdefault("kind", ref.kind)
            return self.add(new)
        m = new["metadata"]
        for field_ in ("uid", "creationTimestamp", "name", "namespace"):
            if field_ in current["metadata"]:
                m[field_] = current["metadata"][field_]
        m["resourceVersion"] = str(next(self._rv))
        if "generation" in current["metadata"] and new.get("spec") != current.get("spec"):
            m["generation"] = current["metadata"]["generation"] + 1
        self.objects[self._key(ref.kind, ref.namespace, ref.name)] = new
        if ref.kind == "Deployment" and self.auto_settle:
            self._settle_deployment(new)
        return copy.deepcopy(new)

    def _namespace_exists(self, ref: ObjectRef) -> None:
        """Objects are created only in a namespace that exists (the apiserver answers 404)."""
        if KINDS[ref.kind].namespaced and ("Namespace", "", ref.namespace) not in self.objects:
            raise NotFound(f'namespaces "{ref.namespace}" not found')

    def _disruption_budget_spent(self, pod: dict[str, Any]) -> bool:
        """The eviction API's check: a Running pod selected by a PodDisruptionBudget that
        allows no more disruptions (computed as the disruption controller does) stays.
        Pending (the default phase), Succeeded, Failed and deleting pods always go."""
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if phase in ("Pending", "Succeeded", "Failed") or pod["metadata"].get("deletionTimestamp"):
            return False
        ns = pod["metadata"].get("namespace", "")
        for (kind, pdb_ns, _), pdb in self.objects.items():
            spec = pdb.get("spec") or {}
            if kind != "PodDisruptionBudget" or pdb_ns != ns or not _selects(
                    spec.get("selector") or {}, pod["metadata"].get("labels") or {}):
                continue
            pods = [p for (k, n, _), p in self.objects.items() if k == "Pod" and n == ns
                    and not p["metadata"].get("deletionTimestamp")
                    and _selects(spec.get("selector") or {}, p["metadata"].get("labels") or {})]
            healthy = sum(1 for p in pods if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []))
            if "maxUnavailable" in spec:
                desired = len(pods) - _scaled(spec["maxUnavailable"], len(pods))
            else:
                desired = _scaled(spec.get("minAvailable", 1), len(pods))
            if healthy - desired <= 0:
                return True
        return False

    def _validate(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "Deployment":
            replicas = (obj.get("spec") or {}).get("replicas", 1)
            if not isinstance(replicas, int) or replicas < 0:
                raise Invalid("spec.replicas: Invalid value: must be greater than or equal to 0")
            containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
                "containers")
            if not containers:
                raise Invalid("spec.template.spec.containers: Required value")

    def _admit(self, kind: str) -> None:
        if kind in self.rejections:
            raise Invalid(f"admission webhook denied the request: {self.rejections[kind]}")

    # --- the deployment controller, in miniature -------------------------------------

    def _settle_deployment(self, dep: dict[str, Any]) -> None:
        m = dep["metadata"]
        ns = m.get("namespace", "")
        template = dep["spec"]["template"]
        h = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        sets = [o for (k, n, _), o in self.objects.items() if k == "ReplicaSet" and n == ns
                and any(r.get("uid") == m["uid"] for r in o["metadata"].get("ownerReferences", []))]
        top = max((int(s["metadata"]["annotations"].get(REVISION, "0")) for s in sets), default=0)
        mine = next((s for s in sets if s["metadata"]["labels"].get(HASH_LABEL) == h), None)
        if mine is None or int(mine["metadata"]["annotations"][REVISION]) != top:
            rev = top + 1
            rs_template = copy.deepcopy(template)
            rs_template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
            rs = {
                "kind": "ReplicaSet",
                "metadata": {
                    "name": f"{m['name']}-{h}", "namespace": ns,
                    "labels": {HASH_LABEL: h},
                    "annotations": {REVISION: str(rev)},
                    "ownerReferences": [{"kind": "Deployment", "name": m["name"],
                                         "uid": m["uid"], "controller": True}],
                },
                "spec": {"template": rs_template},
            }
            self.objects.pop(("ReplicaSet", ns, f"{m['name']}-{h}"), None)
            self.add(rs)
            m.setdefault("annotations", {})[REVISION] = str(rev)
        n = dep["spec"].get("replicas", 1)
        dep["status"] = {"observedGeneration": m.get("generation", 1), "replicas": n,
                         "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}

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

    def _authorize(
        self, identity: Identity | None, kind: str, namespace: str, verb: str, name: str,
        subresource: str = "",
    ) -> None:
        if identity is None:
            return  # the admin / controller credential
        info = KINDS[kind]
        resource = info.plural + (f"/{subresource}" if subresource else "")
        for scope, rule in self.grants.get(identity.username, []):
            if scope and scope != namespace:
                continue
            if (info.group in rule.api_groups and resource in rule.resources
                    and verb in rule.verbs
                    and (not rule.resource_names or name in rule.resource_names)):
                return
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        raise Forbidden(f'User "{identity.username}" cannot {verb} resource "{resource}" '
                        f'in API group "{info.group}"{where}')

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

    async def list_executions(self) -> list[Execution]:
        return [e.copy() for e in self.executions.values()]

    async def get_execution(self, namespace: str, name: str) -> Execution | None:
        found = self.executions.get((namespace, name))
        return found.copy() if found else None

    async def create_execution(self, execution: Execution) -> Execution:
        key = (execution.namespace, execution.name)
        if key in self.executions:
            raise AlreadyExists(f"kubernetesexecution {execution.key} already exists")
        new = execution.copy()
        new.uid = new.uid or str(uuid.uuid4())
        new.resource_version = str(next(self._rv))
        new.created = self.clock.now()
        self._write("KubernetesExecution")
        self.executions[key] = new
        return new.copy()

    async def update_execution(self, execution: Execution) -> Execution:
        stored = self._check_rv(execution)
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
        stored.status = copy.deepcopy(execution.status)
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

    # --- internals -------------------------------------------------------------------------

    def _write(self, kind: str) -> None:
        self.counter.add(kind)

    @staticmethod
    def _key(kind: str, namespace: str, name: str) -> Key:
        return (kind, namespace if KINDS[kind].namespaced else "", name)


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
    env = job.env
    identity = Identity(job.namespace, job.service_account)
    clock = cluster.clock

    async def sleep(seconds: float) -> None:
        advance = getattr(clock, "advance", None)
        if advance is not None:
            advance(seconds)

    runner = RunAction(cluster.view(identity), clock, sleep)  # type: ignore[arg-type]
    return await runner(RunRequest(
        action=env["KEXEC_ACTION"],
        parameters=json.loads(env["KEXEC_PARAMETERS"]),
        context=Context(env["KEXEC_EXECUTION_NAME"], env["KEXEC_EXECUTION_NAMESPACE"],
                        env["KEXEC_EXECUTION_UID"], env.get("KEXEC_STARTED_AT", "")),
        guard=json.loads(env.get("KEXEC_GUARD", "{}")),
        deadline_seconds=float(env.get("KEXEC_DEADLINE_SECONDS", "60")),
    ))


