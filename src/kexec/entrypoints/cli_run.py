"""``kexec run``, ``kexec get``, ``kexec describe``: start, follow and read executions.

    kexec run ACTION [-n NS] --param key=value ... [--dry-run] [--timeout D] [--follow]
    kexec get [-n NS | -A] [-o table|json]
    kexec describe NAME [-n NS] [--dsn DSN]

``run`` validates the document offline first (the errors of ``kexec validate``), then
creates it as you (your kubeconfig). ``--follow`` prints each change (phase, reason,
conditions, Job, progress) on its own line until the execution is terminal: exit 0 on
Completed, 1 on Failed or RollbackReady, 3 when ``--follow-timeout`` passes first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
import yaml

from kexec.domain.actions import ACTIONS
from kexec.domain.execution import API_VERSION, KIND, Execution
from kexec.domain.phases import Phase

TERMINAL_EXIT = {Phase.COMPLETED: 0, Phase.FAILED: 1, Phase.ROLLBACK_READY: 1}
FOLLOW_TIMED_OUT = 3


# ---------------------------------------------------------------------- building


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs: values are YAML scalars or flow objects (``replicas=3``,
    ``force=true``, ``patch={"spec": {...}}``); ``a.b=v`` nests."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--param")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise click.BadParameter(f"{key!r} nests under a value", param_hint="--param")
        node[leaf] = value
    return out


def execution_document(action: str, namespace: str, params: dict[str, Any], *,
                       name: str = "", dry_run: bool = False,
                       timeout: str = "") -> dict[str, Any]:
    """The KubernetesExecution ``kexec run`` creates. An action with a ``namespace``
    parameter acts in ``-n`` unless ``--param namespace=`` says otherwise."""
    known = ACTIONS.get(action)
    if known is not None and any(p.name == "namespace" for p in known.params_doc):
        params = {"namespace": namespace, **params}
    spec: dict[str, Any] = {"action": action,
                            "parameters": {known.key if known else action: params}}
    if dry_run:
        spec["dryRun"] = True
    if timeout:
        spec["timeout"] = timeout
    generated = f"{action.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name or generated, "namespace": namespace}, "spec": spec}


# ---------------------------------------------------------------------- formatting


def _age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return "-"
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 600 else f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    return f"{seconds // 86400}d"


def duration(ex: Execution, now: datetime) -> str:
    """Creation to the terminal transition (or to now while it runs)."""
    end = ex.status.entered(ex.phase) if ex.terminal and ex.phase else now
    return _age(ex.created, end or now)


def _clock(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%H:%M:%S") if t else "--:--:--"


def get_rows(executions: list[Execution], now: datetime) -> list[list[str]]:
    """The CRD's printer columns (Action, Target, Phase, Reason, Age) plus Duration."""
    rows = []
    for ex in sorted(executions, key=lambda e: (e.namespace, e.created, e.name)):
        rows.append([ex.namespace, ex.name, str(ex.spec.get("action", "")),
                     ex.status.target or "-", ex.phase.value if ex.phase else "New",
                     ex.status.reason or "-", _age(ex.created, now), duration(ex, now)])
    return rows


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def _progress(ex: Execution) -> str:
    """What the Job reports of its progress (a drain: pods evicted / remaining)."""
    report = ex.status.job_run.report if ex.status.job_run else {}
    bits = [f"{k}={v if not isinstance(v, list) else len(v)}" for k, v in sorted(report.items())
            if k in ("evicted", "remaining", "pods", "progress", "waitingFor", "blocked")]
    return " ".join(bits)


def _phase_line(phase: str, reason: str, message: str) -> str:
    return f"phase {phase}" + (f" ({reason})" if reason else "") + (
        f": {message}" if message else "")


def transition_lines(ex: Execution, after_seq: int) -> list[tuple[int, str]]:
    """The recorded transitions newer than ``after_seq``, as (seq, timestamped line)."""
    return [(t.seq, f"{_clock(t.time)} {_phase_line(t.phase.value, t.reason, t.message)}")
            for t in ex.status.transitions if t.seq > after_seq]


def snapshot_lines(ex: Execution) -> dict[str, str]:
    """What the live view shows besides the transitions, keyed so that only changes print."""
    lines: dict[str, str] = {}
    phase = ex.phase.value if ex.phase else "New"
    lines["phase"] = _phase_line(phase, ex.status.reason, ex.status.message)
    for c in ex.status.conditions:
        lines[f"condition/{c.type}"] = f"condition {c.type}={c.status} {c.reason}" + (
            f": {c.message}" if c.message else "")
    run = ex.status.job_run
    if run and run.job_name:
        pod = f" pod {run.pod_name}" if run.pod_name else ""
        code = f" exit {run.exit_code}" if run.exit_code is not None else ""
        lines["job"] = f"job {run.job_name} attempts {run.attempts}{pod}{code}"
    progress = _progress(ex)
    if progress:
        lines["progress"] = f"progress {progress}"
    return lines


