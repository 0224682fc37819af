"""Safety-policy decision values (what a policy engine answers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str


@dataclass(frozen=True)
class PolicyDecision:
    """The one decision document every engine returns.

    ``allowed`` false means the execution must not run. ``requires_approval``
    means it may run only once ``spec.approvalReceived`` is true. ``defer`` (reasons,
    e.g. a maintenance window) means an allowed execution waits and asks again later.
    """

    allowed: bool
    requires_approval: bool = False
    violations: tuple[Violation, ...] = ()
    engine: str = ""
    defer: tuple[str, ...] = ()

    @classmethod
    def from_document(cls, doc: Any, engine: str) -> PolicyDecision:
        """Parse the Rego decision document; anything malformed denies (fail closed)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("allow"), bool):
            return cls(
                allowed=False,
                violations=(Violation("undefined", "policy returned no decision"),),
                engine=engine,
            )
        raw = doc.get("violations") or []
        violations = tuple(
            Violation(str(v.get("rule", "")), str(v.get("message", "")))
            for v in (raw if isinstance(raw, list) else [])
            if isinstance(v, dict)
        )
        violations = tuple(sorted(violations, key=lambda v: (v.rule, v.message)))
        defer = doc.get("defer") or []
        return cls(
            allowed=bool(doc["allow"]),
            requires_approval=bool(doc.get("requires_approval", False)),
            violations=violations,
            engine=engine,
            defer=tuple(sorted(str(r) for r in (defer if isinstance(defer, list) else [defer]))),
        )

    def to_status(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "requiresApproval": self.requires_approval,
            "violations": [{"rule": v.rule, "message": v.message} for v in self.violations],
            "engine": self.engine,
        }
