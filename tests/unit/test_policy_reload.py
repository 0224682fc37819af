"""Hot reload: ReloadablePolicy and the ConfigMap source (on a scripted list/watch API)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tests.support.fake_apiserver import STALL, FakeApiserver, list_body

from kexec.adapters.policy.bundle import PolicyLoadError, PolicySet, policy_set_from_sources
from kexec.adapters.policy.reload import ConfigMapPolicySource, ReloadablePolicy

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


# --- ConfigMapPolicySource on a scripted list/watch API -------------------------------------


def configmap(rv: str, data: dict[str, str]) -> dict[str, Any]:
    meta = {"name": "safety-policies", "namespace": "kubernaut-system", "resourceVersion": rv}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def cm_data(limit: Any, rego: str = TINY) -> dict[str, str]:
    return {"tiny.rego": rego, "data.json": json.dumps({"kexec": {"config": {"limit": limit}}})}


class Recorder:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.changes: list[str] = []

    async def on_error(self, message: str) -> None:
        self.errors.append(message)

    def on_change(self, version: str) -> None:
        self.changes.append(version)


@pytest.fixture
async def fake() -> AsyncIterator[FakeApiserver]:
    async with FakeApiserver("/api/v1/namespaces/kubernaut-system/configmaps") as server:
        yield server


def source_for(
    policy: ReloadablePolicy, fake: FakeApiserver, recorder: Recorder, **kw: Any
) -> ConfigMapPolicySource:
    return ConfigMapPolicySource(
        policy,
        fake.api,
        namespace="kubernaut-system",
        fallback=tiny(1, source="baked-in"),
        on_error=recorder.on_error,
        on_change=recorder.on_change,
        retry_initial=0.01,
        **kw,
    )


@contextlib.asynccontextmanager
async def running(source: ConfigMapPolicySource) -> AsyncIterator[asyncio.Task[None]]:
    """Run the source until the block ends; the block starts once it has synced."""
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.synced.wait(), 5)
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_absent_configmap_means_the_baked_in_policy(
    policy: ReloadablePolicy, fake: FakeApiserver
) -> None:
    fake.lists.append(list_body("10"))
    source = source_for(policy, fake, Recorder())
    async with running(source):
        assert policy.version == tiny(1).version
    (query,) = fake.list_queries()
    assert query["fieldSelector"] == "metadata.name=safety-policies"


async def test_configmap_policy_is_loaded(policy: ReloadablePolicy, fake: FakeApiserver) -> None:
    fake.lists.append(list_body("10", configmap("10", cm_data(50))))
    recorder = Recorder()
    source = source_for(policy, fake, recorder)
    async with running(source):
        # synced means the listed ConfigMap is active
        assert (await policy.decide({"n": 40})).allowed is True
        assert recorder.changes == [policy.version]
        assert policy.source == "configmap:kubernaut-system/safety-policies@10"


async def test_configmap_with_only_data_json_tunes_the_baked_in_modules(
    policy: ReloadablePolicy, fake: FakeApiserver
) -> None:
    data = {"data.json": json.dumps({"kexec": {"config": {"limit": 7}}})}
    fake.lists.append(list_body("10", configmap("10", data)))
    source = source_for(policy, fake, Recorder())
    async with running(source):
        assert dict(policy.policy_set.modules) == {"tiny.rego": TINY}
        assert (await policy.decide({"n": 7})).allowed is True
        assert (await policy.decide({"n": 8})).allowed is False


async def test_broken_update_is_reported_once_and_the_last_good_stays(
    policy: ReloadablePolicy, fake: FakeApiserver
) -> None:
    recorder = Recorder()
    source = source_for(policy, fake, recorder)
    await source.handle_event("ADDED", configmap("10", cm_data(50)))
    good = policy.version

    await source.handle_event("MODIFIED", configmap("11", cm_data(9, BROKEN)))
    await source.handle_event("MODIFIED", configmap("12", cm_data(9, BROKEN)))
    assert policy.version == good
    assert len(recorder.errors) == 1
    assert "safety-policies (resourceVersion 11) rejected" in recorder.errors[0]
    assert f"keeping policy {good}" in recorder.errors[0]
    assert source.last_error == recorder.errors[0]

    await source.handle_event("MODIFIED", configmap("13", cm_data(60)))
    assert policy.version != good
    assert source.last_error is None
    assert (await policy.decide({"n": 55})).allowed is True


async def test_invalid_data_json_is_reported_and_counted(
    policy: ReloadablePolicy, registry: CollectorRegistry, fake: FakeApiserver
) -> None:
    recorder = Recorder()
    source = source_for(policy, fake, recorder)
    bad = configmap("11", {"tiny.rego": TINY, "data.json": "{nope"})
    await source.handle_event("ADDED", bad)
    await source.handle_event("MODIFIED", bad)  # the same object again (a relist): once
    assert len(recorder.errors) == 1
    assert "not valid JSON" in recorder.errors[0]
    assert metric(registry, "kexec_policy_reload_total", result="failure") == 1
    assert policy.last_error is not None and "not valid JSON" in policy.last_error


async def test_delete_falls_back_bookmark_only_moves_the_version(
    policy: ReloadablePolicy, registry: CollectorRegistry, fake: FakeApiserver
) -> None:
    fake.lists.append(list_body("10", configmap("10", cm_data(50))))
    bookmark = {
        "type": "BOOKMARK",
        "object": {"kind": "ConfigMap", "metadata": {"resourceVersion": "20"}},
    }
    fake.watches += [[bookmark], [{"type": "DELETED", "object": configmap("21", cm_data(50))}]]
    source = source_for(policy, fake, Recorder())
    async with running(source):
        await asyncio.wait_for(fake.idle.wait(), 5)
    assert [q["resourceVersion"] for q in fake.watch_queries()] == ["10", "20", "21"]
    assert metric(registry, "kexec_policy_reload_total", result="success") == 2  # list, delete
    assert policy.version == tiny(1).version


async def test_run_lists_watches_and_relists(policy: ReloadablePolicy, fake: FakeApiserver) -> None:
    fake.lists += [500, list_body("10", configmap("10", cm_data(50)))]  # first list fails: retried
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}
    fake.watches += [
        [{"type": "MODIFIED", "object": configmap("11", cm_data(60))}, bookmark],  # ends: re-watch
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}],  # relist
        [STALL],  # silent stream: inactivity timeout, re-watch
    ]
    source = source_for(policy, fake, Recorder(), inactivity_timeout=0.3, watch_timeout_seconds=30)
    async with running(source):
        await asyncio.wait_for(fake.idle.wait(), 5)
    assert len(fake.list_queries()) == 3  # failed list, list, relist after 410
    assert [q["resourceVersion"] for q in fake.watch_queries()] == ["10", "12", "10", "10"]
    assert source.informer.stats.inactivity_timeouts == 1
    for q in fake.requests:
        assert q["fieldSelector"] == "metadata.name=safety-policies"
    watch = fake.watch_queries()[0]
    assert watch["allowWatchBookmarks"] == "true"
    assert 30 <= int(watch["timeoutSeconds"]) < 60
    # The relist saw the ConfigMap as first listed (limit 50) again.
    assert (await policy.decide({"n": 50})).allowed is True
    assert (await policy.decide({"n": 55})).allowed is False


async def test_default_fallback_is_the_policy_it_started_with(
    policy: ReloadablePolicy, fake: FakeApiserver
) -> None:
    initial = policy.policy_set
    source = ConfigMapPolicySource(policy, fake.api, namespace="kubernaut-system")
    await source.handle_event("ADDED", configmap("5", cm_data(50)))
    assert policy.policy_set != initial
    await source.handle_event("DELETED", configmap("6", cm_data(50)))
    assert policy.policy_set == initial
