"""The controller's HTTP endpoints: health, readiness, authenticated metrics.

* ``GET /healthz`` -- liveness: 200 whenever the event loop can answer.
* ``GET /readyz``  -- readiness: 200 when ``is_ready()`` says so (caches synced; a
  standby that could take over is ready too), 503 otherwise; JSON body with details.
* ``GET /metrics`` -- Prometheus exposition, **bearer token required**:
  no/invalid token -> 401, authenticated but not allowed -> 403. Strategies:
  :class:`StaticTokenAuth` (a shared secret, for local runs) and
  :class:`KubernetesAuth` (TokenReview + SubjectAccessReview on the non-resource URL
  ``/metrics``, verb ``get`` -- what kube-rbac-proxy and controller-runtime's
  ``WithAuthenticationAndAuthorization`` filter do), with a small TTL cache.

:func:`serve` runs the app with uvicorn inside the caller's event loop and leaves
signal handling to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import inspect
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from kexec.runtime.metrics import render

__all__ = [
    "AuthResult",
    "Decision",
    "KubernetesAuth",
    "MetricsAuth",
    "ReadyCheck",
    "ServerHandle",
    "StaticTokenAuth",
    "make_app",
    "metrics_auth",
    "serve",
]

log = logging.getLogger(__name__)

# is_ready() -> bool | (bool, details) | {"ready": bool, ...}; may be async
ReadyCheck = Callable[[], Any]


# --------------------------------------------------------------------------- auth


class Decision(enum.Enum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"  # 401
    FORBIDDEN = "forbidden"  # 403
    UNAVAILABLE = "unavailable"  # 503: could not ask (apiserver unreachable)


@dataclass(frozen=True)
class AuthResult:
    decision: Decision
    user: str | None = None
    reason: str = ""


class MetricsAuth(Protocol):
    """Decides whether a bearer token may read ``/metrics``."""

    async def check(self, token: str | None) -> AuthResult: ...


class StaticTokenAuth:
    """One shared bearer token (constant-time comparison). For local runs and tests."""

    def __init__(self, token: str, user: str = "static-token") -> None:
        if not token:
            raise ValueError("empty metrics token")
        self._token = token.encode()
        self._user = user

    @classmethod
    def from_file(cls, path: str | Path) -> StaticTokenAuth:
        return cls(Path(path).read_text().strip())

    @classmethod
    def from_env(cls, var: str = "KEXEC_METRICS_TOKEN") -> StaticTokenAuth:
        value = os.environ.get(var, "")
        if not value:
            raise ValueError(f"${var} is not set")
        return cls(value)

    async def check(self, token: str | None) -> AuthResult:
        if token and hmac.compare_digest(token.encode(), self._token):
            return AuthResult(Decision.ALLOWED, self._user)
        return AuthResult(Decision.UNAUTHENTICATED, reason="invalid token")


@dataclass
class _CacheEntry:
    result: AuthResult
    expires: float


@dataclass
class KubernetesAuth:
    """Delegated authn/authz: TokenReview, then SubjectAccessReview for
    ``get`` on the non-resource URL ``path``.

    Allowed results are cached for ``allowed_ttl`` seconds, denials (401/403) for
    ``denied_ttl`` (short: a fresh RoleBinding should work soon), keyed by a hash of the
    token; API errors are never cached. ``audiences`` restricts the TokenReview
    (None: the apiserver's own audiences). The controller's identity needs
    ``create`` on ``tokenreviews.authentication.k8s.io`` and
    ``subjectaccessreviews.authorization.k8s.io`` (ClusterRole ``system:auth-delegator``).
    """

    api_client: ApiClient
    path: str = "/metrics"
    verb: str = "get"
    audiences: list[str] | None = None
    allowed_ttl: float = 60.0
    denied_ttl: float = 5.0
    request_timeout: float = 5.0
    max_entries: int = 1024
    _cache: dict[str, _CacheEntry] = field(default_factory=dict, repr=False)
    reviews: int = 0  # TokenReviews sent (observability / tests)

    async def check(self, token: str | None) -> AuthResult:
        if not token:
            return AuthResult(Decision.UNAUTHENTICATED, reason="no bearer token")
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit.expires > now:
            return hit.result
        try:
            result = await self._review(token)
        except Exception as e:
            log.warning("metrics auth: review failed: %s", e)
            return AuthResult(Decision.UNAVAILABLE, reason="authentication unavailable")
        ttl = self.allowed_ttl if result.decision is Decision.ALLOWED else self.denied_ttl
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v.expires > now}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[digest] = _CacheEntry(result, now + ttl)
        return result

    async def _review(self, token: str) -> AuthResult:
        self.reviews += 1
        spec: dict[str, Any] = {"token": token}
        if self.audiences is not None:
            spec["audiences"] = list(self.audiences)
        review = await self._post("/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
        st = review.get("status") or {}
        user = st.get("user") or {}
        if not st.get("authenticated") or not user:
            return AuthResult(Decision.UNAUTHENTICATED, reason=st.get("error") or "invalid token")
        username = str(user.get("username") or "")
        sar_spec = {k: v for k, v in (("user", username), ("groups", user.get("groups")),
                                      ("uid", user.get("uid")), ("extra", user.get("extra")))
                    if v}
        sar_spec["nonResourceAttributes"] = {"path": self.path, "verb": self.verb}
        sar = await self._post("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": sar_spec})
        verdict = sar.get("status") or {}
        if verdict.get("allowed"):
            return AuthResult(Decision.ALLOWED, username)
        return AuthResult(Decision.FORBIDDEN, username, str(verdict.get("reason") or ""))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A review, raw JSON in and out (no generated models)."""
        answer: dict[str, Any] = await self.api_client.call_api(
            path, "POST", body=body, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            response_types_map={200: "object", 201: "object"}, _return_http_data_only=True,
            _request_timeout=self.request_timeout)
        return answer


def metrics_auth(
    api_client: ApiClient | None, token_file: str | Path | None = None, **kubernetes_auth: Any
) -> MetricsAuth:
    """The strategy to use: a static token from ``token_file`` when given (local runs),
    else :class:`KubernetesAuth` on ``api_client`` (in a cluster)."""
    if token_file:
        return StaticTokenAuth.from_file(token_file)
    if api_client is None:
        raise ValueError("need an ApiClient for TokenReview/SubjectAccessReview auth")
    return KubernetesAuth(api_client, **kubernetes_auth)


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# --------------------------------------------------------------------------- app


async def _readiness(is_ready: ReadyCheck) -> tuple[bool, dict[str, Any]]:
    result = is_ready()
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, tuple):
        ok, details = result
        return bool(ok), dict(details)
    if isinstance(result, Mapping):
        return bool(result.get("ready")), {k: v for k, v in result.items() if k != "ready"}
    return bool(result), {}


