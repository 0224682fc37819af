"""A fake PolicyPort for unit tests: a fixed decision document, or unavailable."""

from __future__ import annotations

import json
from typing import Any

from kexec.application.ports.policy import PolicyUnavailable
from kexec.domain.policy import PolicyDecision, Violation

ENGINE = "fake"


def _document(decision: PolicyDecision) -> dict[str, Any]:
    """The Rego decision document that yields ``decision``."""
    return {
        "allow": decision.allowed,
        "requires_approval": decision.requires_approval,
        "violations": [{"rule": v.rule, "message": v.message} for v in decision.violations],
        "defer": list(decision.defer),
    }


class FakePolicy:
    """Answers every input with one decision document (allow by default).

    Like the real engines, the document is parsed with ``PolicyDecision.from_document``
    on each decision (undefined or malformed → deny), and an input that is not JSON
    raises PolicyUnavailable (tests/contract/test_policy_contract.py holds the three
    engines to the same answers). ``answering(document)`` sets the raw document, ``None``
    being an undefined decision.

    ``set_unavailable("why")`` makes :meth:`decide` raise PolicyUnavailable
    until ``set_decision``/``set_available`` is called. Every input received is
    kept (as the JSON the engine would see) in ``inputs``, so tests can check
    what the policy saw.
    """

    engine = ENGINE

    def __init__(self, decision: PolicyDecision | None = None) -> None:
        self.document: Any = _document(decision or PolicyDecision(allowed=True, engine=ENGINE))
        self.unavailable: str | None = None
        self.inputs: list[dict[str, Any]] = []

    @classmethod
    def answering(cls, document: Any) -> FakePolicy:
        fake = cls()
        fake.document = document
        return fake

    @classmethod
    def allowing(cls, *, requires_approval: bool = False) -> FakePolicy:
        return cls(PolicyDecision(allowed=True, requires_approval=requires_approval, engine=ENGINE))

    @classmethod
    def denying(cls, rule: str = "fake", message: str = "denied by the fake policy") -> FakePolicy:
        return cls(PolicyDecision(allowed=False, violations=(Violation(rule, message),), engine=ENGINE))

    @property
    def decision(self) -> PolicyDecision:
        return PolicyDecision.from_document(self.document, ENGINE)

    def set_decision(self, decision: PolicyDecision) -> None:
        self.document = _document(decision)
        self.unavailable = None

    def set_unavailable(self, reason: str = "fake policy engine unavailable") -> None:
        self.unavailable = reason

    def set_available(self) -> None:
        self.unavailable = None

    async def decide(self, input_document: dict[str, Any]) -> PolicyDecision:
        try:
            seen = json.loads(json.dumps(input_document))
        except (TypeError, ValueError) as exc:
            raise PolicyUnavailable(f"policy input is not JSON: {exc}") from exc
        self.inputs.append(seen)
        if self.unavailable is not None:
            raise PolicyUnavailable(self.unavailable)
        return PolicyDecision.from_document(self.document, ENGINE)
