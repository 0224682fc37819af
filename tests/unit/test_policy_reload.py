"""Hot reload: ReloadablePolicy and the ConfigMap source (fake event streams, fake API server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient, Configuration
from prometheus_client import CollectorRegistry

from kexec.adapters.policy.bundle import PolicyLoadError, PolicySet, policy_set_from_sources
from kexec.adapters.policy.reload import (
    ConfigMapPolicySource,
    KubernetesConfigMapClient,
    ReloadablePolicy,
    WatchExpired,
)

# A small policy (compiles in milliseconds): deny when input.n > data.kexec.config.limit.
TINY = """package kexec.safety

config_errors contains "limit must be a number" if not is_number(data.kexec.config.limit)

violation contains {"rule": "limit", "message": "over the limit"} if {
	input.n > data.kexec.config.limit
}

violation contains {"rule": "invalid_input", "message": "n must be a number"} if {
	not is_number(input.n)
}

decision := {
	"allow": count(violation) == 0,
	"requires_approval": false,
	"violations": [v | some v in violation],
}
"""
BROKEN = "package kexec.safety\n\ndecision := {\n"


def tiny(limit: Any, source: str = "") -> PolicySet:
    data = {"kexec": {"config": {"limit": limit}}}
    return policy_set_from_sources({"tiny.rego": TINY}, data, source=source)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def policy(registry: CollectorRegistry) -> ReloadablePolicy:
    p = ReloadablePolicy(tiny(3, source="initial"), pool_size=1, registry=registry)
    yield p
    p.close()


# --- ReloadablePolicy ------------------------------------------------------------------------


async def test_load_swaps_the_policy_and_publishes_metrics(
    policy: ReloadablePolicy, registry: CollectorRegistry
) -> None:
    old = policy.version
    assert (await policy.decide({"n": 5})).allowed is False
    assert metric(registry, "kexec_policy_version_info", version=old, source="initial") == 1

    assert policy.load({"tiny.rego": TINY}, {"kexec": {"config": {"limit": 10}}}, source="cm") is True

    assert (await policy.decide({"n": 5})).allowed is True
    assert policy.version != old
    assert policy.last_error is None
    assert metric(registry, "kexec_policy_reload_total", result="success") == 1
    assert metric(registry, "kexec_policy_version_info", version=policy.version, source="cm") == 1
    assert metric(registry, "kexec_policy_version_info", version=old, source="initial") is None


async def test_same_content_is_unchanged(policy: ReloadablePolicy, registry: CollectorRegistry) -> None:
    assert policy.load({"tiny.rego": TINY}, '{"kexec": {"config": {"limit": 3}}}') is False
    assert metric(registry, "kexec_policy_reload_total", result="unchanged") == 1


@pytest.mark.parametrize(
    ("modules", "data", "message"),
    [
        ({"tiny.rego": BROKEN}, {"kexec": {"config": {"limit": 1}}}, r"tiny\.rego:\d+:\d+"),
        ({"tiny.rego": TINY}, {"kexec": {"config": {"limit": "ten"}}}, "limit must be a number"),
        ({"tiny.rego": TINY}, "{oops", "not valid JSON"),
        ({"readme.md": "hi"}, None, "no Rego modules"),
    ],
)
async def test_broken_candidate_keeps_the_last_good_policy(
    policy: ReloadablePolicy,
    registry: CollectorRegistry,
    modules: dict[str, str],
    data: Any,
    message: str,
) -> None:
    good = policy.version
    with pytest.raises(PolicyLoadError, match=message):
        policy.load(modules, data)
    assert policy.version == good
    assert policy.last_error is not None
    assert (await policy.decide({"n": 5})).allowed is False  # still limit 3
    assert (await policy.decide({"n": 2})).allowed is True
    assert metric(registry, "kexec_policy_reload_total", result="failure") == 1


async def test_decisions_during_reloads_always_get_an_answer(policy: ReloadablePolicy) -> None:
    async def reload_many() -> None:
        for limit in (4, 5, 6, 7):
            await asyncio.to_thread(policy.load_policy_set, tiny(limit))

    results = await asyncio.gather(reload_many(), *(policy.decide({"n": 1}) for _ in range(40)))
    assert all(d.allowed for d in results[1:])
    assert policy.policy_set == tiny(7)


def test_default_initial_policy_is_the_baked_in_one(registry: CollectorRegistry) -> None:
    p = ReloadablePolicy(pool_size=1, registry=registry)
    try:
        assert "kexec/safety/decision.rego" in p.policy_set.modules
        assert p.source.startswith("dir:")
    finally:
        p.close()


# --- ConfigMapPolicySource with a scripted client --------------------------------------------


def configmap(rv: str, data: dict[str, str]) -> dict[str, Any]:
    meta = {"name": "safety-policies", "namespace": "kubernaut-system", "resourceVersion": rv}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def cm_data(limit: Any, rego: str = TINY) -> dict[str, str]:
    return {"tiny.rego": rego, "data.json": json.dumps({"kexec": {"config": {"limit": limit}}})}


class ScriptedClient:
    """A ConfigMapClient: the current ConfigMap for lists, scripted watch sessions.

    A session is a list of raw events; an Exception instance in it is raised. When
    a session runs out the stream ends (server timeout); with no session left the
    watch blocks until cancelled.
    """

    def __init__(self, obj: dict[str, Any] | None, rv: str = "10") -> None:
        self.obj = obj
        self.rv = rv
        self.sessions: list[list[Any]] = []
        self.gets = 0
        self.watched_from: list[str] = []
        self.get_errors: list[Exception] = []
        self.idle = asyncio.Event()

    async def get(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        assert (namespace, name) == ("kubernaut-system", "safety-policies")
        self.gets += 1
        if self.get_errors:
            raise self.get_errors.pop(0)
        return self.obj, self.rv

    async def watch(
        self,
        namespace: str,
        name: str,
        resource_version: str,
        *,
        timeout_seconds: int,
        inactivity_timeout: float,
    ) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        if not self.sessions:
            self.idle.set()
            await asyncio.Event().wait()
        for item in self.sessions.pop(0):
            if isinstance(item, BaseException):
                raise item
            yield item


class Recorder:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.changes: list[str] = []

    async def on_error(self, message: str) -> None:
        self.errors.append(message)

    def on_change(self, version: str) -> None:
        self.changes.append(version)


def source_for(policy: ReloadablePolicy, client: ScriptedClient, recorder: Recorder) -> ConfigMapPolicySource:
    return ConfigMapPolicySource(
        policy,
        namespace="kubernaut-system",
        client=client,
        fallback=tiny(1, source="baked-in"),
        on_error=recorder.on_error,
        on_change=recorder.on_change,
        retry_initial=0.01,
    )


async def test_absent_configmap_means_the_baked_in_policy(policy: ReloadablePolicy) -> None:
    source = source_for(policy, ScriptedClient(None), Recorder())
    assert await source.resync() == "10"
    assert source.synced.is_set()
    assert policy.version == tiny(1).version


async def test_configmap_policy_is_loaded(policy: ReloadablePolicy) -> None:
    recorder = Recorder()
    source = source_for(policy, ScriptedClient(configmap("10", cm_data(50))), recorder)
    await source.resync()
    assert (await policy.decide({"n": 40})).allowed is True
    assert recorder.changes == [policy.version]
    assert policy.source == "configmap:kubernaut-system/safety-policies@10"


async def test_configmap_with_only_data_json_tunes_the_baked_in_modules(
    policy: ReloadablePolicy,
) -> None:
    data = {"data.json": json.dumps({"kexec": {"config": {"limit": 7}}})}
    source = source_for(policy, ScriptedClient(configmap("10", data)), Recorder())
    await source.resync()
    assert dict(policy.policy_set.modules) == {"tiny.rego": TINY}
    assert (await policy.decide({"n": 7})).allowed is True
    assert (await policy.decide({"n": 8})).allowed is False


async def test_broken_update_is_reported_once_and_the_last_good_stays(
    policy: ReloadablePolicy,
) -> None:
    recorder = Recorder()
    source = source_for(policy, ScriptedClient(configmap("10", cm_data(50))), recorder)
    await source.resync()
    good = policy.version

    rv = await source.handle_event({"type": "MODIFIED", "object": configmap("11", cm_data(9, BROKEN))}, "10")
    assert rv == "11"
    rv = await source.handle_event({"type": "MODIFIED", "object": configmap("12", cm_data(9, BROKEN))}, rv)
    assert policy.version == good
    assert len(recorder.errors) == 1
    assert "safety-policies (resourceVersion 11) rejected" in recorder.errors[0]
    assert f"keeping policy {good}" in recorder.errors[0]
    assert source.last_error == recorder.errors[0]

    await source.handle_event({"type": "MODIFIED", "object": configmap("13", cm_data(60))}, rv)
    assert policy.version != good
    assert source.last_error is None
    assert (await policy.decide({"n": 55})).allowed is True


async def test_invalid_data_json_is_reported(policy: ReloadablePolicy) -> None:
    recorder = Recorder()
    source = source_for(policy, ScriptedClient(None), recorder)
    bad = configmap("11", {"tiny.rego": TINY, "data.json": "{nope"})
    await source.handle_event({"type": "ADDED", "object": bad}, "10")
    assert len(recorder.errors) == 1
    assert "not valid JSON" in recorder.errors[0]


async def test_delete_falls_back_bookmark_only_moves_the_version(
    policy: ReloadablePolicy, registry: CollectorRegistry
) -> None:
    source = source_for(policy, ScriptedClient(configmap("10", cm_data(50))), Recorder())
    await source.resync()
    bookmark = {
        "type": "BOOKMARK",
        "object": {"kind": "ConfigMap", "metadata": {"resourceVersion": "20"}},
    }
    assert await source.handle_event(bookmark, "10") == "20"
    assert metric(registry, "kexec_policy_reload_total", result="success") == 1

    assert await source.handle_event({"type": "DELETED", "object": configmap("21", cm_data(50))}, "20") == "21"
    assert policy.version == tiny(1).version


async def test_error_event_410_means_relist(policy: ReloadablePolicy) -> None:
    source = source_for(policy, ScriptedClient(None), Recorder())
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    with pytest.raises(WatchExpired):
        await source.handle_event(gone, "10")
    with pytest.raises(RuntimeError):
        await source.handle_event({"type": "ERROR", "object": {"code": 500}}, "10")


async def test_run_lists_watches_and_relists(policy: ReloadablePolicy) -> None:
    client = ScriptedClient(configmap("10", cm_data(50)), rv="10")
    client.get_errors = [ConnectionError("apiserver down")]  # first list fails: retried
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}
    client.sessions = [
        [{"type": "MODIFIED", "object": configmap("11", cm_data(60))}, bookmark],  # ends: re-watch
        [{"type": "ERROR", "object": {"code": 410, "message": "too old"}}],  # relist
        [TimeoutError()],  # silent stream: relist
    ]
    source = source_for(policy, client, Recorder())
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(client.idle.wait(), 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert client.gets == 4  # failed list, list, relist after 410, relist after silence
    assert client.watched_from == ["10", "12", "10", "10"]
    # The relists saw the ConfigMap as first listed (limit 50) again.
    assert (await policy.decide({"n": 50})).allowed is True
    assert (await policy.decide({"n": 55})).allowed is False


# --- KubernetesConfigMapClient against a fake API server ----------------------------------------


async def test_kubernetes_client_lists_and_streams_a_watch(aiohttp_free_port: int) -> None:
    seen: list[dict[str, str]] = []
    stop = asyncio.Event()

    async def configmaps(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.query))
        assert request.match_info["ns"] == "kubernaut-system"
        if request.query.get("watch", "").lower() != "true":
            items = [configmap("10", cm_data(5))]
            return web.json_response({"kind": "ConfigMapList", "metadata": {"resourceVersion": "10"}, "items": items})
        if request.query.get("resourceVersion") == "1":
            return web.json_response({"kind": "Status", "code": 410}, status=410)
        response = web.StreamResponse()
        await response.prepare(request)
        for event in (
            {"type": "MODIFIED", "object": configmap("11", cm_data(6))},
            {
                "type": "BOOKMARK",
                "object": {"kind": "ConfigMap", "metadata": {"resourceVersion": "12"}},
            },
        ):
            await response.write(json.dumps(event).encode() + b"\n")
        if request.query.get("resourceVersion") == "12":
            await stop.wait()  # silent: the inactivity timeout must fire
        return response

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/configmaps", configmaps)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", aiohttp_free_port)
    await site.start()
    config = Configuration(host=f"http://127.0.0.1:{aiohttp_free_port}")
    try:
        async with ApiClient(configuration=config) as api:
            client = KubernetesConfigMapClient(api, request_timeout=5)
            obj, rv = await client.get("kubernaut-system", "safety-policies")
            assert rv == "10"
            assert obj is not None and obj["metadata"]["resourceVersion"] == "10"
            assert obj["data"]["tiny.rego"] == TINY

            events = [
                e
                async for e in client.watch(
                    "kubernaut-system",
                    "safety-policies",
                    "10",
                    timeout_seconds=30,
                    inactivity_timeout=2,
                )
            ]
            assert [e["type"] for e in events] == ["MODIFIED", "BOOKMARK"]
            assert isinstance(events[1]["object"], dict)

            with pytest.raises(TimeoutError):
                async for _ in client.watch(
                    "kubernaut-system",
                    "safety-policies",
                    "12",
                    timeout_seconds=30,
                    inactivity_timeout=0.3,
                ):
                    pass
            with pytest.raises(WatchExpired):
                async for _ in client.watch(
                    "kubernaut-system",
                    "safety-policies",
                    "1",
                    timeout_seconds=30,
                    inactivity_timeout=2,
                ):
                    pass
    finally:
        stop.set()
        await runner.cleanup()
    watch_query = seen[1]
    assert watch_query["fieldSelector"] == "metadata.name=safety-policies"
    assert watch_query["allowWatchBookmarks"].lower() == "true"
    assert watch_query["timeoutSeconds"] == "30"
    assert watch_query["resourceVersion"] == "10"
    assert seen[0]["fieldSelector"] == "metadata.name=safety-policies"


@pytest.fixture
def aiohttp_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_default_fallback_is_the_policy_it_started_with(policy: ReloadablePolicy) -> None:
    initial = policy.policy_set
    source = ConfigMapPolicySource(policy, namespace="kubernaut-system", client=ScriptedClient(None))
    await source.handle_event({"type": "ADDED", "object": configmap("5", cm_data(50))}, "4")
    assert policy.policy_set != initial
    await source.handle_event({"type": "DELETED", "object": configmap("6", cm_data(50))}, "5")
    assert policy.policy_set == initial
