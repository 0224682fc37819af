"""Errors the domain raises: always specific, always field-addressed where possible."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. "spec.parameters.scaleDeployment.replicas"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ValidationError(Exception):
    """One or more fields are invalid. ``reason`` is the status reason to report."""

    def __init__(self, errors: list[FieldError], reason: str = "InvalidParameters") -> None:
        self.errors = errors
        self.reason = reason
        super().__init__("; ".join(str(e) for e in errors))


class SafetyViolation(Exception):
    """A built-in safety rule (no policy engine needed) forbids the execution."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)