def make_app(registry: CollectorRegistry, is_ready: ReadyCheck, auth: MetricsAuth, *,
             probes: bool = True, metrics: bool = True) -> Starlette:
    """The ASGI app. ``is_ready()`` returns ``bool``, ``(bool, details)`` or a mapping
    with a ``ready`` key (sync or async); its details appear in the /readyz body.
    ``probes``/``metrics`` select the routes, so probes (8080) and metrics (9090) can
    listen on separate ports."""

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        try:
            ok, details = await _readiness(is_ready)
        except Exception as e:
            log.warning("readiness check failed: %s", e)
            ok, details = False, {"error": str(e)}
        return JSONResponse({"ready": ok, **details}, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        result = await auth.check(_bearer_token(request))
        if result.decision is Decision.UNAUTHENTICATED:
            return PlainTextResponse("Unauthorized\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        if result.decision is Decision.FORBIDDEN:
            log.info("metrics: %s may not get %s", result.user, request.url.path)
            return PlainTextResponse("Forbidden\n", status_code=403)
        if result.decision is not Decision.ALLOWED:
            return PlainTextResponse("Service Unavailable\n", status_code=503)
        body, content_type = await asyncio.to_thread(
            render, registry, request.headers.get("accept")
        )
        return Response(body, media_type=content_type)

    routes = []
    if probes:
        routes += [Route("/healthz", healthz, methods=["GET"]),
                   Route("/readyz", readyz, methods=["GET"])]
    if metrics:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    return Starlette(routes=routes)


# --------------------------------------------------------------------------- server


class _Server(uvicorn.Server):
    def capture_signals(self) -> Any:  # the controller owns SIGTERM/SIGINT
        return contextlib.nullcontext()


@dataclass
class ServerHandle:
    """A running server: ``port`` is the bound port (useful with port 0)."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), close."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


async def serve(app: Any, host: str = "0.0.0.0", port: int = 8080,
                graceful_timeout: float = 5.0) -> ServerHandle:
    """Start uvicorn on ``host:port`` in this event loop; returns once it listens.

    The socket is bound here so a busy port raises ``OSError`` instead of uvicorn's
    ``sys.exit``. No access log, no logging reconfiguration, no signal handlers.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", access_log=False, log_config=None,
        timeout_graceful_shutdown=int(graceful_timeout), server_header=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http-server")
    while not server.started:
        if task.done():
            sock.close()
            exc = task.exception()
            raise RuntimeError(f"HTTP server failed to start: {exc!r}")
        await asyncio.sleep(0.01)
    return ServerHandle(server, task, host, bound_port)


@dataclass
class _Servers:
    handles: tuple[ServerHandle, ...]

    async def stop(self) -> None:
        for handle in self.handles:
            await handle.stop()


async def serve_endpoints(registry: CollectorRegistry, is_ready: ReadyCheck, auth: MetricsAuth,
                          probes_at: tuple[str, int], metrics_at: tuple[str, int]) -> Any:
    """Probes and /metrics: one server when both addresses are the same, else two (metrics
    port 0: none). Returns what to ``stop()``."""
    if metrics_at == probes_at:
        return await serve(make_app(registry, is_ready, auth), *probes_at)
    probes = await serve(make_app(registry, is_ready, auth, metrics=False), *probes_at)
    if not metrics_at[1]:
        return probes
    try:
        metrics = await serve(make_app(registry, is_ready, auth, probes=False), *metrics_at)
    except OSError:
        await probes.stop()
        raise
    return _Servers((probes, metrics))
