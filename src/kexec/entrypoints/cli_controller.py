"""`kexec controller`: its flags (each also a KEXEC_* environment variable)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import click

from kexec.domain.naming import CONTROLLER_NAMESPACE
from kexec.entrypoints.cli_logging import configure_logging, logging_options
from kexec.entrypoints.controller import ControllerConfig, run_controller


@click.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None,
              help="kubeconfig path; in a pod the in-cluster config is used")
@click.option("--namespace", envvar="KEXEC_NAMESPACE", default=CONTROLLER_NAMESPACE,
              show_default=True, help="the controller's own (trusted) namespace")
@click.option("--trusted-namespaces", envvar="KEXEC_TRUSTED_NAMESPACES",
              default=CONTROLLER_NAMESPACE, show_default=True,
              help="comma-separated namespaces whose executions may act elsewhere")
@click.option("--workers", envvar="KEXEC_WORKERS", default=8, show_default=True, type=int)
@click.option("--image", envvar="KEXEC_IMAGE", default="kexec:latest", show_default=True,
              help="image of the Job pods (the runner)")
@click.option("--audit-dsn", envvar="KEXEC_AUDIT_DSN", required=True,
              help="PostgreSQL DSN of the audit trail")
@click.option("--policy-engine", envvar="KEXEC_POLICY_ENGINE", default="embedded",
              type=click.Choice(["embedded", "opa"]), show_default=True)
@click.option("--opa-url", envvar="KEXEC_OPA_URL", default="http://127.0.0.1:8181")
@click.option("--policy-dir", envvar="KEXEC_POLICY_DIR", default="",
              help="Rego policies (default: the ones shipped in the package)")
@click.option("--leader-elect/--no-leader-elect", default=True, show_default=True)
@click.option("--identity", envvar="KEXEC_POD_NAME", default="",
              help="this replica's name in the Lease and the audit trail")
@click.option("--http-addr", envvar="KEXEC_HTTP_ADDR", default="0.0.0.0:8080",
              show_default=True, help="health probes (/healthz, /readyz)")
@click.option("--metrics-addr", envvar="KEXEC_METRICS_ADDR", default="0.0.0.0:9090",
              show_default=True, help="/metrics (port 0: off; same as --http-addr: shared)")
@click.option("--metrics-token-file", envvar="KEXEC_METRICS_TOKEN_FILE", default="",
              help="static bearer token for /metrics (else TokenReview + SubjectAccessReview)")
@click.option("--approval-timeout", default=3600, show_default=True, type=int,
              help="seconds an execution may wait for approval")
@click.option("--allow-self-approval", envvar="KEXEC_ALLOW_SELF_APPROVAL", is_flag=True,
              help="let a requester approve their own execution (default: a second person)")
@click.option("-v", "--verbose", is_flag=True, help="same as --log-level debug")
@logging_options
def controller(kubeconfig: str | None, namespace: str, trusted_namespaces: str, workers: int,
               image: str, audit_dsn: str, policy_engine: str, opa_url: str, policy_dir: str,
               leader_elect: bool, identity: str, http_addr: str, metrics_addr: str,
               metrics_token_file: str, approval_timeout: int, allow_self_approval: bool,
               verbose: bool, log_format: str, log_level: str) -> None:
    """Run the controller (watch executions, reconcile them, one Job per attempt)."""
    configure_logging(log_format, "debug" if verbose else log_level)
    host, _, port = http_addr.rpartition(":")
    metrics_host, _, metrics_port = metrics_addr.rpartition(":")
    cfg = ControllerConfig(
        kubeconfig=kubeconfig, namespace=namespace, trusted_namespaces=trusted_namespaces,
        workers=workers, image=image, audit_dsn=audit_dsn, policy_engine=policy_engine,
        opa_url=opa_url, policy_dir=policy_dir, leader_elect=leader_elect,
        identity=identity or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}",
        http_host=host or "0.0.0.0", http_port=int(port or 0),
        metrics_host=metrics_host or "0.0.0.0", metrics_port=int(metrics_port or 0),
        metrics_token_file=metrics_token_file, approval_timeout=approval_timeout,
        allow_self_approval=allow_self_approval,
    )
    asyncio.run(run_controller(cfg))
