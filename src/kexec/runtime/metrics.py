"""Prometheus plumbing for the controller runtime: registries, exposition, queue metrics.

Every metric is registered on an injected :class:`CollectorRegistry` (never implicitly
on the global one), so tests and several controllers in one process do not collide.
Metric families are created once per registry and shared by label (``name``), the way
client-go's workqueue metrics provider does it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

__all__ = [
    "WorkQueueMetrics",
    "make_registry",
    "render",
    "workqueue_metrics",
]

# Buckets of client-go's workqueue histograms (1 µs .. 10 s, x10), plus 60 s for
# reconciles that talk to slow APIs.
_QUEUE_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 60.0)


def make_registry(process_metrics: bool = True) -> CollectorRegistry:
    """A fresh registry, with process/platform/GC collectors unless disabled."""
    registry = CollectorRegistry(auto_describe=True)
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """Exposition of ``registry`` in the format the client asked for: (body, content type).

    Text format 0.0.4 by default; OpenMetrics when the Accept header prefers it.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


@dataclass(frozen=True)
class WorkQueueMetrics:
    """The metric families of all work queues registered on one registry."""

    depth: Gauge
    adds: Counter
    retries: Counter
    queue_duration: Histogram
    work_duration: Histogram
    unfinished_work: Gauge
    longest_running: Gauge


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, WorkQueueMetrics] = (
    weakref.WeakKeyDictionary()
)


def workqueue_metrics(registry: CollectorRegistry) -> WorkQueueMetrics:
    """The (shared) work-queue metric families of ``registry``, created on first use."""
    with _lock:
        found = _by_registry.get(registry)
        if found is not None:
            return found
        labels = ("name",)
        m = WorkQueueMetrics(
            depth=Gauge("workqueue_depth", "Current depth of the work queue.", labels,
                        registry=registry),
            adds=Counter("workqueue_adds", "Keys added to the work queue.", labels,
                         registry=registry),
            retries=Counter("workqueue_retries", "Rate-limited re-adds (retries).", labels,
                            registry=registry),
            queue_duration=Histogram(
                "workqueue_queue_duration_seconds",
                "Time a key waits in the queue before a worker takes it.",
                labels, buckets=_QUEUE_BUCKETS, registry=registry,
            ),
            work_duration=Histogram(
                "workqueue_work_duration_seconds",
                "Time a worker spends processing one key.",
                labels, buckets=_QUEUE_BUCKETS, registry=registry,
            ),
            unfinished_work=Gauge(
                "workqueue_unfinished_work_seconds",
                "Seconds of work in progress not yet observed by work_duration.",
                labels, registry=registry,
            ),
            longest_running=Gauge(
                "workqueue_longest_running_processor_seconds",
                "Age of the longest-running key currently being processed.",
                labels, registry=registry,
            ),
        )
        _by_registry[registry] = m
        return m
