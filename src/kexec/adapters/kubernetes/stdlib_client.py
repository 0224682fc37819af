"""``RunnerCluster`` on the standard library (http.client + ssl + json): the Job pod's client.

A runner makes a handful of sequential calls and exits; kubernetes-asyncio and aiohttp
would cost it ≈ 0.5 s CPU and ≈ 60 MB just to import (DESIGN.md §5). This transport sends
the calls shaped in ``requests.py`` (the same ones ``KubernetesApi`` sends) over one
keep-alive connection and classifies errors with ``errors.classify``.

Credentials: ``$KUBECONFIG`` when set (the local simulator writes a TokenRequest
kubeconfig per pod), else the in-cluster ServiceAccount (token, ca.crt under
/var/run/secrets/kubernetes.io/serviceaccount, ``KUBERNETES_SERVICE_HOST``/``_PORT``).

``send`` blocks the event loop while it waits for the API: the runner runs exactly one
task (``RunAction``), so there is nothing else to schedule.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from kexec.adapters.kubernetes.errors import classify
from kexec.adapters.kubernetes.requests import ApiCall, RunnerCalls
from kexec.application.ports.cluster import Unavailable

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Endpoint:
    """Where the API is and how to authenticate to it."""

    server: str  # https://host:port
    token: str = ""
    ca_file: str = ""
    ca_data: str = ""  # PEM
    cert_file: str = ""
    key_file: str = ""
    cert_data: bytes = b""  # PEM
    key_data: bytes = b""  # PEM
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure:
            ctx = ssl._create_unverified_context()
        elif self.ca_file or self.ca_data:
            ctx = ssl.create_default_context(cafile=self.ca_file or None,
                                             cadata=self.ca_data or None)
        else:
            ctx = ssl.create_default_context()
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file or None)
        elif self.cert_data:
            # load_cert_chain reads files only: a private temporary directory, removed at once.
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                cert.write_bytes(self.cert_data)
                key.write_bytes(self.key_data)
                ctx.load_cert_chain(str(cert), str(key))
        return ctx


def in_cluster(env: Mapping[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Endpoint:
    host, port = env["KUBERNETES_SERVICE_HOST"], env.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return Endpoint(f"https://{host}:{port}", token=(sa_dir / "token").read_text().strip(),
                    ca_file=str(sa_dir / "ca.crt"))


def from_kubeconfig(path: str, context: str | None = None) -> Endpoint:
    """The current (or named) context of a kubeconfig: server, CA, token or client cert."""
    text = Path(path).read_text()
    try:
        doc = json.loads(text)  # JSON is YAML too, and 10x cheaper to load
    except ValueError:
        import yaml  # only for a YAML kubeconfig (a real pod has none)

        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    base = Path(path).parent
    name = context or doc.get("current-context")
    ctx = next(c["context"] for c in doc.get("contexts") or [] if c["name"] == name)
    cluster = next(c["cluster"] for c in doc.get("clusters") or [] if c["name"] == ctx["cluster"])
    user = next((u.get("user") or {} for u in doc.get("users") or []
                 if u["name"] == ctx.get("user")), {})

    def file(value: str) -> str:
        return str(base / value) if value else ""

    token = user.get("token", "")
    if not token and user.get("tokenFile"):
        token = Path(file(user["tokenFile"])).read_text().strip()
    return Endpoint(
        cluster["server"],
        token=token,
        ca_file=file(cluster.get("certificate-authority", "")),
        ca_data=base64.b64decode(cluster["certificate-authority-data"]).decode()
        if cluster.get("certificate-authority-data") else "",
        cert_file=file(user.get("client-certificate", "")),
        key_file=file(user.get("client-key", "")),
        cert_data=base64.b64decode(user.get("client-certificate-data", "")),
        key_data=base64.b64decode(user.get("client-key-data", "")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def endpoint_from_env(env: Mapping[str, str]) -> Endpoint:
    """``$KUBECONFIG`` (its first file) when set, else the in-cluster ServiceAccount."""
    kubeconfig = env.get("KUBECONFIG", "").split(os.pathsep)[0]
    return from_kubeconfig(kubeconfig) if kubeconfig else in_cluster(env)


# An API server that refuses connections is restarting (or failing over): the request never
# left, so any method may be sent again; ≈ 15 s in all before the runner gives up. The same
# for a request Forbidden by a server that is not ready (just restarted, its RBAC not loaded).
REFUSED_BACKOFF = (0.25, 0.5, 1.0, 2.0, 4.0, 7.0)


class StdlibApi(RunnerCalls):
    """``RunnerCluster`` over one keep-alive HTTPS connection."""

    def __init__(self, endpoint: Endpoint, *, request_timeout: float = 15.0,
                 field_manager: str = "kexec") -> None:
        url = urlsplit(endpoint.server)
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.https = url.scheme == "https"
        self.prefix = url.path.rstrip("/")
        self.timeout = request_timeout
        self.field_manager = field_manager
        self._ssl = endpoint.ssl_context() if self.https else None
        self._auth = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}
        self._conn: http.client.HTTPConnection | None = None
        self.calls = 0  # requests sent (for the benchmark and tests)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._ssl is not None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self._ssl)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    async def send(self, call: ApiCall) -> Any:
        path = self.prefix + call.path
        if call.query:
            path += "?" + urlencode(call.query)
        body = None if call.body is None else json.dumps(call.body, separators=(",", ":")).encode()
        headers = {**call.headers(), **self._auth, "User-Agent": "kexec-runner"}
        for delay in (*REFUSED_BACKOFF, None):
            self.calls += 1
            try:
                conn = self._connection()
                conn.request(call.method, path, body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except ConnectionRefusedError as exc:  # nothing was sent: safe to try again
                self.close()
                if delay is None:
                    raise Unavailable(f"{call.method} {call.path}: {exc}") from None
                time.sleep(delay)  # noqa: ASYNC251 -- blocking by design, like the HTTP call (no event loop)
                continue
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise Unavailable(f"{call.method} {call.path}: {exc or type(exc).__name__}") from None
            if resp.status in (200, 201, 202):
                return json.loads(raw) if raw else None
            error = classify(resp.status, raw.decode(errors="replace"))
            if resp.status != 403 or delay is None or self._ready():
                raise error
            time.sleep(delay)  # noqa: ASYNC251 -- refused before anything was done: send it again
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        """``GET /readyz``: a just-(re)started kube-apiserver answers before its informers have
        synced and, its RBAC not loaded, refuses requests (403, with or without the bootstrap
        ClusterRoles "not found"); it is ready (200) only once they have (``informer-sync``)."""
        self.calls += 1
        try:
            conn = self._connection()
            conn.request("GET", self.prefix + "/readyz", headers={**self._auth, "User-Agent": "kexec-runner"})
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        except (OSError, http.client.HTTPException):
            self.close()
            return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
