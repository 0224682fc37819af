"""The controller runtime against a real kube-apiserver (and a scripted fake one).

* Informer: add/update/delete on ConfigMaps; resume from a resourceVersion; a real
  410 Gone (dedicated apiserver with a compacting etcd and no watch cache) triggers a
  re-list with synthetic deletes. A scripted fake apiserver covers what a real one will
  not do on demand: a dead (silent) watch stream, an ERROR 410 event, 5xx backoff.
* LeaderElector: exactly one leader; takeover after release (fast) and after a
  crash without release (lease expiry); stepping down when someone else takes the lease.
* /metrics auth through TokenReview + SubjectAccessReview with real ServiceAccount
  tokens and RBAC.

Run: .venv/bin/python -m pytest tests/e2e/test_runtime_on_apiserver.py -v -s
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiohttp import web
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter

from devstack.controlplane import ControlPlane
from kexec.runtime.http import KubernetesAuth, make_app, serve
from kexec.runtime.informer import Informer
from kexec.runtime.leader import LeaderElector

T = TypeVar("T")


async def eventually(fn: Callable[[], Awaitable[T] | T], within: float = 20.0,
                     what: str = "", interval: float = 0.05) -> T:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what or fn} (last={last!r})")


class Recorder:
    """An informer handler that records (type, name, resourceVersion)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.events.append((event_type, meta["name"], meta.get("resourceVersion", "")))

    def of(self, name: str) -> list[str]:
        return [t for t, n, _ in self.events if n == name]


# =========================================================================== real apiserver

cluster = pytest.mark.cluster


@pytest.fixture
async def api(control_plane: ControlPlane) -> AsyncIterator[ApiClient]:
    c = await config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    try:
        yield c
    finally:
        await c.close()


async def _make_namespace(api: ApiClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
async def namespace(api: ApiClient) -> AsyncIterator[str]:
    name = await _make_namespace(api, "rt")
    yield name
    with contextlib.suppress(ApiException):
        await client.CoreV1Api(api).delete_namespace(name)


def _cm(name: str, **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"test": "informer"}}, "data": data}


# --------------------------------------------------------------------------- informer


