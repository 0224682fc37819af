"""Policy sets: the Rego modules plus the data document an engine evaluates.

A :class:`PolicySet` is plain, immutable data (module texts keyed by file name
and the JSON data document) with a content hash as its version. It comes from
a directory (the baked-in ``policies/`` of the repo or the package) or from a
ConfigMap (``*.rego`` keys and an optional ``data.json`` key). Compiling and
smoke-testing a set is engine work: see :mod:`kexec.adapters.policy.embedded`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kexec.application.policy_input import change_facts
from kexec.domain.actions import ACTIONS
from kexec.domain.naming import CONTROLLER_NAMESPACE

#: The decision document every engine is asked for.
DECISION_PACKAGE = "kexec.safety"
DECISION_RULE = "decision"
DECISION_PATH = "kexec/safety/decision"
#: The full configuration check (a set of messages), see policies/README.md.
CONFIG_ERRORS_PATH = "kexec/safety/config_errors"

#: Environment variable naming a policy directory that overrides the baked-in one.
POLICY_DIR_ENV = "KEXEC_POLICY_DIR"

DATA_FILE = "data.json"
TEST_SUFFIX = "_test.rego"


class PolicyLoadError(Exception):
    """A candidate policy set cannot be used (syntax, compile, data or smoke test)."""


def _freeze(modules: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(sorted(modules.items())))


@dataclass(frozen=True)
class PolicySet:
    """Rego modules (file name → source) and the data document (``data``, read-only)."""

    modules: Mapping[str, str]
    data: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False)

    @cached_property
    def version(self) -> str:
        """Content hash (sha256 of modules and canonical data, first 16 hex digits)."""
        digest = hashlib.sha256()
        for name, text in sorted(self.modules.items()):
            digest.update(name.encode())
            digest.update(b"\0")
            digest.update(text.encode())
            digest.update(b"\0")
        digest.update(json.dumps(self.data, sort_keys=True, separators=(",", ":")).encode())
        return digest.hexdigest()[:16]


def policy_set_from_sources(
    modules: Mapping[str, str],
    data: Mapping[str, Any] | str | bytes | None = None,
    *,
    source: str = "",
    include_tests: bool = False,
) -> PolicySet:
    """Build a set from module texts and a data document (a mapping or JSON text).

    Test modules (``*_test.rego``) are dropped unless ``include_tests``; they
    are for ``opa test`` and would only slow the engine down. Raises
    PolicyLoadError on an empty module set or data that is not a JSON object.
    """
    selected = {
        name: text
        for name, text in modules.items()
        if name.endswith(".rego") and (include_tests or not name.endswith(TEST_SUFFIX))
    }
    if not selected:
        raise PolicyLoadError(f"no Rego modules in policy source {source or '<memory>'}")
    for name, text in selected.items():
        if not isinstance(text, str):
            raise PolicyLoadError(f"module {name}: source must be text")
    if data is None:
        parsed: Any = {}
    elif isinstance(data, str | bytes):
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise PolicyLoadError(f"{DATA_FILE}: not valid JSON: {exc}") from exc
    else:
        parsed = json.loads(json.dumps(data))  # a private, JSON-clean copy
    if not isinstance(parsed, dict):
        raise PolicyLoadError(f"{DATA_FILE}: the data document must be a JSON object")
    return PolicySet(modules=_freeze(selected), data=parsed, source=source)


def load_policy_dir(path: str | os.PathLike[str], *, include_tests: bool = False) -> PolicySet:
    """Load ``**/*.rego`` (without tests) and the top-level ``data.json`` of a directory.

    Other JSON files (``testdata/``) are ignored: they feed ``opa test`` only.
    """
    root = Path(path)
    if not root.is_dir():
        raise PolicyLoadError(f"policy directory {root} does not exist")
    modules = {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.rego"))}
    data_file = root / DATA_FILE
    data = data_file.read_text(encoding="utf-8") if data_file.is_file() else None
    return policy_set_from_sources(modules, data, source=f"dir:{root}", include_tests=include_tests)


def _candidate_dirs() -> list[Path]:
    here = Path(__file__).resolve()
    candidates = []
    env = os.environ.get(POLICY_DIR_ENV)
    if env:
        candidates.append(Path(env))
    # Installed package: kexec/policies (package-data), then the source checkout.
    candidates.append(here.parents[2] / "policies")
    candidates.append(here.parents[4] / "policies")
    return candidates


def default_policy_dir() -> Path:
    """The baked-in policies: ``$KEXEC_POLICY_DIR``, the package copy, or the repo's."""
    for candidate in _candidate_dirs():
        if candidate.is_dir() and any(candidate.rglob("*.rego")):
            return candidate
    tried = ", ".join(str(c) for c in _candidate_dirs())
    raise PolicyLoadError(f"no baked-in policy directory found (tried {tried})")


def load_default_policy_set() -> PolicySet:
    """The baked-in policy set (see :func:`default_policy_dir`)."""
    return load_policy_dir(default_policy_dir())


def prepare_input(input_document: Mapping[str, Any]) -> dict[str, Any]:
    """The input as every engine receives it.

    Drops ``target.object.metadata.managedFields``: no policy needs it, it is
    often most of an object's size, and the embedded engine's cost grows with
    the input size (≈ 3 ms per 10 KB). Everything else is passed unchanged.
    """
    doc = dict(input_document)
    target = doc.get("target")
    if isinstance(target, Mapping):
        obj = target.get("object")
        if isinstance(obj, Mapping):
            metadata = obj.get("metadata")
            if isinstance(metadata, Mapping) and "managedFields" in metadata:
                slim_meta = {k: v for k, v in metadata.items() if k != "managedFields"}
                doc["target"] = {**target, "object": {**obj, "metadata": slim_meta}}
    return doc


def smoke_input() -> dict[str, Any]:
    """A well-formed input (scale a Deployment up in an ordinary namespace).

    Used to smoke-test a candidate policy set: it must produce a well-formed
    decision document.
    """
    action = ACTIONS["scale_deployment"]
    parameters = {"namespace": "default", "deployment": "smoke", "replicas": 2}
    return {
        "action": action.policy_facts(),
        "change": change_facts(action, parameters),
        "controller": {"trustedNamespaces": [CONTROLLER_NAMESPACE]},
        "execution": {
            "name": "kexec-policy-smoke",
            "namespace": "default",
            "action": "scale_deployment",
            "parameters": parameters,
            "labels": {},
            "annotations": {},
            "dryRun": True,
            "rollbackOf": "",
        },
        "target": {
            "kind": "Deployment",
            "namespace": "default",
            "name": "smoke",
            "exists": True,
            "labels": {},
            "annotations": {},
            "object": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "smoke", "namespace": "default"},
                "spec": {"replicas": 1},
            },
        },
        "namespace": {"name": "default", "labels": {}},
        "cluster": {
            "nodes": [
                {"name": "n1", "ready": True, "unschedulable": False, "controlPlane": False},
                {"name": "n2", "ready": True, "unschedulable": False, "controlPlane": False},
            ],
            "activeExecutions": {},
        },
        "time": {"now": "2025-01-01T12:00:00Z", "weekday": 2, "hour": 12, "minute": 0},
    }


def check_decision_document(doc: Any) -> str | None:
    """Why ``doc`` is not a well-formed decision document (None when it is)."""
    if not isinstance(doc, dict):
        what = type(doc).__name__ if doc is not None else "undefined"
        return f"the decision is {what}, not an object"
    if not isinstance(doc.get("allow"), bool):
        return "decision.allow must be a boolean"
    if not isinstance(doc.get("requires_approval", False), bool):
        return "decision.requires_approval must be a boolean"
    violations = doc.get("violations", [])
    if not isinstance(violations, list):
        return "decision.violations must be a list"
    for v in violations:
        if not (isinstance(v, dict) and isinstance(v.get("rule"), str) and isinstance(v.get("message"), str)):
            return "decision.violations entries must be {rule: string, message: string}"
    if doc["allow"] and violations:
        return "decision.allow is true although there are violations"
    return None
