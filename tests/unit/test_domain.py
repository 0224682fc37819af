"""Phase machine, parameter validation (with property tests), spec parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kexec.domain.actions import ACTIONS
from kexec.domain.errors import ValidationError
from kexec.domain.fields import is_dns1123_label, parse_duration
from kexec.domain.phases import TERMINAL, TRANSITIONS, IllegalTransition, Phase, check_transition
from kexec.domain.spec import parse_spec


def test_transition_table() -> None:
    check_transition(None, Phase.PENDING)
    check_transition(Phase.VERIFYING, Phase.ROLLBACK_READY)
    for phase in Phase:
        if phase not in TERMINAL:
            check_transition(phase, Phase.FAILED)
    for phase in TERMINAL:
        assert TRANSITIONS[phase] == frozenset()
        with pytest.raises(IllegalTransition):
            check_transition(phase, Phase.FAILED)
    with pytest.raises(IllegalTransition):
        check_transition(Phase.PENDING, Phase.EXECUTING)
    with pytest.raises(IllegalTransition):
        check_transition(Phase.EXECUTING, Phase.ROLLBACK_READY)


def _scale(replicas: object) -> dict[str, object]:
    return {"action": "scale_deployment",
            "parameters": {"scaleDeployment": {"namespace": "a", "deployment": "b",
                                               "replicas": replicas}}}


@given(st.integers(min_value=0, max_value=1000))
def test_replicas_in_range_accepted(n: int) -> None:
    _, _, params = parse_spec(_scale(n))
    assert params.replicas == n


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=1001)))
def test_replicas_out_of_range_rejected_with_the_field(n: int) -> None:
    with pytest.raises(ValidationError) as err:
        parse_spec(_scale(n))
    assert [e.path for e in err.value.errors] == ["spec.parameters.scaleDeployment.replicas"]


@given(st.text(max_size=70))
def test_namespace_names_follow_dns1123(name: str) -> None:
    spec = {"action": "rollout_restart",
            "parameters": {"rolloutRestart": {"namespace": name, "deployment": "d"}}}
    if is_dns1123_label(name):
        parse_spec(spec)
    else:
        with pytest.raises(ValidationError):
            parse_spec(spec)


@given(st.integers(min_value=1, max_value=2000))
def test_timeout_bound_is_15_minutes(seconds: int) -> None:
    spec = {**_scale(1), "timeout": f"{seconds}s"}
    if seconds <= 900:
        assert parse_spec(spec)[0].timeout_seconds == seconds
    else:
        with pytest.raises(ValidationError):
            parse_spec(spec)


@given(st.integers(min_value=-5, max_value=10))
def test_max_retries_bounds(n: int) -> None:
    spec = {**_scale(1), "maxRetries": n}
    if 0 <= n <= 5:
        assert parse_spec(spec)[0].max_retries == n
    else:
        with pytest.raises(ValidationError):
            parse_spec(spec)


@given(st.integers(min_value=-10, max_value=4000))
def test_grace_period_bounds(n: int) -> None:
    spec = {"action": "delete_pod",
            "parameters": {"deletePod": {"namespace": "a", "pod": "p", "gracePeriodSeconds": n}}}
    if 0 <= n <= 3600:
        parse_spec(spec)
    else:
        with pytest.raises(ValidationError):
            parse_spec(spec)


def test_parameters_key_must_match_action() -> None:
    with pytest.raises(ValidationError) as err:
        parse_spec({"action": "scale_deployment", "parameters": {"cordonNode": {"node": "n"}}})
    assert err.value.errors[0].path == "spec.parameters"


def test_unknown_action() -> None:
    with pytest.raises(ValidationError) as err:
        parse_spec({"action": "reboot_cluster", "parameters": {"x": {}}})
    assert err.value.errors[0].path == "spec.action"


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_apply_manifest_refuses_secrets_and_unknown_kinds() -> None:
    for kind in ("Secret", "ClusterRoleBinding"):
        with pytest.raises(ValidationError) as err:
            ACTIONS["apply_manifest"].parse({"manifest": {
                "apiVersion": "v1", "kind": kind, "metadata": {"name": "x", "namespace": "a"}}})
        assert err.value.errors[0].path == "spec.parameters.applyManifest.manifest.kind"


def test_every_action_round_trips_its_parameters() -> None:
    examples = {
        "scale_deployment": {"namespace": "a", "deployment": "d", "replicas": 3},
        "rollout_restart": {"namespace": "a", "deployment": "d"},
        "delete_pod": {"namespace": "a", "pod": "p", "gracePeriodSeconds": 5},
        "patch_deployment": {"namespace": "a", "deployment": "d", "patchType": "merge",
                             "patch": {"spec": {"paused": True}}},
        "cordon_node": {"node": "n"},
        "drain_node": {"node": "n", "ignoreDaemonSets": True, "deleteEmptyDirData": False,
                       "force": False},
        "uncordon_node": {"node": "n"},
        "update_configmap": {"namespace": "a", "configMap": "c", "data": {"k": "v"}},
        "update_secret": {"namespace": "a", "secret": "s", "sourceSecretRef": {"name": "t"}},
        "apply_manifest": {"manifest": {"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": "c", "namespace": "a"}}},
        "rollback_deployment": {"namespace": "a", "deployment": "d", "toRevision": 0},
    }
    assert set(examples) == set(ACTIONS)
    for name, raw in examples.items():
        action = ACTIONS[name]
        assert action.to_dict(action.parse(raw)) == raw, name
        assert action.rules, name
        assert 0 < action.default_timeout_seconds <= 900
