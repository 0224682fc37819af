"""Policy engines against a real OPA server: answers, failure modes, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.plugin import required_opa

from devstack.controlplane import free_port
from kexec.adapters.policy.bundle import load_policy_dir
from kexec.adapters.policy.embedded import EmbeddedPolicy
from kexec.adapters.policy.opa_http import OpaHttpPolicy
from kexec.application.ports.policy import PolicyUnavailable

pytestmark = pytest.mark.opa

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@contextlib.contextmanager
def opa_server(*paths: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``opa run --server`` on a free port; yields (url, process); stops it afterwards."""
    port = free_port()
    args = [str(required_opa()), "run", "--server", "--addr", f"127.0.0.1:{port}"]
    args += ["--log-level", "error", *map(str, paths)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"opa exited with {proc.returncode}: {err}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("opa did not become healthy within 30 s")
            time.sleep(0.05)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def opa_url() -> Iterator[str]:
    with opa_server(POLICIES) as (url, _):
        yield url


def _input(case: str) -> dict[str, Any]:
    bases = json.loads((POLICIES / "testdata" / "bases.json").read_text())["bases"]
    cases: dict[str, Any] = {}
    for path in (POLICIES / "testdata").glob("cases_*.json"):
        cases.update(json.loads(path.read_text())["cases"])

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a[k], v) if k in a else v for k, v in b.items()}}
        return copy.deepcopy(b)

    return merge(bases[cases[case]["base"]], cases[case]["input"])


async def test_opa_answers_the_decision_document(opa_url: str) -> None:
    opa = OpaHttpPolicy(opa_url)
    try:
        denied = await opa.decide(_input("protected_namespace_deny"))
        approval = await opa.decide(_input("production_destructive_approval"))
        garbage = await opa.decide({})
    finally:
        await opa.aclose()
    assert denied.engine == "opa"
    assert (denied.allowed, [v.rule for v in denied.violations]) == (False, ["protected_namespace"])
    assert denied.violations[0].message == "namespace kube-system is protected"
    assert approval.allowed and approval.requires_approval
    assert not garbage.allowed and {v.rule for v in garbage.violations} == {"invalid_input", "unknown_action"}


async def test_both_engines_agree_on_a_decision(opa_url: str) -> None:
    embedded = EmbeddedPolicy(load_policy_dir(POLICIES), pool_size=1)
    opa = OpaHttpPolicy(opa_url)
    try:
        doc = _input("concurrent_drain_deny")
        a, b = await embedded.decide(doc), await opa.decide(doc)
    finally:
        embedded.close()
        await opa.aclose()
    assert (a.allowed, a.requires_approval, a.violations) == (b.allowed, b.requires_approval, b.violations)


async def test_undefined_document_is_a_deny(opa_url: str) -> None:
    opa = OpaHttpPolicy(opa_url, decision_path="kexec/safety/no_such_document")
    try:
        decision = await opa.decide(_input("protected_namespace_allow"))
    finally:
        await opa.aclose()
    assert decision.allowed is False
    assert [v.rule for v in decision.violations] == ["undefined"]


async def test_evaluation_error_5xx_is_unavailable(opa_url: str) -> None:
    # A complete rule with two values is a runtime conflict: OPA answers 500.
    module = "package kexec.broken\n\nvalue := v if {\n\tsome v in input.values\n}\n"
    async with httpx.AsyncClient(base_url=opa_url) as admin:
        (await admin.put("/v1/policies/broken", content=module)).raise_for_status()
        opa = OpaHttpPolicy(opa_url, decision_path="kexec/broken/value")
        try:
            with pytest.raises(PolicyUnavailable, match="HTTP 500"):
                await opa.decide({"values": [1, 2]})
        finally:
            await opa.aclose()
            await admin.delete("/v1/policies/broken")


async def test_config_errors_of_the_loaded_data(opa_url: str) -> None:
    opa = OpaHttpPolicy(opa_url)
    try:
        assert await opa.config_errors() == []
    finally:
        await opa.aclose()


async def test_stopped_server_is_unavailable() -> None:
    with opa_server(POLICIES) as (url, proc):
        opa = OpaHttpPolicy(url)
        assert (await opa.decide(_input("protected_namespace_allow"))).allowed is True
        proc.terminate()
        proc.wait(timeout=10)
        try:
            with pytest.raises(PolicyUnavailable, match="unreachable"):
                await opa.decide(_input("protected_namespace_allow"))
        finally:
            await opa.aclose()


async def test_timeout_against_a_server_that_never_answers() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    opa = OpaHttpPolicy(f"http://127.0.0.1:{port}", timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(PolicyUnavailable, match=r"did not answer within 0\.3s"):
            await opa.decide(_input("protected_namespace_allow"))
        elapsed = time.monotonic() - started
    finally:
        await opa.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert accepted, "the client never connected"
    assert 0.25 <= elapsed < 1.0
