"""``kexec audit``: read the audit trail (PostgreSQL).

    kexec audit NAME [-n NS]                     one execution with all its transitions
    kexec audit [--since 1h|7d|2024-05-01] [--action A] [-n NS]
                [--result success|failure|pending] [--limit N]
    ... [-o table|json] [--dsn DSN | $KEXEC_AUDIT_DSN]

The SQL lives in the adapter (AuditQueries.get/query); this module parses options
and formats.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import click
from rich import box
from rich.console import Console
from rich.table import Table

from kexec.adapters.audit.postgres import StoredExecution, open_audit
from kexec.application.ports.audit import AuditUnavailable

_DURATION = re.compile(r"^(?:\d+(?:w|d|h|m|s))+$")
_DURATION_PART = re.compile(r"(\d+)(w|d|h|m|s)")
_UNIT = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_window(text: str) -> timedelta | None:
    """``1h``, ``7d``, ``1h30m``, ``2w`` as a timedelta; None when it is not one."""
    if not _DURATION.match(text):
        return None
    delta = timedelta()
    for amount, unit in _DURATION_PART.findall(text):
        delta += timedelta(**{_UNIT[unit]: int(amount)})
    return delta


def parse_since(value: str, *, now: datetime | None = None) -> datetime:
    """``1h``, ``7d``, ``1h30m``, ``2w`` (ago), or an ISO date/datetime (UTC if naive)."""
    text = value.strip()
    window = parse_window(text)
    if window is not None:
        return (now or datetime.now(UTC)) - window
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration (30m, 1h, 7d, 2w) nor an ISO date/time",
            param_hint="--since",
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def redact_dsn(dsn: str) -> str:
    """host:port/db of a DSN, never its password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return f"{host}{port}{parts.path or ''}"
    except ValueError:
        return "<unparseable DSN>"


# ---------------------------------------------------------------------- formatting