@cluster
@pytest.mark.timeout(60)
async def test_informer_sees_add_update_delete(api: ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_config_map(namespace, _cm("pre", v="0"))
    # not matching the selector: must never show up
    await core.create_namespaced_config_map(namespace, {"metadata": {"name": "other"}})
    rec = Recorder()
    inf = Informer(api, "", "v1", "configmaps", namespace=namespace,
                   label_selector="test=informer", on_event=rec, timeout_seconds=10,
                   page_size=2)
    inf.start()
    try:
        async with asyncio.timeout(10):
            await inf.wait_synced()
        assert set(inf.cache) == {f"{namespace}/pre"}
        assert rec.events[0][:2] == ("ADDED", "pre")
        assert inf.cache[f"{namespace}/pre"]["kind"] == "ConfigMap"  # filled in from the list

        await core.create_namespaced_config_map(namespace, _cm("a", v="1"))
        await eventually(lambda: rec.of("a") == ["ADDED"], what="ADDED a")
        await core.patch_namespaced_config_map("a", namespace, {"data": {"v": "2"}})
        await eventually(lambda: rec.of("a") == ["ADDED", "MODIFIED"], what="MODIFIED a")
        assert inf.cache[f"{namespace}/a"]["data"] == {"v": "2"}
        await core.delete_namespaced_config_map("a", namespace)
        await eventually(lambda: rec.of("a") == ["ADDED", "MODIFIED", "DELETED"],
                         what="DELETED a")
        assert f"{namespace}/a" not in inf.cache

        # bulk: more objects than one list page, created while watching
        for i in range(5):
            await core.create_namespaced_config_map(namespace, _cm(f"bulk-{i}"))
        await eventually(lambda: len(inf.cache) == 6, what="6 cached")
        assert "other" not in {n for _, n, _ in rec.events}
        assert inf.stats.errors == 0 and inf.stats.expired == 0

        # the cache equals a fresh list, resourceVersions included
        listed = await core.list_namespaced_config_map(namespace, label_selector="test=informer")
        assert {f"{namespace}/{c.metadata.name}": c.metadata.resource_version
                for c in listed.items} == {
            k: v["metadata"]["resourceVersion"] for k, v in inf.cache.items()}
    finally:
        await inf.stop()


@cluster
@pytest.mark.timeout(60)
async def test_informer_survives_watch_timeouts_and_bookmarks(
        api: ApiClient, namespace: str) -> None:
    """Short server-side timeouts: the watch is re-opened from the last resourceVersion
    (no re-list). Writes the selector filters out make the server send BOOKMARKs; they
    move the resourceVersion on and never reach handlers."""
    core = client.CoreV1Api(api)
    await core.create_namespaced_config_map(namespace, _cm("seen"))
    await core.create_namespaced_config_map(namespace, {"metadata": {"name": "noise"}})
    rec = Recorder()
    inf = Informer(api, "", "v1", "configmaps", namespace=namespace, on_event=rec,
                   label_selector="test=informer", timeout_seconds=3)
    inf.start()
    try:
        async with asyncio.timeout(10):
            await inf.wait_synced()
        synced_rv = int(inf.resource_version or 0)

        async def churn() -> None:  # changes the informer does not see
            for i in range(200):
                await core.patch_namespaced_config_map("noise", namespace, {"data": {"i": str(i)}})
                await asyncio.sleep(0.1)

        churner = asyncio.create_task(churn())
        try:
            await eventually(lambda: inf.stats.bookmarks >= 1 and inf.stats.watches >= 3,
                             within=25, what="a bookmark and 3 watch cycles")
        finally:
            churner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await churner
        assert int(inf.resource_version or 0) > synced_rv, "bookmarks advance the RV"
        await core.create_namespaced_config_map(namespace, _cm("late"))
        await eventually(lambda: rec.of("late") == ["ADDED"], what="event after re-watches")
        assert inf.stats.lists == 1, "a server-side timeout must not cause a re-list"
        assert inf.stats.errors == 0 and inf.stats.expired == 0
        print(f"\ninformer stats after re-watches: {inf.stats}")
        assert [n for _, n, _ in rec.events] == ["seen", "late"], \
            "BOOKMARKs and filtered-out objects must not reach handlers"
    finally:
        await inf.stop()


def _etcd_compacted_past(cp: ControlPlane, path: str, rv: str) -> bool:
    """True once a watch from ``rv`` is answered with 410 (etcd compacted past it)."""
    out = cp.kubectl("get", "--raw", f"{path}?watch=1&resourceVersion={rv}&timeoutSeconds=1",
                     check=False)
    return '"code":410' in out.stdout


@pytest.fixture(scope="module")
def compacting_control_plane(bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
                             ) -> Iterator[ControlPlane]:
    """A second apiserver without a watch cache and with etcd compaction every second,
    so an old resourceVersion really expires (410 Gone) within seconds.

    Own state dir: ControlPlane.start() reaps earlier runs of the *same process* in its
    state dir, which would kill the session's shared control plane."""
    cp = ControlPlane(bin_dir=bin_dir, state_dir=tmp_path_factory.mktemp("compacting-cp"),
                      extra_apiserver_args=["--watch-cache=false",
                                            "--etcd-compaction-interval=1s"])
    try:
        cp.start()
    except Exception as e:
        pytest.fail(f"compacting control plane failed to start: {e} (logs: {cp.log_dir})",
                    pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@cluster
@pytest.mark.timeout(90)
async def test_informer_relists_on_410_with_synthetic_deletes(
        compacting_control_plane: ControlPlane) -> None:
    cp = compacting_control_plane
    async with await config.new_client_from_config(config_file=str(cp.kubeconfig)) as api:
        ns = await _make_namespace(api, "rt-gone")
        core = client.CoreV1Api(api)
        for name in ("keep", "change", "gone"):
            await core.create_namespaced_config_map(ns, _cm(name, v="1"))
        rec = Recorder()
        inf = Informer(api, "", "v1", "configmaps", namespace=ns, on_event=rec,
                       label_selector="test=informer", timeout_seconds=30)
        inf.start()
        async with asyncio.timeout(10):
            await inf.wait_synced()
        await inf.stop()  # "disconnected": it keeps its cache and resourceVersion
        old_rv = inf.resource_version
        assert old_rv and sorted(rec.of("keep") + rec.of("change") + rec.of("gone")) == [
            "ADDED"] * 3

        await core.patch_namespaced_config_map("change", ns, {"data": {"v": "2"}})
        await core.delete_namespaced_config_map("gone", ns)
        await core.create_namespaced_config_map(ns, _cm("new"))
        path = f"/api/v1/namespaces/{ns}/configmaps"
        await eventually(lambda: _etcd_compacted_past(cp, path, old_rv), within=30,
                         interval=0.5, what="etcd compaction past the informer's RV")

        rec.events.clear()
        inf.start()  # resumes watching from the expired resourceVersion
        try:
            await eventually(lambda: inf.stats.lists == 2, within=15, what="re-list")
            await eventually(lambda: len(rec.events) == 3, what="3 events from the re-list")
            assert inf.stats.expired == 1
            assert sorted((t, n) for t, n, _ in rec.events) == [
                ("ADDED", "new"), ("DELETED", "gone"), ("MODIFIED", "change")]
            assert set(inf.cache) == {f"{ns}/keep", f"{ns}/change", f"{ns}/new"}
            assert inf.cache[f"{ns}/change"]["data"] == {"v": "2"}
            assert int(inf.resource_version or 0) > int(old_rv)
            # and it watches again after the re-list
            await core.delete_namespaced_config_map("keep", ns)
            await eventually(lambda: rec.of("keep") == ["DELETED"], what="DELETED keep")
        finally:
            await inf.stop()
            await core.delete_namespace(ns)


# --------------------------------------------------------------------------- leader election


async def _lease(api: ApiClient, ns: str, name: str) -> dict[str, Any]:
    lease = await client.CoordinationV1Api(api).read_namespaced_lease(name, ns)
    return {"holder": lease.spec.holder_identity,
            "transitions": lease.spec.lease_transitions,
            "duration": lease.spec.lease_duration_seconds}


class Candidate:
    """One elector in its own ApiClient, recording when it led."""

    def __init__(self, api: ApiClient, ns: str, lease: str, identity: str,
                 **kw: Any) -> None:
        self.api = api
        self.elector = LeaderElector(api, ns, lease, identity, **kw)
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.work_cancelled = False
        self.task: asyncio.Task[None] | None = None

    async def _work(self) -> None:
        self.started_at = time.monotonic()
        try:
            await asyncio.Event().wait()  # lead until told otherwise
        except asyncio.CancelledError:
            self.work_cancelled = True
            raise

    def _stopped(self) -> None:
        self.stopped_at = time.monotonic()

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self._work, self._stopped))

    async def cancel(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def candidates(control_plane: ControlPlane, namespace: str
                     ) -> AsyncIterator[Callable[..., Awaitable[list[Candidate]]]]:
    made: list[Candidate] = []

    async def make(n: int = 2, lease: str = "runtime-test", **kw: Any) -> list[Candidate]:
        for i in range(n):
            api = await config.new_client_from_config(config_file=str(control_plane.kubeconfig))
            made.append(Candidate(api, namespace, lease, f"candidate-{i}-{uuid.uuid4().hex[:4]}",
                                  **kw))
        return made[-n:]

    yield make
    for c in made:
        if c.task is not None and not c.task.done():
            await c.cancel()
        await c.api.close()


async def _exactly_one_leader(cands: list[Candidate], seconds: float) -> Candidate:
    leader: Candidate | None = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        leaders = [c for c in cands if c.elector.is_leader]
        assert len(leaders) <= 1, "two leaders at once"
        if leaders:
            assert leader is None or leaders[0] is leader, "leadership flapped"
            leader = leaders[0]
        await asyncio.sleep(0.05)
    assert leader is not None, "nobody became leader"
    return leader


@cluster
@pytest.mark.timeout(60)
async def test_leader_release_hands_over_fast(
        candidates: Callable[..., Awaitable[list[Candidate]]], api: ApiClient,
        namespace: str) -> None:
    cands = await candidates(2)
    for c in cands:
        c.start()
    await eventually(lambda: any(c.elector.is_leader for c in cands), within=10,
                     what="a leader")
    leader = await _exactly_one_leader(cands, 5.0)  # > 2 renew periods
    standby = next(c for c in cands if c is not leader)
    assert standby.started_at is None, "a standby must not run the leading work"
    lease = await _lease(api, namespace, "runtime-test")
    assert lease["holder"] == leader.elector.identity and lease["duration"] == 15

    t0 = time.monotonic()
    await leader.cancel()  # graceful: stop work, then release
    assert leader.work_cancelled and leader.stopped_at is not None
    assert not leader.elector.is_leader
    await eventually(lambda: standby.elector.is_leader, within=10, what="takeover")
    takeover = time.monotonic() - t0
    print(f"\ntakeover after release: {takeover:.2f}s (retry period 2s)")
    assert takeover < 2 * 1.2 + 1.5
    await eventually(lambda: standby.started_at is not None, within=2, what="leading work")
    after = await _lease(api, namespace, "runtime-test")
    assert after["holder"] == standby.elector.identity
    assert after["transitions"] == (lease["transitions"] or 0) + 1


@cluster
@pytest.mark.timeout(90)
async def test_leader_crash_takeover_after_lease_expiry(
        candidates: Callable[..., Awaitable[list[Candidate]]]) -> None:
    cands = await candidates(2, lease="runtime-crash", release_on_cancel=False)
    for c in cands:
        c.start()
    await eventually(lambda: any(c.elector.is_leader for c in cands), within=10,
                     what="a leader")
    leader = await _exactly_one_leader(cands, 3.0)
    standby = next(c for c in cands if c is not leader)
    t0 = time.monotonic()
    await leader.cancel()  # like a crash: the lease is left held
    await eventually(lambda: standby.elector.is_leader, within=30, interval=0.1,
                     what="takeover after expiry")
    takeover = time.monotonic() - t0
    print(f"\ntakeover after crash (no release): {takeover:.2f}s (lease duration 15s)")
    # never before the lease could have expired, and within duration + two retry periods
    assert 15 - 2 * 1.2 - 0.5 <= takeover <= 15 + 2 * 2 * 1.2 + 1.0


@cluster
@pytest.mark.timeout(60)
async def test_leader_steps_down_when_lease_taken(
        candidates: Callable[..., Awaitable[list[Candidate]]], api: ApiClient,
        namespace: str) -> None:
    (solo,) = await candidates(1, lease="runtime-stolen")
    solo.start()
    await eventually(lambda: solo.elector.is_leader, within=10, what="leader")
    coord = client.CoordinationV1Api(api)
    lease = await coord.read_namespaced_lease("runtime-stolen", namespace)
    lease.spec.holder_identity = "intruder"
    t0 = time.monotonic()
    await coord.replace_namespaced_lease("runtime-stolen", namespace, lease)
    await eventually(lambda: solo.task is not None and solo.task.done(), within=10,
                     what="run() to return after losing the lease")
    print(f"\nstep-down after the lease was taken: {time.monotonic() - t0:.2f}s")
    assert not solo.elector.is_leader and solo.work_cancelled and solo.stopped_at
    assert solo.task is not None and solo.task.exception() is None
    assert (await _lease(api, namespace, "runtime-stolen"))["holder"] == "intruder", \
        "a leader that lost the lease must not release someone else's"


# --------------------------------------------------------------------------- /metrics auth


@cluster
@pytest.mark.timeout(60)
async def test_metrics_token_review_and_rbac(api: ApiClient, namespace: str) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    role = f"kexec-test-metrics-reader-{namespace}"
    for sa in ("scraper", "nobody"):
        await core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    await rbac.create_cluster_role({
        "metadata": {"name": role},
        "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
    })
    await rbac.create_cluster_role_binding({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": namespace}],
    })
    try:
        tokens = {}
        for sa in ("scraper", "nobody"):
            tr = await core.create_namespaced_service_account_token(
                sa, namespace, {"spec": {"expirationSeconds": 600}})
            tokens[sa] = tr.status.token

        registry = CollectorRegistry()
        Counter("kexec_e2e_scrapes", "test metric", registry=registry).inc()
        auth = KubernetesAuth(api)
        handle = await serve(make_app(registry, lambda: True, auth), "127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=handle.url) as h:
                async def get(token: str | None) -> httpx.Response:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    return await h.get("/metrics", headers=headers)

                ok = await get(tokens["scraper"])
                assert ok.status_code == 200, ok.text
                assert "kexec_e2e_scrapes_total 1.0" in ok.text
                assert (await get(tokens["nobody"])).status_code == 403
                assert (await get("not-a-real-token")).status_code == 401
                assert (await get(None)).status_code == 401
                before = auth.reviews
                assert (await get(tokens["scraper"])).status_code == 200
                assert auth.reviews == before, "positive result served from the cache"
        finally:
            await handle.stop()
    finally:
        with contextlib.suppress(ApiException):
            await rbac.delete_cluster_role_binding(role)
        with contextlib.suppress(ApiException):
            await rbac.delete_cluster_role(role)


# =========================================================================== scripted apiserver


class FakeApiserver:
    """Serves a ConfigMap collection from scripts: ``lists`` (one body per list call) and
    ``watches`` (one async responder per watch call). Records every request's query."""

    def __init__(self) -> None:
        self.lists: list[dict[str, Any]] = []
        self.watches: list[Callable[[web.Request], Awaitable[web.StreamResponse]]] = []
        self.requests: list[dict[str, str]] = []
        self.hanging = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        self.requests.append(q)
        if q.get("watch") == "true":
            if not self.watches:
                return await self.hang(request, [])
            return await self.watches.pop(0)(request)
        return web.json_response(self.lists.pop(0))

    async def stream(self, request: web.Request, events: list[dict[str, Any]],
                     then: str = "close") -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for e in events:
            await resp.write(json.dumps(e).encode() + b"\n")
        if then == "hang":
            await asyncio.Event().wait()  # a dead stream: open, silent
        return resp

    async def hang(self, request: web.Request, events: list[dict[str, Any]]
                   ) -> web.StreamResponse:
        return await self.stream(request, events, then="hang")

    def watch_queries(self) -> list[dict[str, str]]:
        return [q for q in self.requests if q.get("watch") == "true"]


def _obj(name: str, rv: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, "data": data}


def _list(rv: str, *items: dict[str, Any]) -> dict[str, Any]:
    stripped = [{k: v for k, v in i.items() if k not in ("apiVersion", "kind")} for i in items]
    return {"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": rv},
            "items": stripped}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeApiserver, ApiClient]]:
    server = FakeApiserver()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/configmaps", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cfg = Configuration(host=f"http://127.0.0.1:{port}")
    api = ApiClient(cfg)
    try:
        yield server, api
    finally:
        await api.close()
        await runner.cleanup()