def describe_text(ex: Execution, now: datetime) -> str:
    st = ex.status
    out = [f"Name:        {ex.name}", f"Namespace:   {ex.namespace}",
           f"Action:      {ex.spec.get('action', '')}", f"Target:      {st.target or '-'}",
           f"Phase:       {ex.phase.value if ex.phase else 'New'}"
           + (f" ({st.reason})" if st.reason else ""),
           f"Message:     {st.message or '-'}",
           f"Requested:   {st.requested_by or ex.requester or '-'}",
           f"Approved:    {f'{st.approval.by} at {st.approval.at.isoformat()}' if st.approval else '-'}",
           f"Age:         {_age(ex.created, now)}   Duration: {duration(ex, now)}",
           f"Parameters:  {json.dumps(ex.spec.get('parameters') or {}, sort_keys=True)}"]
    out.append("")
    out.append("Timeline:")
    previous: datetime | None = None
    for t in st.transitions:
        took = f"+{_age(previous, t.time)}" if previous else ""
        out.append(f"  {t.time.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')}  {took:>7}  "
                   f"{t.phase.value:<16} {t.reason}" + (f": {t.message}" if t.message else ""))
        previous = t.time
    if st.conditions:
        out += ["", "Conditions:"]
        out += [f"  {c.type:<22} {c.status:<7} {c.reason}" + (f": {c.message}" if c.message
                                                             else "") for c in st.conditions]
    validation = st.validation
    if validation and validation.policy:
        policy = validation.policy
        out += ["", "Policy decision:",
                f"  {json.dumps(policy, sort_keys=True, default=str)}"]
    if validation and validation.dry_run:
        d = validation.dry_run
        out += ["", f"Dry run: {'passed' if d.success else 'FAILED'}"]
        out += [f"  warning: {w}" for w in d.warnings] + [f"  error: {e}" for e in d.errors]
    if validation and validation.before:
        out += ["", "Before:", f"  {json.dumps(validation.before, sort_keys=True, default=str)}"]
    run = st.job_run
    if run and run.job_name:
        out += ["", f"Job: {run.job_name} (attempts {run.attempts}, pod {run.pod_name or '-'}, "
                f"exit {run.exit_code if run.exit_code is not None else '-'})"]
        out += [f"  changed: {json.dumps(r, sort_keys=True, default=str)}"
                for r in run.resources_affected]
        if run.report:
            out.append(f"  report: {json.dumps(run.report, sort_keys=True, default=str)}")
    if st.postconditions:
        out += ["", "Postconditions:"]
        out += [f"  {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.message}"
                for c in st.postconditions]
    if st.rollback:
        out += ["", f"Rollback: kexec rollback {ex.name} -n {ex.namespace}"
                f"   ({st.rollback.get('action', '')})"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- talking to the API


async def _cluster_call(kubeconfig: str | None, fn: Callable[[Any], Any]) -> Any:
    from kexec.adapters.kubernetes.client import api_client
    from kexec.adapters.kubernetes.cluster import KubernetesCluster

    async for api in api_client(kubeconfig, pool_size=4):
        return await fn(KubernetesCluster(api))


async def _list(cluster: Any, namespace: str | None) -> list[Execution]:
    from kexec.adapters.kubernetes.api import execution_path
    from kexec.adapters.kubernetes.wire import to_execution

    doc = await cluster.request("GET", execution_path(namespace or ""))
    return [to_execution(o) for o in doc.get("items") or []]


async def follow_execution(cluster: Any, namespace: str, name: str, seconds: float,
                           echo: Callable[[str], None],
                           interval: float = 0.5) -> Execution | None:
    """Print each change of the execution until it is terminal; None on timeout."""
    shown: dict[str, str] = {}
    seq = -1
    deadline = time.monotonic() + seconds
    while True:
        ex: Execution | None = await cluster.get_execution(namespace, name)
        if ex is None:
            echo(f"{_clock(datetime.now(UTC))} {namespace}/{name} is gone")
            return None
        for newest, line in transition_lines(ex, seq):  # every phase, also between polls
            echo(line)
            seq, shown["phase"] = newest, line.split(" ", 1)[1]
        for key, line in snapshot_lines(ex).items():
            if shown.get(key) != line:
                shown[key] = line
                echo(f"{_clock(datetime.now(UTC))} {line}")
        if ex.terminal:
            return ex
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(interval)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


# ---------------------------------------------------------------------- the commands


@click.command("run")
@click.argument("action", type=click.Choice(sorted(ACTIONS)), metavar="ACTION")
@click.option("-n", "--namespace", default="default", show_default=True,
              help="namespace of the execution (and of the target, unless --param namespace=)")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="an action parameter; repeat (values are YAML: 3, true, {a: b})")
@click.option("--name", default="", help="the execution's name (default: ACTION-<random>)")
@click.option("--dry-run", is_flag=True, help="validate only (policy, server-side dry run)")
@click.option("--timeout", default="", help="the action's timeout, e.g. 90s, 5m")
@click.option("-f", "--follow", is_flag=True, help="show progress until it is terminal")
@click.option("--follow-timeout", default=1800.0, show_default=True, type=float,
              help="seconds to follow before giving up (exit 3)")
