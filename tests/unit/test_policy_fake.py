"""The fake PolicyPort used by application tests."""

from __future__ import annotations

import pytest

from kexec.adapters.policy.fake import FakePolicy
from kexec.application.ports.policy import PolicyPort, PolicyUnavailable
from kexec.domain.policy import PolicyDecision, Violation


async def test_allows_by_default_and_records_inputs() -> None:
    policy: PolicyPort = FakePolicy()
    doc = {"execution": {"name": "a"}}
    decision = await policy.decide(doc)
    doc["execution"]["name"] = "changed"
    assert decision.allowed is True
    assert decision.engine == "fake"
    assert isinstance(policy, FakePolicy)
    assert policy.inputs == [{"execution": {"name": "a"}}]


async def test_fixed_decisions() -> None:
    assert (await FakePolicy.denying("r", "m").decide({})).violations == (Violation("r", "m"),)
    assert (await FakePolicy.allowing(requires_approval=True).decide({})).requires_approval


async def test_unavailable_until_reset() -> None:
    policy = FakePolicy()
    policy.set_unavailable("opa down")
    with pytest.raises(PolicyUnavailable, match="opa down"):
        await policy.decide({})
    policy.set_decision(PolicyDecision(allowed=False, engine="fake"))
    assert (await policy.decide({})).allowed is False
    assert len(policy.inputs) == 2
