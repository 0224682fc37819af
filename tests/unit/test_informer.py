"""The runtime Informer against a scripted in-process list/watch API (no control plane)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.support.fake_apiserver import STALL, FakeApiserver, list_body, status_body

from kexec.runtime.informer import Informer

pytestmark = pytest.mark.timeout(20)


def cm(name: str, rv: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, "data": data}


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(rv: str) -> dict[str, Any]:
    return event("BOOKMARK", {"kind": "ConfigMap", "apiVersion": "v1",
                              "metadata": {"resourceVersion": rv}})


def gone() -> dict[str, Any]:
    return event("ERROR", status_body(410, "Expired", "too old resource version: 10 (15)"))


class Recorder:
    """Handler recording (type, name, resourceVersion)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.events.append((event_type, meta["name"], meta.get("resourceVersion", "")))


async def eventually(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def fake() -> AsyncIterator[FakeApiserver]:
    async with FakeApiserver("/api/v1/namespaces/ns/configmaps") as server:
        yield server


@pytest.fixture
async def started() -> AsyncIterator[list[Informer]]:
    informers: list[Informer] = []
    yield informers
    for inf in informers:
        await inf.stop()


def informer(fake: FakeApiserver, started: list[Informer], rec: Recorder, **kw: Any) -> Informer:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.05)
    inf = Informer(fake.api, "", "v1", "configmaps", namespace="ns", on_event=rec, **kw)
    started.append(inf)
    inf.start()
    return inf


async def test_lists_every_page_then_watches_from_the_lists_resource_version(
    fake: FakeApiserver, started: list[Informer]
) -> None:
    fake.lists.append(list_body("10", cm("a", "5"), cm("b", "6"), cm("c", "7")))
    rec = Recorder()
    inf = informer(fake, started, rec, page_size=2, timeout_seconds=30,
                   label_selector="app=x", field_selector="metadata.name!=z")
    await asyncio.wait_for(inf.wait_synced(), 5)
    # has_synced means the handlers have seen the whole first list
    assert rec.events == [("ADDED", "a", "5"), ("ADDED", "b", "6"), ("ADDED", "c", "7")]
    assert inf.cache["ns/a"]["kind"] == "ConfigMap" and inf.cache["ns/a"]["apiVersion"] == "v1"
    await asyncio.wait_for(fake.idle.wait(), 5)

    lists = fake.list_queries()
    assert [q.get("continue") for q in lists] == [None, "2"]
    assert all(q["limit"] == "2" and q["labelSelector"] == "app=x"
               and q["fieldSelector"] == "metadata.name!=z" for q in lists)
    (watch,) = fake.watch_queries()
    assert watch["resourceVersion"] == "10"
    assert watch["allowWatchBookmarks"] == "true"
    assert watch["labelSelector"] == "app=x" and watch["fieldSelector"] == "metadata.name!=z"
    assert 30 <= int(watch["timeoutSeconds"]) < 60  # server-side timeout, jittered [t, 2t)
    assert inf.stats.lists == 1 and inf.stats.watches == 1


async def test_watch_events_reach_handlers_and_bookmarks_only_move_the_resource_version(
    fake: FakeApiserver, started: list[Informer]
) -> None:
    fake.lists.append(list_body("10", cm("a", "5"), cm("b", "6")))
    fake.watches.append([
        event("ADDED", cm("c", "11")),
        event("MODIFIED", cm("a", "12", v="2")),
        event("DELETED", cm("b", "13")),
        bookmark("20"),
    ])  # then the stream ends (server timeout): re-watch, no re-list
    rec = Recorder()
    inf = informer(fake, started, rec)
    await asyncio.wait_for(fake.idle.wait(), 5)

    assert rec.events[2:] == [("ADDED", "c", "11"), ("MODIFIED", "a", "12"),
                              ("DELETED", "b", "13")]  # no BOOKMARK among them
    assert set(inf.cache) == {"ns/a", "ns/c"}
    assert inf.cache["ns/a"]["data"] == {"v": "2"}
    assert [q["resourceVersion"] for q in fake.watch_queries()] == ["10", "20"]
    assert inf.resource_version == "20"
    assert inf.stats.bookmarks == 1 and inf.stats.events == 3
    assert inf.stats.lists == 1 and inf.stats.errors == 0