def _fake_informer(api: ApiClient, rec: Recorder, **kw: Any) -> Informer:
    return Informer(api, "", "v1", "configmaps", namespace="ns", on_event=rec,
                    backoff_base=0.01, backoff_max=0.05, **kw)


@pytest.mark.timeout(20)
async def test_informer_dead_stream_is_abandoned_and_bookmarks_move_rv(
        fake: tuple[FakeApiserver, ApiClient]) -> None:
    server, api = fake
    server.lists.append(_list("10", _obj("a", "5")))

    async def first(request: web.Request) -> web.StreamResponse:  # bookmark, then closes
        return await server.stream(request, [
            {"type": "BOOKMARK", "object": {"kind": "ConfigMap", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": "12"}}}])

    async def second(request: web.Request) -> web.StreamResponse:  # one event, then silence
        return await server.hang(request, [{"type": "MODIFIED", "object": _obj("a", "13", v="2")}])

    server.watches += [first, second]
    rec = Recorder()
    inf = _fake_informer(api, rec, inactivity_timeout=0.3)
    inf.start()
    try:
        await eventually(lambda: len(server.watch_queries()) >= 3, within=5,
                         what="a re-watch after the silent stream")
        w = server.watch_queries()
        assert w[0]["resourceVersion"] == "10" and w[0]["allowWatchBookmarks"] == "true"
        assert 300 <= int(w[0]["timeoutSeconds"]) < 600  # jittered server-side timeout
        assert w[1]["resourceVersion"] == "12", "the bookmark moved the resourceVersion"
        assert w[2]["resourceVersion"] == "13", "the dead stream's last event moved it too"
        assert inf.stats.inactivity_timeouts >= 1 and inf.stats.bookmarks == 1
        assert inf.stats.lists == 1, "a dead stream does not need a re-list"
        assert rec.events == [("ADDED", "a", "5"), ("MODIFIED", "a", "13")]
        assert inf.cache["ns/a"]["data"] == {"v": "2"}
    finally:
        await inf.stop()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["error-event", "http-status"])
async def test_informer_410_relists_and_synthesizes_deletes(
        fake: tuple[FakeApiserver, ApiClient], how: str) -> None:
    server, api = fake
    server.lists += [
        _list("10", _obj("a", "5"), _obj("b", "6"), _obj("same", "7")),
        _list("20", _obj("a", "15"), _obj("c", "16"), _obj("same", "7")),
    ]

    async def gone(request: web.Request) -> web.StreamResponse:
        if how == "http-status":
            return web.json_response({"kind": "Status", "code": 410, "reason": "Expired"},
                                     status=410)
        return await server.stream(request, [{"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
            "message": "too old resource version: 10 (15)", "code": 410}}])

    server.watches.append(gone)
    rec = Recorder()
    inf = _fake_informer(api, rec)
    inf.start()
    try:
        await eventually(lambda: inf.stats.lists == 2 and len(server.watch_queries()) == 2,
                         within=5, what="re-list and re-watch")
        assert inf.stats.expired == 1
        assert rec.events[:3] == [("ADDED", "a", "5"), ("ADDED", "b", "6"),
                                  ("ADDED", "same", "7")]
        assert sorted(rec.events[3:]) == [("ADDED", "c", "16"), ("DELETED", "b", "6"),
                                          ("MODIFIED", "a", "15")]
        assert set(inf.cache) == {"ns/a", "ns/c", "ns/same"}
        assert server.watch_queries()[1]["resourceVersion"] == "20"
    finally:
        await inf.stop()


@pytest.mark.timeout(20)
async def test_informer_backs_off_on_server_errors_without_relisting(
        fake: tuple[FakeApiserver, ApiClient]) -> None:
    server, api = fake
    server.lists.append(_list("10", _obj("a", "5")))

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.json_response({"kind": "Status", "code": 500}, status=500)

    server.watches += [broken, broken, broken]
    rec = Recorder()
    inf = _fake_informer(api, rec)
    inf.start()
    try:
        await eventually(lambda: len(server.watch_queries()) >= 4, within=5, what="retries")
        assert inf.stats.errors == 3 and inf.stats.lists == 1
        assert all(q["resourceVersion"] == "10" for q in server.watch_queries())
        assert inf.has_synced.is_set()
    finally:
        await inf.stop()

