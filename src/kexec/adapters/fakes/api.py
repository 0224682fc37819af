"""The fake API server's object store: reads and writes with resourceVersions, 409/404/403
(RBAC from the actions' rules), dry run, admission rejections on demand, PDB-blocked
evictions, and a tiny deployment controller."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from kexec.adapters.fakes.objects import (
    STATUS_KINDS,
    Key,
    _Counter,
    _fields_match,
    _labels_match,
    _scaled,
    _selects,
    _unapply,
    json_patch,
    merge_patch,
    rbac_allows,
    strategic_merge_patch,
)
from kexec.application.ports.clock import Clock
from kexec.application.ports.cluster import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Identity,
    Invalid,
    JobRequest,
    NotFound,
    TooManyRequests,
)
from kexec.application.run_action import RunReport
from kexec.domain.actions._workload import REVISION
from kexec.domain.actions.rollback_deployment import HASH_LABEL
from kexec.domain.execution import (
    Execution,
    iso,
)
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
    Rule,
)

if TYPE_CHECKING:
    from kexec.adapters.fakes.cluster import FakeCluster


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


class FakeApi:
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
        # Admission, as deploy/base/admission.yaml does it: the creating user is stamped on every
        # execution; approval fields are the only spec fields that may change.
        self.acting_user = "orchestrator"
        self.acting_groups: tuple[str, ...] = ("system:authenticated",)
        self.admission_missing = ""
        self.immutable_spec = True
        # What people may do (SubjectAccessReview); None = everything.
        self.user_rules: dict[str, list[tuple[str, Rule]]] | None = None
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
        verb = "patch"
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
            if mutation.patch_type == "json":
                want_rv = None
                new = json_patch(current, cast(list[dict[str, Any]], body))
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

    def _authorize(
        self, identity: Identity | None, kind: str, namespace: str, verb: str, name: str,
        subresource: str = "",
    ) -> None:
        if identity is None:
            return  # the admin / controller credential
        info = KINDS[kind]
        resource = info.plural + (f"/{subresource}" if subresource else "")
        if rbac_allows(self.grants.get(identity.username, []), info.group, resource, verb,
                       namespace, name):
            return
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        raise Forbidden(f'User "{identity.username}" cannot {verb} resource "{resource}" '
                        f'in API group "{info.group}"{where}')


    # --- internals -------------------------------------------------------------------------

    def _write(self, kind: str) -> None:
        self.counter.add(kind)

    @staticmethod
    def _key(kind: str, namespace: str, name: str) -> Key:
        return (kind, namespace if KINDS[kind].namespaced else "", name)


