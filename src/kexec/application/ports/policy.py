from __future__ import annotations

from typing import Any, Protocol

from kexec.domain.policy import PolicyDecision


class PolicyUnavailable(Exception):
    """The engine could not answer (transport error, timeout, broken policy).

    Callers fail closed: the execution does not proceed and is retried.
    """


class PolicyPort(Protocol):
    """Evaluates the Rego safety policy (package ``kexec.safety``, document ``decision``)."""

    async def decide(self, input_document: dict[str, Any]) -> PolicyDecision:
        """Return the decision for one input document.

        Raises PolicyUnavailable when no decision can be had. An undefined
        result is a deny, not an error.
        """
        ...
