"""Ports: what the use cases need from the outside world (typing.Protocol)."""

from kexec.application.ports.audit import AuditPort, AuditUnavailable, ExecutionRecord, TransitionRecord
from kexec.application.ports.clock import Clock
from kexec.application.ports.cluster import (
    AlreadyExists,
    ClusterError,
    ClusterPort,
    Conflict,
    Forbidden,
    Identity,
    Invalid,
    JobRequest,
    JobState,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from kexec.application.ports.policy import PolicyPort, PolicyUnavailable

__all__ = [
    "AlreadyExists",
    "AuditPort",
    "AuditUnavailable",
    "Clock",
    "ClusterError",
    "ClusterPort",
    "Conflict",
    "ExecutionRecord",
    "Forbidden",
    "Identity",
    "Invalid",
    "JobRequest",
    "JobState",
    "NotFound",
    "PolicyPort",
    "PolicyUnavailable",
    "TooManyRequests",
    "TransitionRecord",
    "Unavailable",
]
