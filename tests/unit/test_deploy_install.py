"""The shipped controller Deployment: replicas, ports the design names, restricted pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _controller() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "base" / "controller.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == "Deployment")


def _service() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "base" / "controller.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == "Service")


def test_deployment_replicas_ports_and_security() -> None:
    dep = _controller()
    assert dep["spec"]["replicas"] == 2
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 9090}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True


def test_metrics_service_points_at_9090() -> None:
    (port,) = _service()["spec"]["ports"]
    assert port["port"] == 9090 and port["targetPort"] == "metrics"
