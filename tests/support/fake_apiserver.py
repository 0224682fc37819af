"""A scripted, in-process Kubernetes list/watch endpoint for one collection (aiohttp).

For unit tests of list/watch clients (the runtime Informer and what is built on it):
no control plane, every answer chosen by the test, every request's query recorded.

* ``lists``: one answer per list request -- a list body (``list_body(rv, *items)``)
  or an HTTP status (int). The last answer is repeated when the queue runs out, so
  re-lists keep working. A body is paginated when the request's ``limit`` is smaller
  than its item count (``continue`` tokens are offsets).
* ``watches``: one script per watch request. Steps: a dict (one event line), ``STALL``
  (stay open and silent until the server stops), an int as the first step (answer with
  that HTTP status and a Status body). A script that runs out ends the stream (as
  ``timeoutSeconds`` does). With no script left, the watch stays silent and ``idle``
  is set: the client has consumed everything the test prepared.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import ApiClient, Configuration

__all__ = ["STALL", "FakeApiserver", "list_body", "status_body"]

STALL = "stall"

Step = dict[str, Any] | str | int


def status_body(code: int, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}


def list_body(rv: str, *items: dict[str, Any], kind: str = "ConfigMapList") -> dict[str, Any]:
    """A list answer; items lose apiVersion/kind, as the apiserver sends them."""
    stripped = [{k: v for k, v in i.items() if k not in ("apiVersion", "kind")} for i in items]
    return {"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv},
            "items": stripped}


class FakeApiserver:
    """See the module docstring. ``async with FakeApiserver(path) as fake``; then
    ``fake.api`` is an ApiClient pointing at it."""

    def __init__(self, path: str = "/api/v1/namespaces/ns/configmaps") -> None:
        self.path = path
        self.lists: list[dict[str, Any] | int] = []
        self.watches: list[list[Step]] = []
        self.requests: list[dict[str, str]] = []
        self.idle = asyncio.Event()
        self._stopped = asyncio.Event()
        self._current_list: dict[str, Any] | None = None
        self._runner: web.AppRunner | None = None
        self.api: ApiClient

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeApiserver:
        app = web.Application()
        app.router.add_get(self.path, self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.api = ApiClient(Configuration(host=f"http://127.0.0.1:{port}"))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopped.set()
        await self.api.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ queries

    def list_queries(self) -> list[dict[str, str]]:
        return [q for q in self.requests if q.get("watch") != "true"]

    def watch_queries(self) -> list[dict[str, str]]:
        return [q for q in self.requests if q.get("watch") == "true"]

    # ------------------------------------------------------------------ serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(query)
        if query.get("watch") == "true":
            return await self._watch(request)
        return self._list(query)

    def _list(self, query: dict[str, str]) -> web.StreamResponse:
        if "continue" not in query or self._current_list is None:
            answer = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
            if isinstance(answer, int):
                return web.json_response(status_body(answer), status=answer)
            self._current_list = answer
        body = self._current_list
        items = body["items"]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items)
        page = {**body, "items": items[start:start + limit],
                "metadata": {**body["metadata"]}}
        if start + limit < len(items):
            page["metadata"]["continue"] = str(start + limit)
        return web.json_response(page)

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        if not self.watches:
            self.idle.set()
            script: list[Step] = [STALL]
        else:
            script = self.watches.pop(0)
        if script and isinstance(script[0], int):
            code = script[0]
            return web.json_response(status_body(code, message="scripted"), status=code)
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for step in script:
            if step == STALL:
                await self._stopped.wait()  # open and silent: a dead stream
                break
            await resp.write(json.dumps(step).encode() + b"\n")
        return resp
