"""The `kexec` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

from kexec.domain.actions import ACTIONS
from kexec.domain.errors import FieldError, SafetyViolation, ValidationError
from kexec.domain.execution import API_VERSION, KIND, iso
from kexec.domain.naming import CONTROLLER_NAMESPACE
from kexec.domain.safety import check_target_cluster
from kexec.domain.spec import parse_spec
from kexec.entrypoints.cli_logging import configure_logging, logging_options


def _cli_logging(fn: Any) -> Any:
    return logging_options(fn, default_level="warning")


@click.group()
@click.version_option(package_name="kexec")
@_cli_logging
def cli(log_format: str, log_level: str) -> None:
    """kexec: execute single Kubernetes remediation actions safely."""
    configure_logging(log_format, log_level)


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def actions(output: str) -> None:
    """List the actions with their parameters, permissions and default timeouts."""
    described = [a.describe() for a in ACTIONS.values()]
    if output == "json":
        click.echo(json.dumps(described, indent=2))
        return
    table = Table(title=f"{len(described)} actions", show_lines=True)
    for col in ("action", "parameters", "permissions (per-action ServiceAccount)", "timeout"):
        table.add_column(col)
    for action in ACTIONS.values():
        params = "\n".join(
            f"{p.name}{'' if p.required else '?'}: {p.type}"
            + (f" ({p.constraint()})" if p.constraint() else "")
            for p in action.params_doc)
        perms = "\n".join(
            f"{', '.join(g or 'core' for g in r.api_groups)}/{','.join(r.resources)}: "
            f"{', '.join(r.verbs)}" for r in action.rules)
        scope = " (cluster, trusted namespaces only)" if action.node_action else ""
        table.add_row(action.name + scope, params, perms, f"{action.default_timeout_seconds}s")
    Console(width=160).print(table)


def _load_documents(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(text) if d is not None]


def validation_errors(doc: Any) -> list[FieldError]:
    """Schema and domain errors of one KubernetesExecution document, field-addressed."""
    if not isinstance(doc, dict):
        return [FieldError("", "not a YAML object")]
    errors: list[FieldError] = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}"))
    if doc.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND}"))
    if not (doc.get("metadata") or {}).get("name"):
        errors.append(FieldError("metadata.name", "is required"))
    try:
        spec, _, _ = parse_spec(doc.get("spec"))
        check_target_cluster(spec)
    except ValidationError as exc:
        errors.extend(exc.errors)
    except SafetyViolation as exc:
        errors.append(FieldError("spec.targetCluster", exc.message))
    seen = {str(e) for e in errors}
    for message in _schema_errors(doc):
        if message not in seen and not any(message.split(":")[0] == e.path for e in errors):
            path, _, text = message.partition(": ")
            errors.append(FieldError(path, text))
    return errors


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    """The CRD schema's view (the pydantic models the CRD is generated from)."""
    try:
        from kexec.adapters.kubernetes.crd import validate_manifest
    except ImportError:  # pragma: no cover - the CRD module ships with the package
        return []
    return list(validate_manifest(doc))


@cli.command()
@click.argument("file", type=click.Path(allow_dash=True))
def validate(file: str) -> None:
    """Check KubernetesExecution YAML offline: schema and domain rules. Exit 2 when invalid."""
    try:
        docs = _load_documents(file)
    except (OSError, yaml.YAMLError) as exc:
        click.echo(f"error: cannot read {file}: {exc}", err=True)
        sys.exit(2)
    if not docs:
        click.echo(f"error: {file} holds no document", err=True)
        sys.exit(2)
    bad = 0
    for i, doc in enumerate(docs):
        name = (doc.get("metadata") or {}).get("name", f"document {i + 1}") if isinstance(
            doc, dict) else f"document {i + 1}"
        errors = validation_errors(doc)
        if errors:
            bad += 1
            click.echo(f"{name}: invalid")
            for err in errors:
                click.echo(f"  {err.path}: {err.message}")
        else:
            click.echo(f"{name}: valid ({doc['spec']['action']})")
    sys.exit(2 if bad else 0)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_cluster(kubeconfig: str | None, fn: Any, as_user: str = "") -> Any:
    from kexec.adapters.kubernetes.client import api_client
    from kexec.adapters.kubernetes.cluster import KubernetesCluster

    async for api in api_client(kubeconfig, pool_size=4):
        if as_user:  # like kubectl --as: the API server authorizes the impersonation
            api.set_default_header("Impersonate-User", as_user)
        return await fn(KubernetesCluster(api))


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@cli.command()
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--as", "as_user", default="", help="approve as this user (impersonation, "
              "like kubectl --as)")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None)
def approve(name: str, namespace: str, as_user: str, kubeconfig: str | None) -> None:
    """Approve an execution waiting in WaitingApproval, as your own identity.

    The approval counts when you are not its requester and hold the verb `approve` on
    kubernetesexecutions in its namespace (ClusterRole kexec-approver)."""
    from kexec.application.approve import ApproveExecution
    from kexec.application.ports.cluster import ClusterError

    async def approve_as_me(cluster: Any) -> Any:
        return await ApproveExecution(cluster)(namespace, name, await cluster.whoami())

    try:
        ex = _run(_with_cluster(kubeconfig, approve_as_me, as_user))
    except (ClusterError, ValueError) as exc:
        _fail(str(exc))
    click.echo(f"approved {ex.key} as {ex.spec.get('approvedBy')}")


