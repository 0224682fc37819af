"""HTTP endpoints: /healthz, /readyz, authenticated /metrics; auth strategies; serve()."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from kexec.runtime.http import (
    AuthResult,
    Decision,
    KubernetesAuth,
    StaticTokenAuth,
    make_app,
    serve,
)

TOKEN = "s3cr3t-token"


class FakeAuth:
    """Maps tokens to decisions; records what it was asked."""

    def __init__(self, decisions: dict[str, Decision]) -> None:
        self.decisions = decisions
        self.seen: list[str | None] = []

    async def check(self, token: str | None) -> AuthResult:
        self.seen.append(token)
        if token is None:
            return AuthResult(Decision.UNAUTHENTICATED)
        return AuthResult(self.decisions.get(token, Decision.UNAUTHENTICATED), "someone")


def registry_with_metric() -> CollectorRegistry:
    reg = CollectorRegistry()
    c = Counter("kexec_test_things", "Things counted by the test.", ["kind"], registry=reg)
    c.labels("a").inc(3)
    return reg


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- health


async def test_healthz_is_ok_without_auth() -> None:
    app = make_app(CollectorRegistry(), lambda: False, StaticTokenAuth(TOKEN))
    async with client_for(app) as c:
        r = await c.get("/healthz")
    assert r.status_code == 200 and r.text == "ok"


@pytest.mark.parametrize(
    ("check", "status", "body"),
    [
        (lambda: True, 200, {"ready": True}),
        (lambda: False, 503, {"ready": False}),
        (lambda: (True, {"informers": {"kexec": True}, "leader": False}), 200,
         {"ready": True, "informers": {"kexec": True}, "leader": False}),
        (lambda: {"ready": False, "informers": {"kexec": False}}, 503,
         {"ready": False, "informers": {"kexec": False}}),
    ],
)
async def test_readyz_reflects_check(check: Any, status: int, body: dict[str, Any]) -> None:
    app = make_app(CollectorRegistry(), check, StaticTokenAuth(TOKEN))
    async with client_for(app) as c:
        r = await c.get("/readyz")
    assert r.status_code == status
    assert r.json() == body


async def test_readyz_async_check_and_failing_check() -> None:
    state = {"synced": False}

    async def check() -> tuple[bool, dict[str, Any]]:
        return state["synced"], {"synced": state["synced"]}

    app = make_app(CollectorRegistry(), check, StaticTokenAuth(TOKEN))
    async with client_for(app) as c:
        assert (await c.get("/readyz")).status_code == 503
        state["synced"] = True
        r = await c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"ready": True, "synced": True}

    def broken() -> bool:
        raise RuntimeError("cache exploded")

    async with client_for(make_app(CollectorRegistry(), broken, StaticTokenAuth(TOKEN))) as c:
        r = await c.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"ready": False, "error": "cache exploded"}


# --------------------------------------------------------------------------- metrics


async def test_metrics_requires_valid_bearer_token() -> None:
    app = make_app(registry_with_metric(), lambda: True, StaticTokenAuth(TOKEN))
    async with client_for(app) as c:
        missing = await c.get("/metrics")
        wrong = await c.get("/metrics", headers=bearer("nope"))
        basic = await c.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        empty = await c.get("/metrics", headers={"Authorization": "Bearer "})
    for r in (missing, wrong, basic, empty):
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "kexec_test_things" not in r.text


async def test_metrics_with_token_is_prometheus_text() -> None:
    app = make_app(registry_with_metric(), lambda: True, StaticTokenAuth(TOKEN))
    async with client_for(app) as c:
        r = await c.get("/metrics", headers=bearer(TOKEN))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    sample = families["kexec_test_things"].samples[0]
    assert sample.name == "kexec_test_things_total"
    assert sample.labels == {"kind": "a"} and sample.value == 3.0


async def test_metrics_openmetrics_when_asked() -> None:
    app = make_app(registry_with_metric(), lambda: True, StaticTokenAuth(TOKEN))
    async with client_for(app) as c:
        r = await c.get("/metrics", headers={**bearer(TOKEN),
                                             "Accept": "application/openmetrics-text"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


@pytest.mark.parametrize(
    ("decision", "status"),
    [(Decision.ALLOWED, 200), (Decision.FORBIDDEN, 403), (Decision.UNAUTHENTICATED, 401),
     (Decision.UNAVAILABLE, 503)],
)
async def test_metrics_status_follows_auth_decision(decision: Decision, status: int) -> None:
    auth = FakeAuth({"t": decision})
    app = make_app(registry_with_metric(), lambda: True, auth)
    async with client_for(app) as c:
        r = await c.get("/metrics", headers=bearer("t"))
    assert r.status_code == status
    assert ("kexec_test_things" in r.text) is (status == 200)
    assert auth.seen == ["t"]


def test_static_token_sources(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert StaticTokenAuth.from_file(f)._token == TOKEN.encode()
    monkeypatch.setenv("KEXEC_METRICS_TOKEN", "from-env")
    assert StaticTokenAuth.from_env()._token == b"from-env"
    monkeypatch.delenv("KEXEC_METRICS_TOKEN")
    with pytest.raises(ValueError):
        StaticTokenAuth.from_env()
    with pytest.raises(ValueError):
        StaticTokenAuth("")


# --------------------------------------------------------------------------- KubernetesAuth cache


class ScriptedReviews(KubernetesAuth):
    """KubernetesAuth whose TokenReview+SAR round trip is answered from a table."""

    script: dict[str, AuthResult | Exception]

    async def _review(self, token: str) -> AuthResult:
        self.reviews += 1
        outcome = self.script[token]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def scripted(**kw: Any) -> ScriptedReviews:
    auth = ScriptedReviews(api_client=None, **kw)  # type: ignore[arg-type]
    auth.script = {
        "good": AuthResult(Decision.ALLOWED, "system:serviceaccount:mon:prometheus"),
        "nosar": AuthResult(Decision.FORBIDDEN, "system:serviceaccount:mon:other"),
        "bad": AuthResult(Decision.UNAUTHENTICATED, reason="invalid token"),
        "down": ConnectionError("apiserver unreachable"),
    }
    return auth


async def test_kubernetes_auth_caches_allowed_results() -> None:
    auth = scripted(allowed_ttl=60)
    for _ in range(3):
        assert (await auth.check("good")).decision is Decision.ALLOWED
    assert auth.reviews == 1


async def test_kubernetes_auth_denials_cached_briefly_errors_never() -> None:
    auth = scripted(denied_ttl=0.05)
    assert (await auth.check("nosar")).decision is Decision.FORBIDDEN
    assert (await auth.check("nosar")).decision is Decision.FORBIDDEN
    assert auth.reviews == 1
    await asyncio.sleep(0.06)
    assert (await auth.check("nosar")).decision is Decision.FORBIDDEN
    assert auth.reviews == 2, "denials expire quickly (a new RoleBinding takes effect)"
    assert (await auth.check("down")).decision is Decision.UNAVAILABLE
    assert (await auth.check("down")).decision is Decision.UNAVAILABLE
    assert auth.reviews == 4, "API failures are not cached"
    assert (await auth.check(None)).decision is Decision.UNAUTHENTICATED
    assert auth.reviews == 4, "no token: no review"


async def test_kubernetes_auth_through_app() -> None:
    auth = scripted()
    app = make_app(registry_with_metric(), lambda: True, auth)
    async with client_for(app) as c:
        codes = [(await c.get("/metrics", headers=bearer(t))).status_code
                 for t in ("good", "nosar", "bad", "down")]
    assert codes == [200, 403, 401, 503]


# --------------------------------------------------------------------------- serve


async def test_serve_listens_and_stops_gracefully() -> None:
    app = make_app(registry_with_metric(), lambda: True, StaticTokenAuth(TOKEN))
    handle = await serve(app, "127.0.0.1", 0)
    assert handle.port > 0
    async with httpx.AsyncClient(base_url=handle.url) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/metrics", headers=bearer(TOKEN))).status_code == 200
    await handle.stop()
    assert handle.task.done() and handle.task.exception() is None
    async with httpx.AsyncClient(base_url=handle.url) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/healthz")


async def test_serve_busy_port_raises() -> None:
    app = make_app(CollectorRegistry(), lambda: True, StaticTokenAuth(TOKEN))
    first = await serve(app, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            await serve(app, "127.0.0.1", first.port)
    finally:
        await first.stop()


async def test_probe_and_metrics_apps_are_split() -> None:
    registry = registry_with_metric()
    probes = make_app(registry, lambda: True, StaticTokenAuth(TOKEN), metrics=False)
    metrics = make_app(registry, lambda: True, StaticTokenAuth(TOKEN), probes=False)
    async with client_for(probes) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        assert (await c.get("/metrics", headers=bearer(TOKEN))).status_code == 404
    async with client_for(metrics) as c:
        assert (await c.get("/healthz")).status_code == 404
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers=bearer(TOKEN))).status_code == 200