@pytest.mark.parametrize("how", ["error-event", "http-status"])
async def test_410_gone_relists_and_synthesizes_deletes(
    fake: FakeApiserver, started: list[Informer], how: str
) -> None:
    fake.lists += [
        list_body("10", cm("a", "5"), cm("b", "6"), cm("same", "7")),
        list_body("20", cm("a", "15"), cm("c", "16"), cm("same", "7")),
    ]
    fake.watches.append([gone()] if how == "error-event" else [410])
    rec = Recorder()
    inf = informer(fake, started, rec)
    await asyncio.wait_for(fake.idle.wait(), 5)

    assert inf.stats.expired == 1 and inf.stats.lists == 2 and inf.stats.errors == 0
    assert rec.events[:3] == [("ADDED", "a", "5"), ("ADDED", "b", "6"), ("ADDED", "same", "7")]
    assert sorted(rec.events[3:]) == [("ADDED", "c", "16"), ("DELETED", "b", "6"),
                                      ("MODIFIED", "a", "15")]  # unchanged "same": no event
    assert set(inf.cache) == {"ns/a", "ns/c", "ns/same"}
    assert [q["resourceVersion"] for q in fake.watch_queries()] == ["10", "20"]


async def test_a_stalled_stream_hits_the_inactivity_timeout_and_is_rewatched(
    fake: FakeApiserver, started: list[Informer]
) -> None:
    fake.lists.append(list_body("10", cm("a", "5")))
    fake.watches.append([event("MODIFIED", cm("a", "13", v="2")), STALL])
    rec = Recorder()
    began = time.monotonic()
    inf = informer(fake, started, rec, inactivity_timeout=0.3)
    await asyncio.wait_for(fake.idle.wait(), 5)

    assert time.monotonic() - began >= 0.3
    assert inf.stats.inactivity_timeouts == 1
    assert inf.stats.lists == 1, "a dead stream needs a re-watch, not a re-list"
    assert [q["resourceVersion"] for q in fake.watch_queries()] == ["10", "13"]
    assert rec.events == [("ADDED", "a", "5"), ("MODIFIED", "a", "13")]


async def test_errors_back_off_and_resume_from_the_last_resource_version(
    fake: FakeApiserver, started: list[Informer]
) -> None:
    fake.lists += [500, list_body("10", cm("a", "5"))]
    fake.watches += [[503], [event("ERROR", status_body(500, "InternalError"))], [403]]
    rec = Recorder()
    inf = informer(fake, started, rec)
    await asyncio.wait_for(fake.idle.wait(), 5)

    assert inf.stats.errors == 4  # the failed list and three failed watches
    assert inf.stats.lists == 1 and inf.stats.expired == 0
    assert len(fake.list_queries()) == 2  # the failed list was retried
    assert [q["resourceVersion"] for q in fake.watch_queries()] == ["10"] * 4
    assert rec.events == [("ADDED", "a", "5")]


async def test_a_failing_handler_does_not_stop_the_informer(
    fake: FakeApiserver, started: list[Informer]
) -> None:
    fake.lists.append(list_body("10", cm("a", "5")))
    fake.watches.append([event("ADDED", cm("b", "11")), event("ADDED", cm("c", "12"))])
    rec = Recorder()
    inf = informer(fake, started, rec)

    async def broken(event_type: str, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] == "b":
            raise RuntimeError("handler bug")

    inf.add_handler(broken)
    await asyncio.wait_for(fake.idle.wait(), 5)
    assert [n for _, n, _ in rec.events] == ["a", "b", "c"]
    assert set(inf.cache) == {"ns/a", "ns/b", "ns/c"}
    assert inf.stats.errors == 0


async def test_stop_keeps_the_cache_and_start_resumes_without_a_list(
    fake: FakeApiserver, started: list[Informer]
) -> None:
    fake.lists.append(list_body("10", cm("a", "5")))
    fake.watches.append([event("ADDED", cm("b", "11")), STALL])
    rec = Recorder()
    inf = informer(fake, started, rec)
    await eventually(lambda: "ns/b" in inf.cache, "the watched ADDED")
    await inf.stop()
    assert set(inf.cache) == {"ns/a", "ns/b"}
    inf.start()
    await asyncio.wait_for(fake.idle.wait(), 5)
    assert inf.stats.lists == 1
    assert [q["resourceVersion"] for q in fake.watch_queries()] == ["10", "11"]