@cli.command()
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None)
def rollback(name: str, namespace: str, kubeconfig: str | None) -> None:
    """Create the inverse execution of NAME from its status.rollback."""
    from kexec.application.ports.cluster import ClusterError
    from kexec.application.rollback import CreateRollback, NoRollback

    try:
        ex = _run(_with_cluster(kubeconfig, lambda c: CreateRollback(c)(namespace, name)))
    except (ClusterError, NoRollback) as exc:
        _fail(str(exc))
    click.echo(f"created {ex.key} ({ex.spec['action']}, rollbackOf {name})")


@cli.group()
def brake() -> None:
    """The storm brake of an action (docs/limits.md)."""


@brake.command("release")
@click.argument("action", type=click.Choice(sorted(ACTIONS)))
@click.option("--controller-namespace", default=CONTROLLER_NAMESPACE, show_default=True)
@click.option("--as", "as_user", default="", help="release as this user (impersonation, "
              "like kubectl --as)")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None)
def brake_release(action: str, controller_namespace: str, as_user: str,
                  kubeconfig: str | None) -> None:
    """Let the executions of ACTION that its storm brake holds go on now: only what starts
    from now on counts. Needs Role kexec-brake-releaser; the controller records the release
    (and who made it) in the audit trail."""
    from datetime import UTC, datetime

    from kexec.application.brake import ReleaseBrake
    from kexec.application.ports.cluster import ClusterError

    async def release(cluster: Any) -> Any:
        return await ReleaseBrake(cluster, controller_namespace)(
            action, await cluster.whoami(), datetime.now(UTC))

    try:
        done = _run(_with_cluster(kubeconfig, release, as_user))
    except ClusterError as exc:
        _fail(f"{exc.message} (the ConfigMap {controller_namespace}/kexec-storm-brake ships "
              "with deploy/base/rbac; the caller needs Role kexec-brake-releaser)")
    click.echo(f"released the storm brake on {done.action} at {iso(done.at)} as {done.by}")


@cli.group()
def policy() -> None:
    """The Rego safety policy, offline."""


@policy.command("eval")
@click.argument("file", type=click.Path(allow_dash=True))
@click.option("--target", "target_file", type=click.Path(exists=True), default=None,
              help="YAML of the target object as it is now (else: treated as absent)")
@click.option("--namespace-label", "labels", multiple=True, metavar="KEY=VALUE",
              help="labels of the target namespace (e.g. environment=production)")
@click.option("--nodes", default=3, show_default=True, help="ready schedulable nodes to assume")
@click.option("--policy-dir", default=None, help="policies to use (default: the shipped ones)")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def policy_eval(file: str, target_file: str | None, labels: tuple[str, ...], nodes: int,
                policy_dir: str | None, output: str) -> None:
    """Show the policy decision for an execution. Exit 0 allowed, 1 denied, 2 invalid."""
    from datetime import UTC, datetime

    from kexec.adapters.policy.bundle import load_policy_dir
    from kexec.adapters.policy.embedded import EmbeddedPolicy
    from kexec.application.policy_input import build_policy_input
    from kexec.application.settings import Settings
    from kexec.domain.execution import Execution

    docs = _load_documents(file)
    doc = docs[0] if docs else None
    errors = validation_errors(doc)
    if errors or not isinstance(doc, dict):
        for err in errors:
            click.echo(f"  {err.path}: {err.message}", err=True)
        sys.exit(2)
    meta = doc.get("metadata") or {}
    ex = Execution(meta.get("namespace", "default"), meta["name"],
                   labels=dict(meta.get("labels") or {}),
                   annotations=dict(meta.get("annotations") or {}), spec=doc["spec"])
    _spec, action, params = parse_spec(doc["spec"])
    target = _load_documents(target_file)[0] if target_file else None
    ns_labels = dict(label.split("=", 1) for label in labels if "=" in label)
    facts = {"namespace": {"name": action.target(params).namespace, "labels": ns_labels},
             "nodes": [{"name": f"node-{i}", "ready": True, "unschedulable": False,
                        "controlPlane": False} for i in range(nodes)]}
    engine = EmbeddedPolicy(load_policy_dir(policy_dir) if policy_dir else None)
    document = build_policy_input(ex, action, params, {"target": target}, facts, {},
                                  datetime.now(UTC), Settings().trusted_namespaces)
    decision = engine.decide_blocking(document)
    engine.close()
    if output == "json":
        click.echo(json.dumps(decision.to_status(), indent=2))
    else:
        verdict = "allowed" if decision.allowed else "DENIED"
        approval = " (requires approval)" if decision.requires_approval else ""
        click.echo(f"{meta['name']}: {verdict}{approval} [{decision.engine}]")
        for v in decision.violations:
            click.echo(f"  {v.rule}: {v.message}")
    sys.exit(0 if decision.allowed else 1)


@cli.command()
def runner() -> None:
    """Run one action inside a Job pod (the controller creates these Jobs)."""
    from kexec.entrypoints.runner import main as runner_main

    sys.exit(runner_main())


def _register_optional() -> None:
    """Commands whose modules need optional services (PostgreSQL, controller runtime)."""
    from kexec.entrypoints.cli_audit import audit
    from kexec.entrypoints.cli_run import describe, get, run

    cli.add_command(audit)
    for command in (run, get, describe):
        cli.add_command(command)
    try:
        from kexec.entrypoints.cli_controller import controller
    except ImportError:
        return
    cli.add_command(controller)


_register_optional()


def main() -> None:
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
