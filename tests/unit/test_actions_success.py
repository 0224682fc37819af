"""Every action through its success path to Completed, on the fake cluster."""

from __future__ import annotations

import json

import pytest
from tests.unit.world import NS, TRUSTED, World, b64, wire

from kexec.domain.actions import ACTIONS

HAPPY = ["Pending", "Validating", "Preparing", "Executing", "Verifying", "Completed"]


def test_registry_has_the_eleven_actions() -> None:
    assert sorted(ACTIONS) == sorted([
        "scale_deployment", "rollout_restart", "delete_pod", "patch_deployment", "cordon_node",
        "drain_node", "uncordon_node", "update_configmap", "update_secret", "apply_manifest",
        "rollback_deployment",
    ])


async def test_scale_deployment() -> None:
    w = World()
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 5})
    ex = await w.drive()
    assert w.phases(ex) == HAPPY
    assert w.cluster.obj("Deployment", NS, "web")["spec"]["replicas"] == 5
    assert wire(ex)["rollback"] == {"available": True, "action": "scale_deployment",
                                     "parameters": {"scaleDeployment": {"namespace": NS, "deployment": "web",
                                                    "replicas": 2}}}
    assert wire(ex)["execution"]["attempts"] == 1
    assert {c["type"] for c in wire(ex)["conditions"] if c["status"] == "True"} == {
        "Validated", "PolicyAllowed", "Executed", "Verified"}


async def test_rollout_restart() -> None:
    w = World()
    await w.create("rollout_restart", {"namespace": NS, "deployment": "web"})
    ex = await w.drive()
    assert w.phases(ex) == HAPPY
    ann = w.cluster.obj("Deployment", NS, "web")["spec"]["template"]["metadata"]["annotations"]
    assert ann["kexec.kubernaut.io/restarted-by"] == ex.uid
    assert ann["kubectl.kubernetes.io/restartedAt"]
    assert wire(ex)["rollback"]["available"] is False


async def test_delete_pod() -> None:
    w = World()
    await w.create("delete_pod", {"namespace": NS, "pod": "web-1", "gracePeriodSeconds": 0})
    ex = await w.drive()
    assert w.phases(ex) == HAPPY
    assert w.cluster.obj("Pod", NS, "web-1") is None
    assert wire(ex)["rollback"]["available"] is False


async def test_patch_deployment() -> None:
    w = World()
    before = w.cluster.obj("Deployment", NS, "web")
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}}
    await w.create("patch_deployment", {"namespace": NS, "deployment": "web",
                                        "patchType": "merge", "patch": patch})
    ex = await w.drive()
    assert w.phases(ex) == HAPPY
    dep = w.cluster.obj("Deployment", NS, "web")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2"
    rb = wire(ex)["rollback"]
    assert rb["action"] == "patch_deployment"
    assert rb["parameters"]["patchDeployment"]["patch"] == [{"op": "replace", "path": "/spec",
                                          "value": before["spec"]}]


@pytest.mark.parametrize(("action", "start", "end", "inverse"), [
    ("cordon_node", False, True, "uncordon_node"),
    ("uncordon_node", True, False, "cordon_node"),
])
async def test_cordon_and_uncordon(action: str, start: bool, end: bool, inverse: str) -> None:
    w = World()
    node = w.cluster.objects[("Node", "", "node-2")]
    node["spec"]["unschedulable"] = start
    await w.create(action, {"node": "node-2"}, namespace=TRUSTED)
    ex = await w.drive(namespace=TRUSTED)
    assert w.phases(ex) == HAPPY
    assert w.cluster.obj("Node", "", "node-2")["spec"]["unschedulable"] is end
    assert wire(ex)["rollback"] == {"available": True, "action": inverse,
                                     "parameters": {ACTIONS[inverse].key: {"node": "node-2"}}}


async def test_drain_node_evicts_and_cordons() -> None:
    w = World()
    await w.create("drain_node", {"node": "node-1"}, namespace=TRUSTED)
    ex = await w.drive(namespace=TRUSTED)
    assert w.phases(ex) == HAPPY
    assert w.cluster.obj("Node", "", "node-1")["spec"]["unschedulable"] is True
    assert w.cluster.obj("Pod", NS, "web-1") is None
    assert wire(ex)["rollback"]["action"] == "uncordon_node"


async def test_update_configmap() -> None:
    w = World()
    await w.create("update_configmap", {"namespace": NS, "configMap": "cfg",
                                        "data": {"mode": "fast", "new": "1"}})
    ex = await w.drive()
    assert w.phases(ex) == HAPPY
    assert w.cluster.obj("ConfigMap", NS, "cfg")["data"] == {"mode": "fast", "keep": "yes",
                                                             "new": "1"}
    assert wire(ex)["rollback"]["parameters"]["updateConfigMap"]["data"] == {"mode": "slow", "new": None}


async def test_update_secret_keeps_values_out_of_every_record() -> None:
    w = World()
    await w.create("update_secret", {"namespace": NS, "secret": "creds",
                                     "sourceSecretRef": {"name": "creds-new"}})
    ex = await w.drive()
    assert w.phases(ex) == HAPPY
    target = w.cluster.obj("Secret", NS, "creds")
    assert target["data"] == {"password": b64("new-password-value"), "user": b64("svc-user")}
    rb = wire(ex)["rollback"]
    backup = w.cluster.obj("Secret", NS, rb["parameters"]["updateSecret"]["sourceSecretRef"]["name"])
    assert backup["data"] == {"password": b64("old-password-value")}
    assert backup["metadata"]["ownerReferences"][0]["uid"] == ex.uid
    audit = [(r, w.audit.transitions(r.execution_uid)) for r in w.audit.executions()]
    recorded = json.dumps([wire(ex), w.cluster.events, audit], default=str)
    for value in ("new-password-value", "old-password-value", "svc-user",
                  b64("new-password-value"), b64("old-password-value")):
        assert value not in recorded


async def test_apply_manifest_creates_and_rollback_deletes() -> None:
    w = World()
    manifest = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "fresh", "namespace": NS}, "data": {"k": "v"}}
    await w.create("apply_manifest", {"manifest": manifest})
    ex = await w.drive()
    assert w.phases(ex) == HAPPY
    assert w.cluster.obj("ConfigMap", NS, "fresh")["data"] == {"k": "v"}
    assert wire(ex)["rollback"]["parameters"]["applyManifest"]["delete"] is True


async def test_rollback_deployment_restores_previous_template() -> None:
    w = World()
    dep = w.cluster.objects[("Deployment", NS, "web")]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2.0"
    w.cluster._settle_deployment(dep)
    await w.create("rollback_deployment", {"namespace": NS, "deployment": "web"})
    ex = await w.drive()
    assert w.phases(ex) == HAPPY
    image = w.cluster.obj("Deployment", NS, "web")["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == "nginx:1.0"
    assert wire(ex)["rollback"] == {"available": True, "action": "rollback_deployment",
                                     "parameters": {"rollbackDeployment": {"namespace": NS, "deployment": "web",
                                                    "toRevision": 2}}}


async def test_dry_run_validates_and_changes_nothing() -> None:
    w = World()
    await w.create("scale_deployment", {"namespace": NS, "deployment": "web", "replicas": 7},
                   dryRun=True)
    ex = await w.drive()
    assert w.phases(ex) == ["Pending", "Validating", "Completed"]
    assert wire(ex)["reason"] == "DryRunSucceeded"
    assert w.cluster.obj("Deployment", NS, "web")["spec"]["replicas"] == 2
    assert not w.cluster.jobs
