"""deploy/monitoring/ checked for real: promtool checks the rules and runs their unit tests,
the dashboard's PromQL parses, the Operator form equals the rule file, every alert has a
test and a runbook, and every metric they use is documented. (tests/e2e/test_cli_e2e.py
scrapes a real controller for the same metrics and labels.)"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
_SELECTOR = re.compile(r"\b((?:kexec|workqueue)_[a-z0-9_]+)\b(\{[^}]*\})?")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@cache
def promtool() -> str:
    """The promtool binary (built from the Prometheus Go module and cached on first use)."""
    out = subprocess.run(["bash", str(ROOT / "hack" / "build-promtool.sh")], check=True,
                         capture_output=True, text=True, timeout=3600)
    return out.stdout.strip().splitlines()[-1]


def rule_groups() -> list[dict[str, object]]:
    return list(yaml.safe_load((MONITORING / "rules.yaml").read_text())["groups"])


def rule_exprs() -> list[str]:
    return [str(r["expr"]) for g in rule_groups() for r in g["rules"]]  # type: ignore[attr-defined]


def dashboard_exprs() -> list[str]:
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def used_metrics(exprs: list[str]) -> dict[str, set[str]]:
    """Sample names used by the expressions → the label names they select or group by."""
    used: dict[str, set[str]] = {}
    for expr in exprs:
        by = {label.strip() for group in _BY.findall(expr) for label in group.split(",")
              if label.strip()}
        names = []
        for name, matchers in _SELECTOR.findall(expr):
            names.append(name)
            used.setdefault(name, set()).update(_MATCHER.findall(matchers or ""))
        for name in names:  # `by` labels: on every metric of the expression that has them
            used[name].update(by - {"le"} if not name.endswith("_bucket") else by)
    return used


def family(sample: str) -> str:
    return re.sub(r"_(bucket|count|sum|total|info)$", "", sample)


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    check = subprocess.run([promtool(), "check", "rules", str(MONITORING / "rules.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr
    run = subprocess.run([promtool(), "test", "rules", "rules_test.yaml"], cwd=MONITORING,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_the_dashboard_promql_parses(tmp_path: Path) -> None:
    as_rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(as_rules))
    check = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_alert_has_firing_and_quiet_tests_and_a_runbook() -> None:
    tests = yaml.safe_load((MONITORING / "rules_test.yaml").read_text())["tests"]
    firing, quiet = set(), set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = [r for g in rule_groups() for r in g["rules"] if "alert" in r]  # type: ignore[attr-defined]
    runbooks = (ROOT / "docs" / "operations.md").read_text()
    for rule in alerts:
        assert rule["alert"] in firing, f"{rule['alert']}: no test where it fires"
        assert f"### {rule['alert']}" in runbooks, f"{rule['alert']}: no runbook"
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())
        assert rule["labels"]["severity"] in ("warning", "critical")
    assert {"KexecErrorBudgetBurnFast", "KexecErrorBudgetBurnSlow", "KexecJobCreationSlow",
            "KexecDryRunFailureRateHigh", "KexecExecutionsStuck", "KexecAuditBacklog",
            "KexecNoLeader", "KexecStormBrakeTripped"} <= {r["alert"] for r in alerts}
    assert len(quiet) >= 6  # and most also have a case where they must stay quiet


def test_the_operator_rule_is_the_rule_file() -> None:
    operator = yaml.safe_load((MONITORING / "prometheus-rule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == rule_groups()


def test_every_metric_used_is_documented_with_its_labels() -> None:
    readme = (ROOT / "README.md").read_text()
    used = used_metrics(rule_exprs() + dashboard_exprs())
    assert len(used) >= 15
    for sample, labels in used.items():
        if sample.startswith("workqueue_"):
            assert "`workqueue_*`" in readme
            continue
        row = next((line for line in readme.splitlines()
                    if line.startswith("| `") and family(line.split("`")[1]) == family(sample)),
                   None)
        assert row is not None, f"{sample} is not in the README metrics table"
        for label in labels - {"le"}:
            assert f"`{label}`" in row, f"{sample}: label {label} not documented"