@click.option("-o", "--output", type=click.Choice(["name", "yaml"]), default="name",
              help="print the created name, or the document created")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None)
def run(action: str, namespace: str, params: tuple[str, ...], name: str, dry_run: bool,
        timeout: str, follow: bool, follow_timeout: float, output: str,
        kubeconfig: str | None) -> None:
    """Create an execution of ACTION (validated offline first) and optionally follow it."""
    from kexec.application.ports.cluster import ClusterError
    from kexec.entrypoints.cli import validation_errors

    doc = execution_document(action, namespace, parse_params(params), name=name,
                             dry_run=dry_run, timeout=timeout)
    errors = validation_errors(doc)
    if errors:
        click.echo(f"{doc['metadata']['name']}: invalid", err=True)
        for err in errors:
            click.echo(f"  {err.path}: {err.message}", err=True)
        sys.exit(2)
    meta = doc["metadata"]
    execution = Execution(meta["namespace"], meta["name"], spec=doc["spec"])

    async def go(cluster: Any) -> Execution | None:
        created: Execution = await cluster.create_execution(execution)
        click.echo(f"created {created.key}" if output == "name" else
                   yaml.safe_dump(doc, sort_keys=False).rstrip())
        if not follow:
            return created
        return await follow_execution(cluster, created.namespace, created.name, follow_timeout,
                             click.echo)

    try:
        ex = asyncio.run(_cluster_call(kubeconfig, go))
    except ClusterError as exc:
        _fail(str(exc))
    if not follow:
        return
    if ex is None or ex.phase is None:
        click.echo(f"not terminal after {follow_timeout:g}s", err=True)
        sys.exit(FOLLOW_TIMED_OUT)
    verdict = ex.phase.value + (f" ({ex.status.reason})" if ex.status.reason else "")
    click.echo(f"{ex.key}: {verdict} after {duration(ex, datetime.now(UTC))}")
    if ex.status.rollback and ex.phase is not Phase.COMPLETED:
        click.echo(f"rollback: kexec rollback {ex.name} -n {ex.namespace}")
    sys.exit(TERMINAL_EXIT.get(ex.phase, 1))


@click.command("get")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None)
def get(name: str | None, namespace: str, all_namespaces: bool, output: str,
        kubeconfig: str | None) -> None:
    """List executions: the printer columns plus age and duration."""
    from kexec.application.ports.cluster import ClusterError

    async def fetch(cluster: Any) -> list[Execution]:
        found = await _list(cluster, None if all_namespaces else namespace)
        return [e for e in found if not name or e.name == name]

    try:
        executions = asyncio.run(_cluster_call(kubeconfig, fetch))
    except ClusterError as exc:
        _fail(str(exc))
    now = datetime.now(UTC)
    rows = get_rows(executions, now)
    header = ["NAMESPACE", "NAME", "ACTION", "TARGET", "PHASE", "REASON", "AGE", "DURATION"]
    if output == "json":
        click.echo(json.dumps([dict(zip([h.lower() for h in header], r, strict=True))
                               for r in rows], indent=2))
        return
    if not all_namespaces:
        header, rows = header[1:], [r[1:] for r in rows]
    if not rows:
        click.echo(f"No executions found in {'any namespace' if all_namespaces else namespace}.",
                   err=True)
        return
    click.echo(render_table(header, rows), nl=False)


@click.command("describe")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--dsn", envvar="KEXEC_AUDIT_DSN", default=None,
              help="audit database: also show the audit trail (default: $KEXEC_AUDIT_DSN)")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None)
def describe(name: str, namespace: str, dsn: str | None, kubeconfig: str | None) -> None:
    """Timeline, conditions, policy decision, changes, rollback command, audit trail."""
    from kexec.application.ports.cluster import ClusterError

    try:
        ex = asyncio.run(_cluster_call(kubeconfig,
                                       lambda c: c.get_execution(namespace, name)))
    except ClusterError as exc:
        _fail(str(exc))
    if ex is None:
        _fail(f"execution {namespace}/{name} not found")
    click.echo(describe_text(ex, datetime.now(UTC)), nl=False)
    if dsn:
        click.echo("\nAudit trail:")
        click.echo(_audit_trail(dsn, name, namespace), nl=False)


def _audit_trail(dsn: str, name: str, namespace: str) -> str:
    from kexec.adapters.audit.postgres import open_audit
    from kexec.application.ports.audit import AuditUnavailable
    from kexec.entrypoints.cli_audit import redact_dsn, render_one

    async def fetch() -> Any:
        async with open_audit(dsn, command_timeout=5, connect_timeout=5) as store:
            return await store.get(name, namespace)

    try:
        rows = asyncio.run(fetch())
    except (AuditUnavailable, ValueError, OSError) as exc:
        return f"  unavailable ({redact_dsn(dsn)}: {type(exc).__name__})\n"
    if not rows:
        return "  no audit record yet\n"
    return str(render_one(rows[0], len(rows) - 1))
