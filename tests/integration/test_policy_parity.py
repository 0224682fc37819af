"""Parity: the embedded engine (regopy) and a real OPA server decide identically.

Inputs: every fixture of policies/testdata (the ones `opa test` uses, each under
its configuration) plus 400 inputs from a seeded generator covering all actions,
edge values and malformed documents, under four configurations. Both the domain
decision (allowed, requires_approval, violations) and the raw decision document
(messages, approval_reasons) must be equal.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.plugin import required_opa

from devstack.controlplane import free_port
from kexec.adapters.policy.bundle import load_policy_dir, policy_set_from_sources, prepare_input
from kexec.adapters.policy.embedded import CompiledPolicy
from kexec.adapters.policy.opa_http import OpaHttpPolicy
from kexec.application.policy_input import change_facts
from kexec.domain.actions import ACTIONS as REGISTRY

pytestmark = pytest.mark.opa

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SEED = 20250611
GENERATED = 400


@pytest.fixture(scope="module")
def opa_url() -> Iterator[str]:
    """``opa run --server policies/`` (modules, data.json and testdata) on a free port."""
    port = free_port()
    args = [str(required_opa()), "run", "--server", "--addr", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*args, "--log-level", "error", str(POLICIES)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"opa exited with {proc.returncode}: {err}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("opa did not become healthy within 30 s")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def deep_merge(base: Any, patch: Any) -> Any:
    """Objects merge recursively, anything else is replaced (OPA's object.union)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return copy.deepcopy(patch)


REPO = load_policy_dir(POLICIES)
DEFAULT_CONFIG: dict[str, Any] = REPO.data["kexec"]["config"]


def normalized(doc: Any) -> Any:
    if isinstance(doc, dict) and isinstance(doc.get("violations"), list):
        doc = dict(doc)
        doc["violations"] = sorted(doc["violations"], key=lambda v: json.dumps(v, sort_keys=True))
    return doc


class Engines:
    """Both engines under one configuration (OPA's data is replaced through its API)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=5)
        self.opa = OpaHttpPolicy(url, client=self.http, timeout=5)
        self._compiled: dict[str, CompiledPolicy] = {}
        self.config_key = ""

    async def use(self, overrides: dict[str, Any]) -> None:
        config = deep_merge(DEFAULT_CONFIG, overrides)
        key = json.dumps(config, sort_keys=True)
        if key not in self._compiled:
            data = {"kexec": {"config": config}}
            policy_set = policy_set_from_sources(dict(REPO.modules), data)
            # validate=False: some fixtures pin down behaviour under a config the gate refuses.
            self._compiled[key] = CompiledPolicy(policy_set, pool_size=1, validate=False)
        response = await self.http.put("/v1/data/kexec/config", json=config)
        assert response.status_code == 204, response.text
        self.config_key = key

    async def compare(self, doc: dict[str, Any], label: str) -> dict[str, Any]:
        compiled = self._compiled[self.config_key]
        embedded_doc = normalized(compiled.evaluate(prepare_input(doc)))
        response = await self.http.post("/v1/data/kexec/safety/decision", json={"input": doc})
        assert response.status_code == 200, response.text
        opa_doc = normalized(response.json().get("result"))
        assert embedded_doc == opa_doc, f"{label}: raw documents differ\n{json.dumps(doc)}"

        a = compiled.decide(doc)
        b = await self.opa.decide(doc)
        assert (a.engine, b.engine) == ("embedded", "opa")
        assert (a.allowed, a.requires_approval, a.violations, a.defer) == (
            b.allowed,
            b.requires_approval,
            b.violations,
            b.defer,
        ), f"{label}: decisions differ\n{json.dumps(doc)}"
        return embedded_doc

    async def close(self) -> None:
        await self.use({})
        await self.http.aclose()


@pytest.fixture
async def engines(opa_url: str) -> Any:
    e = Engines(opa_url)
    yield e
    await e.close()


# --- the shared fixtures ---------------------------------------------------------------------


def load_cases() -> tuple[dict[str, Any], dict[str, Any]]:
    bases = json.loads((POLICIES / "testdata" / "bases.json").read_text())["bases"]
    cases: dict[str, Any] = {}
    for path in sorted((POLICIES / "testdata").glob("cases_*.json")):
        cases.update(json.loads(path.read_text())["cases"])
    return bases, cases


async def test_every_rego_test_fixture_decides_the_same_on_both_engines(engines: Engines) -> None:
    bases, cases = load_cases()
    by_config: dict[str, list[str]] = {}
    for name, case in cases.items():
        by_config.setdefault(json.dumps(case.get("config", {}), sort_keys=True), []).append(name)
    checked = 0
    for config_key, names in by_config.items():
        await engines.use(json.loads(config_key))
        for name in names:
            case = cases[name]
            doc = deep_merge(bases[case["base"]], case["input"])
            got = await engines.compare(doc, name)
            rules = sorted({v["rule"] for v in got["violations"]})
            assert {
                "allow": got["allow"],
                "requires_approval": got["requires_approval"],
                "violations": rules,
                "approval_reasons": got["approval_reasons"],
                **({"defer": got["defer"]} if "defer" in case["expect"] else {}),
            } == case["expect"], name
            assert got["defer"] == case["expect"].get("defer", []), name
            checked += 1
    assert checked == len(cases) >= 80


# --- generated inputs ---------------------------------------------------------------------------

ACTIONS = sorted(REGISTRY)
NODE_ACTIONS = {name for name, action in REGISTRY.items() if action.node_action}
NAMESPACES = ["shop", "payments", "kube-system", "kube-public", "kubernaut-system", "default"]
NODES = ["cp-1", "cp-2", "worker-1", "worker-2", "worker-3", "worker-4"]

CONFIGS: list[dict[str, Any]] = [
    {},
    {
        "freeze_windows": [
            {"name": "mwf", "weekdays": [0, 2, 4], "start_hour": 9, "end_hour": 17},
            {"name": "sat-night", "weekdays": [5], "start_hour": 22, "end_hour": 6},
            {"name": "mid-june", "start": "2025-06-10T00:00:00Z", "end": "2025-06-20T00:00:00+02:00"},
        ],
        "maintenance_windows": [
            {"name": "tue-thu", "weekdays": [1, 3], "start_hour": 8, "end_hour": 20},
            {"name": "late-june", "start": "2025-06-20T00:00:00Z", "end": "2025-06-30T00:00:00Z"},
        ],
    },
    {
        "business_hours": {"enabled": True, "weekdays": [0, 1, 2, 3], "start_hour": 7, "end_hour": 19},
        "sensitive_changes_scope": "all",
        "approval_required_facts": ["evictsPods", "secretData"],
        "count_control_plane_nodes": True,
        "emergency_override_annotation": "example.com/break-glass",
    },
    {
        "max_replicas": 10,
        "critical_min_replicas": 3,
        "min_ready_schedulable_nodes": 3,
        "max_concurrent_per_namespace": 2,
        "allow_bare_pod_deletion": True,
        "max_other_unschedulable_nodes_for_drain": 1,
        "manifest_allowed_kinds": ["ConfigMap", "StatefulSet", "NetworkPolicy"],
        "protected_namespaces": ["kube-system"],
        "critical_label_key": "tier",
        "critical_label_value": "gold",
    },
]


def _pick(rng: random.Random, *options: Any) -> Any:
    return rng.choice(options)


def _patch(rng: random.Random) -> Any:
    ops = [
        {"op": "replace", "path": "/spec/replicas", "value": _pick(rng, 0, 1, 2, 11, 500)},
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "web:2"},
        {"op": "add", "path": "/spec/template/metadata/annotations/a", "value": "b"},
        {"op": "move", "from": "/spec/template/spec/initContainers/0", "path": "/metadata/x"},
        {"op": "replace", "path": "/spec", "value": {}},
    ]
    return _pick(
        rng,
        {"spec": {"replicas": _pick(rng, 0, 1, 2, 3, 11, 100, 101)}},
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}}},
        {"spec": {"template": {"spec": {"initContainers": [{"name": "i", "image": "init:2"}]}}}},
        {"metadata": {"annotations": {"a": "b"}}},
        rng.sample(ops, rng.randint(1, 3)),
        [],
        "spec:\n  replicas: 3",
        None,
    )


def _manifest(rng: random.Random, namespace: str, critical: dict[str, str]) -> Any:
    kind = _pick(rng, "ConfigMap", "Service", "Deployment", "StatefulSet", "ClusterRole", "NetworkPolicy")
    meta: dict[str, Any] = {"name": "obj", "labels": critical}
    if rng.random() < 0.8:
        meta["namespace"] = _pick(rng, namespace, namespace, "kube-system", "other")
    manifest: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": meta}
    if kind in ("Deployment", "StatefulSet"):
        manifest["spec"] = {
            "replicas": _pick(rng, 0, 1, 2, 5, 11, 200),
            "template": {"spec": {"containers": [{"name": "c", "image": "img:1"}]}},
        }
    return _pick(rng, manifest, manifest, manifest, manifest, {"metadata": {}}, "not-an-object")


def generate_input(rng: random.Random) -> dict[str, Any]:
    action = rng.choice(ACTIONS) if rng.random() > 0.03 else "delete_namespace"
    node_action = action in NODE_ACTIONS
    exec_ns = _pick(rng, "shop", "shop", "kubernaut-system", "payments", "kube-system")
    target_ns = "" if node_action else _pick(rng, exec_ns, exec_ns, exec_ns, *NAMESPACES)
    critical = _pick(
        rng, {}, {}, {"kubernaut.io/critical": "true"}, {"kubernaut.io/critical": "false"}, {"tier": "gold"}
    )
    target_labels = dict(critical)
    kind, name = "Deployment", "web"
    obj: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    if rng.random() < 0.85:
        obj["spec"] = {"replicas": _pick(rng, 0, 1, 2, 3, 10, 100)}
    params: dict[str, Any] = {"namespace": target_ns}

    if action == "scale_deployment":
        params |= {"deployment": "web", "replicas": _pick(rng, 0, 1, 2, 3, 5, 10, 11, 100, 101, 1000)}
        if rng.random() < 0.05:
            params["replicas"] = _pick(rng, "5", -1, 2.5, None)
    elif action in ("rollout_restart", "rollback_deployment"):
        params |= {"deployment": "web", "toRevision": rng.randint(0, 4)}
    elif action == "patch_deployment":
        params |= {"deployment": "web", "patchType": _pick(rng, "strategic", "merge", "json")}
        patch = _patch(rng)
        if patch is not None:
            params["patch"] = patch
    elif action == "delete_pod":
        kind, name = "Pod", "web-1"
        params |= {"pod": name, "gracePeriodSeconds": rng.randint(0, 60)}
        owners = _pick(rng, [{"kind": "ReplicaSet", "name": "web-1a", "controller": True}], [], None, "missing")
        obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}
        if owners != "missing":
            obj["metadata"]["ownerReferences"] = owners
    elif node_action:
        kind, name = "Node", rng.choice(NODES)
        params = {"node": name}
        if action == "drain_node":
            params |= {"gracePeriodSeconds": 30, "ignoreDaemonSets": True, "force": rng.random() < 0.2}
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}}
        target_labels = {"kubernetes.io/hostname": name}
        if rng.random() < 0.15:
            target_labels["node-role.kubernetes.io/control-plane"] = ""
    elif action == "update_configmap":
        kind, name = "ConfigMap", "cfg"
        params |= {"configMap": name, "data": {"k": "v"}}
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "old"}}
    elif action == "update_secret":
        kind, name = "Secret", "tls"
        params |= {"secret": name, "sourceSecretRef": {"name": "tls-next"}}
        obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque"}
    elif action == "apply_manifest":
        manifest = _manifest(rng, target_ns, critical)
        params = {"manifest": manifest}
        kind = manifest.get("kind", "") if isinstance(manifest, dict) else ""
        kind = kind if isinstance(kind, str) else ""
        # The target is the manifest's object, as the controller derives it.
        ns = manifest.get("metadata", {}).get("namespace", "") if isinstance(manifest, dict) else ""
        target_ns = ns if isinstance(ns, str) else ""
        name = "obj"
        obj = {}
    else:  # unknown action
        params |= {"namespace": target_ns}

    nodes = []
    for node_name in rng.sample(NODES, rng.randint(0, len(NODES))):
        nodes.append(
            {
                "name": node_name,
                "ready": rng.random() < 0.85,
                "unschedulable": rng.random() < 0.2,
                "controlPlane": node_name.startswith("cp-") and rng.random() < 0.9,
            }
        )
    active = {ns: rng.randint(0, 6) for ns in rng.sample(NAMESPACES, rng.randint(0, 4))}
    now = datetime(2025, 6, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 30 * 24 * 60 - 1))
    now_text = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if rng.random() < 0.1:
        now_text = now.strftime("%Y-%m-%dT%H:%M:%S.250Z")
    annotations = _pick(
        rng,
        {},
        {},
        {"kexec.kubernaut.io/emergency-override": "true"},
        {"kexec.kubernaut.io/emergency-override": "false"},
        {"example.com/break-glass": "true"},
    )
    env = _pick(rng, {}, {"environment": "production"}, {"environment": "staging"})
    trusted = _pick(rng, ["kubernaut-system"], ["kubernaut-system"], ["kubernaut-system", "payments"])
    doc: dict[str, Any] = {
        "controller": {"trustedNamespaces": trusted},
        "execution": {
            "name": f"exec-{rng.randint(1, 9999)}",
            "namespace": exec_ns,
            "action": action,
            "parameters": params,
            "labels": {},
            "annotations": annotations,
            "dryRun": rng.random() < 0.2,
            "rollbackOf": _pick(rng, "", "", "exec-1"),
        },
        "target": {
            "kind": kind,
            "namespace": target_ns,
            "name": name,
            "exists": rng.random() < 0.9,
            "labels": target_labels,
            "annotations": {},
            "object": obj,
        },
        "namespace": {"name": target_ns, "labels": env if target_ns else {}},
        "cluster": {"nodes": nodes, "activeExecutions": active},
        "time": {"now": now_text, "weekday": now.weekday(), "hour": now.hour, "minute": now.minute},
    }
    if action in REGISTRY:  # the facts the controller derives from the action registry
        doc["action"] = REGISTRY[action].policy_facts()
        doc["change"] = change_facts(REGISTRY[action], params)
    if rng.random() < 0.08:  # malformed documents must be denied the same way
        corruption = rng.randint(0, 9)
        if corruption == 0:
            del doc["time"]
        elif corruption == 1:
            doc["cluster"]["nodes"] = "node-1"
        elif corruption == 2:
            doc["action"] = {**doc.get("action", {}), "destructive": "yes"}
        elif corruption == 3:
            doc["cluster"]["nodes"].append({"name": "half"})
        elif corruption == 4:
            doc["time"]["now"] = "yesterday"
        elif corruption == 5:
            doc["target"]["namespace"] = None
        elif corruption == 6:
            del doc["execution"]["action"]
        elif corruption == 7:
            doc["cluster"]["nodes"].append("worker-9")
        elif corruption == 8:
            doc["change"] = {**doc.get("change", {}), "replicas": -1}
        else:
            doc["target"]["name"] = 'we"ird\\name'
    return doc


async def test_generated_inputs_decide_the_same_on_both_engines(engines: Engines) -> None:
    rng = random.Random(SEED)
    docs = [generate_input(rng) for _ in range(GENERATED)]
    outcomes: Counter[str] = Counter()
    rules: set[str] = set()
    actions: set[str] = set()
    for index, config in enumerate(CONFIGS):
        await engines.use(config)
        for number, doc in enumerate(docs[index :: len(CONFIGS)]):
            got = await engines.compare(doc, f"generated #{number} under config {index}")
            outcomes["allow" if got["allow"] else "deny"] += 1
            outcomes["approval"] += bool(got["requires_approval"])
            outcomes["defer"] += bool(got["defer"])
            rules |= {v["rule"] for v in got["violations"]}
            actions.add(doc["execution"].get("action", ""))
    # The generator must actually exercise the policy, not just one path.
    assert sum(outcomes[k] for k in ("allow", "deny")) == GENERATED
    assert outcomes["allow"] >= 40 and outcomes["deny"] >= 40 and outcomes["approval"] >= 20, outcomes
    assert outcomes["defer"] >= 5, outcomes
    assert set(ACTIONS) <= actions
    assert len(rules) >= 14, rules
