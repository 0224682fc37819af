"""Generic controller machinery: work queue, informer, leader election, HTTP, metrics,
backoff.

No kexec business logic lives here, and nothing here imports another kexec package
(import-linter contract); the adapters and the controller main build on it.
"""

from kexec.runtime.backoff import Backoff, poll
from kexec.runtime.http import (
    AuthResult,
    Decision,
    KubernetesAuth,
    MetricsAuth,
    ServerHandle,
    StaticTokenAuth,
    make_app,
    metrics_auth,
    serve,
)
from kexec.runtime.informer import Informer, InformerStats, object_key, resource_path
from kexec.runtime.leader import LeaderElector, default_identity
from kexec.runtime.metrics import make_registry, render, workqueue_metrics
from kexec.runtime.workqueue import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    QueueShutDown,
    RateLimiter,
    WorkQueue,
    default_rate_limiter,
    run_workers,
)

__all__ = [
    "AuthResult",
    "Backoff",
    "BucketRateLimiter",
    "Decision",
    "Informer",
    "InformerStats",
    "ItemExponentialFailureRateLimiter",
    "KubernetesAuth",
    "LeaderElector",
    "MaxOfRateLimiter",
    "MetricsAuth",
    "QueueShutDown",
    "RateLimiter",
    "ServerHandle",
    "StaticTokenAuth",
    "WorkQueue",
    "default_identity",
    "default_rate_limiter",
    "make_app",
    "make_registry",
    "metrics_auth",
    "object_key",
    "poll",
    "render",
    "resource_path",
    "run_workers",
    "serve",
    "workqueue_metrics",
]
