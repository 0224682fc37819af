"""`kexec controller`: list/watch executions and their Jobs, reconcile them.

Only the leader (a Lease) reconciles; a standby keeps its caches warm and is
ready to take over. Work is per execution key: one worker per key at a time,
parallel across keys, exponential backoff on errors. SIGTERM stops taking
work, lets in-flight steps finish, flushes the audit outbox and releases the
Lease so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from kexec.adapters.kubernetes.jobs import lean_job, lean_pod
from kexec.adapters.kubernetes.wire import cached_execution, execution_of
from kexec.adapters.metrics import (
    ActiveExecutions,
    QueuedExecutions,
    controller_gauges,
    phases_of,
)
from kexec.application.ports.cluster import Conflict, NotFound
from kexec.application.reconcile import ReconcileExecution
from kexec.application.step import log_fields
from kexec.domain.execution import FINALIZER, GROUP, PLURAL, VERSION, Execution
from kexec.domain.naming import CONTROLLER_NAMESPACE
from kexec.entrypoints.cli_logging import log_context
from kexec.entrypoints.container import Container, build_container, start_resources, stop_resources
from kexec.runtime.informer import Informer, drop_managed_fields, object_key
from kexec.runtime.metrics import make_registry
from kexec.runtime.workqueue import WorkQueue, run_workers

log = logging.getLogger("kexec.controller")
JOB_SELECTOR = "app.kubernetes.io/managed-by=kexec"
KILL_SWITCH = "kexec-config"  # the ConfigMap whose data.paused pauses new executions


@dataclass
class ControllerConfig:
    kubeconfig: str | None = None
    namespace: str = CONTROLLER_NAMESPACE
    trusted_namespaces: str = CONTROLLER_NAMESPACE
    workers: int = 8
    image: str = "kexec:latest"
    runner_command: list[str] = field(default_factory=lambda: ["kexec", "runner"])
    audit_dsn: str = ""
    policy_engine: str = "embedded"
    opa_url: str = "http://127.0.0.1:8181"
    policy_dir: str = ""
    leader_elect: bool = True
    lease_name: str = "kexec-controller"
    identity: str = ""
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090  # == http_port on the same host: one server for both
    metrics_token_file: str = ""
    approval_timeout: int = 3600
    allow_self_approval: bool = False


class Controller:
    def __init__(self, cfg: ControllerConfig, container: Container,
                 registry: CollectorRegistry) -> None:
        self.cfg = cfg
        self.container = container
        self.registry = registry
        self.queue: WorkQueue[str] = WorkQueue("executions", registry=registry)
        self.executions: Informer | None = None
        self.jobs: Informer | None = None
        self.nodes: Informer | None = None
        self.pods: Informer | None = None
        self.namespaces: Informer | None = None
        self.config: Informer | None = None
        self.reconcile: ReconcileExecution | None = None
        self.written: dict[str, str] = {}  # key → resourceVersion of our last write
        self.active: dict[str, Execution] = {}  # the cached executions not terminal
        self.releasing: dict[str, str] = {}  # uid → key: ended, the audit trail unconfirmed
        self.leading = asyncio.Event()
        self.stopping = asyncio.Event()
        self.reconciles = Counter("kexec_reconcile_total", "Reconcile steps",
                                  ["result"], registry=registry)
        self.step_seconds = Histogram("kexec_reconcile_seconds",
                                      "Duration of one reconcile step, by the phase it started in",
                                      ["phase"], registry=registry,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1,
                                               2.5))
        self.leader_gauge = controller_gauges(registry)

    # --- event plumbing ---------------------------------------------------------------
    def _on_execution(self, type_: str, obj: dict[str, Any]) -> None:
        key, ex = object_key(obj), execution_of(obj)
        if type_ == "DELETED" or ex.terminal:
            self.active.pop(key, None)
        else:
            self.active[key] = ex
        if not _settled(ex):
            self.queue.add(key)
        if type_ == "DELETED":
            self.written.pop(key, None)
            self.releasing.pop(ex.uid, None)
            if self.reconcile is not None:
                self.reconcile.limits.ended(ex)

    def _confirmed(self, uid: str) -> None:
        """The audit store confirmed an execution's trail: one waiting to drop its
        finalizer goes on now (not at its next recheck)."""
        if (key := self.releasing.pop(uid, None)) is not None:
            self.queue.add(key)

    def _wake(self, freed: Execution) -> None:
        """A slot freed (or a place in a queue): requeue the executions waiting behind it
        (the head of each queue only, no polling storm)."""
        if self.reconcile is not None:
            for key in self.reconcile.limits.behind(freed):
                self.queue.add(key)

    def _on_job(self, type_: str, obj: dict[str, Any]) -> None:
        # An execution waits for its Job's end (or loss) only: a pod starting, becoming ready
        # or being counted changes nothing it acts on (attempts are read at the end), and
        # its deadline is a timer of its own.
        # Nor does anything about the Job of an execution that is not Executing (the Job's
        # later updates, its deletion by TTL): the write that makes it Executing wakes it
        # and reads the Job from the cache then.
        if type_ != "DELETED" and not _job_finished(obj):
            return
        meta = obj.get("metadata") or {}
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "KubernetesExecution" and ref.get("controller"):
                key = f"{meta.get('namespace')}/{ref.get('name')}"
                cached = self.executions.get(key) if self.executions is not None else None
                if self.executions is None or (
                        ((cached or {}).get("status") or {}).get("phase") == "Executing"):
                    self.queue.add(key)

    # --- the work -----------------------------------------------------------------------
    async def handle(self, key: str) -> float | None:
        assert self.executions is not None and self.reconcile is not None
        if not self.leading.is_set():
            return None  # a standby never acts; the new leader resyncs everything
        obj = self.executions.get(key)
        if obj is None:
            return None
        execution = execution_of(obj)
        if _settled(execution):
            return None  # e.g. queued by the event of the status write that ended it
        if _older(execution.resource_version, self.written.get(key)):
            # Our cache lags our own last write: acting on it would earn a 409. That write's
            # watch event (or a re-list's replay of it) brings the key back.
            return None
        phase = execution.phase.value if execution.phase else "New"
        with self.step_seconds.labels(phase).time(), log_context(**log_fields(execution),
                                                                 step=phase):
            try:
                result = await self.reconcile(execution)
            except Conflict:
                # Our cache is behind our own write: the watch event brings the fresh one.
                self.reconciles.labels("conflict").inc()
                return 0.5
            except NotFound:
                self.reconciles.labels("gone").inc()
                return None
            except Exception:
                self.reconciles.labels("error").inc()
                raise
        self.reconciles.labels("ok").inc()
        if result.requeue_after and (execution.terminal or execution.deleting):
            self.releasing[execution.uid] = key  # the audit outbox wakes it (_confirmed)
        else:
            self.releasing.pop(execution.uid, None)  # released (e.g. by its recheck)
        if result.wrote and result.resource_version:
            self.written[key] = result.resource_version
        else:
            self.written.pop(key, None)
        if result.wrote and not result.requeue_after:
            # The watch event of our own write brings the next step (a re-list after a
            # broken watch replays it as MODIFIED): no timer that would only find it done.
            return None
        return result.requeue_after

    async def on_started_leading(self) -> None:
        log.info("leading as %s: replaying audit and resyncing", self.cfg.identity)
        assert self.executions is not None and self.reconcile is not None
        # Nothing lost: re-send every execution's transitions (idempotent), then work.
        for obj in list(self.executions.cache.values()):
            await self.reconcile.record_audit(execution_of(obj))
        # Zero standing privilege: remove bindings a crashed leader left behind.
        try:
            removed = await self.reconcile.collect_garbage()
            if removed:
                log.info("removed %d per-action bindings no execution needs", removed)
        except Exception as exc:  # best effort: the next release removes them too
            log.warning("binding clean-up failed: %s", exc)
        self.leading.set()
        self.leader_gauge.set(1)
        for key in list(self.executions.cache):
            self.queue.add(key)

    def on_stopped_leading(self) -> None:
        log.warning("lost leadership; stopping work")
        self.leading.clear()
        self.leader_gauge.set(0)
        self.stopping.set()

    # --- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        api = await resolve(self.container.api())
        # Every fact a reconcile reads, watched (no GET per execution); each cache keeps only
        # what is read of its objects.
        lean = drop_managed_fields
        self.executions = Informer(api, GROUP, VERSION, PLURAL, on_event=self._on_execution,
                                   name="executions", transform=cached_execution)
        self.jobs = Informer(api, "batch", "v1", "jobs", label_selector=JOB_SELECTOR,
                             on_event=self._on_job, name="jobs", transform=lean_job)
        self.nodes = Informer(api, "", "v1", "nodes", name="nodes", transform=lean)
        self.pods = Informer(api, "", "v1", "pods", label_selector=JOB_SELECTOR, name="job pods",
                             transform=lean_pod)
        self.namespaces = Informer(api, "", "v1", "namespaces", name="namespaces", transform=lean)
        self.config = Informer(api, "", "v1", "configmaps", namespace=self.cfg.namespace,
                               field_selector=f"metadata.name={KILL_SWITCH}",
                               name="kill switch", transform=lean)
        informers = (self.executions, self.jobs, self.nodes, self.pods, self.namespaces,
                     self.config)
        executions, nodes, active = self.executions, self.nodes, self.active
        self.registry.register(ActiveExecutions(lambda: phases_of(executions.cache.values())))
        self.container.config.execution_cache.from_value(
            lambda only_active: active.values() if only_active
            else map(execution_of, executions.cache.values()))
        self.container.config.node_cache.from_value(lambda: list(nodes.cache.values()))
        # (functions, not bound methods: the configuration deep-copies what it is given)
        jobs, pods, namespaces, config = self.jobs, self.pods, self.namespaces, self.config
        kill_switch = f"{self.cfg.namespace}/{KILL_SWITCH}"
        self.container.config.job_cache.from_value(lambda key: jobs.cache.get(key))
        self.container.config.pod_cache.from_value(lambda: list(pods.cache.values()))
        self.container.config.namespace_cache.from_value(lambda name: namespaces.cache.get(name))
        self.container.config.config_cache.from_value(lambda: config.cache.get(kill_switch))
        self.reconcile = await resolve(self.container.reconcile())
        limits = self.reconcile.limits
        self.registry.register(QueuedExecutions(limits.queued_by_limit))
        self.reconcile.limits.on_free = self._wake
        audit = await resolve(self.container.audit())
        if hasattr(audit, "on_confirmed"):
            audit.on_confirmed = self._confirmed
        await self._migrate()
        await audit.start()
        policy_source = await self._watch_policy(api)
        for informer in informers:
            informer.start()
        http = await self._serve_http(api)
        workers = asyncio.create_task(run_workers(self.queue, self.handle, self.cfg.workers,
                                                  logger=log))
        elector = None
        try:
            for informer in informers:
                await informer.wait_synced()
            if self.cfg.leader_elect:
                from kexec.runtime.leader import LeaderElector

                elector = LeaderElector(api, self.cfg.namespace, self.cfg.lease_name,
                                        self.cfg.identity)
                lead = asyncio.create_task(elector.run(self.on_started_leading,
                                                       self.on_stopped_leading))
                await self.stopping.wait()
                lead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lead
            else:
                await self.on_started_leading()
                await self.stopping.wait()
        finally:
            log.info("shutting down: finishing in-flight work")
            self.leading.clear()
            self.queue.shutdown()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(workers, 30)
            if elector is not None:
                with contextlib.suppress(Exception):
                    await elector.release()
            for informer in informers:
                await informer.stop()
            if policy_source is not None:
                policy_source.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await policy_source
            with contextlib.suppress(Exception):
                await audit.stop()
            if http is not None:
                with contextlib.suppress(Exception):
                    await http.stop()

    async def _migrate(self) -> None:
        """Schema migrations at start (advisory-locked, idempotent). A database that is down
        does not stop the controller: the store migrates before its first write instead."""
        from kexec.adapters.audit.postgres import migrate
        from kexec.application.ports.audit import AuditUnavailable

        try:
            applied = await migrate(await resolve(self.container.audit_pool()), max_seconds=30)
            log.info("audit schema current (applied now: %s)", applied or "none")
        except AuditUnavailable as exc:
            log.warning("audit database unavailable at start (%s); will migrate on first write", exc)

    async def _watch_policy(self, api: Any) -> asyncio.Task[None] | None:
        """Hot reload from the `safety-policies` ConfigMap (embedded engine only); a broken
        update is reported (Event, log, metric) and the last good policy stays active."""
        from kexec.adapters.policy.reload import ConfigMapPolicySource, ReloadablePolicy

        policy = await resolve(self.container.policy())
        if not isinstance(policy, ReloadablePolicy):
            return None
        cluster = await resolve(self.container.cluster())
        involved = {"apiVersion": "v1", "kind": "ConfigMap", "name": "safety-policies",
                    "namespace": self.cfg.namespace}

        async def on_error(message: str) -> None:
            log.error("safety policy update rejected, last good policy stays: %s", message)
            await cluster.event(involved, "Warning", "PolicyRejected", message)

        async def on_change(version: str) -> None:
            log.info("safety policy %s active", version)
            await cluster.event(involved, "Normal", "PolicyLoaded", f"policy version {version}")

        source = ConfigMapPolicySource(policy, api, namespace=self.cfg.namespace,
                                       on_error=on_error, on_change=on_change)
        task = asyncio.create_task(source.run(), name="policy-source")
        await asyncio.wait_for(source.synced.wait(), 30)
        return task

    def ready(self) -> bool:
        return bool(self.executions and self.executions.has_synced.is_set()
                    and self.jobs and self.jobs.has_synced.is_set())

    async def _serve_http(self, api: Any) -> Any:
        if not self.cfg.http_port:
            return None
        from kexec.runtime.http import metrics_auth, serve_endpoints

        cfg = self.cfg
        return await serve_endpoints(
            self.registry, self.ready, metrics_auth(api, token_file=cfg.metrics_token_file or None),
            (cfg.http_host, cfg.http_port), (cfg.metrics_host, cfg.metrics_port))


def _job_finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _settled(ex: Execution) -> bool:
    """Ended, its audit finalizer released: never acted on again (no reconcile needed)."""
    return ex.terminal and not ex.deleting and FINALIZER not in ex.finalizers


def _older(cached: Any, written: str | None) -> bool:
    """True when the cached copy predates our own last write. resourceVersions are opaque;
    where they are not integers we cannot tell, and simply act (a 409 is then possible)."""
    if not written or not cached:
        return False
    try:
        return int(cached) < int(written)
    except ValueError:
        return False


async def resolve(value: Any) -> Any:
    """Providers that depend on async resources hand back awaitables."""
    return await value if inspect.isawaitable(value) else value


async def run_controller(cfg: ControllerConfig) -> None:
    registry = make_registry()
    container = build_container(
        kubeconfig=cfg.kubeconfig, namespace=cfg.namespace,
        trusted_namespaces=cfg.trusted_namespaces, identity=cfg.identity, image=cfg.image,
        runner_command=cfg.runner_command, audit_dsn=cfg.audit_dsn,
        policy_engine=cfg.policy_engine, opa_url=cfg.opa_url, policy_dir=cfg.policy_dir,
        approval_timeout=cfg.approval_timeout, allow_self_approval=cfg.allow_self_approval,
    )
    container.registry.override(registry)
    await start_resources(container)
    controller = Controller(cfg, container, registry)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stopping.set)
    import tracemalloc  # diagnostics with $KEXEC_TRACEMALLOC: top allocations at exit

    if traced := bool(os.environ.get("KEXEC_TRACEMALLOC")):
        tracemalloc.start()
    try:
        await controller.run()
    finally:
        await stop_resources(container)
        if traced:
            log.info("memory: traced now/peak %s", tracemalloc.get_traced_memory())
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:15]:
                log.info("memory: %s", stat)
