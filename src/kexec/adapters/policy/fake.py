"""A fake PolicyPort for unit tests: a fixed decision, or unavailable."""

from __future__ import annotations

import copy
from typing import Any

from kexec.application.ports.policy import PolicyUnavailable
from kexec.domain.policy import PolicyDecision, Violation

ENGINE = "fake"


class FakePolicy:
    """Answers every decision with ``decision`` (allow by default).

    ``set_unavailable("why")`` makes :meth:`decide` raise PolicyUnavailable
    until ``set_decision``/``set_available`` is called. Every input received is
    kept (a deep copy) in ``inputs``, so tests can check what the policy saw.
    """

    engine = ENGINE

    def __init__(self, decision: PolicyDecision | None = None) -> None:
        self.decision = decision or PolicyDecision(allowed=True, engine=ENGINE)
        self.unavailable: str | None = None
        self.inputs: list[dict[str, Any]] = []

    @classmethod
    def allowing(cls, *, requires_approval: bool = False) -> FakePolicy:
        return cls(PolicyDecision(allowed=True, requires_approval=requires_approval, engine=ENGINE))

    @classmethod
    def denying(cls, rule: str = "fake", message: str = "denied by the fake policy") -> FakePolicy:
        return cls(PolicyDecision(allowed=False, violations=(Violation(rule, message),), engine=ENGINE))

    def set_decision(self, decision: PolicyDecision) -> None:
        self.decision = decision
        self.unavailable = None

    def set_unavailable(self, reason: str = "fake policy engine unavailable") -> None:
        self.unavailable = reason

    def set_available(self) -> None:
        self.unavailable = None

    async def decide(self, input_document: dict[str, Any]) -> PolicyDecision:
        self.inputs.append(copy.deepcopy(input_document))
        if self.unavailable is not None:
            raise PolicyUnavailable(self.unavailable)
        return self.decision