def _ts(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s"


def _result(success: bool | None) -> str:
    return "pending" if success is None else ("success" if success else "failure")


def _target(e: StoredExecution) -> str:
    r = e.record
    name = f"{r.target_kind}/{r.target_name}" if r.target_kind else r.target_name
    return f"{r.target_namespace}/{name}" if r.target_namespace else name


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    tty = sys.stdout.isatty()
    width = shutil.get_terminal_size((160, 40)).columns if tty else 200
    return Console(
        file=buf, width=width, force_terminal=tty, no_color=not tty, highlight=False
    ), buf


def render_list(rows: list[StoredExecution]) -> str:
    console, buf = _console()
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("CREATED", "NAMESPACE", "NAME", "ACTION", "TARGET", "PHASE", "RESULT",
                "DURATION", "REASON"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for e in rows:
        r = e.record
        table.add_row(
            _ts(r.created_at), r.namespace, r.name, r.action + (" (dry run)" if r.dry_run else ""),
            _target(e), r.phase, _result(r.success), _duration(e.duration_ms), r.reason,
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(rows)} execution(s)")
    return _strip(buf.getvalue())


def _strip(text: str) -> str:
    """No trailing padding on each line (friendlier to pipes and diffs)."""
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def _json_block(value: Any) -> str:
    if value is None or value == {}:
        return "-"
    return json.dumps(value, sort_keys=True, default=str)


def render_one(e: StoredExecution, others: int) -> str:
    console, buf = _console()
    r = e.record
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    workflow = f"{r.workflow_namespace}/{r.workflow_name}" if r.workflow_name else "-"
    if r.step_number is not None:
        workflow += f" (step {r.step_number})"
    rows: list[tuple[str, str]] = [
        ("Name", f"{r.namespace}/{r.name}"),
        ("UID", r.execution_uid),
        ("Action", r.action + (" (dry run)" if r.dry_run else "")),
        ("Target", _target(e)),
        ("Phase", r.phase),
        ("Result", _result(r.success)),
        ("Reason", r.reason or "-"),
        ("Message", r.message or "-"),
        ("Created", _ts(r.created_at)),
        ("Started", _ts(r.started_at)),
        ("Completed", _ts(r.completed_at)),
        ("Duration", _duration(e.duration_ms)),
        ("Job / Pod", f"{r.job_name or '-'} / {r.pod_name or '-'}"),
        ("Exit code", "-" if r.exit_code is None else str(r.exit_code)),
        ("Attempts", f"{r.attempts} (max retries {r.max_retries})"),
        ("Workflow", workflow),
        ("Rollback of", r.rollback_of or "-"),
        ("Parameters", _json_block(r.parameters)),
        ("Policy", _json_block(r.policy_decision)),
        ("Dry run", _json_block(r.dry_run_result)),
        ("Rollback", _json_block(r.rollback)),
        ("Recorded", f"{_ts(e.updated_at)} (last transition seq {e.last_seq})"),
    ]
    for k, v in rows:
        facts.add_row(k, v)
    console.print(facts)
    console.print()
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left",
                  title=f"Transitions ({len(e.transitions)})")  # fmt: skip
    for col in ("SEQ", "TIME", "FROM", "TO", "REASON", "MESSAGE", "CONTROLLER"):
        table.add_column(col, overflow="fold")
    for t in e.transitions:
        table.add_row(str(t.seq), _ts(t.time), t.from_phase or "-", t.to_phase, t.reason,
                      t.message, t.controller)  # fmt: skip
    console.print(table)
    if others:
        console.print(
            f"Note: {others} older execution(s) with this name exist; "
            "pass the uid as NAME to see one of them."
        )
    return _strip(buf.getvalue())


def _list_dict(e: StoredExecution) -> dict[str, Any]:
    d = e.to_dict()
    d.pop("transitions", None)
    return d


# ---------------------------------------------------------------------- the command


class _AuditGroup(click.Group):
    """``kexec audit prune ...``; anything else is ``kexec audit [NAME] [filters]``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group("audit", cls=_AuditGroup)
def audit() -> None:
    """The audit trail: `kexec audit [NAME] [filters]` shows it, `kexec audit prune` applies
    the retention."""


@audit.command("prune")
@click.option("--older-than", required=True, metavar="DURATION",
              help="delete executions created more than this long ago (e.g. 90d, 2w; "
              "at least 1d) with all their events")
@click.option("--dsn", envvar="KEXEC_AUDIT_DSN",
              help="PostgreSQL DSN of the audit database (default: $KEXEC_AUDIT_DSN).")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=60.0, show_default=True,
              help="Seconds to wait for the database.")
def prune(older_than: str, dsn: str | None, timeout: float) -> None:
    """Retention: run prune_audit() once (a CronJob runs this daily, deploy/)."""
    if not dsn:
        raise click.UsageError("no audit database: pass --dsn or set KEXEC_AUDIT_DSN")
    window = parse_window(older_than.strip())
    if window is None:
        raise click.BadParameter(f"{older_than!r} is not a duration (90d, 2w, 36h)",
                                 param_hint="--older-than")
    if window < timedelta(days=1):
        raise click.BadParameter(f"retention must be at least 1 day, not {older_than}",
                                 param_hint="--older-than")

    async def go() -> Any:
        async with open_audit(dsn, command_timeout=timeout, connect_timeout=timeout) as store:
            return await store.prune(window)

    try:
        result = asyncio.run(go())
    except AuditUnavailable as e:
        click.echo(f"error: cannot prune the audit database at {redact_dsn(dsn)}: "
                   f"{_strip_dsn(str(e), dsn)}", err=True)
        raise click.exceptions.Exit(1) from None
    click.echo(f"pruned {result.executions} executions and {result.events} events created "
               f"before {_ts(datetime.now(UTC) - window)} UTC")


@audit.command("show")
@click.argument("name", required=False)
@click.option("-n", "--namespace", help="Namespace of the execution(s).")
@click.option("--since", help="Only executions created since: 30m, 1h, 7d, 2w or an ISO date.")
@click.option("--action", help="Only this action, e.g. scale_deployment.")
@click.option(
    "--result",
    type=click.Choice(["success", "failure", "pending"]),
    help="Only finished successfully, failed, or not finished yet.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--dsn",
    envvar="KEXEC_AUDIT_DSN",
    help="PostgreSQL DSN of the audit database (default: $KEXEC_AUDIT_DSN).",
)
@click.option(
    "--timeout", type=click.FloatRange(0.1, 300), default=5.0, show_default=True,
    help="Seconds to wait for the database.",
)  # fmt: skip
def show(
    name: str | None,
    namespace: str | None,
    since: str | None,
    action: str | None,
    result: str | None,
    limit: int,
    output: str,
    dsn: str | None,
    timeout: float,
) -> None:
    """Show the audit trail: one execution (NAME) with all its transitions, or a list."""
    if not dsn:
        raise click.UsageError("no audit database: pass --dsn or set KEXEC_AUDIT_DSN")
    if name and (since or action or result):
        raise click.UsageError("--since, --action and --result only apply without NAME")
    since_at = parse_since(since) if since else None

    async def fetch() -> list[StoredExecution]:
        async with open_audit(dsn, command_timeout=timeout, connect_timeout=timeout) as store:
            if name:
                return await store.get(name, namespace)
            return await store.query(
                since=since_at,
                action=action,
                namespace=namespace,
                result=result,  # type: ignore[arg-type]
                limit=limit,
            )

    try:
        rows = asyncio.run(fetch())
    except AuditUnavailable as e:
        detail = _strip_dsn(str(e), dsn)
        click.echo(
            f"error: cannot read the audit database at {redact_dsn(dsn)}: {detail}", err=True
        )
        raise click.exceptions.Exit(1) from None
    except (ValueError, OSError) as e:  # e.g. a malformed DSN
        click.echo(
            f"error: bad audit database DSN ({redact_dsn(dsn)}): {type(e).__name__}", err=True
        )
        raise click.exceptions.Exit(1) from None

    if name:
        if not rows:
            where = f" in namespace {namespace}" if namespace else ""
            click.echo(f"error: no audit record for execution {name!r}{where}", err=True)
            raise click.exceptions.Exit(1)
        newest = rows[0]
        if output == "json":
            click.echo(json.dumps(newest.to_dict(), indent=2, sort_keys=True, default=str))
        else:
            click.echo(render_one(newest, len(rows) - 1), nl=False)
        return
    if output == "json":
        click.echo(json.dumps([_list_dict(e) for e in rows], indent=2, sort_keys=True, default=str))
    else:
        click.echo(render_list(rows), nl=False)


def _strip_dsn(message: str, dsn: str) -> str:
    return message.replace(dsn, redact_dsn(dsn))
