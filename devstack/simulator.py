"""NodeSimulator: stands in for kubelets and kube-scheduler on the local control plane.

It talks to the real kube-apiserver (kubernetes-asyncio, admin kubeconfig) and:

* registers N Ready nodes (``sim-node-1..N``) and keeps them Ready by renewing their
  Leases in ``kube-node-lease`` (and a node status heartbeat every minute), so the real
  node lifecycle controller leaves them alone;
* schedules pending pods (``schedulerName`` default-scheduler, no ``nodeName``) through
  the Binding API onto schedulable nodes, honouring ``spec.nodeName``, cordoned nodes,
  ``nodeSelector``, required node affinity and NoSchedule/NoExecute taints/tolerations;
* marks other non-Job pods Running + Ready (conditions, containerStatuses, podIP);
* EXECUTES Job pods (label ``batch.kubernetes.io/job-name``/``job-name`` or a Job owner):
  the first container's ``command`` + ``args`` run as a local subprocess with the
  container's env, ``KUBECONFIG`` (token for the pod's ServiceAccount from the
  TokenRequest API, bound to the pod) and ``KEXEC_TERMINATION_LOG``; on exit the pod
  becomes Succeeded/Failed with ``state.terminated`` (exitCode, reason, message from the
  termination log), so the real Job controller finishes the Job. Containers of an image
  given in ``images`` (repository name -> unpacked root filesystem, e.g. the kexec image
  from hack/build-image.sh) instead run inside that root filesystem under ``bwrap``
  (devstack/image_runner.py): read-only root, writable ``/tmp``, the image's
  ENTRYPOINT/CMD, the pod's uid, the ServiceAccount token/CA/namespace at
  ``/var/run/secrets/kubernetes.io/serviceaccount`` and ``KUBERNETES_SERVICE_HOST/PORT``
  (the in-cluster configuration), the termination log at ``terminationMessagePath``;
* RUNS long-running pods with a container of a known image (the controller Deployment
  installed by ``kubectl apply -k``): every container from its image under ``bwrap`` (other
  images are only reported running), the pod on a loopback IP of its own (``127.N.x.y``:
  Linux routes 127/8 to ``lo``, so replicas bound to ``status.podIP`` can all listen),
  emptyDir/configMap/secret volumes, httpGet/tcpSocket startup, readiness (-> Ready) and
  liveness (-> restart) probes, restarts with backoff; an ``Image.binary`` (e.g. the opa
  built by hack/build-binaries.sh for ``openpolicyagent/opa:*``) stands in for a one-binary
  image;
* finishes graceful deletions (SIGTERM to the container's processes, not to bwrap; then
  SIGKILL after the grace period; reports status, deletes with
  gracePeriodSeconds=0) -- evictions end up here too;
* enforces ``spec.activeDeadlineSeconds`` (DeadlineExceeded).

Runs in its own thread with its own event loop: ``NodeSimulator(kubeconfig).start()`` /
``.stop()`` from sync code, or ``python -m devstack.simulator --kubeconfig X``.

Logs: ``<log_dir>/simulator.log``; each Job pod's stdout+stderr goes to
``<log_dir>/pods/<namespace>_<pod>.log`` (``kubectl logs`` does not work: no kubelet).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as _dt
import functools
import json
import logging
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from devstack import image_runner
from devstack.controlplane import _pdeathsig, register_cleanup, unregister_cleanup

JOB_LABELS = ("batch.kubernetes.io/job-name", "job-name")
RESYNC_SECONDS = 120.0
TERMINATION_MSG_MAX = 4096
FALLBACK_LOG_MAX = 2048
DEFAULT_PASSTHROUGH_ENV = (
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONDONTWRITEBYTECODE",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "COVERAGE_PROCESS_START",
    "COVERAGE_FILE",
    "KEXEC_BIN_DIR",
)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


T = TypeVar("T")


def transient(e: BaseException) -> bool:
    """An error an API server outage causes (429, 5xx, refused or timed-out connections)."""
    if isinstance(e, ApiError):
        return e.status == 429 or e.status >= 500
    return isinstance(e, TimeoutError | aiohttp.ClientError)


def is_job_pod(pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata", {})
    labels = meta.get("labels") or {}
    if any(k in labels for k in JOB_LABELS):
        return True
    return any(o.get("kind") == "Job" for o in meta.get("ownerReferences") or [])


# ------------------------------------------------------------------ scheduling predicates


def _match_expr(expr: dict[str, Any], value: str | None, present: bool) -> bool:
    op = expr.get("operator")
    vals = expr.get("values") or []
    if op == "In":
        return present and value in vals
    if op == "NotIn":
        return not present or value not in vals
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        try:
            v, ref = int(value or ""), int(vals[0])
        except (ValueError, IndexError):
            return False
        return present and (v > ref if op == "Gt" else v < ref)
    return False


def _term_matches(term: dict[str, Any], node: dict[str, Any]) -> bool:
    labels = node["metadata"].get("labels") or {}
    for e in term.get("matchExpressions") or []:
        k = e.get("key")
        if not _match_expr(e, labels.get(k), k in labels):
            return False
    for e in term.get("matchFields") or []:
        if e.get("key") != "metadata.name":
            return False
        if not _match_expr(e, node["metadata"]["name"], True):
            return False
    return True


def _tolerates(tols: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tols:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        op = t.get("operator", "Equal")
        if not t.get("key") and op == "Exists":
            return True
        if t.get("key") != taint.get("key"):
            continue
        if op == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def node_fits(pod: dict[str, Any], node: dict[str, Any]) -> str | None:
    """None if ``pod`` may run on ``node``, else a reason."""
    spec = pod.get("spec", {})
    nspec = node.get("spec", {})
    if nspec.get("unschedulable"):
        return "node is unschedulable (cordoned)"
    conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions") or []}
    if conds.get("Ready") != "True":
        return "node is not Ready"
    labels = node["metadata"].get("labels") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return f"nodeSelector {k}={v} does not match"
    req = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = req.get("nodeSelectorTerms") or []
    if terms and not any(_term_matches(t, node) for t in terms):
        return "required node affinity does not match"
    tols = spec.get("tolerations") or []
    for taint in nspec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(tols, taint):
            return f"untolerated taint {taint.get('key')}:{taint.get('effect')}"
    return None


# --------------------------------------------------------------------------------- state


@dataclass
class _PodRun:
    uid: str
    namespace: str
    name: str
    node: str
    job: bool
    pod_ip: str
    proc: asyncio.subprocess.Process | None = None
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)  # service pods: by container
    task: asyncio.Task[Any] | None = None
    deleting: bool = False
    deadline_exceeded: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    last_exit: tuple[int, str, str] | None = None  # (exit code, message, startedAt) when deleted


_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_vars(s: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion ($$ escapes, unknown refs stay as-is)."""

    def rep(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_RE.sub(rep, s)


def _sandboxed(pid: int) -> list[int]:
    """The processes below a ``bwrap`` process ``pid`` that are not bwrap (empty otherwise)."""
    def stat(p: int) -> tuple[str, int]:
        text = Path(f"/proc/{p}/stat").read_text()
        return text[text.index("(") + 1:text.rindex(")")], int(text[text.rindex(")") + 2:].split()[1])

    try:
        if stat(pid)[0] != "bwrap":
            return []
        children: dict[int, list[tuple[int, str]]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    comm, ppid = stat(int(entry.name))
                    children.setdefault(ppid, []).append((int(entry.name), comm))
    except (OSError, ValueError, IndexError):
        return []
    found, todo = [], [pid]
    while todo:
        for child, comm in children.get(todo.pop(), []):
            todo.append(child)
            if comm != "bwrap":
                found.append(child)
    return found


class _Sim:
    """The asyncio side; everything runs on one event loop."""

    def __init__(self, owner: NodeSimulator, api: k8s_client.ApiClient) -> None:
        self.o = owner
        self.api = api
        self.log = owner.log
        cfg = api.configuration
        self.server: str = str(cfg.host)
        self.ca_data: str | None = None
        if cfg.ssl_ca_cert:
            self.ca_data = base64.b64encode(Path(cfg.ssl_ca_cert).read_bytes()).decode()
        self.node_names = list(owner.node_names)
        self.node_index = {n: i + 1 for i, n in enumerate(self.node_names)}
        self.node_uids: dict[str, str] = {}
        self.runs: dict[str, _PodRun] = {}
        self.busy: set[str] = set()  # uids with an in-flight schedule task
        self.pod_node: dict[str, str] = {}  # uid -> node, for spreading pods
        self.deleting: set[str] = set()
        self.ip_counter: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.nodes_cache: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self.stopping = asyncio.Event()
        self.loopback_net = random.randint(16, 250)  # 127.N.x.y: apart from other simulators'

    # ----------------------------------------------------------------- REST plumbing
    async def req(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, Any]] | None = None,
        content_type: str | None = None,
        request_timeout: float = 30.0,
        attempts: int = 4,
    ) -> Any:
        """One REST call; retries 429/5xx and connection errors; raises ApiError otherwise."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                r = await self.api.call_api(
                    path,
                    method,
                    query_params=list(query or []),
                    header_params=dict(headers),
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(total=request_timeout),
                )
                try:
                    data = await r.read()
                finally:
                    r.release()
            except (TimeoutError, aiohttp.ClientError) as e:
                if last or self.stopping.is_set():
                    raise
                self.log.warning("%s %s: %r; retrying", method, path, e)
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if 200 <= r.status < 300:
                return json.loads(data) if data else None
            if (r.status == 429 or r.status >= 500) and not last and not self.stopping.is_set():
                self.log.warning("%s %s: HTTP %d; retrying", method, path, r.status)
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            raise ApiError(r.status, data.decode(errors="replace"))
        raise AssertionError("unreachable")

    def spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("task %s failed", what)

        t = asyncio.get_running_loop().create_task(guarded(), name=what)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    async def until_taken(self, what: str, call: Callable[[], Awaitable[Any]],
                          run: _PodRun | None = None) -> bool:
        """Like the kubelet's sync loop: a call a pod's lifecycle depends on is retried through
        an API server outage (``transient`` errors) until it is taken (True), or ``run`` is
        being deleted or the simulator stops (False). Other API errors raise. (``req`` alone
        gives up after ~1.4 s, and a pod whose task died that way was never driven again.)"""
        delay = 0.5
        while True:
            try:
                await call()
                return True
            except (ApiError, TimeoutError, aiohttp.ClientError) as e:
                if not transient(e):
                    raise
                err = e
            if self.stopping.is_set() or (run is not None and run.deleting):
                return False
            self.log.warning("%s: %s; retrying in %.1fs", what, str(err)[:200], delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # ----------------------------------------------------------------------- nodes
    def node_ip(self, node: str) -> str:
        return f"10.240.0.{self.node_index.get(node, 250)}"

    def alloc_pod_ip(self, node: str) -> str:
        n = self.ip_counter.get(node, 1) + 1
        self.ip_counter[node] = n
        return f"10.244.{self.node_index.get(node, 250)}.{(n % 250) + 2}"

    def alloc_loopback_ip(self, node: str) -> str:
        """A pod IP of its own on the loopback (Linux routes all of 127/8 to ``lo``): the
        containers of a pod run from its image share the host network, so two replicas
        listening on the same port (bound to ``status.podIP``) do not collide."""
        n = self.ip_counter.get(node, 1) + 1
        self.ip_counter[node] = n
        return f"127.{self.loopback_net}.{self.node_index.get(node, 250)}.{(n % 250) + 2}"

    def node_status(self, node: str) -> dict[str, Any]:
        now = _now()
        o = self.o

        def cond(t: str, s: str, reason: str, msg: str) -> dict[str, str]:
            return {
                "type": t,
                "status": s,
                "reason": reason,
                "message": msg,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        res = {"cpu": o.cpu, "memory": o.memory, "pods": str(o.max_pods), "ephemeral-storage": "100Gi"}
        return {
            "capacity": res,
            "allocatable": res,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
                cond("Ready", "True", "KubeletReady", "kexec node simulator"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.node_ip(node)}, {"type": "Hostname", "address": node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": node,
                "systemUUID": node,
                "bootID": node,
                "kernelVersion": os.uname().release,
                "osImage": "kexec-simulator",
                "containerRuntimeVersion": "sim://1.0",
                "kubeletVersion": o.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register_node(self, node: str) -> None:
        labels = {
            "kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kexec.test/simulated": "true",
            **self.o.node_labels,
        }
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}, "spec": {}}
        try:
            obj = await self.req("POST", "/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
            obj = await self.req("GET", f"/api/v1/nodes/{node}")
        self.node_uids[node] = obj["metadata"]["uid"]
        await self.req(
            "PATCH",
            f"/api/v1/nodes/{node}/status",
            {"status": self.node_status(node)},
            content_type="application/strategic-merge-patch+json",
        )
        await self.renew_lease(node)

    async def renew_lease(self, node: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        spec = {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": _now_micro()}
        try:
            await self.req("PATCH", path, {"spec": spec}, content_type="application/merge-patch+json")
        except ApiError as e:
            if e.status != 404:
                raise
            body: dict[str, Any] = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": node,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": node, "uid": self.node_uids.get(node, "")}
                    ],
                },
                "spec": spec,
            }
            if not self.node_uids.get(node):
                body["metadata"].pop("ownerReferences")
            await self.req("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body)

    async def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.o.lease_interval)
            if self.stopping.is_set():
                return
            status_due = time.monotonic() - last_status > 60
            for node in self.node_names:
                try:
                    await self.renew_lease(node)
                    if status_due:
                        await self.req(
                            "PATCH",
                            f"/api/v1/nodes/{node}/status",
                            {"status": {"conditions": self.node_status(node)["conditions"]}},
                            content_type="application/strategic-merge-patch+json",
                        )
                except ApiError as e:
                    if e.status == 404:
                        self.log.warning("node %s is gone; not re-registering it", node)
                    else:
                        self.log.warning("heartbeat for %s failed: %s", node, e)
                except Exception as e:
                    self.log.warning("heartbeat for %s failed: %r", node, e)
            if status_due:
                last_status = time.monotonic()

    async def nodes(self) -> list[dict[str, Any]]:
        # Always fresh: like kube-scheduler, never bind to a node cordoned a moment ago.
        data = await self.req("GET", "/api/v1/nodes")
        items = [n for n in data.get("items", []) if n["metadata"]["name"] in self.node_index]
        self.nodes_cache = (time.monotonic(), items)
        return items

    # -------------------------------------------------------------------- pod watch
    async def watch_pods(self) -> None:
        rv: str | None = None
        backoff = 0.2
        last_list = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() - last_list > RESYNC_SECONDS:
                    rv = None  # periodic relist: re-drives pods whose handling failed
                if rv is None:
                    last_list = time.monotonic()
                    data = await self.req("GET", "/api/v1/pods", request_timeout=60)
                    rv = data["metadata"]["resourceVersion"]
                    seen = set()
                    for pod in data.get("items", []):
                        seen.add(pod["metadata"]["uid"])
                        self.on_pod("ADDED", pod)
                    for uid in list(self.runs):
                        if uid not in seen:
                            self.on_pod_gone(uid)
                rv = await self.watch_once(rv)
                backoff = 0.2
            except ApiError as e:
                if e.status == 410:
                    self.log.info("watch expired (410); relisting")
                else:
                    self.log.warning("pod watch error: %s", e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5)
                rv = None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.warning("pod watch error: %r; relisting", e)
                rv = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5)

    async def watch_once(self, rv: str) -> str:
        query = [("watch", "true"), ("resourceVersion", rv), ("allowWatchBookmarks", "true"), ("timeoutSeconds", "60")]
        r = await self.api.call_api(
            "/api/v1/pods",
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        )
        try:
            if r.status != 200:
                raise ApiError(r.status, (await r.read()).decode(errors="replace"))
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    typ, obj = ev.get("type"), ev.get("object") or {}
                    if typ == "ERROR":
                        raise ApiError(int(obj.get("code") or 500), json.dumps(obj))
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = new_rv
                    if typ in ("ADDED", "MODIFIED", "DELETED"):
                        self.on_pod(typ, obj)
        finally:
            r.release()
        return rv

    def on_pod_gone(self, uid: str) -> None:
        self.pod_node.pop(uid, None)
        run = self.runs.pop(uid, None)
        self.deleting.discard(uid)
        if run and self.live_procs(run):
            self.log.info("pod %s/%s vanished; killing its process", run.namespace, run.name)
            run.deleting = True
            self.kill(run, signal.SIGKILL)

    def on_pod(self, typ: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if typ == "DELETED":
            self.on_pod_gone(uid)
            self.busy.discard(uid)
            return
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        node = spec.get("nodeName")
        if meta.get("deletionTimestamp"):
            if uid in self.deleting or (node and node not in self.node_index):
                return
            self.deleting.add(uid)
            self.spawn(self.finish_deletion(pod), f"delete {meta['namespace']}/{meta['name']}")
            return
        if not node:
            if spec.get("schedulerName", "default-scheduler") != "default-scheduler" or uid in self.busy:
                return
            self.busy.add(uid)
            self.spawn(self.schedule(pod), f"schedule {meta['namespace']}/{meta['name']}")
            return
        if node not in self.node_index or uid in self.runs:
            return
        phase = status.get("phase", "Pending")
        if phase in ("Succeeded", "Failed"):
            self.pod_node.pop(uid, None)
            return
        self.pod_node[uid] = node
        job = is_job_pod(pod)
        service = not job and self.runs_from_image(pod)
        run = _PodRun(
            uid=uid,
            namespace=meta["namespace"],
            name=meta["name"],
            node=node,
            job=job,
            pod_ip=status.get("podIP") or (self.alloc_loopback_ip(node) if service else self.alloc_pod_ip(node)),
        )
        self.runs[uid] = run
        if phase == "Running" and not job and not service:
            return  # already running (e.g. simulator restarted): nothing to do
        if phase == "Running" and job:
            run.task = self.spawn(self.fail_orphaned(pod), f"orphan {run.namespace}/{run.name}")
            return
        what = f"{'job' if job else 'pod'} {run.namespace}/{run.name}"
        if service:
            run.task = self.spawn(self.run_service_pod(pod, run), what)
            return
        run.task = self.spawn(self.run_job_pod(pod, run) if job else self.mark_running(pod, run), what)

    # ------------------------------------------------------------------- scheduling
    async def schedule(self, pod: dict[str, Any]) -> None:
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        reported = False
        try:
            while not self.stopping.is_set():
                try:
                    nodes = await self.nodes()
                except Exception as e:
                    self.log.warning("listing nodes failed, will retry: %r", e)
                    await asyncio.sleep(1.0)
                    continue
                load = {n: 0 for n in self.node_index}
                for assigned in self.pod_node.values():
                    load[assigned] = load.get(assigned, 0) + 1
                reasons: list[str] = []
                fits: list[str] = []
                for node_obj in nodes:
                    why = node_fits(pod, node_obj)
                    if why is None:
                        fits.append(node_obj["metadata"]["name"])
                    else:
                        reasons.append(f"{node_obj['metadata']['name']}: {why}")
                if fits:
                    target = min(fits, key=lambda n: (load.get(n, 0), self.node_index[n]))
                    body = {
                        "apiVersion": "v1",
                        "kind": "Binding",
                        "metadata": {"name": name, "namespace": ns, "uid": uid},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": target},
                    }
                    self.pod_node[uid] = target  # reserve before awaiting: concurrent binds spread
                    try:
                        await self.req("POST", f"/api/v1/namespaces/{ns}/pods/{quote(name)}/binding", body)
                        self.log.info("bound %s/%s to %s", ns, name, target)
                    except ApiError as e:
                        self.pod_node.pop(uid, None)
                        if e.status in (404, 409) or "NamespaceTerminating" in e.body:
                            self.log.info("binding %s/%s: %s", ns, name, e)
                            return
                        self.log.warning("binding %s/%s failed, will retry: %s", ns, name, e)
                    except (TimeoutError, aiohttp.ClientError) as e:
                        self.pod_node.pop(uid, None)
                        self.log.warning("binding %s/%s failed, will retry: %r", ns, name, e)
                    except BaseException:
                        self.pod_node.pop(uid, None)
                        raise
                    else:
                        return
                elif not reported:
                    reported = True
                    msg = f"0/{len(nodes)} nodes are available: " + "; ".join(reasons or ["no simulated nodes"])
                    self.log.info("cannot schedule %s/%s: %s", ns, name, msg)
                    with contextlib.suppress(ApiError):
                        await self.patch_status(
                            ns,
                            name,
                            {
                                "conditions": [
                                    {
                                        "type": "PodScheduled",
                                        "status": "False",
                                        "reason": "Unschedulable",
                                        "message": msg,
                                        "lastTransitionTime": _now(),
                                    }
                                ]
                            },
                        )
                await asyncio.sleep(1.0)
                try:
                    pod = await self.req("GET", f"/api/v1/namespaces/{ns}/pods/{quote(name)}")
                except ApiError as e:
                    if e.status == 404:
                        return
                    self.log.warning("re-reading pending pod %s/%s failed: %s", ns, name, e)
                    continue
                except Exception as e:
                    self.log.warning("re-reading pending pod %s/%s failed: %r", ns, name, e)
                    continue
                if (
                    pod["metadata"]["uid"] != uid
                    or pod["spec"].get("nodeName")
                    or pod["metadata"].get("deletionTimestamp")
                ):
                    return
        finally:
            self.busy.discard(uid)

    # ----------------------------------------------------------------------- status
    async def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        await self.req(
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/{quote(name)}/status",
            {"status": status},
            content_type="application/strategic-merge-patch+json",
        )

    def _conditions(self, ready: bool, reason: str | None = None) -> list[dict[str, Any]]:
        now = _now()
        out = []
        for t, s in (
            ("PodReadyToStartContainers", True),
            ("Initialized", True),
            ("PodScheduled", True),
            ("ContainersReady", ready),
            ("Ready", ready),
        ):
            c: dict[str, Any] = {"type": t, "status": "True" if s else "False", "lastTransitionTime": now}
            if not s and reason:
                c["reason"] = reason
            out.append(c)
        return out

    def _running_status(
        self,
        pod: dict[str, Any],
        run: _PodRun,
        started: str,
        restarts: int = 0,
        last_state: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        spec = pod["spec"]
        cstat = []
        for c in spec.get("containers", []):
            cs = {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": f"sim://{c.get('image', '')}",
                "containerID": f"sim://{run.uid[:8]}-{c['name']}",
                "ready": True,
                "started": True,
                "restartCount": restarts,
                "state": {"running": {"startedAt": started}},
            }
            if last_state:
                cs["lastState"] = last_state
            cstat.append(cs)
        status: dict[str, Any] = {
            "phase": "Running",
            "conditions": self._conditions(True),
            "hostIP": self.node_ip(run.node),
            "hostIPs": [{"ip": self.node_ip(run.node)}],
            "podIP": run.pod_ip,
            "podIPs": [{"ip": run.pod_ip}],
            "startTime": pod.get("status", {}).get("startTime") or started,
            "containerStatuses": cstat,
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": f"sim://{c.get('image', '')}",
                    "containerID": f"sim://{run.uid[:8]}-{c['name']}",
                    "ready": True,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": started,
                            "finishedAt": started,
                        }
                    },
                }
                for c in spec["initContainers"]
            ]
        return status

    async def mark_running(self, pod: dict[str, Any], run: _PodRun) -> None:
        ns, name = run.namespace, run.name
        status = self._running_status(pod, run, _now())
        try:
            if await self.until_taken(f"pod {ns}/{name}: Running status",
                                      lambda: self.patch_status(ns, name, status), run):
                self.log.info("pod %s/%s Running on %s (%s)", ns, name, run.node, run.pod_ip)
        except ApiError as e:
            if e.status != 404:
                raise

    async def fail_orphaned(self, pod: dict[str, Any]) -> None:
        """A Job pod that was Running before this simulator started has no process."""
        uid = pod["metadata"]["uid"]
        run = self.runs[uid]
        await self.report_terminated(pod, run, 137, "Error", "kexec node simulator restarted; process lost", _now())

    # ------------------------------------------------------------------ job pods
    async def resolve_env(self, pod: dict[str, Any], c: dict[str, Any], run: _PodRun) -> dict[str, str]:
        ns = run.namespace
        meta, spec = pod["metadata"], pod["spec"]
        env: dict[str, str] = {}
        cache: dict[tuple[str, str], dict[str, str] | None] = {}

        async def source(kind: str, name: str) -> dict[str, str] | None:
            key = (kind, name)
            if key not in cache:
                try:
                    obj = await self.req("GET", f"/api/v1/namespaces/{ns}/{kind}/{quote(name)}")
                except ApiError as e:
                    if e.status != 404:
                        raise
                    cache[key] = None
                else:
                    if kind == "secrets":
                        data = {
                            k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()
                        }
                    else:
                        data = dict(obj.get("data") or {})
                    cache[key] = data
            return cache[key]

        for ef in c.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            for kind, ref in (("configmaps", ef.get("configMapRef")), ("secrets", ef.get("secretRef"))):
                if not ref:
                    continue
                data = await source(kind, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise LookupError(f'{kind[:-1]} "{ref["name"]}" not found')
                for k, v in data.items():
                    env[prefix + k] = v
        for e in c.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand_vars(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                path = vf["fieldRef"]["fieldPath"]
                m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
                if m:
                    env[name] = (meta.get(m.group(1)) or {}).get(m.group(2), "")
                else:
                    env[name] = {
                        "metadata.name": meta["name"],
                        "metadata.namespace": ns,
                        "metadata.uid": meta["uid"],
                        "spec.nodeName": run.node,
                        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
                        "status.hostIP": self.node_ip(run.node),
                        "status.hostIPs": self.node_ip(run.node),
                        "status.podIP": run.pod_ip,
                        "status.podIPs": run.pod_ip,
                    }.get(path, "")
            elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                kind, ref = (
                    ("configmaps", vf["configMapKeyRef"])
                    if "configMapKeyRef" in vf
                    else ("secrets", vf["secretKeyRef"])
                )
                data = await source(kind, ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise LookupError(f'{kind[:-1]} "{ref["name"]}" key "{ref["key"]}" not found')
                env[name] = data[ref["key"]]
            elif "resourceFieldRef" in vf:
                env[name] = "0"
        return env

    async def pod_token(self, pod: dict[str, Any]) -> str | None:
        spec, meta = pod["spec"], pod["metadata"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        sa = spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        resp = await self.req("POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body)
        return str(resp["status"]["token"])

    def write_pod_kubeconfig(self, path: Path, ns: str, token: str | None) -> None:
        cluster: dict[str, Any] = {"server": self.server}
        if self.ca_data:
            cluster["certificate-authority-data"] = self.ca_data
        user: dict[str, Any] = {"token": token} if token else {}
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kexec-local", "cluster": cluster}],
            "users": [{"name": "pod", "user": user}],
            "contexts": [{"name": "pod", "context": {"cluster": "kexec-local", "user": "pod", "namespace": ns}}],
            "current-context": "pod",
        }
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        path.chmod(0o600)

    def base_env(self, pod: dict[str, Any], pod_dir: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.o.passthrough_env if k in os.environ}
        path_parts = [os.path.dirname(sys.executable)]
        if os.environ.get("KEXEC_BIN_DIR"):
            path_parts.append(os.environ["KEXEC_BIN_DIR"])
        path_parts.append(os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
        env["PATH"] = os.pathsep.join(path_parts)
        env["HOME"] = str(pod_dir)
        env["HOSTNAME"] = pod["metadata"]["name"]
        host, _, port = self.server.removeprefix("https://").removeprefix("http://").partition(":")
        env["KUBERNETES_SERVICE_HOST"] = host
        env["KUBERNETES_SERVICE_PORT"] = port or "443"
        return env

    async def run_job_pod(self, pod: dict[str, Any], run: _PodRun) -> None:
        ns, name = run.namespace, run.name
        spec = pod["spec"]
        c = spec["containers"][0]
        pod_dir = Path(tempfile.mkdtemp(prefix=f"{ns}_{name}_", dir=self.o.pods_dir))
        work = pod_dir / "work"
        work.mkdir()
        log_path = self.o.log_dir / "pods" / f"{ns}_{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        term_path = pod_dir / "termination-log"
        kubeconfig = pod_dir / "kubeconfig"

        # Resolve env + credentials; like kubelet, retry config errors while the pod exists.
        async def resolve() -> tuple[dict[str, str], dict[str, str], str | None]:
            container_env = await self.resolve_env(pod, c, run)
            return {**self.base_env(pod, pod_dir), **container_env}, container_env, await self.pod_token(pod)

        async def report(e: Exception) -> None:
            await self.patch_status(ns, name, {"containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}}]})

        prepared = await self.prepare(run, resolve, report)
        if prepared is None:
            return
        env, container_env, token = prepared
        image = self.o.images.get(image_runner.repository(c.get("image", "")))
        if image is not None:
            # A container of a known image runs from its root filesystem under bwrap, with the
            # in-cluster config (ServiceAccount files + KUBERNETES_SERVICE_*) instead of KUBECONFIG.
            argv = [expand_vars(a, container_env) for a in image.argv(c.get("command"), c.get("args"))]
            sa_dir = image_runner.write_service_account(
                pod_dir / "serviceaccount", token, base64.b64decode(self.ca_data or ""), ns)
            inside = {**container_env, "HOSTNAME": env["HOSTNAME"],
                      "KUBERNETES_SERVICE_HOST": env["KUBERNETES_SERVICE_HOST"],
                      "KUBERNETES_SERVICE_PORT": env["KUBERNETES_SERVICE_PORT"]}
            try:
                argv = image_runner.pod_sandbox_argv(
                    image, pod, c, argv, env=inside, termination_log=term_path,
                    service_account_dir=None if spec.get("automountServiceAccountToken") is False else sa_dir)
            except (OSError, ValueError) as e:
                await self.report_terminated(pod, run, 128, "StartError", f"kexec node simulator: {e}", _now())
                return
        else:
            self.write_pod_kubeconfig(kubeconfig, ns, token)
            env["KUBECONFIG"] = str(kubeconfig)
            env["KEXEC_TERMINATION_LOG"] = str(term_path)
            argv = [expand_vars(a, env) for a in (c.get("command") or []) + (c.get("args") or [])]
        if not argv or (image is None and not c.get("command")):
            await self.report_terminated(
                pod,
                run,
                128,
                "StartError",
                "kexec node simulator: container has no explicit command (image entrypoints are not supported)",
                _now(),
            )
            return

        restarts = 0
        last_state: dict[str, Any] | None = None
        deadline = spec.get("activeDeadlineSeconds")
        start_mono = time.monotonic()
        while True:
            started = _now()
            term_path.write_bytes(b"")
            running = self._running_status(pod, run, started, restarts, last_state)
            try:
                taken = await self.until_taken(f"pod {ns}/{name}: Running status",
                                               functools.partial(self.patch_status, ns, name, running), run)
            except ApiError as e:
                if e.status == 404:
                    return
                raise
            if not taken or run.deleting:
                return
            # small local file; blocking open is fine here
            with open(log_path, "ab") as logf:  # noqa: ASYNC230
                logf.write(f"# {started} exec {argv!r} (cwd {work})\n".encode())
                logf.flush()
                log_offset = logf.tell()  # FallbackToLogsOnError reads this run's output only
                try:
                    run.proc = await asyncio.create_subprocess_exec(
                        *argv,
                        cwd=str(work),
                        env=env,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=logf,
                        stderr=asyncio.subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=_pdeathsig,
                    )
                except OSError as e:
                    await self.report_terminated(
                        pod, run, 128, "StartError", f"failed to start {argv[0]!r}: {e}", started
                    )
                    return
            self.o.record_pid(run.proc.pid)
            shown = " ".join(argv)
            shown = shown if len(shown) <= 300 else shown[:300] + "..."
            self.log.info("pod %s/%s started pid %d on %s: %s", ns, name, run.proc.pid, run.node, shown)
            wait = asyncio.ensure_future(run.proc.wait())
            timeout = None
            if deadline is not None:
                timeout = max(0.0, float(deadline) - (time.monotonic() - start_mono))
            done, _ = await asyncio.wait({wait}, timeout=timeout)
            if not done:
                run.deadline_exceeded = True
                self.log.info("pod %s/%s exceeded activeDeadlineSeconds=%s", ns, name, deadline)
                self.kill(run, signal.SIGKILL)
                await wait
            rc = run.proc.returncode
            assert rc is not None
            code = 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N
            self.o.forget_pid(run.proc.pid)
            message = term_path.read_bytes()[:TERMINATION_MSG_MAX].decode(errors="replace")
            if not message and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                with contextlib.suppress(OSError):
                    lines = log_path.read_bytes()[log_offset:].splitlines()[-80:]
                    message = b"\n".join(lines)[-FALLBACK_LOG_MAX:].decode(errors="replace")
            self.log.info("pod %s/%s process exited with %d", ns, name, code)
            if run.deleting or self.stopping.is_set():
                # finish_deletion reports the final status
                run.last_exit = (code, message, started)
                run.finished.set()
                return
            if run.deadline_exceeded:
                await self.report_terminated(
                    pod,
                    run,
                    code,
                    "Error",
                    message,
                    started,
                    pod_reason="DeadlineExceeded",
                    pod_message="Pod was active on the node longer than the specified deadline",
                )
                return
            if code != 0 and spec.get("restartPolicy") == "OnFailure":
                restarts += 1
                last_state = {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Error",
                        "message": message,
                        "startedAt": started,
                        "finishedAt": _now(),
                        "containerID": f"sim://{run.uid[:8]}-{c['name']}",
                    }
                }
                backoff = min(10.0, 0.5 * (2 ** (restarts - 1)))
                self.log.info("pod %s/%s restarting in %.1fs (restart %d)", ns, name, backoff, restarts)
                waiting = {
                    "containerStatuses": [
                        {
                            "name": c["name"],
                            "restartCount": restarts,
                            "ready": False,
                            "started": False,
                            "lastState": last_state,
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        }
                    ]
                }
                try:
                    await self.until_taken(f"pod {ns}/{name}: CrashLoopBackOff status",
                                           functools.partial(self.patch_status, ns, name, waiting), run)
                except ApiError as e:
                    if e.status == 404:
                        return
                    raise
                await asyncio.sleep(backoff)
                if run.deleting or self.stopping.is_set():
                    run.finished.set()
                    return
                continue
            await self.report_terminated(
                pod, run, code, "Completed" if code == 0 else "Error", message, started, restarts=restarts
            )
            return

    async def report_terminated(
        self,
        pod: dict[str, Any],
        run: _PodRun,
        code: int,
        reason: str,
        message: str,
        started: str,
        restarts: int = 0,
        pod_reason: str | None = None,
        pod_message: str | None = None,
    ) -> None:
        ns, name = run.namespace, run.name
        finished = _now()
        spec = pod["spec"]
        cstat = []
        for i, c in enumerate(spec.get("containers", [])):
            term = {
                "exitCode": code if i == 0 else 0,
                "reason": reason if i == 0 else "Completed",
                "startedAt": started,
                "finishedAt": finished,
                "containerID": f"sim://{run.uid[:8]}-{c['name']}",
            }
            if i == 0 and message:
                term["message"] = message
            cstat.append(
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": f"sim://{c.get('image', '')}",
                    "containerID": term["containerID"],
                    "ready": False,
                    "started": False,
                    "restartCount": restarts if i == 0 else 0,
                    "state": {"terminated": term},
                }
            )
        phase = "Succeeded" if code == 0 and not pod_reason else "Failed"
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": self._conditions(False, "PodCompleted" if phase == "Succeeded" else "PodFailed"),
            "containerStatuses": cstat,
            "hostIP": self.node_ip(run.node),
            "podIP": run.pod_ip,
            "podIPs": [{"ip": run.pod_ip}],
            "startTime": (pod.get("status") or {}).get("startTime") or started,
        }
        if pod_reason:
            status["reason"] = pod_reason
            status["message"] = pod_message or ""
        self.pod_node.pop(run.uid, None)
        # Like the kubelet's status manager: the terminal status is retried until the API
        # server takes it (it may be restarting), the pod is gone, or the simulator stops —
        # a lost report would leave the pod Running and its Job unfinished forever. (Not
        # given up when the pod is being deleted: finish_deletion reports through here.)
        try:
            if await self.until_taken(f"pod {ns}/{name}: terminal status",
                                      lambda: self.patch_status(ns, name, status)):
                self.log.info("pod %s/%s %s (exit %d, %s)", ns, name, phase, code, reason)
        except ApiError as e:
            if e.status != 404:
                raise
        run.finished.set()

    @staticmethod
    def live_procs(run: _PodRun) -> list[asyncio.subprocess.Process]:
        procs = [run.proc, *run.procs.values()]
        return [p for p in procs if p is not None and p.returncode is None]

    def kill(self, run: _PodRun, sig: int) -> None:
        for p in self.live_procs(run):
            self.kill_proc(p, sig)

    @staticmethod
    def kill_proc(p: asyncio.subprocess.Process, sig: int) -> None:
        if sig != signal.SIGKILL and (inner := _sandboxed(p.pid)):
            # bwrap dies of SIGTERM at once and takes the container with it (--die-with-parent):
            # the container's own processes get the signal, as from a container runtime.
            for pid in inner:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            p.send_signal(sig)

    # -------------------------------------------------------------- service pods
    def runs_from_image(self, pod: dict[str, Any]) -> bool:
        """A long-running pod with a container of a known image: its containers run from
        their images (:meth:`run_service_pod`) instead of being marked Running."""
        containers = (pod.get("spec") or {}).get("containers") or []
        return any(image_runner.repository(c.get("image", "")) in self.o.images for c in containers)

    async def pod_volumes(self, pod: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
        """emptyDir, configMap and secret volumes as host directories (files 0644). A missing
        non-optional source raises LookupError (the kubelet retries)."""
        ns = pod["metadata"]["namespace"]
        out: dict[str, Path] = {}
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            path = pod_dir / "volumes" / vol["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in vol:
                path.chmod(0o777)
            elif "configMap" in vol or "secret" in vol:
                kind, ref = ("configmaps", vol["configMap"]) if "configMap" in vol else ("secrets", vol["secret"])
                name = ref.get("name") or ref.get("secretName", "")
                try:
                    obj = await self.req("GET", f"/api/v1/namespaces/{ns}/{kind}/{quote(name)}")
                except ApiError as e:
                    if e.status == 404 and ref.get("optional"):
                        continue
                    if e.status == 404:
                        raise LookupError(f'{kind[:-1]} "{name}" not found') from e
                    raise
                raw = obj.get("data") or {}
                files = {k: base64.b64decode(v) if kind == "secrets" else v.encode() for k, v in raw.items()}
                items = ref.get("items")
                selected = {i.get("path", i["key"]): files[i["key"]] for i in items if i["key"] in files} \
                    if items else files
                path.chmod(0o755)
                for rel, data in selected.items():
                    (path / rel).parent.mkdir(parents=True, exist_ok=True)
                    (path / rel).write_bytes(data)
                    (path / rel).chmod(0o644)
            else:
                continue  # other volume types are not simulated
            out[vol["name"]] = path
        return out

    async def prepare(self, run: _PodRun, resolve: Callable[[], Awaitable[T]],
                      report: Callable[[Exception], Awaitable[None]] | None = None) -> T | None:
        """What a container needs before it starts (env, token, volumes), retried like the
        kubelet's sync loop: through an API server outage every 1 s; a config error (a missing
        key, 403/404) reported with ``report`` and retried every 2 s while the pod exists.
        None once the pod is being deleted or the simulator stops."""
        ns, name = run.namespace, run.name
        while True:
            try:
                return await resolve()
            except (LookupError, ApiError, TimeoutError, aiohttp.ClientError) as e:
                if run.deleting or self.stopping.is_set():
                    return None
                if transient(e):  # the API server is away: like the kubelet, try again
                    self.log.warning("pod %s/%s: preparing the container: %r; retrying", ns, name, e)
                    await asyncio.sleep(1)
                    continue
                if isinstance(e, ApiError) and e.status not in (403, 404):
                    raise
                self.log.warning("pod %s/%s: CreateContainerConfigError: %s", ns, name, e)
                if report is not None:
                    with contextlib.suppress(ApiError):
                        await report(e)
                await asyncio.sleep(2)

    async def run_service_pod(self, pod: dict[str, Any], run: _PodRun) -> None:
        """Every container of a long-running pod runs (a known image from its root filesystem
        under bwrap; another image is only reported Running), restarted when it exits
        (restartPolicy Always) or fails its liveness probe; startup, readiness and liveness
        probes (httpGet, tcpSocket) decide ``ready``/``started`` and the pod's Ready condition."""
        ns, name = run.namespace, run.name
        spec = pod["spec"]
        pod_dir = Path(tempfile.mkdtemp(prefix=f"{ns}_{name}_", dir=self.o.pods_dir))
        (self.o.log_dir / "pods").mkdir(parents=True, exist_ok=True)
        async def resolve() -> tuple[str | None, Any, dict[str, Any]]:
            return (await self.pod_token(pod), await self.pod_volumes(pod, pod_dir),
                    {c["name"]: await self.resolve_env(pod, c, run) for c in spec.get("containers", [])})

        prepared = await self.prepare(run, resolve)
        if prepared is None:
            return
        token, volumes, envs = prepared
        sa_dir = None
        if spec.get("automountServiceAccountToken") is not False:
            sa_dir = image_runner.write_service_account(
                pod_dir / "serviceaccount", token, base64.b64decode(self.ca_data or ""), ns)

        async def refresh_token() -> None:  # as the kubelet renews projected tokens (1 h here)
            while sa_dir is not None:
                await asyncio.sleep(1800)
                with contextlib.suppress(ApiError, TimeoutError, aiohttp.ClientError):
                    image_runner.write_service_account(sa_dir, await self.pod_token(pod),
                                                       base64.b64decode(self.ca_data or ""), ns)
        started = _now()
        states: dict[str, dict[str, Any]] = {
            c["name"]: {"name": c["name"], "image": c.get("image", ""), "imageID": f"sim://{c.get('image', '')}",
                        "containerID": f"sim://{run.uid[:8]}-{c['name']}", "ready": False, "started": False,
                        "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
            for c in spec.get("containers", [])}
        lock = asyncio.Lock()

        async def publish() -> None:
            async with lock:
                ready = all(st["ready"] for st in states.values())
                status = self._running_status(pod, run, started)
                status["conditions"] = self._conditions(ready, None if ready else "ContainersNotReady")
                status["containerStatuses"] = [dict(st) for st in states.values()]
                with contextlib.suppress(ApiError):
                    await self.patch_status(ns, name, status)

        async def container(c: dict[str, Any]) -> None:
            st = states[c["name"]]
            image = self.o.images.get(image_runner.repository(c.get("image", "")))
            if image is None:  # not a known image: reported running, as other pods are
                st.update(ready=True, started=True, state={"running": {"startedAt": started}})
                await publish()
                return
            env = envs[c["name"]]
            inside = {**env, "HOSTNAME": name, **{k: v for k, v in self.base_env(pod, pod_dir).items()
                                                   if k.startswith("KUBERNETES_SERVICE_")}}
            argv = [expand_vars(a, env) for a in image.argv(c.get("command"), c.get("args"))]
            term = pod_dir / f"termination-log-{c['name']}"
            log_path = self.o.log_dir / "pods" / f"{ns}_{name}_{c['name']}.log"
            grace = float(spec.get("terminationGracePeriodSeconds", 30))
            while not (run.deleting or self.stopping.is_set()):
                try:
                    cmd = image_runner.pod_sandbox_argv(image, pod, c, argv, env=inside, termination_log=term,
                                                        service_account_dir=sa_dir, volumes=volumes)
                except (OSError, ValueError) as e:
                    st["state"] = {"waiting": {"reason": "CreateContainerError", "message": str(e)}}
                    await publish()
                    return
                t0 = _now()
                with open(log_path, "ab") as logf:  # noqa: ASYNC230 (small local file)
                    logf.write(f"# {t0} exec {argv!r}\n".encode())
                    logf.flush()
                    proc = await asyncio.create_subprocess_exec(
                        *cmd, cwd=str(pod_dir), stdin=asyncio.subprocess.DEVNULL, stdout=logf,
                        stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=_pdeathsig)
                run.procs[c["name"]] = proc
                self.o.record_pid(proc.pid)
                self.log.info("pod %s/%s container %s started pid %d at %s", ns, name, c["name"], proc.pid,
                              run.pod_ip)
                st.update(ready=False, started=False, state={"running": {"startedAt": t0}})
                await publish()
                probes = asyncio.ensure_future(self.probe_container(c, run, st, publish, proc, grace))
                try:
                    await proc.wait()
                finally:
                    probes.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.gather(probes, return_exceptions=True)
                self.o.forget_pid(proc.pid)
                rc = proc.returncode or 0
                code = 128 - rc if rc < 0 else rc
                self.log.info("pod %s/%s container %s exited with %d", ns, name, c["name"], code)
                if run.deleting or self.stopping.is_set():
                    return
                st["restartCount"] += 1
                st["lastState"] = {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed",
                                                  "startedAt": t0, "finishedAt": _now(),
                                                  "containerID": st["containerID"]}}
                st.update(ready=False, started=False, state={"waiting": {"reason": "CrashLoopBackOff"}})
                await publish()
                await asyncio.sleep(min(10.0, 0.5 * 2 ** (st["restartCount"] - 1)))

        refresher = asyncio.ensure_future(refresh_token())
        try:
            await asyncio.gather(*(container(c) for c in spec.get("containers", [])))
        finally:
            refresher.cancel()

    async def probe_container(self, c: dict[str, Any], run: _PodRun, st: dict[str, Any],
                              publish: Any, proc: asyncio.subprocess.Process, grace: float) -> None:
        """The kubelet's probes for one running container: startup first (liveness and
        readiness wait for it), readiness sets ``ready``, liveness failing ``failureThreshold``
        times in a row restarts the container (SIGTERM, SIGKILL after the grace period)."""
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}

        async def probe_once(probe: dict[str, Any]) -> bool:
            timeout = float(probe.get("timeoutSeconds", 1))
            for kind in ("httpGet", "tcpSocket"):
                if kind not in probe:
                    continue
                action = probe[kind]
                port = action.get("port")
                port = ports.get(port, port) if isinstance(port, str) and not port.isdigit() else int(port)
                host = action.get("host") or run.pod_ip
                try:
                    if kind == "tcpSocket":
                        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                        writer.close()
                        return True
                    url = f"{action.get('scheme', 'HTTP').lower()}://{host}:{port}{action.get('path', '/')}"
                    async with aiohttp.ClientSession() as session, session.get(
                            url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                        return 200 <= resp.status < 400
                except (OSError, TimeoutError, aiohttp.ClientError):
                    return False
            return True  # exec and grpc probes are not simulated: they pass

        async def run_probe(probe: dict[str, Any], on_result: Any, until_success: bool = False) -> None:
            await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
            period = float(probe.get("periodSeconds", 10))
            fails = succ = 0
            while True:
                ok = await probe_once(probe)
                fails, succ = (0, succ + 1) if ok else (fails + 1, 0)
                if ok and succ >= int(probe.get("successThreshold", 1)):
                    await on_result(True)
                    if until_success:
                        return
                elif not ok and fails >= int(probe.get("failureThreshold", 3)):
                    await on_result(False)
                await asyncio.sleep(period)

        async def set_ready(ok: bool) -> None:
            if st["ready"] != ok:
                st["ready"] = ok
                await publish()

        async def live(ok: bool) -> None:
            if ok or proc.returncode is not None:
                return
            self.log.info("pod %s/%s container %s failed its liveness probe; restarting",
                          run.namespace, run.name, c["name"])
            self.kill_proc(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                self.kill_proc(proc, signal.SIGKILL)
            raise asyncio.CancelledError

        startup = c.get("startupProbe")
        if startup:
            async def started(ok: bool) -> None:
                if not ok:
                    await live(False)
            await run_probe(startup, started, until_success=True)
        st["started"] = True
        tasks = []
        if c.get("readinessProbe"):
            tasks.append(asyncio.ensure_future(run_probe(c["readinessProbe"], set_ready)))
        else:
            await set_ready(True)
        if c.get("livenessProbe"):
            tasks.append(asyncio.ensure_future(run_probe(c["livenessProbe"], live)))
        await publish()
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    # ------------------------------------------------------------------- deletion
    async def finish_deletion(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        run = self.runs.get(uid)
        if run is not None:
            run.deleting = True
            if run.proc is not None and run.proc.returncode is None:
                grace = meta.get("deletionGracePeriodSeconds")
                grace = 30 if grace is None else int(grace)
                grace = min(grace, self.o.max_grace_seconds)
                self.kill(run, signal.SIGTERM)
                try:
                    await asyncio.wait_for(run.proc.wait(), timeout=max(grace, 0.1))
                except TimeoutError:
                    self.kill(run, signal.SIGKILL)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(run.proc.wait(), timeout=5)
                # let run_job_pod record the exit
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(run.finished.wait(), timeout=2)
                last = run.last_exit
                phase = (pod.get("status") or {}).get("phase")
                if last and phase not in ("Succeeded", "Failed"):
                    code, message, started = last
                    await self.report_terminated(
                        pod, run, code, "Completed" if code == 0 else "Error", message, started
                    )
            elif run.procs:  # a service pod: its containers stop together
                grace = meta.get("deletionGracePeriodSeconds")
                grace = min(30 if grace is None else int(grace), self.o.max_grace_seconds)
                self.kill(run, signal.SIGTERM)
                procs = self.live_procs(run)
                if procs:
                    _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                                    timeout=max(grace, 0.1))
                    if pending:
                        self.kill(run, signal.SIGKILL)
                        await asyncio.wait(pending, timeout=5)
                if run.task is not None and not run.task.done():
                    run.task.cancel()
            elif run.task is not None and not run.task.done() and (run.job or not run.procs):
                run.task.cancel()
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            if await self.until_taken(f"deleting pod {ns}/{name}",
                                      lambda: self.req("DELETE", f"/api/v1/namespaces/{ns}/pods/{quote(name)}", body)):
                self.log.info("deleted pod %s/%s (grace 0)", ns, name)
        except ApiError as e:
            if e.status not in (404, 409):
                raise

    # --------------------------------------------------------------------- shutdown
    async def shutdown(self) -> None:
        self.stopping.set()
        for run in list(self.runs.values()):
            run.deleting = True
            self.kill(run, signal.SIGKILL)
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)


class NodeSimulator:
    """Fake kubelets + scheduler for the local control plane (see module docstring)."""

    def __init__(
        self,
        kubeconfig: str | Path,
        nodes: int | Iterable[str] = 3,
        node_prefix: str = "sim-node-",
        log_dir: str | Path | None = None,
        work_dir: str | Path | None = None,
        cpu: str = "16",
        memory: str = "64Gi",
        max_pods: int = 110,
        node_labels: dict[str, str] | None = None,
        lease_interval: float = 10.0,
        max_grace_seconds: float = 30.0,
        passthrough_env: Iterable[str] = DEFAULT_PASSTHROUGH_ENV,
        kubelet_version: str = "v1.37.2",
        images: Mapping[str, str | Path | image_runner.Image] | None = None,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        # Image repository name -> unpacked root filesystem (or an Image): Job pods and
        # long-running pods of these images run from the image under bwrap
        # (devstack/image_runner.py); other Job pods run their command locally.
        self.images = {name: root if isinstance(root, image_runner.Image) else image_runner.Image.load(root)
                       for name, root in (images or {}).items()}
        if isinstance(nodes, int):
            self.node_names = [f"{node_prefix}{i}" for i in range(1, nodes + 1)]
        else:
            self.node_names = list(nodes)
        base = Path(log_dir) if log_dir else self.kubeconfig.parent / "logs"
        self.log_dir = base
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(work_dir) if work_dir else self.kubeconfig.parent / "sim"
        self.pods_dir = self.work_dir / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.cpu, self.memory, self.max_pods = cpu, memory, max_pods
        self.node_labels = dict(node_labels or {})
        self.lease_interval = lease_interval
        self.max_grace_seconds = max_grace_seconds
        self.passthrough_env = tuple(passthrough_env)
        self.kubelet_version = kubelet_version

        self.log = logging.getLogger(f"kexec.simulator.{id(self):x}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._handler = logging.FileHandler(self.log_dir / "simulator.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._handler)

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sim: _Sim | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._pids: set[int] = set()
        self._pid_lock = threading.Lock()

    # pid bookkeeping for stale-process cleanup by ControlPlane
    def record_pid(self, pid: int) -> None:
        with self._pid_lock:
            self._pids.add(pid)
            self._write_pids()

    def forget_pid(self, pid: int) -> None:
        with self._pid_lock:
            self._pids.discard(pid)
            self._write_pids()

    def _write_pids(self) -> None:
        with contextlib.suppress(OSError):
            (self.work_dir / "pids").write_text("\n".join(str(p) for p in sorted(self._pids)))

    def __enter__(self) -> NodeSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> NodeSimulator:
        if self._thread is not None:
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._thread_main, name="kexec-node-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"node simulator did not become ready in {timeout}s; see {self.log_dir}/simulator.log")
        if self._error is not None:
            err = self._error
            self.stop()
            raise RuntimeError(f"node simulator failed to start: {err!r}") from err
        register_cleanup(id(self), self.stop)
        self.log.info("simulator ready with nodes %s", self.node_names)
        print(
            f"[kexec-simulator] {len(self.node_names)} nodes Ready; log {self.log_dir / 'simulator.log'}",
            file=sys.stderr,
            flush=True,
        )
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:
            if not self._ready.is_set():
                self._error = e
            self.log.exception("simulator loop crashed")
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        api = await k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        sim = _Sim(self, api)
        self._sim = sim
        try:
            for node in self.node_names:
                await sim.register_node(node)
            hb = asyncio.create_task(sim.heartbeat_loop())
            watch = asyncio.create_task(sim.watch_pods())
            self._ready.set()
            await sim.stopping.wait()
            await sim.shutdown()
            for t in (hb, watch):
                t.cancel()
            await asyncio.gather(hb, watch, return_exceptions=True)
        finally:
            await api.close()

    def stop(self, timeout: float = 15.0) -> None:
        unregister_cleanup(id(self))
        t, loop, sim = self._thread, self._loop, self._sim
        if t is None:
            return
        if loop is not None and sim is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(sim.stopping.set)
        t.join(timeout)
        # belt and braces: anything still alive dies now
        with self._pid_lock:
            pids = list(self._pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self._thread = None
        self._loop = None
        self._sim = None
        self.log.info("simulator stopped")
        self.log.removeHandler(self._handler)
        self._handler.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run the kexec node simulator against a cluster")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--log-dir", default=None)
    args = ap.parse_args(argv)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    sim = NodeSimulator(args.kubeconfig, nodes=args.nodes, log_dir=args.log_dir).start()
    try:
        stop.wait()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
