"""`kexec run/get/describe` on the fakes: the document, the offline errors, the views."""

from __future__ import annotations

from datetime import timedelta

from click.testing import CliRunner
from tests.unit.world import NS, World

from kexec.domain.phases import Phase
from kexec.entrypoints.cli import cli, validation_errors
from kexec.entrypoints.cli_run import (
    describe_text,
    execution_document,
    follow_execution,
    get_rows,
    parse_params,
)


def test_params_are_yaml_values_and_dots_nest() -> None:
    assert parse_params(("replicas=3", "force=true", "name=web", "ref.name=s", "x=")) == {
        "replicas": 3, "force": True, "name": "web", "ref": {"name": "s"}, "x": ""}


def test_the_document_takes_the_namespace_and_validates_like_kexec_validate() -> None:
    doc = execution_document("scale_deployment", NS, {"deployment": "web", "replicas": 2},
                             dry_run=True, timeout="90s")
    assert doc["spec"] == {"action": "scale_deployment", "dryRun": True, "timeout": "90s",
                           "parameters": {"scaleDeployment": {
                               "namespace": NS, "deployment": "web", "replicas": 2}}}
    assert validation_errors(doc) == []
    bad = CliRunner().invoke(cli, ["run", "scale_deployment", "-n", NS, "-p", "deployment=web",
                                   "-p", "replicas=many", "--timeout", "1h"])
    assert bad.exit_code == 2
    assert "spec.parameters.scaleDeployment.replicas: must be an integer" in bad.output
    assert "spec.timeout: must be between 1s and 15m" in bad.output


async def test_follow_prints_each_change_and_returns_the_terminal_execution() -> None:
    w = World()
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 4})
    await w.drive()
    lines: list[str] = []
    ex = await follow_execution(w.cluster, NS, "ex", 5, lines.append, interval=0)
    assert ex is not None and ex.phase is Phase.COMPLETED
    text = "\n".join(lines)
    assert "phase Completed (Succeeded)" in text and "job ex-" in text
    assert "condition " in text


async def test_follow_gives_up_after_its_timeout() -> None:
    w = World()
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 4})
    lines: list[str] = []
    assert await follow_execution(w.cluster, NS, "ex", 0, lines.append, interval=0) is None
    assert lines and "phase New" in lines[0]


async def test_get_and_describe_show_columns_timeline_and_rollback() -> None:
    w = World()
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 4})
    ex = await w.drive()
    later = w.clock.now() + timedelta(minutes=5)
    (row,) = get_rows([ex], later)
    assert row[:6] == [NS, "ex", "scale_deployment", "Deployment/team-a/web", "Completed",
                       "Succeeded"]
    assert row[6].endswith(("m", "s")) and row[7] != "-"
    text = describe_text(ex, later)
    for part in ("Timeline:", "Pending", "Validating", "Executing", "Completed",
                 "Conditions:", "Policy decision:", "Dry run: passed", "Job: ex-",
                 f"Rollback: kexec rollback ex -n {NS}"):
        assert part in text, part
