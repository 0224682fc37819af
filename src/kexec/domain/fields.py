"""Field parsing helpers: Kubernetes name rules, ranges, durations.

Each helper appends a FieldError instead of raising, so one pass reports every
bad field at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.errors import FieldError

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# The one duration grammar (spec.timeout; the CRD states the same pattern).
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
_DURATION = re.compile(DURATION_PATTERN)


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1123_LABEL.match(value))


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(_DNS1123_SUBDOMAIN.match(value))


def parse_duration(value: str) -> int:
    """'90s', '2m', '1h30m' → seconds. Raises ValueError on anything else."""
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not value or match is None or not any(match.groups()):
        raise ValueError(f"invalid duration {value!r} (use e.g. 30s, 5m, 1h)")
    h, m, s = (int(g[:-1]) if g else 0 for g in match.groups())
    return h * 3600 + m * 60 + s


def format_duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


@dataclass(frozen=True)
class Param:
    """One parameter, as data: the one statement of its rules.

    Action.parse checks values by it (Fields.param), the CRD schema is generated from
    it, `kexec actions` prints it.

    type: "label" (DNS-1123 label), "name" (DNS-1123 subdomain), "integer", "boolean",
    "enum", "object", "patch" (object or array), "stringmap" (string or null values),
    "ref" ({name}).
    """

    name: str
    type: str
    description: str = ""
    required: bool = True
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] = ()
    default: Any = None

    def constraint(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum}-{self.maximum}"
        if self.minimum is not None:
            return f">= {self.minimum}"
        if self.enum:
            return " | ".join(self.enum)
        return {"label": "DNS-1123 label", "name": "DNS-1123 subdomain"}.get(self.type, "")


class Fields:
    """Reads typed fields out of a raw mapping, collecting errors under a path prefix."""

    def __init__(self, raw: Any, path: str, errors: list[FieldError]) -> None:
        self.path = path
        self.errors = errors
        if not isinstance(raw, Mapping):
            errors.append(FieldError(path, "must be an object"))
            raw = {}
        self.raw: Mapping[str, Any] = raw
        self._seen: set[str] = set()

    def _err(self, name: str, message: str) -> None:
        self.errors.append(FieldError(f"{self.path}.{name}", message))

    def _get(self, name: str, required: bool) -> Any:
        self._seen.add(name)
        if name not in self.raw or self.raw[name] is None:
            if required:
                self._err(name, "is required")
            return None
        return self.raw[name]

    def name(self, name: str, *, label: bool = False, required: bool = True) -> str:
        value = self._get(name, required)
        if value is None:
            return ""
        if not isinstance(value, str):
            self._err(name, "must be a string")
            return ""
        ok = is_dns1123_label(value) if label else is_dns1123_subdomain(value)
        if not ok:
            rule = "DNS-1123 label" if label else "DNS-1123 subdomain"
            self._err(name, f"{value!r} is not a valid Kubernetes name ({rule})")
            return ""
        return value

    def namespace(self, name: str = "namespace") -> str:
        return self.name(name, label=True)

    def integer(self, name: str, lo: int, hi: int, *, default: int | None = None) -> int:
        value = self._get(name, default is None)
        if value is None:
            return default if default is not None else lo
        if isinstance(value, bool) or not isinstance(value, int):
            self._err(name, "must be an integer")
            return lo
        if not lo <= value <= hi:
            self._err(name, f"must be between {lo} and {hi}, got {value}")
            return lo
        return value

    def optional_integer(self, name: str, lo: int, hi: int) -> int | None:
        if self.raw.get(name) is None:
            self._seen.add(name)
            return None
        return self.integer(name, lo, hi)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._err(name, "must be a boolean")
            return default
        return value

    def choice(self, name: str, choices: tuple[str, ...], *, default: str | None = None) -> str:
        value = self._get(name, default is None)
        if value is None:
            return default or ""
        if value not in choices:
            self._err(name, f"must be one of {', '.join(choices)}, got {value!r}")
            return default or ""
        return str(value)

    def mapping(self, name: str, *, required: bool = True) -> Mapping[str, Any]:
        value = self._get(name, required)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self._err(name, "must be an object")
            return {}
        return value

    def any(self, name: str) -> Any:
        return self._get(name, True)

    def param(self, p: Param) -> Any:
        """The value of parameter ``p``, checked as it declares (an error appended if not)."""
        if p.type in ("label", "name"):
            return self.name(p.name, label=p.type == "label", required=p.required)
        if p.type == "integer":
            lo = 0 if p.minimum is None else p.minimum
            hi = 2**63 - 1 if p.maximum is None else p.maximum
            if p.required:
                return self.integer(p.name, lo, hi)
            if p.default is None:
                return self.optional_integer(p.name, lo, hi)
            return self.integer(p.name, lo, hi, default=p.default)
        if p.type == "boolean":
            return self.boolean(p.name, bool(p.default))
        if p.type == "enum":
            return self.choice(p.name, p.enum, default=None if p.required else p.default)
        if p.type in ("object", "stringmap"):
            return self.mapping(p.name, required=p.required)
        if p.type == "ref":
            ref = self.sub(p.name)
            name = ref.name("name")
            ref.reject_unknown()
            return name
        if p.type == "patch":
            return self.any(p.name)
        raise ValueError(f"parameter {p.name}: unknown type {p.type!r}")

    def sub(self, name: str) -> Fields:
        self._seen.add(name)
        return Fields(self.raw.get(name), f"{self.path}.{name}", self.errors)

    def reject_unknown(self) -> None:
        for key in self.raw:
            if key not in self._seen:
                self._err(str(key), "unknown field")
