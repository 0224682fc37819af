"""The Job pod's runner starts light: what it imports, how it drives RunAction without an
event loop, and its standard-library transport (request shaping, credentials, errors)
against an in-process HTTP server. The same transport on a real kube-apiserver:
tests/e2e/test_stdlib_client_e2e.py."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from kexec.adapters.kubernetes import stdlib_client
from kexec.adapters.kubernetes.requests import mutation_call, read_call
from kexec.adapters.kubernetes.stdlib_client import (
    Endpoint,
    StdlibApi,
    endpoint_from_env,
    from_kubeconfig,
    in_cluster,
)
from kexec.application.ports.cluster import AlreadyExists, Forbidden, Identity, Invalid, Unavailable
from kexec.domain.resources import Create, Delete, Evict, Get, List, ObjectRef, Patch
from kexec.entrypoints.runner import blocking_sleep, run_to_completion

HEAVY = ("kubernetes_asyncio", "aiohttp", "click", "rich", "yaml", "asyncio", "prometheus_client",
         "dependency_injector", "regopy", "kexec.entrypoints.cli", "kexec.entrypoints.controller",
         "kexec.adapters.kubernetes.api")


def test_the_runner_and_the_kexec_command_load_no_cli_controller_or_async_machinery() -> None:
    code = ("import sys, kexec.entrypoints.launch, kexec.entrypoints.runner; "
            "print('\\n'.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert "kexec.adapters.kubernetes.stdlib_client" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY) == []


def test_run_to_completion_returns_the_value_and_refuses_a_coroutine_that_suspends() -> None:
    async def done() -> int:
        await blocking_sleep(0)
        return 7

    assert run_to_completion(done()) == 7

    class Suspend:
        def __await__(self) -> Iterator[None]:
            yield None

    async def suspends() -> None:
        await Suspend()

    with pytest.raises(RuntimeError, match="suspended"):
        run_to_completion(suspends())


class Recorder(BaseHTTPRequestHandler):
    """Records each request; answers with the server's next scripted (status, body)."""

    def _answer(self) -> None:
        server: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                            "body": json.loads(body) if body else None})
        status, answer = server.script.pop(0) if server.script else (200, {})
        raw = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.seen, srv.script = [], []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def client_for(srv: Any, tmp_path: Path) -> StdlibApi:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{srv.server_port}"}}],
        "users": [{"name": "u", "user": {"token": "t0k"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x"}))
    return StdlibApi(endpoint_from_env({"KUBECONFIG": str(path)}))


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "code": code, "reason": reason, "message": message}


def test_the_stdlib_transport_sends_the_shared_calls_on_one_connection(server: Any, tmp_path: Path) -> None:
    api = client_for(server, tmp_path)
    cm = ObjectRef("ConfigMap", "ns", "cfg")
    server.script = [(404, status(404, "NotFound", "gone")),
                     (200, {"items": [{"metadata": {"name": "p"}}]}),
                     (200, {"metadata": {"name": "cfg"}})]
    assert run_to_completion(api.read(Get("target", cm))) is None
    items = run_to_completion(api.read(List("pods", "Pod", "ns", label_selector="app=web")))
    assert items == [{"metadata": {"name": "p"}, "kind": "Pod", "apiVersion": "v1"}]
    who = Identity("ns", "kexec-x")
    run_to_completion(api.mutate(Patch(cm, "merge", {"data": {"k": "v"}}), identity=who, dry_run=True))
    get, lst, patch = server.seen
    assert (get["method"], get["path"]) == ("GET", "/api/v1/namespaces/ns/configmaps/cfg")
    assert (lst["method"], lst["path"]) == ("GET", "/api/v1/namespaces/ns/pods?labelSelector=app%3Dweb")
    assert (patch["method"], patch["path"]) == ("PATCH", "/api/v1/namespaces/ns/configmaps/cfg?dryRun=All")
    assert patch["headers"]["Content-Type"] == "application/merge-patch+json"
    assert patch["headers"]["Impersonate-User"] == who.username
    assert patch["headers"]["Authorization"] == "Bearer t0k"
    assert patch["body"] == {"data": {"k": "v"}}
    assert api.calls == 3
    api.close()


def test_the_stdlib_transport_classifies_errors_like_the_adapter(server: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    api = client_for(server, tmp_path)
    cm = ObjectRef("ConfigMap", "ns", "cfg")
    server.script = [(409, status(409, "AlreadyExists", "exists")), (403, status(403, "Forbidden", "no")),
                     (200, {}),  # GET /readyz after the 403: ready, so the refusal is real
                     (422, status(422, "Invalid", "bad")), (503, status(503, "", "down"))]
    for error in (AlreadyExists, Forbidden, Invalid, Unavailable):
        with pytest.raises(error):
            run_to_completion(api.mutate(Create(cm, {"metadata": {"name": "cfg"}})))
    server.shutdown()
    server.server_close()
    monkeypatch.setattr(stdlib_client, "REFUSED_BACKOFF", (0.01, 0.01))
    calls = api.calls
    with pytest.raises(Unavailable):  # nobody listening: a retryable error, not a crash
        run_to_completion(api.read(Get("target", cm)))
    assert api.calls - calls == 3  # refused connections are tried again (nothing was sent)


def test_a_request_refused_by_an_api_server_not_ready_is_sent_again(
        server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Just restarted, kube-apiserver answers 403 until its RBAC caches are loaded: the runner
    asks /readyz, and while it is not ready sends the request again (nothing was done) -- a
    refusal by a ready server fails at once."""
    monkeypatch.setattr(stdlib_client, "REFUSED_BACKOFF", (0.01,) * 3)
    api = client_for(server, tmp_path)
    cm = ObjectRef("ConfigMap", "ns", "cfg")
    denied = (403, status(403, "Forbidden", 'configmaps "cfg" is forbidden: User "x" cannot patch resource'))
    starting = (403, status(403, "Forbidden", 'configmaps "cfg" is forbidden: RBAC: [clusterrole.rbac.'
                            'authorization.k8s.io "system:basic-user" not found]'))
    not_ready = (500, {"message": "[-]informer-sync failed"})
    server.script = [denied, not_ready, starting, denied, (200, {"metadata": {"name": "cfg"}})]
    run_to_completion(api.mutate(Patch(cm, "merge", {"data": {"k": "v"}})))
    assert [(r["method"], r["path"].split("?")[0]) for r in server.seen] == [
        ("PATCH", "/api/v1/namespaces/ns/configmaps/cfg"), ("GET", "/readyz"),
        ("PATCH", "/api/v1/namespaces/ns/configmaps/cfg"), ("GET", "/readyz"),  # 403 to /readyz too
        ("PATCH", "/api/v1/namespaces/ns/configmaps/cfg")]
    server.script = [denied, (200, {})]
    with pytest.raises(Forbidden):
        run_to_completion(api.mutate(Patch(cm, "merge", {"data": {"k": "v"}})))
    assert len(server.seen) == 7
    server.script = [denied, not_ready] * 4
    with pytest.raises(Forbidden):  # still not ready after the backoff: the refusal stands
        run_to_completion(api.mutate(Patch(cm, "merge", {"data": {"k": "v"}})))
    assert len(server.seen) == 7 + 7
    api.close()


def test_an_api_server_that_comes_back_within_the_backoff_gets_the_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarting API server refuses connections: the runner's request waits for it."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens on the port yet
    monkeypatch.setattr(stdlib_client, "REFUSED_BACKOFF", (0.2,) * 10)
    srv: Any = None

    def come_back() -> None:
        nonlocal srv
        srv = ThreadingHTTPServer(("127.0.0.1", port), Recorder)
        srv.seen, srv.script = [], [(200, {"metadata": {"name": "cfg"}})]
        srv.serve_forever()

    timer = threading.Timer(0.5, come_back)
    timer.start()
    api = StdlibApi(Endpoint(server=f"http://127.0.0.1:{port}"))
    try:
        got = run_to_completion(api.read(Get("target", ObjectRef("ConfigMap", "ns", "cfg"))))
        assert got is not None and got["metadata"]["name"] == "cfg"
        assert 2 <= api.calls <= 10 and len(srv.seen) == 1
    finally:
        api.close()
        timer.cancel()
        if srv is not None:
            srv.shutdown()  # ends serve_forever on the timer's thread
            srv.server_close()
        timer.join(5)


def test_both_transports_send_the_same_shaped_calls() -> None:
    """Delete and Evict carry their options in the body, dry run in query and body."""
    pod = ObjectRef("Pod", "ns", "p")
    delete = mutation_call(Delete(pod, grace_period_seconds=5, uid="u1"), dry_run=True)
    assert (delete.method, delete.path, delete.query) == ("DELETE", "/api/v1/namespaces/ns/pods/p",
                                                          (("dryRun", "All"),))
    assert delete.body == {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
                           "gracePeriodSeconds": 5, "preconditions": {"uid": "u1"}, "dryRun": ["All"]}
    evict = mutation_call(Evict(pod))
    assert (evict.method, evict.path) == ("POST", "/api/v1/namespaces/ns/pods/p/eviction")
    apply = mutation_call(Patch(ObjectRef("Deployment", "ns", "d"), "apply", {}), field_manager="fm")
    assert apply.query == (("fieldManager", "fm"), ("force", "true"))
    assert apply.content_type == "application/apply-patch+yaml"
    node = read_call(List("nodes", "Node", field_selector="spec.unschedulable=true"))
    assert (node.path, node.query) == ("/api/v1/nodes", (("fieldSelector", "spec.unschedulable=true"),))


def test_credentials_from_a_kubeconfig_or_the_pod_service_account(tmp_path: Path) -> None:
    ca = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    (tmp_path / "tok").write_text("file-token\n")
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443",
                                               "certificate-authority-data": base64.b64encode(ca.encode()).decode()}}],
        "users": [{"name": "u", "user": {"tokenFile": "tok"}}, {"name": "v", "user": {"token": "other"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}},
                     {"name": "y", "context": {"cluster": "c", "user": "v"}}],
        "current-context": "x"}))
    ep = from_kubeconfig(str(path))
    assert (ep.server, ep.token, ep.ca_data) == ("https://10.0.0.1:6443", "file-token", ca)
    assert from_kubeconfig(str(path), "y").token == "other"
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("pod-token")
    ep = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, sa)
    assert (ep.server, ep.token, ep.ca_file) == ("https://[fd00::1]:443", "pod-token", str(sa / "ca.crt"))
