"""PolicyPort contract: FakePolicy, EmbeddedPolicy (regopy) and OpaHttpPolicy (a real
``opa run --server``) give the same answers.

A case is "the policy's decision document for the contract input is D" (or undefined).
The real engines get a Rego module that yields D for ``{"contract": true}`` and a
well-formed deny for anything else (so the embedded engine's load-time smoke checks pass
and are not bypassed); the fake is told D itself (``FakePolicy.answering``). The OPA
cases need $KEXEC_BIN_DIR/opa and FAIL when it is missing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from tests.support.plugin import required_opa

from devstack.opa import OpaServer
from kexec.adapters.policy.bundle import DECISION_PACKAGE, DECISION_RULE, policy_set_from_sources
from kexec.adapters.policy.embedded import EmbeddedPolicy
from kexec.adapters.policy.fake import FakePolicy
from kexec.adapters.policy.opa_http import OpaHttpPolicy
from kexec.application.ports.policy import PolicyPort, PolicyUnavailable
from kexec.domain.policy import Violation

CONTRACT_INPUT: dict[str, Any] = {"contract": True, "execution": {"name": "c", "action": "scale_deployment"}}
UNDEFINED = object()  # the case where the policy defines no decision for the input

OTHERWISE = {"allow": False, "violations": [{"rule": "not_contract", "message": "not the contract input"}]}


def module(document: Any) -> str:
    """Rego yielding ``document`` for the contract input (no rule at all when UNDEFINED)."""
    text = f"package {DECISION_PACKAGE}\n\n{DECISION_RULE} := {json.dumps(OTHERWISE)} if not input.contract\n"
    if document is not UNDEFINED:
        text += f"\n{DECISION_RULE} := {json.dumps(document)} if input.contract\n"
    return text


Make = Callable[..., Awaitable[PolicyPort]]


@pytest.fixture(scope="module")
def opa_server() -> Iterator[OpaServer]:
    try:
        server = OpaServer(bin_dir=required_opa().parent).start()
    except (RuntimeError, TimeoutError, OSError) as exc:
        pytest.fail(f"opa run --server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


ENGINES = ["fake", "embedded", pytest.param("opa", marks=pytest.mark.opa)]


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Make]]:
    """(name, make): ``make(document)`` is an engine whose policy decides ``document``
    (``make(None, source=rego)``: one deciding by that Rego module; real engines only)."""
    closers: list[Callable[[], Awaitable[None]]] = []
    name: str = request.param

    async def make(document: Any, *, source: str = "") -> PolicyPort:
        if name == "fake":
            assert not source, "the fake evaluates no Rego"
            return FakePolicy.answering(None if document is UNDEFINED else document)
        source = source or module(document)
        if name == "embedded":
            embedded = EmbeddedPolicy(policy_set_from_sources({"contract.rego": source}), pool_size=1)

            async def close_embedded() -> None:
                embedded.close()

            closers.append(close_embedded)
            return embedded
        server: OpaServer = request.getfixturevalue("opa_server")
        async with httpx.AsyncClient(base_url=str(server.url)) as admin:
            answer = await admin.put("/v1/policies/contract", content=source)
            assert answer.status_code == 200, answer.text
        opa = OpaHttpPolicy(str(server.url), timeout=5)
        closers.append(opa.aclose)
        return opa

    try:
        yield name, make
    finally:
        for close in closers:
            await close()


DOCUMENTS = {
    "allow": ({"allow": True, "violations": []}, (True, False, ())),
    "allow_with_approval": ({"allow": True, "requires_approval": True, "violations": []}, (True, True, ())),
    "requires_approval_omitted": ({"allow": True}, (True, False, ())),
    "deny_violations_sorted": (
        {"allow": False, "requires_approval": False, "violations": [
            {"rule": "b_rule", "message": "second"}, {"rule": "a_rule", "message": "zeta"},
            {"rule": "a_rule", "message": "alpha"}]},
        (False, False, (Violation("a_rule", "alpha"), Violation("a_rule", "zeta"), Violation("b_rule", "second"))),
    ),
    "extra_fields_ignored": (
        {"allow": False, "violations": [{"rule": "r", "message": "m", "severity": "high"}],
         "messages": ["m"], "approval_reasons": []},
        (False, False, (Violation("r", "m"),)),
    ),
    "violation_entries_that_are_not_objects_dropped": (
        {"allow": False, "violations": ["plain string", {"rule": "r", "message": "m"}, 3]},
        (False, False, (Violation("r", "m"),)),
    ),
}  # fmt: skip

DENIED_UNDEFINED = (False, False, (Violation("undefined", "policy returned no decision"),))
MALFORMED = {
    "undefined": UNDEFINED,
    "allow_missing": {"violations": []},
    "allow_a_string": {"allow": "true", "violations": []},
    "allow_a_number": {"allow": 1},
    "document_a_list": [{"allow": True}],
    "document_a_string": "allow",
    "document_null": None,
}


@pytest.mark.parametrize("case", list(DOCUMENTS))
async def test_a_decision_document_becomes_the_decision(engine: tuple[str, Make], case: str) -> None:
    name, make = engine
    document, (allowed, requires_approval, violations) = DOCUMENTS[case]
    policy = await make(document)
    decision = await policy.decide(CONTRACT_INPUT)
    assert (decision.allowed, decision.requires_approval, decision.violations) == (
        allowed, requires_approval, violations)
    assert decision.engine == name


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_undefined_or_malformed_is_a_deny(engine: tuple[str, Make], case: str) -> None:
    _, make = engine
    policy = await make(MALFORMED[case])
    decision = await policy.decide(CONTRACT_INPUT)
    assert (decision.allowed, decision.requires_approval, decision.violations) == DENIED_UNDEFINED


async def test_decide_leaves_its_input_unchanged(engine: tuple[str, Make]) -> None:
    _, make = engine
    policy = await make(DOCUMENTS["allow"][0])
    document = {**CONTRACT_INPUT, "target": {"object": {"metadata": {"name": "x", "managedFields": [{"m": 1}]}}}}
    before = json.loads(json.dumps(document))
    assert (await policy.decide(document)).allowed is True
    assert document == before


async def test_an_input_that_is_not_json_is_unavailable(engine: tuple[str, Make]) -> None:
    _, make = engine
    policy = await make(DOCUMENTS["allow"][0])
    with pytest.raises(PolicyUnavailable):
        await policy.decide({**CONTRACT_INPUT, "when": dt.datetime.now(dt.UTC)})


@pytest.mark.parametrize("name", ENGINES)
async def test_an_engine_that_is_down_is_unavailable(name: str) -> None:
    """Down means: the fake switched off, the embedded engine closed, the OPA server stopped."""
    document = DOCUMENTS["allow"][0]
    if name == "fake":
        policy: Any = FakePolicy.answering(document)
        assert (await policy.decide(CONTRACT_INPUT)).allowed
        policy.set_unavailable("down")
    elif name == "embedded":
        policy = EmbeddedPolicy(policy_set_from_sources({"contract.rego": module(document)}), pool_size=1)
        assert (await policy.decide(CONTRACT_INPUT)).allowed
        policy.close()
    else:
        server = OpaServer(bin_dir=required_opa().parent).start()
        try:
            async with httpx.AsyncClient(base_url=str(server.url)) as admin:
                (await admin.put("/v1/policies/contract", content=module(document))).raise_for_status()
            policy = OpaHttpPolicy(str(server.url), timeout=5)
            assert (await policy.decide(CONTRACT_INPUT)).allowed
        finally:
            server.stop()
    try:
        with pytest.raises(PolicyUnavailable):
            await policy.decide(CONTRACT_INPUT)
    finally:
        if name == "opa":
            await policy.aclose()


BROKEN = f"""package {DECISION_PACKAGE}

{DECISION_RULE} := {json.dumps(OTHERWISE)} if not input.contract

{DECISION_RULE} := v if {{
\tinput.contract
\tsome v in input.values
}}
"""


# The fake evaluates no Rego, so a policy that fails while it evaluates has no equivalent
# there (its "engine cannot answer" is set_unavailable, above): the real engines only.
@pytest.mark.parametrize("engine", ["embedded", pytest.param("opa", marks=pytest.mark.opa)], indirect=True)
async def test_a_policy_that_fails_while_evaluating_is_unavailable(engine: tuple[str, Make]) -> None:
    """A complete rule with two values for one input is an evaluation error, not a deny."""
    _, make = engine
    policy = await make(None, source=BROKEN)
    assert (await policy.decide({"values": []})).violations == (Violation("not_contract", "not the contract input"),)
    with pytest.raises(PolicyUnavailable):
        await policy.decide({**CONTRACT_INPUT, "values": [{"allow": True}, {"allow": False}]})
