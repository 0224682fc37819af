"""The embedded engine (regopy) on the repo policies: fixtures, load errors, failure modes."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from kexec.adapters.policy.bundle import (
    PolicyLoadError,
    PolicySet,
    load_policy_dir,
    policy_set_from_sources,
    smoke_input,
)
from kexec.adapters.policy.embedded import (
    CompiledPolicy,
    EmbeddedPolicy,
    PolicyEvaluationError,
    _parse_output,
    _rego_c,
    _Slot,
)
from kexec.application.ports.policy import PolicyUnavailable

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def deep_merge(base: Any, patch: Any) -> Any:
    """Objects merge recursively, anything else is replaced (like OPA's object.union)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return copy.deepcopy(patch)


@cache
def repo_policy_set() -> PolicySet:
    return load_policy_dir(POLICIES)


@cache
def fixtures() -> tuple[dict[str, Any], dict[str, Any]]:
    bases = json.loads((POLICIES / "testdata" / "bases.json").read_text())["bases"]
    cases: dict[str, Any] = {}
    for path in sorted((POLICIES / "testdata").glob("cases_*.json")):
        cases.update(json.loads(path.read_text())["cases"])
    return bases, cases


def case_input(name: str) -> dict[str, Any]:
    bases, cases = fixtures()
    case = cases[name]
    return copy.deepcopy(deep_merge(bases[case["base"]], case["input"]))


def config_set(overrides: dict[str, Any]) -> PolicySet:
    base = repo_policy_set()
    data = deep_merge(dict(base.data), {"kexec": {"config": overrides}})
    return policy_set_from_sources(dict(base.modules), data)


@cache
def _compiled(config_key: str) -> CompiledPolicy:
    # validate=False: some fixtures deliberately carry a configuration that the
    # load-time gate refuses, to pin down how the rules behave with it.
    return CompiledPolicy(config_set(json.loads(config_key)), pool_size=1, validate=False)


@pytest.fixture(scope="module")
def engine() -> EmbeddedPolicy:
    policy = EmbeddedPolicy(repo_policy_set(), pool_size=2)
    yield policy
    policy.close()


# --- the fixtures shared with `opa test` and the parity test ---------------------------


def test_every_default_config_fixture_decides_as_expected_by_the_embedded_engine() -> None:
    # Fixtures with configuration overrides need one compile each (~50 ms):
    # they run in tests/integration/test_policy_parity.py, on both engines.
    _, cases = fixtures()
    failures = []
    checked = 0
    for name, case in cases.items():
        if case.get("config"):
            continue
        checked += 1
        compiled = _compiled(json.dumps({}))
        doc = compiled.evaluate(case_input(name))
        got = {
            "allow": doc["allow"],
            "requires_approval": doc["requires_approval"],
            "violations": sorted({v["rule"] for v in doc["violations"]}),
            "approval_reasons": doc["approval_reasons"],
        }
        if got != case["expect"]:
            failures.append(f"{name}: got {got}, expected {case['expect']}")
    assert not failures, "\n".join(failures)
    assert checked >= 40


# Each rule of policies/README.md with one fixture it allows and one it denies.
RULE_FIXTURES = {
    "protected_namespace": ("protected_namespace_allow", "protected_namespace_deny"),
    "namespace_scope": (
        "namespace_scope_node_action_trusted_allow",
        "namespace_scope_cross_namespace_deny",
    ),
    "rate_limit": ("rate_limit_below_max_allow", "rate_limit_at_max_deny"),
    "max_replicas": ("max_replicas_at_limit_allow", "max_replicas_deny"),
    "critical_scale_to_zero": ("scale_to_zero_not_critical_allow", "critical_scale_to_zero_deny"),
    "critical_min_replicas": ("critical_min_replicas_allow", "critical_min_replicas_deny"),
    "bare_pod": ("bare_pod_owned_allow", "bare_pod_deny"),
    "control_plane_node": ("control_plane_uncordon_allow", "control_plane_cordon_deny"),
    "min_schedulable_nodes": ("worker_drain_allow", "min_schedulable_nodes_deny"),
    "concurrent_drain": ("concurrent_drain_target_already_cordoned_allow", "concurrent_drain_deny"),
    "change_freeze": ("change_freeze_weekly_outside_allow", "change_freeze_weekly_deny"),
    "outside_business_hours": ("business_hours_inside_allow", "business_hours_outside_deny"),
    "manifest_kind_not_allowed": (
        "manifest_kind_configured_allow",
        "manifest_kind_not_allowed_deny",
    ),
    "unknown_action": ("rollback_deployment_allow", "unknown_action_deny"),
    "invalid_input": ("invalid_input_bad_now_unused_allow", "invalid_input_bad_now_deny"),
    "invalid_config": ("protected_namespace_allow", "invalid_config_unknown_key_deny"),
}


def test_fixtures_cover_every_rule_with_an_allow_and_a_deny() -> None:
    _, cases = fixtures()
    for rule, (allow, deny) in RULE_FIXTURES.items():
        assert cases[allow]["expect"]["allow"] is True, allow
        assert rule not in cases[allow]["expect"]["violations"], allow
        assert rule in cases[deny]["expect"]["violations"], deny
    rules_in_fixtures = {r for c in cases.values() for r in c["expect"]["violations"]}
    assert rules_in_fixtures == set(RULE_FIXTURES)


# --- the adapter ---------------------------------------------------------------------


async def test_decide_returns_a_domain_decision(engine: EmbeddedPolicy) -> None:
    decision = await engine.decide(case_input("protected_namespace_deny"))
    assert decision.allowed is False
    assert decision.engine == "embedded"
    assert [v.rule for v in decision.violations] == ["protected_namespace"]
    assert decision.violations[0].message == "namespace kube-system is protected"


async def test_approval_is_reported(engine: EmbeddedPolicy) -> None:
    decision = await engine.decide(case_input("production_destructive_approval"))
    assert decision.allowed is True
    assert decision.requires_approval is True


async def test_garbage_input_is_denied_not_an_error(engine: EmbeddedPolicy) -> None:
    for garbage in ({}, {"execution": "x"}, {"time": None, "cluster": 3}):
        decision = await engine.decide(garbage)
        assert decision.allowed is False
        assert "invalid_input" in {v.rule for v in decision.violations}


async def test_concurrent_decisions_each_get_their_own_answer(engine: EmbeddedPolicy) -> None:
    names = ["protected_namespace_deny", "worker_drain_allow", "rate_limit_at_max_deny"] * 20
    decisions = await asyncio.gather(*(engine.decide(case_input(n)) for n in names))
    for name, decision in zip(names, decisions, strict=True):
        assert decision.allowed is name.endswith("allow"), name


async def test_managed_fields_are_not_passed_to_the_engine(engine: EmbeddedPolicy) -> None:
    doc = case_input("critical_min_replicas_deny")
    doc["target"]["object"]["metadata"]["managedFields"] = [{"manager": "m", "fieldsV1": {}}] * 50
    decision = await engine.decide(doc)
    assert [v.rule for v in decision.violations] == ["critical_min_replicas"]
    assert "managedFields" in doc["target"]["object"]["metadata"]  # caller's dict untouched


async def test_input_that_is_not_json_makes_the_engine_unavailable(engine: EmbeddedPolicy) -> None:
    doc = case_input("protected_namespace_allow")
    doc["execution"]["labels"] = {"bad": object()}
    with pytest.raises(PolicyUnavailable):
        await engine.decide(doc)


async def test_undefined_decision_document_denies() -> None:
    policy_set = policy_set_from_sources({"p.rego": "package kexec.safety\n\nother := 1\n"})
    compiled = CompiledPolicy(policy_set, pool_size=1, validate=False)
    decision = compiled.decide(smoke_input())
    assert decision.allowed is False
    assert [v.rule for v in decision.violations] == ["undefined"]


async def test_evaluation_error_makes_the_engine_unavailable() -> None:
    # rego-cpp only notices the unsafe variable when evaluating.
    source = 'package kexec.safety\n\ndecision := {"allow": x}\n'
    compiled = CompiledPolicy(policy_set_from_sources({"p.rego": source}), validate=False)
    with pytest.raises(PolicyUnavailable, match="Not a term"):
        compiled.decide(smoke_input())


async def test_closed_engine_is_unavailable() -> None:
    policy = EmbeddedPolicy(repo_policy_set(), pool_size=1)
    policy.close()
    with pytest.raises(PolicyUnavailable):
        await policy.decide(smoke_input())


# --- validation of a policy set (the load-time gate) ---------------------------------------


def test_syntax_error_names_file_line_and_column() -> None:
    modules = {**repo_policy_set().modules, "extra.rego": "package kexec.safety\n\nfoo if {\n"}
    with pytest.raises(PolicyLoadError, match=r"extra\.rego:3:\d+: this is unclosed"):
        CompiledPolicy(policy_set_from_sources(modules, dict(repo_policy_set().data)))


def test_mistyped_knob_is_refused_with_the_reason() -> None:
    with pytest.raises(PolicyLoadError, match="max_replicas must be of type number, not string"):
        CompiledPolicy(config_set({"max_replicas": "100"}))


def test_malformed_freeze_window_is_refused() -> None:
    with pytest.raises(PolicyLoadError, match=r"freeze_windows\[0\]"):
        CompiledPolicy(config_set({"freeze_windows": [{"weekdays": [2], "start_hour": 9}]}))


def test_missing_configuration_is_refused() -> None:
    modules = dict(repo_policy_set().modules)
    with pytest.raises(PolicyLoadError, match=r"data\.kexec\.config must be an object"):
        CompiledPolicy(policy_set_from_sources(modules, {}))
    config = dict(repo_policy_set().data["kexec"]["config"])
    del config["max_replicas"]
    partial = {"kexec": {"config": config}}
    with pytest.raises(PolicyLoadError, match="missing configuration key max_replicas"):
        CompiledPolicy(policy_set_from_sources(modules, partial))


def test_policy_that_allows_an_empty_input_is_refused() -> None:
    source = 'package kexec.safety\n\ndecision := {"allow": true, "violations": []}\n'
    with pytest.raises(PolicyLoadError, match="allows an empty input"):
        CompiledPolicy(policy_set_from_sources({"p.rego": source}))


def test_malformed_decision_document_is_refused() -> None:
    source = 'package kexec.safety\n\ndecision := {"allow": "yes"}\n'
    with pytest.raises(PolicyLoadError, match="allow must be a boolean"):
        CompiledPolicy(policy_set_from_sources({"p.rego": source}))


def test_valid_custom_configuration_is_accepted() -> None:
    overrides = {
        "max_replicas": 10,
        "freeze_windows": [{"name": "weekend", "weekdays": [5, 6], "start_hour": 0, "end_hour": 24}],
        "business_hours": {
            "enabled": True,
            "weekdays": [0, 1, 2, 3, 4],
            "start_hour": 7,
            "end_hour": 19,
        },
    }
    compiled = CompiledPolicy(config_set(overrides), pool_size=1)
    doc = case_input("max_replicas_at_limit_allow")  # asks for 100 replicas
    assert [v.rule for v in compiled.decide(doc).violations] == ["max_replicas"]


_LOAD_ORDER = """
import sys
{prelude}
import kexec.adapters.policy.embedded as embedded
print(embedded.LOADED_AFTER_LIBSTDCXX)
"""


def _loaded_after_libstdcxx(prelude: str) -> bool:
    out = subprocess.run([sys.executable, "-c", _LOAD_ORDER.format(prelude=prelude)],
                         check=True, capture_output=True, text=True, timeout=120)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_the_controller_command_loads_rego_cpp_before_libstdcxx() -> None:
    # Loaded after libstdc++, rego-cpp leaks its key strings on every decision (≈ 115 MB
    # per 1,000: bench/policy_latency.py); `kexec controller` loads it first.
    controller = ("sys.argv = ['kexec', 'controller', '--help']\n"
                  "from kexec.entrypoints import launch\n"
                  "try:\n    launch.main()\nexcept SystemExit:\n    pass\n"
                  "import kexec.entrypoints.controller")
    assert not _loaded_after_libstdcxx(controller)
    assert _loaded_after_libstdcxx("import aiohttp")  # the order that leaks is detected


def test_the_input_reaches_the_engine_as_regopy_would_convert_it() -> None:
    # _set_input pushes the document through the C API itself; it must build exactly the
    # value regopy's Interpreter.set_input builds.
    slot = _Slot(policy_set_from_sources({"echo.rego": "package kexec.safety\n\ndecision := input\n"}))
    documents: list[Any] = [
        {"a": [1, 2.5, None, True, False, "é q", {"b": []}], "n": -(2**40), "t": (1, "x"), "s": {"z"}},
        copy.deepcopy(case_input("max_replicas_at_limit_allow")),
        [],
        "text",
    ]
    for document in documents:
        ours = slot.evaluate(document)
        slot.interpreter.set_input(document)
        output = _rego_c.rego_bundle_query(slot.interpreter._impl, slot.bundle._impl)
        try:
            theirs = _parse_output(bool(_rego_c.rego_output_ok(output)), _rego_c.rego_output_string(output))
        finally:
            _rego_c.rego_free_output(output)
        assert ours == theirs and ours is not None
    with pytest.raises(PolicyEvaluationError, match="TypeError"):
        slot.evaluate({"x": object()})
