"""Policy sets: loading from a directory or from sources, versions, input preparation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kexec.adapters.policy.bundle import (
    PolicyLoadError,
    check_decision_document,
    default_policy_dir,
    load_policy_dir,
    policy_set_from_sources,
    prepare_input,
    smoke_input,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_repo_policy_dir_loads_modules_without_tests_and_with_data() -> None:
    policy_set = load_policy_dir(POLICIES)
    assert "kexec/safety/decision.rego" in policy_set.modules
    assert not [name for name in policy_set.modules if name.endswith("_test.rego")]
    assert policy_set.data["kexec"]["config"]["max_replicas"] == 100
    assert "testdata" not in policy_set.data  # testdata feeds `opa test` only
    assert policy_set.source == f"dir:{POLICIES}"


def test_tests_can_be_included() -> None:
    policy_set = load_policy_dir(POLICIES, include_tests=True)
    assert "kexec/safety/decision_test.rego" in policy_set.modules


def test_default_policy_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEXEC_POLICY_DIR", raising=False)
    assert (default_policy_dir() / "kexec" / "safety" / "decision.rego").is_file()
    (tmp_path / "p.rego").write_text("package kexec.safety\n")
    monkeypatch.setenv("KEXEC_POLICY_DIR", str(tmp_path))
    assert default_policy_dir() == tmp_path


def test_version_is_a_content_hash() -> None:
    a = policy_set_from_sources({"a.rego": "package x\n"}, {"k": 1}, source="one")
    b = policy_set_from_sources({"a.rego": "package x\n"}, '{"k": 1}', source="two")
    c = policy_set_from_sources({"a.rego": "package x\n"}, {"k": 2})
    d = policy_set_from_sources({"b.rego": "package x\n"}, {"k": 1})
    assert a.version == b.version  # same content, whatever the source
    assert len({a.version, c.version, d.version}) == 3
    assert len(a.version) == 16


def test_data_is_copied_not_shared() -> None:
    data = {"kexec": {"config": {"max_replicas": 3}}}
    policy_set = policy_set_from_sources({"a.rego": "package x\n"}, data)
    data["kexec"]["config"]["max_replicas"] = 4
    assert policy_set.data["kexec"]["config"]["max_replicas"] == 3


@pytest.mark.parametrize(
    ("modules", "data", "message"),
    [
        ({}, None, "no Rego modules"),
        ({"a_test.rego": "package x\n"}, None, "no Rego modules"),
        ({"notes.txt": "hi"}, None, "no Rego modules"),
        ({"a.rego": "package x\n"}, "{not json", "not valid JSON"),
        ({"a.rego": "package x\n"}, "[1, 2]", "must be a JSON object"),
    ],
)
def test_invalid_sources_are_refused(modules: dict[str, str], data: str | None, message: str) -> None:
    with pytest.raises(PolicyLoadError, match=message):
        policy_set_from_sources(modules, data)


def test_missing_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="does not exist"):
        load_policy_dir(tmp_path / "nope")


def test_prepare_input_drops_managed_fields_only() -> None:
    doc = smoke_input()
    doc["target"]["object"]["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    prepared = prepare_input(doc)
    assert "managedFields" not in prepared["target"]["object"]["metadata"]
    assert prepared["target"]["object"]["metadata"]["name"] == "smoke"
    assert prepared["execution"] == doc["execution"]
    assert doc["target"]["object"]["metadata"]["managedFields"] == [{"manager": "kubectl"}]
    assert prepare_input({"target": "odd"}) == {"target": "odd"}


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (None, "undefined"),
        ([], "list"),
        ({"violations": []}, "allow must be a boolean"),
        ({"allow": True, "requires_approval": "no"}, "requires_approval"),
        ({"allow": False, "violations": {"a": 1}}, "must be a list"),
        ({"allow": False, "violations": [{"rule": "r"}]}, "entries"),
        ({"allow": True, "violations": [{"rule": "r", "message": "m"}]}, "although"),
    ],
)
def test_malformed_decision_documents_are_explained(doc: object, problem: str) -> None:
    assert problem in (check_decision_document(doc) or "")


def test_well_formed_decision_document() -> None:
    assert check_decision_document({"allow": True}) is None
    doc = {"allow": False, "requires_approval": True, "violations": [{"rule": "r", "message": "m"}]}
    assert check_decision_document(doc) is None


def test_data_json_is_valid_json_object() -> None:
    assert isinstance(json.loads((POLICIES / "data.json").read_text())["kexec"]["config"], dict)
