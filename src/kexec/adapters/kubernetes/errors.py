"""Map Kubernetes API errors to the port's ClusterError classes."""

from __future__ import annotations

import json
from typing import Any

from kexec.application.ports.cluster import (
    AlreadyExists,
    ClusterError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    TooManyRequests,
    Unavailable,
)

# A kube-apiserver that has just (re)started answers before its RBAC caches have synced: a
# request is then Forbidden with ClusterRoles that always exist (the bootstrap roles bound to
# every authenticated user) "not found" (kubernetes/kubernetes#121635). Nothing was done and it
# passes within seconds: a retryable error, not a refusal.
AUTHORIZER_STARTING = 'clusterrole.rbac.authorization.k8s.io "system:basic-user" not found'


class AuthorizerStarting(Unavailable):
    reason = "AuthorizerStarting"


def classify(status: int, body: Any) -> ClusterError:
    message, reason = "", ""
    try:
        doc = json.loads(body) if isinstance(body, str | bytes) and body else {}
        if isinstance(doc, dict):
            message, reason = str(doc.get("message", "")), str(doc.get("reason", ""))
    except ValueError:
        message = str(body)[:500]
    if status == 404:
        return NotFound(message)
    if status == 409:
        return AlreadyExists(message) if reason == "AlreadyExists" else Conflict(message)
    if status == 403:
        return AuthorizerStarting(message) if AUTHORIZER_STARTING in message else Forbidden(message)
    if status in (400, 422):
        return Invalid(message)
    if status == 429:
        return TooManyRequests(message)
    if status in (500, 502, 503, 504) or status == 0:
        return Unavailable(message or f"HTTP {status}")
    err = ClusterError(message or f"HTTP {status}")
    err.status = status
    return err
