"""Structured logs: JSON lines with the execution's fields, the level honoured."""

from __future__ import annotations

import io
import json
import logging

from tests.unit.world import NS, World

from kexec.entrypoints.cli_logging import JsonFormatter, TextFormatter, configure_logging, log_context


def _capture(formatter: logging.Formatter) -> tuple[io.StringIO, logging.Handler]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logging.getLogger().addHandler(handler)
    return out, handler


async def test_a_run_logs_json_lines_with_the_execution_fields_and_no_secret() -> None:
    configure_logging("json", "info")
    out, handler = _capture(JsonFormatter())
    try:
        w = World()
        await w.create("update_secret", {"namespace": NS, "secret": "creds",
                                         "sourceSecretRef": {"name": "creds-new"}})
        with log_context(step="test"):
            ex = await w.drive()
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    ours = [line for line in lines if line.get("execution") == "ex"]
    # One line per status write: the Job's success and the postconditions holding at once
    # are one write (Executing → Completed; the transitions still list Verifying).
    assert [line["phase"] for line in ours] == ["Preparing", "Executing", "Completed"]
    first = ours[0]
    assert first["namespace"] == NS and first["uid"] == ex.uid
    assert first["action"] == "update_secret" and first["level"] == "info"
    assert first["reason"] == "Validated" and first["step"] == "test"
    assert "→" in first["msg"]
    assert "new-password-value" not in out.getvalue() and "svc-user" not in out.getvalue()


def test_text_format_appends_fields_and_level_filters() -> None:
    configure_logging("text", "warning")
    out, handler = _capture(TextFormatter())
    try:
        log = logging.getLogger("kexec.test")
        log.info("hidden")
        with log_context(execution="a", namespace="b"):
            log.warning("shown", extra={"reason": "R"})
    finally:
        logging.getLogger().removeHandler(handler)
    text = out.getvalue()
    assert "hidden" not in text
    assert text.strip().endswith("shown execution=a namespace=b reason=R")


def test_cli_and_controller_take_the_flags() -> None:
    from click.testing import CliRunner

    from kexec.entrypoints.cli import cli

    result = CliRunner().invoke(cli, ["--log-format", "json", "--log-level", "debug", "actions",
                                      "-o", "json"])
    assert result.exit_code == 0, result.output
    help_text = CliRunner().invoke(cli, ["controller", "--help"]).output
    assert "--log-format [text|json]" in help_text and "--log-level" in help_text
    configure_logging("text", "warning")
