"""The `kexec` CLI: actions, validate, policy eval (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from kexec.entrypoints.cli import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def test_actions_lists_the_eleven_actions() -> None:
    result = CliRunner().invoke(cli, ["actions", "-o", "json"])
    assert result.exit_code == 0
    described = json.loads(result.output)
    assert len(described) == 11
    scale = next(a for a in described if a["action"] == "scale_deployment")
    assert {"name": "replicas", "minimum": 0, "maximum": 1000}.items() <= scale["parameters"][2].items()
    table = CliRunner().invoke(cli, ["actions"]).output
    assert "drain_node" in table and "pods/eviction" in table


def test_validate_accepts_every_example() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        result = CliRunner().invoke(cli, ["validate", str(path)])
        assert result.exit_code == 0, (path, result.output)


def test_validate_names_the_bad_field_and_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", str(EXAMPLES / "invalid" / "scale-too-many.yaml")])
    assert result.exit_code == 2
    assert "spec.parameters.scaleDeployment.replicas" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1",
                                   "kind": "KubernetesExecution", "metadata": {"name": "x"},
                                   "spec": {"action": "drain_node", "timeout": "1h",
                                            "parameters": {"drainNode": {"node": "Bad_Node"}}}}))
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "spec.timeout" in result.output and "spec.parameters.drainNode.node" in result.output
    missing = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_policy_eval_shows_the_decision(tmp_path: Path) -> None:
    ok = CliRunner().invoke(cli, ["policy", "eval", str(EXAMPLES / "scale-deployment.yaml")])
    assert ok.exit_code == 0 and "allowed" in ok.output
    doc = yaml.safe_load((EXAMPLES / "scale-deployment.yaml").read_text())
    doc["spec"]["parameters"]["scaleDeployment"]["replicas"] = 500
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(doc))
    denied = CliRunner().invoke(cli, ["policy", "eval", str(path)])
    assert denied.exit_code == 1 and "max_replicas" in denied.output
    prod = CliRunner().invoke(cli, ["policy", "eval", str(EXAMPLES / "rollout-restart.yaml"),
                                    "--namespace-label", "environment=production", "-o", "json"])
    assert json.loads(prod.output)["requiresApproval"] is True
