"""The CLI on the real control plane: `kexec run --follow` on a terminal (a pty), `get`,
`describe` (with the audit trail), approval while following, failures, the kubectl plugin."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devstack.harness import Kexec, free_port
from tests.e2e.test_actions_e2e import dep, fresh_ns, kexec_cli, ready_deployment

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def run_on_pty(kexec: Kexec, *args: str, timeout: float = 120,
               until: str = "", then: object = None) -> tuple[int, str]:
    """`kexec ARGS` with its stdout on a pseudo-terminal, as an operator sees it. When the
    output shows ``until``, ``then()`` is called once (e.g. to approve)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(BIN / "kexec"), *args, "--kubeconfig", str(kexec.cp.kubeconfig)],
                            stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    out = b""
    done_then = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the process closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if until and not done_then and until in out.decode(errors="replace"):
                done_then = True
                then()  # type: ignore[operator]
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    return code, out.decode(errors="replace").replace("\r\n", "\n")


def created_name(output: str) -> str:
    line = next(x for x in output.splitlines() if x.startswith("created "))
    return line.split("/", 1)[1].strip()


def test_run_follow_completes_then_get_and_describe_show_it(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "cli")
    ready_deployment(kexec, ns, "web", 1)
    code, out = run_on_pty(kexec, "run", "scale_deployment", "-n", ns, "-p", "deployment=web",
                           "-p", "replicas=2", "--follow")
    print(out)
    assert code == 0, out
    name = created_name(out)
    for line in ("phase Preparing (Validated)", "phase Executing (JobCreated)",
                 "phase Completed (Succeeded)", "job ", "condition ",
                 f"{ns}/{name}: Completed (Succeeded) after"):
        assert line in out, line
    assert dep(kexec, ns, "web")["spec"]["replicas"] == 2

    got = kexec_cli(kexec, "get", "-n", ns)
    assert got.returncode == 0, got.stderr
    header, row = got.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "ACTION", "TARGET", "PHASE", "REASON", "AGE", "DURATION"]
    assert row.split()[:5] == [name, "scale_deployment", f"Deployment/{ns}/web", "Completed",
                               "Succeeded"]

    described = kexec_cli(kexec, "describe", name, "-n", ns, "--dsn", kexec.dsn)
    assert described.returncode == 0, described.stderr
    text = described.stdout
    print(text)
    for part in ("Timeline:", "Validating", "Verifying", "Conditions:", "Policy decision:",
                 "Dry run: passed", f"Rollback: kexec rollback {name} -n {ns}", "Audit trail:",
                 "Completed"):
        assert part in text, part
    assert "no audit record yet" not in text and "unavailable" not in text

    # The kubectl plugin: kubectl finds kubectl-kexec on PATH.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    assert kexec.cp.bin_dir is not None
    plugin = subprocess.run([str(kexec.cp.bin_dir / "kubectl"), "kexec", "get", "-n", ns,
                             "--kubeconfig", str(kexec.cp.kubeconfig)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert plugin.returncode == 0, plugin.stderr
    assert name in plugin.stdout and "Completed" in plugin.stdout


def test_follow_waits_for_an_approval_given_by_another_person(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "cliprod", environment="production")
    ready_deployment(kexec, ns, "web", 1)
    approved: list[subprocess.CompletedProcess[str]] = []

    def approve_as_alice() -> None:
        names = kexec.api("GET", "/apis/kubernetesexecution.kubernaut.io/v1alpha1/namespaces/"
                          f"{ns}/kubernetesexecutions")["items"]
        approved.append(kexec_cli(kexec, "approve", names[0]["metadata"]["name"], "-n", ns,
                                  "--as", "alice"))

    code, out = run_on_pty(kexec, "run", "rollout_restart", "-n", ns, "-p", "deployment=web",
                           "--follow", until="phase WaitingApproval", then=approve_as_alice)
    print(out)
    assert approved and approved[0].returncode == 0, approved and approved[0].stderr
    assert code == 0, out
    assert out.index("phase WaitingApproval") < out.index("phase Completed")
    assert "condition Approved=True" in out


def test_follow_exits_non_zero_on_failure_and_dry_run_changes_nothing(kexec: Kexec) -> None:
    ns = fresh_ns(kexec, "clifail")
    ready_deployment(kexec, ns, "web", 1)
    code, out = run_on_pty(kexec, "run", "scale_deployment", "-n", ns, "-p", "deployment=absent",
                           "-p", "replicas=2", "--follow")
    assert code == 1, out
    assert "phase Failed (TargetNotFound)" in out

    code, out = run_on_pty(kexec, "run", "scale_deployment", "-n", ns, "-p", "deployment=web",
                           "-p", "replicas=3", "--dry-run", "--follow")
    assert code == 0, out
    assert "phase Completed" in out and "phase Executing" not in out
    assert dep(kexec, ns, "web")["spec"]["replicas"] == 1

    # Invalid: refused offline with the errors of `kexec validate`, nothing created.
    bad = kexec_cli(kexec, "run", "scale_deployment", "-n", ns, "-p", "deployment=web",
                    "-p", "replicas=-1")
    assert bad.returncode == 2 and "spec.parameters.scaleDeployment.replicas" in bad.stderr
    items = kexec.api("GET", "/apis/kubernetesexecution.kubernaut.io/v1alpha1/namespaces/"
                      f"{ns}/kubernetesexecutions")["items"]
    assert len(items) == 2


def test_the_audit_prune_cronjob_is_accepted_by_the_api_server(kexec: Kexec) -> None:
    manifest = Path(__file__).resolve().parents[2] / "deploy" / "base" / "audit-prune-cronjob.yaml"
    out = kexec.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    assert "cronjob.batch/kexec-audit-prune created (server dry run)" in out.stdout, out.stderr


def _scrape(port: int, token: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
           **labels: str) -> float:
    return sum(v for got, v in samples.get(name, [])
               if all(got.get(k) == want for k, want in labels.items()))


def test_metrics_after_a_run_hold_everything_the_dashboard_and_rules_use(
        kexec: Kexec, tmp_path: Path) -> None:
    """A controller serving /metrics: run a success and a denial through it, then every
    metric the rules and the dashboard use exists with their labels and the counters moved."""
    from tests.unit.test_metrics_monitoring import dashboard_exprs, rule_exprs, used_metrics

    token = "e2e-metrics-token"
    (tmp_path / "token").write_text(token)
    port = free_port()
    kexec.replace_controllers(("e2e-1", ("--no-leader-elect", "--metrics-token-file",
                                         str(tmp_path / "token"), "--log-format", "json"), port))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                before = _scrape(port, token)
                if _value(before, "kexec_leader") == 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the controller did not serve /metrics"
            time.sleep(0.3)
        ns = fresh_ns(kexec, "metrics")
        ready_deployment(kexec, ns, "web", 1)
        code, out = run_on_pty(kexec, "run", "scale_deployment", "-n", ns, "-p", "deployment=web",
                               "-p", "replicas=2", "--follow")
        assert code == 0, out
        code, out = run_on_pty(kexec, "run", "scale_deployment", "-n", ns, "-p", "deployment=web",
                               "-p", "replicas=500", "--follow")
        assert code == 1 and "PolicyDenied" in out, out
        after = _scrape(port, token)

        missing = []
        for name, labels in sorted(used_metrics(rule_exprs() + dashboard_exprs()).items()):
            series = after.get(name, [])
            if not series:
                missing.append(name)
                continue
            have = set().union(*(set(s) for s, _ in series))
            missing += [f"{name}{{{label}}}" for label in labels - have]
        assert missing == [], f"used by deploy/monitoring but not exported: {missing}"

        def moved(name: str, **labels: str) -> float:
            return _value(after, name, **labels) - _value(before, name, **labels)

        assert moved("kexec_executions_total", action="scale_deployment", result="Completed") == 1
        assert moved("kexec_executions_total", action="scale_deployment", result="Failed") == 1
        assert moved("kexec_phase_transitions_total", phase="Failed", reason="PolicyDenied") == 1
        assert moved("kexec_phase_transitions_total", phase="Completed", reason="Succeeded") == 1
        assert moved("kexec_policy_decisions_total", result="allow") == 1
        assert moved("kexec_policy_decisions_total", result="deny") == 1
        assert sum(v for labels, v in after["kexec_policy_denials_total"]) >= 1
        assert moved("kexec_dry_run_validations_total", result="success") == 1
        assert moved("kexec_job_creation_seconds_count") == 1
        assert moved("kexec_job_duration_seconds_count", action="scale_deployment",
                     result="success") == 1
        assert moved("kexec_execution_duration_seconds_count", action="scale_deployment") == 2
        assert _value(after, "kexec_audit_writes_total", result="confirmed") >= 2
        assert _value(after, "kexec_build_info") == 1
        # Bounded labels: no execution name, namespace or UID in any label value.
        values = {v for series in after.values() for labels, _ in series for v in labels.values()}
        assert not [v for v in values if ns in v or "scale-deployment-" in v]
        # JSON logs with the execution's fields.
        lines = [json.loads(line) for line in kexec.controller_log().splitlines()
                 if line.startswith("{")]
        ours = [line for line in lines if line.get("namespace") == ns and "phase" in line]
        assert {"Completed", "Failed"} <= {line["phase"] for line in ours}
        assert all({"execution", "uid", "action", "reason"} <= set(line) for line in ours)
    finally:
        kexec.default_controller()
