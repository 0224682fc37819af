from __future__ import annotations

import pytest

from tests.e2e.kexec_env import Kexec

pytestmark = pytest.mark.cluster


def deployment(ns: str, name: str, replicas: int = 1, image: str = "nginx:1") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def test_scale_deployment_end_to_end(kexec: Kexec) -> None:
    ns = kexec.namespace("e2e-scale")
    kexec.apply(deployment(ns, "web", 1))
    name = kexec.create(ns, "scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 3})
    obj = kexec.wait(ns, name, timeout=60)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    dep = kexec.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web")
    assert dep["spec"]["replicas"] == 3
    assert dep["status"]["readyReplicas"] == 3
