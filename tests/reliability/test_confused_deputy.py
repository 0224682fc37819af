"""Scenario 8: the confused-deputy matrix. A user who may create executions (kexec-edit)
and do anything in their own namespace -- impersonated, so the API server authorizes them
with only their own RBAC, never the admin's -- tries to borrow kexec's power:

* every namespaced action against another team's namespace and against the controller's
  own namespace (the kill switch ConfigMap, the audit Secret);
* every node action against a Node;
* every namespaced action on their *own* namespace's objects where they lack the
  action's operations themselves (no privilege escalation).

Each is refused (created and Failed with a refusal reason and no Job, or rejected at
admission) and nothing in the cluster changed (100 %)."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest

from devstack.harness import GROUP_PATH, NS_CTRL
from kexec.domain.actions import ACTIONS
from tests.e2e.test_trust_model_e2e import as_user, grant
from tests.reliability.conftest import Reliability, record, size

pytestmark = pytest.mark.cluster

NODE = "sim-node-1"
REFUSALS = {"NamespaceNotAllowed", "RequesterForbidden"}


def world(rel: Reliability, namespaces: list[str]) -> dict[str, Any]:
    """What an attack could change: the objects' contents in these namespaces, the Node."""
    k = rel.k
    out: dict[str, Any] = {}
    for ns in namespaces:
        for d in k.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]:
            out[f"{ns}/deploy/{d['metadata']['name']}"] = (d["metadata"]["generation"], d["spec"],
                                                          d["metadata"].get("labels"))
        for c in k.api("GET", f"/api/v1/namespaces/{ns}/configmaps")["items"]:
            out[f"{ns}/cm/{c['metadata']['name']}"] = c.get("data")
        for s in k.api("GET", f"/api/v1/namespaces/{ns}/secrets")["items"]:
            out[f"{ns}/secret/{s['metadata']['name']}"] = s.get("data")
        for p in k.api("GET", f"/api/v1/namespaces/{ns}/pods")["items"]:
            if not (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name"):
                out[f"{ns}/pod/{p['metadata']['name']}"] = p["metadata"]["uid"]
    node = k.api("GET", f"/api/v1/nodes/{NODE}")
    out[f"node/{NODE}"] = (node["spec"].get("unschedulable"), node["spec"].get("taints"))
    return out


def targets(rel: Reliability, ns: str) -> str:
    """A Deployment web (ready, one pod), a ConfigMap cm and a Secret s in ``ns``: the pod's name."""
    rel.deployments(ns, ["web"])
    rel.k.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": ns},
                 "data": {"key": "victim"}})
    rel.k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": ns},
                 "data": {"password": base64.b64encode(b"victim").decode()}})
    pods = rel.k.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app=web")["items"]
    return str(pods[0]["metadata"]["name"])


def namespaced_attacks(ns: str, pod: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("scale_deployment", {"namespace": ns, "deployment": "web", "replicas": 3}),
        ("rollout_restart", {"namespace": ns, "deployment": "web"}),
        ("delete_pod", {"namespace": ns, "pod": pod}),
        ("patch_deployment", {"namespace": ns, "deployment": "web", "patchType": "merge",
                              "patch": {"spec": {"replicas": 4}}}),
        ("update_configmap", {"namespace": ns, "configMap": "cm", "data": {"key": "pwned"}}),
        ("update_secret", {"namespace": ns, "secret": "s", "sourceSecretRef": {"name": "loot"}}),
        ("apply_manifest", {"manifest": {"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "cm", "namespace": ns}, "data": {"key": "pwned"}}}),
        ("rollback_deployment", {"namespace": ns, "deployment": "web"}),
    ]


def test_confused_deputy_matrix(rel: Reliability) -> None:
    t0 = time.monotonic()
    k = rel.k
    user = f"mallory-{uuid.uuid4().hex[:4]}"
    home, bare, victim = rel.ns("atk"), rel.ns("atkbare"), rel.ns("victim")
    grant(k, home, user, "kexec-edit")
    grant(k, home, user, "admin")  # anything in her own namespace
    grant(k, bare, user, "kexec-edit")  # may create executions here, nothing else
    k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "loot", "namespace": home},
             "stringData": {"password": "attacker"}})
    k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "loot", "namespace": bare},
             "stringData": {"password": "attacker"}})
    victim_pod, bare_pod = targets(rel, victim), targets(rel, bare)
    attacks: list[tuple[str, str, dict[str, Any]]] = []  # (execution namespace, action, parameters)
    attacks += [(home, a, p) for a, p in namespaced_attacks(victim, victim_pod)]
    attacks += [(home, "update_configmap", {"namespace": NS_CTRL, "configMap": "kexec-config",
                                            "data": {"paused": "true"}}),
                (home, "update_secret", {"namespace": NS_CTRL, "secret": "kexec-audit",
                                         "sourceSecretRef": {"name": "loot"}}),
                (home, "apply_manifest", {"manifest": {
                    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "evil", "namespace": victim},
                    "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                        "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}})]
    attacks += [(home, a, {"node": NODE}) for a in ("cordon_node", "drain_node", "uncordon_node")]
    attacks += [(bare, a, p) for a, p in namespaced_attacks(bare, bare_pod)]
    assert {a for _, a, _ in attacks} == set(ACTIONS)  # every action is tried
    watched = [victim, bare, NS_CTRL]
    before = world(rel, watched)
    port = 0
    k.replace_controllers(("rel-deputy", ("--no-leader-elect",), port))
    rounds = size(1, 5)
    created: dict[str, list[str]] = {}
    admission_refused = 0
    refused_by: dict[str, int] = {}
    for _ in range(rounds):
        for ns, action, params in attacks:
            name = f"{action.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
            body = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1", "kind": "KubernetesExecution",
                    "metadata": {"name": name}, "spec": {"action": action, "parameters": {ACTIONS[action].key: params}}}
            code, answer = as_user(k, user, "POST", f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions", body)
            if code == 201:
                created.setdefault(ns, []).append(name)
            elif 400 <= code < 500:
                admission_refused += 1
            else:
                raise AssertionError(f"{code}: {answer}")
    seen = rel.wait_terminal(created, timeout=size(120, 400))
    refused = admission_refused
    got_through: list[str] = []
    for (ns, name), obj in seen.items():
        st = obj.get("status") or {}
        jobs = rel.jobs_by_execution(ns).get(name, 0)
        if st.get("phase") == "Failed" and st.get("reason") in REFUSALS and jobs == 0:
            refused += 1
            refused_by[st["reason"]] = refused_by.get(st["reason"], 0) + 1
        else:
            got_through.append(f"{ns}/{name} {obj['spec']['action']}: {st.get('phase')} {st.get('reason')} "
                               f"jobs={jobs}")
    time.sleep(2)
    after = world(rel, watched)
    changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
    tried = rounds * len(attacks)
    record("confused_deputy", tried, refused, 0, 0, time.monotonic() - t0, changed=len(changed),
           admission_refused=admission_refused, **refused_by)
    assert not got_through, got_through
    assert not changed, changed
    assert refused == tried
