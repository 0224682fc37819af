"""The composition root: wires adapters to ports (dependency-injector).

Async resources (the Kubernetes ApiClient, the PostgreSQL pool) are
``providers.Resource``; tests build this same container and override
providers with fakes *before* ``init_resources()`` (one container per test).
"""

from __future__ import annotations

from typing import Any

from dependency_injector import containers, providers
from prometheus_client import CollectorRegistry

from kexec.adapters.audit.outbox import OutboxAudit
from kexec.adapters.audit.postgres import PostgresAudit, audit_pool
from kexec.adapters.clock import SystemClock
from kexec.adapters.kubernetes.client import api_client
from kexec.adapters.kubernetes.cluster import KubernetesCluster
from kexec.adapters.metrics import PrometheusMetrics
from kexec.application.limits import LimitSettings
from kexec.application.reconcile import ReconcileExecution
from kexec.application.settings import Settings
from kexec.domain.naming import CONTROLLER_NAMESPACE


def _policy(engine: str, opa_url: str, policy_dir: str, registry: Any) -> Any:
    """The PolicyPort the configuration asks for: embedded Rego (hot-reloadable) by default,
    or an OPA server. Either fails closed (PolicyUnavailable) when it cannot decide."""
    if engine == "opa":
        from kexec.adapters.policy.opa_http import OpaHttpPolicy

        return OpaHttpPolicy(opa_url)
    from kexec.adapters.policy.bundle import load_policy_dir
    from kexec.adapters.policy.reload import ReloadablePolicy

    return ReloadablePolicy(load_policy_dir(policy_dir) if policy_dir else None,
                            registry=registry)


def _metrics(registry: CollectorRegistry | None) -> Any:
    """Prometheus metrics on the caller's registry; none without one (tests, CLI)."""
    from kexec.application.ports.metrics import NoMetrics

    return PrometheusMetrics(registry) if registry is not None else NoMetrics()


def _settings(namespace: str, trusted: str, identity: str, approval_timeout: int,
              policy_dir: str = "", policy: Any = None,
              allow_self_approval: bool = False) -> Settings:
    from kexec.adapters.policy.bundle import load_default_policy_set, load_policy_dir
    from kexec.adapters.policy.reload import ReloadablePolicy

    names = frozenset(n.strip() for n in (trusted or "").split(",") if n.strip())
    # The concurrency limits are knobs of the policy data (policies/data.json); with the
    # embedded engine they follow its hot-reloaded data.
    data = (load_policy_dir(policy_dir) if policy_dir else load_default_policy_set()).data
    live = (lambda: policy.policy_set.data) if isinstance(policy, ReloadablePolicy) else None
    return Settings(controller_namespace=namespace, trusted_namespaces=names | {namespace},
                    controller_id=identity, approval_timeout_seconds=approval_timeout,
                    limits=LimitSettings.from_data(data), policy_data=live,
                    allow_self_approval=bool(allow_self_approval))


class Container(containers.DeclarativeContainer):
    config = providers.Configuration()

    registry: providers.Object[CollectorRegistry | None] = providers.Object(None)  # set by the caller
    clock = providers.Singleton(SystemClock)
    api = providers.Resource(api_client, kubeconfig=config.kubeconfig,
                             pool_size=config.api_pool_size.as_(int))
    cluster = providers.Singleton(
        KubernetesCluster,
        api,
        controller_namespace=config.namespace,
        image=config.image,
        runner_command=config.runner_command,
        request_timeout=config.request_timeout.as_(float),
        execution_cache=config.execution_cache,
        node_cache=config.node_cache,
        job_cache=config.job_cache,
        pod_cache=config.pod_cache,
        namespace_cache=config.namespace_cache,
        config_cache=config.config_cache,
        registry=registry,
    )
    audit_pool = providers.Resource(audit_pool, dsn=config.audit_dsn)
    audit_store = providers.Singleton(PostgresAudit, audit_pool, auto_migrate=True)
    audit = providers.Singleton(OutboxAudit, audit_store, registry=registry)
    policy = providers.Singleton(_policy, config.policy_engine, config.opa_url,
                                 config.policy_dir, registry)
    settings = providers.Singleton(_settings, config.namespace, config.trusted_namespaces,
                                   config.identity, config.approval_timeout.as_(int),
                                   config.policy_dir, policy, config.allow_self_approval)
    metrics = providers.Singleton(_metrics, registry)
    reconcile = providers.Singleton(ReconcileExecution, cluster, policy, audit, clock, settings,
                                    metrics)


DEFAULTS: dict[str, Any] = {
    "kubeconfig": None,
    "api_pool_size": 64,
    "namespace": CONTROLLER_NAMESPACE,
    "trusted_namespaces": CONTROLLER_NAMESPACE,
    "identity": "kexec",
    "image": "kexec:latest",
    "runner_command": ["kexec", "runner"],
    "request_timeout": 10.0,
    "execution_cache": None,
    "node_cache": None,
    "job_cache": None,
    "pod_cache": None,
    "namespace_cache": None,
    "config_cache": None,
    "audit_dsn": None,
    "policy_engine": "embedded",
    "opa_url": "http://127.0.0.1:8181",
    "policy_dir": "",
    "approval_timeout": 3600,
    "allow_self_approval": False,
}


def build_container(**overrides: Any) -> Container:
    container = Container()
    container.config.from_dict({**DEFAULTS, **overrides})
    return container


async def start_resources(container: Container) -> None:
    """init_resources() returns an awaitable only when some resource is async."""
    pending = container.init_resources()
    if pending is not None:
        await pending


async def stop_resources(container: Container) -> None:
    pending = container.shutdown_resources()
    if pending is not None:
        await pending
