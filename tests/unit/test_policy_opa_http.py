"""OpaHttpPolicy against an in-process HTTP transport (the real server: integration tests)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from kexec.adapters.policy.opa_http import OpaHttpPolicy
from kexec.application.ports.policy import PolicyUnavailable

Handler = Callable[[httpx.Request], httpx.Response]


def opa(handler: Handler, timeout: float = 1.0) -> OpaHttpPolicy:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpaHttpPolicy("http://opa.test:8181/", client=client, timeout=timeout)


async def test_posts_the_input_to_the_decision_document() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        result = {
            "allow": False,
            "requires_approval": True,
            "violations": [{"rule": "b", "message": "2"}, {"rule": "a", "message": "1"}],
        }
        return httpx.Response(200, json={"result": result})

    doc = {
        "execution": {"action": "scale_deployment"},
        "target": {"object": {"metadata": {"name": "x", "managedFields": [{}]}}},
    }
    decision = await opa(handler).decide(doc)
    assert seen[0].method == "POST"
    assert str(seen[0].url) == "http://opa.test:8181/v1/data/kexec/safety/decision"
    sent = json.loads(seen[0].content)
    assert sent["input"]["execution"] == {"action": "scale_deployment"}
    assert sent["input"]["target"]["object"]["metadata"] == {"name": "x"}
    assert decision.engine == "opa"
    assert decision.allowed is False and decision.requires_approval is True
    assert [v.rule for v in decision.violations] == ["a", "b"]  # sorted


async def test_undefined_document_denies() -> None:
    decision = await opa(lambda r: httpx.Response(200, json={})).decide({})
    assert decision.allowed is False
    assert [v.rule for v in decision.violations] == ["undefined"]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(500, text="boom"), "HTTP 500"),
        (httpx.Response(400, json={"code": "invalid_parameter"}), "HTTP 400"),
        (httpx.Response(200, text="<html>"), "non-JSON"),
        (httpx.Response(200, json=[1]), "non-object"),
    ],
)
async def test_bad_answers_make_the_engine_unavailable(response: httpx.Response, message: str) -> None:
    with pytest.raises(PolicyUnavailable, match=message):
        await opa(lambda r: response).decide({})


async def test_transport_errors_make_the_engine_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(PolicyUnavailable, match="unreachable"):
        await opa(refuse).decide({})


async def test_total_timeout_is_enforced() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"result": {"allow": True}})

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    policy = OpaHttpPolicy("http://opa.test", client=client, timeout=0.05)
    with pytest.raises(PolicyUnavailable, match=r"did not answer within 0\.05s"):
        await policy.decide({})


async def test_input_that_is_not_json_makes_the_engine_unavailable() -> None:
    with pytest.raises(PolicyUnavailable, match="not JSON"):
        await opa(lambda r: httpx.Response(200, json={})).decide({"x": object()})


async def test_config_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/data/kexec/safety/config_errors"
        return httpx.Response(200, json={"result": ["z", "a"]})

    assert await opa(handler).config_errors() == ["a", "z"]
    assert await opa(lambda r: httpx.Response(200, json={})).config_errors() == []


async def test_own_client_is_closed_shared_client_is_not() -> None:
    own = OpaHttpPolicy("http://opa.test")
    await own.aclose()
    shared = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    policy = OpaHttpPolicy("http://opa.test", client=shared)
    await policy.aclose()
    assert not shared.is_closed
    await shared.aclose()
